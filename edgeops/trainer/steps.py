"""The six steps of the training pipeline, each a function of a :class:`StepContext`.

::

    ingest ──► schema ──► profile ─────────────┐
                 │                             ▼
                 └──────► transform ──► train ──► evaluate

Files each step writes (under ``RUNDIR/<step>/``):

- ingest: ``table.npz`` (every column), ``split.npz`` (row indices of train, validation, test)
- schema: ``schema.json``, ``anomalies.json``
- profile: ``inputs.json`` (the baseline profile of every input feature, on the training split)
- transform: ``transform.json`` (model input layout and training statistics), ``train.npz``,
  ``validation.npz``, ``test.npz`` (model-ready ``x`` and label indices or targets ``y``)
- train: ``model.keras``, ``history.json``
- evaluate: ``eval.json`` (metrics, slices, blessing), ``baseline.json`` (inputs and outputs)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core import profile as prof
from edgeops.core.columns import Table, read_npz, read_table
from edgeops.core.errors import InputDataError, SchemaError
from edgeops.core.preprocessing import TABULAR_INPUT, Column, Preprocessing
from edgeops.trainer import metrics as m
from edgeops.trainer.models import TransformStats, build_model
from edgeops.trainer.pipeline import StepContext
from edgeops.trainer.schema import Schema, class_name, infer_schema, infer_task
from edgeops.trainer.schema import validate as validate_table

log = logging.getLogger(__name__)
progress = logging.getLogger("edgeops.progress")
"""What a long step is doing, for a person watching (the CLI shows it on stderr)."""

SPLITS = ("train", "validation", "test")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _table(ctx: StepContext) -> Table:
    return read_npz(ctx.input("ingest", "table.npz"))


def _splits(ctx: StepContext) -> dict[str, npt.NDArray[np.int64]]:
    with np.load(ctx.input("ingest", "split.npz")) as z:
        return {s: z[s] for s in SPLITS}


def _schema(ctx: StepContext) -> Schema:
    return Schema.from_dict(_read_json(ctx.input("schema", "schema.json")))


def _arrays(ctx: StepContext, split: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    with np.load(ctx.input("transform", f"{split}.npz")) as z:
        return z["x"], z["y"]


# --- ingest -----------------------------------------------------------------------------------


def ingest(ctx: StepContext) -> Mapping[str, Any]:
    """Read the data file and split it deterministically by seed (stratified for classes)."""
    table = read_table(ctx.external["data"])
    target = str(ctx.params["target"])
    if target not in table:
        raise InputDataError(
            f"{table.source}: no target column '{target}' (columns: {', '.join(table.names)})"
        )
    n = len(table)
    val_f, test_f = float(ctx.params["val_fraction"]), float(ctx.params["test_fraction"])
    rng = np.random.default_rng(int(ctx.params["seed"]))
    y = table[target]
    task = ctx.params.get("task") or (infer_task(y) if y.ndim == 1 else "classification")
    groups = [np.arange(n)]
    if task == "classification" and y.ndim == 1:
        groups = [np.flatnonzero(y == v) for v in np.unique(y)]
    parts: dict[str, list[npt.NDArray[np.int64]]] = {s: [] for s in SPLITS}
    for g in groups:
        idx = rng.permutation(g)
        n_test = round(len(idx) * test_f)
        n_val = round(len(idx) * val_f)
        parts["test"].append(idx[:n_test])
        parts["validation"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    split = {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}
    small = [s for s in SPLITS if len(split[s]) == 0]
    if small:
        raise InputDataError(
            f"{table.source}: {n} rows are too few to split; the {', '.join(small)} split is empty"
        )
    table.save(ctx.out / "table.npz")
    arrays: dict[str, Any] = split
    np.savez(ctx.out / "split.npz", **arrays)
    return {"rows": n, "columns": len(table.names), **{s: len(split[s]) for s in SPLITS}}


# --- schema -----------------------------------------------------------------------------------


def schema(ctx: StepContext) -> Mapping[str, Any]:
    """Infer the schema (or load the given one) and validate every split against it."""
    table = _table(ctx)
    given = ctx.external.get("schema")
    if given is not None:
        sch = Schema.load(given)
        if sch.target != ctx.params["target"]:
            raise InputDataError(
                f"{given}: the schema's target is '{sch.target}', not '{ctx.params['target']}'"
            )
    else:
        sch = infer_schema(table, str(ctx.params["target"]), ctx.params.get("task"))
    sch.save(ctx.out / "schema.json")
    anomalies: dict[str, list[str]] = {}
    for name, idx in _splits(ctx).items():
        found = validate_table(table.take(idx), sch)
        if found:
            anomalies[name] = [str(a) for a in found]
    _write_json(ctx.out / "anomalies.json", anomalies)
    if anomalies:
        listed = [f"{split} split: {a}" for split, items in anomalies.items() for a in items]
        raise SchemaError(
            f"{table.source} does not match its schema: {len(listed)} anomalies", listed
        )
    return {
        "source": "given" if given else "inferred",
        "task": sch.task,
        "features": len(sch.inputs),
        "classes": len(sch.classes),
    }


# --- profile ----------------------------------------------------------------------------------


def profile(ctx: StepContext) -> Mapping[str, Any]:
    """The baseline: bins, moments and frequencies of every input on the training split."""
    sch = _schema(ctx)
    train = _table(ctx).take(_splits(ctx)["train"])
    bins = int(ctx.params["bins"])
    inputs: list[prof.NumericProfile | prof.CategoricalProfile | prof.TensorProfile] = []
    for f in sch.inputs:
        col = train[f.name]
        if f.kind == "numeric":
            inputs.append(prof.profile_numeric(f.name, col, bins))
        elif f.kind == "categorical":
            inputs.append(prof.profile_categorical(f.name, col, f.vocabulary))
        else:
            inputs.append(prof.profile_tensor(f.name, col.astype(np.float64), bins))
    p = prof.Profile(tuple(inputs), (), bins)
    _write_json(ctx.out / "inputs.json", p.to_dict())
    blind = p.blind_spots()
    for name, reason in blind.items():
        log.warning("profile: drift of %s cannot show in its bins (%s)", name, reason)
    return {"features": len(inputs), "rows": len(train), "blind_spots": blind}


# --- transform --------------------------------------------------------------------------------


def preprocessing_for(sch: Schema) -> Preprocessing:
    tensors = [f for f in sch.inputs if f.kind == "tensor"]
    if tensors:
        if len(sch.inputs) > 1:
            names = ", ".join(f.name for f in sch.inputs)
            raise InputDataError(
                f"one array input per model is supported; the data has {names} besides the target"
            )
        return Preprocessing("tensor", tensors[0].name, shape=tensors[0].shape)
    columns = tuple(
        Column(f.name, f.kind, f.vocabulary, fill_missing=f.allow_missing)  # type: ignore[arg-type]
        for f in sch.inputs
    )
    return Preprocessing("tabular", TABULAR_INPUT, columns)


def targets(sch: Schema, y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Class indices for classification, float targets for regression."""
    if sch.task == "classification":
        index = {c: i for i, c in enumerate(sch.classes)}
        return np.array([index[class_name(v)] for v in y], dtype=np.int64)
    return y.astype(np.float32)


