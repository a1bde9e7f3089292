"""Packaging real runs and converted models into signed bundles, verifying them, and `build`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeops.core import errors
from edgeops.core.bundle import Bundle
from edgeops.core.signing import load_verify_key
from edgeops.packaging.package import PackageConfig, package
from edgeops.trainer.run import Run


def test_manifest_carries_everything(
    wine_bundle: Path, wine_run: Run, signing_keys: tuple[Path, Path]
) -> None:
    assert wine_bundle.name == "wine-1.0.0.bundle"
    with Bundle.open(wine_bundle) as b:
        result = b.verify([load_verify_key(signing_keys[1])])
        m = b.manifest
    assert result.signed and {f.name for f in result.files} == {"model.tflite", "samples.npz"}
    assert m["name"] == "wine" and m["version"] == "1.0.0" and m["parent"] is None
    assert m["model"] == {
        "file": "model.tflite",
        "format": "tflite",
        "mode": "int8",
        "target": "cpu",
    }
    assert m["labels"] == list(wine_run.classes) and m["task"] == "classification"
    (inp,) = m["signature"]["inputs"]
    assert inp["shape"][-1] == 14
    out = m["signature"]["outputs"][0]
    assert out["dtype"] == "float32" or out["scale"] is not None
    assert m["preprocessing"]["kind"] == "tabular" and len(m["preprocessing"]["columns"]) == 14
    assert {e["name"] for e in m["baseline"]["inputs"]} >= {"alcohol", "hue_band"}
    assert m["baseline"]["outputs"][0]["kind"] == "class_output"
    assert m["evaluation"]["test"]["accuracy"] == wine_run.metrics["accuracy"]
    assert m["fidelity"]["agreement"] >= 0.9
    assert m["min_runtime"]["format"] == "tflite" and m["min_runtime"]["min_runtime_version"]
    assert "FULLY_CONNECTED" in m["min_runtime"]["ops"]
    assert m["samples"]["count"] == 8 and m["files"]["model.tflite"]["size"] > 0


def test_samples_reproduce_on_the_device_runtime(
    wine_bundle: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from device_agent.runtimes import open_runtime, run_float

    with Bundle.open(wine_bundle) as b:
        b.verify([load_verify_key(signing_keys[1])])
        files = b.extract(tmp_path)
        spec = b.manifest["samples"]
    with np.load(io.BytesIO(files["samples.npz"].read_bytes())) as z:
        x, expected = z["inputs"], z["output_0"]
    with open_runtime(files["model.tflite"]) as rt:
        (got,) = run_float(rt, x)
    np.testing.assert_allclose(got, expected, atol=spec["atol"], rtol=spec["rtol"])


def test_verify_cli(
    cli, wine_bundle: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from edgeops.core.signing import generate_keypair

    r = cli("verify", wine_bundle, "--trusted-key", signing_keys[1])
    assert r.code == 0 and "wine" in r.out
    other = generate_keypair(tmp_path, "other")[1]
    r = cli("verify", wine_bundle, "--trusted-key", other)
    assert r.code == errors.SignatureError.exit_code and r.err.count("\n") == 1


def test_tampering_any_part_is_caught(
    wine_bundle: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key = load_verify_key(signing_keys[1])
    blob = wine_bundle.read_bytes()
    # Probe every part: local headers, manifest, signature, model, samples, central directory.
    positions = sorted({*range(0, len(blob), 509), len(blob) - 1, len(blob) - 30, 40, 200})
    target = tmp_path / "t.bundle"
    for pos in positions:
        data = bytearray(blob)
        data[pos] ^= 0x10
        target.write_bytes(bytes(data))
        with pytest.raises(errors.BundleError), Bundle.open(target) as b:
            b.verify([key])


def test_package_refuses_mismatched_or_rejected_models(
    wine_run: Run, digits_run: Run, wine_int8: Path, tmp_path: Path
) -> None:
    from converters import ConversionConfig, Format, Mode, convert

    digits_model = convert(
        digits_run.model, tmp_path, ConversionConfig(to=Format.TFLITE, mode=Mode.FP32)
    )
    with pytest.raises(errors.ModelError, match="converted from this run"):
        package(
            wine_run,
            tmp_path / digits_model.artifact["file"],
            tmp_path,
            PackageConfig("1.0.0"),
            key=None,
        )
    # A model that its conversion gate rejected is not packaged.
    rejected = tmp_path / "wine.int8.tflite"
    rejected.write_bytes(wine_int8.read_bytes())
    report = json.loads(Path(str(wine_int8) + ".report.json").read_text())
    report.update(status="rejected", reasons=["accuracy dropped 9 points"])
    Path(str(rejected) + ".report.json").write_text(json.dumps(report))
    with pytest.raises(errors.GateError, match="rejected"):
        package(wine_run, rejected, tmp_path, PackageConfig("1.0.0"), key=None)
    with pytest.raises(errors.UsageError):
        package(wine_run, wine_int8, tmp_path, PackageConfig("not a version!"), key=None)


def test_image_run_converts_to_onnx_with_one_input(digits_run: Run, tmp_path: Path) -> None:
    """The trainer bakes a Normalization layer into image models; ONNX export must freeze it."""
    from converters import ConversionConfig, Format, Mode, Task, convert

    cfg = ConversionConfig(
        to=Format.ONNX,
        mode=Mode.FP32,
        validation=digits_run.split("test"),
        task=Task.CLASSIFICATION,
    )
    report = convert(digits_run.model, tmp_path, cfg)
    assert [t.name for t in report.inputs] == ["image"]
    assert report.fidelity is not None and report.fidelity.agreement > 0.999


def test_package_cli_converts_on_the_way(
    cli, wine_run: Run, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(wine_run.directory, run_dir)
    r = cli(
        "package",
        "--run",
        run_dir,
        "--to",
        "onnx",
        "--quantize",
        "int8",
        "--version",
        "2.0.0",
        "--parent",
        "1.0.0",
        "--key",
        signing_keys[0],
        "--out",
        tmp_path / "b",
    )
    assert r.code == 0, r.err
    bundle = tmp_path / "b" / "wine-2.0.0.bundle"
    with Bundle.open(bundle) as b:
        b.verify([load_verify_key(signing_keys[1])])
        m = b.manifest
    assert m["parent"] == "1.0.0" and m["model"]["format"] == "onnx"
    assert m["min_runtime"]["opsets"]["ai.onnx"] >= 13
    # Signing is not optional by accident.
    r = cli("package", "--run", run_dir, "--version", "3", "--out", tmp_path / "b")
    assert r.code == errors.UsageError.exit_code and "--key" in r.err
    r = cli(
        "package",
        "--run",
        run_dir,
        "--version",
        "3",
        "--key",
        signing_keys[1],
        "--out",
        tmp_path / "b",
    )
    assert r.code == errors.KeyFileError.exit_code


def test_build_cli_end_to_end(
    cli, data_files: dict[str, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    r = cli(
        "build",
        "--data",
        data_files["digits"],
        "--target",
        "label",
        "--epochs",
        4,
        "--quantize",
        "int8",
        "--max-conversion-drop",
        5,
        "--version",
        "0.1.0",
        "--key",
        signing_keys[0],
        "--out",
        tmp_path,
    )
    assert r.code == 0, r.err
    bundle = tmp_path / "digits-0.1.0.bundle"
    assert (tmp_path / "run" / "run.json").is_file() and (tmp_path / "models").is_dir()
    r = cli("verify", bundle, "--trusted-key", signing_keys[1], "--json")
    assert r.code == 0 and json.loads(r.out)["name"] == "digits"


def test_reading_a_bundle_needs_no_tensorflow(
    wine_bundle: Path, signing_keys: tuple[Path, Path]
) -> None:
    code = f"""
