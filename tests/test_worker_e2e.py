"""End to end through a real broker: golden inputs produced, the worker running, events consumed.

Each test runs `prefect-events worker` as a subprocess with its own app id and topic names, so
tests share one broker without seeing each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests import spec_helpers as h
from topology.admin import ensure_topics
from topology.app import TopicNames
from topology.config import Settings, as_environ, load, namespaced

pytestmark = pytest.mark.broker

GOLDEN = h.GOLDEN_DIR
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningWorker:
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def settings(self) -> Settings:
        return load(environ=self.env)


def _env(bootstrap: str, partitions: int, input_partitions: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        as_environ(
            {
                **namespaced(f"e2e-{uuid.uuid4().hex[:8]}"),
                "bootstrap_servers": bootstrap,
                "partitions": partitions,
                "input_partitions": input_partitions,
                "store": "memory://",
                "metrics_port": 0,
                "fetch_max_wait_ms": 10,
                "log_level": "INFO",
            }
        )
    )
    return env


StartWorker = Callable[..., RunningWorker]


@pytest.fixture
def start_worker(bootstrap_servers: str, broker_kind: str, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[RunningWorker] = []
    # Tansu lets a restarted member rejoin only after the old session expires (README, "The embedded broker");
    # Kafka's minimum session is 6 s.
    session = "2" if broker_kind == "embedded" else "6"

    def start(
        partitions: int = 4,
        input_partitions: int = 4,
        stdin: int | None = None,
        **settings: str,
    ) -> RunningWorker:
        env = _env(bootstrap_servers, partitions, input_partitions)
        env["PREFECT_EVENTS_SESSION_TIMEOUT_S"] = session
        if broker_kind == "embedded":
            # Tansu's ListOffsets answers the last batch's base offset + 1: with one record per
            # changelog batch, Faust's changelog recovery reads the whole log (README, "The
            # embedded broker", defect 1). Every other topic gets the default, multi-record batches.
            env["PREFECT_EVENTS_CHANGELOG_BATCH_RECORDS"] = "1"
        env.update({f"PREFECT_EVENTS_{name.upper()}": value for name, value in settings.items()})
        env["PREFECT_EVENTS_DATA_DIR"] = str(tmp_path / "data")
        log = tmp_path / f"worker-{len(started)}.log"
        # Topics exist before anything is produced, with the partitions the worker expects.
        asyncio.run(ensure_topics(bootstrap_servers, TopicNames(load(environ=env)).specs()))
        process = subprocess.Popen(
            [sys.executable, "-m", "topology.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdin=stdin,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        worker = RunningWorker(env, process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.process.kill()


async def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, count: int, timeout_s: float = 90.0
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """Read `count` records from the start of `topic`, then linger briefly to catch extras."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend((r.key, r.value, dict(r.headers)) for r in batch)
            if len(records) >= count:
                extra_until = time.monotonic() + 1.5
                while time.monotonic() < extra_until:
                    more = await consumer.getmany(timeout_ms=200)
                    for batch in more.values():
                        records.extend((r.key, r.value, dict(r.headers)) for r in batch)
                break
    finally:
        await consumer.stop()
    return records


def compare(expected: Path, events: list[bytes], tmp_path: Path) -> None:
    actual = tmp_path / "actual.jsonl"
    actual.write_bytes(b"".join(e + b"\n" for e in events))
    result = subprocess.run(
        [sys.executable, str(GOLDEN / "compare.py"), str(expected), str(actual), "--any-order"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def offline(stream: str, input_path: Path) -> list[bytes]:
    out = subprocess.run(
        [sys.executable, "-m", "topology.cli", "process", "--stream", stream, str(input_path)],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.splitlines()


@h.needs_golden
@pytest.mark.parametrize("case", h.golden_cases("artifacts"))
def test_artifact_golden_case_end_to_end(
    case: str, start_worker: StartWorker, bootstrap_servers: str, tmp_path: Path
) -> None:
    """One partition end to end: operations on different artifacts of one key keep input order
    (with more partitions, operations arriving together may be applied in another order)."""
    worker = start_worker(partitions=1, input_partitions=1)
    s = worker.settings
    inputs = (GOLDEN / case / "input.jsonl").read_bytes().splitlines()
    expected_lines = (GOLDEN / case / "expected.jsonl").read_text().splitlines()
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, inputs))
    records = asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, len(expected_lines)))
    values = [value for _, value, _ in records]
    compare(GOLDEN / case / "expected.jsonl", values, tmp_path)
    # Byte for byte what the offline processor prints, record keys and headers as the spec says.
    assert sorted(values) == sorted(offline("artifacts", GOLDEN / case / "input.jsonl"))
    for key, value, headers in records:
        event = json.loads(value)
        assert key == event["resource"]["prefect.resource.id"].encode()
        assert headers["prefect-event"] == event["event"].encode()