def transform(ctx: StepContext) -> Mapping[str, Any]:
    """Model input layout and the training statistics the model bakes in; model-ready arrays."""
    sch = _schema(ctx)
    table = _table(ctx)
    splits = _splits(ctx)
    pre = preprocessing_for(sch)
    train_part = table.take(splits["train"])
    y_train = targets(sch, train_part[sch.target])
    if pre.kind == "tabular":
        scaled = []
        for c in pre.columns:
            col = train_part[c.name]
            if c.kind == "numeric" and np.isfinite(col).any():
                mean, std = float(np.nanmean(col)), float(np.nanstd(col))
                c = replace(c, mean=mean, std=std if std > 0 else 1.0)
            scaled.append(c)
        pre = replace(pre, columns=tuple(scaled))
        stats = TransformStats()
    else:
        x = pre.encode(dict(train_part.columns)).astype(np.float64)
        x = x[..., None] if x.ndim == 3 else x
        axes = tuple(range(x.ndim - 1))
        stats = TransformStats(
            channel_mean=tuple(float(v) for v in x.mean(axis=axes)),
            channel_var=tuple(float(v) for v in x.var(axis=axes)),
        )
    if sch.task == "regression":
        stats = replace(
            stats, target_mean=float(y_train.mean()), target_std=float(y_train.std() or 1.0)
        )
    for split, idx in splits.items():
        part = table.take(idx)
        x_split = pre.encode(dict(part.columns))
        np.savez(ctx.out / f"{split}.npz", x=x_split, y=targets(sch, part[sch.target]))
    _write_json(
        ctx.out / "transform.json", {"preprocessing": pre.to_dict(), "stats": stats.to_dict()}
    )
    return {"input": pre.input_name, "kind": pre.kind, "width": pre.width or list(pre.shape)}


def load_transform(path: Path) -> tuple[Preprocessing, TransformStats]:
    d = _read_json(path)
    return Preprocessing.from_dict(d["preprocessing"]), TransformStats.from_dict(d["stats"])


# --- train ------------------------------------------------------------------------------------


