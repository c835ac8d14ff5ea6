"""Running the worker process: broker check, topics, metrics server, Faust worker, shutdown.

Faust's worker installs SIGTERM/SIGINT handlers that stop the agents, flush the producer and
commit what was processed before the process exits; `shutdown_timeout_s` bounds how long that may
take.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import faust
from mode.threads import WorkerThread

from topology import admin, diagnostics, kept_state, logs
from topology.app import TopicNames, Worker, table_dir
from topology.config import ConfigError, Settings
from topology.embedded_broker import EmbeddedBroker
from topology.metrics import Metrics, MetricsServer, listen
from topology.stopping import catch_stop_signals, unless_stopped

log = logging.getLogger("prefect_events")


async def prepare(settings: Settings) -> None:
    """Fail fast with one line if Kafka is unreachable; create every topic with its partitions;
    refuse a kept RocksDB directory that is ahead of its changelogs."""
    await admin.wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
    names = TopicNames(settings)
    await admin.ensure_topics(settings.bootstrap_servers, names.specs())
    if settings.store.startswith("rocksdb://"):
        await kept_state.check(
            settings.bootstrap_servers, table_dir(settings), names.changelogs(), settings.partitions
        )


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ, arenas: int = 2) -> bool:
    """glibc gives each thread that allocates (Faust's consumer thread, RocksDB's background
    threads) an arena of its own, up to 8 per core, and keeps what is freed there: 1M collections
    held 450 MB RSS with glibc's default, 416 MB with 2 arenas, at the same throughput. Runs
    before any thread starts; MALLOC_ARENA_MAX in the environment wins; not glibc: no-op."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def tune_gc(gen0_threshold: int) -> tuple[int, int, int]:
    """Python's cyclic collector runs after every 700 net allocations by default, and a step's
    batch allocates tens of thousands of objects (records, parsed operations, events) that live
    until the batch is done: the young collections keep finding them alive, promote them, and
    the older collections then walk them, and the rest of the heap, again and again. Collecting
    every 50,000 allocations (older generations every 20 and 100 of those) lets a batch's objects
    die young: the worker's throughput rose by ~20% (7,121-8,045 against 5,937-6,076 msgs/s in
    interleaved runs), for ~10 MB more RSS. Almost everything is freed by reference counting;
    the collector is for cycles. 0 keeps Python's thresholds."""
    if gen0_threshold:
        gc.set_threshold(gen0_threshold, 20, 100)
    return gc.get_threshold()


def build(settings: Settings, metrics: Metrics | None = None) -> Worker:
    worker = Worker(settings, metrics)
    worker.app.task(diagnostics.install)
    diagnostics.reports.append(lambda: worker.consumer.describe())
    return worker


async def serve_health(metrics: Metrics, settings: Settings, ready: Callable[[], bool]) -> MetricsServer:
    """Listen before Faust starts, on the loop it will run: /healthz answers and /readyz says 503
    while the tables recover (minutes, with much state). Bound before the embedded broker starts
    and Kafka is asked, as the forwarder does: a port in use is the one line at start, not a
    traceback from inside a worker that has joined its group, nor a line after a broker's start."""
    server = await listen(metrics, settings.metrics_host, settings.metrics_port, ready)
    log.info("metrics on %s/metrics", server.url)
    return server


def check_data_dir(settings: Settings) -> None:
    """RocksDB opens its files only once partitions are assigned, and a directory it cannot write
    was a traceback per table partition from a worker that had joined its group: checked first."""
    if not settings.store.startswith("rocksdb://"):
        return
    path = settings.data_dir
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"data_dir: {path!r} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot write to {path!r}: {exc.strerror or exc}") from None


def warn_of_earlier_tables(settings: Settings) -> None:
    """Stores from before one table directory per app_id are not read: say so, once, at start."""
    if not settings.store.startswith("rocksdb://"):
        return
    earlier = kept_state.earlier_layout(settings.data_dir)
    if earlier is not None:
        log.warning(
            "%s holds table stores named by table alone, from an earlier version: not used. The "
            "tables live in %s now (one directory per app_id) and are rebuilt from their "
            "changelogs; to keep the old stores instead, stop the worker and move them there if "
            "they are this app_id's",
            earlier,
            table_dir(settings),
        )