@h.needs_golden
@pytest.mark.parametrize("case", h.golden_cases("assets"))
def test_asset_golden_case_end_to_end(
    case: str, start_worker: StartWorker, bootstrap_servers: str, tmp_path: Path
) -> None:
    """Four partitions: lineage is per flow run, so order holds within each flow run's partition."""
    worker = start_worker(partitions=4, input_partitions=4)
    s = worker.settings
    inputs = (GOLDEN / case / "input.jsonl").read_bytes().splitlines()
    expected_lines = (GOLDEN / case / "expected.jsonl").read_text().splitlines()
    flow_run = json.loads(inputs[0])["flow_run_id"].encode()
    asyncio.run(produce(bootstrap_servers, s.task_results_topic, inputs, key=flow_run))
    records = asyncio.run(consume(bootstrap_servers, s.asset_events_topic, len(expected_lines)))
    values = [value for _, value, _ in records]
    compare(GOLDEN / case / "expected.jsonl", values, tmp_path)
    assert sorted(values) == sorted(offline("assets", GOLDEN / case / "input.jsonl"))


def test_malformed_message_is_dead_lettered_and_the_next_one_processed(
    start_worker: StartWorker, bootstrap_servers: str
) -> None:
    worker = start_worker(partitions=2, input_partitions=1)
    s = worker.settings
    good = description_update("2026-11-24T10:00:00.123456Z", "after the bad one")
    bad = b'{"op": "create", "occurred": "not a time"'
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [bad, good]))
    dead = asyncio.run(consume(bootstrap_servers, s.dead_letter_topic, 1))
    events = asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 1))
    assert len(dead) == 1
    _, value, headers = dead[0]
    assert value == bad
    assert headers["prefect-source-topic"] == s.artifacts_topic.encode()
    assert headers["prefect-source-partition"] == b"0"
    assert headers["prefect-source-offset"] == b"0"
    assert headers["prefect-dead-letter-code"] == b"invalid_json"
    assert headers["prefect-dead-letter-reason"].startswith(b"not UTF-8 JSON")
    assert [v for _, v, _ in events] == offline_lines(good)


def test_a_delete_of_an_unknown_artifact_is_logged_with_where_it_came_from(
    start_worker: StartWorker, bootstrap_servers: str
) -> None:
    worker = start_worker(partitions=1, input_partitions=1)
    s = worker.settings
    gone = "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a12"
    delete = json.dumps({"op": "delete", "occurred": "2026-11-24T10:00:00Z", "artifact_id": gone})
    update = description_update("2026-11-24T10:00:01Z", "after the delete")
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [delete.encode(), update]))
    events = asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 1))
    assert [v for _, v, _ in events] == offline_lines(update)
    line = (
        "1 deletes of artifacts without a live membership, nothing emitted: "
        f"{gone} never seen ({s.artifacts_topic}[0]@0)"
    )
    deadline = time.monotonic() + 10
    while line not in worker.log.read_text():
        assert time.monotonic() < deadline, worker.log.read_text()[-2000:]
        time.sleep(0.2)


def description_update(occurred: str, description: str) -> bytes:
    """A PATCH of an artifact the worker never saw: its own event comes out all the same."""
    return json.dumps(
        {
            "op": "update",
            "occurred": occurred,
            "artifact_id": "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a11",
            "changes": {"description": description},
        }
    ).encode()


def offline_lines(raw: bytes) -> list[bytes]:
    from streams.pipeline import ArtifactPipeline

    return [e.value for e in ArtifactPipeline().process(raw).events]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@h.needs_golden
