"""Which nodes of a quantized ONNX model lose the most: a per-node error report.

In the spirit of onnxruntime's ``qdq_loss_debug`` and LiteRT's quantization debugger: the float
graph that was quantized and the quantized model are both run with every intermediate float tensor
they share (by name) exposed as an output, on a few validation samples. For each node, the SNR of
its output against the float graph says how much error has built up there; the SNR of its noisiest
input minus that says how much error the node itself adds. The nodes that add the most are the
ones to keep in float (``--exclude-node``, or ``--exclude-op`` for their op type).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.core.feeds import Feeds
from edgeops.core.optional import require

EXACT_DB = 120.0
"""SNR reported for a tensor the quantized model computes exactly (no error at all)."""
MAX_SAMPLES = 8
"""Validation samples run through both exposed graphs (every activation is kept per call)."""
KEEP = 100
"""Nodes kept in the report, worst first."""


@dataclass(frozen=True)
class NodeError:
    node: str
    """The node's name in the pre-processed float graph (what ``--exclude-node`` takes)."""
    op: str
    output: str
    snr_db: float
    """SNR of the node's output in the quantized model against the float graph."""
    added_db: float
    """SNR of its noisiest matched input minus ``snr_db``: the error this node adds."""


def _exposed(model: Any, names: list[str]) -> bytes:
    onnx = require("onnx", "convert")
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    data: bytes = model.SerializeToString()
    return data


def _float_tensors(model: Any) -> set[str]:
    onnx = require("onnx", "convert")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference gives up on some graphs; fall back to declared types
        inferred = model
    g = inferred.graph
    return {
        v.name
        for v in (*g.input, *g.value_info, *g.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }


def _session(blob: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # The exposed tensors must be the graph's own, not those of fused replacements.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])


def _dequantized(graph: Any) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output that stands for it after its QuantizeLinear (what
    the tensor's consumers see in a QDQ model)."""
    q_of = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {t: dq_of[q] for t, q in q_of.items() if q in dq_of}


def node_errors(
    prepared: Path, converted: Path, feeds: Feeds, threads: int | None = 1
) -> tuple[NodeError, ...]:
    """The error each node of ``converted`` adds against ``prepared``, worst first.

    A tensor of the float graph is compared with the same tensor of the quantized graph, after
    its QuantizeLinear/DequantizeLinear pair when it has one. Nodes whose output the quantized
    graph no longer has (fused away, such as a Relu after a convolution) are reported together
    with the next node that it does have (``Conv+Relu``).
    """
    onnx = require("onnx", "convert")
    ref_model = onnx.load(str(prepared))
    q_model = onnx.load(str(converted))
    floats = _float_tensors(ref_model)
    produced_q = {o for n in q_model.graph.node for o in n.output}
    dq = _dequantized(q_model.graph)
    graph_inputs = {i.name for i in ref_model.graph.input}
    nodes = [n for n in ref_model.graph.node if n.output and n.output[0] in floats]
    pairs = {}
    for n in nodes:
        t = n.output[0]
        if t in dq:
            pairs[t] = dq[t]
        elif t in produced_q:
            pairs[t] = t
    if not pairs:
        return ()
    fed = {i: dq[i] for i in feeds.names if i in dq and i in floats}
    ref_names = sorted(pairs)
    q_names = [pairs[t] for t in ref_names]
    ref = _session(_exposed(ref_model, ref_names), threads)
    test = _session(_exposed(q_model, sorted({*q_names, *fed.values()})), threads)
    signal: dict[str, float] = defaultdict(float)
    noise: dict[str, float] = defaultdict(float)
    for arrays, _ in feeds.take(slice(0, MAX_SAMPLES)).calls(max_batch=1):
        feed = dict(zip(feeds.names, arrays, strict=True))
        a = ref.run(ref_names, feed)
        wanted = [*q_names, *fed.values()]
        b = dict(zip(wanted, test.run(wanted, feed), strict=True))
        compared = [
            *zip(ref_names, a, q_names, strict=True),
            *((i, feed[i], d) for i, d in fed.items()),
        ]
        for name, x, qn in compared:
            x = np.asarray(x, dtype=np.float64)
            y = np.asarray(b[qn], dtype=np.float64)
            if x.shape != y.shape:
                continue
            signal[name] += float(np.sum(x * x))
            noise[name] += float(np.sum((x - y) ** 2))
    snr = {name: _db(signal[name], noise[name]) for name in signal}
    producer = {o: n for n in ref_model.graph.node for o in n.output}

    def upstream(tensor: str, seen: set[str]) -> tuple[float, list[Any]]:
        """SNR of the nearest compared tensors feeding ``tensor``, and the uncompared nodes
        passed on the way."""
        if tensor in snr:
            return snr[tensor], []
        node = producer.get(tensor)
        if tensor in graph_inputs or node is None or tensor in seen:
            return EXACT_DB, []
        seen.add(tensor)
        found = [upstream(i, seen) for i in node.input if i]
        worst = min((f[0] for f in found), default=EXACT_DB)
        return worst, [n for f in found for n in f[1]] + [node]

    found = []
    for n in nodes:
        out = n.output[0]
        if out not in snr:
            continue
        ups = [upstream(i, set()) for i in n.input if i]
        noisiest = min((u[0] for u in ups), default=EXACT_DB)
        merged = [m for u in ups for m in u[1] if m.output[0] in floats]
        op = "+".join([*(m.op_type for m in merged), n.op_type])
        name = merged[0].name if merged else n.name
        found.append(NodeError(name or out, op, out, snr[out], noisiest - snr[out]))
    found.sort(key=lambda e: e.added_db, reverse=True)
    return tuple(found[:KEEP])


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return EXACT_DB
    if signal <= 0.0 or not math.isfinite(noise):
        return -EXACT_DB
    return min(EXACT_DB, max(-EXACT_DB, 10.0 * math.log10(signal / noise)))


def by_op_type(errors: tuple[NodeError, ...]) -> list[tuple[str, NodeError]]:
    """The worst node of each op type, worst op type first."""
    worst: dict[str, NodeError] = {}
    for e in errors:
        if e.op not in worst or e.added_db > worst[e.op].added_db:
            worst[e.op] = e
    return sorted(worst.items(), key=lambda kv: kv[1].added_db, reverse=True)
