"""Bring your own model into a bundle and onto a device: a real published model with three inputs
(Silero VAD from its PyPI wheel: audio ``input``, recurrent ``state``, sample rate ``sr``) and its
batch-1 variant, packaged without a training run from speech-like audio the tests synthesise,
served by a real agent (predictions equal onnxruntime's own run, hostile requests answered 400),
updated over the air with the sample check on every input, and watched by a real service over a
real mosquitto (windows stored and evaluated for drift per input).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from device_agent.agent import Agent
from device_agent.client import AgentClient
from device_agent.replay import replay
from device_agent.serving import ServedModel
from device_agent.store import ModelStore
from edgeops.core import errors, wire
from edgeops.core.bundle import Bundle
from edgeops.core.signing import SigningKey, load_signing_key
from edgeops.packaging.package import PackageConfig, package_model
from edgeops.testing import Collector, Mosquitto
from tests.conftest import Corpus
from tests.test_agent import Signer, _send, make_config

Arrays = dict[str, npt.NDArray[Any]]
INPUT_WINDOWS = {"input:mean[c0]", "input:std[c0]", "state:mean[c0]", "state:std[c0]", "sr"}


@pytest.fixture(scope="module")
def audio(corpus: Corpus) -> dict[str, Arrays]:
    """Consecutive chunks of speech-like audio with the state the float model carried: 200 to
    package from, 600 to serve (another stretch of audio)."""
    from converters.corpus import vad_inputs

    model = corpus.model("vad")
    return {
        "package": vad_inputs(model, 200, seed=31)[0],
        "serve": vad_inputs(model, 600, seed=32)[0],
    }


@pytest.fixture(scope="module")
def vad_bundle(
    corpus: Corpus, audio: dict[str, Arrays], signing_keys, tmp_path_factory: Any
) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("vad-bundle")
    np.savez(d / "audio.npz", **audio["package"])  # type: ignore[arg-type]
    (d / "labels.txt").write_text("silence\nspeech\n")
    return package_model(
        corpus.model("vad"),
        d / "audio.npz",
        d / "dist",
        PackageConfig(version="1.0.0", name="vad"),
        task="classification",
        labels=("silence", "speech"),
        key=load_signing_key(signing_keys[0]),
    )


def _ort(model: Path, arrays: Arrays) -> npt.NDArray[np.float32]:
    """The speech probability of every chunk from onnxruntime directly, one call per chunk."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    out = []
    for i in range(len(arrays["input"])):
        feed: dict[str, Any] = {"input": arrays["input"][i : i + 1], "state": arrays["state"][i]}
        if "sr" in names:
            feed["sr"] = np.array(16000, np.int64)
        out.append(sess.run(None, feed)[0])
    return np.stack(out)


def test_a_model_with_three_inputs_becomes_a_bundle_without_a_training_run(
    vad_bundle: Path, signing_keys
) -> None:  # type: ignore[no-untyped-def]
    from edgeops.core.signing import load_verify_keys

    with Bundle.open(vad_bundle) as b:
        b.verify(load_verify_keys([signing_keys[1]]))
        m = b.info
        with np.load(io.BytesIO(b.read(m.require_samples().file))) as z:
            stored = sorted(z.files)
    assert m.task == "classification" and m.labels == ("silence", "speech")
    assert m.evaluation is None and m.training is not None and m.training.run is None
    sig = m.require("signature")
    assert [i["name"] for i in sig["inputs"]] == ["input", "state", "sr"]
    pre = m.require("preprocessing")
    assert pre["kind"] == "tensors"
    assert pre["inputs"] == [
        {"name": "input", "shape": [576]},
        {"name": "state", "shape": [2, 1, 128]},
        {"name": "sr", "shape": []},
    ]
    base = m.require("baseline")
    assert [(p["name"], p["kind"]) for p in base["inputs"]] == [
        ("input", "tensor"),
        ("state", "tensor"),
        ("sr", "numeric"),
    ]
    assert [p["kind"] for p in base["outputs"]] == ["class_output"]
    assert sum(base["outputs"][0]["class_counts"]) == 200
    assert m.min_runtime is not None and m.min_runtime["format"] == "onnx"
    assert stored == ["input_0", "input_1", "input_2", "output_0", "output_1"]