def test_metrics_count_a_known_input(start_worker: StartWorker, bootstrap_servers: str) -> None:
    port = _free_port()
    worker = start_worker(1, 1, metrics_port=str(port), metrics_host="127.0.0.1")
    s = worker.settings
    inputs = (GOLDEN / "A1" / "input.jsonl").read_bytes().splitlines()
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [*inputs, b"[]"]))
    asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 2))
    asyncio.run(consume(bootstrap_servers, s.dead_letter_topic, 1))
    done = {
        'prefect_events_emitted_total{event="prefect.artifact.created"} 1.0',
        f'prefect_events_consumer_lag{{partition="0",topic="{s.artifacts_topic}"}} 0.0',  # every 5 s
    }
    deadline = time.monotonic() + 30
    while True:
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        lines = set(body.splitlines())
        if done <= lines:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert status == 200
    for line in (
        f'prefect_events_input_messages_total{{topic="{s.artifacts_topic}"}} 2.0',
        'prefect_events_emitted_total{event="prefect.artifact-collection.created"} 1.0',
        'prefect_events_dead_letters_total{reason="wrong_type"} 1.0',
    ):
        assert line in lines, line
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def test_health_answers_before_the_worker_is_ready(start_worker: StartWorker) -> None:
    """Liveness from the start, readiness only once the tables are recovered: a probe during a
    long recovery must not see a dead process (its port closed) and restart it."""
    port = _free_port()
    worker = start_worker(1, 1, metrics_port=str(port), metrics_host="127.0.0.1")
    readiness: list[int] = []
    deadline = time.monotonic() + 60
    while not readiness or readiness[-1] != 200:
        assert time.monotonic() < deadline and worker.process.poll() is None, worker.log.read_text()
        try:
            readiness.append(_get(f"http://127.0.0.1:{port}/readyz")[0])
        except OSError:  # not listening yet
            time.sleep(0.02)
            continue
        if readiness[-1] == 503:
            assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert readiness[0] == 503 and set(readiness) == {503, 200}
    log = worker.log.read_text()
    assert log.index(f"metrics on http://127.0.0.1:{port}/metrics") < log.index("Worker ready")


def test_metrics_port_in_use_is_one_line_before_joining_the_group(start_worker: StartWorker) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(1, 1, metrics_port=str(port), metrics_host="127.0.0.1")
        assert worker.process.wait(timeout=60) == 2
    assert worker.log.read_text().splitlines()[-1] == (
        f"prefect-events: error: metrics server: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (metrics_host, metrics_port; port 0 disables the server)"
    )
    assert "Traceback" not in worker.log.read_text()


def test_a_metrics_host_not_of_this_machine_is_one_line(start_worker: StartWorker) -> None:
    worker = start_worker(1, 1, metrics_port="9309", metrics_host="192.0.2.1")  # TEST-NET-1
    assert worker.process.wait(timeout=60) == 2
    assert worker.log.read_text().splitlines()[-1] == (
        "prefect-events: error: metrics server: cannot listen on 192.0.2.1:9309: "
        "Cannot assign requested address (metrics_host, metrics_port; port 0 disables the server)"
    )


def test_sigterm_with_the_broker_gone_exits_after_shutdown_timeout(tmp_path: Path) -> None:
    """Faust's stop waits for the broker without a bound; the worker's own bound ends it with a
    line that says why, and the uncommitted input is replayed after the restart."""
    from topology.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        env = _env(broker.bootstrap_servers, 1, 1)
        port = _free_port()
        env.update(
            as_environ(
                {
                    "session_timeout_s": 2,
                    "changelog_batch_records": 1,
                    "shutdown_timeout_s": 3,
                    "metrics_port": port,
                    "metrics_host": "127.0.0.1",
                    "data_dir": str(tmp_path / "data"),  # not the repository's ./data
                }
            )
        )
        log = tmp_path / "worker.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "topology.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while _ready(port) != 200:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.1)
            broker.stop()
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert process.wait(timeout=30) == 75
            assert 3 <= time.monotonic() - signalled < 10
        finally:
            if process.poll() is None:
                process.kill()
    assert (
        "ERROR prefect_events: shutdown on SIGTERM did not finish within 3s (shutdown_timeout_s; is "
        "the broker reachable?): exiting now; input processed but not committed is read again on "
        "restart"
    ) in log.read_text()
    # Faust's consumer thread dies of the broker's absence while stopping: one line, not Python's
    # `Exception in thread ...` and a traceback.
    assert "Traceback" not in log.read_text(), log.read_text()


