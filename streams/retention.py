"""The retention sweep's two rules: how far event time has got (a watermark) and when a record may
be forgotten. The sweep only bounds memory: it must never change an event.

Results are decided per message, by the message's own `occurred` (streams.lineage.is_expired: a
message at t sees state last seen at L iff t - L <= retention). The sweep deletes by a watermark W,
the newest `occurred` its stream has applied, instead; a message behind W by more than the
retention would otherwise find state its own rule still keeps. The allowed lateness G is how far
behind W a message may be and still get exactly what it would get with no sweep at all (`forgettable`
proves it). Streams: the offline pipeline has one; the worker has one per table partition, so a
partition draining a backlog is not swept by the event time of partitions that are live.
"""

from __future__ import annotations

import time

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
DEFAULT_RETENTION_US = 7 * DAY_US
DEFAULT_ALLOWED_LATENESS_US = 24 * HOUR_US


def advance(watermark_us: int, occurred_us: int, now_us: int, lateness_us: int) -> int:
    """The watermark after a message at `occurred_us` (or a batch whose newest is that).

    What a message contributes is capped at the wall clock `now_us` + the allowed lateness: one
    message from a client whose clock is decades ahead would otherwise move the watermark there
    and the next sweep would forget every record of its stream. The cap only slows reclamation
    (a watermark lower than the newest `occurred` forgets less, never more); results stay decided
    by the per-message rule. Capping each message or a batch's newest gives the same value."""
    return max(watermark_us, min(occurred_us, now_us + lateness_us))


def forgettable(last_us: int, watermark_us: int, retention_us: int, lateness_us: int) -> bool:
    """Whether the sweep may forget a record last touched at `last_us` (a flow run's last message,
    an artifact's delete) once its stream's watermark is at `watermark_us`.

    Safe for every message at most `lateness_us` behind the watermark: let W be the watermark when
    the record (last seen L) is forgotten and t >= W - G the `occurred` of a later message. Then

        forgotten  =>  L < W - R - G <= t - R  =>  t - L > R,

    so the message's own rule finds the record expired anyway: forgotten or kept, it sees no state
    and leaves the same state behind (a record started afresh at t). The watermark only grows, so
    W here is at most the newest `occurred` applied before the message (`advance` caps, never
    raises). A message later than G behind it may find forgotten what it would still have seen."""
    return watermark_us - last_us > retention_us + lateness_us


def wall_clock_us() -> int:
    return time.time_ns() // 1000
