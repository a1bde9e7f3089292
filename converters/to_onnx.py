"""Any source to ONNX (tf2onnx), then onnxruntime quantization: float16, dynamic, static int8.

Third-party models break the plain recipe in known ways; each has a fallback that the report's
``steps`` states:

- weights stored as ``Constant`` nodes (Paddle and some PyTorch exports) are moved to initializers,
  where the quantizers look for weights;
- per-channel weight scales need ``DequantizeLinear``'s ``axis`` (opset 13): an older model is
  upgraded to opset 13, or quantized per tensor when the upgrade fails;
- when symbolic shape inference fails, pre-processing runs without it (then without graph
  optimisation, then not at all);
- float16 runs on the optimised graph (a BatchNorm folded into its convolution no longer holds a
  variance beyond float16's range), and nodes whose weights still exceed that range stay float32;
- a quantization that quantized no weight is refused rather than reported as a success.

No TensorFlow is imported unless the source is a TensorFlow model or a ``.tflite`` file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.calibration import OnnxCalibrationReader
from converters.config import CalibrationMethod, ConversionConfig, Mode, QuantFormat
from converters.sources import Source, SourceKind
from edgeops.core.errors import ConversionError, UsageError, cause
from edgeops.core.feeds import Feeds
from edgeops.core.optional import require

log = logging.getLogger(__name__)

DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather", "EmbedLayerNormalization")
"""What ``dynamic`` quantizes unless told otherwise (``--only-op``): onnxruntime runs dynamically
quantized convolutions (ConvInteger) several times slower than float ones (PP-OCR detection: 144 ms
against 23 ms) and they lost most of the signal (6 dB), so convolutional models take ``int8``."""
PER_CHANNEL_OPSET = 13
"""DequantizeLinear takes an ``axis`` (per-channel scales) from this opset on."""
FLOAT16_MAX = 65504.0
FLOAT16_RETRIES = 20
_TYPE_ERROR_NODE = re.compile(r"of node \(([^)]+)\) does not match")


@dataclass
class OnnxResult:
    """The converted model and what was done to get it."""

    blob: bytes
    steps: list[str] = field(default_factory=list)
    prepared: Path | None = None
    """The float graph that was quantized (after the fallbacks and pre-processing)."""


@dataclass
class _Plan:
    per_channel: bool
    steps: list[str]
    hide: tuple[str, ...]
    excluded: list[str] = field(default_factory=list)
    """Node names kept in float: the user's, and the output heads when asked."""


def to_onnx(
    source: Source,
    cfg: ConversionConfig,
    calibration: Feeds | None,
    work: Path,
    *,
    float_heads: bool = False,
    per_tensor: bool = False,
) -> OnnxResult:
    """Convert ``source`` to ONNX in the resolved ``cfg`` mode, using ``work`` for files.

    ``float_heads`` keeps the nodes that make the model's outputs in float (for outputs whose
    range one 8-bit scale cannot hold, such as box offsets and logits next to each other);
    ``per_tensor`` overrides per-channel weight scales.
    """
    fp32 = work / "fp32.onnx"
    _export_fp32(source, cfg.opset, fp32, work)
    mode = cfg.mode
    assert mode is not None  # resolved
    if mode is Mode.FP32:
        return OnnxResult(fp32.read_bytes())
    if mode is Mode.INT16X8:
        raise UsageError(f"mode {mode} is not available for ONNX")
    per_channel = mode is Mode.INT8 if cfg.onnx.per_channel is None else cfg.onnx.per_channel
    plan = _Plan(per_channel and not per_tensor, [], (str(work),), list(cfg.onnx.exclude_nodes))
    if per_channel and per_tensor:
        plan.steps.append("weights quantized per tensor")
    out = work / "out.onnx"
    try:
        prepared = _prepare(fp32, work, cfg, plan)
        if float_heads:
            heads = output_heads(require("onnx", "convert").load(str(prepared)))
            plan.excluded += [h for h in heads if h not in plan.excluded]
            plan.steps.append(f"the {len(heads)} nodes making the outputs kept in float")
        if mode is Mode.FLOAT16:
            _float16(prepared, out, cfg, plan)
        elif mode is Mode.DYNAMIC:
            _quantize_dynamic(prepared, out, cfg, plan)
        else:
            assert calibration is not None
            _quantize_static(prepared, out, cfg, plan, calibration)
        _check_result(prepared, out, mode, cfg, plan)
    except (UsageError, ConversionError):
        raise
    except Exception as e:
        raise ConversionError(
            f"ONNX {mode} conversion failed: {cause(e, hide=plan.hide)}"
        ) from None
    return OnnxResult(out.read_bytes(), plan.steps, prepared)


