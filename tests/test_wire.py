"""The wire codec (encode, decode, Dedup, WireStats) and the topic builders and parsers."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import msgspec
import pytest
from paho.mqtt.client import topic_matches_sub

from edgeops.core import topics, wire
from edgeops.core.errors import WireError

MODEL = wire.ModelRef(name="digits", version="3", sha256="ab" * 32)


def header(seq: int = 7, *, device: str = "cam-01", boot: str = "b-1") -> dict[str, Any]:
    return {"device": device, "boot": boot, "seq": seq, "sent": 1_700_000_010.5}


def telemetry(seq: int = 7, **kw: Any) -> wire.Telemetry:
    fields: dict[str, Any] = {
        "window_start": 1_700_000_000.0,
        "window_end": 1_700_000_010.0,
        "model": MODEL,
        "count": 40,
        "errors": 1,
        "bad_inputs": 2,
        "latency": wire.LatencyHistogram(
            relative_accuracy=0.01,
            buckets={-2: 3, 0: 5, 113: 32},
            zero=1,
            count=41,
            sum=310.25,
            min=0.5,
            max=21.0,
        ),
        "inputs": [
            wire.NumericWindow(
                name="pixels_mean",
                counts=[1, 10, 20, 8, 1],
                missing=1,
                out_of_range=2,
                count=40,
                mean=0.42,
                m2=3.5,
                min=-0.1,
                max=1.7,
            ),
            wire.CategoricalWindow(name="camera", counts=[30, 9], other=1, missing=0),
        ],
        "outputs": [
            wire.ClassOutputWindow(
                name="probs", class_counts=[4] * 10, confidence_counts=[0, 2, 8, 30]
            ),
            wire.NumericWindow(
                name="score", counts=[5, 35], count=40, mean=0.9, m2=0.2, min=0.1, max=1.0
            ),
        ],
        "feedback": wire.Feedback(correct=9, total=10),
        "process": wire.ProcessStats(cpu_percent=12.5, rss_bytes=50_000_000),
        "outbox": wire.OutboxStats(pending=3, dropped=1),
    }
    fields.update(kw)
    return wire.Telemetry(**header(seq), **fields)


def messages() -> list[wire.Message]:
    return [
        telemetry(),
        wire.Status(
            **header(0),
            online=True,
            model=MODEL,
            agent_version="0.1.0",
            started=1_700_000_000.0,
            labels={"site": "lab", "hw": "rpi5"},
        ),
        wire.Event(
            **header(8),
            kind="update-done",
            level="warning",
            message="p95 close to budget",
            command_id="c-9",
            data={"p95_ms": 9.5, "steps": ["verify", "stage"], "nested": {"ok": True, "n": None}},
        ),
        wire.Command(
            id="c-9",
            fleet="lab",
            device="pi-01",
            issued=1_700_000_001.0,
            deadline=1_700_000_061.5,
            counter=1_700_000_001_000_000,
            args=wire.UpdateArgs(
                url="https://fleet.example:8480/v1/bundles/" + "ab" * 32,
                sha256="ab" * 32,
                size=123_456,
                name="digits",
                version="1.1.0",
                health=wire.HealthArgs(predictions=20, max_error_rate=0.05),
            ),
            key="0123456789abcdef",
            signature="A" * 86,
        ),
    ]


def raises(payload: bytes, expected: type[Any] | None = None) -> WireError:
    with pytest.raises(WireError) as info:
        wire.decode(payload, expected)
    return info.value


# --- codec --------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", messages(), ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    payload = wire.encode(msg)
    assert wire.decode(payload) == msg
    assert wire.decode(payload, type(msg)) == msg
    assert wire.decode(bytearray(payload)) == msg
    assert wire.decode(memoryview(payload)) == msg
    # Plain, compact JSON that any JSON reader sees the same way.
    data = json.loads(payload)
    assert data == msgspec.to_builtins(msg, str_keys=True)
    assert data["schema"] == wire.SCHEMA_VERSION
    assert data["type"] in {"telemetry", "status", "event", "command"}
    assert b", " not in payload and b": " not in payload


def test_telemetry_parts_survive() -> None:
    msg = wire.decode(wire.encode(telemetry()), wire.Telemetry)
    assert isinstance(msg.inputs[0], wire.NumericWindow)
    assert isinstance(msg.inputs[1], wire.CategoricalWindow)
    assert isinstance(msg.outputs[0], wire.ClassOutputWindow)
    assert msg.latency.buckets == {-2: 3, 0: 5, 113: 32}
    assert msg.throughput == 4.0


def test_newer_minor_with_unknown_fields_decodes() -> None:
    data = msgspec.to_builtins(telemetry())
    data["schema"] = "1.7"
    data["gpu"] = {"util": 0.5, "temps": [60, 61]}
    data["latency"]["p_future"] = [1, 2, 3]
    data["inputs"][0]["sketch"] = "AAAA"
    msg = wire.decode(json.dumps(data).encode(), wire.Telemetry)
    assert msg.schema == "1.7"
    assert msg == msgspec.structs.replace(telemetry(), schema="1.7")


def test_missing_optional_fields_take_defaults() -> None:
    payload = (
        b'{"type":"command","schema":"1.2","id":"c1","fleet":"f","device":"d","issued":1.0,'
        b'"deadline":2,"counter":1,"args":{"kind":"ping"}}'
    )
    assert wire.decode(payload) == wire.Command(
        schema="1.2",
        id="c1",
        fleet="f",
        device="d",
        issued=1.0,
        deadline=2.0,
        counter=1,
        args=wire.PingArgs(),
    )
    assert wire.decode(payload, wire.Command).kind == "ping"


def test_other_major_is_refused() -> None:
    data = msgspec.to_builtins(telemetry())
    data["schema"] = "2.0"
    e = raises(json.dumps(data).encode())
    assert e.reason == "unknown major version"
    assert "2.0" in str(e)


RAW = {  # JSON text that json.dumps does not write
    '"@DEEP@"': "[" * 3000 + "]" * 3000,
    '"@NAN@"': "NaN",
    '"@INF@"': "-Infinity",
    '"@BIG@"': "1" * 400,
    '"@1E999@"': "1e999",
}


def to_json(data: Any) -> bytes:
    text = json.dumps(data)
    for marker, raw in RAW.items():
        text = text.replace(marker, raw)
    return text.encode()


def payload_with(**changes: Any) -> bytes:
    data = msgspec.to_builtins(telemetry())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return to_json(data)


def bad_count() -> bytes:
    data = msgspec.to_builtins(telemetry())
    data["inputs"][0]["counts"][2] = -1
    return json.dumps(data).encode()


REFUSED = [
    ("oversized", b" " * (wire.MAX_PAYLOAD_BYTES + 1), "bytes"),
    ("not json", b"", "truncated"),
    ("not json", b'{"type":"status",', "truncated"),
    ("not json", b"\xff\xfe{}", "malformed"),
    ("not json", b'{"schema":"1.0","type":"event","x":NaN}', "malformed"),
    ("not json", b'{"schema":"1.0"} {}', "trailing"),
    ("not json", b'{"type":"status","schema":"1.0","device":"\xff"}', "UTF-8"),
    ("not json", b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "deep"),
    ("no schema", b"[1, 2]", "object"),
    ("no schema", b"42", "object"),
    ("no schema", payload_with(schema=None), "$.schema"),
    ("bad field", payload_with(schema="1"), "$.schema"),
    ("bad field", payload_with(schema="1.0.1"), "$.schema"),
    ("bad field", payload_with(schema="v1.0"), "$.schema"),
    ("bad field", payload_with(schema=1.0), "$.schema"),
    ("bad field", payload_with(schema="1" * 5000 + ".0"), "$.schema"),
    ("unknown major version", payload_with(schema="0.9"), "0.9"),
    ("unknown major version", payload_with(schema="10.0"), "10.0"),
    ("bad field", payload_with(type=None), "$.type"),
    ("bad field", payload_with(type=7), "$.type"),
    ("bad field", payload_with(seq=-1), "$.seq"),
    ("bad field", payload_with(seq="7"), "$.seq"),
    ("bad field", payload_with(seq=2**64), "$.seq"),
    ("bad field", payload_with(count=1.5), "$.count"),
    ("bad field", payload_with(device=""), "$.device"),
    ("bad field", payload_with(device="d" * 129), "$.device"),
    ("bad field", payload_with(boot=None), "boot"),
    ("bad field", payload_with(sent=None), "sent"),
    ("bad field", bad_count(), "$.inputs[0].counts[2]"),
    ("bad field", payload_with(latency={"relative_accuracy": 1.0, "buckets": {}}), "$.latency"),
    ("bad field", payload_with(inputs=[{"type": "weird", "name": "x"}]), "$.inputs[0]"),
    ("bad field", payload_with(window_end="@1E999@"), "$.window_end"),
    ("unexpected type", payload_with(type="alarm"), "alarm"),
]


@pytest.mark.parametrize(("reason", "payload", "needle"), REFUSED)
def test_refusals_name_their_reason(reason: str, payload: bytes, needle: str) -> None:
    e = raises(payload)
    assert e.reason == reason
    assert isinstance(e, ValueError)
    text = str(e)
    assert text.startswith(f"{reason}: ") and "\n" not in text and len(text) < 400
    assert needle in text


def test_every_reason_is_covered() -> None:
    assert {r for r, _, _ in REFUSED} == set(wire.REASONS)


def test_expected_type_is_enforced() -> None:
    status = wire.encode(messages()[1])
    e = raises(status, wire.Telemetry)
    assert e.reason == "unexpected type"
    assert "Telemetry" in str(e)
    with pytest.raises(TypeError):
        wire.decode(status, wire.ModelRef)  # type: ignore[call-overload]


def test_long_values_are_clipped_to_one_line() -> None:
    data = msgspec.to_builtins(messages()[2])
    data["level"] = "x\n" * 2000
    text = str(raises(json.dumps(data).encode()))
    assert "\n" not in text and len(text) < 400 and text.endswith("`$.level`")


def test_size_limit_is_inclusive() -> None:
    payload = wire.encode(messages()[3])
    padded = payload + b" " * (wire.MAX_PAYLOAD_BYTES - len(payload))
    assert wire.decode(padded) == messages()[3]
    assert raises(padded + b" ").reason == "oversized"


def test_encode_refuses_oversized_and_invalid_messages() -> None:
    big = wire.Event(**header(), kind="log", data={"blob": ["x" * 4000] * 100})
    with pytest.raises(ValueError, match="oversized") as info:
        wire.encode(big)
    assert isinstance(info.value, WireError) and info.value.reason == "oversized"
    with pytest.raises(WireError, match=r"\$\.count"):
        wire.encode(telemetry(count=-1))
    with pytest.raises(WireError, match=r"\$\.device"):
        wire.encode(wire.Status(**header(device=""), online=True))
    with pytest.raises(WireError, match=r"\$\.latency\.sum"):
        # JSON has no NaN: msgspec writes null, which a required float refuses.
        wire.encode(
            telemetry(
                latency=wire.LatencyHistogram(relative_accuracy=0.01, buckets={}, sum=float("nan"))
            )
        )
    with pytest.raises(WireError, match="unknown major version"):
        wire.encode(msgspec.structs.replace(telemetry(), schema="2.0"))


# --- fuzz ---------------------------------------------------------------------------------------

# fmt: off
JUNK: list[Any] = [
    None, True, 0, -1, 1.5, -0.0, 2**70, -(2**70), 1e308, "", "x" * 300, "1.0", "2.0", "status",
    "telemetry", [], {}, [1, "a", None], {"a": {"b": [1]}}, "@DEEP@", "@NAN@", "@INF@", "@BIG@",
    "@1E999@",
]
# fmt: on
BYTES = [b"\xff", b"\xc3", b'"', b"{", b"[", b"]", b",", b"-", b"e9", b"\\", b"NaN"]


def mutate_json(rng: random.Random, msg: wire.Message) -> bytes:
    data = msgspec.to_builtins(msg)
    node: Any = data
    for _ in range(rng.randint(1, 4)):  # walk down to a random container
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        children = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
        if not children or rng.random() < 0.3:
            break
        node = rng.choice(children)[1]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    action = rng.random()
    if keys and action < 0.6:
        node[rng.choice(keys)] = rng.choice(JUNK)
    elif keys and action < 0.8 and isinstance(node, dict):
        del node[rng.choice(keys)]
    elif isinstance(node, dict):
        node[rng.choice(["extra", "type", "schema", "seq", "counts"])] = rng.choice(JUNK)
    else:
        node.append(rng.choice(JUNK))
    return to_json(data)


def mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    for _ in range(rng.randint(1, 5)):
        i = rng.randrange(len(b) + 1)
        op = rng.random()
        if op < 0.4 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op < 0.7:
            b[i:i] = rng.choice(BYTES)
        else:
            del b[i : i + rng.randint(1, 8)]
    return bytes(b)


def test_fuzz_only_wire_errors() -> None:
    rng = random.Random(20240611)
    valid = [wire.encode(m) for m in messages()]
    outcomes = {"accepted": 0, "refused": 0}
    for i in range(4000):
        base = rng.choice(messages())
        kind = i % 4
        if kind == 0:
            payload = rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            v = rng.choice(valid)
            payload = v[: rng.randrange(len(v))]
        elif kind == 2:
            payload = mutate_bytes(rng, rng.choice(valid))
        else:
            payload = mutate_json(rng, base)
        try:
            msg = wire.decode(payload)
        except WireError as e:
            assert e.reason in wire.REASONS
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        assert wire.decode(wire.encode(msg)) == msg  # whatever is accepted can be sent on
    assert outcomes["accepted"] > 100 and outcomes["refused"] > 2000


# --- consumer helpers ---------------------------------------------------------------------------


def status(seq: int, *, device: str = "d1", boot: str = "b1") -> wire.Status:
    return wire.Status(**header(seq, device=device, boot=boot), online=True)


def test_dedup_drops_redeliveries() -> None:
    d = wire.Dedup()
    assert not d.seen(status(0))
    assert d.seen(status(0))
    assert not d.seen(status(1))
    assert not d.seen(status(1, device="d2"))  # other device, same boot id and seq
    assert d.seen(status(1)) and d.seen(status(1, device="d2"))
    assert d.duplicates == 3


def test_dedup_new_boot_starts_over() -> None:
    d = wire.Dedup()
    for seq in range(5):
        assert not d.seen(status(seq, boot="b1"))
    assert not d.seen(status(0, boot="b2"))
    assert d.seen(status(0, boot="b2"))
    assert d.seen(status(4, boot="b1"))  # a late redelivery from the previous boot


def test_dedup_out_of_order_within_window() -> None:
    d = wire.Dedup(window=16)
    for seq in [0, 1, 2, 4, 3, 9, 6]:
        assert not d.seen(status(seq))
    for seq in [0, 1, 2, 3, 4, 6, 9]:
        assert d.seen(status(seq))
    assert not d.seen(status(5)) and not d.seen(status(8))
    assert not d.seen(status(20))
    assert d.seen(status(9)) and not d.seen(status(7))
    assert d.seen(status(4))  # older than the window: assumed seen
    assert not d.seen(status(10**15))  # a jump does not allocate a huge bitmap
    assert d.seen(status(10**15)) and d.seen(status(20))


def test_dedup_memory_is_bounded() -> None:
    d = wire.Dedup(max_boots=3)
    for b in ["b1", "b2", "b3"]:
        d.seen(status(0, boot=b))
    assert d.seen(status(0, boot="b1"))  # b1 is now the most recent
    d.seen(status(0, boot="b4"))  # evicts b2, the least recently used
    assert len(d) == 3
    assert d.seen(status(0, boot="b1")) and d.seen(status(0, boot="b3"))
    assert not d.seen(status(0, boot="b2"))  # forgotten, so accepted again
    for i in range(1000):
        d.seen(status(i, boot=f"x{i}"))
    assert len(d) == 3
    with pytest.raises(ValueError):
        wire.Dedup(window=0)


def test_stats_count_and_log(caplog: pytest.LogCaptureFixture) -> None:
    stats = wire.WireStats()
    good = wire.encode(telemetry())
    with caplog.at_level(logging.WARNING, logger="edgeops.core.wire"):
        assert stats.decode(good, wire.Telemetry) == telemetry()
        assert stats.decode(good) == telemetry()
        assert stats.decode(b"nope", topic="edgeops/v1/f/d/telemetry") is None
        assert stats.decode(good, wire.Status) is None
        assert stats.decode(payload_with(schema="3.1")) is None
    assert stats.accepted == 2 and stats.total_rejected == 3
    assert stats.rejected["not json"] == 1 and stats.rejected["unexpected type"] == 1
    assert stats.as_dict()["unknown major version"] == 1
    assert stats.as_dict()["accepted"] == 2
    assert len(caplog.records) == 3
    assert "edgeops/v1/f/d/telemetry" in caplog.records[0].getMessage()
    stats.reject(WireError("oversized", "x"))
    assert stats.rejected["oversized"] == 1


# --- topics -------------------------------------------------------------------------------------


def test_topic_builders() -> None:
    assert topics.status("f1", "cam-01") == "edgeops/v1/f1/cam-01/status"
    assert topics.telemetry("f1", "cam-01") == "edgeops/v1/f1/cam-01/telemetry"
    assert topics.events("f1", "cam-01") == "edgeops/v1/f1/cam-01/events"
    assert topics.cmd("f1", "cam-01") == "edgeops/v1/f1/cam-01/cmd"
    assert topics.alert("f1", "cam-01") == "edgeops/v1/f1/alerts/cam-01"
    assert topics.device_filter(kind="telemetry") == "edgeops/v1/+/+/telemetry"
    assert topics.device_filter("f1", kind="alert") == "edgeops/v1/f1/alerts/+"
    assert topics.shared("svc", "edgeops/v1/+/+/status") == "$share/svc/edgeops/v1/+/+/status"
    assert topics.QOS == 1
    assert [k for k in topics.KINDS if topics.retained(k)] == ["status", "alert"]


@pytest.mark.parametrize("kind", topics.KINDS)
def test_topics_parse_what_they_build(kind: topics.Kind) -> None:
    for fleet, device in [("f1", "cam-01"), ("A.b_c-9", "x" * 64), ("alerts2", "status.1")]:
        t = topics.build(fleet, device, kind)
        assert topics.parse(t) == topics.Topic(fleet, device, kind)
        assert str(topics.parse(t)) == t


@pytest.mark.parametrize(
    "bad", ["", "x" * 65, "a/b", "a+b", "#", "+", "a b", "é", "a\x00", "$SYS", "alerts", "status"]
)
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        topics.check_id(bad)
    for build in (topics.status, topics.telemetry, topics.events, topics.cmd, topics.alert):
        with pytest.raises(ValueError):
            build(bad, "d1")
        with pytest.raises(ValueError):
            build("f1", bad)


@pytest.mark.parametrize(
    "foreign",
    [
        "",
        "edgeops/v2/f/d/status",
        "edgeops/v1/f/d/unknown",
        "edgeops/v1/f/d/alert",
        "edgeops/v1/f/d",
        "edgeops/v1/f/d/status/x",
        "edgeops/v1/f/alerts/d/x",
        "/edgeops/v1/f/d/status",
        "edgeops/v1/f/d+/status",
        "edgeops/v1/+/+/status",
        "edgeops/v1/f/alerts/status",
        "edgeops/v1//d/status",
        "$share/g/edgeops/v1/f/d/status",
        "other/v1/f/d/status",
    ],
)
def test_foreign_topics_are_refused(foreign: str) -> None:
    with pytest.raises(ValueError):
        topics.parse(foreign)


def test_filters_match_built_topics_in_paho() -> None:
    for kind in topics.KINDS:
        every = topics.device_filter(kind=kind)
        one_fleet = topics.device_filter("f1", kind=kind)
        shared = topics.shared("svc", every)
        assert shared.startswith("$share/svc/")
        for fleet, device in [("f1", "cam-01"), ("f2", "x.y")]:
            t = topics.build(fleet, device, kind)
            assert topic_matches_sub(every, t)
            assert topic_matches_sub(one_fleet, t) == (fleet == "f1")
            assert topic_matches_sub(shared.removeprefix("$share/svc/"), t)
            for other in topics.KINDS:
                if other != kind:
                    assert not topic_matches_sub(every, topics.build(fleet, device, other))


def test_filter_and_shared_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        topics.device_filter("f/1", kind="status")
    with pytest.raises(ValueError):
        topics.device_filter(kind="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        topics.shared("a/b", "edgeops/v1/+/+/status")
    with pytest.raises(ValueError):
        topics.shared("svc", "$share/x/edgeops/v1/+/+/status")
