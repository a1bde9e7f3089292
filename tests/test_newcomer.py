"""A newcomer's mistakes: each gets one line and its exit code, or is refused where it used to be
accepted silently (issue 17). The README's own examples run in tests/test_readme.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device_agent.agent import Agent
from device_agent.client import AgentClient
from device_agent.config import (
    AgentConfig,
    DeviceConfig,
    HttpConfig,
    ModelConfig,
    MqttConfig,
)
from edgeops.core import errors
from edgeops.core.columns import read_table
from edgeops.core.logstream import native_level
from edgeops.core.preprocessing import Preprocessing
from edgeops.packaging.package import PackageConfig
from edgeops.trainer.schema import infer_schema

# Runs the CLI as if the service extra were not installed: its packages cannot be imported.
NO_SERVICE_EXTRA = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    class Hide(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("sqlalchemy", "litestar", "psycopg", "swagger_ui"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    from edgeops.cli import main
    main(sys.argv[1:])
    """
)


def _without_service_extra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_SERVICE_EXTRA, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("argv", [["serve"], ["tokens", "list"]])
def test_service_commands_name_the_missing_extra(argv: list[str]) -> None:
    r = _without_service_extra(*argv)
    assert r.returncode == errors.MissingExtraError.exit_code, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: this needs the 'sqlalchemy' package: pip install 'edgeops[service]'"
    ]


@pytest.mark.parametrize(
    "argv", [["fleet", "status"], ["drift", "report"], ["models", "list"], ["deploy", "list"]]
)
def test_client_commands_need_no_service_extra(argv: list[str]) -> None:
    # Nothing listens on port 9: the client gets as far as the network, in one line.
    r = _without_service_extra(*argv, "--url", "http://127.0.0.1:9")
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: cannot reach the service at http://127.0.0.1:9: [Errno 111] Connection refused"
    ]


# --- the agent's input ----------------------------------------------------------------------


def _wine_agent(tmp_path: Path, bundle: Path, keys: tuple[Path, Path]) -> AgentConfig:
    return AgentConfig(
        device=DeviceConfig(id="newcomer", fleet="test"),
        model=ModelConfig(store=tmp_path / "store", bundle=bundle, trusted_keys=(keys[1],)),
        mqtt=MqttConfig(outbox=tmp_path / "outbox.db"),
        http=HttpConfig(enabled=True, port=0),
    )


def _record(pre: Preprocessing) -> dict[str, object]:
    return {c.name: ("mid" if c.kind == "categorical" else c.mean) for c in pre.columns}


