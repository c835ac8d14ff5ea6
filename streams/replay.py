"""Replay detection for at-least-once input.

Each state record remembers, per lane (one partition of one input log, e.g. `r3` for raw
partition 3), the offsets of the last messages it absorbed. The worker publishes a batch's
outputs and waits for the broker to acknowledge them *before* it writes the batch's state, and
every message touches exactly one state record. So after a crash, a replayed message either finds
its record without its offset (state as it was before the message: the same events are computed
again, byte-identical) or with it (its outputs are already out: skip it). Collections keep their
member pages and members' versions in records of their own, which the marks do not cover: they
are written before the collection record (in the outputs' round trip: which of the two lands
first does not matter, since only the collection record decides what is a replay) and forgotten
after it (topology.steps.BatchResult), and stamped with the collection's count of changes, so
that a replay reads them as of the collection record it found, which is what the first run read
(streams.members, streams.collection_record).

A message that leaves its record as it was is marked too where its replay could do otherwise
(topology.steps: an operation on an artifact not created yet; a message its state refused).

Exact offsets rather than a high-water mark: around restarts and rebalances a consumer can be
handed a partition's records out of order (later ones first); a high-water mark would then take
the earlier ones for replays and drop them. Only offsets older than the last `KEEP` a record has
absorbed on a lane are judged by position alone.
"""

from __future__ import annotations

import bisect

KEEP = 64

Seen = dict[str, list[int]]  # lane → ascending offsets absorbed, the last KEEP of them


def is_replay(seen: Seen, lane: str, offset: int) -> bool:
    offsets = seen.get(lane)
    if not offsets:
        return False
    i = bisect.bisect_left(offsets, offset)
    if i < len(offsets) and offsets[i] == offset:
        return True
    return i == 0 and len(offsets) >= KEEP  # older than anything it still remembers


def mark(seen: Seen, lane: str, offset: int) -> None:
    offsets = seen.setdefault(lane, [])
    i = bisect.bisect_left(offsets, offset)
    if i < len(offsets) and offsets[i] == offset:
        return
    offsets.insert(i, offset)
    if len(offsets) > KEEP:
        del offsets[: len(offsets) - KEEP]
