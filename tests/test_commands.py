"""Commands on their own: typed, bounded arguments; the signature and the device's checks; the
device's update policy (versions, model names, health floors, download hosts)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from device_agent import policy
from device_agent.config import UpdateConfig
from edgeops.core import commands, wire
from edgeops.core.errors import WireError
from edgeops.core.signing import SigningKey
from edgeops.testing import command

KEY = SigningKey.generate()
KEYS = {KEY.key_id: KEY.verify_key}
NOW = 1_800_000_000.0


def ping(**kw: Any) -> wire.Command:
    return command("pi-01", wire.PingArgs(), fleet="lab", key=KEY, issued=NOW, **kw)


def payload(cmd: wire.Command, **changes: Any) -> bytes:
    """``cmd`` as JSON with some fields changed (``args`` merged), not re-signed."""
    data = json.loads(wire.encode(cmd))
    args = changes.pop("args", None)
    data.update(changes)
    if args is not None:
        data["args"] = {**data["args"], **args}
    return json.dumps(data).encode()


def refusal(cmd: wire.Command, *, last: int = 0, now: float = NOW, **kw: Any) -> str | None:
    refused = commands.check(
        cmd,
        keys=KEYS,
        fleet="lab",
        device="pi-01",
        now=now,
        last_counter=last,
        max_clock_skew=300.0,
        **kw,
    )
    return None if refused is None else refused.reason


# --- typed arguments ----------------------------------------------------------------------------

UPDATE = wire.UpdateArgs(
    url="https://fleet.example/v1/bundles/" + "a" * 64,
    sha256="a" * 64,
    size=1000,
    name="digits",
    version="1.1.0",
)


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ({"kind": "set-config"}, "$.args"),  # nothing to set
        ({"kind": "set-config", "window_seconds": 0.001}, "$.args.window_seconds"),
        ({"kind": "set-config", "window_seconds": 1e12}, "$.args.window_seconds"),
        ({"kind": "set-config", "window_seconds": True}, "$.args.window_seconds"),
        ({"kind": "set-config", "window_seconds": "soon"}, "$.args.window_seconds"),
        ({"kind": "set-config", "sample_rate": 1.5}, "$.args.sample_rate"),
        ({"kind": "set-config", "sample_rate": 2**63}, "$.args.sample_rate"),
        ({"kind": "set-config", "sample_rate": 0.5, "outbox_max_bytes": 1}, "$.args"),
        ({"kind": "reboot"}, "$.args.kind"),
        ({"kind": "rollback"}, "$.args"),  # no version: a rollback names where it goes
        ({"kind": "rollback", "version": ""}, "$.args.version"),
        ({"kind": "rollback", "version": "1.0", "from_sha256": "XYZ"}, "$.args.from_sha256"),
        ({**msgspec.to_builtins(UPDATE), "url": "file:///etc/passwd"}, "$.args.url"),
        ({**msgspec.to_builtins(UPDATE), "url": "https://x/" + "a" * 3000}, "$.args.url"),
        ({**msgspec.to_builtins(UPDATE), "sha256": "A" * 64}, "$.args.sha256"),
        ({**msgspec.to_builtins(UPDATE), "size": 0}, "$.args.size"),
        ({**msgspec.to_builtins(UPDATE), "size": 2**62}, "$.args.size"),
        ({**msgspec.to_builtins(UPDATE), "version": None}, "$.args.version"),
        ({**msgspec.to_builtins(UPDATE), "health": {"predictions": 0}}, "$.args.health"),
        ({**msgspec.to_builtins(UPDATE), "health": {"max_error_rate": 2}}, "$.args.health"),
        ({**msgspec.to_builtins(UPDATE), "health": {"seconds": 1e9}}, "$.args.health"),
        ({**msgspec.to_builtins(UPDATE), "health": {"deadline": 1}}, "$.args.health"),
    ],
)
def test_command_arguments_are_typed_and_bounded(args: dict[str, Any], where: str) -> None:
    data = json.loads(wire.encode(ping()))
    data["args"] = args
    with pytest.raises(WireError) as info:
        wire.decode(json.dumps(data).encode(), wire.Command)
    assert info.value.reason == "bad field"
    assert where in str(info.value), str(info.value)


def test_command_envelopes_are_bounded() -> None:
    good = ping()
    assert wire.decode(wire.encode(good), wire.Command) == good
    for changes, needle in [
        ({"deadline": NOW - 1}, "deadline is not after"),
        ({"deadline": NOW + 30 * 86400}, "deadline more than"),
        ({"counter": 0}, "$.counter"),
        ({"counter": 2**63}, "$.counter"),
        ({"device": ""}, "$.device"),
        ({"key": "not-a-key-id"}, "$.key"),
        ({"signature": "x"}, "$.signature"),
        ({"priority": "urgent"}, "unknown field"),  # what a signature cannot cover is refused
    ]:
        with pytest.raises(WireError, match=r"bad field") as info:
            wire.decode(payload(good, **changes), wire.Command)
        assert needle in str(info.value), (changes, str(info.value))
    # A command as 1.0 sent it: kind at the top, no fleet, device, counter or signature.
    old = b'{"type":"command","schema":"1.0","id":"c1","kind":"ping","issued":1.0,"args":{}}'
    with pytest.raises(WireError, match="bad field"):
        wire.decode(old, wire.Command)


def test_every_kind_round_trips() -> None:
    kinds = [
        UPDATE,
        wire.RollbackArgs(version="1.0.0", from_sha256="b" * 64),
        wire.SetConfigArgs(sample_rate=0.25),
        wire.PingArgs(),
    ]
    for args in kinds:
        cmd = command("pi-01", args, fleet="lab", key=KEY)
        back = wire.decode(wire.encode(cmd), wire.Command)
        assert back == cmd and back.args == args
    assert [k for k in wire.COMMAND_KINDS] == ["update", "rollback", "set-config", "ping"]
    assert [command("d", a, fleet="f").kind for a in kinds] == list(wire.COMMAND_KINDS)


# --- signatures and the device's checks ---------------------------------------------------------


def test_a_signed_command_passes_and_every_forgery_is_refused_with_its_reason() -> None:
    good = wire.decode(wire.encode(ping(counter=10)), wire.Command)
    assert refusal(good, last=9) is None
    rogue = SigningKey.generate()
    tampered = wire.decode(payload(good, counter=11), wire.Command)  # the signature is for 10
    retargeted = wire.decode(payload(good, device="pi-02"), wire.Command)
    cases: list[tuple[wire.Command, str, dict[str, Any]]] = [
        (msgspec.structs.replace(good, key=None, signature=None), "unsigned", {}),
        (commands.sign(good, rogue), "unknown key", {}),
        (tampered, "bad signature", {}),
        (retargeted, "bad signature", {}),
        (command("pi-02", wire.PingArgs(), fleet="lab", key=KEY, issued=NOW), "foreign device", {}),
        (command("pi-01", wire.PingArgs(), fleet="lab2", key=KEY, issued=NOW), "foreign fleet", {}),
        (ping(lifetime=60), "expired", {"now": NOW + 61}),
        (ping(), "from the future", {"now": NOW - 301}),
        (good, "replayed", {"last": 10}),
        (good, "replayed", {"last": 11}),
    ]
    for cmd, reason, kw in cases:
        assert refusal(cmd, **kw) == reason, reason
    assert set(commands.REFUSALS) == {r for _, r, _ in cases}


def test_development_mode_takes_unsigned_commands_but_still_checks_signed_ones() -> None:
    unsigned = msgspec.structs.replace(ping(counter=5), key=None, signature=None)
    assert refusal(unsigned, allow_unsigned=True) is None
    assert refusal(unsigned, allow_unsigned=True, last=5) == "replayed"
    forged = wire.decode(payload(ping(counter=5), counter=6), wire.Command)
    assert refusal(forged, allow_unsigned=True) == "bad signature"


def test_the_signature_covers_every_field() -> None:
    cmd = command("pi-01", UPDATE, fleet="lab", key=KEY, issued=NOW)
    base = commands.signed_bytes(cmd)
    assert base.startswith(commands.DOMAIN)
    for field, value in [
        ("id", "other"),
        ("fleet", "lab2"),
        ("device", "pi-02"),
        ("issued", NOW + 1e-6),
        ("deadline", cmd.deadline + 1),
        ("counter", cmd.counter + 1),
        ("args", replace_args(UPDATE, version="1.1.1")),
        ("args", replace_args(UPDATE, health=wire.HealthArgs(max_error_rate=1.0))),
        ("key", "0" * 16),
    ]:
        assert commands.signed_bytes(msgspec.structs.replace(cmd, **{field: value})) != base
    # The signature itself is not signed, and a decoded command gives the same bytes.
    assert commands.signed_bytes(msgspec.structs.replace(cmd, signature=None)) == base
    assert commands.signed_bytes(wire.decode(wire.encode(cmd), wire.Command)) == base


def replace_args(args: wire.UpdateArgs, **kw: Any) -> wire.UpdateArgs:
    return msgspec.structs.replace(args, **kw)


# --- the device's update policy -------------------------------------------------------------


def test_versions_go_forward_only() -> None:
    policy.check_forward(None, "1.0.0")
    policy.check_forward("1.0.0", "1.0.1")
    policy.check_forward("1.9.0", "1.10.0")  # not string order
    policy.check_forward("2.0rc1", "2.0")
    for current, new in [("1.1.0", "1.0.0"), ("1.1.0", "1.1.0"), ("2.0", "2.0rc1")]:
        with pytest.raises(policy.PolicyRefusal, match="not above") as info:
            policy.check_forward(current, new)
        assert info.value.reason == "downgrade"
    with pytest.raises(policy.PolicyRefusal, match="PEP 440") as info:
        policy.check_forward("1.0.0", "2024-05-01")
    assert info.value.reason == "version"


def test_model_names_stay_unless_allowed() -> None:
    policy.check_model("digits", "digits", ())
    policy.check_model(None, "anything", ())
    policy.check_model("digits", "digits-v2", ("digits-v2",))
    for current, new, allowed in [("digits", "wine", ()), (None, "wine", ("digits",))]:
        with pytest.raises(policy.PolicyRefusal, match="allowed_models") as info:
            policy.check_model(current, new, allowed)
        assert info.value.reason == "model"


def test_health_floors_are_only_tightened() -> None:
    floors = UpdateConfig(
        health_predictions=50, health_seconds=30.0, max_error_rate=0.05, max_latency_ratio=1.5
    )
    gate, clamped = policy.health_gate(wire.HealthArgs(), floors)
    assert (gate.predictions, gate.seconds, gate.max_error_rate) == (50, 30.0, 0.05)
    assert (gate.max_p95_ms, gate.max_latency_ratio, clamped) == (None, 1.5, [])
    loose = wire.HealthArgs(
        predictions=1, seconds=0.5, max_error_rate=1.0, max_latency_ratio=100.0, max_p95_ms=9.0
    )
    gate, clamped = policy.health_gate(loose, floors)
    assert (gate.predictions, gate.seconds) == (50, 30.0)
    assert (gate.max_error_rate, gate.max_latency_ratio, gate.max_p95_ms) == (0.05, 1.5, 9.0)
    assert sorted(clamped) == ["max_error_rate", "max_latency_ratio", "predictions", "seconds"]
    strict = wire.HealthArgs(predictions=500, seconds=120.0, max_error_rate=0.0)
    gate, clamped = policy.health_gate(strict, floors)
    assert (gate.predictions, gate.seconds, gate.max_error_rate, clamped) == (500, 120.0, 0.0, [])
    # A time-only window stays time-only, no shorter than the device's.
    gate, _ = policy.health_gate(wire.HealthArgs(seconds=10.0), floors)
    assert (gate.predictions, gate.seconds) == (None, 30.0)


def test_downloads_come_only_from_allowed_hosts() -> None:
    cfg = UpdateConfig(service_url="https://fleet.example:8480/api")
    allowed = policy.allowed_hosts(cfg)
    own = (policy.own_addresses("127.0.0.1"), 8470)
    policy.check_url("https://fleet.example:8480/v1/bundles/x", allowed, own)
    policy.check_url("https://FLEET.example:8480/v1/bundles/x", allowed, own)
    for url, reason in [
        ("https://fleet.example/v1/bundles/x", "host"),  # another port
        ("http://evil.example:8480/x", "host"),
        ("https://fleet.example.evil:8480/x", "host"),
        ("http://127.0.0.1:8470/v1/predict", "local api"),
        ("http://localhost:8470/v1/model", "local api"),
        ("http://[::1]:8470/v1/model", "local api"),
        ("ftp://fleet.example:8480/x", "host"),
        ("https://fleet.example:99999/x", "host"),
    ]:
        with pytest.raises(policy.PolicyRefusal) as info:
            policy.check_url(url, allowed, own)
        assert info.value.reason == reason, url
    # Nothing configured: nothing allowed, and the message says what to set.
    with pytest.raises(policy.PolicyRefusal, match=r"update\.service_url"):
        policy.check_url("https://fleet.example/x", policy.allowed_hosts(UpdateConfig()), own)
    # Entries: HOST (the scheme's default port), HOST:PORT, HOST:*, [IPv6]:PORT.
    listed = policy.allowed_hosts(
        replace(
            cfg,
            allowed_hosts=("cdn.example", "mirror.example:8000", "any.example:*", "[fd00::1]:9"),
        )
    )
    for url in [
        "https://cdn.example/b",
        "http://cdn.example/b",
        "http://mirror.example:8000/b",
        "https://any.example:1234/b",
        "http://[fd00::1]:9/b",
    ]:
        policy.check_url(url, listed, own)
    for url in [
        "https://cdn.example:8443/b",
        "http://mirror.example/b",
        "https://fleet.example:8480/b",
    ]:
        with pytest.raises(policy.PolicyRefusal):
            policy.check_url(url, listed, own)
    for bad in ["", "a b", "host:port", "user@host", "host/path", "host:*:1"]:
        with pytest.raises(ValueError):
            policy.parse_host(bad)


def test_agent_config_reads_commands_and_policy(tmp_path: Any) -> None:
    from device_agent.config import load_config
    from edgeops.core.errors import UsageError

    f = tmp_path / "agent.toml"
    f.write_text(
        '[commands]\ntrusted_keys = ["keys/command.pub"]\nmax_clock_skew = 60\n'
        '[update]\nservice_url = "https://fleet.example:8480"\n'
        'allowed_hosts = ["cdn.example"]\nallowed_models = ["digits-v2"]\n'
        "max_error_rate = 0.01\nmax_latency_ratio = 1.2\n"
    )
    cfg = load_config(f, env={"EDGEOPS_AGENT_COMMANDS_ALLOW_UNSIGNED": "true"})
    assert cfg.commands.trusted_keys == (tmp_path / "keys" / "command.pub",)
    assert cfg.commands.allow_unsigned and cfg.commands.max_clock_skew == 60.0
    assert cfg.update.allowed_hosts == ("cdn.example",)
    assert cfg.update.allowed_models == ("digits-v2",)
    assert (cfg.update.max_error_rate, cfg.update.max_latency_ratio) == (0.01, 1.2)
    for text, message in [
        ('[update]\nservice_url = "fleet.example"\n', "service_url"),
        ('[update]\nallowed_hosts = ["a/b"]\n', "allowed_hosts"),
        ("[update]\nallowed_hosts = [1]\n", "list of strings"),
        ("[update]\nmax_error_rate = 2\n", "max_error_rate"),
        ("[update]\nmax_latency_ratio = 0\n", "max_latency_ratio"),
        ("[commands]\nmax_clock_skew = 0\n", "max_clock_skew"),
        ("[commands]\nallow_unsigned = 1\n", "true or false"),
    ]:
        f.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_config(f, env={})


def test_time_checks_use_the_devices_clock() -> None:
    cmd = ping(lifetime=60)
    assert refusal(cmd, now=NOW + 60) is None  # at the deadline: still valid
    assert refusal(cmd, now=NOW - 299) is None  # within the skew
    assert refusal(cmd, now=NOW + 60.001) == "expired"


# --- the service's side -------------------------------------------------------------------------


def test_the_service_numbers_commands_per_device_and_signs_them(tmp_path: Any) -> None:
    from edgeops.core.errors import UsageError
    from edgeops.service import storage
    from edgeops.service.commands import Addressed, CommandDraft, CommandSigner

    url = f"sqlite:///{tmp_path / 'service.db'}"
    # two service processes
    one, two = storage.Store(storage.connect(url)), storage.Store(storage.connect(url))
    signer = CommandSigner(one, KEY)
    other = CommandSigner(two, KEY)
    draft = CommandDraft("c1", wire.PingArgs(), NOW, NOW + 60)
    batch = [Addressed("lab", "pi-01", draft), Addressed("lab", "pi-02", draft)]
    sent = [cmd for _, cmd in signer.issue(batch)]
    sent += [cmd for _, cmd in other.issue(batch[:1])]
    sent += [cmd for _, cmd in signer.issue(batch[:1])]
    pi01 = [c.counter for c in sent if c.device == "pi-01"]
    assert pi01 == sorted(set(pi01)) and len(pi01) == 3  # increasing, never repeated
    for cmd in sent:  # each one verifies on its device, and is the device's own
        back = wire.decode(wire.encode(cmd), wire.Command)
        assert (
            commands.check(
                back,
                keys=KEYS,
                fleet="lab",
                device=cmd.device,
                now=NOW,
                last_counter=0,
                max_clock_skew=300.0,
            )
            is None
        )
    topics_ = [t for t, _ in signer.issue(batch)]
    assert topics_ == ["edgeops/v1/lab/pi-01/cmd", "edgeops/v1/lab/pi-02/cmd"]
    # Counters are at least the time in microseconds: a new database does not go back.
    fresh = storage.Store(storage.connect(f"sqlite:///{tmp_path / 'new.db'}"))
    (after,) = fresh.counters.next([("lab", "pi-01")])
    assert after > max(pi01)
    # Without a key the service sends unsigned commands (devices refuse them by default).
    ((_, bare),) = CommandSigner(one, None).issue(batch[:1])
    assert bare.signature is None and bare.key is None
    # A bundle key is not a command key.
    with pytest.raises(UsageError, match="also trusted for bundles"):
        CommandSigner(one, KEY, bundle_key_ids=[KEY.key_id])


def test_serve_says_in_one_line_what_is_wrong_with_its_command_key(
    cli: Any, signing_keys: tuple[Any, Any], command_keys: tuple[Any, Any], tmp_path: Any
) -> None:
    from edgeops.core import errors

    base = ["serve", "--db", f"sqlite:///{tmp_path / 's.db'}", "--http-port", 0]
    for key, code, message in [
        (tmp_path / "none.key", errors.KeyFileError.exit_code, "no such key file"),
        (command_keys[1], errors.KeyFileError.exit_code, "is a public key"),
    ]:
        r = cli(*base, "--command-key", key)
        assert r.code == code and message in r.err and r.err.count("\n") == 1, r.err
    r = cli(*base, "--trusted-key", signing_keys[1], "--command-key", signing_keys[0])
    assert r.code == errors.UsageError.exit_code and "also trusted for bundles" in r.err, r.err


def test_the_guard_keeps_its_counter_and_distrusts_what_came_before_a_lost_record(
    tmp_path: Any,
) -> None:
    from device_agent.config import CommandsConfig
    from device_agent.guard import STATE_FILE, CommandGuard
    from edgeops.core.signing import generate_keypair, load_signing_key

    private, public = generate_keypair(tmp_path / "keys", "command")
    key = load_signing_key(private)
    cfg = CommandsConfig(trusted_keys=(public,))

    def guard() -> CommandGuard:
        return CommandGuard(cfg, fleet="lab", device="pi-01", state_dir=tmp_path)

    def cmd(counter: int, issued: float) -> wire.Command:
        return command(
            "pi-01", wire.PingArgs(), fleet="lab", key=key, counter=counter, issued=issued
        )

    now = 1_800_000_000.0
    g = guard()
    assert g.admit(cmd(5, now), now=now) is None and g.last_counter == 5
    assert guard().last_counter == 5  # on disk
    refused = guard().admit(cmd(5, now), now=now)
    assert refused is not None and refused.reason == "replayed"
    # A record that cannot be read: commands issued before the guard found out are refused.
    for damage in (b"{not json", b'{"counter": "five"}', b"[]"):
        (tmp_path / STATE_FILE).write_bytes(damage)
        g = guard()
        later = time.time() + 1
        old = g.admit(cmd(6, later - 60), now=later)
        assert old is not None and old.reason == "replayed" and "lost" in old.message
        assert g.admit(cmd(7, later), now=later) is None
    # A renamed device starts again: the old name's commands are foreign anyway.
    renamed = CommandGuard(cfg, fleet="lab", device="pi-99", state_dir=tmp_path)
    assert renamed.last_counter == 0
