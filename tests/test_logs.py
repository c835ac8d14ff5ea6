"""Log output: what a broker outage leaves in the log."""

from __future__ import annotations

import logging

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
