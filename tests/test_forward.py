"""The Prefect server sink: against a real `prefect server start`, and against a scripted fake.

The real server shows that the events arrive unchanged and that a replay from offset 0 does not
duplicate them; the fake server shows retries, commit-after-accept and per-event rejections,
which a healthy real server cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prefect_validate import PrefectServer, prefect_server, require_prefect_venv, validate_events

from topology.config import Settings, namespaced
from topology.forward import (
    ForwardError,
    PrefectSink,
    RetryPolicy,
    _body,
    _chunks,
    _Item,
    _parse,
    _retry_after,
    events_url,
    forward,
)
from topology.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
FAST_RETRY = RetryPolicy(base=0.01, cap=0.05, attempts=3)
# Tansu answers a JoinGroup after half the session timeout (5 s by default); 6 s is Kafka's minimum.
FAST_JOIN = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


async def fast_forward(settings: Settings, api_url: str, **kwargs: Any) -> int:
    return await forward(settings, api_url, consumer_config=FAST_JOIN, **kwargs)


# --- building spec-conformant events (SPEC §3) by hand -------------------------------------------


def uuid7(occurred: dt.datetime) -> str:
    """UUIDv7 layout: 48-bit ms timestamp of `occurred`, version 7, variant 10, random rest."""
    raw = bytearray(int(occurred.timestamp() * 1000).to_bytes(6, "big") + secrets.token_bytes(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def event(
    occurred: dt.datetime,
    name: str,
    resource: dict[str, str],
    related: list[dict[str, str]],
    payload: dict[str, Any],
) -> dict[str, Any]:
    return {
        "occurred": occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": name,
        "resource": resource,
        "related": related,
        "payload": payload,
        "id": uuid7(occurred),
        "follows": None,
    }


def sample_events() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Artifact events and asset events of one made-up flow run, unique per call."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=123456) - dt.timedelta(seconds=30)
    tag = secrets.token_hex(4)
    flow_run = {
        "prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}",
        "prefect.resource.role": "flow-run",
        "prefect.resource.name": "brave-otter",
    }
    context = [
        flow_run,
        {
            "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": "etl",
        },
        {"prefect.resource.id": f"prefect.tag.t-{tag}", "prefect.resource.role": "tag"},
    ]
    artifact, key = str(uuid.uuid4()), f"report-{tag}"
    artifacts = [
        event(
            now,
            "prefect.artifact-collection.created",
            {
                "prefect.resource.id": f"prefect.artifact-collection.{uuid.uuid4()}",
                "prefect.resource.name": key,
            },
            [
                {"prefect.resource.id": f"prefect.artifact.{artifact}",
                 "prefect.resource.role": "latest"},
                {"prefect.resource.id": flow_run["prefect.resource.id"],
                 "prefect.resource.role": "flow-run"},
            ],
            {"key": key, "type": "markdown", "data": "# Report\nhello ✓", "description": None},
        ),
        event(
            now,
            "prefect.artifact.created",
            {"prefect.resource.id": f"prefect.artifact.{artifact}", "prefect.resource.name": key},
            context,
            {"key": key, "type": "markdown", "description": None},
        ),
        event(
            now + dt.timedelta(seconds=1),
            "prefect.artifact.updated",
            {"prefect.resource.id": f"prefect.artifact.{artifact}"},
            context,
            {"description": "now with a description", "data": {"rows": [1, 2, 3]}},
        ),
    ]  # fmt: skip
    upstream, downstream = f"s3://bucket-{tag}/raw.csv", f"s3://bucket-{tag}/clean.parquet"
    assets = [
        event(
            now + dt.timedelta(seconds=2),
            "prefect.asset.referenced",
            {"prefect.resource.id": upstream},
            context,
            {},
        ),
        event(
            now + dt.timedelta(seconds=2),
            "prefect.asset.materialization.succeeded",
            {
                "prefect.resource.id": downstream,
                "prefect.resource.name": "clean",
                "prefect.asset.description": "cleaned rows",
                "prefect.asset.owners": '["alice", "bob"]',
            },
            [
                {"prefect.resource.id": upstream, "prefect.resource.role": "asset"},
                {"prefect.resource.id": "dbt", "prefect.resource.role": "asset-materialized-by"},
                *context,
            ],
            {"row_count": 3, "ok": True},
        ),
    ]
    return artifacts, assets


# --- Kafka helpers --------------------------------------------------------------------------------


def settings_for(bootstrap_servers: str, partitions: int = 2) -> Settings:
    """Settings with topic names of their own, so tests sharing a broker never see each other."""
    return Settings(
        bootstrap_servers=bootstrap_servers,
        partitions=partitions,
        fetch_max_wait_ms=20,
        **namespaced(f"fwd-{secrets.token_hex(4)}"),
    )


async def create_topics(settings: Settings, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        topics = (
            settings.artifact_events_topic,
            settings.asset_events_topic,
            settings.dead_letter_topic,
        )
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()


async def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    """Write records the way the worker does: key = resource id, header prefect-event = name."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            try:
                data = orjson.loads(value)
                key = data["resource"]["prefect.resource.id"].encode()
                headers = [("prefect-event", data["event"].encode())]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                key, headers = b"junk", []
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def committed(settings: Settings, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(tp)
        return offset
    finally:
        await consumer.stop()


# --- Prefect server fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[PrefectServer]:
    """One Prefect server per session; its start time is printed, to keep an eye on it."""
    require_prefect_venv()
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(
                    f"prefect server {server.version}: ready in {server.startup_seconds:.1f}s"
                )
        yield server


async def server_events(api_url: str, ids: list[str], expect: int) -> list[dict[str, Any]]:
    """The server's copies of the events with these ids, once `expect` of them are persisted."""
    body = {
        "filter": {
            "id": {"id": ids},
            "occurred": {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"},
            "order": "ASC",
        },
        "limit": 50,
    }
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.post(f"{api_url}/events/filter", json=body) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            events = page["events"]
            assert page["next_page"] is None  # one page is enough here
            if len(events) >= expect:
                break
            await asyncio.sleep(0.1)
    return events


def assert_unchanged(sent: list[dict[str, Any]], stored: list[dict[str, Any]]) -> None:
    by_id = {e["id"]: e for e in stored}
    assert sorted(by_id) == sorted(e["id"] for e in sent)
    for original in sent:
        copy = by_id[original["id"]]
        assert set(copy) == set(original) | {"received"}
        assert dt.datetime.fromisoformat(copy["occurred"]) == dt.datetime.fromisoformat(original["occurred"])
        for key in ("event", "resource", "related", "payload", "id", "follows"):
            assert copy[key] == original[key], key
        assert list(copy["resource"]) == list(original["resource"])  # label order too


# --- against a real Prefect server ----------------------------------------------------------------


async def test_forward_delivers_unchanged_and_replay_is_deduplicated(
    prefect: PrefectServer, bootstrap_servers: str
) -> None:
    settings = settings_for(bootstrap_servers)
    await create_topics(settings, partitions=2)
    artifacts, assets = sample_events()
    sent = artifacts + assets
    assert validate_events(sent) == [[]] * len(sent)
    await produce(settings, settings.artifact_events_topic, [orjson.dumps(e) for e in artifacts])
    await produce(settings, settings.asset_events_topic, [orjson.dumps(e) for e in assets])
    ids = [e["id"] for e in sent]

    delivered = await asyncio.wait_for(
        fast_forward(settings, prefect.api_url, max_events=len(sent)), timeout=60
    )
    assert delivered == len(sent)
    stored = await server_events(prefect.api_url, ids, len(sent))
    assert_unchanged(sent, stored)

    replayed = await asyncio.wait_for(
        fast_forward(settings, prefect.api_url, group_id=f"{settings.app_id}-replay", max_events=len(sent)),
        timeout=60,
    )
    assert replayed == len(sent)  # accepted again...
    await asyncio.sleep(1.0)  # ...give the persister (0.1 s flushes) time to store any duplicate
    again = await server_events(prefect.api_url, ids, len(sent))
    assert len(again) == len(sent)  # ...but stored once
    assert_unchanged(sent, again)


async def test_forward_dead_letters_what_the_real_server_rejects(
    prefect: PrefectServer, bootstrap_servers: str
) -> None:
    settings = settings_for(bootstrap_servers, partitions=1)
    await create_topics(settings, partitions=1)
    artifacts, _ = sample_events()
    good1, good2 = artifacts[1], artifacts[2]
    bad = {**artifacts[0], "related": [{"prefect.resource.id": "prefect.flow-run.x"}]}  # no role
    values = [orjson.dumps(good1), orjson.dumps(bad), b"{not json", orjson.dumps(good2)]
    await produce(settings, settings.artifact_events_topic, values)

    delivered = await asyncio.wait_for(
        fast_forward(
            settings,
            prefect.api_url,
            max_events=2,
            topics=[settings.artifact_events_topic],
        ),
        timeout=60,
    )
    assert delivered == 2
    assert_unchanged([good1, good2], await server_events(prefect.api_url, [good1["id"], good2["id"]], 2))
    assert await server_events(prefect.api_url, [bad["id"]], 0) == []

    dead = await read_topic(settings, settings.dead_letter_topic, 2)
    assert [r.value for r in dead] == [values[1], values[2]]
    headers = [dict(r.headers) for r in dead]
    assert headers[0]["prefect-dead-letter-code"] == b"rejected_by_server"
    assert b"prefect.resource.role" in headers[0]["prefect-dead-letter-reason"]
    assert headers[0]["prefect-event"] == b"prefect.artifact-collection.created"
    assert headers[1]["prefect-dead-letter-code"] == b"invalid_json"
    assert [h["prefect-source-offset"] for h in headers] == [b"1", b"2"]
    assert {h["prefect-source-topic"] for h in headers} == {settings.artifact_events_topic.encode()}


async def test_the_real_server_takes_an_empty_list(prefect: PrefectServer) -> None:
    """The sink's check that a refusal is the events' fault, not the endpoint's, relies on this."""
    async with aiohttp.ClientSession() as session, session.post(
        f"{prefect.api_url}/events", data=b"[]", headers={"Content-Type": "application/json"}
    ) as resp:
        assert (resp.status, await resp.read()) == (204, b"")


def test_validate_events_with_prefects_own_model() -> None:
    artifacts, _ = sample_events()
    valid = artifacts[1]
    invalid = {**valid, "resource": {"prefect.resource.name": "no id"}, "id": "not-a-uuid"}
    results = validate_events([valid, invalid])
    assert results[0] == []
    assert any("prefect.resource.id" in e for e in results[1]), results[1]
    assert any(e.startswith("id:") for e in results[1]), results[1]


# --- against a scripted fake server ---------------------------------------------------------------


@dataclass
class FakePrefect:
    """`POST /api/events` answering from a script; records every request body it got."""

    responses: list[tuple[int, bytes]] = field(default_factory=list)
    default: tuple[int, bytes] = (204, b"")
    bodies: list[bytes] = field(default_factory=list)
    judge: Callable[[bytes], Awaitable[tuple[int, bytes] | web.Response]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    api_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        if self.judge is not None:
            judged = await self.judge(body)
            if isinstance(judged, web.Response):
                return judged
            status, text = judged
            return web.Response(status=status, body=text)
        status, body = self.responses.pop(0) if self.responses else self.default
        return web.Response(status=status, body=body, content_type="application/json", headers=self.headers)


@pytest.fixture
async def fake() -> AsyncIterator[FakePrefect]:
    fake = FakePrefect()
    app = web.Application()
    app.router.add_post("/api/events", fake.handle)
    app.router.add_route("*", "/login", _login_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.api_url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    yield fake
    await runner.cleanup()


async def _login_page(request: web.Request) -> web.Response:
    return web.Response(status=200, text="<html>please log in</html>", content_type="text/html")


def items(*events: dict[str, Any]) -> list[_Item]:
    return [_Item(SimpleNamespace(value=orjson.dumps(e)), e["id"], e["event"]) for e in events]


async def test_sink_retries_5xx_and_connection_errors_then_delivers(fake: FakePrefect) -> None:
    fake.responses = [(503, b'{"detail": "busy"}'), (500, b"oops"), (429, b"")]
    batch = items(*sample_events()[0])
    async with aiohttp.ClientSession() as session:
        outcome = await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(batch)
    assert outcome is not None
    assert outcome.delivered == batch and outcome.rejected == []
    assert len(fake.bodies) == 4
    assert fake.bodies[-1] == b"[" + b",".join(i.record.value for i in batch) + b"]"


async def test_sink_keeps_retrying_while_unreachable_until_stopped() -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sink = PrefectSink(session, f"http://127.0.0.1:{port}/api", retry=FAST_RETRY, stop=stop)
        task = asyncio.create_task(sink.deliver(items(sample_events()[0][0])))
        await asyncio.sleep(0.5)  # well past FAST_RETRY.attempts: still trying, not dropping
        assert not task.done()
        stop.set()
        assert await task is None


async def test_sink_dead_letters_only_the_events_a_422_names(fake: FakePrefect) -> None:
    events = sample_events()[0]
    detail = {
        "exception_message": "Invalid request received.",
        "exception_detail": [
            {"loc": ["body", 1, "resource"], "msg": "Value error, must include prefect.resource.id"}
        ],
    }
    fake.responses = [(422, orjson.dumps(detail))]
    batch = items(*events)
    async with aiohttp.ClientSession() as session:
        outcome = await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(batch)
    assert outcome is not None
    assert outcome.delivered == [batch[0], batch[2]]
    [(item, code, reason)] = outcome.rejected
    assert item is batch[1] and code == "rejected_by_server"
    assert reason == "HTTP 422: resource: Value error, must include prefect.resource.id"
    assert len(fake.bodies) == 2


async def test_sink_bisects_an_unattributed_4xx(fake: FakePrefect) -> None:
    events = sample_events()[0] + sample_events()[1]
    bad = events[3]["id"].encode()

    async def judge(body: bytes) -> tuple[int, bytes]:
        return (400, b"bad event") if bad in body else (204, b"")

    fake.judge = judge
    batch = items(*events)
    async with aiohttp.ClientSession() as session:
        outcome = await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(batch)
    assert outcome is not None
    assert outcome.rejected == [(batch[3], "rejected_by_server", "HTTP 400: bad event")]
    assert sorted(i.event_id for i in outcome.delivered) == sorted(
        e["id"] for i, e in enumerate(events) if i != 3
    )
    # 5 events: [0..4] 400, probe [] 204, [0,1] 204, [2,3,4] 400, [2] 204, [3,4] 400, [3] 400, [4] 204
    assert fake.bodies[1] == b"[]" and b"[]" not in fake.bodies[2:]
    assert len(fake.bodies) == 8


@pytest.mark.parametrize("status", [400, 403, 413, 415])  # 403: a WAF refusing one body
async def test_sink_dead_letters_a_lone_event_only_when_the_server_takes_an_empty_list(
    fake: FakePrefect, status: int
) -> None:
    async def judge(body: bytes) -> tuple[int, bytes]:
        return (204, b"") if body == b"[]" else (status, b"no")

    fake.judge = judge
    [item] = items(sample_events()[0][0])
    async with aiohttp.ClientSession() as session:
        outcome = await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver([item])
    assert outcome is not None and outcome.delivered == []
    code = "event_too_large" if status == 413 else "rejected_by_server"
    assert outcome.rejected == [(item, code, f"HTTP {status}: no")]
    # 413 is always the event's size; anything else is checked against an empty list first.
    assert fake.bodies[1:] == ([] if status == 413 else [b"[]"])


@pytest.mark.parametrize("status", [400, 403, 409, 415])
async def test_sink_stops_when_the_server_refuses_every_request_alike(fake: FakePrefect, status: int) -> None:
    fake.default = (status, b'{"detail": "blocked by proxy"}')
    batch = items(*sample_events()[0])
    async with aiohttp.ClientSession() as session:
        sink = PrefectSink(session, fake.api_url, retry=FAST_RETRY)
        with pytest.raises(ForwardError, match=f"HTTP {status} .*empty list"):
            await sink.deliver(batch)
    assert fake.bodies[1:] == [b"[]"]  # nothing dead-lettered, no halving


async def test_sink_names_prefects_csrf_protection_when_it_refuses_every_request(fake: FakePrefect) -> None:
    fake.default = (403, b'{"detail": "Missing CSRF token."}')  # PREFECT_SERVER_CSRF_PROTECTION_ENABLED
    async with aiohttp.ClientSession() as session:
        sink = PrefectSink(session, fake.api_url, retry=FAST_RETRY)
        with pytest.raises(ForwardError, match=r"CSRF protection is on, which the sink does not support$"):
            await sink.deliver(items(sample_events()[0][0]))


async def test_sink_does_not_follow_a_redirect(fake: FakePrefect) -> None:
    async def judge(body: bytes) -> web.Response:
        return web.Response(status=302, headers={"Location": "/login"})

    fake.judge = judge
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ForwardError, match="HTTP 302 redirecting to /login"):
            await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(items(sample_events()[0][0]))


@pytest.mark.parametrize("status", [200, 201, 202])
async def test_sink_takes_only_204_as_accepted(fake: FakePrefect, status: int) -> None:
    fake.default = (status, b"<html>welcome</html>")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ForwardError, match=f"HTTP {status} .*where Prefect answers 204"):
            await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(items(sample_events()[0][0]))


async def test_sink_waits_as_long_as_retry_after_asks(fake: FakePrefect) -> None:
    arrivals: list[float] = []

    async def judge(body: bytes) -> web.Response:
        arrivals.append(asyncio.get_running_loop().time())
        if len(arrivals) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=204)

    fake.judge = judge
    batch = items(sample_events()[0][0])
    async with aiohttp.ClientSession() as session:
        outcome = await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(batch)
    assert outcome is not None and outcome.delivered == batch
    assert arrivals[1] - arrivals[0] >= 0.95  # FAST_RETRY alone would wait at most 0.05 s


def test_retry_after_reads_seconds_and_http_dates() -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    assert _retry_after("7") == 7.0
    assert 100 < (_retry_after(email.utils.format_datetime(soon, usegmt=True)) or 0) <= 120
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no extra wait
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


async def test_stop_abandons_a_request_in_flight(fake: FakePrefect) -> None:
    release = asyncio.Event()

    async def judge(body: bytes) -> tuple[int, bytes]:
        await release.wait()  # a server that hangs until the test is over
        return 204, b""

    fake.judge = judge
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sink = PrefectSink(session, fake.api_url, retry=FAST_RETRY, stop=stop)
        task = asyncio.create_task(sink.deliver(items(sample_events()[0][0])))
        async with asyncio.timeout(10):
            while not fake.bodies:
                await asyncio.sleep(0.01)
        stop.set()
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(task, timeout=5) is None
    assert asyncio.get_running_loop().time() - started < 1.0
    release.set()


async def test_retries_log_at_info_then_warning(fake: FakePrefect, caplog: pytest.LogCaptureFixture) -> None:
    fake.responses = [(503, b"busy")] * (FAST_RETRY.attempts + 2)
    caplog.set_level(logging.INFO, logger="topology.forward")
    async with aiohttp.ClientSession() as session:
        sink = PrefectSink(session, fake.api_url, retry=FAST_RETRY)
        assert await sink.deliver(items(sample_events()[0][0]))
    levels = [r.levelname for r in caplog.records if "failed (try" in r.getMessage()]
    assert levels == ["INFO"] * FAST_RETRY.attempts + ["WARNING"] * 2


def test_a_request_has_time_for_its_body_at_the_slowest_upload_allowed_for() -> None:
    from topology.forward import request_timeout

    base = aiohttp.ClientTimeout(total=30.0, connect=5.0)
    assert request_timeout(base, 0) == base
    assert request_timeout(base, 8_000_000) == aiohttp.ClientTimeout(total=110.0, connect=5.0)
    assert request_timeout(aiohttp.ClientTimeout(total=None), 8_000_000).total is None


def test_request_bodies_stay_within_the_byte_limit() -> None:
    batch = [_Item(SimpleNamespace(value=b'{"id":"%d"}' % i), str(i), "e") for i in range(3)]  # 10 B
    assert len(_body(batch[:2])) == 23
    assert [len(c) for c in _chunks(batch, 23)] == [2, 1]
    assert [len(c) for c in _chunks(batch, 22)] == [1, 1, 1]
    assert [len(c) for c in _chunks(batch, 34)] == [3]
    assert [len(c) for c in _chunks(batch, 5)] == [1, 1, 1]  # one event is always sent


def test_an_event_the_server_would_drop_for_size_is_not_sent() -> None:
    """Prefect's server measures the event with its `received` field (41 bytes) added."""
    fits = b'{"id":"1","x":"' + b"a" * (1_499_959 - 17) + b'"}'
    assert len(fits) == 1_499_959
    item, code, reason = _parse(SimpleNamespace(value=fits))
    assert item is not None and (item.event_id, code, reason) == ("1", "", "")
    assert _parse(SimpleNamespace(value=fits[:-2] + b'a"}')) == (
        None,
        "event_too_large",
        "event is 1499960 bytes, 1500001 with the received time Prefect's server adds, "
        "over its limit of 1500000",
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999/api", "not a valid URL"),
        ("ftp://prefect/api", "not an http"),
        ("http:///api", "not an http"),
        ("http://prefect:0/api", "ports are 1-65535"),
    ],
)
def test_a_bad_api_url_is_refused_up_front(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        events_url(url)
    assert events_url("https://prefect.example:4200/api/") == "https://prefect.example:4200/api/events"


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 304])
async def test_sink_stops_on_a_configuration_error(fake: FakePrefect, status: int) -> None:
    fake.default = (status, b'{"detail": "nope"}')
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ForwardError, match=f"HTTP {status}"):
            await PrefectSink(session, fake.api_url, retry=FAST_RETRY).deliver(items(sample_events()[0][0]))


