"""``edgeops samples``: the example data files the README's commands use, written from
scikit-learn's bundled datasets (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeops.core.errors import OutputError
from edgeops.core.optional import require
from edgeops.core.terminal import render


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write the files to (created if missing).",
)
@click.option("--force", is_flag=True, help="Replace files of the same name.")
def samples(out: Path, force: bool) -> None:
    """Write wine.csv, diabetes.csv and digits.npz from scikit-learn's bundled datasets.

    \b
    wine.csv      178 rows, 13 measurements, a hue_band text column, target cultivar
    diabetes.csv  442 rows, 10 features (sex as F/M), target progression
    digits.npz    1,797 8x8 images under image, labels under label
    """
    require("sklearn.datasets", "train")
    from edgeops.trainer import samples as data

    writers = {
        "wine.csv": (data.wine_csv, "scikit-learn wine; target cultivar"),
        "diabetes.csv": (data.diabetes_csv, "scikit-learn diabetes; target progression"),
        "digits.npz": (data.digits_npz, "scikit-learn digits; arrays image and label"),
    }
    existing = [name for name in writers if (out / name).exists()]
    if existing and not force:
        raise OutputError(f"{out / existing[0]} exists (pass --force to replace it)")
    rows = []
    for name, (write, what) in writers.items():
        try:
            path = write(out / name)
        except OSError as e:
            raise OutputError(f"{out / name}: cannot write ({e.strerror or e})") from None
        rows.append([str(path), what])
    click.echo(render(["file", "data"], rows))
