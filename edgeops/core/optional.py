"""Importing optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from edgeops.core.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install."""
    if module.split(".")[0] in ("tensorflow", "keras", "tf2onnx"):
        # TensorFlow's C++ start-up chatter is noise for a command-line user.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if module in sys.modules:
            return sys.modules[module]
        with quiet_native_stderr():
            return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra) from None


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what native code (TensorFlow's C++ logging, the TFLite converter) writes to fd 2.

    TensorFlow prints start-up and converter chatter from C++ that no environment variable turns
    off. With debug logging on, nothing is hidden.
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
