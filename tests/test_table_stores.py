"""The worker's memory and tables: RocksDB stores sized by the settings, not by Faust's
2 GB-per-store defaults, read and written by partition (topology.store); glibc's arenas capped;
Python's cyclic collector run less often."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.types import TP

from topology import config, kept_state, runner
from topology.app import TopicNames, Worker
from topology.records import Out, partition_for
from topology.runner import limit_malloc_arenas, tune_gc
from topology.steps import Stamped
from topology.store import LocalStore


def test_every_table_store_gets_the_configured_memory(tmp_path: Path) -> None:
    settings = config.load(
        {
            "store": "rocksdb://",
            "data_dir": str(tmp_path),
            "rocksdb_write_buffer_mb": 16,
            "rocksdb_block_cache_mb": 32,
        },
        environ={},
    )
    worker = Worker(settings)

    for table in (worker.memberships, worker.collections, worker.lineage):
        options = table.data.rocksdb_options  # type: ignore[attr-defined]
        assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (
            16 * 2**20,
            2,
            32 * 2**20,
        )


def test_defaults_bound_a_store_to_tens_of_megabytes() -> None:
    settings = config.load(environ={})
    assert (settings.rocksdb_write_buffer_mb, settings.rocksdb_block_cache_mb) == (4, 8)


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_the_steps_read_what_they_wrote_per_partition_and_faust_reads_it_too(
    tmp_path: Path, store: str
) -> None:
    settings = config.load({"store": store, "data_dir": str(tmp_path)}, environ={})
    table = Worker(settings).collections
    local = LocalStore(table)

    local.write({b"a": (0, b"1"), b"b": (3, b"2"), b"gone": (3, b"3")})
    local.write({b"b": (3, b"22"), b"gone": (3, None), b"never": (1, None)})

    assert [local.get(key, partition) for key, partition in ((b"a", 0), (b"b", 3), (b"gone", 3))] == [
        b"1",
        b"22",
        None,
    ]
    # Faust's own look-up (no current event: it searches every partition's database) sees the
    # same state.
    assert [table.data.get(key) for key in (b"a", b"b", b"gone", b"never")] == [b"1", b"22", None, None]


def test_rocksdb_keeps_each_key_in_its_partitions_database(tmp_path: Path) -> None:
    settings = config.load({"store": "rocksdb://", "data_dir": str(tmp_path)}, environ={})
    table = Worker(settings).collections
    local = LocalStore(table)

    local.write({b"a": (0, b"1"), b"b": (3, b"2")})

    databases: Any = table.data._dbs  # type: ignore[attr-defined]
    assert {partition: dict(db.items()) for partition, db in databases.items()} == {
        0: {b"a": b"1"},
        3: {b"b": b"2"},
    }
    assert local.get(b"a", 3) is None  # a key is looked up in its own partition only


def test_the_retention_sweep_forgets_expired_keys_locally_and_in_the_changelog(tmp_path: Path) -> None:
    """Worker.sweep's own part: the expired keys deleted from the store and handed on as
    changelog deletions in their partitions (publishing is the broker tests' business); each
    partition's keys by that partition's watermark."""
    settings = config.load(
        {"store": "memory://", "lineage_retention_days": 7, "allowed_lateness_hours": 24}, environ={}
    )
    worker = Worker(settings)
    day_us = 86_400_000_000
    silent = Stamped({}, {"last_seen_us": 1 * day_us, "passes_on": {}}).dump()
    recent = Stamped({}, {"last_seen_us": 5 * day_us, "passes_on": {}}).dump()
    # As old as `silent`, in a partition whose event time is behind (a backlog): kept.
    lagging_key = next(k for k in (b"lagging-%d" % i for i in range(100)) if partition_for(k, 4) == 0)
    assert partition_for(b"silent", 4) != 0
    LocalStore(worker.lineage).write(
        {b"silent": (partition_for(b"silent", 4), silent), b"recent": (0, recent), lagging_key: (0, silent)}
    )
    worker.watermarks["flow runs"] = {partition_for(b"silent", 4): 9 * day_us + 1, 0: 9 * day_us}
    changelog: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    async def publish(outputs: Any) -> dict[tuple[str, int], int]:
        changelog.extend((o.topic, o.key, o.value, o.partition) for o in outputs)
        return {}

    worker._publish = publish  # type: ignore[method-assign]
    asyncio.run(worker.sweep())  # not ready (tables not recovered): nothing is touched
    assert dict(worker.lineage.data.items()) == {b"silent": silent, b"recent": recent, lagging_key: silent}
    assert changelog == []

    worker.ready = lambda: True  # type: ignore[method-assign]
    asyncio.run(worker.sweep())

    assert dict(worker.lineage.data.items()) == {b"recent": recent, lagging_key: silent}
    topic = worker.lineage.changelog_topic.get_topic_name()
    assert changelog == [(topic, b"silent", None, partition_for(b"silent", 4))]


def _sweeping_worker(commit_takes: bool) -> tuple[Worker, list[str]]:
    """A worker whose lineage step has applied offset 5 of a raw task-result partition, not yet
    committed, and holds one flow run due for the sweep; what happens is recorded in order."""
    settings = config.load(
        {"store": "memory://", "lineage_retention_days": 7, "allowed_lateness_hours": 24}, environ={}
    )
    worker = Worker(settings)
    day_us = 86_400_000_000
    silent = Stamped({}, {"last_seen_us": 1 * day_us, "passes_on": {}}).dump()
    LocalStore(worker.lineage).write({b"silent": (partition_for(b"silent", 4), silent)})
    worker.watermarks["flow runs"] = {partition_for(b"silent", 4): 10 * day_us}
    consumer = worker.consumer
    applied = TP(worker.topics.raw_task_results, 1)
    consumer.ledger.assign(applied)
    consumer.ledger.position(applied, 5)
    assert consumer.ledger.admit(applied, 5)
    consumer.ledger.finish(applied, 5)
    happened: list[str] = []

    async def broker_commit(offsets: dict[TP, int]) -> bool:
        """The consumer thread's commit: False as after aiokafka's CommitFailedError "already
        rebalanced", which Faust's own bookkeeping records as committed all the same."""
        happened.append(f"commit {sorted(offsets.items())}")
        return commit_takes

    async def flushed() -> None:
        pass

    async def publish(outputs: Any) -> dict[tuple[str, int], int]:
        happened.extend(f"sweep {o.key!r}" for o in outputs)
        return {}

    consumer._thread.commit = broker_commit  # type: ignore[method-assign]
    consumer.assignment = lambda: {applied}  # type: ignore[method-assign]
    worker.app.producer.flush = flushed  # type: ignore[method-assign]
    worker._publish = publish  # type: ignore[method-assign]
    worker.ready = lambda: True  # type: ignore[method-assign]
    return worker, happened


def test_the_sweep_commits_what_its_table_has_applied_before_it_forgets_anything() -> None:
    """A crash after the sweep then replays only messages that came after it and saw the swept
    table the first time too: a replay of one applied before it could meet state it removed."""
    worker, happened = _sweeping_worker(commit_takes=True)
    asyncio.run(worker.sweep())
    applied = TP(worker.topics.raw_task_results, 1)
    assert happened == [f"commit {[(applied, 6)]}", "sweep b'silent'"]
    assert dict(worker.lineage.data.items()) == {}


def test_the_sweep_forgets_nothing_when_the_commit_before_it_does_not_take() -> None:
    worker, happened = _sweeping_worker(commit_takes=False)
    asyncio.run(worker.sweep())
    applied = TP(worker.topics.raw_task_results, 1)
    # The lineage sweep's, then the tombstones' (nothing of their step is uncommitted, and the
    # commit that failed is tried again: Faust's own bookkeeping took it as done).
    assert happened == [f"commit {[(applied, 6)]}"] * 2
    assert list(worker.lineage.data.keys()) == [b"silent"]


def test_a_partitions_watermark_takes_each_batch_capped_at_the_wall_clock_and_the_lateness() -> None:
    """A message dated decades ahead moves its partition's watermark to now + the allowed lateness
    at most; other partitions and the other swept table keep theirs."""
    worker = Worker(config.load({"store": "memory://", "allowed_lateness_hours": 2}, environ={}))
    hour_us, now_us = 3_600_000_000, 1_767_225_600_000_000  # 2026-01-01
    worker.advance_watermarks("flow runs", {0: now_us - hour_us, 1: now_us}, now_us)
    worker.advance_watermarks("flow runs", {0: now_us - 2 * hour_us, 3: 4_070_908_800_000_000}, now_us)
    assert worker.watermarks == {
        "flow runs": {0: now_us - hour_us, 1: now_us, 3: now_us + 2 * hour_us},
        "deleted artifacts": {},
    }


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_the_worker_caps_glibcs_malloc_arenas_unless_the_environment_says_otherwise() -> None:
    assert limit_malloc_arenas(environ={}) is True
    assert limit_malloc_arenas(environ={"MALLOC_ARENA_MAX": "8"}) is False


def test_the_worker_collects_cyclic_garbage_every_50000_allocations_unless_told_otherwise() -> None:
    python_default = gc.get_threshold()
    try:
        assert tune_gc(config.load({}, environ={}).gc_gen0_threshold) == (50_000, 20, 100)
        gc.set_threshold(*python_default)
        assert tune_gc(config.load({"gc_gen0_threshold": "0"}, environ={}).gc_gen0_threshold) == (
            python_default
        )
    finally:
        gc.set_threshold(*python_default)


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
async def test_local_state_follows_its_acknowledged_changelog(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart keeps its RocksDB directory and reads only the changelog after its persisted
    offset: a local write a SIGKILL kept from its changelog would mark input as applied in this
    worker alone. So nothing is written locally until the changelog records are acknowledged,
    and the persisted offset is the acknowledged one."""
    settings = config.load({"store": store, "data_dir": str(tmp_path)}, environ={})
    worker = Worker(settings)
    table = worker.collections
    local = LocalStore(table)
    topic = table.changelog_topic.get_topic_name()
    partition = partition_for(b"k", settings.partitions)
    held_while_in_flight: list[bytes | None] = []

    async def killed_before_the_ack(outputs: Any) -> dict[tuple[str, int], int]:
        held_while_in_flight.append(local.get(b"k", partition))
        raise ConnectionError("SIGKILL before the broker answered")

    monkeypatch.setattr(worker, "_publish", killed_before_the_ack)
    with pytest.raises(ConnectionError):
        await worker._store(table, local, {b"k": (partition, b"v1")})
    assert held_while_in_flight == [None] and local.get(b"k", partition) is None

    async def acknowledged(outputs: Any) -> dict[tuple[str, int], int]:
        held_while_in_flight.append(local.get(b"k", partition))
        return {(topic, partition): 41}

    monkeypatch.setattr(worker, "_publish", acknowledged)
    await worker._store(table, local, {b"k": (partition, b"v1")})
    assert held_while_in_flight == [None, None] and local.get(b"k", partition) == b"v1"
    if store == "rocksdb://":
        tp = faust.types.TP(topic, partition)
        assert table.data.persisted_offset(tp) == 41  # type: ignore[attr-defined]


async def test_outputs_share_a_round_trip_with_the_records_the_state_will_refer_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's events and its collection pages and versions go out in one publish (either may
    land first: only the collection record decides what a replay skips, streams.replay); only
    the changelog's acknowledged offsets are kept as the store's persisted offsets."""
    settings = config.load({"store": "rocksdb://", "data_dir": str(tmp_path)}, environ={})
    worker = Worker(settings)
    table = worker.collections
    local = LocalStore(table)
    changelog = table.changelog_topic.get_topic_name()
    events = settings.artifact_events_topic
    partition = partition_for(b"page", settings.partitions)
    published: list[list[tuple[str, bytes | None]]] = []

    async def acknowledged(outputs: Any) -> dict[tuple[str, int], int]:
        published.append([(o.topic, o.key) for o in outputs])
        return {(changelog, partition): 41, (events, partition): 7}  # same partition number

    monkeypatch.setattr(worker, "_publish", acknowledged)
    event = Out(events, b"event-key", b"{}", [])
    await worker._store(table, local, {b"page": (partition, b"p")}, outputs=[event])

    assert published == [[(events, b"event-key"), (changelog, b"page")]]
    assert local.get(b"page", partition) == b"p"
    tp = faust.types.TP(changelog, partition)
    assert table.data.persisted_offset(tp) == 41  # type: ignore[attr-defined]

    await worker._store(table, local, {}, outputs=[event])  # a batch without pages: events alone
    assert published[-1] == [(events, b"event-key")]


def test_the_lag_is_measured_for_every_partition_held_batches_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker.measure_lag: the log end minus the next offset not yet processed, for each partition
    whose position is known, whether or not a batch came from it lately; a revoked partition (gone
    from the ledger) is no longer reported."""
    from types import SimpleNamespace

    from faust.types import TP

    from topology.commits import CommitLedger

    worker = Worker(config.load({"store": "memory://"}, environ={}))
    ledger: CommitLedger[TP] = CommitLedger()
    stuck, behind, unknown = TP("raw", 0), TP("raw", 1), TP("raw", 2)
    for tp, committed in ((stuck, 10), (behind, 3), (unknown, 7)):
        ledger.assign(tp)
        ledger.position(tp, committed)
    ledger.finish(behind, 3)  # processed and acknowledged: the next one to process is 4
    highwater = {stuck: 25, behind: 4, unknown: None}  # no fetch answered for partition 2 yet
    consumer = SimpleNamespace(ledger=ledger, highwater=highwater.__getitem__)
    monkeypatch.setattr(Worker, "consumer", property(lambda self: consumer))

    def lags() -> list[str]:
        text = worker.metrics.render()[0].decode()
        return [line for line in text.splitlines() if line.startswith("prefect_events_consumer_lag{")]

    asyncio.run(worker.measure_lag())
    assert lags() == [
        'prefect_events_consumer_lag{partition="0",topic="raw"} 15.0',
        'prefect_events_consumer_lag{partition="1",topic="raw"} 0.0',
    ]
    ledger.forget([stuck])  # revoked
    asyncio.run(worker.measure_lag())
    assert lags() == ['prefect_events_consumer_lag{partition="1",topic="raw"} 0.0']


def test_each_app_id_keeps_its_tables_in_a_directory_of_its_own(tmp_path: Path) -> None:
    """A new app_id has new changelogs; the same file names under one data_dir would hand it the
    other app's stores, ahead of its empty changelogs (README: "start with a new app_id")."""

    def store_path(app_id: str) -> Path:
        given = {"store": "rocksdb://", "data_dir": str(tmp_path), "app_id": app_id}
        settings = config.load(given, environ={})
        return Path(Worker(settings).collections.data.partition_path(1))  # type: ignore[attr-defined]

    assert store_path("appa") == tmp_path / "v1" / "tables-appa" / "artifact-collections-1.db"
    assert store_path("appb") == tmp_path / "v1" / "tables-appb" / "artifact-collections-1.db"


def _kept_store(tmp_path: Path, app_id: str, applied: dict[int, int]) -> config.Settings:
    """A RocksDB directory as a stopped worker leaves it: the collections table's stores, each
    with the last changelog offset it applied."""
    settings = config.load({"store": "rocksdb://", "data_dir": str(tmp_path), "app_id": app_id}, environ={})
    worker = Worker(settings)
    store: Any = worker.collections.data
    topic = worker.collections.changelog_topic.get_topic_name()
    LocalStore(worker.collections).write({b"key-%d" % p: (p, b"state") for p in applied})
    for partition, offset in applied.items():
        store.set_persisted_offset(faust.types.TP(topic, partition), offset)
    for db in store._dbs.values():
        db.close()
    return settings


def test_a_kept_store_ahead_of_its_changelog_is_named_with_its_offsets(tmp_path: Path) -> None:
    settings = _kept_store(tmp_path, "kept", {1: 7, 3: 0})
    table_dir = tmp_path / "v1" / "tables-kept"
    topic = "kept-artifact-collections-changelog"
    applied = kept_state.applied_offsets(table_dir, TopicNames(settings).changelogs(), 4)
    assert applied == {
        TopicPartition(topic, 1): (table_dir / "artifact-collections-1.db", 7),
        TopicPartition(topic, 3): (table_dir / "artifact-collections-3.db", 0),
    }
    # Offset 0 applied against an empty changelog is ahead too (Faust's own check lets it by).
    ends = {TopicPartition(topic, 1): 8, TopicPartition(topic, 3): 0}
    assert list(kept_state.ahead_of_changelog(applied, ends)) == [
        f"the kept table store {table_dir}/artifact-collections-3.db has applied {topic}[3] up to "
        "offset 0, but that changelog ends at offset 0"
    ]
    assert list(kept_state.ahead_of_changelog(applied, {**ends, TopicPartition(topic, 3): 1})) == []


def test_the_worker_refuses_a_kept_directory_written_against_other_changelogs(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    """New changelog topics (another broker, topics deleted and created again) against a kept
    directory: one line before the worker joins its group, not Faust's ConsistencyError."""
    app_id = f"kept-{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(_kept_store(tmp_path, app_id, {1: 7}), bootstrap_servers=bootstrap_servers)

    with pytest.raises(config.ConfigError) as refused:
        asyncio.run(runner.prepare(settings))

    table_dir = tmp_path / "v1" / f"tables-{app_id}"
    assert str(refused.value) == (
        f"data_dir: the kept table store {table_dir}/artifact-collections-1.db has applied "
        f"{app_id}-artifact-collections-changelog[1] up to offset 7, but that changelog ends at offset 0: "
        f"the directory was written against another broker or topics since deleted; remove {table_dir} "
        "(the tables are rebuilt from their changelogs) or use another data_dir"
    )
    shutil.rmtree(table_dir)
    asyncio.run(runner.prepare(settings))  # emptied: the tables come back from the changelogs


def test_a_relative_data_dir_keeps_the_tables_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default `./data`: Faust reads a relative table directory under its data directory."""
    monkeypatch.chdir(tmp_path)
    worker = Worker(config.load({"store": "rocksdb://", "data_dir": "data", "app_id": "rel"}, environ={}))
    worker.app._create_directories()
    path = Path(worker.collections.data.partition_path(1))  # type: ignore[attr-defined]
    assert path == tmp_path / "data" / "v1" / "tables-rel" / "artifact-collections-1.db"
    assert (tmp_path / "data" / "v1" / "tables-rel").is_dir()


def test_a_store_directory_rocksdb_cannot_open_is_left_to_faust(tmp_path: Path) -> None:
    """A kill during a store's first open leaves a directory without RocksDB's files: nothing was
    applied there, and Faust creates the store."""
    settings = _kept_store(tmp_path, "half", {1: 7})
    table_dir = tmp_path / "v1" / "tables-half"
    (table_dir / "artifact-collections-2.db").mkdir()
    applied = kept_state.applied_offsets(table_dir, TopicNames(settings).changelogs(), 4)
    topic = "half-artifact-collections-changelog"
    assert applied == {TopicPartition(topic, 1): (table_dir / "artifact-collections-1.db", 7)}


def test_stores_of_the_layout_before_app_id_directories_are_reported_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = config.load({"store": "rocksdb://", "data_dir": str(tmp_path), "app_id": "old"}, environ={})
    runner.warn_of_earlier_tables(settings)
    assert caplog.records == []  # nothing there

    (tmp_path / "v1" / "tables" / "artifact-collections-0.db").mkdir(parents=True)
    runner.warn_of_earlier_tables(settings)
    runner.warn_of_earlier_tables(dataclasses.replace(settings, store="memory://"))  # reads no store

    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}/v1/tables holds table stores named by table alone, from an earlier version: not "
        f"used. The tables live in {tmp_path}/v1/tables-old now (one directory per app_id) and are "
        "rebuilt from their changelogs; to keep the old stores instead, stop the worker and move "
        "them there if they are this app_id's"
    ]
