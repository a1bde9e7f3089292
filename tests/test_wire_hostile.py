"""Property-based fuzzing of the wire decoder with well-formed but hostile values.

Whatever bytes arrive, :func:`edgeops.core.wire.decode` raises :class:`~edgeops.core.WireError`
or returns a message that every consumer can store and evaluate: strings within their database
columns and free of NUL, event data shallow enough to serialise, counts whose sums stay exact,
latency histograms whose counts add up and whose buckets are in range, windows that merge.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeops.core import events, wire
from edgeops.core.errors import WireError
from edgeops.core.latency import merge_wire
from edgeops.core.window.merge import merge_windows
from edgeops.service.storage import schema
from tests.test_wire import MODEL, header, messages, telemetry

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values a hostile sender would choose: edges of every numeric type, long strings, NUL,
# non-ASCII, deep containers.
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**31, 2**40, 2**40 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 1e100, 1e101, 5e-324, -0.0, 1e15]),
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(["\x00", "a", "\u202e", "\ud7ff", "é"]), max_size=20),
    st.integers(min_value=60, max_value=70).map(lambda n: "v" * n),
    st.integers(min_value=120, max_value=300).map(lambda n: "m" * n),
)
json_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def deep(depth: int) -> str:
    """JSON text of ``depth`` nested containers (lists and objects in turn)."""
    opens = "".join('{"k":' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return f"{opens}1{closes}"


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``data``."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += paths(v, (*prefix, i))
    return out


def put(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        data = data[p]
    data[path[-1]] = value


BASES = [msgspec.to_builtins(m) for m in messages()]
PATHS = [(i, p) for i, b in enumerate(BASES) for p in paths(b)]


def column_limits() -> dict[tuple[str, str], int]:
    """(table, column) -> its string length."""
    return {
        (t.name, c.name): int(c.type.length)
        for t in schema.md.sorted_tables
        for c in t.columns
        if isinstance(c.type, sa.String) and c.type.length
    }


def assert_storable(msg: wire.Message) -> None:
    """What the service does with an accepted message must not fail."""
    text = json.dumps(msgspec.to_builtins(msg))  # no recursion, no unserialisable value
    assert "\\u0000" not in text
    if isinstance(msg, wire.Telemetry | wire.Status | wire.Event):
        assert len(msg.device) <= 64 and len(msg.boot) <= 128
    if isinstance(msg, wire.Telemetry):
        if msg.model is not None:
            assert len(msg.model.name) <= 128 and len(msg.model.version) <= 64
            assert len(msg.model.sha256) <= 64
        assert msg.window_start <= msg.window_end <= wire.MAX_TIME
        for w in [*msg.inputs, *msg.outputs]:
            assert len(w.name) <= 256
        merge_windows([msg.inputs, msg.inputs])  # a span of two windows merges
        merge_windows([msg.outputs, msg.outputs])
        if msg.latency.count:
            h = merge_wire([msg.latency, msg.latency])
            p95 = h.quantile(0.95)
            assert p95 is not None and math.isfinite(p95)
        for n in (msg.count, msg.errors, msg.bad_inputs, msg.latency.count):
            assert 0 <= n <= wire.MAX_COUNT
    if isinstance(msg, wire.Event):
        assert len(msg.kind) <= 64 and (msg.command_id is None or len(msg.command_id) <= 128)
        json.dumps(msg.data)
        # its data reads as its kind's record or as nothing, never an exception
        assert (events.data_of(msg) is None) == (events.misfit(msg.kind, msg.data) is not None)
    assert wire.decode(wire.encode(msg)) == msg


@SETTINGS
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_message_or_a_wire_error(payload: bytes) -> None:
    try:
        msg = wire.decode(payload)
    except WireError as e:
        assert e.reason in wire.REASONS
        return
    assert_storable(msg)


@SETTINGS
@given(st.sampled_from(PATHS), json_values)
def test_a_hostile_value_anywhere_is_refused_or_harmless(
    where: tuple[int, tuple[Any, ...]], value: Any
) -> None:
    index, path = where
    data = msgspec.json.decode(msgspec.json.encode(BASES[index]))
    put(data, path, value)
    try:
        payload = msgspec.json.encode(data)
    except (OverflowError, TypeError, UnicodeEncodeError):
        return  # not expressible as JSON bytes: nothing a broker could carry
    try:
        msg = wire.decode(payload)
    except WireError as e:
        assert e.reason in wire.REASONS
        return
    assert_storable(msg)


@pytest.mark.parametrize("depth", [8, 9, 50, 900, 1000, 20_000])
def test_deeply_nested_event_data_is_refused_at_decode(depth: int) -> None:
    event = {"type": "event", "schema": "1.0", **header(), "kind": "log", "data": "@"}
    payload = json.dumps(event).replace('"@"', '{"x":' + deep(depth) + "}").encode()
    assert len(payload) < wire.MAX_PAYLOAD_BYTES
    with pytest.raises(WireError) as info:
        wire.decode(payload, wire.Event)
    assert info.value.reason in ("bad field", "not json")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"model": {"name": "digits", "version": "v" * 65, "sha256": "ab"}}, "version"),
        ({"model": {"name": "m" * 150_000, "version": "1", "sha256": "ab"}}, "name"),
        ({"model": {"name": "dig\x00its", "version": "1", "sha256": "ab"}}, "NUL"),
        ({"window_end": 1e15}, "window_end"),
        ({"window_start": 5.0, "window_end": 1.0}, "window_end is before"),
        ({"count": 10**13}, "count"),
        ({"device": "d" * 65}, "device"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_well_formed_hostile_telemetry_is_refused(change: dict[str, Any], where: str) -> None:
    data = msgspec.to_builtins(telemetry())
    data.update(change)
    with pytest.raises(WireError, match=where):
        wire.decode(msgspec.json.encode(data), wire.Telemetry)


def test_inconsistent_histograms_and_windows_are_refused() -> None:
    lat = msgspec.to_builtins(telemetry().latency)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"latency": {**lat, "count": 10**6}}, "add up"),
        ({"latency": {**lat, "buckets": {"1000000000": 32, "0": 5, "-2": 3}}}, "bucket index"),
        ({"latency": {**lat, "relative_accuracy": 1e-9}}, "relative_accuracy"),
        ({"latency": {**lat, "min": 30.0, "max": 2.0}}, "min is more than max"),
        ({"feedback": {"correct": 5, "total": 3}}, "more correct"),
    ]
    base = msgspec.to_builtins(telemetry())
    numeric = base["inputs"][0]
    cases += [
        ({"inputs": [{**numeric, "mean": None}]}, "needs mean"),
        ({"inputs": [{**numeric, "mean": 99.0}]}, "mean outside"),
        ({"inputs": [numeric, numeric]}, "repeated"),
        ({"inputs": [{**numeric, "counts": [1] * (wire.MAX_BINS + 2)}]}, "counts"),
    ]
    for change, where in cases:
        data = {**base, **change}
        with pytest.raises(WireError, match=where):
            wire.decode(msgspec.json.encode(data), wire.Telemetry)


def test_every_string_fits_its_database_column() -> None:
    """A wire string longer than the column that stores it would fail the INSERT on
    PostgreSQL (and block the batch): each bound is at most its column's size."""
    limits = column_limits()

    def bound(struct: type[msgspec.Struct], name: str) -> int:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        field = next(f for f in info.fields if f.name == name)
        t = field.type
        if isinstance(t, msgspec.inspect.UnionType):
            t = next(x for x in t.types if isinstance(x, msgspec.inspect.StrType))
        assert isinstance(t, msgspec.inspect.StrType) and t.max_length is not None, name
        return int(t.max_length)

    pairs = [
        (wire.Telemetry, "device", "windows", "device"),
        (wire.Telemetry, "boot", "windows", "boot"),
        (wire.ModelRef, "name", "windows", "model_name"),
        (wire.ModelRef, "version", "windows", "model_version"),
        (wire.ModelRef, "sha256", "devices", "model_sha256"),
        (wire.Status, "agent_version", "devices", "agent_version"),
        (wire.Event, "kind", "events", "kind"),
        (wire.Event, "command_id", "events", "command_id"),
        (wire.NumericWindow, "name", "drift", "feature"),
        (wire.CategoricalWindow, "name", "drift", "feature"),
        (wire.ClassOutputWindow, "name", "drift", "feature"),
    ]
    for struct, name, table, column in pairs:
        assert bound(struct, name) <= limits[(table, column)], (struct.__name__, name)
    # and no string anywhere may hold NUL (PostgreSQL text cannot store it)
    for m in messages():
        data = msgspec.json.encode(m)
        for at in (data.index(b'"schema":"') + 10, len(data) - 2):
            hostile = data[:at] + b"\\u0000" + data[at:]
            with pytest.raises(WireError, match="NUL"):
                wire.decode(hostile)


def test_hostile_models_cannot_stay_in_a_span() -> None:
    # a window that a device's clock would put last forever is refused; the model of the
    # issue this guards against: window_end 1e15, count 1e6, skewed bins
    data = msgspec.to_builtins(telemetry(model=MODEL))
    data.update(window_end=1e15, count=10**6)
    with pytest.raises(WireError):
        wire.decode(msgspec.json.encode(data), wire.Telemetry)
