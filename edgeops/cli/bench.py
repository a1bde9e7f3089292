"""``edgeops bench``: each model timed in its own process by the device benchmark runner."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", type=int, default=None, help="Interpreter threads (default: runtime's).")
@click.option("--runs", default=100, show_default=True, help="Timed inferences.")
@click.option("--warmup", default=10, show_default=True, help="Untimed inferences before timing.")
@click.option("--batch", default=1, show_default=True, help="Samples per inference.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DxD..",
    help="A call's shape for an input with flexible dimensions, e.g. x=1x3x640x640 "
    "(repeat per input).",
)
@click.option(
    "--input",
    "data",
    type=click.Path(path_type=Path),
    default=None,
    help="Inputs to time (.npz with one array per input name, .npy, .csv): the first "
    "sample, at its real shape.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the results to this JSON file.",
)
def bench(
    models: tuple[Path, ...],
    threads: int | None,
    runs: int,
    warmup: int,
    batch: int,
    shapes: tuple[str, ...],
    data: Path | None,
    json_path: Path | None,
) -> None:
    """Benchmark MODELS (.tflite, .onnx): init, first inference, latency, throughput, memory.

    Inputs are random at the model's shapes; an input with flexible dimensions other than the
    batch needs --shape or --input, so that what is timed is the size the model really runs at.
    """
    from device_agent.benchmark import BenchConfig, bench_models, table, write_json
    from edgeops.core.feeds import parse_shape

    cfg = BenchConfig(
        threads=threads,
        runs=runs,
        warmup=warmup,
        batch=batch,
        shapes=tuple(parse_shape(s) for s in shapes),
        data=data,
    )
    results = bench_models(list(models), cfg)
    click.echo(table(results))
    if json_path is not None:
        write_json(results, json_path)
