"""The plain aiokafka clients the benchmark's own loops run on (the baseline, the records alone)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@contextlib.asynccontextmanager
async def clients(
    bs: str, tps: list[TopicPartition], *, fetch_wait_ms: int, producer: dict[str, Any]
) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaProducer]]:
    """A consumer of `tps` from their beginning (no group, no commits) and a producer configured
    by `producer`; both stopped on the way out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bs, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_wait_ms)
    prod = AIOKafkaProducer(bootstrap_servers=bs, **producer)
    await consumer.start()
    try:
        await prod.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            yield consumer, prod
        finally:
            await prod.stop()
    finally:
        await consumer.stop()
