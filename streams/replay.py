"""Replay detection for at-least-once input.

Each state record remembers, per lane (one partition of one input log, e.g. `r3` for raw
partition 3), the highest offset it has absorbed. The worker
publishes a batch's outputs and waits for the broker to acknowledge them *before* it writes the
batch's state, and every message touches exactly one state record. So after a crash, a replayed
message either finds its record without its offset (state as it was before the message: the same
events are computed again, byte-identical) or with it (its outputs are already out: skip it).
"""

from __future__ import annotations

Seen = dict[str, int]


def is_replay(seen: Seen, lane: str, offset: int) -> bool:
    return seen.get(lane, -1) >= offset


def mark(seen: Seen, lane: str, offset: int) -> None:
    if seen.get(lane, -1) < offset:
        seen[lane] = offset