def _export_fp32(source: Source, opset: int, dst: Path, work: Path) -> None:
    if source.kind is SourceKind.ONNX:
        shutil.copyfile(source.path, dst)
        return
    tf2onnx = require("tf2onnx", "convert")
    try:
        if source.kind is SourceKind.TFLITE:
            model, _ = tf2onnx.convert.from_tflite(str(source.path), opset=opset)
        else:
            tf = require("tensorflow", "convert")
            constants = require("tensorflow.python.framework.convert_to_constants", "convert")
            sig = source.signature
            _, kw = sig.structured_input_signature
            specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in kw.items()]
            # Freeze first: tf2onnx turns tensors the function captures (such as a Keras
            # Normalization layer's mean and variance) into extra graph inputs otherwise.
            frozen = constants.convert_variables_to_constants_v2(sig)
            names = sorted(sig.structured_outputs)  # the order of the frozen outputs

            def call(*xs: Any) -> Any:
                return dict(zip(names, frozen(*xs), strict=True))

            model, _ = tf2onnx.convert.from_function(
                tf.function(call), input_signature=specs, opset=opset
            )
    except Exception as e:
        raise ConversionError(
            f"ONNX export of {source.path} failed: {cause(e, hide=(str(work),))}"
        ) from None
    onnx = require("onnx", "convert")
    onnx.save(model, str(dst))


# --- preparing the float graph ---------------------------------------------------------------


def _prepare(fp32: Path, work: Path, cfg: ConversionConfig, plan: _Plan) -> Path:
    onnx = require("onnx", "convert")
    model = onnx.load(str(fp32))
    moved = constants_to_initializers(model)
    if moved:
        plan.steps.append(
            f"{moved} weights stored as Constant nodes moved to initializers "
            "(where the quantizers look for weights)"
        )
    opset = _opset(model)
    if cfg.mode in (Mode.DYNAMIC, Mode.INT8) and plan.per_channel and opset < PER_CHANNEL_OPSET:
        try:
            upgraded = onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET)
            onnx.checker.check_model(upgraded)
            _loads(upgraded)
            model = upgraded
            plan.steps.append(
                f"opset {opset} upgraded to {PER_CHANNEL_OPSET}: per-channel weight scales "
                f"need DequantizeLinear's axis (opset {PER_CHANNEL_OPSET})"
            )
        except Exception as e:
            plan.per_channel = False
            plan.steps.append(
                f"opset {opset} could not be upgraded to {PER_CHANNEL_OPSET} "
                f"({cause(e, 160, hide=plan.hide)}); weights quantized per tensor"
            )
    staged = work / "initializers.onnx"
    onnx.save(model, str(staged))
    if not cfg.onnx.preprocess:
        plan.steps.append("pre-processing skipped (--no-preprocess)")
        return staged
    return _preprocess(staged, work, plan)


def _opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _loads(model: Any) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def constants_to_initializers(model: Any) -> int:
    """Move the main graph's ``Constant`` nodes holding a tensor to initializers; how many."""
    graph = model.graph
    keep = []
    moved = 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = value.t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _preprocess(src: Path, work: Path, plan: _Plan) -> Path:
    """onnxruntime's quantization pre-processing, with fallbacks for what real models break.

    It runs inside ``work``: when symbolic shape inference gives up on a large model it leaves
    ``sym_shape_infer_temp.onnx`` and its external data in the current directory.
    """
    src, work = src.resolve(), work.resolve()  # a relative --out would not survive the chdir
    with contextlib.chdir(work):
        return _preprocess_here(src, work / "pre.onnx", plan)


def _preprocess_here(src: Path, pre: Path, plan: _Plan) -> Path:
    shape_inference = require("onnxruntime.quantization.shape_inference", "convert")
    try:
        shape_inference.quant_pre_process(str(src), str(pre))
        return pre
    except Exception as e:
        first = cause(e, 160, hide=plan.hide)
    try:
        shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        plan.steps.append(f"symbolic shape inference failed ({first}); pre-processed without it")
        return pre
    except Exception as e:
        second = cause(e, 160, hide=plan.hide)
    try:
        shape_inference.quant_pre_process(
            str(src), str(pre), skip_symbolic_shape=True, skip_optimization=True
        )
        plan.steps.append(
            f"pre-processing failed ({first}; then {second}); ran shape inference only"
        )
        return pre
    except Exception as e:
        plan.steps.append(
            f"pre-processing failed ({first}; then {cause(e, 160, hide=plan.hide)}); "
            "quantized the graph as it is"
        )
        return src


