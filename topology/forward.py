"""The Prefect server sink: deliver the output topics' events to a Prefect 3 server.

Prefect's own clients stream events one per websocket message to `/api/events/in` and learn
nothing back except that the socket is still open; a bad event makes the server close the socket
without saying which one it was. The server also has `POST /api/events`, which takes a JSON list
of events in one request and answers 204 once they are published, or 422 with the index of every
invalid event. That gives a per-batch acknowledgement (offsets are committed only after it) and
per-event rejection reasons, so this sink uses it. The server deduplicates by event id, so
at-least-once delivery (a crash between POST and commit, a replay from offset 0) is harmless.

Events are forwarded unchanged: the request body is the records' own bytes joined into a JSON
list; each value is parsed only to find its id for deduplication and log lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from yarl import URL

from streams.envelope import MAX_EVENT_BYTES, prefect_size, too_large
from streams.errors import Invalid
from topology.admin import wait_for_broker
from topology.config import Settings
from topology.records import Source, dead_letter
from topology.stopping import unless_stopped

if TYPE_CHECKING:
    from topology.metrics import Metrics

log = logging.getLogger(__name__)

# 4xx that say "this configuration is wrong", not "this event is wrong": nothing to dead-letter.
# Not 403: a WAF in front of Prefect may refuse one event's body with it; it is judged like a
# 400 (the server taking an empty list blames the event, refusing it too stops the sink).
_FATAL_STATUSES = frozenset({401, 404, 405, 407})
# 4xx that are worth retrying like a 5xx.
_RETRY_STATUSES = frozenset({408, 425, 429})
# 4xx that an event itself causes: invalid (422) or too large (413).
_EVENT_STATUSES = frozenset({413, 422})
_NOT_JUDGED = _FATAL_STATUSES | _RETRY_STATUSES
# A Retry-After longer than this is not waited out in one go (the server is asked again).
MAX_RETRY_AFTER_S = 600.0


class ForwardError(RuntimeError):
    """The Prefect server refuses every request (bad URL or credentials): stop, commit nothing."""


def events_url(api_url: str) -> str:
    """`{api_url}/events`, or ValueError naming what is wrong with `api_url`."""
    try:
        url = URL(api_url)
        port = url.port  # yarl raises ValueError for a port outside 0-65535
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{api_url!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{api_url!r} is not an http(s) URL with a host")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{api_url!r} has port {port}; ports are 1-65535")
    return api_url.rstrip("/") + "/events"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, each wait drawn between half and all of the step (equal jitter).

    The step doubles from `base` up to `cap`; the first `attempts` failed tries of a request are
    logged at INFO, later ones at WARNING. It never gives up: only `stop` ends the retries.
    """

    base: float = 0.2
    cap: float = 30.0
    attempts: int = 8

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 0)."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 62))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class _Item:
    """One output record on its way to the server."""

    record: Any  # aiokafka ConsumerRecord
    event_id: str
    name: str


@dataclass
class _Outcome:
    delivered: list[_Item] = field(default_factory=list)
    rejected: list[tuple[_Item, str, str]] = field(default_factory=list)  # item, code, reason


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    retry_after: float | None = None
    location: str | None = None


def auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """The Authorization header Prefect's HTTP client sends: basic auth string, else bearer key."""
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


