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
    json_path: Path | None,
) -> None:
    """Benchmark MODELS (.tflite, .onnx): init, first inference, latency, throughput, memory."""
    from device_agent.benchmark import BenchConfig, bench_models, table, write_json

    cfg = BenchConfig(threads=threads, runs=runs, warmup=warmup, batch=batch)
    results = bench_models(list(models), cfg)
    click.echo(table(results))
    if json_path is not None:
        write_json(results, json_path)