async def test_forward_commits_only_after_the_server_accepted(
    bootstrap_servers: str, fake: FakePrefect
) -> None:
    settings = settings_for(bootstrap_servers, partitions=1)
    await create_topics(settings, partitions=1)
    artifacts, _ = sample_events()
    values = [orjson.dumps(e) for e in artifacts]
    await produce(settings, settings.artifact_events_topic, values)
    tp = TopicPartition(settings.artifact_events_topic, 0)
    group = f"{settings.app_id}-forward"

    fake.default = (503, b"down")
    stop, metrics = asyncio.Event(), Metrics()
    task = asyncio.create_task(
        fast_forward(settings, fake.api_url, stop=stop, retry=FAST_RETRY, metrics=metrics)
    )
    async with asyncio.timeout(30):
        while len(fake.bodies) < 3:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    # A stuck forwarder shows: the age of the batch it keeps retrying grows.
    assert b"\nprefect_events_forward_batch_age_seconds 0.0\n" not in metrics.render()[0]
    stop.set()
    assert await asyncio.wait_for(task, timeout=30) == 0
    assert await committed(settings, group, tp) is None

    fake.default = (204, b"")
    fake.bodies.clear()
    delivered = await asyncio.wait_for(
        fast_forward(settings, fake.api_url, max_events=3, retry=FAST_RETRY), timeout=30
    )
    assert delivered == 3
    assert b"".join(fake.bodies) == b"[" + b",".join(values) + b"]"
    assert await committed(settings, group, tp) == 3


