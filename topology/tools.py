"""`produce` and `tail`: plain aiokafka clients for feeding and watching topics by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from streams import exact_json, messages
from topology.admin import RECORD_LIMIT_BYTES, topic_exists, wait_for_broker
from topology.config import ConfigError, Settings


def key_of(line: bytes, key_field: str | None) -> bytes | None:
    """The record key: the value at the first of the comma-separated dotted paths present in the
    JSON line (e.g. `artifact.id,artifact_id`), if asked for. A UUID is keyed lower-case, as the
    worker owns it: an upper-case one would hash to another partition and take the re-keying hop."""
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
            text = str(value)
            return (messages.lower_uuid(text) or text).encode()
    return None


class RecordsRefused(Exception):
    """Lines the producer or the broker refused as too large, each a one-line reason by its line
    number; the other lines were produced (`produced` of them)."""

    def __init__(self, reasons: list[str], produced: int) -> None:
        super().__init__(reasons[0])
        self.reasons, self.produced = reasons, produced


# Kafka's answers to a record (batch) over the topic's max.message.bytes.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


async def produce(
    settings: Settings,
    topic: str,
    lines: Iterable[bytes],
    key_field: str | None,
    interval_s: float = 0.0,
) -> int:
    """Publish each non-blank line; with `interval_s`, one at a time like a live producer.

    Records may be as large as those the worker writes (RECORD_LIMIT_BYTES); a line over that, or
    one the broker refuses as too large (the raw topics keep the broker's limit, 1 MB on Kafka),
    is skipped and the rest produced, then RecordsRefused names each by line number."""
    await wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_request_size=RECORD_LIMIT_BYTES,
    )
    await producer.start()
    count = 0
    refused: list[str] = []
    pending: list[tuple[int, int, asyncio.Future[Any]]] = []

    async def settle() -> None:
        nonlocal count
        results = await asyncio.gather(*(f for _, _, f in pending), return_exceptions=True)
        for (number, size, _), result in zip(pending, results, strict=True):
            if isinstance(result, _TOO_LARGE):
                refused.append(
                    f"line {number} ({size} bytes) was refused by the broker as too large "
                    f"({type(result).__name__}; the topic's max.message.bytes)"
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                count += 1
        pending.clear()

    try:
        for number, line in enumerate(lines, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                future = await producer.send(topic, raw, key=key_of(raw, key_field))
            except MessageSizeTooLargeError:
                refused.append(
                    f"line {number} ({len(raw)} bytes) is too large: a record may be "
                    f"{RECORD_LIMIT_BYTES} bytes with its key and framing"
                )
                continue
            pending.append((number, len(raw), future))
            if interval_s:
                await settle()
                await asyncio.sleep(interval_s)
        await settle()
    finally:
        await producer.stop()
    if refused:
        raise RecordsRefused(refused, count)
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
    """Print values (event JSON) one per line; with `meta`, wrap each with key/headers/offset.
    A topic the broker does not know is a ConfigError: subscribing would wait on it silently, or
    have the broker create it."""
    await wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
    if not await topic_exists(settings.bootstrap_servers, topic):
        raise ConfigError(f"--topic: no topic {topic!r} at {settings.bootstrap_servers}")
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
