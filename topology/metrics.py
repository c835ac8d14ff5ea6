"""Prometheus metrics and the health endpoints of a worker and of the forwarder.

`Metrics` owns its own `CollectorRegistry` rather than using the process-wide default, so tests
(and several apps in one process) each get clean counters. The worker calls the plain methods
below; nothing else in the code base touches prometheus_client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from topology.config import ConfigError

PROCESSING_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
END_TO_END_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)


class Metrics:
    """Every metric a worker exposes, in one registry; update them with the methods."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._input = Counter(
            "prefect_events_input_messages", "Raw input messages consumed.", ["topic"], registry=r
        )
        self._emitted = Counter(
            "prefect_events_emitted", "Events produced to the output topics.", ["event"], registry=r
        )
        self._dead_letters = Counter(
            "prefect_events_dead_letters",
            "Messages written to the dead-letter topic, by reason code.",
            ["reason"],
            registry=r,
        )
        self._unknown_deletes = Counter(
            "prefect_events_unknown_deletes",
            "Deletes of artifacts the processor never saw (nothing emitted).",
            registry=r,
        )
        self._related_truncated = Counter(
            "prefect_events_related_truncated",
            "Events whose related list was cut to Prefect's limit of 100.",
            registry=r,
        )
        self._forwarded = Counter(
            "prefect_events_forwarded",
            "Events accepted by a Prefect server (forward sink).",
            registry=r,
        )
        self._forward_pending_since: float | None = None
        self._forward_batch_age = Gauge(
            "prefect_events_forward_batch_age_seconds",
            "Seconds since the forward sink fetched the batch it is still delivering; 0 when none is.",
            registry=r,
        )
        self._forward_batch_age.set_function(self._forward_age)
        self._processing = Histogram(
            "prefect_events_processing_seconds",
            "Time to process one batch of input messages.",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self._batch_phases = Histogram(
            "prefect_events_batch_phase_seconds",
            "Time one batch spent in each phase of its step: computing, then waiting for the "
            "broker to acknowledge its events, then its state.",
            ["step", "phase"],
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self._end_to_end = Histogram(
            "prefect_events_end_to_end_seconds",
            "From an input record's Kafka timestamp to its events being produced.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self._lag = Gauge(
            "prefect_events_consumer_lag",
            "Input messages not yet processed, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self._lag_series: dict[tuple[str, int], int] = {}
        self._table_keys = Gauge(
            "prefect_events_table_keys", "Keys held in each state table.", ["table"], registry=r
        )

    def input(self, topic: str, n: int = 1) -> None:
        self._input.labels(topic=topic).inc(n)

    def emitted(self, event: str, n: int = 1) -> None:
        self._emitted.labels(event=event).inc(n)

    def dead_letter(self, reason: str, n: int = 1) -> None:
        """`reason` is a short machine code (`invalid_json`, `missing_field`, ...)."""
        self._dead_letters.labels(reason=reason).inc(n)

    def unknown_delete(self, n: int = 1) -> None:
        self._unknown_deletes.inc(n)

    def related_truncated(self, n: int = 1) -> None:
        self._related_truncated.inc(n)

    def forwarded(self, n: int = 1) -> None:
        self._forwarded.inc(n)

    def forward_pending(self, since: float | None) -> None:
        """The forward sink holds a batch fetched at `since` (time.monotonic()); None: it is done.
        The age is computed at each scrape, so it grows while a server outage is retried."""
        self._forward_pending_since = since

    def _forward_age(self) -> float:
        since = self._forward_pending_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def processing(self, seconds: float) -> None:
        """Observe how long one batch took."""
        self._processing.observe(seconds)

    def batch_phases(self, step: str, compute: float, publish: float, state: float) -> None:
        """Where a batch's time went: `compute` (the step's logic), `publish` (its events, and the
        records its state will refer to, acknowledged), `state` (its state records acknowledged
        and stored). Compute-bound or broker-bound, told apart per step."""
        for phase, seconds in (("compute", compute), ("publish", publish), ("state", state)):
            self._batch_phases.labels(step=step, phase=phase).observe(seconds)

    def end_to_end(self, record_timestamp_ms: int, now: float | None = None) -> None:
        """Observe the delay from an input record's timestamp (ms since epoch) until now."""
        now = time.time() if now is None else now
        self._end_to_end.observe(max(0.0, now - record_timestamp_ms / 1000))

    def consumer_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition the worker holds now, (topic, partition) → messages; series
        of partitions it no longer holds are removed, so that a sum over workers counts each once."""
        for topic, partition in set(self._lag_series) - set(lags):
            self._lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self._lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._lag_series = dict(lags)

    def table_keys(self, table: str, n: int) -> None:
        self._table_keys.labels(table=table).set(n)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) a scraper asking with `accept` expects."""
        encoder, content_type = choose_encoder(accept)
        return encoder(_WithoutCreated(self.registry)), content_type


class _WithoutCreated:
    """The registry minus counters' and histograms' `*_created` series.

    They double the series count and nobody here alerts on them; prometheus_client only offers a
    process-wide switch (`disable_created_metrics`), which would leak into other registries.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


@dataclass
class MetricsServer:
    """A running metrics/health HTTP server; `port` is the bound one (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(metrics: Metrics, host: str, port: int, ready: Callable[[], bool]) -> MetricsServer:
    """Serve `/metrics`, `/healthz` (alive) and `/readyz` (`ready()`), until closed.

    Liveness and readiness are separate so an orchestrator restarts a hung process but only
    holds traffic (and rollouts) back while a worker is still recovering its tables.
    """

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return MetricsServer(runner, host, int(bound))


async def listen(metrics: Metrics, host: str, port: int, ready: Callable[[], bool]) -> MetricsServer:
    """`serve`, with a port in use or a bad host as one ConfigError line rather than a traceback
    (the worker and the forwarder bind it before they contact Kafka)."""
    try:
        return await serve(metrics, host, port, ready)
    except OSError as exc:
        # asyncio words a failed bind at length around the OS's reason; a bad host is a gaierror
        # whose errno is negative (EAI_*), with its own text.
        errno = exc.errno or 0
        reason = os.strerror(errno) if errno > 0 else (exc.strerror or str(exc))
        raise ConfigError(
            f"metrics server: cannot listen on {host}:{port}: "
            f"{reason} (metrics_host, metrics_port; port 0 disables the server)"
        ) from None