def for_embedded_broker(settings: Settings, bootstrap_servers: str) -> Settings:
    """The embedded broker lives in memory and starts empty, so state must too (a kept RocksDB
    directory would claim offsets it never had); its defects want one record per changelog
    batch and a short fetch wait (README, "The embedded broker")."""
    return dataclasses.replace(
        settings,
        bootstrap_servers=bootstrap_servers,
        store="memory://",
        fetch_max_wait_ms=min(settings.fetch_max_wait_ms, 10),
        changelog_batch_records=1,
    )


def overridden(before: Settings, after: Settings, *, broker_given: bool = False) -> str:
    """The settings `for_embedded_broker` changed, as `name=value (was value)`; empty when the
    user's were those already. The broker address only when the user gave one (`broker_given`):
    the default's replacement is logged on its own line."""
    return ", ".join(
        f"{f.name}={getattr(after, f.name)} (was {getattr(before, f.name)})"
        for f in dataclasses.fields(Settings)
        if (broker_given or f.name != "bootstrap_servers")
        and getattr(after, f.name) != getattr(before, f.name)
    )


def log_overrides(
    before: Settings, after: Settings, write: Callable[[str], object], *, broker_given: bool = False
) -> None:
    """One line naming what the embedded broker overrode, if anything: flags and variables that
    were given and not taken should not go unnoticed."""
    changed = overridden(before, after, broker_given=broker_given)
    if changed:
        write(f'the embedded broker overrides {changed} (README, "The embedded broker")')


