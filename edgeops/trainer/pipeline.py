"""A small DAG runner with content-addressed caching and a lineage record.

Each :class:`Step` names the steps it depends on, the external files it reads and its parameters.
Its cache key is the sha256 of its name, code version, parameters, the hashes of its external files
and the hashes of its upstream steps' output files. A step runs in a staging directory that is
renamed to ``RUNDIR/<step>/`` only when it succeeds, so a failed or killed step never leaves an
artifact that looks finished. When a step's key matches the ``step.json`` of a finished earlier run
and its outputs still have their recorded hashes, the step is reused instead of run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeops.core.errors import EdgeOpsError, OutputError, PipelineError
from edgeops.core.files import sha256_file

log = logging.getLogger(__name__)

STEP_FILE = "step.json"


@dataclass(frozen=True)
class StepContext:
    """What a running step sees: where to write, its parameters, and its upstream results."""

    name: str
    out: Path
    run_dir: Path
    params: Mapping[str, Any]
    upstream: Mapping[str, StepResult]
    external: Mapping[str, Path]

    def input(self, step: str, file: str) -> Path:
        """The path of ``file`` written by the upstream ``step``."""
        return self.upstream[step].directory / file


@dataclass(frozen=True)
class Step:
    """One node of the pipeline. ``run`` writes files into ``ctx.out`` and returns a summary."""

    name: str
    run: Callable[[StepContext], Mapping[str, Any]]
    deps: tuple[str, ...] = ()
    external: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    version: str = "1"


@dataclass(frozen=True)
class StepResult:
    name: str
    key: str
    directory: Path
    outputs: Mapping[str, str]
    summary: Mapping[str, Any]
    duration_s: float
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "outputs": dict(self.outputs),
            "summary": dict(self.summary),
            "duration_s": round(self.duration_s, 3),
            "cached": self.cached,
        }


def _key(step: Step, external: Mapping[str, str], upstream: Mapping[str, StepResult]) -> str:
    doc = {
        "step": step.name,
        "version": step.version,
        "params": step.params,
        "external": dict(external),
        "upstream": {n: dict(r.outputs) for n, r in sorted(upstream.items())},
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_outputs(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory).as_posix()): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != STEP_FILE
    }


def _reusable(directory: Path, key: str) -> StepResult | None:
    try:
        record = json.loads((directory / STEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    outputs = record.get("outputs", {})
    for name, digest in outputs.items():
        p = directory / name
        if not p.is_file() or sha256_file(p) != digest:
            return None
    return StepResult(
        record["name"],
        key,
        directory,
        outputs,
        record.get("summary", {}),
        float(record.get("duration_s", 0.0)),
        cached=True,
    )


class Pipeline:
    """Steps run in dependency order inside one run directory."""

    def __init__(self, steps: Sequence[Step], run_dir: Path) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate step names in {names}")
        self.steps = {s.name: s for s in steps}
        for s in steps:
            unknown = [d for d in s.deps if d not in self.steps]
            if unknown:
                raise ValueError(f"step {s.name} depends on unknown steps {unknown}")
        self.order = self._toposort()
        self.run_dir = run_dir

    def _toposort(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(n: str) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise ValueError(f"the pipeline has a cycle through {n}")
            state[n] = 1
            for d in self.steps[n].deps:
                visit(d)
            state[n] = 2
            order.append(n)

        for n in self.steps:
            visit(n)
        return order

    def run(
        self,
        external: Mapping[str, Path],
        *,
        on_step: Callable[[StepResult], None] | None = None,
    ) -> dict[str, StepResult]:
        """Run or reuse every step; return the results by step name. A run directory this call
        made is removed again when it fails before any step is written."""
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.run_dir}: cannot create run directory ({e})") from None
        try:
            return self._run(external, on_step)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()  # only when empty: finished steps stay for reuse
            raise

    def _run(
        self,
        external: Mapping[str, Path],
        on_step: Callable[[StepResult], None] | None,
    ) -> dict[str, StepResult]:
        hashes = {name: sha256_file(p) for name, p in external.items()}
        results: dict[str, StepResult] = {}
        for name in self.order:
            step = self.steps[name]
            upstream = {d: results[d] for d in step.deps}
            ext = {e: hashes[e] for e in step.external if e in hashes}
            key = _key(step, ext, upstream)
            final = self.run_dir / name
            result = _reusable(final, key)
            if result is None:
                result = self._execute(step, key, upstream, external)
            results[name] = result
            if on_step is not None:
                on_step(result)
        return results

    def _execute(
        self,
        step: Step,
        key: str,
        upstream: Mapping[str, StepResult],
        external: Mapping[str, Path],
    ) -> StepResult:
        final = self.run_dir / step.name
        staging = self.run_dir / f".{step.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        ctx = StepContext(
            step.name,
            staging,
            self.run_dir,
            step.params,
            upstream,
            {e: external[e] for e in step.external if e in external},
        )
        start = time.perf_counter()
        log.info("step %s: running", step.name)
        try:
            summary = dict(step.run(ctx))
        except EdgeOpsError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise PipelineError(f"step '{step.name}' failed: {type(e).__name__}: {e}") from e
        duration = time.perf_counter() - start
        outputs = _hash_outputs(staging)
        record = {
            "name": step.name,
            "key": key,
            "outputs": outputs,
            "summary": summary,
            "duration_s": round(duration, 3),
        }
        (staging / STEP_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        return StepResult(step.name, key, final, outputs, summary, duration, cached=False)
