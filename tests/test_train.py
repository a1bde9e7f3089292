"""The training pipeline on real data: runs, the baseline, caching, schemas, blessing, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeops.core import errors
from edgeops.core.columns import Table, read_csv
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.profile import CategoricalProfile, NumericProfile, Profile, TensorProfile
from edgeops.trainer.config import TrainConfig
from edgeops.trainer.metrics import BlessingThresholds
from edgeops.trainer.pipeline import StepResult
from edgeops.trainer.run import Run, train
from edgeops.trainer.schema import Schema, infer_schema, validate

STEPS = ["ingest", "schema", "profile", "transform", "train", "evaluate"]


def test_wine_run_artifacts(wine_run: Run) -> None:
    d = wine_run.directory
    for step in STEPS:
        assert (d / step / "step.json").is_file(), step
    assert not list(d.glob(".*.partial"))
    assert wine_run.task == "classification"
    assert wine_run.classes == ("class_0", "class_1", "class_2")
    assert wine_run.metrics["accuracy"] > 0.85
    assert len(wine_run.metrics["confusion"]) == 3
    assert wine_run.blessed and "no baseline" in " ".join(wine_run.reasons)
    # Per-slice metrics for every value of the text column.
    slices = wine_run.evaluation["slices"]["hue_band"]
    assert set(slices) == {"low", "mid", "high"}
    assert sum(s["count"] for s in slices.values()) == wine_run.metrics["count"]
    again = Run.load(d)
    assert again.metrics == wine_run.metrics


def test_lineage_records_inputs_params_versions(wine_run: Run, data_files: dict[str, Path]) -> None:
    lineage = json.loads((wine_run.directory / "lineage.json").read_text())
    assert [s["name"] for s in lineage["steps"]] == STEPS
    assert (
        lineage["inputs"]["data"]["sha256"]
        == __import__("hashlib").sha256(data_files["wine"].read_bytes()).hexdigest()
    )
    libs = lineage["run"]["libraries"]
    assert "numpy" in libs and "keras" in libs
    train_step = next(s for s in lineage["steps"] if s["name"] == "train")
    assert train_step["params"]["epochs"] == 40 and train_step["duration_s"] > 0
    assert "model.keras" in train_step["outputs"]


def test_baseline_profile(wine_run: Run) -> None:
    profile = Profile.from_dict(wine_run.baseline)
    schema = wine_run.schema
    assert [p.name for p in profile.inputs] == [f.name for f in schema.inputs]
    alcohol = profile.input("alcohol")
    assert isinstance(alcohol, NumericProfile)
    assert 8 <= len(alcohol.edges) + 1 <= 10  # 10 quantile bins, open tails
    assert abs(sum(alcohol.probs) - 1) < 1e-9
    magnesium = profile.input("magnesium")
    assert isinstance(magnesium, NumericProfile) and magnesium.missing > 0
    band = profile.input("hue_band")
    assert isinstance(band, CategoricalProfile)
    assert set(band.categories) == {"low", "mid", "high"}
    (outputs,) = profile.outputs
    assert list(outputs.labels) == list(wine_run.classes)  # type: ignore[union-attr]


def test_model_takes_raw_features_through_preprocessing(wine_run: Run) -> None:
    import keras

    table = read_csv(
        Path(json.loads((wine_run.directory / "run.json").read_text())["data"]["path"])
    )
    records = [{k: table[k][i] for k in table.names} for i in range(20)]
    pre = wine_run.preprocessing
    x = pre.encode_records(records)
    assert x.shape == (20, 14) and np.isfinite(x).all()
    model = keras.models.load_model(wine_run.model)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    truth = [wine_run.classes.index(str(t)) for t in table["cultivar"][:20]]
    assert (pred == np.array(truth)).mean() >= 0.8
    # Unknown categories and missing numbers still encode.
    odd = pre.encode_records([{**records[0], "hue_band": "unheard-of", "magnesium": None}])
    assert np.isfinite(odd).all()
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


def test_digits_run_uses_a_cnn_and_tensor_profile(digits_run: Run) -> None:
    assert digits_run.metrics["accuracy"] > 0.9
    profile = Profile.from_dict(digits_run.baseline)
    (image,) = profile.inputs
    assert isinstance(image, TensorProfile)
    assert [f.name for f in image.features] == ["mean[c0]", "std[c0]"]
    assert digits_run.preprocessing.shape == (8, 8)
    summary = json.loads((digits_run.directory / "train" / "step.json").read_text())["summary"]
    assert summary["epochs"] <= 10


def test_rerun_reuses_unchanged_steps(
    wine_run: Run, data_files: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "wine"
    shutil.copytree(wine_run.directory, run_dir)
    seen: list[StepResult] = []
    bar = BlessingThresholds(min_accuracy=0.9)  # the wine_run fixture's, edgeops train's
    cfg = TrainConfig(target="cultivar", epochs=40, slice_by=("hue_band",), thresholds=bar)
    train(data_files["wine"], run_dir, cfg, on_step=seen.append)
    assert [r.cached for r in seen] == [True] * 6
    # Changing only the number of bins re-runs the profile and what depends on it.
    seen.clear()
    train(
        data_files["wine"],
        run_dir,
        TrainConfig(**{**cfg.__dict__, "bins": 12}),
        on_step=seen.append,
    )
    ran = {r.name for r in seen if not r.cached}
    assert ran == {"profile", "evaluate"}
    # A damaged artifact is noticed and rebuilt.
    seen.clear()
    (run_dir / "transform" / "train.npz").write_bytes(b"garbage")
    train(
        data_files["wine"],
        run_dir,
        TrainConfig(**{**cfg.__dict__, "bins": 12}),
        on_step=seen.append,
    )
    assert "transform" in {r.name for r in seen if not r.cached}


def test_regression_with_slices_and_blessing(data_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(target="progression", epochs=60, slice_by=("sex",))
    run = train(data_files["diabetes"], tmp_path / "first", cfg)
    assert run.task == "regression"
    assert set(run.metrics) >= {"mae", "rmse", "r2"} and run.metrics["r2"] > 0.3
    assert set(run.evaluation["slices"]["sex"]) == {"F", "M"}
    # Compared with itself the run is blessed with no change.
    second = train(
        data_files["diabetes"],
        tmp_path / "first",
        TrainConfig(**{**cfg.__dict__, "baseline_run": tmp_path / "first"}),
    )
    assert second.blessed and second.evaluation["blessing"]["baseline_delta"] == 0.0
    # An absolute threshold it cannot meet: not blessed, artifacts kept, GateError.
    strict = TrainConfig(**{**cfg.__dict__, "thresholds": type(cfg.thresholds)(max_rmse=1.0)})
    with pytest.raises(errors.GateError, match="not blessed"):
        train(data_files["diabetes"], tmp_path / "strict", strict)
    assert (tmp_path / "strict" / "run.json").is_file()
    assert not Run.load(tmp_path / "strict").blessed


def test_cli_train_and_validate(
    cli, wine_run: Run, data_files: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    shutil.copytree(wine_run.directory, run_dir)
    r = cli(
        "train",
        "--data",
        data_files["wine"],
        "--target",
        "cultivar",
        "--out",
        run_dir,
        "--epochs",
        40,
        "--slice-by",
        "hue_band",
    )
    assert r.code == 0, r.err
    assert r.out.count("reused (inputs unchanged)") == 6 and "blessed" in r.out
    schema = run_dir / "schema" / "schema.json"
    assert cli("validate", data_files["wine"], "--schema", schema).code == 0


def _bad_wine(src: Path, dst: Path) -> Path:
    lines = src.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("hue_band")] = "violet"  # unknown category
    row[header.index("alcohol")] = "99"  # out of domain
    row2 = lines[2].split(",")
    row2[header.index("ash")] = "lots"  # text in a numeric column
    row3 = lines[3].split(",")
    row3[header.index("proline")] = ""  # missing where none were seen
    dst.write_text(
        "\n".join([lines[0], ",".join(row), ",".join(row2), ",".join(row3), *lines[4:]]) + "\n"
    )
    return dst


def test_schema_violations_are_listed(
    cli, wine_run: Run, data_files: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = _bad_wine(data_files["wine"], tmp_path / "new.csv")
    schema = wine_run.directory / "schema" / "schema.json"
    r = cli("validate", bad, "--schema", schema)
    assert r.code == errors.SchemaError.exit_code
    lines = r.err.splitlines()
    assert lines[0].startswith("error: ") and "4 schema anomalies" in lines[0]
    text = "\n".join(lines[1:])
    assert "hue_band: unknown category" in text and "'violet'" in text
    assert "alcohol: out of domain" in text and "99" in text
    assert "ash: wrong type" in text and "'lots'" in text
    assert "proline: missing values" in text
    # Training on new data against the old schema stops at the schema step.
    r = cli(
        "train", "--data", bad, "--target", "cultivar", "--schema", schema, "--out", tmp_path / "r"
    )
    assert r.code == errors.SchemaError.exit_code and "does not match its schema" in r.err
    assert not (tmp_path / "r" / "schema").exists() and not (tmp_path / "r" / "train").exists()


def test_schema_checks_shapes_and_columns() -> None:
    t = Table({"img": np.zeros((4, 8, 8)), "y": np.array([0.0, 1, 0, 1])})
    schema = infer_schema(t, "y")
    assert schema.feature("img").kind == "tensor" and schema.task == "classification"
    other = Table({"img": np.zeros((4, 9, 9)), "extra": np.ones(4), "y": np.array([0.0, 1, 0, 2])})
    kinds = {(a.feature, a.kind) for a in validate(other, schema)}
    assert kinds == {("img", "wrong shape"), ("extra", "unexpected column"), ("y", "unknown class")}
    missing = Table({"y": np.array([0.0, 1])})
    assert [a.kind for a in validate(missing, schema)] == ["missing column"]
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("a,b,y\n1,2,0\n3,4\n", "y", "line 3 has 2 fields"),
        ("a,b,y\n1,2,0\n3,4,1\n", "label", "no target column 'label'"),
        ("a,b,y\n" + "".join(f"{i},{i},1\n" for i in range(30)), "y", "single class"),
        ("a,a,y\n1,2,0\n", "y", "duplicate column names"),
        ("", "y", "header row"),
    ],
)
def test_bad_csv(cli, tmp_path: Path, content: str, target: str, message: str) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "bad.csv"
    data.write_text(content)
    r = cli("train", "--data", data, "--target", target, "--out", tmp_path / "run")
    assert r.code == errors.InputDataError.exit_code, r.err
    assert message in r.err and r.err.count("\n") == 1 and "Traceback" not in r.err
    assert not (tmp_path / "run" / "train").exists()


def test_bad_options(cli, data_files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["train", "--data", data_files["wine"], "--target", "cultivar", "--out", tmp_path / "r"]
    assert cli(*base, "--bins", 1).code == errors.UsageError.exit_code
    assert (
        cli(*base, "--test-fraction", 0.5, "--val-fraction", 0.45).code
        == errors.UsageError.exit_code
    )
    assert cli(*base, "--baseline-run", tmp_path).code == errors.UsageError.exit_code
    missing = ["train", "--data", tmp_path / "none.csv", "--target", "y", "--out", tmp_path / "x"]
    r = cli(*missing)
    assert r.code == errors.InputDataError.exit_code and "no such file" in r.err