# --- the CLI's forwarder: metrics and probes ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def gate(port: int, bootstrap_servers: str) -> AsyncIterator[None]:
    """Kafka at 127.0.0.1:`port` while the context lasts (nothing listens there before): a
    client bootstrapping through it then talks to the broker's advertised address directly."""
    host, broker_port = bootstrap_servers.rsplit(":", 1)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(broker_port))
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_cli_forward_serves_metrics_and_is_ready_once_its_clients_started(
    bootstrap_servers: str, fake: FakePrefect
) -> None:
    """/healthz from the start, /readyz 503 while Kafka is not there yet and 200 once the
    consumer and producer started, and the forwarded events counted on /metrics."""
    settings = settings_for(bootstrap_servers, partitions=1)
    await create_topics(settings, partitions=1)
    artifacts, _ = sample_events()
    await produce(settings, settings.artifact_events_topic, [orjson.dumps(e) for e in artifacts])
    port, kafka_port = _free_port(), _free_port()
    names = namespaced(settings.app_id)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in names.items()]
    flags += ["--bootstrap-servers", f"127.0.0.1:{kafka_port}", "--broker-wait-s", "60"]
    flags += ["--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--fetch-max-wait-ms", "20"]
    process = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "forward", "--to", fake.api_url, *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    async def poll(path: str, until: Callable[[int, str], bool]) -> tuple[int, str]:
        async with asyncio.timeout(60):
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else b""
                try:
                    status, text = await _get(url + path)
                except aiohttp.ClientConnectionError:  # not listening yet
                    status, text = 0, ""
                if until(status, text):
                    return status, text
                await asyncio.sleep(0.05)

    try:
        assert await poll("/healthz", lambda status, _: status != 0) == (200, "ok\n")
        assert await _get(url + "/readyz") == (503, "not ready\n")  # Kafka is not reachable yet
        _, scraped = await _get(url + "/metrics")
        assert "prefect_events_forwarded_total 0.0\n" in scraped
        async with gate(kafka_port, bootstrap_servers):
            assert await poll("/readyz", lambda status, _: status != 503) == (200, "ready\n")
            # Counted once the server took them, then committed: none pending after that.
            _, scraped = await poll(
                "/metrics",
                lambda _, text: "prefect_events_forwarded_total 3.0\n" in text
                and "prefect_events_forward_batch_age_seconds 0.0\n" in text,
            )
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert process.stderr.read().decode().splitlines()[-1] == "delivered 3 events"


async def test_stop_ends_the_wait_for_kafka() -> None:
    """The wait for a broker that is not there (up to broker_wait_s) ends as soon as `stop` is set."""
    settings = Settings(bootstrap_servers=f"127.0.0.1:{_free_port()}", broker_wait_s=120)
    stop = asyncio.Event()
    task = asyncio.create_task(forward(settings, "http://127.0.0.1:1/api", stop=stop))
    await asyncio.sleep(0.5)
    assert not task.done()
    stop.set()
    assert await asyncio.wait_for(task, timeout=5) == 0
