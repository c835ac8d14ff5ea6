"""The worker's Kafka consumer: Faust's aiokafka driver with a fetch wait and a commit ledger.

Commit ledger: the consumer commits what `topology.commits.CommitLedger` says is finished, not
what Faust's streams acked (that module says why). The hooks are Faust's own consumer methods:
``_getmany`` (what was fetched), ``seek``/``perform_seek`` and the rebalance callbacks (positions),
``_filter_tps_with_pending_acks``/``_new_offset`` (what to commit). Faust's read-offset filter is
switched off: it dropped records re-read after a seek (its "DROPPED MESSAGE ROFF") and made gaps
out of a stale fetch; the ledger does both jobs per epoch.

Fetch wait:

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
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import faust
from faust.transport import by_url
from faust.transport.consumer import RecordMap, ensure_TP
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TP, AppT
from faust.types.transports import ConsumerT
from yarl import URL

from topology.commits import CommitLedger

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


class _NoReadOffsets(dict[TP, int | None]):
    """Faust's per-partition read offsets, switched off: every record reads as new."""

    def __getitem__(self, tp: TP) -> None:
        return None

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


class FetchWaitConsumer(Consumer):
    """The driver's Consumer, running :class:`FetchWaitConsumerThread`, committing by ledger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger: CommitLedger[TP] = CommitLedger()
        self._read_offset = _NoReadOffsets()

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        # What the consumer fetched, before Faust's getmany drops any of it (flow stopped,
        # generation changed, partition not active): the consumer's position moved past it.
        fetched_in = self.ledger.epochs()
        records = await super()._getmany(active_partitions, timeout)
        acking = self.app.topics.acks_enabled_for
        for tp, batch in (records or {}).items():
            if acking(tp.topic):
                self.ledger.fetched(tp, [r.offset for r in batch], fetched_in)
        return records

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        if self.app.topics.acks_enabled_for(partition.topic):
            self.ledger.seek(partition, offset)

    async def perform_seek(self) -> None:
        """Faust seeks every stream partition to its committed offset once recovery is done."""
        committed = {
            ensure_TP(tp): offset if offset is not None and offset >= 0 else None
            for tp, offset in (await self.seek_to_committed()).items()
        }
        tps = {tp: o for tp, o in committed.items() if self.app.topics.acks_enabled_for(tp.topic)}
        unknown = [tp for tp, offset in tps.items() if offset is None]
        # No commit yet: the group starts at the log start (auto_offset_reset "earliest").
        starts = await self.earliest_offsets(*unknown) if unknown else {}
        for tp, offset in tps.items():
            self.ledger.position(tp, offset if offset is not None else starts.get(tp))
        self._committed_offset.update({tp: o for tp, o in committed.items() if o})

    async def rewind(self) -> None:
        """Seek back the partitions whose next record was lost on its way (commits.py)."""
        await self._rewind(self.ledger.rewinds(), "records after it arrived first")

    def resume_flow(self) -> None:
        # Faust calls this right after flow_control.resume() has emptied every stream queue.
        super().resume_flow()
        rewinds = self.ledger.resume()
        if rewinds:
            self.add_future(self._rewind(rewinds, "queued records were dropped on resume"))

    async def rewind_stalled(self, after_s: float) -> None:
        await self._rewind(self.ledger.stalled(after_s), f"nothing taken for {after_s:g} s")

    async def _rewind(self, offsets: Mapping[TP, int], why: str) -> None:
        for tp, offset in offsets.items():
            self.log.info("rewinding %s[%d] to %d: %s", tp.topic, tp.partition, offset, why)
            await self.seek(tp, offset)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        for tp in assigned:
            if self.app.topics.acks_enabled_for(tp.topic):
                self.ledger.assign(tp)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)  # commits what is finished first
        self.ledger.forget(revoked)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        # Faust's own ack bookkeeping decides nothing here; keep it from growing.
        for acked in self._acked.values():
            acked.clear()
        for index in self._acked_index.values():
            index.clear()
        for tp in self.ledger.positions():
            if topics is None or tp in topics or tp.topic in topics:
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        return self.ledger.committable(tp)


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