import io, sys, numpy as np
from edgeops.core.bundle import Bundle
from edgeops.core.signing import load_verify_key
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.profile import Profile
from device_agent.runtimes import open_runtime, run_float
import tempfile, pathlib
with Bundle.open({str(wine_bundle)!r}) as b:
    b.verify([load_verify_key({str(signing_keys[1])!r})])
    pre = Preprocessing.from_dict(b.manifest["preprocessing"])
    Profile.from_dict(b.manifest["baseline"])
    d = pathlib.Path(tempfile.mkdtemp())
    files = b.extract(d)
with open_runtime(files["model.tflite"]) as rt:
    # Features the training data had gaps in may be left out; they count as missing.
    record = {{c.name: 13.0 for c in pre.columns if not c.fill_missing}}
    x = pre.encode_records([{{**record, "hue_band": "mid"}}])
    run_float(rt, x)
heavy = ("tensorflow", "keras", "converters", "tf2onnx", "onnx")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_model_file_no_runtime_opens_is_refused_in_one_line(tmp_path: Path) -> None:
    """The runtime is chosen by the file's suffix from one table; anything else is a ModelError
    naming the suffixes there are runtimes for."""
    from device_agent.runtimes import RUNTIMES, open_runtime

    assert set(RUNTIMES) == {".tflite", ".onnx"}
    other = tmp_path / "model.pt"
    other.write_bytes(b"\x80\x02not a model")
    with pytest.raises(errors.ModelError, match=r"unsupported model type '\.pt' \(expected "):
        open_runtime(other)
    with pytest.raises(errors.ModelError, match="no such model file"):
        open_runtime(tmp_path / "missing.tflite")
    broken = tmp_path / "broken.ONNX"  # the suffix in any case
    broken.write_bytes(b"not protobuf")
    with pytest.raises(errors.ModelError, match="not a loadable ONNX model"):
        open_runtime(broken)  # opened by onnxruntime, which refuses it
