"""Publishing a batch's records: one producer batch per topic partition, one future per batch.

aiokafka's `send` costs a future, a partition look-up and an accumulator append per record, and
the worker produces 3-5 records per input (events, forwards, changelog records): a fifth of its
CPU went there. Here records are grouped by partition (order within a partition kept), appended
to `BatchBuilder`s (one C call each) and submitted with `send_batch`. The producer's batch size
still bounds a batch; `records_per_batch` can bound some topics' batches further (the embedded
broker needs one record per batch on the changelogs, and only there).

aiokafka's sender puts at most one batch per partition in a produce request and has one request
in flight per broker, so a partition's k batches take k round trips, one after the other. With
Kafka's usual 16 KB batches a step's 500 messages (~1 MB of events) spent most of its time
there; the default batch size (`producer_max_batch_bytes`, 1,000,000 bytes, under Kafka's
default `message.max.bytes` of 1,048,588) makes that one round trip per partition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from topology.records import Out, partition_for

Lane = tuple[str, int]  # (topic, partition)


async def publish(
    producer: AIOKafkaProducer,
    outputs: Sequence[Out],
    records_per_batch: Mapping[str, int] | None = None,
) -> dict[Lane, int]:
    """Send `outputs` and wait until the broker has acknowledged every one of them.

    A record without a partition goes where Kafka's default partitioner would put it (murmur2 of
    its key; a keyless one anywhere). A topic in `records_per_batch` gets batches of at most that
    many records. Returns the offset of the last record written to each partition (a changelog's
    persisted offset)."""
    lanes: dict[Lane, list[Out]] = {}
    partition_counts: dict[str, int] = {}
    for out in outputs:
        partition = out.partition
        if partition is None:
            count = partition_counts.get(out.topic)
            if count is None:
                count = partition_counts[out.topic] = len(await producer.partitions_for(out.topic))
            partition = random.randrange(count) if out.key is None else partition_for(out.key, count)
        records = lanes.get((out.topic, partition))
        if records is None:
            lanes[(out.topic, partition)] = [out]
        else:
            records.append(out)
    sent: list[tuple[Lane, int, asyncio.Future[Any]]] = []
    caps = records_per_batch or {}
    for (topic, partition), records in lanes.items():
        i, cap = 0, caps.get(topic, len(records))
        while i < len(records):  # as many batches as the producer's batch size needs
            batch, first = producer.create_batch(), i
            while i < len(records) and i - first < cap and _append(batch, records[i]):
                i += 1  # the first record always fits an empty batch
            batch.close()  # complete: no linger, it leaves with the next request
            future = await producer.send_batch(batch, topic, partition=partition)
            sent.append(((topic, partition), i - first, future))
    written = await asyncio.gather(*(future for _, _, future in sent))
    last: dict[Lane, int] = {}
    for (lane, count, _), metadata in zip(sent, written, strict=True):
        last[lane] = metadata.offset + count - 1
    return last


def _append(batch: Any, out: Out) -> bool:
    return (
        batch.append(key=out.key, value=out.value, timestamp=out.timestamp_ms, headers=out.headers)
        is not None
    )
