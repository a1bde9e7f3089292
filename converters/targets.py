"""Which operators a converted model contains, and which of them a target cannot run.

The op lists are those LiteRT documents for its GPU delegate and those LiteRT for Microcontrollers
registers. They say what the runtime has a kernel for, not how fast it is; a vendor NPU delegate has
its own list, so for ``npu`` the check is the one every integer NPU shares: no op left in float.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.config import Target
from edgeops.core.optional import require

GPU_OPS = frozenset(
    [
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "DEPTH_TO_SPACE",
        "DEQUANTIZE",
        "EXP",
        "FULLY_CONNECTED",
        "HARD_SWISH",
        "LOGISTIC",
        "LSTM",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "RELU",
        "RELU6",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "SOFTMAX",
        "SPLIT",
        "STRIDED_SLICE",
        "SUB",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    ]
)

MCU_OPS = frozenset(
    [
        "ABS",
        "ADD",
        "ADD_N",
        "ARG_MAX",
        "ARG_MIN",
        "ASSIGN_VARIABLE",
        "AVERAGE_POOL_2D",
        "BATCH_TO_SPACE_ND",
        "BROADCAST_ARGS",
        "BROADCAST_TO",
        "CALL_ONCE",
        "CAST",
        "CEIL",
        "CONCATENATION",
        "CONV_2D",
        "COS",
        "CUMSUM",
        "DEPTH_TO_SPACE",
        "DEPTHWISE_CONV_2D",
        "DEQUANTIZE",
        "DIV",
        "ELU",
        "EQUAL",
        "EXP",
        "EXPAND_DIMS",
        "FILL",
        "FLOOR",
        "FLOOR_DIV",
        "FLOOR_MOD",
        "FULLY_CONNECTED",
        "GATHER",
        "GATHER_ND",
        "GREATER",
        "GREATER_EQUAL",
        "HARD_SWISH",
        "IF",
        "L2_NORMALIZATION",
        "L2_POOL_2D",
        "LEAKY_RELU",
        "LESS",
        "LESS_EQUAL",
        "LOG",
        "LOGICAL_AND",
        "LOGICAL_NOT",
        "LOGICAL_OR",
        "LOGISTIC",
        "LOG_SOFTMAX",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MIRROR_PAD",
        "MUL",
        "NEG",
        "NOT_EQUAL",
        "PACK",
        "PAD",
        "PADV2",
        "PRELU",
        "QUANTIZE",
        "READ_VARIABLE",
        "REDUCE_MAX",
        "RELU",
        "RELU6",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "ROUND",
        "RSQRT",
        "SELECT_V2",
        "SHAPE",
        "SIN",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_BATCH_ND",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SPLIT_V",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "SQRT",
        "SQUARE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "SVDF",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "UNPACK",
        "VAR_HANDLE",
        "WHILE",
        "ZEROS_LIKE",
    ]
)

# ONNX ops doing arithmetic; in a QDQ graph they count as integer when fed by DequantizeLinear.
ONNX_COMPUTE_OPS = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Sub",
        "Div",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "Relu",
        "Clip",
        "Sigmoid",
        "Softmax",
        "Tanh",
        "HardSwish",
        "LeakyRelu",
        "Concat",
        "Resize",
    ]
)


@dataclass(frozen=True)
class OpIssue:
    op: str
    reason: str


@dataclass(frozen=True)
class OpReport:
    counts: dict[str, int]
    """Operator name → number of nodes."""
    issues: tuple[OpIssue, ...]
    """Ops the target cannot run, with why (empty for cpu)."""
    checked: bool = True
    """False where edgeops has no op list for the format and target."""


def check_tflite(path: Path, target: Target) -> OpReport:
    from device_agent.runtimes import TFLiteRuntime

    with TFLiteRuntime(path, default_delegates=False) as rt:
        ops = rt.ops()
    counts = dict(Counter(name for name, _ in ops))
    issues: list[OpIssue] = []
    boundary = {"QUANTIZE", "DEQUANTIZE"}
    for name in sorted(counts):
        floats = any(f for n, f in ops if n == name)
        if target is Target.GPU and name not in GPU_OPS:
            issues.append(OpIssue(name, "no LiteRT GPU delegate kernel; runs on the CPU"))
        if target is Target.MCU and name not in MCU_OPS:
            issues.append(OpIssue(name, "not available in LiteRT for Microcontrollers"))
        if target in (Target.NPU, Target.MCU) and floats and name not in boundary:
            issues.append(OpIssue(name, "computes in float; an integer-only target cannot run it"))
        if target in (Target.NPU, Target.MCU) and name in boundary and floats:
            issues.append(OpIssue(name, "float input or output left at the model boundary"))
    return OpReport(counts, tuple(issues))


def check_onnx(path: Path, target: Target) -> OpReport:
    onnx = require("onnx", "convert")
    counts = dict(
        Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    )
    if target is Target.CPU:
        return OpReport(counts, ())
    if target is not Target.NPU:
        return OpReport(counts, (), checked=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    elem_type = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.value_info, *graph.output)
    }
    producer = {out: n.op_type for n in graph.node for out in n.output}
    initializers = {i.name for i in graph.initializer}
    issues: dict[str, OpIssue] = {}
    for node in graph.node:
        if node.op_type not in ONNX_COMPUTE_OPS:
            continue
        feeds = [
            i
            for i in node.input
            if i
            and i not in initializers
            and elem_type.get(i, onnx.TensorProto.FLOAT) in float_types
        ]
        if any(producer.get(i) != "DequantizeLinear" for i in feeds):
            issues[node.op_type] = OpIssue(
                node.op_type, "runs in float (not wrapped in QuantizeLinear/DequantizeLinear)"
            )
    return OpReport(counts, tuple(issues.values()))


def onnx_boundary_quantization(path: Path) -> list[dict[str, Any]]:
    """Scale and zero point of the QuantizeLinear after each input and DequantizeLinear before
    each output of a QDQ or QOperator ONNX model."""
    onnx = require("onnx", "convert")
    numpy_helper = require("onnx.numpy_helper", "convert")
    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found = []
    for role, values, op_type, pos in (
        ("input", graph.input, "QuantizeLinear", "input"),
        ("output", graph.output, "DequantizeLinear", "output"),
    ):
        for v in values:
            node = next(
                (
                    n
                    for n in graph.node
                    if n.op_type == op_type and v.name in (n.input if pos == "input" else n.output)
                ),
                None,
            )
            if node is None or len(node.input) < 3:
                continue
            scale, zero = init.get(node.input[1]), init.get(node.input[2])
            if scale is None or zero is None or scale.size != 1:
                continue
            found.append(
                {
                    "role": role,
                    "name": v.name,
                    "dtype": zero.dtype.name,
                    "scale": float(scale),
                    "zero_point": int(zero),
                }
            )
    return found


def boundary_quantization(path: Path) -> list[dict[str, Any]]:
    """Where a model's float inputs are quantized and its outputs dequantized, and how."""
    if path.suffix == ".tflite":
        from device_agent.runtimes import TFLiteRuntime

        with TFLiteRuntime(path, default_delegates=False) as rt:
            return rt.boundary_quantization()
    return onnx_boundary_quantization(path)


def check(path: Path, target: Target) -> OpReport:
    if path.suffix == ".tflite":
        return check_tflite(path, target)
    return check_onnx(path, target)
