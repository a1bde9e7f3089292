"""Small real models and datasets for the demo, tests and benchmarks.

The data are scikit-learn's bundled datasets (no download): ``digits`` (8x8 grey images, 10
classes) and ``diabetes`` (10 numeric features, a regression target). Models are trained with Keras
for a few epochs; they are examples of what a user brings, not the trainer pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core.optional import require


@dataclass(frozen=True)
class Split:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[Any]

    def save(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``{name}-calibration.npz`` (training inputs) and ``{name}-validation.npz``."""
        directory.mkdir(parents=True, exist_ok=True)
        cal = directory / f"{name}-calibration.npz"
        val = directory / f"{name}-validation.npz"
        np.savez(cal, x=self.x_train)
        np.savez(val, x=self.x_test, y=self.y_test)
        return cal, val


def _split(x: npt.NDArray[Any], y: npt.NDArray[Any], seed: int, test: float = 0.25) -> Split:
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - test))
    tr, te = idx[:cut], idx[cut:]
    return Split(x[tr], y[tr], x[te], y[te])


def digits(seed: int = 0) -> Split:
    """scikit-learn's digits as (N, 8, 8, 1) float32 pixel values 0..16 with integer labels."""
    datasets = require("sklearn.datasets", "train")
    d = datasets.load_digits()
    x = d.images[..., None].astype(np.float32)
    return _split(x, d.target.astype(np.int64), seed)


def diabetes(seed: int = 0) -> Split:
    """scikit-learn's diabetes: (N, 10) float32 features, a float32 disease-progression target."""
    datasets = require("sklearn.datasets", "train")
    d = datasets.load_diabetes()
    return _split(d.data.astype(np.float32), d.target.astype(np.float32), seed)


def train_digits_cnn(split: Split, path: Path, epochs: int = 12, seed: int = 0) -> Path:
    """A small CNN on digits (about 98 % test accuracy), saved as a ``.keras`` file."""
    keras = require("keras", "train")
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="image")
    x = L.Rescaling(1 / 16.0)(inp)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu")(x)
    out = L.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=32, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def train_diabetes_mlp(split: Split, path: Path, epochs: int = 60, seed: int = 0) -> Path:
    """A small MLP regressor on diabetes with normalisation baked in, saved as ``.keras``."""
    keras = require("keras", "train")
    keras.utils.set_random_seed(seed)
    L = keras.layers
    norm = L.Normalization()
    norm.adapt(split.x_train)
    inp = keras.Input((split.x_train.shape[1],), name="features")
    x = norm(inp)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dense(16, activation="relu")(x)
    out = L.Dense(1, name="progression")(x)
    model = keras.Model(inp, out, name="diabetes_mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=32, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


# --- data files for the training pipeline -----------------------------------------------------


def wine_csv(path: Path, *, missing: int = 6, seed: int = 0) -> Path:
    """scikit-learn's wine (178 rows, 3 cultivars) as a CSV for ``edgeops train --target cultivar``.

    Adds a categorical column, ``hue_band`` (the ``hue`` measurement's tercile as low, mid or high),
    and blanks ``missing`` cells of ``magnesium`` so that text and missing values are exercised.
    """
    datasets = require("sklearn.datasets", "train")
    d = datasets.load_wine()
    names = [n.replace("/", "_") for n in d.feature_names]
    hue = d.data[:, names.index("hue")]
    cuts = np.quantile(hue, [1 / 3, 2 / 3])
    band = np.array(["low", "mid", "high"])[np.searchsorted(cuts, hue, side="right")]
    blanks = set(np.random.default_rng(seed).choice(len(hue), missing, replace=False).tolist())
    mg = names.index("magnesium")
    lines = [",".join([*names, "hue_band", "cultivar"])]
    for i, row in enumerate(d.data):
        cells = ["" if (i in blanks and j == mg) else f"{v:g}" for j, v in enumerate(row)]
        lines.append(",".join([*cells, str(band[i]), f"class_{d.target[i]}"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def diabetes_csv(path: Path) -> Path:
    """scikit-learn's diabetes (442 rows, unscaled) as a CSV with the target ``progression``;
    ``sex`` is written as the text ``F``/``M``."""
    datasets = require("sklearn.datasets", "train")
    d = datasets.load_diabetes(scaled=False)
    names = list(d.feature_names)
    sex = names.index("sex")
    lines = [",".join([*names, "progression"])]
    for row, y in zip(d.data, d.target, strict=True):
        cells = [("F" if v == 1 else "M") if j == sex else f"{v:g}" for j, v in enumerate(row)]
        lines.append(",".join([*cells, f"{y:g}"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def digits_npz(path: Path) -> Path:
    """scikit-learn's digits as an .npz with ``image`` (N, 8, 8) pixels 0..16 and ``label``."""
    datasets = require("sklearn.datasets", "train")
    d = datasets.load_digits()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=d.images.astype(np.float32), label=d.target.astype(np.int64))
    return path