def _ready(port: int) -> int | None:
    try:
        return _get(f"http://127.0.0.1:{port}/readyz")[0]
    except OSError:
        return None


def test_sigterm_finishes_commits_and_exits_cleanly(
    start_worker: StartWorker, bootstrap_servers: str
) -> None:
    worker = start_worker(partitions=1, input_partitions=1)
    s = worker.settings
    raw = json.dumps(
        {
            "op": "update",
            "occurred": "2026-11-24T10:00:00Z",
            "artifact_id": "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a11",
            "changes": {},
        }
    ).encode()
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [raw] * 3))
    assert len(asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 3))) == 3
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0
    log = worker.log.read_text()
    assert "Traceback" not in log
    # The worker's own lines say what happened, among Faust's. It reads 9 topics of 1 partition:
    # 2 raw and 3 hand-over (its input), 3 changelogs (its tables) and Faust's leader topic.
    ours = [line.split(" prefect_events: ", 1)[1] for line in log.splitlines() if " prefect_events: " in line]
    ready = "ready: tables recovered, reading 5 input partitions of 5 topics, keeping 3 table partitions"
    assert f"{ready} (0 as standbys)" in ours
    assert ours[-2] == "SIGTERM: stopping: finishing the batch in hand, then committing and leaving the group"
    assert re.fullmatch(r"stopped on SIGTERM after \d+\.\ds", ours[-1])

    async def committed() -> int | None:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=s.app_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            offset: int | None = await consumer.committed(TopicPartition(s.artifacts_topic, 0))
            return offset
        finally:
            await consumer.stop()

    assert asyncio.run(committed()) == 3


def test_sigusr2_does_not_stop_the_worker(start_worker: StartWorker, bootstrap_servers: str) -> None:
    """mode's Worker answers SIGUSR2 with pdb on the event loop: with stdin open (a pipe, a
    container started with -i) the worker would wait for a debugger command forever, holding its
    partitions and processing nothing."""
    worker = start_worker(partitions=1, input_partitions=1, stdin=subprocess.PIPE)
    s = worker.settings
    before = description_update("2026-11-24T10:00:00Z", "before the signal")
    after = description_update("2026-11-24T10:00:01Z", "after the signal")
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [before]))
    assert len(asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 1))) == 1
    worker.process.send_signal(signal.SIGUSR2)
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, [after]))
    events = asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 2, timeout_s=30))
    assert [v for _, v, _ in events] == offline_lines(before) + offline_lines(after)
    assert "SIGUSR2 ignored" in worker.log.read_text()


@h.needs_golden
def test_state_survives_a_restart(start_worker: StartWorker, bootstrap_servers: str, tmp_path: Path) -> None:
    """A7's creates before a restart, its deletes and re-create after: the collections, rebuilt
    from the changelog by the new worker process, give exactly the expected events."""
    first = start_worker(partitions=1, input_partitions=1)
    s = first.settings
    inputs = (GOLDEN / "A7" / "input.jsonl").read_bytes().splitlines()
    expected = (GOLDEN / "A7" / "expected.jsonl").read_text().splitlines()
    creates, rest = inputs[:4], inputs[4:]
    asyncio.run(produce(bootstrap_servers, s.artifacts_topic, creates))
    assert len(asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, 7))) == 7
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0
    second = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "worker"],
        env=first.env,
        cwd=ROOT,
        stdout=(tmp_path / "second.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(produce(bootstrap_servers, s.artifacts_topic, rest))
        records = asyncio.run(consume(bootstrap_servers, s.artifact_events_topic, len(expected)))
        # At-least-once: what the first worker did not commit is read again; a replayed event is
        # byte-identical (same id), so count distinct records. A conflicting one would remain.
        distinct = list(dict.fromkeys(v for _, v, _ in records))
        compare(GOLDEN / "A7" / "expected.jsonl", distinct, tmp_path)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
