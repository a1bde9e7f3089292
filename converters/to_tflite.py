"""SavedModel to LiteRT (TFLite) flatbuffer in every quantization mode."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from converters.calibration import calls
from converters.config import ConversionConfig, IOType, Mode, Target
from converters.sources import Source
from edgeops.core.errors import ConversionError, UsageError, cause
from edgeops.core.feeds import Feeds
from edgeops.core.optional import quiet_native_stderr, require

log = logging.getLogger(__name__)


def to_tflite(source: Source, cfg: ConversionConfig, calibration: Feeds | None) -> bytes:
    """Convert a TensorFlow source with the resolved ``cfg``; returns the flatbuffer."""
    if not source.is_tensorflow:
        raise UsageError(
            f"{source.path}: converting {source.kind} to tflite is not supported; "
            "convert from the Keras model or SavedModel"
        )
    tf = require("tensorflow", "convert")
    conv = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir))
    mode = cfg.mode
    if mode is not Mode.FP32:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is Mode.FLOAT16:
        conv.target_spec.supported_types = [tf.float16]
    elif mode in (Mode.INT8, Mode.INT16X8):
        assert calibration is not None

        def representative() -> Iterator[list[Any]]:
            yield from calls(calibration)

        conv.representative_dataset = representative
        if mode is Mode.INT8:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if cfg.io is IOType.INT8:
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
        else:
            ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            if cfg.target not in (Target.NPU, Target.MCU):
                # Ops without an int16 kernel fall back to float on CPU and GPU.
                ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
            conv.target_spec.supported_ops = ops
    try:
        with quiet_native_stderr():
            return bytes(conv.convert())
    except Exception as e:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ConversionError(f"TFLite conversion ({mode}) failed: {cause(e)}") from None