def test_the_agent_serves_it_as_onnxruntime_runs_it(
    corpus: Corpus, vad_bundle: Path, audio: dict[str, Arrays], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    serve = audio["serve"]
    want = _ort(corpus.model("vad"), serve)  # (N, 1, 1)
    cfg = make_config(tmp_path, 1, vad_bundle, signing_keys, window=3600, http=True)
    with Agent(cfg, mqtt=False) as agent:
        batch = agent.predict({"input": serve["input"], "state": serve["state"], "sr": 16000})
        assert batch.outputs[0].shape == (600, 1, 1) and batch.outputs[1].shape == (600, 2, 1, 128)
        np.testing.assert_allclose(batch.outputs[0], want, rtol=1e-5, atol=1e-6)
        expected = ["speech" if p >= 0.5 else "silence" for p in want.ravel()]
        assert batch.predicted == expected and set(expected) == {"silence", "speech"}
        one = agent.predict({"input": serve["input"][7], "state": serve["state"][7], "sr": 16000})
        np.testing.assert_allclose(one.outputs[0], want[7:8], rtol=1e-5, atol=1e-6)
        # The local HTTP API: named inputs as JSON, one sample or a batch.
        host, port = agent.local_api()  # type: ignore[misc]
        url = f"http://{host}:{port}/v1/predict"
        body = {"input": serve["input"][:3].tolist(), "state": serve["state"][:3].tolist()}
        status, got = _post(url, {"inputs": {**body, "sr": [16000] * 3}})
        assert status == 200, got
        np.testing.assert_allclose(np.asarray(got["outputs"][0]), want[:3], rtol=1e-5, atol=1e-6)
        assert got["predicted"] == expected[:3]
        hostile = {
            "no state": {"input": body["input"], "sr": 16000},
            "extra": {**body, "sr": 16000, "volume": 3},
            "short chunk": {"input": [c[:500] for c in body["input"]], "state": body["state"]}
            | {"sr": 16000},
            "wrong state": {"input": body["input"], "state": [[0.0] * 128] * 3, "sr": 16000},
            "text": {"input": "loud", "state": body["state"], "sr": 16000},
            "fractional rate": {**body, "sr": 16000.5},
            "NaN": {"input": [[float("nan")] * 576] * 3, "state": body["state"], "sr": 16000},
            "uneven": {"input": body["input"][:2], "state": body["state"], "sr": 16000},
            "an array": [0.0] * 576,
        }
        for what, inputs in hostile.items():
            status, got = _post(url, {"inputs": inputs})
            assert status == 400, (what, got)
            assert "\n" not in got["error"] and got["error"], what
        with pytest.raises(errors.InputDataError, match="missing input 'state'"):
            agent.predict({"input": serve["input"][:2], "sr": 16000})
        window = agent.flush_window()
        # `edgeops agent replay` sends a file of named arrays one sample a call, labels as feedback.
        labelled = tmp_path / "labelled.npz"
        np.savez(labelled, **{k: v[:12] if v.ndim else v for k, v in serve.items()},
                 y=np.array(expected[:12]))  # fmt: skip
        stats = replay(labelled, AgentClient(f"http://{host}:{port}"), rate=1000.0)
        assert (stats.sent, stats.ok, stats.failed, stats.feedback) == (12, 12, 0, 12)
        replayed = agent.flush_window()
        model_info = agent.model_info()
    assert model_info["preprocessing"]["kind"] == "tensors"
    assert replayed is not None and replayed.count == 12
    assert replayed.feedback.correct == replayed.feedback.total == 12
    assert window is not None and window.count == 600 + 1 + 3
    assert window.bad_inputs == len(hostile) + 1
    inputs = {w.name: w for w in window.inputs}
    assert set(inputs) == INPUT_WINDOWS
    assert all(sum(w.counts) + w.missing == 604 for w in inputs.values())  # type: ignore[union-attr]
    (out,) = window.outputs
    assert isinstance(out, wire.ClassOutputWindow)
    assert list(out.class_counts) == [
        expected.count("silence") + (expected[7] == "silence") + expected[:3].count("silence"),
        expected.count("speech") + (expected[7] == "speech") + expected[:3].count("speech"),
    ]


def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_fixed_batch_model_runs_one_sample_per_call(
    corpus: Corpus, audio: dict[str, Arrays], tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """The batch-1 export (input (1, 576), state (2, 1, 128), no sample rate), packaged through
    the CLI as a regressor of the speech probability."""
    from converters.corpus import vad_inputs

    model = corpus.model("vad-batch1")
    data, _ = vad_inputs(model, 60, seed=33)
    np.savez(tmp_path / "audio.npz", **data)  # type: ignore[arg-type]
    r = cli("package", "--model", model, "--data", tmp_path / "audio.npz",
            "--task", "regression", "--version", "2.0.0", "--name", "vad-b1",
            "--out", tmp_path / "dist", "--unsigned")  # fmt: skip
    assert r.code == 0, r.err
    bundle = tmp_path / "dist" / "vad-b1-2.0.0.bundle"
    store = ModelStore(tmp_path / "store", trusted_keys=[], allow_unsigned=True)
    serve = {k: v[:40] for k, v in audio["serve"].items() if k != "sr"}
    with ServedModel(store.install_file(bundle)) as served:
        assert served.runtime.inputs[0].shape == (1, 576)
        prepared = served.prepare(serve)
        assert len(prepared) == 40
        got = served.run(prepared.x)
        predicted = served.predicted(got)
    want = _ort(model, serve)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    assert predicted == pytest.approx([float(v) for v in want.ravel()], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "regression"], "package needs --run RUN, or --model MODEL --data"),
        (["--data", "D", "--task", "regression", "--to", "onnx"], "--to convert a run's model"),
        (["--run", "R", "--data", "D"], "--data: for a model packaged without --run"),
        (["--data", "D", "--task", "regression", "--labels", "L"], "names a classifier's classes"),
        (["--data", "D", "--task", "classification", "--labels", "L3"], "names 3 classes"),
        (["--data", "FEW", "--task", "regression"], "a baseline needs at least 20"),
        (["--data", "PARTIAL", "--task", "regression"], "no array for input 'state', 'sr'"),
    ],
)
def test_package_options_are_refused_in_one_line(
    corpus: Corpus, audio: dict[str, Arrays], tmp_path: Path, cli, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "d.npz", **audio["package"])  # type: ignore[arg-type]
    np.savez(
        tmp_path / "few.npz", **{k: v[:5] if v.ndim else v for k, v in audio["package"].items()}
    )  # type: ignore[arg-type]
    np.savez(tmp_path / "partial.npz", input=audio["package"]["input"])
    (tmp_path / "l.txt").write_text("silence\nspeech\n")
    (tmp_path / "l3.txt").write_text("silence\nspeech\nmusic\n")
    names = {"D": "d.npz", "FEW": "few.npz", "PARTIAL": "partial.npz", "L": "l.txt",
             "L3": "l3.txt", "R": "no-run"}  # fmt: skip
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    r = cli("package", "--model", corpus.model("vad"), *args, "--version", "1.0.0",
            "--out", tmp_path / "dist", "--unsigned")  # fmt: skip
    assert r.code != 0 and message in r.err, r.err
    assert r.err.strip().count("\n") == 0 and "Traceback" not in r.err
    assert not (tmp_path / "dist").exists()


