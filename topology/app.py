"""The Faust wiring: app, topics, tables and agents. Thin on purpose; the logic is in `steps`.

raw artifacts ──route──▶ artifacts-by-id ──memberships──▶ artifacts-by-key ──collections──▶ events
raw task results ──route──▶ task-results-by-flow-run ──lineage──▶ events
(every step) ──▶ dead letters
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from streams import retention
from topology import steps
from topology.admin import RECORD_LIMIT_BYTES, TopicSpec
from topology.config import Settings
from topology.crash import exit_for_replay
from topology.metrics import Metrics
from topology.publish import Lane, publish
from topology.records import Out, partition_for, partitioner
from topology.steps import BatchResult, InRecord, Topics
from topology.store import Change, LocalStore
from topology.transport import WorkerConsumer, configure_fetch_wait

log = logging.getLogger("prefect_events")

Table = faust.types.TableT[bytes, bytes]
Stream = faust.Stream[bytes]


@dataclass(frozen=True)
class TopicNames:
    """Every topic the worker reads or writes, derived from Settings in one place."""

    settings: Settings

    @property
    def internal_prefix(self) -> str:
        return self.settings.app_id

    def topics(self) -> Topics:
        s = self.settings
        return Topics(
            artifact_events=s.artifact_events_topic,
            asset_events=s.asset_events_topic,
            dead_letters=s.dead_letter_topic,
            artifacts_by_id=f"{s.app_id}-artifacts-by-id",
            artifacts_by_key=f"{s.app_id}-artifacts-by-collection-key",
            task_results_by_flow_run=f"{s.app_id}-task-results-by-flow-run",
            partitions=s.partitions,
            raw_artifacts=s.artifacts_topic,
            raw_task_results=s.task_results_topic,
            raw_partitions=s.input_partitions,
        )

    def specs(self) -> list[TopicSpec]:
        """Topics created before the worker starts, all with explicit partition counts.

        The topics the worker writes take records up to RECORD_LIMIT_BYTES, whatever the broker's
        default (Kafka's is 1 MB): a hand-over or dead letter is a raw message plus headers, an
        event may be up to 1.5 MB, and a collection member's version record holds its `data` and
        `description` as of now and before its last change. A record over the limit fails its
        batch, and the worker stops at that message (README, Known limitations). The raw topics
        are the producers': they keep the broker's default."""
        s, t = self.settings, self.topics()
        rf, limit = s.replication_factor, RECORD_LIMIT_BYTES
        return [
            TopicSpec(s.artifacts_topic, s.input_partitions, rf),
            TopicSpec(s.task_results_topic, s.input_partitions, rf),
            *(
                TopicSpec(name, s.partitions, rf, max_message_bytes=limit)
                for name in (
                    t.artifacts_by_id,
                    t.artifacts_by_key,
                    t.task_results_by_flow_run,
                    s.artifact_events_topic,
                    s.asset_events_topic,
                    s.dead_letter_topic,
                )
            ),
            *(TopicSpec(topic, s.partitions, rf, True, limit) for topic in self.changelogs().values()),
        ]

    def changelogs(self) -> dict[str, str]:
        """Each table's changelog topic, as Faust names it: `<app_id>-<table>-changelog`."""
        return {table: f"{self.settings.app_id}-{table}-changelog" for table in TABLES}


INTAKE_BATCHES = 4  # a step's intake holds this many batches; beyond it, the fetch loop waits
STALL_S = 5.0  # a partition with records waiting and none taken for this long is read again

TABLES = ("artifact-memberships", "artifact-collections", "flow-run-lineage")
UNKNOWN_DELETES_SHOWN = 5  # named in the log line of a batch; the metric counts all


class Worker:
    """Builds the Faust app for a Settings and wires the steps into agents."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.names = TopicNames(settings)
        self.topics = self.names.topics()
        # Per swept table, per partition: the greatest event time its step has applied there
        # (capped by the wall clock, streams.retention.advance), "now" for that partition's
        # retention. Kept in memory: after a restart or on a newly assigned partition it starts
        # at 0 and sweeps nothing until messages come, which forgets later, never wrongly.
        self.watermarks: dict[str, dict[int, int]] = {"flow runs": {}, "deleted artifacts": {}}
        self._reported_ready = False
        self._rewinding: asyncio.Future[None] | None = None
        self.app = faust.App(
            settings.app_id,
            broker=settings.broker_url,
            store=settings.store,
            datadir=settings.data_dir,
            tabledir=table_dir(settings),
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=True,
            table_standby_replicas=settings.standby_replicas,
            processing_guarantee=settings.processing_guarantee,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
            broker_rebalance_timeout=max(10.0, settings.session_timeout_s),
            producer_linger=settings.producer_linger_ms / 1000,
            producer_max_batch_size=settings.producer_max_batch_bytes,
            producer_acks=-1,
            producer_partitioner=partitioner,
            web_enabled=False,
        )
        configure_fetch_wait(self.app, settings.fetch_max_wait_ms)
        self._wire()

    # --- wiring ---------------------------------------------------------------------------------

    def _channel(self, *names: str) -> faust.TopicT:
        """Raw bytes in (no Faust decoding: a bad message must become a dead letter, not a crash).
        Every topic exists already, created by runner.prepare with its partition count."""
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def _table(self, name: str) -> Table:
        # Faust derives store and changelog codecs from key_type/value_type (bytes → raw); a
        # schema alone would leave them json, and recovered values would come back as dicts.
        return self.app.Table(
            name,
            partitions=self.settings.partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(self.settings),
        )

    def _wire(self) -> None:
        s, t = self.settings, self.topics
        self.memberships = self._table("artifact-memberships")
        self.collections = self._table("artifact-collections")
        self.lineage = self._table("flow-run-lineage")
        self.tables = (self.memberships, self.collections, self.lineage)
        self.changelog_topics = {table.changelog_topic.get_topic_name() for table in self.tables}
        # The embedded broker's end offsets are right only after a one-record batch (README,
        # "Tansu's defects"): Faust's recovery reads changelogs up to them, nothing else does.
        self._records_per_batch = (
            dict.fromkeys(self.changelog_topics, s.changelog_batch_records)
            if s.changelog_batch_records
            else {}
        )
        # A table's step and the retention sweep each read state, publish its changes and then
        # write them locally (Worker._store): one at a time, so neither reads what the other has
        # published but not yet written.
        self._writing = {table.name: asyncio.Lock() for table in self.tables}
        self._swept_by: dict[str, Sequence[str]] = {}  # swept table → the topics its step reads
        retention_us = s.lineage_retention_us
        # The stateful steps read the raw topics themselves: records the producer keyed the
        # advised way are applied where they are, the others re-keyed onto the internal topic.
        self._stateful(
            "memberships",
            self._channel(t.raw_artifacts, t.artifacts_by_id),
            self.memberships,
            lambda topics, batch, load: steps.apply_memberships(topics, batch, load, retention_us),
            swept="deleted artifacts",
        )
        self._stateful(
            "collections", self._channel(t.artifacts_by_key), self.collections, steps.apply_collections
        )
        self._stateful(
            "lineage",
            self._channel(t.raw_task_results, t.task_results_by_flow_run),
            self.lineage,
            lambda topics, batch, load: steps.apply_lineage(topics, batch, load, retention_us),
            swept="flow runs",
        )
        self.app.on_partitions_revoked.connect(self._forget_watermarks)
        self.app.timer(interval=60.0, name="retention")(self.sweep)
        self.app.timer(interval=30.0, name="table-sizes")(self.measure_tables)
        self.app.timer(interval=1.0, name="stalled-partitions")(self.rewind_stalled)
        self.app.timer(interval=1.0, name="readiness")(self.report_readiness)
        self.app.timer(interval=5.0, name="consumer-lag")(self.measure_lag)

    def _stateful(
        self,
        name: str,
        topic: faust.TopicT,
        table: Table,
        process: Callable[[Topics, Sequence[InRecord], steps.Load], BatchResult],
        swept: str | None = None,
    ) -> None:
        async def agent(stream: Stream) -> None:
            # Subscribes the topics (Faust's group membership and assignment follow its agents);
            # their records go to the intake instead (topology.intake), so nothing arrives here.
            async for _ in stream:
                pass

        self.app.agent(topic, name=name)(agent)  # type: ignore[arg-type]
        if swept is not None:
            self._swept_by[swept] = topic.topics

        async def run() -> None:
            intake = self.consumer.intake(name, topic.topics, INTAKE_BATCHES * self.settings.batch_size)
            store = LocalStore(table)
            while True:
                messages = await intake.take(self.settings.batch_size)
                # A cancel (SIGTERM) lets the batch in hand finish, so that what it did is
                # committed rather than replayed (commits follow the ledger).
                batch = asyncio.ensure_future(
                    self._process(name, messages, table, store, process, swept)
                )
                try:
                    await asyncio.shield(batch)
                except asyncio.CancelledError:
                    await _finish_or_exit(name, batch)
                    raise
                except Exception:
                    _exit_for_replay(name)
                finally:
                    intake.done()

        self.app.task(run)

    async def _process(
        self,
        name: str,
        messages: Sequence[Any],
        table: Table,
        store: LocalStore,
        process: Callable[[Topics, Sequence[InRecord], steps.Load], BatchResult],
        swept: str | None,
    ) -> None:
        started = time.perf_counter()
        # Each partition's records in offset order, each once (topology.commits).
        ledger = self.consumer.ledger
        messages = [m for m in messages if ledger.admit(m.tp, m.offset)]
        await self.consumer.rewind()
        if not messages:
            return
        # Faust's stall check reads this per partition; its streams set it, the intakes bypass them.
        inbound, now = self.app.monitor.stream_inbound_time, time.monotonic()
        for m in messages:
            inbound[m.tp] = now
        batch = [_record(m) for m in messages]
        for topic, count in Counter(r.topic for r in batch if self.topics.is_raw(r.topic)).items():
            self.metrics.input(topic, count)  # raw input only: internal hops are not new messages
        async with self._writing[table.name]:
            computing = time.perf_counter()
            result = process(self.topics, batch, store.get)
            if swept is not None:
                self.advance_watermarks(swept, result.watermarks_us, retention.wall_clock_us())
            # Outputs, and the records the state will refer to, acknowledged together; then the
            # state (streams.replay explains the order); then what it no longer refers to.
            publishing = time.perf_counter()
            await self._store(table, store, result.writes_before, outputs=result.outputs)
            storing = time.perf_counter()
            await self._store(table, store, result.writes)
            await self._store(table, store, {k: (p, None) for k, p in result.deletes_after.items()})
            stored = time.perf_counter()
        for m in messages:
            ledger.finish(m.tp, m.offset)
        self.metrics.batch_phases(
            name, publishing - computing, storing - publishing, stored - storing
        )
        self._report(result, started, batch)

    async def _store(
        self,
        table: Table,
        store: LocalStore,
        writes: Mapping[bytes, Change],
        outputs: Sequence[Out] = (),
    ) -> None:
        """Write state (None: delete): its changelog records, acknowledged, then the local store.
        `outputs` go in the same round trip, acknowledged with them.

        Faust's `table[key] = value` only queues the changelog record in its producer buffer, and
        the flush Faust runs before a commit gives up after 0.1 s without progress: a commit
        could then cover input whose state exists only in this process, and a SIGKILL lost it.
        The batch counts as finished (and so committable, topology.commits) only after this.

        The local store comes second: a restart keeps its RocksDB directory and reads only the
        changelog records after its persisted offset, so a local write that a SIGKILL kept from
        its changelog would mark the batch's input as applied (streams.replay) in this worker
        alone, and state moved to another worker later would lack it."""
        if not writes and not outputs:
            return
        topic = table.changelog_topic.get_topic_name()
        written = await self._publish(
            [
                *outputs,
                *(Out(topic, key, value, [], partition) for key, (partition, value) in writes.items()),
            ]
        )
        if writes:
            store.write(writes)
            self._persisted(table, {lane: at for lane, at in written.items() if lane[0] == topic})

    def _persisted(self, table: Table, written: Mapping[Lane, int]) -> None:
        """Record, as Faust's own changelog callback does, the last changelog offset per partition
        that the local store holds: a kept RocksDB store resumes reading the changelog there."""
        topic = table.changelog_topic.get_topic_name()
        store: Any = table.data
        for (_, partition), offset in written.items():
            store.set_persisted_offset(faust.types.TP(topic, partition), offset)

    @property
    def consumer(self) -> WorkerConsumer:
        consumer = self.app.consumer
        assert isinstance(consumer, WorkerConsumer)  # configure_fetch_wait installed it
        return consumer

    def ready(self) -> bool:
        """Assigned partitions and recovered tables, not stopping: safe to route traffic and roll
        on, and for the sweep to write (it must not write after the stop's last commit). Asked
        from before the app starts (the health server listens first), when Faust has not made its
        recovery service yet: asking for it then would make it outside the app's start-up."""
        recovery = getattr(self.app.tables, "_recovery", None)
        return bool(
            recovery is not None
            and recovery.completed.is_set()
            and not self.app.rebalancing
            and not self.app.should_stop
        )

    # --- I/O --------------------------------------------------------------------------------------

    async def _publish(self, outputs: list[Out]) -> dict[Lane, int]:
        """Send every record of a batch and wait until the broker has acknowledged all of them;
        the offset of the last record per partition."""
        if not outputs:
            return {}
        return await publish(self._kafka_producer, outputs, self._records_per_batch)

    @property
    def _kafka_producer(self) -> AIOKafkaProducer:
        producer = self.app.producer._producer  # type: ignore[attr-defined]  # Faust's aiokafka one
        assert producer is not None, "the app's producer is not started"
        return producer

    def _report(self, result: BatchResult, started: float, batch: Sequence[InRecord]) -> None:
        m = self.metrics
        if result.emitted:  # events left the worker: input timestamp → now, per message
            now = time.time()
            for record in batch:
                if record.timestamp_ms is not None:
                    m.end_to_end(record.timestamp_ms, now)
        for name, count in result.emitted.items():
            m.emitted(name, count)
        for source, why in result.dead_letters:
            m.dead_letter(why.code)
            log.warning(
                "dead letter %s[%d]@%d: %s",
                source.topic,
                source.partition,
                source.offset,
                why,
            )
        if result.unknown_deletes:
            m.unknown_delete(len(result.unknown_deletes))
            shown = ", ".join(
                f"{d.artifact_id.decode(errors='replace')} {d.why} "
                f"({d.source.topic}[{d.source.partition}]@{d.source.offset})"
                for d in result.unknown_deletes[:UNKNOWN_DELETES_SHOWN]
            )
            more = len(result.unknown_deletes) - UNKNOWN_DELETES_SHOWN
            log.info(
                "%d deletes of artifacts without a live membership, nothing emitted: %s%s",
                len(result.unknown_deletes),
                shown,
                f" and {more} more" if more > 0 else "",
            )
        if result.related_truncated:
            m.related_truncated(result.related_truncated)
        if result.replays_skipped:
            log.info("skipped %d replayed messages already applied", result.replays_skipped)
        m.processing(time.perf_counter() - started)

    async def rewind_stalled(self) -> None:
        """Records delivered to a step but never taken: read them again (topology.commits).

        In the background, one at a time: a seek waits for the fetch in flight (up to a second
        when idle), and a timer whose callback outlasts its interval logs a warning each time."""
        if self.ready() and (self._rewinding is None or self._rewinding.done()):
            self._rewinding = asyncio.ensure_future(self._rewind_stalled())

    async def _rewind_stalled(self) -> None:
        try:
            await self.consumer.rewind_stalled(STALL_S)
        except Exception:  # the next tick tries again; a seek can fail while a rebalance begins
            log.warning("re-reading stalled partitions failed", exc_info=True)

    async def report_readiness(self) -> None:
        """One INFO line when the worker becomes ready (as /readyz says) and when it stops being,
        among Faust's own start-up and rebalance lines."""
        ready = self.ready()
        if ready == self._reported_ready:
            return
        self._reported_ready = ready
        if ready:
            assigned = self.consumer.assignment()
            inputs = [tp for tp in assigned if tp.topic in self.consumer.intakes]
            tables = {tp for tp in assigned if tp.topic in self.changelog_topics}
            log.info(
                "ready: tables recovered, reading %d input partitions of %d topics, keeping %d "
                "table partitions (%d as standbys)",
                len(inputs),
                len({tp.topic for tp in inputs}),
                len(tables),
                len(tables & self.consumer.standby_partitions()),
            )
        else:
            why = "stopping" if self.app.should_stop else "partitions are moving or tables recovering"
            log.info("not ready: %s", why)

    async def measure_lag(self) -> None:
        """Lag of every partition held, from the log end to the next offset not yet processed:
        measured on a timer, not per batch, so that a partition whose batches stopped shows its
        lag growing, and one moved to another worker is no longer reported here."""
        consumer = self.consumer
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.ledger.positions():
            highwater, processed = consumer.highwater(tp), consumer.ledger.committable(tp)
            if highwater is not None and processed is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - processed)
        self.metrics.consumer_lags(lags)

    async def measure_tables(self) -> None:
        """Keys per table: exact for memory://, RocksDB's own estimate for rocksdb:// (no scan)."""
        for name, table in (
            ("artifact-memberships", self.memberships),
            ("artifact-collections", self.collections),
            ("flow-run-lineage", self.lineage),
        ):
            self.metrics.table_keys(name, table_keys(table))

    def advance_watermarks(self, swept: str, batch: Mapping[int, int], now_us: int) -> None:
        """Take a batch's newest event time per partition into that partition's watermark."""
        watermarks, lateness = self.watermarks[swept], self.settings.allowed_lateness_us
        for partition, newest in batch.items():
            watermarks[partition] = retention.advance(watermarks.get(partition, 0), newest, now_us, lateness)

    async def sweep(self) -> None:
        """Retention by event time: forget flow runs silent for longer than it (plus the allowed
        lateness), and tombstones of artifacts deleted longer than that ago, so neither table
        grows without bound; each partition's keys by that partition's watermark.

        Only the partitions this worker holds, and not while tables recover, partitions move or
        the worker stops:
        a partly recovered store could hold an expired value of a key whose newer one is still to
        come, and a tombstone for a partition another worker owns would land in its changelog
        after that worker's own records. A revocation waits for a sweep that has begun writing
        (WorkerConsumer.writing), as for a batch in flight.

        Everything the table's step has applied is committed first: a crash after the sweep then
        replays only messages that came after it, and saw the swept table the first time too, so
        a replay computes what the first pass did (README, "What a replay does")."""
        s = self.settings
        for name, table, expired in (
            ("flow runs", self.lineage, steps.expired_flow_runs),
            ("deleted artifacts", self.memberships, steps.expired_tombstones),
        ):
            async with self._writing[table.name]:
                if not self.ready():
                    return
                if not await self.consumer.commit_finished(self._swept_by[name]):
                    log.info("retention: %s not swept this minute: the commit before it did not take", name)
                    continue
                if not self.ready():  # partitions began moving during the commit
                    return
                with self.consumer.writing():
                    keys = expired(
                        _items_of(table),
                        self.watermarks[name],
                        s.partitions,
                        s.lineage_retention_us,
                        s.allowed_lateness_us,
                    )
                    forgotten: dict[bytes, Change] = {
                        key: (partition_for(key, self.settings.partitions), None) for key in keys
                    }
                    await self._store(table, LocalStore(table), forgotten)
            if keys:
                log.info("retention: forgot %d %s", len(keys), name)

    def _forget_watermarks(self, *_: Any, **__: Any) -> None:
        """Faust's on_partitions_revoked signal. aiokafka revokes a worker's whole assignment at
        every rebalance: each partition starts again from no watermark, so the sweep touches only
        partitions whose batches ran since (ones this worker holds), later, never wrongly. A
        memory:// store keeps a revoked partition's keys; they have no watermark here now."""
        for watermarks in self.watermarks.values():
            watermarks.clear()


async def _finish_or_exit(name: str, batch: asyncio.Future[None]) -> None:
    try:
        await batch
    except Exception:
        _exit_for_replay(name)


def _exit_for_replay(name: str) -> None:
    """A batch failed and its partitions cannot move past it."""
    exit_for_replay("%s: batch failed", name, traceback=True)


def _items_of(table: Table) -> Callable[[], list[tuple[bytes, bytes]]]:
    return lambda: list(table.data.items())


def table_dir(settings: Settings) -> Path:
    """Where the tables' RocksDB stores live: one directory per `app_id` under `data_dir`, as each
    app_id has changelog topics of its own, so that a new `app_id` starts with new tables. Faust's
    default, `<data_dir>/v1/tables`, names its files by table alone: a store kept from another
    app_id is ahead of the new changelog it is recovered from (Faust's ConsistencyError). Absolute:
    Faust would put a relative one under `<data_dir>/v1` again."""
    return Path(settings.data_dir, "v1", f"tables-{settings.app_id}").absolute()


def table_keys(table: Any) -> int:
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:
        return len(store)
    return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in dbs.values())


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Memory of one RocksDB store (one per table partition). Faust's defaults are sized for a
    machine of its own: 64 MB write buffers, up to 3 of them, and a 2 GB block cache, per store;
    with 3 tables x 4 partitions a worker's RSS grew with its keys to over 500 MB at 312k keys.
    The settings' defaults (4 MB buffers, an 8 MB cache) held 1M collections in 332 MB."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 2**20,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * 2**20,
    }


def _record(m: Any) -> InRecord:
    timestamp_ms = None if m.timestamp is None else int(m.timestamp * 1000)
    return InRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), timestamp_ms)