class PrefectSink:
    """POSTs batches of raw event JSON to `{api_url}/events`, retrying until they are accepted.

    `deliver` returns only when every event was either accepted or permanently rejected, or when
    `stop` is set (then it returns None and the caller must not commit). Only Prefect's own
    answer, `204`, counts as accepted: redirects are not followed (a proxy's login page is not a
    delivery) and other 2xx stop the sink like a wrong URL does.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        *,
        retry: RetryPolicy | None = None,
        stop: asyncio.Event | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._session = session
        self.url = events_url(api_url)
        self._retry = retry or RetryPolicy()
        self._stop = stop or asyncio.Event()
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    async def deliver(self, items: Sequence[_Item]) -> _Outcome | None:
        return await self._deliver(items, endpoint_ok=False)

    async def _deliver(self, items: Sequence[_Item], *, endpoint_ok: bool) -> _Outcome | None:
        outcome = _Outcome()
        pending = list(items)
        while pending:
            answer = await self._post(_body(pending), len(pending))
            if answer is None:
                return None
            if answer.status == 204:
                outcome.delivered.extend(pending)
                return outcome
            if answer.status == 422:
                errors = _errors_by_index(answer.body, len(pending))
                if errors:
                    for index, reason in sorted(errors.items()):
                        outcome.rejected.append((pending[index], "rejected_by_server", reason))
                    pending = [it for i, it in enumerate(pending) if i not in errors]
                    continue
            if answer.status not in _EVENT_STATUSES and not endpoint_ok:
                # A 400 or 415 may come from a proxy that refuses every request: then every
                # event would be dead-lettered. An empty list is valid to Prefect; if the server
                # takes it, the events are to blame.
                if not await self._accepts_empty_list(answer):
                    return None
                endpoint_ok = True
            if len(pending) == 1:
                reason = f"HTTP {answer.status}: {_describe(answer.body)}"
                code = "event_too_large" if answer.status == 413 else "rejected_by_server"
                outcome.rejected.append((pending[0], code, reason))
                return outcome
            # A rejection not attributed to single events: halve until each one is judged alone.
            half = len(pending) // 2
            for part in (pending[:half], pending[half:]):
                sub = await self._deliver(part, endpoint_ok=endpoint_ok)
                if sub is None:
                    return None
                outcome.delivered.extend(sub.delivered)
                outcome.rejected.extend(sub.rejected)
            return outcome
        return outcome

    async def _accepts_empty_list(self, refused: _Answer) -> bool:
        """True when the server takes `[]`; ForwardError when it refuses that too; False if stopped."""
        answer = await self._post(b"[]", 0)
        if answer is None:
            return False
        if answer.status != 204:
            csrf = b"csrf" in answer.body.lower()
            raise ForwardError(
                f"Prefect server at {self.url} answered HTTP {refused.status} "
                f"({_describe(refused.body)}) and HTTP {answer.status} to an empty list of "
                "events: it refuses every request; check the API URL, proxy and credentials"
                + ("; Prefect's CSRF protection is on, which the sink does not support" if csrf else "")
            )
        return True

    async def _post(self, body: bytes, count: int) -> _Answer | None:
        """One request, retried on connection errors, timeouts, 5xx and 408/425/429.

        None when `stop` was set; an in-flight request is abandoned then (the caller commits
        nothing, and the server drops the re-sent events by id).
        """
        attempt = 0
        while not self._stop.is_set():
            try:
                answer = await self._unless_stopped(self._request(body))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                answer, problem = None, f"{type(exc).__name__}: {exc}"
            else:
                if answer is None:
                    return None
                status = answer.status
                if status == 204 or (400 <= status < 500 and status not in _NOT_JUDGED):
                    return answer
                if status < 500 and status not in _RETRY_STATUSES:
                    raise ForwardError(
                        f"Prefect server at {self.url} answered HTTP {status}"
                        + (f" redirecting to {answer.location}" if answer.location else "")
                        + f" ({_describe(answer.body)}) where Prefect answers 204: "
                        "check the API URL and credentials"
                    )
                problem = f"HTTP {status}: {_describe(answer.body)}"
            delay = self._retry.delay(attempt)
            if answer is not None and answer.retry_after is not None:
                delay = max(delay, min(answer.retry_after, MAX_RETRY_AFTER_S))
            attempt += 1
            level = logging.INFO if attempt <= self._retry.attempts else logging.WARNING
            log.log(
                level,
                "Prefect server POST %s failed (try %d, %d events): %s; retrying in %.1fs",
                self.url,
                attempt,
                count,
                problem,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
        return None

    async def _request(self, body: bytes) -> _Answer:
        timeout = request_timeout(self._session.timeout, len(body))
        async with self._session.post(
            self.url, data=body, headers=self._headers, allow_redirects=False, timeout=timeout
        ) as resp:
            return _Answer(
                resp.status,
                await resp.read(),
                _retry_after(resp.headers.get("Retry-After")),
                resp.headers.get("Location"),
            )

    async def _unless_stopped(self, request: Coroutine[Any, Any, _Answer]) -> _Answer | None:
        """The request's answer, or None as soon as `stop` is set (the request is cancelled)."""
        sending = await unless_stopped(request, self._stop)
        return None if sending is None else sending.result()


# The slowest upload a request is given time for, on top of the session's timeout: an 8 MB body
# gets 80 s more. With one timeout for every size, a slow link timed every large batch out and
# retried it unsplit, forever.
MIN_UPLOAD_BYTES_PER_S = 100_000


