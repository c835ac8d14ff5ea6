"""Standby replicas (`standby_replicas` 1): a worker follows the changelogs of the partitions
another one owns, so that it takes them over from its own copy instead of the whole changelog.

The end-to-end runs are short chaos runs (bench/chaos.py) on rocksdb://, the store a standby
keeps its copy in (a memory:// store has no persisted offset, so a takeover replays the whole
changelog anyway): w1 processes alone, w2 joins and follows w1's partitions as a standby, w1
leaves (SIGTERM, or SIGKILL) while the input keeps coming, and w2 takes over. The events must be
exactly what `prefect-events process` gives for the input, and w2's tables exactly what the
changelogs hold.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import faust.transport.consumer
import faust.transport.drivers.aiokafka
import pytest
from faust.types import TP
from rocksdict import AccessType, Options, Rdict

from topology import config
from topology.app import TABLES, Worker, table_dir
from topology.kept_state import OFFSET_KEY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402

Partition = tuple[str, int]  # (changelog topic, partition)


def recovery_tables(log: str) -> list[tuple[str, dict[Partition, int]]]:
    """Faust's recovery tables in a worker's log, in order: ("Highwater - Standby", "Reading
    Starts At - Active", ...) with the offset logged per changelog partition."""
    tables: list[tuple[str, dict[Partition, int]]] = []
    rows: dict[Partition, int] | None = None
    topic = ""
    for line in log.splitlines():
        title = re.match(r"\+((?:Highwater|Reading Starts At) - (?:Active|Standby))-", line)
        if title:
            rows = {}
            tables.append((title[1], rows))
        elif rows is not None and line.startswith("|"):
            name, partition, offset = (cell.strip() for cell in line.strip("|").split("|"))
            if name != "topic":  # the header row
                topic = topic if name == "〃" else name  # Faust's ditto mark
                rows[(topic, int(partition))] = int(offset)
        elif not line.startswith("+"):
            rows = None
    return tables


def test_recovery_tables_are_read_from_faust_log_lines() -> None:
    log = "\n".join(
        [
            "2026-11-29 14:15:43,772 INFO faust.tables.recovery: [^---Recovery]: active offsets at start of "
            "reading:",
            "+Reading Starts At - Active---------------------+-----------+--------+",
            "| topic                                         | partition | offset |",
            "+-----------------------------------------------+-----------+--------+",
            "| app-artifact-collections-changelog            | 0         | 455    |",
            "| 〃                                            | 1         | -1     |",
            "+-----------------------------------------------+-----------+--------+",
            "2026-11-29 14:15:43,773 INFO faust.tables.recovery: [^---Recovery]: Restoring state...",
        ]
    )
    assert recovery_tables(log) == [
        (
            "Reading Starts At - Active",
            {("app-artifact-collections-changelog", 0): 455, ("app-artifact-collections-changelog", 1): -1},
        )
    ]


STANDBY = TP("app-artifact-collections-changelog", 1)  # another worker's partition, followed here
STREAM = TP("app-artifacts-by-collection-key", 0)


@pytest.fixture
def standby_consumer(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[TP, int]]]:
    """A worker's consumer following STANDBY, whose recovery service has taken offset 41; the
    seeks it makes, and no broker (an empty fetch)."""
    worker = Worker(config.load({"store": "memory://", "standby_replicas": 1}, environ={}))
    recovery = type("Recovery", (), {"standby_tps": {STANDBY}, "standby_offsets": Counter({STANDBY: 41})})
    worker.app.tables._recovery = recovery()  # type: ignore[attr-defined]
    consumer = worker.consumer
    seeks: list[tuple[TP, int]] = []

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    async def fetch(self: Any, active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:
        return {}

    monkeypatch.setattr(faust.transport.consumer.Consumer, "seek", seek)
    monkeypatch.setattr(faust.transport.drivers.aiokafka.Consumer, "_getmany", fetch)
    monkeypatch.setattr(consumer, "assignment", lambda: {STANDBY, STREAM})
    return consumer, seeks


def test_after_a_flow_resume_standby_partitions_are_read_again_from_what_recovery_took(
    standby_consumer: tuple[Any, list[tuple[TP, int]]],
) -> None:
    """Faust's flow resume empties its changelog queue, standby records included, after the
    consumer has fetched them: read from where the recovery service stands, once, before the
    next fetch (what it took already it skips by offset)."""
    consumer, seeks = standby_consumer

    async def fetches() -> None:
        await consumer._getmany(None, 0.0)
        assert seeks == []
        consumer.resume_flow()
        await consumer._getmany(None, 0.0)
        await consumer._getmany(None, 0.0)

    asyncio.run(fetches())
    assert seeks == [(STANDBY, 42)]


def test_standby_records_fetched_before_a_flow_resume_do_not_reach_the_recovery_service(
    standby_consumer: tuple[Any, list[tuple[TP, int]]],
) -> None:
    """The queue they would have followed is gone: handed on, they would move the standby's
    offset past the records it lost, and the partition is read again from before them anyway."""
    consumer, _ = standby_consumer
    delivered: list[TP] = []

    async def callback(message: Any) -> None:
        delivered.append(message.tp)

    consumer.callback = callback
    fetch = [type("Message", (), {"tp": tp})() for tp in (STANDBY, STREAM)]

    async def deliver() -> None:
        await consumer._deliver(fetch, consumer._resumes)
        began = consumer._resumes
        consumer.resume_flow()
        await consumer._deliver(fetch, began)

    asyncio.run(deliver())
    assert delivered == [STANDBY, STREAM, STREAM]


@pytest.mark.broker
@pytest.mark.timeout(180)
@pytest.mark.parametrize("leave_with", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_standby_takes_over_from_the_state_it_followed(
    leave_with: signal.Signals, bootstrap_servers: str, broker_kind: str, tmp_path: Path
) -> None:
    embedded = broker_kind == "embedded"
    cfg = chaos.Config(
        messages=1200,
        kills=0,
        seed=5,
        partitions=2,
        rounds=6,
        rate=300.0,
        rebalance=True,  # w2 joins at round 2, w1 leaves after round 3 (bench/chaos.py)
        bootstrap_servers=bootstrap_servers,
        out_dir=tmp_path,
        barrier_timeout_s=60.0,
        quiet_s=2.0,
        verbose=False,
        # As in the short chaos test: a member that is gone without a LeaveGroup (SIGKILL, and
        # any member on Tansu: README, defect 4) holds its partitions until its session expires.
        session_timeout_s=2.0 if embedded else 6.0,
        one_record_changelog_batches=embedded,
        store="rocksdb://",
        standby_replicas=1,
        leave_with=leave_with,
    )
    report = chaos.run(cfg)
    table = report.table()
    # Every event byte for byte as `prefect-events process` gives it; duplicates only identical.
    assert report.ok and report.unexpected_exits == [], table
    assert report.rounds_produced == report.rounds_total and report.offline_agrees, table
    assert report.created_taken_for_unknown == [], table
    for stream in report.streams.values():
        assert stream.seen == stream.expected > 0, table
    left = [what for _, what, log in report.timeline if log.endswith("-w1.log") and "SIG" in what]
    assert left == (["SIGKILL"] if leave_with == signal.SIGKILL else ["SIGTERM, exit 0"]), table

    # w2 followed w1's changelog partitions as a standby, never as their owner, and took them
    # over where its copy stood: Faust reads a changelog from -1 (the start) when the store
    # holds no offset for it.
    (survivor,) = tmp_path.glob("worker-*-w2.log")
    tables = recovery_tables(survivor.read_text())
    actives = [i for i, (title, _) in enumerate(tables) if title == "Reading Starts At - Active"]
    takeover = actives[-1]
    standbys = next(rows for title, rows in reversed(tables[:takeover]) if title == "Highwater - Standby")
    changelogs = {f"{report.app_id}-{name}-changelog": name for name in TABLES}
    assert {topic for topic, _ in standbys} == set(changelogs), standbys
    owned_before = {tp for i in actives[:-1] for tp in tables[i][1]}
    assert not set(standbys) & owned_before, survivor
    starts = tables[takeover][1]
    assert all(starts[tp] >= 0 for tp in standbys), (starts, survivor)

    # w2's tables hold exactly what the changelogs say, the partitions it took over included.
    expected: dict[tuple[str, int], dict[bytes, bytes]] = {}
    for record in asyncio.run(chaos.read_all(bootstrap_servers, list(changelogs))):
        state = expected.setdefault((changelogs[record.topic], record.partition), {})
        if record.value is None:
            state.pop(record.key, None)
        else:
            state[record.key] = record.value
    settings = config.load({"app_id": report.app_id, "data_dir": str(tmp_path / "data-w2")}, environ={})
    for name in TABLES:
        for partition in range(cfg.partitions):
            stored = _stored(table_dir(settings) / f"{name}-{partition}.db")
            assert stored == expected.get((name, partition), {}), (name, partition)


def _stored(path: Path) -> dict[bytes, bytes]:
    db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return {key: value for key, value in db.items() if key != OFFSET_KEY}
    finally:
        db.close()
