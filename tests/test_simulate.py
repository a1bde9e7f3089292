"""The fleet simulator: drift maths, option parsing, and real agents against a real mosquitto."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeops.core import errors, wire
from edgeops.core.files import sha256_file
from edgeops.core.manifest import Manifest
from edgeops.simulate import Fleet, FleetConfig, Samples, load_samples, parse_drift
from edgeops.simulate.inject import (
    apply_drift,
    blank,
    dominant_rows,
    label_classes,
    reference_scales,
)
from edgeops.simulate.pollselect import poll_select
from edgeops.simulate.spec import DriftSpec, parse_devices, parse_labels
from edgeops.testing import Collector, Mosquitto

HEAVY = ("tensorflow", "keras", "converters", "tf2onnx", "onnx")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- drift specs and option strings -----------------------------------------------------------


def test_parse_drift_specs() -> None:
    s = parse_drift("kind=covariate,amount=2.5,devices=0-9,after=30")
    assert s == DriftSpec("covariate", 2.5, devices="0-9", after=30.0)
    assert str(s) == "kind=covariate,amount=2.5,devices=0-9,after=30"
    assert parse_drift(str(s)) == s
    assert parse_drift("kind=missing") == DriftSpec("missing", 0.3)  # default amount, all devices
    label = parse_drift(" kind = label , class=3 , devices=25% ")
    assert label.label == "3" and label.amount == 0.9 and label.devices == "25%"
    assert parse_drift("kind=noise,features=alcohol+hue").features == ("alcohol", "hue")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("amount=2", "'kind' is missing"),
        ("kind=shift", "unknown kind 'shift'"),
        ("kind=covariate,amount=lots", "amount 'lots' is not a number"),
        ("kind=covariate,devices=3-1", "not a range"),
        ("kind=covariate,devices=x", "use all, or N, A-B and P%"),
        ("kind=missing,amount=1.5", "fraction in (0, 1]"),
        ("kind=noise,amount=-1", "must be positive"),
        ("kind=covariate,after=-5", "0 or more"),
        ("kind=covariate,speed=3", "unknown key 'speed'"),
        ("kind=covariate,kind=noise", "given twice"),
        ("kind=covariate,class=3", "'class' is for label drift only"),
        ("kind=covariate,2", "not key=value"),
    ],
)
def test_bad_drift_specs_say_why_in_one_line(spec: str, why: str) -> None:
    with pytest.raises(errors.UsageError) as e:
        parse_drift(spec)
    text = str(e.value)
    assert why in text and text.startswith(f"--drift {spec!r}: ") and "\n" not in text


def test_device_selections() -> None:
    assert parse_devices("all", 4) == (0, 1, 2, 3)
    assert parse_devices("0-2+7+5-5", 10) == (0, 1, 2, 5, 7)
    assert parse_devices("25%", 10) == (0, 1, 2)  # the first quarter, rounded up
    assert parse_devices("1%", 10) == (0,)  # at least one device
    assert parse_devices("100%", 3) == (0, 1, 2)
    with pytest.raises(errors.UsageError, match="the fleet has 5 device"):
        parse_devices("0-9", 5)
    with pytest.raises(errors.UsageError, match=r"\(0, 100\]"):
        parse_devices("150%", 5)
    assert parse_labels("site=lab, tier = edge") == {"site": "lab", "tier": "edge"}
    assert parse_labels(None) == {}
    with pytest.raises(errors.UsageError, match="not key=value"):
        parse_labels("site")


# --- drift injection: pure functions ----------------------------------------------------------


def _table(n: int = 400) -> Samples:
    rng = _rng(1)
    a = rng.normal(10.0, 2.0, n)
    a[3] = np.nan
    b = rng.normal(-5.0, 0.5, n)
    c = rng.choice(np.array(["red", "green", "blue"]), n)
    labels = np.where(a > 10, "hi", "lo")
    return Samples("tabular", {"a": a, "b": b, "c": c}, labels)


def _images(n: int = 50) -> Samples:
    x = _rng(2).uniform(0, 16, (n, 8, 8)).astype(np.float32)
    return Samples("tensor", {"image": x}, np.array([str(i % 10) for i in range(n)]))


def _same(x: Any, y: Any) -> bool:
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))


def test_covariate_shift_moves_numeric_features_only() -> None:
    t = _table()
    scales = reference_scales(t)
    before = {k: v.copy() for k, v in t.features.items()}
    out = apply_drift(t, parse_drift("kind=covariate,amount=2"), _rng(), scales)
    for name in ("a", "b"):
        expected = before[name] + 2 * np.nanstd(before[name])
        assert np.allclose(out.features[name], expected, equal_nan=True)
    assert np.isnan(out.features["a"][3])  # missing stays missing
    assert _same(out.features["c"], t.features["c"]) and _same(out.labels, t.labels)
    assert all(_same(t.features[k], before[k]) for k in before)  # the input is left alone
    only_a = apply_drift(t, parse_drift("kind=covariate,features=a"), _rng(), scales)
    assert not _same(only_a.features["a"], t.features["a"])
    assert _same(only_a.features["b"], t.features["b"])
    with pytest.raises(errors.UsageError, match="unknown feature"):
        apply_drift(t, parse_drift("kind=covariate,features=zz"), _rng(), scales)


def test_brightening_images_saturates_at_the_data_range() -> None:
    imgs = _images()
    x = imgs.features["image"]
    out = apply_drift(imgs, parse_drift("kind=covariate,amount=1"), _rng(), reference_scales(imgs))
    y = out.features["image"]
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.min() >= x.min() and y.max() == pytest.approx(x.max())
    assert y.mean() > x.mean() + 0.5 * x.std()
    assert np.allclose(np.minimum(x + x.std(), x.max()), y, atol=1e-4)
    assert _same(out.labels, imgs.labels)


def test_noise_is_seeded_and_centred() -> None:
    t = _table(4000)
    scales = reference_scales(t)
    spec = parse_drift("kind=noise,amount=0.5")
    one = apply_drift(t, spec, _rng(7), scales)
    assert _same(one.features["a"], apply_drift(t, spec, _rng(7), scales).features["a"])
    assert not _same(one.features["a"], apply_drift(t, spec, _rng(8), scales).features["a"])
    diff = one.features["b"] - t.features["b"]
    assert abs(diff.mean()) < 0.05 * scales["b"].std
    assert diff.std() == pytest.approx(0.5 * scales["b"].std, rel=0.05)
    assert _same(one.features["c"], t.features["c"]) and _same(one.labels, t.labels)


def test_missing_blanks_that_share_of_cells() -> None:
    t = _table(400)
    out = apply_drift(t, parse_drift("kind=missing,amount=0.25"), _rng(), reference_scales(t))
    assert np.isnan(out.features["b"]).sum() == 100
    assert np.isnan(out.features["a"]).sum() in range(100, 102)  # one was missing already
    assert (out.features["c"] == "").sum() == 100
    kept = ~np.isnan(out.features["b"])
    assert _same(out.features["b"][kept], t.features["b"][kept])
    assert _same(out.labels, t.labels)
    imgs = _images()
    dark = blank(imgs.features["image"], 0.1, _rng(), 0.0)
    assert (dark == 0).sum() == round(0.1 * dark.size) and dark.dtype == np.float32


def test_label_shift_makes_one_class_dominate() -> None:
    t = _table(400)
    out = apply_drift(t, parse_drift("kind=label,amount=0.8,class=hi"), _rng(), {})
    assert len(out) == len(t)
    assert out.labels is not None and (out.labels == "hi").sum() == 320
    # Whole rows are resampled: each drifted row is one of the original rows.
    assert t.labels is not None
    originals = set(zip(t.features["b"], t.features["c"], t.labels, strict=True))
    assert all(
        r in originals for r in zip(out.features["b"], out.features["c"], out.labels, strict=True)
    )
    default = apply_drift(t, parse_drift("kind=label,amount=1"), _rng(), {})
    assert set(default.labels.tolist()) == {"hi"}  # type: ignore[union-attr]  # first in order
    with pytest.raises(errors.UsageError, match="no rows of class 'zz'"):
        apply_drift(t, parse_drift("kind=label,class=zz"), _rng(), {})
    with pytest.raises(errors.UsageError, match="needs labels"):
        apply_drift(Samples("tabular", t.features), parse_drift("kind=label"), _rng(), {})
    y = _rng().normal(150, 50, 400)  # a regression target: its quartiles are the classes
    classes = label_classes(y)
    assert sorted(set(classes.tolist())) == ["q1", "q2", "q3", "q4"]
    idx = dominant_rows(classes, "q4", 0.9, _rng())
    assert (y[idx] > np.quantile(y, 0.75)).mean() == pytest.approx(0.9, abs=0.01)


# --- rows to replay ---------------------------------------------------------------------------


def test_tabular_rows_keep_labels_aside(data_files: dict[str, Path], tmp_path: Path) -> None:
    columns = [
        {"name": "alcohol", "kind": "numeric", "mean": 13.0, "std": 0.8},
        {"name": "magnesium", "kind": "numeric", "mean": 99.0, "std": 14.0},
        {"name": "hue_band", "kind": "categorical", "vocabulary": ["high", "low", "mid"]},
    ]
    plain: dict[str, Any] = {
        "name": "wine",
        "version": "1.0.0",
        "task": "classification",
        "preprocessing": {"kind": "tabular", "input": "features", "columns": columns},
        "training": {"target": "cultivar"},
    }
    manifest = Manifest.parse(plain)
    rows = load_samples(manifest, data_files["wine"], directory=tmp_path)
    assert rows.kind == "tabular" and list(rows.features) == ["alcohol", "magnesium", "hue_band"]
    assert len(rows) == 178 and np.isnan(rows.features["magnesium"]).sum() == 6
    assert rows.labels is not None and set(rows.labels.tolist()) == {
        "class_0",
        "class_1",
        "class_2",
    }
    # No data file: the sample the manifest records (by its sha256), never a guess by name.
    recorded = Manifest.parse(
        {
            **plain,
            "training": {"target": "cultivar", "data_sha256": sha256_file(data_files["wine"])},
        }
    )
    again = load_samples(recorded, directory=tmp_path / "s")
    assert (tmp_path / "s" / "wine.csv").is_file() and len(again) == 178
    with pytest.raises(errors.UsageError, match="--target nope"):
        load_samples(manifest, data_files["wine"], target="nope", directory=tmp_path)
    with pytest.raises(errors.UsageError, match="give --data"):
        load_samples(manifest, directory=tmp_path / "t")  # the target's name says wine: no
    other = Manifest.parse({**plain, "training": {"target": "cultivar", "data_sha256": "0" * 64}})
    with pytest.raises(errors.UsageError, match="give --data"):
        load_samples(other, directory=tmp_path / "u")
    assert not list((tmp_path / "u").iterdir())


# --- poll() for paho --------------------------------------------------------------------------


def test_poll_select_keeps_select_contract_above_1024() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert poll_select([a], [], [], 0) == ([], [], [])
        b.send(b"x")
        assert poll_select([a], [a], [], 1.0) == ([a], [a], [])
        with pytest.raises(TypeError):
            poll_select([None], [], [], 0)
        with pytest.raises(ValueError, match="negative"):
            poll_select([-1], [], [], 0)
        try:
            high = os.dup2(a.fileno(), 1500)  # select() refuses this one
        except OSError:
            pytest.skip("cannot open descriptor 1500 here")
        try:
            assert poll_select([high], [], [], 1.0) == ([high], [], [])
        finally:
            os.close(high)


# --- a fleet against the real broker ----------------------------------------------------------


def _config(broker: Mosquitto, bundle: Path, keys: tuple[Path, Path], **kw: Any) -> FleetConfig:
    defaults: dict[str, Any] = {
        "devices": 4,
        "bundle": bundle,
        "broker": f"mqtt://127.0.0.1:{broker.port}",
        "fleet": f"sim-{uuid.uuid4().hex[:8]}",
        "trusted_keys": (keys[1],),
        "window_seconds": 0.3,
        "rate": 20.0,
    }
    return FleetConfig(**{**defaults, **kw})


def _brightness(windows: list[wire.Telemetry]) -> float:
    """The mean pixel value over these windows (count-weighted)."""
    total = n = 0.0
    for t in windows:
        for i in t.inputs:
            if isinstance(i, wire.NumericWindow) and i.name.endswith("mean[c0]") and i.count:
                total += (i.mean or 0.0) * i.count
                n += i.count
    return total / n if n else float("nan")


def test_fleet_reports_drift_and_feedback(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path]
) -> None:
    cfg = _config(
        broker,
        digits_bundles[0],
        signing_keys,
        feedback=0.5,
        drift=(parse_drift("kind=covariate,amount=2,devices=0-1"),),
    )
    ids = cfg.device_ids()
    assert ids == ["sim-000", "sim-001", "sim-002", "sim-003"]
    with Collector(broker.port, fleet=cfg.fleet, client_id=f"c-{cfg.fleet}") as seen:
        fleet = Fleet(cfg).start()
        try:
            assert fleet.online == 4
            assert seen.wait_for(
                lambda c: {t.device for t in c.telemetry if t.count} == set(ids), 15
            )
            time.sleep(0.6)
            switched = time.time()
            assert fleet.inject("kind=covariate,amount=2,devices=2") == ("sim-002",)
            time.sleep(1.0)
            cleared = time.time()
            assert fleet.clear("0-2") == ("sim-000", "sim-001", "sim-002")
            time.sleep(1.0)
            stats = {s.device: s for s in fleet.stats()}
            assert stats["sim-003"].drift == () and stats["sim-000"].drift == ()
        finally:
            fleet.stop()
        assert seen.wait_for(
            lambda c: sum(not s.online for s in c.status) >= 4, 10
        )  # every agent stopped and said so
        final = {s.device: s for s in fleet.stats()}
        # Every prediction reached the broker: the last windows were flushed at stop.
        assert seen.wait_for(
            lambda c: all(
                sum(t.count for t in c.telemetry if t.device == d) == final[d].predictions
                for d in ids
            ),
            10,
        )

    def windows(device: str, start: float, end: float) -> list[wire.Telemetry]:
        return [
            t
            for t in seen.telemetry
            if t.device == device and t.count and t.window_start >= start and t.window_end <= end
        ]

    plain = _brightness(windows("sim-003", 0, float("inf")))
    assert 3 < plain < 7  # digits: pixels 0..16, mostly dark
    for device in ("sim-000", "sim-001"):  # drifted from the start until cleared
        assert _brightness(windows(device, 0, cleared)) > plain + 5
        assert _brightness(windows(device, cleared + 0.1, float("inf"))) < plain + 1.5
    assert _brightness(windows("sim-002", 0, switched)) < plain + 1.5
    assert _brightness(windows("sim-002", switched + 0.1, cleared)) > plain + 5
    for d in ids:
        assert final[d].predictions > 20 and final[d].errors == 0
        assert final[d].model == "digits 1.0.0" and final[d].latency_p95_ms is not None
        sent = [t for t in seen.telemetry if t.device == d]
        assert sum(t.feedback.total for t in sent) == final[d].feedback > 5

    # Brightened digits are misread: the feedback in telemetry says so.
    def accuracy(device: str, start: float, end: float) -> float:
        fed = [t.feedback for t in windows(device, start, end)]
        return sum(f.correct for f in fed) / max(1, sum(f.total for f in fed))

    assert accuracy("sim-003", 0, float("inf")) > 0.9
    assert accuracy("sim-000", 0, cleared) < 0.7
    summary = fleet.summary()
    assert summary.devices == 4 and summary.predictions == sum(
        s.predictions for s in final.values()
    )
    assert "predictions" in summary.line()


# --- the command line -------------------------------------------------------------------------


def test_cli_runs_a_small_fleet(
    cli,  # type: ignore[no-untyped-def]
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
) -> None:
    r = cli(
        "simulate",
        "--data",
        "sample",
        "--devices",
        2,
        "--broker",
        f"mqtt://127.0.0.1:{broker.port}",
        "--bundle",
        digits_bundles[0],
        "--trusted-key",
        signing_keys[1],
        "--command-key",
        command_keys[1],
        "--service-url",
        "http://127.0.0.1:8480",
        "--fleet",
        f"cli-{uuid.uuid4().hex[:8]}",
        "--duration",
        1.5,
        "--every",
        0.5,
        "--rate",
        10,
        "--window-seconds",
        0.5,
        "--drift",
        "kind=noise,devices=1",
    )
    assert r.code == 0, r.err
    assert "2/2 device(s) online" in r.err and "predictions" in r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["device", "online", "model"]
    assert lines[2].startswith("sim-000") and "kind=noise" in lines[3]
    assert lines[-1].startswith("total") and "2/2" in lines[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", 0], "--devices must be at least 1"),
        (["--devices", 2, "--drift", "kind=wobble"], "unknown kind 'wobble'"),
        (["--devices", 2, "--drift", "kind=noise,devices=0-7"], "the fleet has 2 device(s)"),
        (["--devices", 2, "--rate", 0], "--rate must be"),
        (["--devices", 2, "--broker", "http://x"], "use mqtt://HOST:PORT"),
        (["--devices", 2, "--service-url", "fleet.example"], "--service-url 'fleet.example'"),
    ],
)
def test_cli_bad_options_give_one_error_line(
    cli, tmp_path: Path, args: list[object], message: str
) -> None:  # type: ignore[no-untyped-def]
    base = ["simulate", "--data", "sample", "--bundle", tmp_path / "x.bundle", "--allow-unsigned"]
    r = cli(*base, *args)
    assert r.code == errors.UsageError.exit_code
    assert r.err.startswith("error: ") and r.err.count("\n") == 1 and message in r.err, r.err


def test_cli_missing_bundle_and_keys(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["simulate", "--data", "sample", "--devices", 2, "--bundle", tmp_path / "none.bundle"]
    r = cli(*base, "--allow-unsigned")
    assert r.code == errors.BundleError.exit_code
    assert r.err == f"error: {tmp_path / 'none.bundle'} is not a bundle: no such file\n"
    r = cli(*base)
    assert r.code == 2 and r.err.startswith("error: give --trusted-key") and r.err.count("\n") == 1


def test_cli_a_missing_command_key_is_one_error(
    cli, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    args = ["--data", "sample", "--devices", 2, "--bundle", digits_bundles[0]]
    args += ["--trusted-key", signing_keys[1]]
    r = cli("simulate", *args, "--command-key", tmp_path / "command.pub")
    assert r.code == errors.KeyFileError.exit_code
    assert r.err == f"error: {tmp_path / 'command.pub'}: no such key file\n"


# --- boundaries -------------------------------------------------------------------------------


def test_simulator_never_imports_tensorflow(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path]
) -> None:
    code = f"""