def request_timeout(base: aiohttp.ClientTimeout, body_bytes: int) -> aiohttp.ClientTimeout:
    """The session's timeout, its total stretched by the time the body takes at the slowest
    upload rate allowed for."""
    if base.total is None:
        return base
    return aiohttp.ClientTimeout(
        total=base.total + body_bytes / MIN_UPLOAD_BYTES_PER_S,
        connect=base.connect,
        sock_read=base.sock_read,
        sock_connect=base.sock_connect,
        ceil_threshold=base.ceil_threshold,
    )


def _body(items: Sequence[_Item]) -> bytes:
    return b"[" + b",".join(it.record.value for it in items) + b"]"


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _describe(body: bytes, limit: int = 500) -> str:
    """A one-line, bounded rendering of a response body for logs and dead-letter headers."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode(errors="replace")
    else:
        detail = None
        if isinstance(data, dict):
            detail = data.get("exception_detail") or data.get("detail")
        text = orjson.dumps(detail if detail is not None else data).decode()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _errors_by_index(body: bytes, count: int) -> dict[int, str]:
    """Map the events of a 422 to their validation errors (FastAPI: loc = ["body", index, ...])."""
    try:
        detail = orjson.loads(body).get("exception_detail")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    if not isinstance(detail, list):
        return {}
    errors: dict[int, list[str]] = {}
    for error in detail:
        loc = error.get("loc") if isinstance(error, dict) else None
        if not (isinstance(loc, list) and len(loc) >= 2 and loc[0] == "body"):
            return {}
        index = loc[1]
        if not isinstance(index, int) or not 0 <= index < count:
            return {}
        where = ".".join(str(part) for part in loc[2:]) or "event"
        errors.setdefault(index, []).append(f"{where}: {error.get('msg', 'invalid')}")
    return {i: "HTTP 422: " + "; ".join(msgs)[:1000] for i, msgs in errors.items()}


def _parse(record: Any) -> tuple[_Item | None, str, str]:
    """Read an output record just far enough to know its id; else why it cannot be sent."""
    value = record.value
    if not isinstance(value, bytes | bytearray):
        return None, "invalid_json", "record has no value"
    if prefect_size(len(value)) > MAX_EVENT_BYTES:  # the server would drop it with a 204
        return None, "event_too_large", f"event is {too_large(len(value))}"
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return None, "invalid_json", f"record value is not JSON: {exc}"
    if not isinstance(event, dict):
        return None, "wrong_type", "record value is not a JSON object"
    event_id, name = event.get("id"), event.get("event")
    if not isinstance(event_id, str) or not event_id:
        return None, "missing_field", "event has no string id"
    return _Item(record, event_id, name if isinstance(name, str) else "?"), "", ""


async def forward(
    settings: Settings,
    api_url: str,
    *,
    topics: Sequence[str] | None = None,
    group_id: str | None = None,
    batch_size: int = 200,
    stop: asyncio.Event | None = None,
    max_events: int | None = None,
    api_key: str | None = None,
    auth_string: str | None = None,
    retry: RetryPolicy | None = None,
    request_timeout: float = 30.0,
    max_batch_bytes: int = 8_000_000,
    metrics: Metrics | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    started: asyncio.Event | None = None,
) -> int:
    """Consume the output topics and deliver every event to a Prefect server; return how many.

    Runs until `stop` is set or `max_events` events were delivered. Offsets are committed only
    after a batch was accepted (or its rejected events were written to the dead-letter topic), so
    a crash re-sends at most one batch, which the server deduplicates by event id.
    `consumer_config` adds or overrides AIOKafkaConsumer arguments (security, group timeouts).
    `started` is set once the consumer and the producer have started (the forwarder's /readyz).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = stop or asyncio.Event()
    topics = list(topics or (settings.artifact_events_topic, settings.asset_events_topic))
    group = group_id or f"{settings.app_id}-forward"
    # Like the worker: wait for a broker that is still starting, else fail with one line; but
    # a SIGTERM meanwhile ends the wait (and the forwarder, having delivered nothing) at once.
    waited = await unless_stopped(
        wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s), stop
    )
    if waited is None:
        return 0
    waited.result()  # BrokerUnreachable when the time ran out
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        client_id=f"{settings.app_id}-forward",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        # A server outage keeps us retrying one batch without polling; do not leave the group.
        max_poll_interval_ms=24 * 3_600_000,
        **(consumer_config or {}),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-forward", acks="all"
    )
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    delivered = 0
    try:  # stop() is safe on a client whose start() failed or never ran
        await consumer.start()
        await producer.start()
        if started is not None:
            started.set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sink = PrefectSink(
                session,
                api_url,
                retry=retry,
                stop=stop,
                headers={
                    "User-Agent": "prefect-kafka-events forward",
                    **auth_headers(api_key, auth_string),
                },
            )
            log.info("forwarding %s to %s as group %s", ", ".join(topics), sink.url, group)
            while not stop.is_set() and (max_events is None or delivered < max_events):
                limit = batch_size if max_events is None else max_events - delivered
                limit = min(batch_size, limit)
                fetched = await consumer.getmany(timeout_ms=500, max_records=limit)
                records = [r for batch in fetched.values() for r in batch]
                if not records:
                    continue
                fetched_at = time.perf_counter()
                if metrics is not None:
                    metrics.forward_pending(time.monotonic())
                sent = await _forward_batch(
                    records, sink, producer, settings.dead_letter_topic, max_batch_bytes, metrics
                )
                if sent is None:
                    break  # stopped while retrying: leave the batch uncommitted
                await _commit(consumer, fetched)
                if metrics is not None:
                    metrics.forward_pending(None)
                delivered += sent
                log.debug(
                    "forwarded %d of %d records from %s in %.1f ms (total %d)",
                    sent,
                    len(records),
                    ",".join(sorted({r.topic for r in records})),
                    (time.perf_counter() - fetched_at) * 1000,
                    delivered,
                )
    finally:
        await producer.stop()
        await consumer.stop()
    return delivered