# --- float16 and quantization ------------------------------------------------------------------


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph inside it (If and Loop bodies)."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.g is not None and a.g.node:
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _nodes(model: Any) -> list[Any]:
    return [n for g in _graphs(model.graph) for n in g.node]


_LAYOUT_OPS = frozenset(
    ["Reshape", "Concat", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"]
)


def output_heads(model: Any) -> list[str]:
    """The nodes that make the model's outputs: the last compute node on each path to an output,
    and the reshaping and concatenating nodes after it."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: dict[str, None] = {}
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or tensor in seen:
            continue
        seen.add(tensor)
        found[node.name] = None
        if node.op_type in _LAYOUT_OPS:
            stack.extend(i for i in node.input if i)
    return [name for name in found if name]


def _check_exclusions(model: Any, cfg: ConversionConfig) -> None:
    o = cfg.onnx
    types = {n.op_type for n in _nodes(model)}
    names = {n.name for n in _nodes(model)}
    for op in (*o.exclude_ops, *o.only_ops):
        if op not in types:
            raise UsageError(
                f"op type {op!r} is not in the model (its op types: {', '.join(sorted(types))})"
            )
    for name in o.exclude_nodes:
        if name not in names:
            raise UsageError(
                f"--exclude-node {name!r}: no node of that name in the pre-processed graph "
                "(--sensitivity lists its node names)"
            )


def _op_types(model: Any, cfg: ConversionConfig) -> list[str] | None:
    o = cfg.onnx
    if o.only_ops:
        return list(o.only_ops)
    present = {n.op_type for n in _nodes(model)}
    if cfg.mode is Mode.DYNAMIC:
        return sorted((present & set(DYNAMIC_OPS)) - set(o.exclude_ops))
    if o.exclude_ops:
        return sorted(present - set(o.exclude_ops))
    return None


def _describe_exclusions(cfg: ConversionConfig, plan: _Plan) -> None:
    o = cfg.onnx
    if o.only_ops:
        plan.steps.append(f"quantized only op types {', '.join(o.only_ops)}")
    if o.exclude_ops:
        plan.steps.append(f"op types kept in float: {', '.join(o.exclude_ops)}")
    if o.exclude_nodes:
        plan.steps.append(f"{len(o.exclude_nodes)} nodes kept in float (--exclude-node)")


def _float16(prepared: Path, out: Path, cfg: ConversionConfig, plan: _Plan) -> None:
    onnx = require("onnx", "convert")
    numpy_helper = require("onnx.numpy_helper", "convert")
    float16 = require("onnxconverter_common.float16", "convert")
    model = onnx.load(str(prepared))
    _check_exclusions(model, cfg)
    big = {
        i.name
        for g in _graphs(model.graph)
        for i in g.initializer
        if i.data_type == onnx.TensorProto.FLOAT
        and np.abs(numpy_helper.to_array(i)).max(initial=0.0) > FLOAT16_MAX
    }
    blocked = {n.name for n in _nodes(model) if big & set(n.input)}
    if blocked:
        plan.steps.append(
            f"{len(blocked)} nodes with weights beyond float16's range ({FLOAT16_MAX:g}) "
            "kept in float32"
        )
    _describe_exclusions(cfg, plan)
    block = blocked | set(plan.excluded)
    retyped: list[str] = []
    for _ in range(FLOAT16_RETRIES):
        converted = float16.convert_float_to_float16(
            onnx.load(str(prepared)),
            keep_io_types=True,
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *cfg.onnx.exclude_ops],
            node_block_list=sorted(block),
        )
        try:
            _loads(converted)
            break
        except Exception as e:
            # onnxconverter-common retypes some Cast outputs (in If branches) without their 'to'.
            node = _TYPE_ERROR_NODE.search(str(e))
            if node is None or node.group(1) in block:
                raise
            block.add(node.group(1))
            retyped.append(node.group(1))
    if retyped:
        plan.steps.append(
            f"{len(retyped)} nodes kept in float32 where the float16 graph did not type-check "
            f"({', '.join(retyped[:4])}{', …' if len(retyped) > 4 else ''})"
        )
    onnx.save(converted, str(out))


def _quantize_dynamic(prepared: Path, out: Path, cfg: ConversionConfig, plan: _Plan) -> None:
    onnx = require("onnx", "convert")
    q = require("onnxruntime.quantization", "convert")
    model = onnx.load(str(prepared))
    _check_exclusions(model, cfg)
    _describe_exclusions(cfg, plan)
    if "Gemm" not in cfg.onnx.exclude_ops:
        rewritten = gemm_to_matmul(model)
        if rewritten:
            plan.steps.append(
                f"{rewritten} Gemm nodes written as MatMul and Add (onnxruntime has no "
                "dynamically quantized Gemm; pre-processing fuses MatMul and Add into Gemm)"
            )
            onnx.save(model, str(prepared))
    ops = _op_types(model, cfg)
    if ops == []:
        _nothing_quantized(model, cfg, ops)
    q.quantize_dynamic(
        str(prepared),
        str(out),
        weight_type=q.QuantType.QInt8,
        per_channel=plan.per_channel,
        op_types_to_quantize=ops,
        nodes_to_exclude=list(plan.excluded),
    )


def gemm_to_matmul(model: Any) -> int:
    """Rewrite the main graph's plain Gemm nodes (alpha = beta = 1, A not transposed, B an
    initializer) as MatMul followed by Add; how many."""
    onnx = require("onnx", "convert")
    numpy_helper = require("onnx.numpy_helper", "convert")
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    uses = Counter(i for n in _nodes(model) for i in n.input)
    nodes = []
    done = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and node.domain in ("", "ai.onnx")
            and attrs.get("transA", 0) == 0
            and float(attrs.get("alpha", 1.0)) == 1.0
            and float(attrs.get("beta", 1.0)) == 1.0
            and node.input[1] in init
        )
        if not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            t = numpy_helper.to_array(init[weight]).T.copy()
            name = weight if uses[weight] == 1 else f"{weight}_transposed"
            tensor = numpy_helper.from_array(t, name)
            if name == weight:
                init[weight].CopyFrom(tensor)
            else:
                graph.initializer.append(tensor)
            weight = name
        out = node.output[0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = f"{out}_matmul" if has_bias else out
        base = node.name or out
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=base))
        if has_bias:
            nodes.append(
                onnx.helper.make_node("Add", [product, node.input[2]], [out], name=f"{base}_add")
            )
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _nothing_quantized(model: Any, cfg: ConversionConfig, ops: list[str] | None) -> None:
    total = _weights(model).get("float32", 0)
    listed = ", ".join(ops) if ops else "none present in the model"
    hint = (
        f"; dynamic mode quantizes {', '.join(DYNAMIC_OPS)}: a convolutional model takes "
        "--quantize int8 (or --only-op Conv)"
        if cfg.mode is Mode.DYNAMIC and not cfg.onnx.only_ops
        else ""
    )
    raise ConversionError(
        f"{cfg.mode} quantized none of the model's {total} weight tensors (op types quantized: "
        f"{listed}){hint}; the result would be no smaller than fp32, so it is not written"
    )


def _quantize_static(
    prepared: Path, out: Path, cfg: ConversionConfig, plan: _Plan, calibration: Feeds
) -> None:
    onnx = require("onnx", "convert")
    q = require("onnxruntime.quantization", "convert")
    model = onnx.load(str(prepared))
    _check_exclusions(model, cfg)
    _describe_exclusions(cfg, plan)
    settings = cfg.onnx
    method = {
        CalibrationMethod.MINMAX: q.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: q.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: q.CalibrationMethod.Percentile,
    }[settings.method]
    fmt = q.QuantFormat.QDQ if settings.format is QuantFormat.QDQ else q.QuantFormat.QOperator
    q.quantize_static(
        str(prepared),
        str(out),
        OnnxCalibrationReader(calibration),
        quant_format=fmt,
        per_channel=plan.per_channel,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=method,
        op_types_to_quantize=_op_types(model, cfg),
        nodes_to_exclude=list(plan.excluded),
    )


def _weights(model: Any) -> Counter[str]:
    """Initializers with two or more dimensions (weights, not scales or shapes) by dtype."""
    onnx = require("onnx", "convert")
    found: Counter[str] = Counter()
    for g in _graphs(model.graph):
        for i in g.initializer:
            if len(i.dims) >= 2 and int(np.prod(i.dims)) > 1:
                found[onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name] += 1
    return found


def _check_result(
    prepared: Path, out: Path, mode: Mode, cfg: ConversionConfig, plan: _Plan
) -> None:
    onnx = require("onnx", "convert")
    before = _weights(onnx.load(str(prepared), load_external_data=False))
    after = _weights(onnx.load(str(out), load_external_data=False))
    total = before.get("float32", 0)
    if mode is Mode.FLOAT16:
        plan.steps.append(f"{after.get('float16', 0)} of {total} weight tensors stored as float16")
        return
    quantized = after.get("int8", 0) + after.get("uint8", 0)
    if quantized == 0:
        model = onnx.load(str(prepared))
        _nothing_quantized(model, cfg, _op_types(model, cfg))
    left = after.get("float32", 0)
    plan.steps.append(f"{quantized} weight tensors quantized to 8 bits, {left} left in float")
