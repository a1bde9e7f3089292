from __future__ import annotations

import inspect

from edgeops.core import errors


def test_every_error_has_its_own_exit_code() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.EdgeOpsError)
    ]
    codes = [c.exit_code for c in classes]
    assert len(classes) >= 9
    assert len(set(codes)) == len(codes)
    assert all(code > 0 for code in codes)


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
