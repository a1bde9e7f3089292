"""What a TFLite model needs from the runtime that loads it, read without TensorFlow: the
``min_runtime_version`` the converter stamps into the flatbuffer's metadata, found by a minimal
flatbuffer walk (Model → metadata → buffers). Core, stdlib only; the operators a model uses and
ONNX opsets are read by :func:`edgeops.packaging.package.runtime_requirements` (server side), which
opens the model in a runtime.
"""

from __future__ import annotations

import struct

from edgeops.core.errors import ModelError

# Field indices in the TFLite schema (schema.fbs): Model and its Metadata and Buffer tables.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA = 0


class _Table:
    """A flatbuffer table at ``pos`` inside ``buf``."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable = vtable
        self.vsize = struct.unpack_from("<H", buf, vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vsize:
            return None
        off = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + off if off else None

    def u32(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else int(struct.unpack_from("<I", self.buf, at)[0])

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + int(struct.unpack_from("<I", self.buf, at)[0])

    def bytes_(self, index: int) -> bytes | None:
        at = self._target(index)
        if at is None:
            return None
        n = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4 : at + 4 + n]

    def tables(self, index: int) -> list[_Table]:
        at = self._target(index)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        out = []
        for i in range(n):
            elem = at + 4 + 4 * i
            out.append(_Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


def tflite_metadata(blob: bytes) -> dict[str, bytes]:
    """The metadata entries (name → bytes) of a TFLite flatbuffer."""
    try:
        model = _Table(blob, struct.unpack_from("<I", blob, 0)[0])
        buffers = model.tables(_MODEL_BUFFERS)
        out = {}
        for entry in model.tables(_MODEL_METADATA):
            name = entry.bytes_(_METADATA_NAME)
            index = entry.u32(_METADATA_BUFFER)
            if name is None or index is None or index >= len(buffers):
                continue
            out[name.decode("utf-8", "replace")] = buffers[index].bytes_(_BUFFER_DATA) or b""
        return out
    except (struct.error, IndexError) as e:
        raise ModelError(f"not a readable TFLite flatbuffer ({e})") from None


def tflite_min_runtime(blob: bytes) -> str | None:
    """The ``min_runtime_version`` the converter recorded, such as ``"1.11.0"``."""
    raw = tflite_metadata(blob).get("min_runtime_version")
    return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace") or None
