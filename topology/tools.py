"""`produce` and `tail`: plain aiokafka clients for feeding and watching topics by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import exact_json
from topology.admin import wait_for_broker
from topology.config import Settings


def key_of(line: bytes, key_field: str | None) -> bytes | None:
    """The record key: the value at the first of the comma-separated dotted paths present in the
    JSON line (e.g. `artifact.id,artifact_id`), if asked for."""
    if key_field is None:
        return None
    try:
        message: Any = exact_json.read(line)
    except orjson.JSONDecodeError:
        return None  # not JSON: produce it unkeyed (bad input is worth testing)
    for path in key_field.split(","):
        value = message
        try:
            for part in path.strip().split("."):
                value = value[part]
        except (KeyError, TypeError, IndexError):
            continue
        if value is not None:
            return str(value).encode()
    return None


async def produce(
    settings: Settings,
    topic: str,
    lines: Iterable[bytes],
    key_field: str | None,
    interval_s: float = 0.0,
) -> int:
    """Publish each non-blank line; with `interval_s`, one at a time like a live producer."""
    await wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    count = 0
    try:
        pending = []
        for line in lines:
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            pending.append(await producer.send(topic, raw, key=key_of(raw, key_field)))
            count += 1
            if interval_s:
                await asyncio.gather(*pending)
                await asyncio.sleep(interval_s)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


async def tail(
    settings: Settings,
    topic: str,
    out: IO[str],
    from_beginning: bool,
    max_records: int | None,
    idle_timeout_s: float | None,
    meta: bool,
) -> int:
    """Print values (event JSON) one per line; with `meta`, wrap each with key/headers/offset."""
    await wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    count = 0
    last = time.monotonic()
    try:
        while max_records is None or count < max_records:
            batches = await consumer.getmany(timeout_ms=200)
            if not batches:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            last = time.monotonic()
            # One fetch holds several partitions' records: --max counts them all.
            for records in batches.values():
                for r in records if max_records is None else records[: max_records - count]:
                    out.write(_render(r, meta) + "\n")
                    count += 1
            out.flush()
    finally:
        await consumer.stop()
    return count


def _render(record: Any, meta: bool) -> str:
    value = record.value or b""
    if not meta:
        return value.decode("utf-8", "replace").replace("\n", "\\n")
    try:
        decoded: Any = exact_json.loads(value)
    except orjson.JSONDecodeError:
        decoded = value.decode("utf-8", "replace")
    return orjson.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if record.key is None else record.key.decode("utf-8", "replace"),
            "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers or ()},
            "value": decoded,
        }
    ).decode()