def log_thread_deaths_while_stopping(stopping: Callable[[], bool]) -> Callable[[], None]:
    """With the broker gone, Faust's consumer thread (a mode WorkerThread) dies while the worker
    stops (aiokafka's fetcher, cancelled in the retry of a request the lost connection failed), and
    Python printed `Exception in thread Thread-1:` and three chained tracebacks above the shutdown's
    own ERROR line. While `stopping()`, such a death is one WARNING line, `type: message` of the
    error and of the one it interrupted; any other thread's error, or one before the stop, goes to
    the hook there was. Returns the function that puts that hook back."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        exc, thread = args.exc_value, args.thread
        if (
            not isinstance(thread, WorkerThread)
            or exc is None
            or args.exc_type is SystemExit
            or not stopping()
        ):
            previous(args)
            return
        during = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        after = f" (after {admin.one_line(during)})" if during is not None else ""
        log.warning("%s ended while stopping: %s%s", thread.name, admin.one_line(exc), after)

    def restore() -> None:
        threading.excepthook = previous

    threading.excepthook = hook
    return restore


class _FaustWorker(faust.Worker):
    """Faust's worker, minus the debugger that mode starts on SIGUSR2 (from the first moment:
    a recovery can take minutes before the app's tasks run), and with a bound on shutdown."""

    shutdown_timeout_s: float = 0.0
    on_forced_exit: Callable[[], None] = staticmethod(lambda: None)
    _watchdog: threading.Timer | None = None
    _stopping: tuple[str, float] | None = None  # the signal that began the shutdown, and when
    signalled_before: Sequence[signal.Signals] = ()  # caught after the start-up's checks

    def _on_sigusr2(self) -> None:
        diagnostics.ignore_debugger_signal()

    def install_signal_handlers(self) -> None:
        """Faust's handlers replace the start-up's (run_worker): a signal caught between the two
        begins the shutdown now, as it would have had it come a moment later."""
        super().install_signal_handlers()
        if self.signalled_before:
            self._schedule_shutdown(self.signalled_before[0])

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        """Faust's stop waits for the broker (the commit, leaving the group) without a bound: with
        the broker gone it never ended, and an orchestrator's SIGKILL came without a word."""
        if self._stopping is None:
            self._stopping = (signal.name, time.monotonic())
            log.info(
                "%s: stopping: finishing the batch in hand, then committing and leaving the group",
                signal.name,
            )
        else:
            log.info(
                "%s while stopping: still stopping (at most %gs in all)", signal.name, self.shutdown_timeout_s
            )
        if not self._signal_stop_time and self.shutdown_timeout_s:
            self._watchdog = threading.Timer(self.shutdown_timeout_s, self._force_exit, args=(signal,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(signal)

    @property
    def stopping(self) -> bool:
        """A signal has begun the shutdown."""
        return self._stopping is not None

    def shutdown_finished(self) -> None:
        """Faust's shutdown is over: what is left (stopping the embedded broker) is not its wait."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._stopping is not None:
            name, started = self._stopping
            log.info("stopped on %s after %.1fs", name, time.monotonic() - started)

    def _force_exit(self, signal: signal.Signals) -> None:
        log.error(
            "shutdown on %s did not finish within %gs (shutdown_timeout_s; is the broker "
            "reachable?): exiting now; input processed but not committed is read again on restart",
            signal.name,
            self.shutdown_timeout_s,
        )
        self.on_forced_exit()
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_TIMEOUT)


EXIT_SHUTDOWN_TIMEOUT = 75  # EX_TEMPFAIL: nothing is lost, the restart replays the uncommitted tail


def run_worker(
    settings: Settings,
    *,
    embedded_broker: bool = False,
    broker_given: bool = False,
    on_ready: Callable[[Settings], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. With `embedded_broker`, a Tansu broker lives as long as we do
    (`broker_given`: the user named a broker, which it replaces)."""
    limit_malloc_arenas()
    logs.configure(settings)
    check_data_dir(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust's worker runs the loop it finds set
    metrics = Metrics()
    worker: Worker | None = None  # /readyz: 503 until it is built and ready
    if settings.metrics_port:
        loop.run_until_complete(
            serve_health(metrics, settings, lambda: worker is not None and worker.ready())
        )
    broker = None
    try:
        # Until Faust's own handlers replace these (_FaustWorker.install_signal_handlers): a
        # signal ends the start-up in order, the embedded broker stopped with it, where its
        # default action used to end the worker without a word.
        stop = asyncio.Event()
        received = catch_stop_signals(loop, stop)
        if embedded_broker:
            broker = EmbeddedBroker().start()
            given, settings = settings, for_embedded_broker(settings, broker.bootstrap_servers)
            log.info("embedded broker (Tansu) at %s, pid %d", settings.bootstrap_servers, broker.pid)
            log_overrides(given, settings, log.info, broker_given=broker_given)
        warn_of_earlier_tables(settings)  # as the worker will run: the embedded broker's is memory://
        # On the loop the health server listens on: run on a loop of its own, the wait for Kafka
        # left that server bound but unanswered, and a probe timed out on a live process.
        prepared = loop.run_until_complete(unless_stopped(prepare(settings), stop))
        if received:  # also one that came as the checks finished
            log.info("stopped on %s while starting: nothing was processed", received[0].name)
            return 0
        assert prepared is not None  # cancelled only by a signal
        prepared.result()
        if on_ready is not None:
            on_ready(settings)
        worker = build(settings, metrics)
        faust_worker = _FaustWorker(
            worker.app,
            loglevel=settings.log_level.upper(),
            logging_config=logs.logging_config(settings),
            redirect_stdouts=False,
        )
        faust_worker.shutdown_timeout_s = settings.shutdown_timeout_s
        faust_worker.signalled_before = received
        if broker is not None:
            faust_worker.on_forced_exit = broker.stop
        # At WARNING and above Faust adds a terminal spinner and lowers the root logger to DEBUG,
        # so every library debug call builds a record (~7% of CPU measured): no spinner.
        faust_worker.spinner = None
        log.debug("garbage collection thresholds %s", tune_gc(settings.gc_gen0_threshold))
        restore_excepthook = log_thread_deaths_while_stopping(lambda: faust_worker.stopping)
        try:
            faust_worker.execute_from_commandline()
        finally:
            faust_worker.shutdown_finished()
            restore_excepthook()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if broker is not None:
            broker.stop()
    return 0
