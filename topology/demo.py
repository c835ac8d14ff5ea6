"""`prefect-events demo`: a newcomer's first run — broker, worker, a small feed, events printed.

Uses the embedded Tansu broker unless a broker is given (--bootstrap-servers or
KAFKA_BOOTSTRAP_SERVERS). The feed is a handful of real Prefect operations (artifact versions and
deletes, an asset lineage chain, one bad message).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer

from streams.pipeline import ArtifactPipeline, AssetPipeline
from topology.config import Settings
from topology.embedded_broker import EmbeddedBroker, die_with_parent
from topology.runner import for_embedded_broker, log_overrides, prepare
from topology.tools import produce

ARTIFACT_KEY = "artifact.id,artifact_id"  # creates carry the id inside, updates/deletes beside
WORKER_LOG_LINES = 20  # of the worker's stderr, shown when it exits before the demo is done


def _feed(name: str) -> list[bytes]:
    return resources.files("topology").joinpath(f"demo_feed/{name}").read_bytes().splitlines()


def _expected(settings: Settings, artifacts: list[bytes], results: list[bytes]) -> int:
    a = ArtifactPipeline()
    t = AssetPipeline(
        retention_us=settings.lineage_retention_us, allowed_lateness_us=settings.allowed_lateness_us
    )
    return sum(
        len(o.events) + (o.dead_letter is not None)
        for o in [*(a.process(r) for r in artifacts), *(t.process(r) for r in results)]
    )


def run_demo(settings: Settings, seconds: float, *, embedded_broker: bool = True) -> int:
    """Feed the demo to a worker on `settings.bootstrap_servers`, or on an embedded broker."""
    broker = None
    if embedded_broker:
        broker = EmbeddedBroker().start()
        given, settings = settings, for_embedded_broker(settings, broker.bootstrap_servers)
        print(f"embedded broker (Tansu) at {settings.bootstrap_servers}", file=sys.stderr)
        log_overrides(given, settings, lambda line: print(line, file=sys.stderr))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        **{
            f"PREFECT_EVENTS_{k.upper()}": str(v)
            for k, v in settings.as_dict().items()
            if k != "bootstrap_servers"
        },
    }
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # The worker's log goes to a file, shown if the worker dies (a pipe nobody reads would
        # block it once full).
        with tempfile.TemporaryFile() as worker_log:
            return asyncio.run(_feed_and_watch(settings, env, seconds, worker_log, workers))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 128 + signal.SIGTERM
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()


async def _feed_and_watch(
    settings: Settings,
    env: dict[str, str],
    seconds: float,
    worker_log: IO[bytes],
    workers: list[subprocess.Popen[bytes]],
) -> int:
    """Start the worker, feed it, print what comes out. SIGTERM (a `timeout`, a CI cancel, `kill`)
    cancels this as Ctrl-C does, so that the caller stops the worker and the broker instead of
    leaving the worker running and holding its port."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        print("demo: SIGTERM, stopping the worker and the broker", file=sys.stderr)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    await prepare(settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=worker_log,
        preexec_fn=die_with_parent(),  # and if the demo is killed outright
    )
    workers.append(process)
    artifacts, results = _feed("artifacts.jsonl"), _feed("task_results.jsonl")
    # A live feed, one operation every 100 ms, keyed the advised way (artifact id, flow run).
    await produce(settings, settings.artifacts_topic, artifacts, ARTIFACT_KEY, 0.1)
    await produce(settings, settings.task_results_topic, results, "flow_run_id", 0.1)
    want = _expected(settings, artifacts, results)
    print(
        f"produced {len(artifacts)} artifact operations and {len(results)} task results; "
        f"waiting for {want} events and dead letters...",
        file=sys.stderr,
    )
    seen = await _print_events(settings, want, seconds, lambda: process.poll() is None)
    print(f"{seen} of {want} records seen", file=sys.stderr)
    if process.returncode is not None:
        _show_exit(process.returncode, worker_log)
        return 1
    return 0 if seen >= want else 1


def _show_exit(code: int, log: IO[bytes]) -> None:
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines()[-WORKER_LOG_LINES:]
    print(f"the worker exited early (exit {code}); the end of its stderr:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


async def _print_events(
    settings: Settings, want: int, seconds: float, worker_alive: Callable[[], bool]
) -> int:
    """Print events and dead letters until `want` were seen, `seconds` passed or the worker died."""
    topics = [settings.artifact_events_topic, settings.asset_events_topic, settings.dead_letter_topic]
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    seen, deadline = 0, time.monotonic() + seconds
    try:
        await consumer.start()
        while seen < want and time.monotonic() < deadline and worker_alive():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    seen += 1
                    if r.topic == settings.dead_letter_topic:
                        reason = dict(r.headers).get("prefect-dead-letter-reason", b"").decode()
                        print(f"DEAD LETTER  {reason}")
                        continue
                    event = orjson.loads(r.value)
                    print(
                        f"{event['occurred']}  {event['event']:<42} "
                        f"{event['resource']['prefect.resource.id']}"
                    )
    finally:
        await consumer.stop()
    return seen


__all__ = ["run_demo"]
