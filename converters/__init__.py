"""Model conversion and quantization to LiteRT (TFLite) and ONNX, with fidelity reports.

Heavy libraries (tensorflow, tf2onnx, onnx) are imported when a conversion runs, not on import.
"""

from converters.config import (
    CalibrationMethod,
    ConversionConfig,
    Format,
    Gates,
    IOType,
    Mode,
    OnnxQuantization,
    QuantFormat,
    Target,
    Task,
)
from converters.convert import convert
from converters.report import ConversionReport, Status

__all__ = [
    "CalibrationMethod",
    "ConversionConfig",
    "ConversionReport",
    "Format",
    "Gates",
    "IOType",
    "Mode",
    "OnnxQuantization",
    "QuantFormat",
    "Status",
    "Target",
    "Task",
    "convert",
]
