"""Broker contract tests (any broker), Tansu defect checks (embedded only) and the fetch-wait hook.

The contract tests use aiokafka directly and hold on every broker the session may use. The tests
named `test_tansu_*` document measured defects of the embedded broker: they assert the wrong
behaviour as it is today, so a Tansu upgrade that fixes one fails here and tells us to drop the
matching workaround (README, "The embedded broker").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import faust
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownError
from aiokafka.protocol.fetch import FetchRequest

from topology import config
from topology.admin import (
    RECORD_LIMIT_BYTES,
    BrokerUnreachable,
    TopicMismatchError,
    TopicSpec,
    ensure_topics,
    wait_for_broker,
)
from topology.app import TopicNames
from topology.embedded_broker import EmbeddedBroker, answers_kafka, free_port
from topology.transport import FetchWaitTransport, configure_fetch_wait

broker = pytest.mark.broker
TIMEOUT_S = 10.0


def unique(prefix: str) -> str:
    """Topic and group names unique per run, so an external broker's old data never interferes."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def embedded_only(broker_kind: str) -> None:
    if broker_kind != "embedded":
        pytest.skip(f"documents a Tansu defect; this session's broker is {broker_kind}")


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, list[int]]:
    """Describe topics that exist (a metadata request for a missing one would auto-create it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described}


async def read(consumer: AIOKafkaConsumer, count: int) -> list[Any]:
    records: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(records) < count:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    return records


# --- Topic set-up (topology/admin.py) ---------------------------------------------------------


@broker
async def test_ensure_topics_creates_exact_partition_counts(bootstrap_servers: str) -> None:
    specs = [TopicSpec(unique(f"p{n}"), n) for n in (1, 3, 8)]
    await ensure_topics(bootstrap_servers, specs)
    await ensure_topics(bootstrap_servers, specs)  # idempotent: existing topics are fine

    counts = await partition_counts(bootstrap_servers, [s.name for s in specs])
    assert counts == {s.name: list(range(s.partitions)) for s in specs}


@broker
async def test_compacted_topic_reports_cleanup_policy_compact(bootstrap_servers: str) -> None:
    compacted, plain = TopicSpec(unique("compact"), 2, compacted=True), TopicSpec(unique("plain"), 1)
    await ensure_topics(bootstrap_servers, [compacted, plain])

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in (compacted, plain)]
        )
    finally:
        await admin.close()
    configs = {
        resource["resource_name"]: {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
        for response in responses
        for resource in response.to_object()["resources"]
    }
    assert configs[compacted.name]["cleanup.policy"] == "compact"
    # Kafka lists every default (delete); Tansu lists only what was set at creation (nothing).
    assert configs[plain.name].get("cleanup.policy", "delete") == "delete"


@broker
async def test_the_worker_creates_the_topics_it_writes_with_room_for_its_largest_records(
    bootstrap_servers: str,
) -> None:
    """Kafka's default `message.max.bytes` (1 MB) is below a 1.5 MB event and a version record
    holding two copies of an artifact's data; the raw topics keep the broker's default."""
    names = TopicNames(config.load(config.namespaced(unique("limits")), environ={}))
    specs = names.specs()
    await ensure_topics(bootstrap_servers, specs)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in specs]
        )
    finally:
        await admin.close()
    limits = {
        resource["resource_name"]: {
            e["config_names"]: e["config_value"] for e in resource["config_entries"]
        }.get("max.message.bytes")
        for response in responses
        for resource in response.to_object()["resources"]
    }
    raw = {names.settings.artifacts_topic, names.settings.task_results_topic}
    assert {name for name, limit in limits.items() if limit != str(RECORD_LIMIT_BYTES)} == raw
    assert len(limits) == len(specs) == 11  # 2 raw, 3 hand-over, 2 event, dead letters, 3 changelogs


@broker
async def test_existing_topic_with_other_partition_count_raises(bootstrap_servers: str) -> None:
    name = unique("mismatch")
    await ensure_topics(bootstrap_servers, [TopicSpec(name, 3)])

    with pytest.raises(TopicMismatchError) as info:
        await ensure_topics(bootstrap_servers, [TopicSpec(name, 5)])
    assert str(info.value) == f"topic {name} has 3 partitions, expected 5"


async def test_wait_for_broker_names_address_and_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BrokerUnreachable, match=rf"^cannot reach Kafka at {address} within 0.5 s"):
        await wait_for_broker(address, 0.5)


# --- Produce, consume, consumer groups --------------------------------------------------------


@broker
async def test_keyed_records_round_trip_with_headers(bootstrap_servers: str) -> None:
    topic = unique("roundtrip")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 3)])
    sent = [
        (f"key-{i}".encode(), f'{{"n": {i}}}'.encode(), [("trace", f"t{i}".encode()), ("empty", b"")])
        for i in range(10)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        placed = [await producer.send_and_wait(topic, v, key=k, headers=h) for k, v, h in sent]
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records = await read(consumer, 10)
    finally:
        await consumer.stop()

    got = sorted((r.key, r.value, [(k, bytes(v)) for k, v in r.headers]) for r in records)
    assert got == sorted(sent)
    by_key = {r.key: (r.partition, r.offset) for r in records}
    assert by_key == {k: (md.partition, md.offset) for (k, _, _), md in zip(sent, placed, strict=True)}


@broker
async def test_group_restart_resumes_after_committed_offset(bootstrap_servers: str, broker_kind: str) -> None:
    topic, group = unique("resume"), unique("group")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, str(i).encode())
    finally:
        await producer.stop()
    # Kafka refuses sessions under 6 s; Tansu's joins take ~half the session timeout, and its
    # first generation is 0, so the first member never leaves (see test_tansu_first_generation).
    session_ms = 1000 if broker_kind == "embedded" else 6000
    tp = TopicPartition(topic, 0)

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=session_ms // 10,
        )

    first = member()
    await first.start()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            seen = [await first.getone() for _ in range(4)]
        assert [r.offset for r in seen] == [0, 1, 2, 3]
        await first.commit({tp: 4})
    finally:
        await first.stop()

    second = member()
    await second.start()
    try:
        async with asyncio.timeout(TIMEOUT_S * 2):
            resumed = await second.getone()
        assert (resumed.offset, resumed.value) == (4, b"4")
        assert await second.committed(tp) == 4
    finally:
        await second.stop()


# --- Tansu defects (embedded broker only) ------------------------------------------------------


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_list_offsets_latest_is_last_batch_base_plus_one(bootstrap_servers: str) -> None:
    """Documents a broker defect (BROKER.md 1): ListOffsets(latest) is wrong after a batch of >1.

    It returns the last batch's base offset + 1 instead of the log end; the fetch high watermark
    is right. Breaks end_offsets, seek_to_end, auto_offset_reset="latest" and lag figures.
    """
    topic = unique("listoffsets")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        bases = []
        for size in (5, 3):  # offsets 0-4, then 5-7
            batch = producer.create_batch()
            for i in range(size):
                batch.append(key=None, value=f"r{i}".encode(), timestamp=None)
            bases.append((await (await producer.send_batch(batch, topic, partition=0))).offset)
    finally:
        await producer.stop()
    assert bases == [0, 5]

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records = await read(consumer, 8)
        highwater = consumer.highwater(tp)
    finally:
        await consumer.stop()
    assert [r.offset for r in records] == list(range(8))
    assert highwater == 8  # right
    assert end == 6  # wrong: Kafka says 8 (last batch base 5, + 1)


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_fetch_is_not_woken_by_new_data(bootstrap_servers: str) -> None:
    """Documents a broker defect (BROKER.md 2, refined): a waiting fetch ignores new data.

    Tansu re-checks only after half the wait, then half the remaining time, and so on (W/2,
    3W/4, 7W/8, ...). A record produced 50 ms into a 1000 ms fetch comes back after ~500 ms;
    Kafka answers at once. So each hop adds up to W/2 (750 ms with Faust's 1500 ms).
    """
    topic = unique("fetchwait")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)])
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    await producer.start()
    try:
        request = FetchRequest(1000, 1, 1 << 20, 0, [(topic, [(0, 0, 1 << 20)])])
        started = time.monotonic()
        fetch = asyncio.ensure_future(client.send(client.get_random_node(), request))
        await asyncio.sleep(0.05)
        await producer.send_and_wait(topic, b"wake up")
        await fetch
        elapsed = time.monotonic() - started
    finally:
        await producer.stop()
        await client.close()
    assert 0.35 <= elapsed <= 0.85, elapsed


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_short_fetch_wait_starves_on_a_partition_of_many_batches(
    bootstrap_servers: str,
) -> None:
    """Documents a broker defect (not in BROKER.md): a fetch returns what Tansu could read within
    the fetch wait, and reading a partition takes longer the more batches it holds.

    10k one-record batches: a 2 ms wait returns nothing at all, 100 ms returns everything. Seen
    on larger partitions: 40k batches starve a 10 ms wait, 80k still work at 50 ms. A worker on
    Tansu with one-record batches (what its changelog recovery needs) and a short fetch wait
    therefore slows to a crawl as its topics grow: the chaos run at 10 ms recovered changelogs
    at ~500 records/s. The worker's default (100 ms) serves ~160k batches per partition.
    """
    topic = unique("manybatches")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_batch_size=1)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"r" * 100, partition=0) for _ in range(10_000)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    tp = TopicPartition(topic, 0)

    async def read_within(wait_ms: int, seconds: float) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=wait_ms)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            count, deadline = 0, time.monotonic() + seconds
            while count < 10_000 and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    count += len(batch)
            return count
        finally:
            await consumer.stop()

    assert await read_within(100, 10.0) == 10_000
    # Nothing at all when measured on an idle machine; under load a fetch now and then gets a
    # few records through, so the check is "starved", not "exactly none" (it failed once so).
    assert await read_within(2, 3.0) < 1_000


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_idempotent_producer_fails_at_start(bootstrap_servers: str) -> None:
    """Documents a broker defect (BROKER.md 3): InitProducerId v0 is refused with UnknownError.

    So Faust's exactly_once guarantee (transactions) cannot be used on this broker.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=True)
    try:
        with pytest.raises(UnknownError):
            await producer.start()
    finally:
        await producer.stop()


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_auto_creates_missing_topics_with_4_partitions(bootstrap_servers: str) -> None:
    """Documents a broker default: metadata requests and produces auto-create 4-partition topics.

    Hence topology/admin.py creates topics first and checks them with auto-creation turned off.
    """
    described, produced = unique("auto-described"), unique("auto-produced")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(produced, b"x")
    finally:
        await producer.stop()
    counts = await partition_counts(bootstrap_servers, [described, produced])
    assert counts == {described: [0, 1, 2, 3], produced: [0, 1, 2, 3]}


@broker
@pytest.mark.usefixtures("embedded_only")
async def test_tansu_first_generation_is_zero(bootstrap_servers: str) -> None:
    """Documents a broker defect: a new group's first generation is 0 (Kafka starts at 1).

    aiokafka sends LeaveGroup only when generation > 0, so the group's first member never leaves:
    the next member waits for its session to expire (a restart took 2x session timeout + ~1 s).
    This is BROKER.md defect 4's slow rejoin; a short session timeout bounds it.
    """
    topic = unique("generation")
    await ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=unique("group"),
        session_timeout_ms=1000,
        heartbeat_interval_ms=100,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
        assert consumer._coordinator.generation == 0
    finally:
        await consumer.stop()


# --- Per-app fetch wait (topology/transport.py) ------------------------------------------------


@contextlib.asynccontextmanager
async def worker_consumer(app: faust.App) -> AsyncIterator[Any]:
    """The AIOKafkaConsumer Faust's consumer thread would start, built without running a worker."""
    thread = cast(Any, app.consumer)._thread
    consumer = thread._create_consumer(asyncio.get_running_loop())
    try:
        yield consumer
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the never-started consumer thread's own loop


def plain_settings(consumer: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(consumer).items() if isinstance(v, int | float | str | bool | None)}


async def test_configure_fetch_wait_changes_only_the_fetch_wait() -> None:
    tuned = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:9092")
    stock = faust.App("fetch-wait-test", broker="kafka://127.0.0.1:9092")
    configure_fetch_wait(tuned, 10)
    assert isinstance(tuned.transport, FetchWaitTransport)
    assert not isinstance(stock.transport, FetchWaitTransport)

    async with worker_consumer(tuned) as mine, worker_consumer(stock) as theirs:
        assert mine._fetch_max_wait_ms == 10
        assert theirs._fetch_max_wait_ms == 1500  # faust-streaming 0.15.3's hard-coded value
        assert plain_settings(mine) == plain_settings(theirs) | {"_fetch_max_wait_ms": 10}

    with pytest.raises(RuntimeError, match="before the app's consumer is created"):
        configure_fetch_wait(tuned, 20)
    with pytest.raises(ValueError, match=">= 0"):
        configure_fetch_wait(faust.App("fetch-wait-neg", broker="kafka://x:1"), -1)


@broker
async def test_configured_fetch_wait_reaches_aiokafka_fetcher(bootstrap_servers: str) -> None:
    app = faust.App(unique("fetch-wait"), broker=f"kafka://{bootstrap_servers}")
    configure_fetch_wait(app, 25)
    async with worker_consumer(app) as consumer:
        await consumer.start()
        assert consumer._fetcher._fetch_max_wait_ms == 25


# --- EmbeddedBroker itself (needs only the tansu binary) ---------------------------------------


@pytest.fixture
def spare_broker() -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker()
    yield embedded
    embedded.stop()


def test_restart_uses_a_fresh_port_and_stop_is_idempotent(spare_broker: EmbeddedBroker) -> None:
    first = spare_broker.start().bootstrap_servers
    host, port = first.split(":")
    assert answers_kafka(host, int(port))
    spare_broker.stop()
    spare_broker.stop()
    assert not spare_broker.running
    second = spare_broker.start().bootstrap_servers
    assert second != first
    spare_broker.stop()
    assert not answers_kafka(host, int(port))


def test_a_terminals_ctrl_c_does_not_reach_the_broker(spare_broker: EmbeddedBroker) -> None:
    """Ctrl-C signals the terminal's whole process group: the broker is in a group of its own, so
    `worker --embedded-broker` can still commit and leave its group before it stops the broker
    (in the same group, the broker died first and the worker's shutdown ran into its 25 s limit)."""
    spare_broker.start()
    assert os.getpgid(spare_broker.pid) == spare_broker.pid != os.getpgid(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses PR_SET_PDEATHSIG")
def test_broker_stops_when_its_parent_is_killed() -> None:
    code = "from topology.embedded_broker import EmbeddedBroker as B; import time; "
    code += "b = B().start(); print(b.pid, b.log_path, flush=True); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        pid, log_path = parent.stdout.readline().split()
        parent.stdout.close()
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    shutil.rmtree(Path(log_path.decode()).parent)  # the killed parent could not clean up
    deadline = time.monotonic() + 5
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(pid))


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
