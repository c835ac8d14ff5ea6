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
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust.transport.consumer
import faust.transport.drivers.aiokafka
import pytest
from aiokafka.structs import ConsumerRecord
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


LOG_END = 48  # STANDBY holds offsets up to 47; the standby copy has taken up to 39


class StandbyReading:
    """A worker's consumer running its fetch loop (_drain_messages, Faust's getmany, _getmany)
    on STANDBY against a broker faked at ``super()._getmany`` and ``seek``; Faust's conductor and
    recovery service cut down to what decides what reaches the standby copy: the conductor puts
    each record into the (real) changelog queue, from a task of its own when the queue is full,
    and the recovery service takes a record only above the offset it took last, which becomes
    its ``standby_offsets[STANDBY]``. At the start of each fetch it takes what is queued; a
    flow resume (`recovery_completes`) empties the queue first if it comes then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, queue_size: int = 100, per_fetch: int = 2) -> None:
        worker = Worker(config.load({"store": "memory://", "standby_replicas": 1}, environ={}))
        app = worker.app
        app.conf.stream_buffer_maxsize = queue_size
        self.recovery = SimpleNamespace(standby_tps={STANDBY}, standby_offsets=Counter({STANDBY: 39}))
        app.tables._recovery = self.recovery  # type: ignore[attr-defined]
        self.app, self.consumer = app, worker.consumer
        self.queue = app.tables.changelog_queue
        self.position, self.per_fetch, self.fetches = 40, per_fetch, 0
        self.taken: list[int] = []  # what reached the standby copy, in order
        self.during_fetch: dict[int, Callable[[], None]] = {}  # fetch number → what happens then
        self.after_queuing: dict[int, Callable[[], None]] = {}  # offset → what happens once queued
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())
        reading = self

        async def seek(self: Any, tp: TP, offset: int) -> None:
            reading.position = offset

        async def fetch(self: Any, active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:
            reading.fetches += 1
            reading.during_fetch.pop(reading.fetches, _no_op)()
            reading.take()
            end = min(reading.position + reading.per_fetch, LOG_END)
            records = [_record(offset) for offset in range(reading.position, end)]
            reading.position = max(reading.position, end)
            if (not records and not reading.queue.qsize()) or reading.fetches > 20:  # or stuck
                reading.fetcher._stopped.set()
            return {STANDBY: records} if records else {}

        monkeypatch.setattr(faust.transport.consumer.Consumer, "seek", seek)
        monkeypatch.setattr(faust.transport.drivers.aiokafka.Consumer, "_getmany", fetch)
        monkeypatch.setattr(self.consumer, "assignment", lambda: {STANDBY})
        monkeypatch.setattr(self.consumer, "highwater", lambda tp: LOG_END)
        self.consumer._set_active_tps({STANDBY})
        self.consumer.callback = self.on_message
        app.flow_control.resume()  # the flow runs: Faust's recovery sought STANDBY and resumed it

    def recovery_completes(self) -> None:
        """Faust's flow resume, as its recovery service makes it: the changelog queue emptied."""
        self.app.flow_control.resume()
        self.consumer.resume_flow()

    async def on_message(self, message: Any) -> None:
        """Faust's conductor (faust/transport/conductor.py), for one changelog record."""
        event = SimpleNamespace(message=message)
        if self.queue.full():
            await asyncio.wait([asyncio.ensure_future(self.queue.put(event))])
        else:
            self.queue.put_nowait_enhanced(event, on_pressure_high=_no_op, on_pressure_drop=_no_op)
        self.after_queuing.pop(message.offset, _no_op)()

    def take(self, most: int | None = None) -> None:
        """Faust's recovery service (Recovery._slurp_changelogs) taking standby records."""
        offsets = self.recovery.standby_offsets
        while self.queue.qsize() and (most is None or most > 0):
            offset = self.queue.get_nowait().message.offset
            if offset > offsets[STANDBY]:
                offsets[STANDBY] = offset
                self.taken.append(offset)
            most = None if most is None else most - 1

    async def run(self) -> list[int]:
        """Read STANDBY to its end; what the standby copy took, in order."""
        await self.consumer._drain_messages(self.fetcher)
        self.take()
        return self.taken


def _record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(STANDBY.topic, STANDBY.partition, offset, 0, 0, b"k", b"v", None, 1, 1, ())


def _no_op() -> None:
    pass


async def test_standby_records_of_a_fetch_in_flight_when_the_flow_resumes_are_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery completes while a fetch is in flight, after the resume emptied the queue of the
    records before it: queued, that fetch's records would move the standby's offset past them.
    They were fetched before the resume, though delivered after it."""
    reading = StandbyReading(monkeypatch)
    reading.during_fetch[2] = reading.recovery_completes  # 40 and 41 queued, not taken yet
    assert await reading.run() == list(range(40, LOG_END))


async def test_standby_partitions_are_sought_before_the_first_fetch_after_a_flow_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sought after it, that fetch would bring the records after the ones the resume dropped,
    and queue them as records fetched after the resume."""
    reading = StandbyReading(monkeypatch)
    reading.after_queuing[41] = reading.recovery_completes  # while 40 and 41 wait in the queue
    assert await reading.run() == list(range(40, LOG_END))


async def test_a_standby_record_faust_queues_after_a_flow_resume_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the changelog queue full, Faust's conductor puts a record from a task of its own: one
    that runs only after a resume emptied the queue would land after the records it dropped, and
    move the standby's offset past them before the partition is sought again."""
    reading = StandbyReading(monkeypatch, queue_size=2, per_fetch=3)

    async def recovery() -> None:
        # 40 and 41 fill the queue; the conductor's put of 42 waits for room.
        while not reading.queue._putters:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        reading.take(1)  # 40, which wakes the put of 42
        reading.recovery_completes()  # before that put runs: 41 dropped
        while True:
            reading.take()
            await asyncio.sleep(0)

    recovering = asyncio.ensure_future(recovery())
    try:
        taken = await reading.run()
    finally:
        recovering.cancel()
    assert taken == list(range(40, LOG_END))


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