import sys, time
from pathlib import Path
from edgeops.simulate import Fleet, FleetConfig
cfg = FleetConfig(devices=2, bundle=Path({str(digits_bundles[0])!r}),
                  broker="mqtt://127.0.0.1:{broker.port}", fleet="guard-{uuid.uuid4().hex[:6]}",
                  trusted_keys=(Path({str(signing_keys[1])!r}),), rate=20, window_seconds=0.3)
with Fleet(cfg) as fleet:
    time.sleep(1.0)
    assert sum(s.predictions for s in fleet.stats()) > 10
print("LOADED:", *[m for m in {HEAVY!r} if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED:"


def test_cli_stops_cleanly_on_sigterm(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path]
) -> None:
    args = ["simulate", "--data", "sample", "--devices", "2"]
    args += ["--broker", f"mqtt://127.0.0.1:{broker.port}"]
    args += ["--bundle", str(digits_bundles[0]), "--trusted-key", str(signing_keys[1])]
    args += ["--fleet", f"term-{uuid.uuid4().hex[:6]}", "--rate", "20", "--window-seconds", "0.3"]
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('LOADED:', *[m for m in {HEAVY!r} if m in sys.modules]))\n"
        f"from edgeops.cli import main\nmain({args!r})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline, err = time.monotonic() + 30, ""
        while "online" not in err and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 0.5)[0]:
                err += proc.stderr.readline()
        assert "2/2 device(s) online" in err, err
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert "sim-001" in out and out.splitlines()[-1] == "LOADED:"
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert int(total.split()[3].replace(",", "")) > 10  # predictions made before the signal
