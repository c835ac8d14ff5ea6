"""The worker's memory and tables: RocksDB stores sized by the settings, not by Faust's
2 GB-per-store defaults, read and written by partition (topology.store); glibc's arenas capped;
Python's cyclic collector run less often."""

from __future__ import annotations

import asyncio
import gc
import platform
from pathlib import Path
from typing import Any

import faust
import pytest

from topology import config
from topology.app import Worker
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
    worker._held_partitions = lambda topics: {0, 1, 2, 3}  # type: ignore[method-assign]
    asyncio.run(worker.sweep())

    assert dict(worker.lineage.data.items()) == {b"recent": recent, lagging_key: silent}
    topic = worker.lineage.changelog_topic.get_topic_name()
    assert changelog == [(topic, b"silent", None, partition_for(b"silent", 4))]


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
