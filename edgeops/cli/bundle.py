"""Bundle commands: ``edgeops package``, ``edgeops verify`` and ``edgeops build``.

Each command parses options and calls :mod:`edgeops.core.bundle`; errors propagate as
:class:`~edgeops.core.errors.EdgeOpsError` and :func:`edgeops.cli.main` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeops.cli.aliases import trusted_key_option, trusted_keys
from edgeops.cli.train import check_data, echo_step, train_config, train_options
from edgeops.core.bundle import Bundle
from edgeops.core.errors import UsageError
from edgeops.core.optional import require
from edgeops.core.signing import SigningKey, load_signing_key, load_verify_keys
from edgeops.packaging.package import PackageConfig


def _signing_key(key: Path | None, unsigned: bool) -> SigningKey | None:
    if key is None and not unsigned:
        raise UsageError("pass --key KEY to sign the bundle (or --unsigned for development)")
    if key is not None and unsigned:
        raise UsageError("--key and --unsigned cannot be combined")
    return None if key is None else load_signing_key(key)


def package_options(f: click.decorators.FC) -> click.decorators.FC:
    """Options of ``edgeops package`` shared with ``edgeops build``."""
    options = [
        click.option(
            "--version",
            "version",
            required=True,
            help="The bundle's version: MAJOR.MINOR.PATCH, optionally -aN, -bN or -rcN.",
        ),
        click.option("--parent", default=None, help="The version this bundle replaces."),
        click.option(
            "--key",
            type=click.Path(path_type=Path),
            default=None,
            help="Private key (.key) to sign with; see `edgeops keys generate`.",
        ),
        click.option("--unsigned", is_flag=True, help="Write an unsigned bundle (development)."),
        click.option("--force", is_flag=True, help="Replace a bundle file that exists."),
        click.option(
            "--samples",
            default=8,
            show_default=True,
            help="Test inputs stored with their expected outputs.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def conversion_options(f: click.decorators.FC) -> click.decorators.FC:
    """How ``package`` (when converting on the way) and ``build`` convert the run's model."""
    options = [
        click.option(
            "--to",
            "to",
            type=click.Choice(["tflite", "onnx"]),
            default="tflite",
            show_default=True,
            help="Format when converting on the way.",
        ),
        click.option(
            "--quantize",
            "mode",
            default=None,
            metavar="MODE",
            help="fp32 | float16 | dynamic | int8 | int16x8; default: the target's.",
        ),
        click.option(
            "--hw-target",
            "hw_target",
            type=click.Choice(["cpu", "gpu", "npu", "mcu"]),
            default="cpu",
            show_default=True,
            help="Hardware class, as `edgeops convert --hw-target`.",
        ),
        click.option(
            "--max-conversion-drop",
            type=float,
            default=None,
            metavar="POINTS",
            help="Reject the conversion when accuracy drops by more than this many points.",
        ),
        click.option(
            "--min-agreement",
            type=float,
            default=None,
            metavar="FRACTION",
            help="Reject the conversion when top-1 agreement is below this.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _conversion_config(
    to: str,
    mode: str | None,
    hw_target: str,
    max_conversion_drop: float | None,
    min_agreement: float | None,
) -> Any:
    conv = require("converters", "convert")
    return conv.ConversionConfig(
        to=conv.Format(to),
        mode=None if mode is None else conv.config.parse_mode(mode),
        target=conv.Target(hw_target),
        gates=conv.Gates(max_accuracy_drop=max_conversion_drop, min_agreement=min_agreement),
    )


@click.command()
@click.option(
    "--run",
    "run_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Training run directory; without it, package --model from --data.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="A .tflite or .onnx: converted from the run's model (without it, convert on the way), "
    "or any model when there is no --run.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Without --run: realistic inputs (.npz with one array per input name, samples along "
    "axis 0) for the baseline and the samples.",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    default=None,
    help="Without --run: how the first output is read and profiled.",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Without --run: a text file of class names, one a line (default: 0, 1, ...).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for NAME-VERSION.bundle, or the bundle's path ending in .bundle.",
)
@click.option("--name", default=None, help="Model name (default: the run's, or the model file's).")
@package_options
@conversion_options
@click.pass_context
def package(
    ctx: click.Context,
    /,
    run_dir: Path | None,
    model: Path | None,
    data: Path | None,
    task: str | None,
    labels_file: Path | None,
    out: Path,
    name: str | None,
    version: str,
    parent: str | None,
    key: Path | None,
    unsigned: bool,
    force: bool,
    samples: int,
    **conversion: Any,
) -> None:
    """Write one signed bundle: from a training run and its converted model, or from any model
    (one input or several) and a file of its inputs."""
    from edgeops.packaging.package import package as make_bundle

    signing_key = _signing_key(key, unsigned)
    cfg = PackageConfig(
        version=version, name=name, parent=parent, samples=samples, force=force
    ).checked()
    if run_dir is None:
        converting = [
            f"--{k.replace('_', '-')}"
            for k in conversion
            if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
        ]
        if converting:
            raise UsageError(f"{', '.join(converting)} convert a run's model: they need --run")
        if model is None or data is None or task is None:
            raise UsageError(
                "package needs --run RUN, or --model MODEL --data INPUTS.npz --task "
                "classification|regression for a model made without this project's trainer"
            )
        from edgeops.packaging.package import package_model

        path = package_model(
            model,
            data,
            out,
            cfg,
            task="classification" if task == "classification" else "regression",
            labels=_read_labels(labels_file),
            key=signing_key,
        )
        click.echo(f"wrote {path}" + ("" if signing_key else " (unsigned)"))
        return
    given = [f for f, v in (("--data", data), ("--task", task), ("--labels", labels_file)) if v]
    if given:
        raise UsageError(f"{', '.join(given)}: for a model packaged without --run")
    from edgeops.trainer.run import Run

    run = Run.load(run_dir)
    report = None
    if model is None:
        from edgeops.packaging.build import convert_run

        converted, model = convert_run(
            run,
            run.directory / "converted",
            _conversion_config(**conversion),
            name=name,
            on_report=lambda r: click.echo(r.table()),
        )
        report = converted.to_dict()
    path = make_bundle(run, model, out, cfg, key=signing_key, report=report)
    click.echo(f"wrote {path}" + ("" if signing_key else " (unsigned)"))


def _read_labels(path: Path | None) -> tuple[str, ...]:
    """Class names, one a line (blank lines skipped)."""
    if path is None:
        return ()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--labels {path}: cannot read ({e})") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@trusted_key_option(
    "A trusted public key (.pub) or a directory of them. Repeatable; required unless "
    "--allow-unsigned."
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Accept a bundle that carries no signature (development only). A signed bundle is "
    "still checked against --trusted-key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle: Path, allow_unsigned: bool, as_json: bool, **keys_given: Any) -> None:
    """Verify BUNDLE: its signature, every file's size and sha256, and the container."""
    pubkeys = trusted_keys(keys_given)
    if not pubkeys and not allow_unsigned:
        raise UsageError(
            "verify needs --trusted-key (or --allow-unsigned to accept unsigned bundles)"
        )
    keys = load_verify_keys(pubkeys)
    with Bundle.open(bundle) as b:
        result = b.verify(keys, allow_unsigned=allow_unsigned)
    click.echo(result.to_json() if as_json else f"verified {bundle}\n\n{result.summary()}")


@click.command()
@train_options
@conversion_options
@package_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
def build(
    out: Path,
    data: Path,
    version: str,
    parent: str | None,
    key: Path | None,
    unsigned: bool,
    force: bool,
    samples: int,
    to: str,
    mode: str | None,
    hw_target: str,
    max_conversion_drop: float | None,
    min_agreement: float | None,
    **train_opts: Any,
) -> None:
    """Train, convert and package: DATA to a signed bundle in one command.

    Writes OUT/run (the training run), OUT/models (the converted model and its report) and
    OUT/NAME-VERSION.bundle. An unblessed run or a rejected conversion stops the chain (exit 7).
    """
    check_data(data)
    cfg = train_config(**train_opts)
    pkg = PackageConfig(
        version=version, name=train_opts.get("name"), parent=parent, samples=samples, force=force
    ).checked()
    require("keras", "train")
    from edgeops.packaging.build import build as run_build

    signing_key = _signing_key(key, unsigned)
    built = run_build(
        data,
        out,
        cfg,
        _conversion_config(to, mode, hw_target, max_conversion_drop, min_agreement),
        pkg,
        key=signing_key,
        on_step=echo_step,
    )
    click.echo(built.run.table())
    click.echo(built.report.table())
    click.echo(f"wrote {built.bundle}" + ("" if signing_key else " (unsigned)"))