async def _forward_batch(
    records: Sequence[Any],
    sink: PrefectSink,
    producer: AIOKafkaProducer,
    dead_letter_topic: str,
    max_batch_bytes: int,
    metrics: Metrics | None,
) -> int | None:
    """Deliver one fetched batch; dead-letter what cannot be delivered. None when stopped."""
    items: list[_Item] = []
    rejected: list[tuple[Any, str, str, str]] = []  # record, event id, code, reason
    seen: set[str] = set()
    for record in records:
        item, code, reason = _parse(record)
        if item is None:
            rejected.append((record, "", code, reason))
        elif item.event_id not in seen:  # same id twice = the same event replayed
            seen.add(item.event_id)
            items.append(item)
    sent = 0
    for chunk in _chunks(items, max_batch_bytes):
        outcome = await sink.deliver(chunk)
        if outcome is None:
            return None
        sent += len(outcome.delivered)
        rejected.extend((it.record, it.event_id, code, why) for it, code, why in outcome.rejected)
    for record, event_id, code, reason in rejected:
        log.error(
            "event %s from %s[%d]@%d not delivered (%s): %s; sent to %s",
            event_id or "?",
            record.topic,
            record.partition,
            record.offset,
            code,
            reason,
            dead_letter_topic,
        )
        # The worker's dead letter (topology.records), keeping the record's other headers (its
        # event name).
        source = Source(record.topic, record.partition, record.offset, record.key)
        out = dead_letter(dead_letter_topic, record.key, record.value, source, Invalid(code, reason))
        own = {name for name, _ in out.headers}
        headers = [(k, v) for k, v in (record.headers or ()) if k not in own] + out.headers
        await producer.send_and_wait(out.topic, value=out.value, key=out.key, headers=headers)
        if metrics is not None:
            metrics.dead_letter(code)
    if metrics is not None and sent:
        metrics.forwarded(sent)
    return sent


def _chunks(items: Sequence[_Item], max_bytes: int) -> list[list[_Item]]:
    """Split a batch so that no request body is over `max_bytes` (one event is always allowed)."""
    chunks: list[list[_Item]] = []
    size = 0  # of the body so far: "[" + values joined by "," + "]"
    for item in items:
        length = len(item.record.value) + 1  # the value and its "," (or the closing "]")
        if chunks and size + length <= max_bytes:
            chunks[-1].append(item)
            size += length
        else:
            chunks.append([item])
            size = 1 + length
    return chunks


async def _commit(consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Any]]) -> None:
    offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items() if batch}
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        # Partitions moved to another member meanwhile: it re-sends from the last commit and the
        # server drops the duplicates by id. Nothing is lost.
        log.warning("offsets not committed (%s); those events will be delivered again", exc)