# --- over the air and into the service ---------------------------------------------------------


class _Files:
    """A plain HTTP file server for update downloads."""

    def __init__(self, root: Path) -> None:
        import functools
        import http.server

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None  # type: ignore[attr-defined]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[_Files]:
    (tmp_path / "www").mkdir()
    f = _Files(tmp_path / "www")
    yield f
    f.close()


def test_an_update_checks_its_samples_on_every_input(
    broker: Mosquitto,
    corpus: Corpus,
    vad_bundle: Path,
    audio: dict[str, Arrays],
    signing_keys,
    command_keys,
    files: _Files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """1.0.0 to 1.1.0 (the model packaged again from other audio): the new model's sample check
    runs its three inputs and passes; a 1.2.0 whose samples were given a different state (and
    signed again) fails that check and the device keeps 1.1.0."""
    np.savez(tmp_path / "other.npz", **audio["serve"])  # type: ignore[arg-type]
    key = load_signing_key(signing_keys[0])
    newer = package_model(corpus.model("vad"), tmp_path / "other.npz", tmp_path / "www",
                          PackageConfig(version="1.1.0", name="vad", parent="1.0.0"),
                          task="classification", labels=("silence", "speech"), key=key)  # fmt: skip
    broken = _with_other_state(newer, tmp_path / "www" / "vad-1.2.0.bundle", key)
    cfg = make_config(tmp_path, broker.port, vad_bundle, signing_keys, window=3600,
                      commands=command_keys, allowed_hosts=(files.host,))  # fmt: skip
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    serve = audio["serve"]
    x = {"input": serve["input"][0], "state": serve["state"][0], "sr": 16000}
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        good = sign(_update_args(files, newer, predictions=5, max_latency_ratio=50.0))
        _send(broker.port, dev, good)
        while not _final_event(seen, good.id):
            agent.predict(x)
        final = _final_event(seen, good.id)
        assert final is not None and final.kind == "update-committed", final.message
        assert agent.predict(x).model.version == "1.1.0"
        bad = sign(_update_args(files, broken))
        _send(broker.port, dev, bad)
        assert seen.wait_for(lambda c: _final_event(c, bad.id) is not None, 30)
        failed = _final_event(seen, bad.id)
        assert failed is not None and failed.kind == "update-failed"
        assert "sample outputs differ" in failed.message and "output 0" in failed.message
        assert agent.predict(x).model.version == "1.1.0"


def _update_args(files: _Files, bundle: Path, **health: Any) -> wire.UpdateArgs:
    data = bundle.read_bytes()
    return wire.UpdateArgs(
        url=f"http://{files.host}/{bundle.name}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        name="vad",
        version=_version(bundle),
        health=wire.HealthArgs(**health),
    )


def _version(bundle: Path) -> str:
    with Bundle.open(bundle) as b:
        return b.info.version


def _final_event(seen: Collector, cmd_id: str) -> wire.Event | None:
    final = ("update-committed", "update-rolled-back", "update-failed")
    with seen._lock:
        return next((e for e in seen.events if e.command_id == cmd_id and e.kind in final), None)


def _with_other_state(bundle: Path, dest: Path, key: SigningKey) -> Path:
    """``bundle`` as 1.2.0 with the state input of its samples replaced (signed again)."""
    from edgeops.core.bundle import write_bundle

    with Bundle.open(bundle) as b:
        b.verify([key.verify_key])
        manifest = dict(b.manifest)
        files = {name: b.read(name) for name in manifest["files"]}
    samples = manifest["samples"]["file"]
    with np.load(io.BytesIO(files[samples])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["input_1"] = np.full_like(arrays["input_1"], 0.5)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    files[samples] = buf.getvalue()
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")}
    manifest["version"] = "1.2.0"
    return write_bundle(dest, manifest, files, key=key)


def test_a_service_stores_its_windows_and_evaluates_drift_per_input(
    broker: Mosquitto,
    vad_bundle: Path,
    audio: dict[str, Arrays],
    signing_keys,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """Windows of 200 chunks through mosquitto into a service on SQLite: the audio the baseline
    was made from (no input drifts), then the same audio eight times louder, which the input's
    statistics show, and neither the state (the same as before) nor the sample rate."""
    from edgeops.service.server import Service
    from edgeops.testing import until
    from tests.test_service import service_config

    cfg = service_config(tmp_path, broker.port, vad_bundle, signing_keys)
    name = f"vad-{uuid.uuid4().hex[:6]}"
    calm = audio["package"]
    with Service(cfg, http=False) as service:
        assert service.connected.wait(10)
        agent = Agent(
            make_config(
                tmp_path / name, broker.port, vad_bundle, signing_keys, device=name, window=3600
            ),
            http=False,
        ).start()
        try:
            assert agent.link is not None and agent.link.wait_connected(10)
            for _ in range(3):  # with feedback: accuracy, but no reference to hold it to
                p = agent.predict({"input": calm["input"], "state": calm["state"], "sr": 16000})
                fed = zip(p.ids, p.predicted, strict=True)
                assert all(agent.feedback(i, label) for i, label in fed)
                agent.flush_window()
            assert until(lambda: service.counters.stored_windows >= 3)
            assert until(  # the span of all three
                lambda: any(
                    r["feature"] == "sr" and r["samples"] >= 600
                    for r in service.store.drift.rows(device=name)
                )
            )
            assert not [r for r in service.store.drift.rows(device=name) if r["drifted"]]
            for _ in range(3):
                agent.predict({"input": calm["input"] * 8, "state": calm["state"], "sr": 16000})
                agent.flush_window()
            assert until(lambda: service.counters.stored_windows >= 6)
            assert until(
                lambda: any(
                    r["feature"] == "input:std[c0]" and r["drifted"]
                    for r in service.store.drift.rows(device=name)
                )
            )
        finally:
            agent.stop()
        rows = service.store.drift.rows(device=name)
    features = {(r["kind"], r["feature"]) for r in rows}
    assert {("input", f) for f in INPUT_WINDOWS} <= features, features
    assert ("output", "class") in features
    assert not any(r["kind"] == "concept" for r in rows)  # no evaluation: no reference accuracy
    assert service.evaluator.errors == 0 and service.evaluator.evaluations > 0
    drifted = {r["feature"] for r in rows if r["kind"] == "input" and r["drifted"]}
    assert "input:std[c0]" in drifted and drifted <= {"input:mean[c0]", "input:std[c0]"}, drifted


def test_a_one_input_model_and_its_batch1_export(corpus: Corpus, tmp_path: Path) -> None:
    """The PP-OCR angle classifier (a Paddle export, input ``x`` (N, 3, ?, ?)) packaged from
    rendered text lines, and the same model exported with its batch fixed at 1: both become
    one-input bundles (the data's 3x48x192 fixed), served as onnxruntime runs them, a batch one
    sample per call for the batch-1 export, every window counting its input."""
    import onnx
    import onnxruntime as ort

    from converters.corpus import ocr_cls_inputs

    source = corpus.model("ocr-cls")
    b1 = onnx.load(str(source))
    for value in (*b1.graph.input, *b1.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(b1, str(tmp_path / "cls-b1.onnx"))
    x, _ = ocr_cls_inputs(24, seed=51)
    served, _ = ocr_cls_inputs(6, seed=52)
    np.savez(tmp_path / "lines.npz", x=x)
    sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": served})[0]
    for model in (source, tmp_path / "cls-b1.onnx"):
        bundle = package_model(model, tmp_path / "lines.npz", tmp_path / "dist",
                               PackageConfig(version="1.0.0", name=model.stem.replace(".", "-")),
                               task="classification", labels=("0", "180"), key=None)  # fmt: skip
        with Bundle.open(bundle) as b:
            b.verify([], allow_unsigned=True)
            pre = b.info.require("preprocessing")
        assert pre["kind"] == "tensor" and pre["shape"] == [3, 48, 192]
        cfg = make_config(tmp_path / model.stem, 1, bundle, ("k", "k"), window=3600)  # type: ignore[arg-type]
        cfg = replace(cfg, model=replace(cfg.model, trusted_keys=(), allow_unsigned=True))
        with Agent(cfg, mqtt=False, http=False) as agent:
            got = agent.predict(served)
            one = agent.predict(served[0])
            with pytest.raises(errors.InputDataError, match="shape"):
                agent.predict(np.zeros((2, 3, 48, 100), np.float32))
            window = agent.flush_window()
        np.testing.assert_allclose(got.outputs[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.outputs[0], want[:1], rtol=1e-5, atol=1e-6)
        assert got.predicted == ["0" if p[0] >= p[1] else "180" for p in want]
        assert window is not None and window.count == 7 and window.bad_inputs == 1
        assert {w.name for w in window.inputs} == {"x:mean[c0]", "x:std[c0]"}