def test_agent_refuses_unknown_and_missing_features(
    wine_bundle: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = _wine_agent(tmp_path, wine_bundle, signing_keys)
    with Agent(cfg, mqtt=False) as agent, AgentClient(agent.http.address) as client:
        pre = Preprocessing.from_dict(client.model()["preprocessing"])
        # The training data had gaps in magnesium only: it alone may be left out.
        assert [c.name for c in pre.columns if c.fill_missing] == ["magnesium"]
        full = _record(pre)
        # In process: one record as a dict, with and without a feature.
        assert agent.predict(full).predicted[0].startswith("class_")
        without_alcohol = {k: v for k, v in full.items() if k != "alcohol"}
        with pytest.raises(errors.InputDataError, match="missing feature alcohol"):
            agent.predict(without_alcohol)
        with pytest.raises(errors.InputDataError, match="missing feature alcohol"):
            agent.predict([full, without_alcohol])
        without_magnesium = {k: v for k, v in full.items() if k != "magnesium"}
        assert len(agent.predict(without_magnesium).ids) == 1
        assert len(agent.predict({**full, "magnesium": None}).ids) == 1
        # Over HTTP: 400 with one line for a field the model does not take, or one left out.
        for body, why in [
            ({"inputs": [{"foo": 1}]}, "unknown feature foo"),
            ({"records": [{**full, "alcohl": 13.0}]}, "unknown feature alcohl"),
            ({"records": [without_alcohol]}, "missing feature alcohol"),
            ({"columns": {k: [v] for k, v in without_alcohol.items()}}, "missing feature alcohol"),
            ({"columns": {**{k: [v] for k, v in full.items()}, "x": [1]}}, "unknown feature x"),
        ]:
            with pytest.raises(errors.InputDataError, match=why):
                client._call("POST", "/v1/predict", body)
        assert client.predict([full], kind="records")["predicted"][0].startswith("class_")
        assert client.health()["status"] == "ok"


# --- training -------------------------------------------------------------------------------


def test_one_stray_text_cell_is_a_schema_anomaly(
    data_files: dict[str, Path], tmp_path: Path
) -> None:
    lines = data_files["wine"].read_text().splitlines()
    header = lines[0].split(",")
    row = lines[5].split(",")
    row[header.index("alcohol")] = "abc"
    lines[5] = ",".join(row)
    bad = tmp_path / "wine-abc.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(errors.SchemaError) as e:
        infer_schema(read_table(bad), "cultivar")
    assert e.value.details == [
        "alcohol: wrong type: 177 of 178 values are numbers, the rest text such as 'abc': fix "
        "those cells (or give --schema to declare the column categorical)"
    ]
    # A column of words stays categorical.
    sch = infer_schema(read_table(data_files["wine"]), "cultivar")
    assert next(f for f in sch.features if f.name == "hue_band").kind == "categorical"


def test_train_refuses_a_missing_file_before_tensorflow(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from edgeops.cli import main
        try:
            main(["train", "--data", {str(tmp_path / "wnie.csv")!r}, "--target", "cultivar",
                  "--out", {str(tmp_path / "runs" / "wine")!r}])
        except SystemExit as e:
            heavy = ("tensorflow", "keras")
            print(e.code, sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == [str(errors.InputDataError.exit_code), "[]"]
    assert r.stderr.strip() == f"error: {tmp_path / 'wnie.csv'}: no such file"
    assert not (tmp_path / "runs").exists()


def test_a_failed_first_step_leaves_no_run_directory(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    r = cli("train", "--data", empty, "--target", "b", "--out", tmp_path / "run")
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "run").exists()


def test_a_weak_model_is_not_blessed_without_min_accuracy(  # type: ignore[no-untyped-def]
    cli, data_files: dict[str, Path], tmp_path: Path
) -> None:
    # One epoch of the wine MLP is far from 90 % on the test split; with no --min-accuracy
    # given the run is still judged, and its epochs are shown as they go.
    r = cli(
        "train",
        "--data",
        data_files["wine"],
        "--target",
        "cultivar",
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
    )
    assert r.code == errors.GateError.exit_code, r.out + r.err
    assert "train: epoch 1/1: loss" in r.err
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["blessed"] is False and run["metrics"]["accuracy"] < 0.9
    assert any("0.9" in reason for reason in run["reasons"]), run["reasons"]
    # The same run with the bar lowered on purpose is blessed.
    r = cli(
        "train",
        "--data",
        data_files["wine"],
        "--target",
        "cultivar",
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        "--min-accuracy",
        0,
    )
    assert r.code == 0, r.err


def test_min_accuracy_has_a_default(cli) -> None:  # type: ignore[no-untyped-def]
    text = " ".join(cli("train", "--help").out.split())
    assert "--min-accuracy FRACTION Bless a classifier only at or above" in text
    assert "(0 blesses any). [default: 0.9]" in text


# --- packaging ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["banana", "1", "1.0", "v1.0.0", "01.0.0", "1.0.0-beta", ""])
def test_versions_are_semantic(version: str) -> None:
    with pytest.raises(errors.UsageError, match="not a semantic version"):
        PackageConfig(version).checked()


@pytest.mark.parametrize("version", ["1.0.0", "0.1.0", "2.10.3", "1.2.0-rc1", "1.2.0-a3"])
def test_semantic_versions_pass(version: str) -> None:
    assert PackageConfig(version).checked().version == version


def test_package_never_overwrites_without_force(  # type: ignore[no-untyped-def]
    cli, wine_run, wine_int8: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    base = ["package", "--run", wine_run.directory, "--model", wine_int8, "--unsigned"]
    r = cli(*base, "--version", "banana", "--out", tmp_path)
    assert r.code == errors.UsageError.exit_code and "not a semantic version" in r.err
    r = cli(*base, "--version", "1.0.0", "--out", tmp_path)
    assert r.code == 0, r.err
    bundle = tmp_path / "wine-1.0.0.bundle"
    before = bundle.read_bytes()
    r = cli(*base, "--version", "1.0.0", "--out", tmp_path)
    assert r.code == errors.OutputError.exit_code
    assert r.err.strip() == (
        f"error: {bundle} exists: pass --force to replace it, or a new --version"
    )
    assert bundle.read_bytes() == before
    r = cli(*base, "--version", "1.0.0", "--out", tmp_path, "--force")
    assert r.code == 0, r.err


# --- option names ---------------------------------------------------------------------------


def test_old_option_names_are_hidden_aliases(  # type: ignore[no-untyped-def]
    cli, wine_bundle: Path, signing_keys: tuple[Path, Path]
) -> None:
    r = cli("verify", wine_bundle, "--pubkey", signing_keys[1])
    assert r.code == 0, r.err
    assert "warning: --pubkey is deprecated; use --trusted-key" in r.err
    assert "--pubkey" not in cli("verify", "--help").out
    assert "--trusted-key" in cli("serve", "--help").out
    assert "--pubkey" not in cli("serve", "--help").out
    convert_help = cli("convert", "--help").out
    assert "--hw-target" in convert_help and "--target" not in convert_help.replace("--hw-", "")
    for command in ("serve", "simulate"):
        assert "--json-logs" in cli(command, "--help").out


def test_convert_target_is_the_old_name_of_hw_target(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m.keras"
    model.write_bytes(b"not a model")
    # float16 for an mcu is refused before any work, whichever name gives the target.
    new = cli(
        "convert",
        model,
        "--to",
        "tflite",
        "--quantize",
        "float16",
        "--hw-target",
        "mcu",
        "--out",
        tmp_path / "o",
    )
    old = cli(
        "convert",
        model,
        "--to",
        "tflite",
        "--quantize",
        "float16",
        "--target",
        "mcu",
        "--out",
        tmp_path / "o",
    )
    assert new.code == old.code == errors.UsageError.exit_code
    assert "warning: --target is deprecated; use --hw-target" in old.err
    assert new.err.strip().splitlines()[-1] == old.err.strip().splitlines()[-1]
    both = cli(
        "convert",
        model,
        "--to",
        "tflite",
        "--target",
        "mcu",
        "--hw-target",
        "mcu",
        "--out",
        tmp_path / "o",
    )
    assert both.code == errors.UsageError.exit_code and "give --hw-target only" in both.err


def test_simulate_needs_data(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("simulate", "--devices", 2, "--bundle", tmp_path / "x.bundle")
    assert r.code == 2 and "Missing option '--data'" in r.err
    base = ["simulate", "--devices", 2, "--bundle", tmp_path / "x.bundle"]
    r = cli(*base, "--data", tmp_path / "nope.csv")
    assert r.code == errors.InputDataError.exit_code
    assert "no such file (or --data sample" in r.err


# --- native log lines ----------------------------------------------------------------------


def test_native_lines_get_levels_and_known_chatter_is_debug() -> None:
    assert native_level("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") == (
        10,
        "Created TensorFlow Lite XNNPACK delegate for CPU.",
    )
    level, text = native_level(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
    )
    assert level == 10 and text.startswith("All log messages")
    level, text = native_level("W0000 00:00:1733480000.123456   12345 foo.cc:42] disk is full")
    assert (level, text) == (30, "disk is full")
    assert native_level("E0000 00:00:1733480000.1  7 a.cc:1] broken") == (40, "broken")
    assert native_level("something odd") == (30, "something odd")


def test_native_stderr_goes_through_logging_as_json_lines(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import logging, os, sys
        from edgeops.core import logstream
        logstream.configure(logging.INFO, json_lines=True)
        with logstream.route_native_stderr():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"WARNING: the disk is full\\n")
            logging.getLogger("edgeops").info("from python")
            print("plain python stderr", file=sys.stderr)
            import time; time.sleep(0.3)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert {(x["logger"], x["level"], x["message"]) for x in records} == {
        ("native", "warning", "the disk is full"),
        ("edgeops", "info", "from python"),
    }
    assert [line for line in lines if not line.startswith("{")] == ["plain python stderr"]


def test_replay_sends_the_models_own_target_as_labels(  # type: ignore[no-untyped-def]
    cli, wine_bundle: Path, signing_keys: tuple[Path, Path], data_files, tmp_path: Path
) -> None:
    cfg = _wine_agent(tmp_path, wine_bundle, signing_keys)
    cfg = replace(cfg, http=HttpConfig(unix_socket=tmp_path / "a.sock"))
    with Agent(cfg, mqtt=False) as agent:
        r = cli(
            "agent",
            "replay",
            data_files["wine"],
            "--rate",
            500,
            "--limit",
            30,
            "--url",
            f"unix:{tmp_path / 'a.sock'}",
        )
        assert r.code == 0, r.err
        assert "30 ok, 0 failed, 30 labels sent back" in r.out
        window = agent.flush_window()
        assert window is not None and window.feedback.total == 30
    assert np.isfinite(window.feedback.total)


# --- deployment output ----------------------------------------------------------------------


def test_deployment_tables_cut_reasons_between_words() -> None:
    from edgeops.core.terminal import clip_words
    from edgeops.service.report import deployment_report, deployments_table

    reason = (
        "health window failed: p95 latency 12.3 ms over the budget of 10 ms against the "
        "previous model's 8.1 ms"
    )
    assert clip_words(reason, 70) == (
        "health window failed: p95 latency 12.3 ms over the budget of 10 ms…"
    )
    assert clip_words("short", 70) == "short"
    device = {"device": "pi-01", "stage": 0, "state": "rolled-back", "reason": reason}
    dep = {
        "id": "d1",
        "model_name": "digits",
        "model_version": "1.1.0",
        "fleet": "lab",
        "state": "aborted",
        "reason": reason,
        "stage": 0,
        "stage_sizes": [1],
        "trigger": "cli",
        "counts": {"rolled-back": 1},
        "history": [],
        "device_states": [device],
        "devices": {"rolled-back": 1},
        "created": 0.0,
    }
    # The table rows (the last line of each); the report's state line shows the whole reason.
    for text in (deployment_report(dep), deployments_table([dep])):
        row = text.splitlines()[-1]
        assert row.endswith("over the budget of 10 ms…"), row
    assert f"state      aborted ({reason})" in deployment_report(dep)


def test_the_abort_note_counts_every_device_that_went_back() -> None:
    from edgeops.service.rollouts import rolled_back_note

    assert rolled_back_note([{"state": "rolled-back"}, {"state": "failed"}]) == (
        "1 device rolled back by their own health check"
    )
    assert rolled_back_note([{"state": "reverted"}, {"state": "rolled-back"}]) == (
        "2 devices rolled back (1 by the abort, 1 by their own health check)"
    )
    assert rolled_back_note([{"state": "reverted"}] * 3) == "3 devices rolled back"
    assert rolled_back_note([{"state": "skipped"}]) == "0 devices rolled back"
