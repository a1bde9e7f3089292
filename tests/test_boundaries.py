"""Package boundaries, as prefixes: a device imports ``edgeops.core`` and nothing else of
``edgeops``; ``edgeops.core`` imports only itself; neither loads TensorFlow or the server side;
the CLI's help stays free of TensorFlow; the service's SQL stays in ``edgeops/service/storage``."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("tensorflow", "keras", "converters", "tf2onnx", "onnx")
SERVER = (
    "sqlalchemy",
    "sklearn",
    "litestar",
    "edgeops.service",
    "edgeops.trainer",
    "edgeops.drift",
)
"""Packages that belong on the server or a developer's machine, never on a device."""


def _loaded_after(code: str, watch: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of ``watch`` (packages, by prefix) are in ``sys.modules`` after running ``code``."""
    probe = (
        f"import sys\n{code}\nwatch = {watch!r}\n"
        "print('LOADED:', *sorted({w for w in watch for m in sys.modules"
        " if m == w or m.startswith(w + '.')}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split()[1:]


def _modules(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1] if parts[-1] == "__init__" else []
        if parts:
            names.append(".".join(parts))
    return names


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _outside(package: str, allowed: tuple[str, ...]) -> list[str]:
    """``file:line module`` for each import of ``edgeops`` outside the allowed prefixes."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            if not (name == "edgeops" or name.startswith("edgeops.")):
                continue
            if name in ("edgeops", "edgeops.__version__"):
                continue
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return bad


def test_device_agent_imports_only_core() -> None:
    assert _outside("device_agent", ("edgeops.core",)) == []


def test_core_imports_only_itself() -> None:
    assert _outside("edgeops/core", ("edgeops.core",)) == []


STORAGE = ROOT / "edgeops" / "service" / "storage"
DATABASE = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "edgeops.service.storage.schema")
"""What only the storage imports: the SQL toolkit, database drivers, the tables."""
RUNS_SQL = ("execute", "exec_driver_sql")
"""Methods of a database connection: calling one runs SQL."""


def _sql_outside_storage(paths: list[Path]) -> list[str]:
    """``file:line what`` for each import of :data:`DATABASE` (at any depth) and each call of a
    method of :data:`RUNS_SQL` in ``paths``."""
    bad = []
    for path in paths:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for line, name in _imports(path):
            if any(name == m or name.startswith(m + ".") for m in DATABASE):
                bad.append(f"{where}:{line} imports {name}")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if call and node.func.attr in RUNS_SQL:
                bad.append(f"{where}:{node.lineno} calls .{node.func.attr}()")
    return bad


def test_only_storage_holds_sql() -> None:
    """No module of the service outside ``edgeops/service/storage/`` imports SQLAlchemy, a
    database driver or the tables, or runs a statement on a connection; no other code of the
    project imports SQLAlchemy at all (the device's outbox keeps its own SQLite file)."""
    service = [
        p
        for p in sorted((ROOT / "edgeops" / "service").rglob("*.py"))
        if not p.is_relative_to(STORAGE)
    ]
    assert service and _sql_outside_storage(service) == []
    rest = [
        p
        for package in ("edgeops", "device_agent", "converters")
        for p in sorted((ROOT / package).rglob("*.py"))
        if not p.is_relative_to(STORAGE) and any(n.startswith("sqlalchemy") for _, n in _imports(p))
    ]
    assert rest == []


def test_storage_check_catches_sql_elsewhere(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from edgeops.service.storage import schema\n"
        "def f(store):\n"
        "    import sqlalchemy as sa\n"
        "    with store.begin() as conn:\n"
        "        conn.execute(sa.select(schema.windows))\n"
    )
    found = _sql_outside_storage([bad])
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports edgeops.service.storage.schema",
        "imports sqlalchemy",
        "calls .execute()",
    ], found


def test_prefix_check_catches_a_device_import_of_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from edgeops.service.storage import Store\n    import edgeops.drift\n"
    )
    names = [name for _, name in _imports(bad)]
    assert "edgeops.service.storage.Store" in names and "edgeops.drift" in names


def test_device_agent_import_stays_light() -> None:
    code = "\n".join(f"import {m}" for m in _modules("device_agent"))
    assert _loaded_after(code, HEAVY + SERVER) == []


def test_device_agent_loads_only_core_of_edgeops() -> None:
    code = "\n".join(f"import {m}" for m in _modules("device_agent"))
    probe = code + "\nprint('LOADED:', *sorted(m for m in sys.modules if m.startswith('edgeops')))"
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + probe], capture_output=True, text=True, check=True
    )
    loaded = out.stdout.strip().splitlines()[-1].split()[1:]
    assert loaded and all(m == "edgeops" or m.startswith("edgeops.core") for m in loaded), loaded


def test_core_stays_light() -> None:
    code = "\n".join(f"import {m}" for m in _modules("edgeops/core"))
    assert _loaded_after(code, HEAVY + SERVER) == []


def test_drift_maths_stays_light() -> None:
    """The service imports the drift maths; so do benchmarks that compare it with other tools."""
    code = "\n".join(f"import {m}" for m in _modules("edgeops/drift"))
    watch = (*HEAVY, "sqlalchemy", "sklearn", "litestar", "edgeops.service", "edgeops.trainer")
    assert _loaded_after(code, watch) == []


def test_trainer_data_modules_stay_light() -> None:
    code = "import edgeops.trainer.schema, edgeops.trainer.metrics, edgeops.packaging.modelinfo"
    assert _loaded_after(code, (*HEAVY, "sqlalchemy", "edgeops.service")) == []


def test_cli_help_does_not_import_tensorflow() -> None:
    commands = [[], ["convert"], ["bench"], ["train"], ["validate"], ["keys", "generate"]]
    commands += [["package"], ["verify"], ["build"]]
    code = "from edgeops.cli import main\n" + "".join(
        f"try:\n    main({[*c, '--help']!r})\nexcept SystemExit:\n    pass\n" for c in commands
    )
    assert _loaded_after(code) == []


def test_benchmark_runner_runs_without_tensorflow(converted: dict[str, Path]) -> None:
    code = (
        "from device_agent.benchmark import benchmark, BenchConfig\n"
        f"benchmark({str(converted['tflite-int8'])!r}, BenchConfig(runs=3, warmup=1))\n"
        f"benchmark({str(converted['onnx-fp32'])!r}, BenchConfig(runs=3, warmup=1))"
    )
    assert _loaded_after(code, HEAVY + SERVER) == []