def train(ctx: StepContext) -> Mapping[str, Any]:
    """Fit the default architecture with early stopping on validation loss."""
    import keras

    sch = _schema(ctx)
    pre, stats = load_transform(ctx.input("transform", "transform.json"))
    x_train, y_train = _arrays(ctx, "train")
    x_val, y_val = _arrays(ctx, "validation")
    p = ctx.params
    keras.utils.set_random_seed(int(p["seed"]))
    classification = sch.task == "classification"
    model = build_model(
        pre,
        stats,
        n_outputs=len(sch.classes) if classification else 1,
        classification=classification,
        hidden=tuple(p["hidden"]),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(p["learning_rate"])),
        loss="sparse_categorical_crossentropy" if classification else "mse",
        metrics=["accuracy"] if classification else ["mae"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=int(p["patience"]), restore_best_weights=True
    )
    epochs = int(p["epochs"])
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=int(p["batch_size"]),
        callbacks=[stop, _epoch_progress(keras, epochs)],
        verbose=0,
    )
    model.save(ctx.out / "model.keras")
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    _write_json(ctx.out / "history.json", hist)
    best = int(np.argmin(hist["val_loss"]))
    return {
        "epochs": len(hist["val_loss"]),
        "best_epoch": best + 1,
        "val_loss": hist["val_loss"][best],
        "parameters": int(model.count_params()),
    }


def _epoch_progress(keras: Any, epochs: int, every: float = 1.0) -> Any:
    """A Keras callback that reports an epoch on the ``edgeops.progress`` logger at most every
    ``every`` seconds (and the first and the last), with its losses."""

    class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.shown = -math.inf
            self.last = ""

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            logs = logs or {}
            losses = ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items() if "loss" in k)
            self.last = f"train: epoch {epoch + 1}/{epochs}: {losses}"
            now = time.monotonic()
            if epoch == 0 or now - self.shown >= every:
                self.shown = now
                progress.info("%s", self.last)
                self.last = ""

        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            if self.last:
                progress.info("%s", self.last)

    return EpochProgress()


# --- evaluate ---------------------------------------------------------------------------------


def predict(model_path: Path, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import keras

    model = keras.models.load_model(model_path)
    return np.asarray(model.predict(x, verbose=0, batch_size=256), dtype=np.float32)


def score(
    sch: Schema, y: npt.NDArray[Any], out: npt.NDArray[Any]
) -> m.ClassificationMetrics | m.RegressionMetrics:
    if sch.task == "classification":
        return m.classification_metrics(
            y, out.argmax(axis=1), labels=sch.classes, n_classes=len(sch.classes)
        )
    return m.regression_metrics(y, out.reshape(len(out), -1)[:, 0])


def evaluate(ctx: StepContext) -> Mapping[str, Any]:
    """Metrics on the test split, per slice, blessing against a baseline run; output profile."""
    sch = _schema(ctx)
    model_path = ctx.input("train", "model.keras")
    results: dict[str, Any] = {"task": sch.task}
    outputs: dict[str, npt.NDArray[Any]] = {}
    for split in ("validation", "test"):
        x, y = _arrays(ctx, split)
        outputs[split] = predict(model_path, x)
        results[split] = score(sch, y, outputs[split]).to_dict()
    current = score(sch, _arrays(ctx, "test")[1], outputs["test"])

    slices: dict[str, Any] = {}
    if ctx.params["slice_by"]:
        table = _table(ctx).take(_splits(ctx)["test"])
        y_test = _arrays(ctx, "test")[1]
        for col in ctx.params["slice_by"]:
            if col not in table or table[col].ndim != 1:
                raise InputDataError(f"--slice-by {col}: no such column of scalars in the data")
            per = m.slice_metrics(
                table[col], lambda idx: score(sch, y_test[idx], outputs["test"][idx])
            )
            slices[col] = {k: v.to_dict() for k, v in per.items()}
    results["slices"] = slices

    baseline = None
    baseline_eval = ctx.external.get("baseline_eval")
    if baseline_eval is not None:
        prev = _read_json(baseline_eval)
        if prev.get("task") != sch.task:
            raise InputDataError(f"{baseline_eval}: the baseline run is a {prev.get('task')} run")
        cls = m.ClassificationMetrics if sch.task == "classification" else m.RegressionMetrics
        baseline = cls.from_dict(prev["test"])
    thresholds = m.BlessingThresholds(**ctx.params["thresholds"])
    blessing = m.bless(current, baseline, thresholds)
    results["blessing"] = {
        "blessed": blessing.blessed,
        "reasons": list(blessing.reasons),
        "baseline_delta": blessing.baseline_delta,
        "baseline_run": str(baseline_eval.parent.parent) if baseline_eval else None,
    }
    _write_json(ctx.out / "eval.json", results)

    inputs = prof.Profile.from_dict(_read_json(ctx.input("profile", "inputs.json")))
    val_out = outputs["validation"]
    out_profile: tuple[Any, ...]
    if sch.task == "classification":
        out_profile = (prof.profile_class_outputs(val_out, sch.classes),)
    else:
        out_profile = tuple(prof.profile_regression_outputs("prediction", val_out, inputs.n_bins))
    baseline_profile = prof.Profile(inputs.inputs, out_profile, inputs.n_bins)
    _write_json(ctx.out / "baseline.json", baseline_profile.to_dict())
    return {"blessed": blessing.blessed, "test": results["test"]}
