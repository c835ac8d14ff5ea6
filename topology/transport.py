"""The worker's Kafka consumer: Faust's aiokafka driver with a fetch wait, a commit ledger and
the steps' intakes (``topology.intake``: a step's records handed over a fetch at a time).

Commit ledger: :class:`WorkerConsumer` commits what `topology.commits.CommitLedger` says is
finished, not what Faust's streams acked (that module says why). The hooks are Faust's own
consumer methods: ``_getmany`` (what was fetched), ``seek``/``perform_seek`` and the rebalance
callbacks (positions), ``_filter_tps_with_pending_acks``/``_new_offset`` (what to commit). Faust's
read-offset filter is switched off: it dropped records re-read after a seek (its "DROPPED
MESSAGE ROFF") and made gaps out of a stale fetch; the ledger does both jobs per epoch.

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
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

import faust
from faust.transport import by_url
from faust.transport.consumer import CONSUMER_FETCHING, RecordMap, ensure_TP
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TP, AppT
from faust.types.transports import ConsumerT
from mode.utils.queues import ThrowableQueue
from yarl import URL

from topology.commits import CommitLedger
from topology.crash import exit_for_replay
from topology.intake import Intake

__all__ = [
    "FAUST_DEFAULT_FETCH_MAX_WAIT_MS",
    "FetchWaitTransport",
    "configure_fetch_wait",
]

#: What faust-streaming 0.15.3 passes for the worker consumer.
FAUST_DEFAULT_FETCH_MAX_WAIT_MS = 1500

_ATTR = "_fetch_max_wait_ms"

#: Of the rebalance timeout, how long a revocation waits for the batch in flight; the rest is
#: for the commit and the JoinGroup that must follow within it.
REVOKE_WAIT_SHARE = 0.8


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


class ChangelogQueue(ThrowableQueue[Any]):
    """Faust's changelog queue (changelog records on their way to its recovery service), refusing
    the records `refuse` says are stale, at the moment they would be queued.

    Faust's conductor may queue a record well after the consumer handed it over: from a task of
    its own when the queue is full, and after waiting for the producer's buffer. A flow resume
    that empties the queue meanwhile drops the records before it; queued and taken, it would move
    the recovery service's offset past them, and a standby partition read again from that offset
    (WorkerConsumer._reread_standbys) would never have them."""

    def __init__(self, *args: Any, refuse: Callable[[Any], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refuse = refuse

    def put_nowait(self, item: Any) -> None:  # the last step of put(), the conductor's slow path
        if not self._refuse(item):
            super().put_nowait(item)

    def force_put_nowait(self, item: Any) -> None:  # the conductor's put_nowait_enhanced
        if not self._refuse(item):
            super().force_put_nowait(item)


class WorkerConsumer(Consumer):
    """The driver's Consumer, running :class:`FetchWaitConsumerThread`, committing by ledger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger: CommitLedger[TP] = CommitLedger()
        self._fetches_started = self._fetches_done = 0
        self._seeking = asyncio.Lock()
        self._rebalances = 0  # revocations and assignments seen
        self._read_offset = _NoReadOffsets()
        self.intakes: dict[str, Intake] = {}  # topic → the step that takes its records in bulk
        self._writers = 0  # state written outside a step's batch (the retention sweep)
        self._no_writers = asyncio.Event()
        self._no_writers.set()
        self._revoking = False
        # Flow resumes (each empties Faust's changelog queue; _reread_standbys says why), the
        # resume after which standby partitions were last sought, and the resumes seen when the
        # fetch in hand began.
        self._resumes = self._standbys_sought = self._fetch_resumes = 0
        # Standby records handed to Faust, with the resumes seen as their fetch began: the
        # changelog queue refuses those that Faust queues only after a later resume.
        self._standby_fetches: WeakKeyDictionary[Any, int] = WeakKeyDictionary()
        self._install_changelog_queue()

    def _install_changelog_queue(self) -> None:
        """Faust's changelog queue, as Faust makes it, refusing stale standby records."""
        tables: Any = self.app.tables
        if tables._changelog_queue is not None:  # pragma: no cover - Faust's start-up changed
            raise RuntimeError("Faust made its changelog queue before the consumer")
        tables._changelog_queue = ChangelogQueue(
            maxsize=self.app.conf.stream_buffer_maxsize,
            flow_control=self.app.flow_control,
            clear_on_resume=True,
            refuse=self._stale_standby,
        )

    def intake(self, name: str, topics: Iterable[str], max_records: int) -> Intake:
        """The intake of a step reading `topics`: their records skip Faust's per-event path."""
        intake = Intake(name, max_records)
        for topic in topics:
            self.intakes[topic] = intake
        return intake

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop, handing intake topics' records over once per fetch.

        Other records (changelogs, standbys, Faust's own topics) take Faust's path, one
        suspension-aware delivery per fetch instead of one per record; a standby partition's
        records fetched before the flow last resumed are dropped and read again (_reread_standbys).
        Faust's read offsets and gap bookkeeping are off here (the ledger does both), and so is
        its ``commit_every`` (commits follow the ledger, on the commit interval)."""
        intakes = self.intakes
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if self.should_stop:
                    continue
                fetched: dict[Intake, list[Any]] = {}
                others: list[Any] = []
                async for tp, message in self.getmany(timeout=1.0):
                    intake = intakes.get(tp.topic)
                    if intake is None:
                        others.append(message)
                    else:
                        fetched.setdefault(intake, []).append(message)
                resumes = self._fetch_resumes  # as this fetch began
                # Faust waits for flow suspension around each record (four tasks and an
                # asyncio.wait per changelog record in recovery); here once per fetch. Either way a
                # suspension drops the rest of the fetch, and recovery or the ledger reads it again.
                if others:
                    await self.wait_first(self._deliver(others, resumes), self.suspend_flow.wait())
                for intake, messages in fetched.items():
                    # Flow suspended (rebalance) while waiting for room: the records are
                    # dropped, and the ledger rewinds their partitions when flow resumes.
                    await self.wait_first(intake.put(messages), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, messages: list[Any], resumes: int) -> None:
        """Faust's own path, in order: changelogs to recovery, its internal topics to theirs.
        Standby records of a fetch that began before the flow last resumed are left out: the
        standby partitions are read again from the recovery service's offsets (_reread_standbys).
        The others are marked with that fetch, for the changelog queue to refuse them if Faust
        queues one only after a later resume (ChangelogQueue)."""
        callback = self.callback
        standbys = self._standby_offsets()
        for count, message in enumerate(messages, 1):
            if message.tp in standbys:
                if resumes != self._resumes:
                    continue
                self._standby_fetches[message] = resumes
            await callback(message)
            if count % 100 == 0:
                await asyncio.sleep(0)  # let recovery and the steps run during a big fetch

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """State written outside a step's batch (the retention sweep): a revocation and a stop
        wait for it as for a batch in flight. Enter it only while the worker is ready, with no
        await in between, so that a revocation begun since cannot miss it."""
        self._writers += 1
        self._no_writers.clear()
        try:
            yield
        finally:
            self._writers -= 1
            if not self._writers:
                self._no_writers.set()

    async def wait_empty(self) -> None:
        """Before a revocation commits, and before the worker stops: the batches in flight and
        the sweep finish first, then Faust's own wait ends in the commit of what they did.

        A revocation waits at most `revoke_wait_s`: past the group's rebalance timeout the
        coordinator gives the partitions to another worker, and writes landing after that would
        put state this worker no longer owns into their changelogs. Exiting instead leaves
        the batch to the partitions' next owner, from the last commit."""
        if self._revoking:
            try:
                await asyncio.wait_for(self._in_flight_done(), self.revoke_wait_s)
            except TimeoutError:
                exit_for_replay(
                    "revocation: the batch in flight did not finish within %gs of the %gs "
                    "rebalance timeout",
                    self.revoke_wait_s,
                    self.app.conf.broker_rebalance_timeout,
                )
        else:
            await self._in_flight_done()
        await super().wait_empty()

    async def commit_finished(self, topics: Collection[str]) -> bool:
        """Commit what the steps have finished; whether nothing finished on `topics` is left
        uncommitted then (False: the commit failed, or partitions moved meanwhile).

        A commit already under way took its offsets before the caller's point: wait for it, then
        commit again."""
        while await self.maybe_wait_for_commit_to_finish():
            pass
        await self.commit()
        return not self.ledger.uncommitted(topics)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Faust records an offset as committed whether or not the broker took it (its
        `_committed_offset`, after a CommitFailedError "already rebalanced" too): the ledger
        hears only of commits that took."""
        took = bool(await super()._commit(offsets))
        if took:
            self.ledger.committed(offsets)
        return took

    @property
    def revoke_wait_s(self) -> float:
        return REVOKE_WAIT_SHARE * float(self.app.conf.broker_rebalance_timeout)

    async def _in_flight_done(self) -> None:
        for intake in set(self.intakes.values()):
            if intake.in_flight:
                self.log.info("waiting for the %s batch in flight", intake.name)
            await intake.idle()
        if self._writers:
            self.log.info("waiting for the retention sweep to finish its writes")
        await self._no_writers.wait()

    def stop_flow(self) -> None:
        # Faust stops its streams here (rebalance, shutdown); the intakes close with them.
        self._close_intakes()
        super().stop_flow()

    def _close_intakes(self) -> None:
        for intake in set(self.intakes.values()):
            intake.close()

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        if self._standbys_sought != self._resumes:  # between fetches: none is in flight
            self._standbys_sought = self._resumes
            await self._reread_standbys()
        self._fetch_resumes = self._resumes
        # What the consumer fetched, before Faust's getmany drops any of it (flow stopped,
        # generation changed, partition not active): the consumer's position moved past it.
        fetched_in = self.ledger.epochs()
        self._fetches_started += 1
        number = self._fetches_started
        try:
            records = await super()._getmany(active_partitions, timeout)
        finally:
            self._fetches_done = number  # Faust fetches one at a time
        acking = self.app.topics.acks_enabled_for
        for tp, batch in (records or {}).items():
            if acking(tp.topic):
                self.ledger.fetched(tp, [r.offset for r in batch], fetched_in)
        return records

    async def seek(self, partition: TP, offset: int) -> None:
        await self.seek_many({partition: offset})

    async def seek_many(self, offsets: Mapping[TP, int]) -> None:
        """Seek stream partitions together: each pause waits for the fetch in flight, which
        takes up to Faust's poll timeout (a second) when there is nothing to fetch."""
        acked = {tp: o for tp, o in offsets.items() if self.app.topics.acks_enabled_for(tp.topic)}
        for tp, offset in offsets.items():
            if tp not in acked:
                await super().seek(tp, offset)
        if not acked:
            return

        async def seek() -> dict[TP, int | None]:
            for tp, offset in acked.items():
                await super(WorkerConsumer, self).seek(tp, offset)
            return dict(acked)

        await self._seek_quietly(list(acked), seek)

    async def perform_seek(self) -> None:
        """Faust seeks every stream partition to its committed offset once recovery is done."""
        tps = [tp for tp in self.assignment() if self.app.topics.acks_enabled_for(tp.topic)]

        sought: set[TP] = set()

        async def seek() -> dict[TP, int | None]:
            committed = {
                ensure_TP(tp): offset if offset is not None and offset >= 0 else None
                for tp, offset in (await self.seek_to_committed()).items()
            }
            # aiokafka seeks only partitions with a commit above 0 (AIOKafkaConsumer.
            # seek_to_committed); the others stay where the consumer is.
            sought.update(tp for tp, o in committed.items() if o)
            self._committed_offset.update({tp: o for tp, o in committed.items() if o})
            positions = {tp: committed.get(tp) for tp in tps}
            unknown = [tp for tp, offset in positions.items() if offset is None]
            # No commit yet: the group starts at the log start (auto_offset_reset "earliest").
            starts = await self.earliest_offsets(*unknown) if unknown else {}
            return {tp: o if o is not None else starts.get(tp) for tp, o in positions.items()}

        await self._seek_quietly(tps, seek, sought=sought)

    async def _seek_quietly(
        self,
        tps: list[TP],
        seek: Callable[[], Awaitable[dict[TP, int | None]]],
        sought: set[TP] | None = None,
    ) -> None:
        """Seek with the partitions out of every fetch: a fetch that overlaps a seek may bring
        records from either side of it, and the ledger could not tell markers from records that
        Faust dropped. Pause, let the fetch in flight return, seek, tell the ledger, resume."""
        async with self._seeking:  # one at a time: each resumes only what it paused
            paused_before = {tp for tp in tps if tp in self._paused_partitions}
            rebalances = self._rebalances
            for tp in tps:
                self.ledger.seeking(tp)
            self.pause_partitions(tps)
            try:
                await self._fetch_in_flight_done()
                for tp, offset in (await seek()).items():
                    if sought is not None:  # perform_seek: to the committed offsets
                        self.ledger.position(tp, offset, tp in sought)
                    elif offset is not None:
                        self.ledger.seek(tp, offset)
            finally:
                # A rebalance that began meanwhile pauses everything itself, and its recovery
                # resumes the stream partitions when the tables are back: leave them to it.
                if self._rebalances == rebalances:
                    assigned = self.assignment()
                    self.resume_partitions([tp for tp in tps if tp not in paused_before and tp in assigned])

    async def _fetch_in_flight_done(self, timeout_s: float = 5.0) -> None:
        started, deadline = self._fetches_started, time.monotonic() + timeout_s
        while self._fetches_done < started and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def rewind(self) -> None:
        """Seek back the partitions whose next record was lost on its way (commits.py)."""
        await self._rewind(self.ledger.rewinds(), "records after it arrived first")

    def resume_flow(self) -> None:
        # Faust calls this right after flow_control.resume() has emptied every stream queue.
        for intake in set(self.intakes.values()):
            intake.reopen()
        super().resume_flow()
        self._resumes += 1  # the standby partitions are sought again before the next fetch
        rewinds = self.ledger.resume()
        if rewinds:
            self.add_future(self._rewind(rewinds, "queued records were dropped on resume"))

    def _standby_offsets(self) -> Mapping[TP, int | None]:
        """Per standby partition (a changelog this worker follows for another's tables): the last
        offset Faust's recovery service has taken from its changelog queue."""
        recovery = getattr(self.app.tables, "_recovery", None)  # made by the app's start-up
        if recovery is None:
            return {}
        return {tp: recovery.standby_offsets.get(tp) for tp in recovery.standby_tps}

    def standby_partitions(self) -> set[TP]:
        """The changelog partitions this worker follows for another worker's tables."""
        return set(self._standby_offsets())

    def _stale_standby(self, event: Any) -> bool:
        """A standby record whose fetch began before the flow last resumed: the queue it was
        meant for was emptied, and _reread_standbys reads the partition again from before it."""
        began = self._standby_fetches.get(event.message)
        return began is not None and began != self._resumes

    async def _reread_standbys(self) -> None:
        """Read each standby partition again after the last record the recovery service took.

        Every ``flow_control.resume()`` empties Faust's changelog queue, where fetched standby
        records wait for the recovery service, and the consumer has moved past them. Faust seeks
        its standby partitions before it resumes them, but resumes the flow once more when the
        recovery completes, while they are being read: the records queued then never reached
        the standby's store, whose persisted offset went on past them with later ones. A worker
        taking such a partition over reads only the changelog after that offset, so it worked on
        state with holes (collections without the version records of their members). The
        recovery service skips, by offset, what it took already."""
        assigned = self.assignment()
        offsets = {
            tp: max(taken + 1, 0)
            for tp, taken in self._standby_offsets().items()
            if taken is not None and tp in assigned
        }
        if offsets:
            await self.seek_many(offsets)

    async def rewind_stalled(self, after_s: float) -> None:
        await self._rewind(self.ledger.stalled(after_s), f"nothing taken for {after_s:g} s")
        quiet = self.ledger.quiet(after_s)
        if quiet:
            self.log.debug("re-seeking %d quiet partitions to their next record", len(quiet))
            await self._rewind(quiet, None)

    async def _rewind(self, offsets: Mapping[TP, int], why: str | None) -> None:
        if why is not None:
            for tp, offset in offsets.items():
                self.log.info("rewinding %s[%d] to %d: %s", tp.topic, tp.partition, offset, why)
        if offsets:
            await self.seek_many(offsets)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._rebalances += 1
        for tp in assigned:
            if self.app.topics.acks_enabled_for(tp.topic):
                self.ledger.assign(tp)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._rebalances += 1
        # Before anything else: no batch may start once a revocation has begun (wait_empty
        # waits only for the one in flight), and records fetched now are dropped.
        self._close_intakes()
        self._revoking = True
        try:
            await super().on_partitions_revoked(revoked)  # commits what is finished first
        finally:
            self._revoking = False
        self.ledger.forget(revoked)

    def describe(self) -> str:
        """Per stream partition: fetching or not, and the ledger's view (SIGUSR1)."""
        active = self._active_partitions or set()
        lines = [f"consumer: flow {'on' if self.flow_active else 'OFF'}"]
        for intake in sorted(set(self.intakes.values()), key=lambda i: i.name):
            flight = ", batch in flight" if intake.in_flight else ""
            lines.append(f"  intake {intake.name}: {len(intake)} records queued{flight}")
        for tp in sorted(self.assignment()):
            if not self.app.topics.acks_enabled_for(tp.topic):
                continue
            state = "active" if tp in active else "NOT FETCHED"
            if tp in self._paused_partitions:
                state += ", paused"
            if tp in self._buffered_partitions:
                state += ", buffer full"
            p = self.ledger.partitions.get(tp)
            ledger = (
                "-"
                if p is None
                else (
                    f"base {p.base} expected {p.expected} fetched {p.delivered} "
                    f"finished {len(p.finished)} gaps {len(p.gaps)} suspected gaps {len(p.suspects)}"
                )
            )
            lines.append(f"  {tp.topic}[{tp.partition}]: {state}; {ledger}")
        return "\n".join(lines)

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

    def _should_commit(self, tp: TP, offset: int) -> bool:
        # Against the commit the broker took, not the one Faust last tried: one that failed is
        # tried again at the next commit, not only once more input is finished.
        confirmed = self.ledger.confirmed(tp)
        return confirmed is None or offset > confirmed


class FetchWaitTransport(Transport):
    """The aiokafka driver's Transport with a configurable consumer fetch wait."""

    Consumer: ClassVar[type[ConsumerT]] = WorkerConsumer

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
