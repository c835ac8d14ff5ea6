"""Replay detection for at-least-once input.

Each state record remembers, per source partition, the highest offset it has absorbed. The worker
publishes a batch's outputs and waits for the broker to acknowledge them *before* it writes the
batch's state, and every message touches exactly one state record. So after a crash, a replayed
message either finds its record without its offset (state as it was before the message: the same
events are computed again, byte-identical) or with it (its outputs are already out: skip it).
"""

from __future__ import annotations

Seen = dict[int, int]


def is_replay(seen: Seen, partition: int, offset: int) -> bool:
    return seen.get(partition, -1) >= offset


def mark(seen: Seen, partition: int, offset: int) -> None:
    if seen.get(partition, -1) < offset:
        seen[partition] = offset
