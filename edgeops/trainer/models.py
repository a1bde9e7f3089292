"""Default architectures, with the transform baked in so devices feed raw features.

- Tabular: categorical indices are one-hot encoded, then an MLP. Numeric columns arrive
  standardised and missing numbers filled (see :mod:`edgeops.core.preprocessing` for why).
- Tensors (images): per-channel normalisation, then a small CNN (an MLP for 1-D samples).

Only operators that TFLite and ONNX run natively are used (GATHER, ONE_HOT, CONV_2D, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeops.core.preprocessing import Preprocessing


@dataclass(frozen=True)
class TransformStats:
    """Statistics of the training split that the model bakes in."""

    channel_mean: tuple[float, ...] = ()
    channel_var: tuple[float, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformStats:
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}  # type: ignore[arg-type]
        )


def build_model(
    pre: Preprocessing,
    stats: TransformStats,
    *,
    n_outputs: int,
    classification: bool,
    hidden: tuple[int, ...],
) -> Any:
    """An uncompiled Keras model taking raw inputs as ``pre`` describes them."""
    import keras
    from keras import layers, ops

    if pre.kind == "tabular":
        inp = keras.Input((pre.width,), name=pre.input_name, dtype="float32")
        num_idx = [i for i, c in enumerate(pre.columns) if c.kind == "numeric"]
        parts = []
        if len(num_idx) == pre.width:
            parts.append(inp)
        elif num_idx:
            parts.append(ops.take(inp, np.array(num_idx), axis=1))
        for i, c in enumerate(pre.columns):
            if c.kind == "categorical":
                # Round before the cast: a quantized input carries 2.0 as 1.99.
                idx = ops.cast(ops.round(ops.take(inp, np.array([i]), axis=1)), "int32")
                encode = layers.CategoryEncoding(
                    num_tokens=len(c.vocabulary) + 1, output_mode="one_hot", name=f"onehot_{i}"
                )
                parts.append(encode(idx))
        h = parts[0] if len(parts) == 1 else layers.Concatenate()(parts)
        for width in hidden:
            h = layers.Dense(width, activation="relu")(h)
            h = layers.Dropout(0.1)(h)
    else:
        inp = keras.Input(pre.shape, name=pre.input_name, dtype="float32")
        x = inp
        if len(pre.shape) == 2:  # (H, W): one channel
            x = layers.Reshape((*pre.shape, 1))(x)
        mean = np.array(stats.channel_mean, dtype=np.float32)
        var = np.maximum(np.array(stats.channel_var, dtype=np.float32), 1e-12)
        x = layers.Normalization(axis=-1, mean=mean, variance=var, name="normalize")(x)
        if len(x.shape) == 4:
            for filters in (16, 32):
                x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
                if min(x.shape[1], x.shape[2]) >= 2:
                    x = layers.MaxPooling2D()(x)
            h = layers.Flatten()(x)
            h = layers.Dense(64, activation="relu")(h)
            h = layers.Dropout(0.2)(h)
        else:
            h = layers.Flatten()(x)
            for width in hidden:
                h = layers.Dense(width, activation="relu")(h)
    if classification:
        out = layers.Dense(n_outputs, activation="softmax", name="probabilities")(h)
    else:
        raw = layers.Dense(1, name="scaled")(h)
        out = layers.Rescaling(stats.target_std, offset=stats.target_mean, name="prediction")(raw)
    return keras.Model(inp, out)
