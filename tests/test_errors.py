from __future__ import annotations

import ast
import inspect
from pathlib import Path

from edgeops.core import errors


def test_every_error_has_its_own_exit_code() -> None:
    """Each class that sets an exit code sets its own; a refinement (a RolloutError is a
    UsageError) inherits its parent's."""
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.EdgeOpsError) and "exit_code" in vars(c)
    ]
    codes = [c.exit_code for c in classes]
    assert len(classes) >= 9
    assert len(set(codes)) == len(codes)
    assert all(code > 0 for code in codes)


def test_every_public_exception_is_in_the_tree() -> None:
    """Outside edgeops.core.errors, an exception class is either private control flow (a leading
    underscore) or an EdgeOpsError."""
    root = Path(__file__).resolve().parent.parent
    loose = []
    for package in ("edgeops", "converters", "device_agent"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "errors.py" and path.parent.name == "core":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                    continue
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & {"Exception", "ValueError", "RuntimeError", "OSError", "KeyError"}:
                    loose.append(f"{path.relative_to(root)}: {node.name}")
    assert loose == [], loose


def test_missing_extra_names_the_install_command() -> None:
    from edgeops.core.optional import require

    try:
        require("surely_not_installed_module", "convert")
    except errors.MissingExtraError as e:
        assert "pip install 'edgeops[convert]'" in str(e)
        assert e.exit_code == 3
    else:
        raise AssertionError("expected MissingExtraError")


def test_cli_reports_user_errors_in_one_line(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = cli("convert", tmp_path / "nope.keras", "--to", "tflite", "--out", tmp_path / "o")
    assert r.code == errors.ModelError.exit_code
    assert r.err.count("\n") == 1 and r.err.startswith("error: ")
    assert "Traceback" not in r.err
