"""The ``edgeops`` command line: a thin layer of option parsing over the library.

Subcommands are imported only when invoked, so ``edgeops --help`` and the agent's commands never
import TensorFlow. Errors become one line and an exit code here, in :func:`main`, and nowhere else.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from edgeops import __version__
from edgeops.core.errors import EdgeOpsError, MissingExtraError

# name -> (module, attribute, one-line help shown by --help without importing the module)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": (
        "edgeops.cli.convert",
        "convert",
        "Convert and quantize a model to TFLite or ONNX.",
    ),
    "bench": ("edgeops.cli.bench", "bench", "Benchmark .tflite and .onnx models on this host."),
    "train": (
        "edgeops.cli.train",
        "train",
        "Run the training pipeline: ingest, validate, profile, transform, train, evaluate.",
    ),
    "validate": ("edgeops.cli.train", "validate", "Check a data file against a schema."),
    "samples": (
        "edgeops.cli.samples",
        "samples",
        "Write the README's example data (wine.csv, diabetes.csv, digits.npz) from scikit-learn.",
    ),
    "keys": ("edgeops.cli.keys", "keys", "Make ed25519 key pairs for signing bundles."),
    "pki": ("edgeops.cli.pki", "pki", "A certificate authority for the broker's TLS listeners."),
    "package": (
        "edgeops.cli.bundle",
        "package",
        "Write a signed bundle from a training run and a converted model.",
    ),
    "verify": ("edgeops.cli.bundle", "verify", "Verify a bundle's hashes and signature."),
    "build": ("edgeops.cli.bundle", "build", "Train, convert and package in one command."),
    "agent": ("edgeops.cli.agent", "agent", "Run the on-device agent, or replay data to it."),
    "simulate": (
        "edgeops.cli.simulate",
        "simulate",
        "Simulate a fleet: many real agents replaying data, with injected drift.",
    ),
    "serve": ("edgeops.cli.serve", "serve", "Run the central service: telemetry, drift, alerts."),
    "fleet": ("edgeops.cli.serve", "fleet", "Fleet status and device details from the service."),
    "drift": ("edgeops.cli.serve", "drift", "Drift reports from the service."),
    "deploy": (
        "edgeops.cli.deploy",
        "deploy",
        "Roll a bundle out in stages with health gates and rollback; status, abort.",
    ),
    "models": ("edgeops.cli.deploy", "models", "Registered bundles, lineage, where each runs."),
    "tokens": (
        "edgeops.cli.tokens",
        "tokens",
        "REST API tokens (read, deploy, admin): create, list, revoke.",
    ),
}


# A third-party package's top-level module -> the extra that installs it: a command that reaches
# one that is missing says which extra to install instead of ending in ModuleNotFoundError.
EXTRA_OF: dict[str, str] = {
    "sqlalchemy": "service",
    "psycopg": "service",
    "litestar": "service",
    "swagger_ui": "service",
    "paho": "agent",
    "onnxruntime": "agent",
    "ai_edge_litert": "agent",
    "starlette": "agent",
    "uvicorn": "agent",
    "psutil": "agent",
    "packaging": "agent",
    "tensorflow": "convert",
    "keras": "convert",
    "tf2onnx": "convert",
    "onnx": "convert",
    "onnxconverter_common": "convert",
    "sklearn": "train",
}


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, so redirections and captures work."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _ = entry
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeops")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """edgeops: train, convert, sign and serve models on edge devices, and watch the fleet."""
    level = logging.WARNING - 10 * min(verbose, 2)
    root = logging.getLogger()
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    # Progress of long steps (training epochs, conversions) on stderr, whatever the level.
    progress = logging.getLogger("edgeops.progress")
    if not any(isinstance(h, _Stderr) for h in progress.handlers):
        shown = _Stderr()
        shown.setFormatter(logging.Formatter("  %(message)s"))
        progress.addHandler(shown)
    progress.setLevel(logging.INFO)
    progress.propagate = False


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every edgeops error into one line and its exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="edgeops",
            standalone_mode=False,
        )
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        extra = MissingExtraError(top, EXTRA_OF[top])
        click.echo(f"error: {extra}", err=True)
        sys.exit(extra.exit_code)
    except EdgeOpsError as e:
        click.echo(f"error: {e}", err=True)
        for detail in e.details:
            click.echo(f"  - {detail}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
