"""topology.publish: a batch's records reach the broker whole, in order per partition, where Kafka's
default partitioner would put them, and the returned offsets are the last ones written."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from topology import config
from topology.admin import TopicSpec, ensure_topics
from topology.publish import publish
from topology.records import Out

pytestmark = pytest.mark.broker
PARTITIONS = 3


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        records: list[Any] = []
        async with asyncio.timeout(15):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def published(
    bootstrap: str, outputs: list[Out], max_batch_size: int
) -> tuple[dict[Any, int], list[Any]]:
    last, _ = await published_in_batches(bootstrap, outputs, max_batch_size)
    return last, await read_all(bootstrap, outputs[0].topic, len(outputs))


@pytest.fixture
async def topic(bootstrap_servers: str) -> str:
    name = f"publish-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_servers, [TopicSpec(name, PARTITIONS, 1)])
    return name


@pytest.mark.parametrize("max_batch_size", [1, 300, 16384], ids=["one-per-batch", "small", "default"])
async def test_every_record_arrives_in_order_per_partition(
    bootstrap_servers: str, topic: str, max_batch_size: int
) -> None:
    outputs = [
        Out(
            topic,
            f"key-{i % 7}".encode(),
            f"value-{i}".encode(),
            [("n", str(i).encode())],
            None,
            1_700_000_000_000 + i,
        )
        for i in range(60)
    ]
    last, records = await published(bootstrap_servers, outputs, max_batch_size)

    expected: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]] = defaultdict(list)
    partitioner = DefaultPartitioner()
    for o in outputs:
        assert o.key is not None and o.value is not None and o.timestamp_ms is not None
        expected[partitioner(o.key, list(range(PARTITIONS)), list(range(PARTITIONS)))].append(
            (o.key, o.value, o.headers, o.timestamp_ms)
        )
    got: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        got[r.partition].append((r.key, r.value, list(r.headers), r.timestamp))
    assert got == expected
    assert last == {(topic, p): len(values) - 1 for p, values in expected.items()}


async def test_explicit_partitions_are_kept(bootstrap_servers: str, topic: str) -> None:
    outputs = [Out(topic, b"k", b"first", [], 2), Out(topic, b"k", b"second", [], 2)]
    last, records = await published(bootstrap_servers, outputs, 16384)

    assert [(r.partition, r.offset, r.value) for r in records] == [(2, 0, b"first"), (2, 1, b"second")]
    assert last == {(topic, 2): 1}


async def test_a_keyless_record_goes_to_some_partition(bootstrap_servers: str, topic: str) -> None:
    last, records = await published(bootstrap_servers, [Out(topic, None, b"anywhere", [])], 16384)

    [record] = records
    assert (record.key, record.value, record.offset) == (None, b"anywhere", 0)
    assert last == {(topic, record.partition): 0}


async def test_nothing_to_publish_sends_nothing(bootstrap_servers: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        assert await publish(producer, []) == {}
    finally:
        await producer.stop()


async def published_in_batches(
    bootstrap: str, outputs: list[Out], max_batch_size: int, records_per_batch: dict[str, int] | None = None
) -> tuple[dict[Any, int], list[tuple[str, int, int]]]:
    """`publish` with the producer's batches counted: (topic, partition, records) each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=max_batch_size, acks=-1)
    await producer.start()
    batches: list[tuple[str, int, int]] = []
    send_batch = producer.send_batch

    async def counted(batch: Any, topic: str, *, partition: int) -> Any:
        batches.append((topic, partition, batch.record_count()))
        return await send_batch(batch, topic, partition=partition)

    try:
        producer.send_batch = counted  # type: ignore[method-assign]
        last = await publish(producer, outputs, records_per_batch)
    finally:
        await producer.stop()
    return last, batches


async def test_a_steps_batch_leaves_in_one_batch_per_partition_by_default(
    bootstrap_servers: str, topic: str
) -> None:
    """aiokafka's sender takes one batch per partition into a request and keeps one request in
    flight per broker, so a partition's k batches cost k round trips in a row. With the default
    batch size, a step's batch of 500 events of ~2 KB is one batch per partition."""
    default = config.load({}, environ={}).producer_max_batch_bytes
    outputs = [Out(topic, f"key-{i}".encode(), b"x" * 2000, []) for i in range(500)]
    last, batches = await published_in_batches(bootstrap_servers, outputs, default)
    assert sorted(partition for _, partition, _ in batches) == list(range(PARTITIONS))
    assert sum(offset + 1 for offset in last.values()) == len(outputs)


async def test_a_topic_can_be_held_to_fewer_records_a_batch(bootstrap_servers: str, topic: str) -> None:
    """The embedded broker's changelogs get one record per batch (its end offsets are right only
    after such a batch); the events published with them keep the producer's full batches."""
    other = f"{topic}-other"
    await ensure_topics(bootstrap_servers, [TopicSpec(other, PARTITIONS, 1)])
    capped = [Out(topic, f"key-{i}".encode(), b"state", [], i % PARTITIONS) for i in range(9)]
    free = [Out(other, f"key-{i}".encode(), b"event", [], i % PARTITIONS) for i in range(9)]
    last, batches = await published_in_batches(bootstrap_servers, [*capped, *free], 16384, {topic: 1})
    assert sorted(batches) == sorted(
        [(topic, p, 1) for p in range(PARTITIONS) for _ in range(3)]
        + [(other, p, 3) for p in range(PARTITIONS)]
    )
    assert last == {(t, p): 2 for t in (topic, other) for p in range(PARTITIONS)}
    records = await read_all(bootstrap_servers, topic, len(capped))
    assert sorted((r.partition, r.offset, r.key) for r in records) == sorted(
        (i % PARTITIONS, i // PARTITIONS, f"key-{i}".encode()) for i in range(9)
    )
