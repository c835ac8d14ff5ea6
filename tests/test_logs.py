"""Log output: what a broker outage leaves in the log, and what the worker says of its input."""

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


def test_an_unknown_delete_in_the_collections_step_is_not_called_deleted_already(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A delete of an artifact whose create the collections step refused (a dead letter: it was
    never a member) was logged as "deleted already", as a second delete is: the step knows only
    that the artifact is not a member, and says that of both."""
    import time

    from tests import spec_helpers as h
    from tests.topology_driver import Driver, topics
    from topology import config, steps
    from topology.app import Worker
    from topology.steps import InRecord

    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    refused, deleted = h.uid(1), h.uid(2)
    for m in (
        h.create(refused, "report", 0.0, data="x" * 1_500_000),  # its collection event is too large
        h.create(deleted, "report", 1.0),
        h.delete(deleted, 2.0),
    ):
        driver.produce(t.raw_artifacts, h.encode(m))
        driver.run()
    [dead] = driver.logs[(t.dead_letters, 0)]
    assert dict(dead.headers)["prefect-dead-letter-code"] == b"event_too_large"
    deletes = [h.encode(h.delete(refused, 3.0)), h.encode(h.delete(deleted, 4.0))]
    memberships = steps.apply_memberships(
        t,
        [InRecord(t.raw_artifacts, 0, 10 + i, None, d) for i, d in enumerate(deletes)],
        lambda key, _p: driver.tables["memberships"].get(key),
    )
    on = [o for o in memberships.outputs if o.topic == t.artifacts_by_key]  # both handed on
    collections = steps.apply_collections(
        t,
        [InRecord(t.artifacts_by_key, 0, 20 + i, o.key, o.value, tuple(o.headers)) for i, o in enumerate(on)],
        lambda key, _p: driver.tables["collections"].get(key),
    )
    worker = Worker(config.load({"store": "memory://"}, environ={}))
    with caplog.at_level(logging.INFO, logger="prefect_events"):
        worker._report(collections, time.perf_counter(), [])
    assert [r.getMessage() for r in caplog.records] == [
        "2 deletes of artifacts without a live membership, nothing emitted: "
        f"{refused} deleted already or never a member of its collection ({t.raw_artifacts}[0]@10), "
        f"{deleted} deleted already or never a member of its collection ({t.raw_artifacts}[0]@11)"
    ]
