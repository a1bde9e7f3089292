"""Tensor signatures and the affine (scale, zero point) quantization arithmetic.

Shared by the converters (reports), the device runtimes and the agent. Pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as a runtime sees it.

    ``shape`` uses -1 for a dimension that is not fixed (usually the batch). ``dtype`` is a numpy
    dtype name. ``scale`` and ``zero_point`` are set when the tensor is quantized per tensor:
    ``real = scale * (q - zero_point)``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale > 0 and np.dtype(self.dtype).kind in "iu"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: the shape without its leading batch dimension."""
        return self.shape[1:]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=str(d["dtype"]),
            scale=None if d.get("scale") is None else float(d["scale"]),
            zero_point=None if d.get("zero_point") is None else int(d["zero_point"]),
        )


def quantize(x: npt.ArrayLike, info: TensorInfo) -> npt.NDArray[Any]:
    """Float values to the integer dtype of ``info`` with its scale and zero point (saturating)."""
    if not info.quantized:
        return np.asarray(x, dtype=info.dtype)
    assert info.scale is not None and info.zero_point is not None
    limits = np.iinfo(np.dtype(info.dtype))
    q = np.round(np.asarray(x, dtype=np.float32) / info.scale) + info.zero_point
    result: npt.NDArray[Any] = np.clip(q, limits.min, limits.max).astype(info.dtype)
    return result


def dequantize(q: npt.ArrayLike, info: TensorInfo) -> npt.NDArray[np.float32]:
    """Integer values of a quantized tensor back to float32."""
    if not info.quantized:
        return np.asarray(q, dtype=np.float32)
    assert info.scale is not None and info.zero_point is not None
    return ((np.asarray(q).astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)


def shape_matches(sample_shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether a sample shape fits an expected sample shape where -1 matches anything."""
    return len(sample_shape) == len(expected) and all(
        e < 0 or s == e for s, e in zip(sample_shape, expected, strict=True)
    )
