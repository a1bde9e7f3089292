"""The device outbox: order, bounds, durability across reopen and SIGKILL, threads, corruption."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from device_agent.outbox import Outbox, OutboxStats
from edgeops.core.errors import OutputError

ROOT = Path(__file__).resolve().parents[1]


def test_put_pending_ack_oldest_first(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        a = box.put("edgeops/v1/f/d/telemetry", b"one")
        b = box.put("edgeops/v1/f/d/status", b"two", retain=True)
        c = box.put("edgeops/v1/f/d/events", b"three", qos=0)
        assert a < b < c

        items = box.pending()
        assert [i.id for i in items] == [a, b, c]
        assert (items[1].topic, items[1].payload, items[1].qos, items[1].retain) == (
            "edgeops/v1/f/d/status",
            b"two",
            1,
            True,
        )
        assert items[2].qos == 0 and items[0].attempts == 0 and items[0].created > 0
        assert [i.id for i in box.pending(limit=2)] == [a, b]
        assert [i.id for i in box.pending(limit=1, exclude={a, b})] == [c]

        box.mark_attempt([a, b])
        box.mark_attempt([a, 999])
        assert [i.attempts for i in box.pending()] == [2, 1, 0]

        assert box.ack(b) is True
        assert box.ack(b) is False  # acking twice is harmless
        assert [i.id for i in box.pending()] == [a, c]
        assert box.stats() == OutboxStats(pending=2, pending_bytes=len(b"one three") - 1, dropped=0)


def test_count_bound_drops_oldest_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(tmp_path / "outbox.db", max_messages=3) as box:
        with caplog.at_level(logging.WARNING, logger="device_agent.outbox"):
            ids = [box.put("t", f"m{i}".encode()) for i in range(5)]
        assert [i.id for i in box.pending()] == ids[2:]
        assert box.stats() == OutboxStats(pending=3, pending_bytes=6, dropped=2)
        assert box.ack(ids[0]) is False  # a dropped row is simply gone
    assert len(caplog.records) == 1  # one warning per spell of being full, not one per drop


def test_byte_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_bytes=100) as box:
        ids = [box.put("t", bytes(30)) for _ in range(3)]
        assert box.stats() == OutboxStats(pending=3, pending_bytes=90, dropped=0)
        fourth = box.put("t", bytes(30))  # 120 > 100: the oldest goes
        assert [i.id for i in box.pending()] == [*ids[1:], fourth]
        assert box.stats() == OutboxStats(pending=3, pending_bytes=90, dropped=1)
        full = box.put("t", bytes(100))  # needs the whole outbox
        assert [i.id for i in box.pending()] == [full]
        assert box.stats() == OutboxStats(pending=1, pending_bytes=100, dropped=4)


def test_oversized_payload_raises_and_changes_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_bytes=100) as box:
        kept = box.put("t", b"x")
        with pytest.raises(ValueError, match="101-byte payload"):
            box.put("t", bytes(101))
        assert [i.id for i in box.pending()] == [kept]
        assert box.stats() == OutboxStats(pending=1, pending_bytes=1, dropped=0)


def test_rows_and_dropped_counter_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_messages=2) as box:
        ids = [box.put("t", f"m{i}".encode()) for i in range(4)]
        box.mark_attempt([ids[3]])
    with Outbox(path, max_messages=2) as box:
        assert [(i.id, i.payload, i.attempts) for i in box.pending()] == [
            (ids[2], b"m2", 0),
            (ids[3], b"m3", 1),
        ]
        assert box.stats() == OutboxStats(pending=2, pending_bytes=4, dropped=2)
        box.ack(ids[2])
        box.ack(ids[3])
        box.put("t", b"x")
        box.put("t", b"y")
        newest = box.put("t", b"z")
    with Outbox(path, max_messages=2) as box:
        assert box.stats() == OutboxStats(pending=2, pending_bytes=2, dropped=3)
        assert box.put("t", b"w") > newest  # ids are never reused, even after deletes


def test_puts_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    child = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from device_agent.outbox import Outbox

        box = Outbox(Path(sys.argv[1]))
        ids = [box.put("t", b"payload-%d" % i) for i in range(int(sys.argv[2]))]
        print(*ids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", child, str(path), "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    ids = [int(x) for x in run.stdout.split()]
    assert len(ids) == 50
    assert Path(f"{path}-wal").exists()  # killed before any checkpoint: recovery comes from the WAL

    with Outbox(path) as box:
        items = box.pending(limit=1000)
        assert [i.id for i in items] == ids
        assert [i.payload for i in items] == [b"payload-%d" % i for i in range(50)]
        assert not box.recovered_from_corruption


def test_concurrent_put_and_ack_lose_nothing(tmp_path: Path) -> None:
    threads, per_thread = 4, 200
    kept: list[set[int]] = [set() for _ in range(threads)]
    with Outbox(tmp_path / "outbox.db") as box:

        def producer(n: int) -> None:
            for i in range(per_thread):
                row = box.put(f"t/{n}", b"%d-%d" % (n, i))
                if i % 2:
                    assert box.ack(row)
                else:
                    kept[n].add(row)
                box.pending(limit=5)

        workers = [threading.Thread(target=producer, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        survivors = set().union(*kept)
        assert len(survivors) == threads * per_thread // 2
        assert {i.id for i in box.pending(limit=10_000)} == survivors
        assert box.stats().pending == len(survivors)

        # Every thread acks every survivor, in its own order: each row is deleted exactly once.
        deleted: list[list[int]] = [[] for _ in range(threads)]

        def acker(n: int) -> None:
            order = sorted(survivors)
            random.Random(n).shuffle(order)
            deleted[n].extend(row for row in order if box.ack(row))

        workers = [threading.Thread(target=acker, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        all_deleted = [row for d in deleted for row in d]
        assert sorted(all_deleted) == sorted(survivors)
        assert box.stats() == OutboxStats(pending=0, pending_bytes=0, dropped=0)
        assert box.pending() == []


def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    garbage = b"this is not a database\x00" * 500
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="device_agent.outbox"), Outbox(path) as box:
        assert box.recovered_from_corruption
        assert box.corrupt_path is not None
        assert box.corrupt_path.name.startswith("outbox.db.corrupt-")
        assert box.corrupt_path.read_bytes() == garbage
        row = box.put("t", b"fresh")
        assert [i.id for i in box.pending()] == [row]
    assert "moved it to" in caplog.text
    with Outbox(path) as box:
        assert not box.recovered_from_corruption
        assert [i.payload for i in box.pending()] == [b"fresh"]


def test_unwritable_location_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where a directory should be")
    for path in (blocker / "outbox.db", blocker / "sub" / "outbox.db", tmp_path):
        with pytest.raises(OutputError) as err:
            Outbox(path)
        assert "\n" not in str(err.value)
        assert err.value.exit_code == 8
