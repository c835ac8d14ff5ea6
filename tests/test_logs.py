"""Log output: what a broker outage leaves in the log."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from aiokafka.errors import KafkaConnectionError
from mode.threads import WorkerThread

from topology.logs import QuietRepeats


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_broker_errors_pass_once_per_window_and_say_how_many_were_held_back() -> None:
    now = [0.0]
    quiet = QuietRepeats(window_s=30.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(75):  # one a second for 75 s, each with its own arguments
        now[0] = float(second)
        record = _record("aiokafka", template, 1, f"attempt {second}")
        if quiet.filter(record):
            passed.append(record.getMessage())
    assert passed == [
        "Unable connect to node with id 1: attempt 0",
        "Unable connect to node with id 1: attempt 30 [29 more like this in the 30s before]",
        "Unable connect to node with id 1: attempt 60 [29 more like this in the 30s before]",
    ]


def test_other_templates_levels_and_loggers_are_their_own_kinds() -> None:
    quiet = QuietRepeats(clock=lambda: 0.0)
    records = [
        _record("aiokafka", "Unable to update metadata from %s", [1]),
        _record("aiokafka", "Unable to update metadata from %s", [1]),
        _record("aiokafka", "Unable to update metadata from %s", [1], level=logging.WARNING),
        _record("aiokafka.consumer.fetcher", "Unable to update metadata from %s", [1]),
        _record("prefect_events", "dead letter %s", "x"),
        _record("prefect_events", "dead letter %s", "x"),
    ]
    assert [quiet.filter(r) for r in records] == [True, False, True, True, True, True]


class _ConsumerThread(WorkerThread):
    """Stands for Faust's consumer thread (mode's WorkerThread), dying as it did with the broker
    gone: aiokafka's fetcher, cancelled while retrying a request the lost connection failed."""

    def __init__(self) -> None:
        threading.Thread.__init__(self, name="Thread-1")

    def run(self) -> None:
        try:
            raise KafkaConnectionError("Connection at 127.0.0.1:1 closed")
        except KafkaConnectionError:
            self._retry_after_backoff()

    def _retry_after_backoff(self) -> None:
        raise asyncio.CancelledError()  # the stop cancelled the sleep before the retry


def _die(thread: threading.Thread) -> None:
    thread.start()
    thread.join()


def test_faust_thread_dying_while_the_worker_stops_is_one_warning_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Python printed `Exception in thread Thread-1:` and three chained tracebacks above the
    shutdown's own ERROR line; before the stop, or from another thread, an error goes to the
    hook there was."""
    from topology.runner import log_thread_deaths_while_stopping

    previous: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: previous.append(args.thread.name))
    stopping = [False]
    restore = log_thread_deaths_while_stopping(lambda: stopping[0])
    try:
        _die(_ConsumerThread())  # not stopping: not ours to quiet
        stopping[0] = True
        _die(threading.Thread(target=lambda: 1 / 0, name="other"))  # not Faust's
        with caplog.at_level(logging.WARNING, logger="prefect_events"):
            _die(_ConsumerThread())
    finally:
        restore()
    assert threading.excepthook is not None and previous == ["Thread-1", "other"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "Thread-1 ended while stopping: CancelledError "
            "(after KafkaConnectionError: Connection at 127.0.0.1:1 closed)",
        )
    ]
    assert caplog.records[0].exc_info is None
