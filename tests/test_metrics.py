"""Metrics and health endpoints, scraped over real HTTP the way Prometheus and Kubernetes do."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from topology.metrics import Metrics, MetricsServer, serve


class Flag:
    """A readiness switch the test flips."""

    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, Flag, MetricsServer]]:
    metrics, ready = Metrics(), Flag()
    server = await serve(metrics, "127.0.0.1", 0, ready)
    async with server:
        yield metrics, ready, server


async def get(url: str, accept: str = "") -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


def update(metrics: Metrics) -> None:
    metrics.input("prefect.raw.artifacts", 3)
    metrics.input("prefect.raw.asset-task-results")
    metrics.emitted("prefect.artifact.created", 2)
    metrics.emitted("prefect.asset.materialization.succeeded")
    metrics.dead_letter("invalid_json")
    metrics.dead_letter("invalid_json")
    metrics.dead_letter("some_new_code")
    metrics.unknown_delete()
    metrics.related_truncated(2)
    metrics.forwarded(5)
    metrics.processing(0.003)
    metrics.processing(0.2)
    metrics.batch_phases("collections", compute=0.002, publish=0.04, state=0.3)
    metrics.end_to_end(1_700_000_000_000, now=1_700_000_000.04)
    metrics.end_to_end(1_700_000_000_000, now=1_699_999_999.0)  # clock skew counts as 0
    metrics.consumer_lags({("prefect.raw.artifacts", 0): 17, ("prefect.raw.artifacts", 1): 9})
    metrics.consumer_lags({("prefect.raw.artifacts", 0): 4})  # partition 1 moved to another worker
    metrics.table_keys("artifacts-by-id", 1200)


async def test_scrape_shows_exact_values(served: tuple[Metrics, Flag, MetricsServer]) -> None:
    metrics, _, server = served
    update(metrics)
    status, content_type, text = await get(f"{server.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    lines = set(text.splitlines())
    for line in [
        'prefect_events_input_messages_total{topic="prefect.raw.artifacts"} 3.0',
        'prefect_events_input_messages_total{topic="prefect.raw.asset-task-results"} 1.0',
        'prefect_events_emitted_total{event="prefect.artifact.created"} 2.0',
        'prefect_events_emitted_total{event="prefect.asset.materialization.succeeded"} 1.0',
        'prefect_events_dead_letters_total{reason="invalid_json"} 2.0',
        'prefect_events_dead_letters_total{reason="some_new_code"} 1.0',
        "prefect_events_unknown_deletes_total 1.0",
        "prefect_events_related_truncated_total 2.0",
        "prefect_events_forwarded_total 5.0",
        "prefect_events_processing_seconds_count 2.0",
        'prefect_events_processing_seconds_bucket{le="0.005"} 1.0',
        'prefect_events_processing_seconds_bucket{le="0.25"} 2.0',
        'prefect_events_batch_phase_seconds_bucket{le="0.0025",phase="compute",step="collections"} 1.0',
        'prefect_events_batch_phase_seconds_bucket{le="0.025",phase="publish",step="collections"} 0.0',
        'prefect_events_batch_phase_seconds_bucket{le="0.05",phase="publish",step="collections"} 1.0',
        'prefect_events_batch_phase_seconds_sum{phase="state",step="collections"} 0.3',
        "prefect_events_end_to_end_seconds_count 2.0",
        'prefect_events_end_to_end_seconds_bucket{le="0.005"} 1.0',
        'prefect_events_end_to_end_seconds_bucket{le="0.05"} 2.0',
        'prefect_events_consumer_lag{partition="0",topic="prefect.raw.artifacts"} 4.0',
        'prefect_events_table_keys{table="artifacts-by-id"} 1200.0',
        "# TYPE prefect_events_processing_seconds histogram",
        "# TYPE prefect_events_consumer_lag gauge",
    ]:
        assert line in lines, line
    assert "prefect_events_forward_batch_age_seconds 0.0" in lines  # no batch pending
    assert "_created" not in text  # dropped on purpose (see topology.metrics._WithoutCreated)
    assert [line for line in lines if line.startswith("prefect_events_consumer_lag{")] == [
        'prefect_events_consumer_lag{partition="0",topic="prefect.raw.artifacts"} 4.0'
    ]  # the partition that moved away is not reported any more


async def test_forward_batch_age_grows_while_a_batch_is_pending() -> None:
    metrics = Metrics()
    metrics.forward_pending(time.monotonic() - 42)
    scraped = metrics.render()[0]
    age = float(re.findall(rb"^prefect_events_forward_batch_age_seconds (\S+)$", scraped, re.M)[0])
    assert 42 <= age < 50
    metrics.forward_pending(None)
    assert b"\nprefect_events_forward_batch_age_seconds 0.0\n" in metrics.render()[0]


async def test_openmetrics_when_asked(served: tuple[Metrics, Flag, MetricsServer]) -> None:
    metrics, _, server = served
    metrics.emitted("prefect.artifact.created", 2)
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    status, content_type, text = await get(f"{server.url}/metrics", accept)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert 'prefect_events_emitted_total{event="prefect.artifact.created"} 2.0' in text
    assert text.endswith("# EOF\n")


async def test_health_and_readiness(served: tuple[Metrics, Flag, MetricsServer]) -> None:
    _, ready, server = served
    assert await get(f"{server.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert (await get(f"{server.url}/readyz"))[::2] == (503, "not ready\n")
    ready.value = True
    assert (await get(f"{server.url}/readyz"))[::2] == (200, "ready\n")
    ready.value = False
    assert (await get(f"{server.url}/readyz"))[0] == 503
    assert (await get(f"{server.url}/healthz"))[0] == 200


async def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.emitted("prefect.artifact.created", 3)
    line = b'prefect_events_emitted_total{event="prefect.artifact.created"} 3.0'
    assert line in first.render()[0]
    assert b"prefect.artifact.created" not in second.render()[0]


async def test_server_closes_and_frees_its_port() -> None:
    server = await serve(Metrics(), "127.0.0.1", 0, lambda: True)
    assert server.port > 0
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{server.url}/healthz")
