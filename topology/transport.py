"""Per-app consumer fetch wait for Faust's aiokafka driver.

Faust hard-codes ``fetch_max_wait_ms=1500`` when it builds the worker's AIOKafkaConsumer, and has
no setting for it. A fetch that cannot fill ``fetch_min_bytes`` waits that long; on Tansu new
data does not wake it (README, "The embedded broker"), so every consumer hop adds up to 0.75 s.
On real Kafka it is a legitimate latency-versus-requests knob.

How it is done, without touching Faust globally: :func:`configure_fetch_wait` installs, through the
public ``App.transport`` setter, a subclass of the aiokafka driver's Transport for that one app.
Its consumer thread lets Faust build the AIOKafkaConsumer exactly as usual (every other setting
Faust passes is kept, including ones future Faust versions add) and then replaces only the fetch
wait on the not-yet-started consumer, before ``start()`` hands it to aiokafka's Fetcher.

Checked against faust-streaming 0.15.3 (``faust/transport/drivers/aiokafka.py``:
``AIOKafkaConsumerThread._create_worker_consumer`` passes ``fetch_max_wait_ms=1500``;
``_create_client_consumer`` passes nothing, i.e. aiokafka's 500) and aiokafka 0.14.0
(``AIOKafkaConsumer.__init__`` stores the value in ``_fetch_max_wait_ms``; ``start()`` reads it
once to build the Fetcher). If either layout changes, consumer creation fails loudly instead of
silently keeping 1500.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import faust
from faust.transport import by_url
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import AppT
from faust.types.transports import ConsumerT
from yarl import URL

__all__ = [
    "FAUST_DEFAULT_FETCH_MAX_WAIT_MS",
    "FetchWaitTransport",
    "configure_fetch_wait",
]

#: What faust-streaming 0.15.3 passes for the worker consumer.
FAUST_DEFAULT_FETCH_MAX_WAIT_MS = 1500

_ATTR = "_fetch_max_wait_ms"


class FetchWaitConsumerThread(AIOKafkaConsumerThread):
    """Builds the consumer the way Faust does, then sets our fetch wait on it."""

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = super()._create_consumer(loop)
        transport = self.transport
        if not isinstance(transport, FetchWaitTransport):  # pragma: no cover - wiring bug
            raise TypeError(f"expected FetchWaitTransport, got {type(transport).__name__}")
        _set_fetch_wait(consumer, transport.fetch_max_wait_ms)
        return consumer


class FetchWaitConsumer(Consumer):
    """The driver's Consumer, running :class:`FetchWaitConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(Transport):
    """The aiokafka driver's Transport with a configurable consumer fetch wait."""

    Consumer: ClassVar[type[ConsumerT]] = FetchWaitConsumer

    def __init__(
        self,
        url: list[URL],
        app: AppT,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        fetch_max_wait_ms: int = FAUST_DEFAULT_FETCH_MAX_WAIT_MS,
    ) -> None:
        super().__init__(url, app, loop)
        self.fetch_max_wait_ms = _validated(fetch_max_wait_ms)


def configure_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make `app`'s Kafka consumer use `fetch_max_wait_ms`; no other app in the process changes.

    Call it after creating the app and before the worker starts (before ``app.consumer`` is first
    used); calling it again before that just changes the value.
    """
    wait = _validated(fetch_max_wait_ms)
    if app._consumer is not None:
        raise RuntimeError("configure_fetch_wait() must run before the app's consumer is created")
    current = app._transport
    if isinstance(current, FetchWaitTransport):
        current.fetch_max_wait_ms = wait
        return
    urls = app.conf.broker_consumer
    try:
        driver: type[Any] | None = by_url(urls[0])
    except Exception:  # unknown scheme, or a driver whose client library is not installed
        driver = None
    if driver is None or not issubclass(driver, Transport):
        raise ValueError(
            f"fetch wait is only configurable with the aiokafka driver (kafka://), not {urls[0].scheme}://"
        )
    app.transport = FetchWaitTransport(urls, app, fetch_max_wait_ms=wait)


def _validated(fetch_max_wait_ms: int) -> int:
    if isinstance(fetch_max_wait_ms, bool) or not isinstance(fetch_max_wait_ms, int):
        raise TypeError(f"fetch_max_wait_ms must be an int, got {fetch_max_wait_ms!r}")
    if fetch_max_wait_ms < 0:
        raise ValueError(f"fetch_max_wait_ms must be >= 0, got {fetch_max_wait_ms}")
    return fetch_max_wait_ms


def _set_fetch_wait(consumer: Any, fetch_max_wait_ms: int) -> None:
    """Replace the wait an unstarted AIOKafkaConsumer will hand to its Fetcher."""
    if not hasattr(consumer, _ATTR) or getattr(consumer, "_fetcher", None) is not None:
        raise RuntimeError(
            f"cannot set fetch_max_wait_ms on {type(consumer).__name__}: aiokafka changed "
            f"(no unstarted {_ATTR}); re-check topology/transport.py against this version"
        )
    setattr(consumer, _ATTR, fetch_max_wait_ms)
