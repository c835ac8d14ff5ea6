"""Which input offsets may be committed: only those whose batch is finished, without holes.

Faust commits what its streams *acked*, and acks more than what was processed: records it skips
during a rebalance (flow control off, old generation) are acked unprocessed; its gap tracking
marks offsets as done when a fetch made before a seek is delivered after it; and its commit takes
the first run of acked offsets wherever it starts, not from the committed position. Under
SIGKILLs and rebalances each of these committed input that never reached the worker's steps,
and its events were lost (README, "Operating").

The ledger replaces that bookkeeping, and keeps each partition's records in order on their way
into the steps, whatever Faust does to them on the way:

* **Admission.** A batch takes a record only if it is the partition's next one (`expected`);
  earlier offsets are copies of records already taken (a seek re-read them), later ones mean
  records between were lost on the way (Faust clears its queues when flow resumes after a
  rebalance, after having fetched from the committed offset) or arrive ahead of their turn (a
  fetch made before a seek delivered after it). Those are refused, and the partition is rewound
  to `expected`, so the steps see every record once, in offset order. Partitions with records
  delivered but not taken are rewound too every time flow resumes (Faust empties its queues
  then) and when none was taken for a while, so a quiet partition does not wait for a later
  record to notice.
* **Commits.** The position offered for commit is the end of the run of finished offsets (outputs
  and state acknowledged by the broker) from the committed one, never past a hole.
* **Gaps.** Offsets a fetch steps over hold no record (transaction markers, compaction): they
  are admitted and finished as if processed. Only a fetch begun after the partition's last seek
  had completed can tell; one begun before (its `epoch` is older) proves nothing. Every seek
  bumps the epoch twice, before it runs and once it has, so a fetch that overlaps it never
  counts. And a gap counts only once a fetch after a later seek steps over it again: a broker
  can hand out a partition's tail with a record missing that it shows a moment later (Tansu
  does, with concurrent writers: README, "The embedded broker"). The records after a gap seen
  once are refused like any record ahead of its turn, and the rewind re-reads the gap.
* **Truncation.** A fetch that goes back without a seek means the broker truncated the log (an
  unclean leader election) and the consumer reset itself. Its records below `expected` are still
  refused as copies, though those written since the truncation were never processed: one WARNING
  per occurrence says so (README, "When the broker goes away").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

TP = TypeVar("TP", bound=tuple[str, int])  # a topic partition: (topic, partition)

log = logging.getLogger("prefect_events")

REWIND_RETRY_S = 1.0  # a rewind whose records were lost again is repeated after this


@dataclass
class _Partition:
    base: int | None = None  # next offset to commit; None until the committed offset is known
    expected: int | None = None  # next offset a batch may take
    epoch: int = 0  # bumped by every seek
    last: int | None = None  # last offset fetched by a fetch of the current epoch
    seeked_to: int | None = None  # where the last seek went
    confirmed: int | None = None  # the commit the broker took last (or where the partition began)
    fetch_next: int | None = None  # after the current epoch's last fetch: where the next begins
    truncation_told: int | None = None  # `expected` when a truncation was last logged
    gaps: set[int] = field(default_factory=set)  # offsets >= expected that hold no record
    suspects: dict[int, tuple[int, int]] = field(default_factory=dict)  # gap seen once: start → (end, epoch)
    finished: set[int] = field(default_factory=set)
    refused: bool = False  # a record beyond `expected` was refused
    rewound_at: tuple[int, float] | None = None  # (offset, when) of the last rewind
    delivered: int | None = None  # greatest offset fetched, any epoch
    moved_at: float = 0.0  # when a batch last took a record (or the partition was rewound)


@dataclass
class CommitLedger(Generic[TP]):
    clock: Callable[[], float] = time.monotonic
    partitions: dict[TP, _Partition] = field(default_factory=dict)
    moved_at: float = 0.0  # when a batch last took any record

    # --- positions -------------------------------------------------------------------------------

    def assign(self, tp: TP) -> None:
        """Newly assigned: the consumer starts it at its committed offset, learnt by `position`."""
        self.partitions[tp] = _Partition(moved_at=self.clock())

    def position(self, tp: TP, committed: int | None, sought: bool = True) -> None:
        """The partition's committed offset, after `seeking`; `sought`: the consumer was moved
        there (aiokafka's seek_to_committed leaves a partition without a commit where it is)."""
        p = self.partitions.setdefault(tp, _Partition())
        p.base = p.confirmed = committed
        if committed is not None:
            p.finished = {o for o in p.finished if o >= committed}
            if p.expected is None or p.expected < committed:
                p.expected = committed
        self._seeked(p, committed if sought else None)

    def seeking(self, tp: TP) -> None:
        """A seek is about to happen: until `seek`/`position` say where to, no fetch proves a gap
        (the consumer moves when the seek runs, not when the ledger hears of it)."""
        self._seeked(self.partitions.setdefault(tp, _Partition()), None)

    def seek(self, tp: TP, offset: int) -> None:
        self._seeked(self.partitions.setdefault(tp, _Partition()), offset)

    def forget(self, tps: Iterable[TP]) -> None:
        """Revoked: its position belongs to the next owner."""
        for tp in tps:
            self.partitions.pop(tp, None)

    def _seeked(self, p: _Partition, offset: int | None) -> None:
        p.epoch += 1
        p.moved_at = self.clock()
        p.last, p.seeked_to, p.fetch_next = None, offset, offset
        if p.expected is not None:
            p.gaps = {o for o in p.gaps if o >= p.expected}

    # --- records ---------------------------------------------------------------------------------

    def epochs(self) -> Mapping[TP, int]:
        """Taken when a fetch begins; `fetched` compares against it."""
        return {tp: p.epoch for tp, p in self.partitions.items()}

    def fetched(self, tp: TP, offsets: Sequence[int], fetched_in: Mapping[TP, int]) -> None:
        """One fetch's records of a partition, in order, as the consumer got them (before Faust
        filters any: what it drops is gone from the consumer's position all the same)."""
        if not offsets:
            return
        p = self.partitions.setdefault(tp, _Partition())
        if p.delivered is None or offsets[-1] > p.delivered:
            p.delivered = offsets[-1]
        if fetched_in.get(tp, 0) != p.epoch:
            # Begun before the last seek finished: it may hold records from either side of it,
            # so the next fetch's first record proves no gap either.
            p.last = p.seeked_to = p.fetch_next = None
            return
        if (
            p.fetch_next is not None
            and p.expected is not None
            and offsets[0] < min(p.fetch_next, p.expected)
            and p.truncation_told != p.expected
        ):
            # Once per position: until records reach it again, every quiet rewind (seeking past
            # the log's end) resets the consumer to the log start again.
            p.truncation_told = p.expected
            log.warning(
                "%s[%d]: a fetch brought offsets %d-%d where the next was %d, with no seek: the "
                "broker truncated the log (an unclean leader election?). Its records below the "
                "position %d are skipped as copies of processed ones; any written since the "
                "truncation were not processed",
                *tp,
                offsets[0],
                offsets[-1],
                p.fetch_next,
                p.expected,
            )
        p.fetch_next = offsets[-1] + 1
        for offset in offsets:
            first = p.last + 1 if p.last is not None else p.seeked_to
            if first is not None and offset > first:
                self._stepped_over(p, first, offset)
            if p.last is None or offset > p.last:
                p.last = offset

    @staticmethod
    def _stepped_over(p: _Partition, first: int, end: int) -> None:
        """Offsets first..end-1 are a gap if a fetch after a seek made since saw the same."""
        seen = p.suspects.get(first)
        if seen is None or seen[0] != end:
            p.suspects[first] = (end, p.epoch)
        elif seen[1] < p.epoch:
            del p.suspects[first]
            p.gaps.update(range(first, end))
            p.finished.update(o for o in range(first, end) if p.base is None or o >= p.base)

    def admit(self, tp: TP, offset: int) -> bool:
        """May a batch take this record now? Only the partition's next one."""
        p = self.partitions.get(tp)
        if p is None or p.expected is None:
            # Not before the committed offset is known: a record still buffered from the last
            # assignment would set the start. Faust re-reads from that offset after recovery.
            return False
        while p.expected in p.gaps:
            p.gaps.discard(p.expected)
            p.expected += 1
        if offset != p.expected:
            p.refused = p.refused or offset > p.expected
            return False
        p.expected += 1
        if p.suspects:  # a suspected gap the partition has read past was none
            p.suspects = {start: seen for start, seen in p.suspects.items() if start >= p.expected}
        p.refused, p.rewound_at = False, None
        p.moved_at = self.moved_at = self.clock()
        return True

    def rewinds(self) -> dict[TP, int]:
        """Partitions to seek back to their next record: records beyond it were refused."""
        now, out = self.clock(), {}
        for tp, p in self.partitions.items():
            if not p.refused or p.expected is None:
                continue
            p.refused = False
            if p.rewound_at is not None:
                offset, when = p.rewound_at
                if offset == p.expected and now - when < REWIND_RETRY_S:
                    continue  # records of the last rewind are still on their way
            p.rewound_at = (p.expected, now)
            out[tp] = p.expected
        return out

    def resume(self) -> dict[TP, int]:
        """Faust emptied its queues (flow resumes): partitions to seek back to their next record,
        for whatever was delivered and not yet taken may be gone."""
        return self._waiting(lambda p: True)

    def stalled(self, after_s: float) -> dict[TP, int]:
        """Partitions with records delivered but not taken, when no batch took anything for
        `after_s`: seek back (records can vanish inside Faust, and a quiet partition brings no
        later record to notice it by). Not per partition: under a backlog a partition's records
        wait in Faust's queue behind other partitions' for seconds, and are not lost."""
        now = self.clock()
        if now - self.moved_at < after_s:
            return {}
        return self._waiting(lambda p: now - p.moved_at >= after_s)

    def quiet(self, after_s: float) -> dict[TP, int]:
        """Partitions with nothing fetched past their next record, when no batch took anything
        for `after_s` (and each at most once per `after_s`): seek them to it. A no-op for a
        partition that has no new record; for one the consumer stopped fetching (seen after a
        partition moved between workers) it starts the fetch again."""
        now, out = self.clock(), dict[TP, int]()
        if now - self.moved_at < after_s:
            return out
        for tp, p in self.partitions.items():
            if p.expected is None or (p.delivered is not None and p.delivered >= p.expected):
                continue
            if now - p.moved_at >= after_s:
                p.moved_at = now
                out[tp] = p.expected
        return out

    def _waiting(self, due: Callable[[_Partition], bool]) -> dict[TP, int]:
        now, out = self.clock(), {}
        for tp, p in self.partitions.items():
            if p.expected is None or p.delivered is None or p.delivered < p.expected:
                continue
            if due(p):
                p.refused, p.rewound_at, p.moved_at = False, (p.expected, now), now
                out[tp] = p.expected
        return out

    def finish(self, tp: TP, offset: int) -> None:
        """The record's outputs and state are acknowledged by the broker."""
        p = self.partitions.get(tp)
        if p is not None and (p.base is None or offset >= p.base):
            p.finished.add(offset)

    # --- commits ---------------------------------------------------------------------------------

    def committable(self, tp: TP) -> int | None:
        """The offset to commit (the next one to read); the consumer skips it if not newer."""
        p = self.partitions.get(tp)
        if p is None or p.base is None:
            return None
        while p.base in p.finished:
            p.finished.discard(p.base)
            p.base += 1
        return p.base

    def committed(self, offsets: Mapping[TP, int]) -> None:
        """The broker took these commits (Faust believes every commit it tried took)."""
        for tp, offset in offsets.items():
            p = self.partitions.get(tp)
            if p is not None:
                p.confirmed = offset

    def confirmed(self, tp: TP) -> int | None:
        p = self.partitions.get(tp)
        return None if p is None else p.confirmed

    def uncommitted(self, topics: Collection[str]) -> list[TP]:
        """Partitions of `topics` with finished records that no commit the broker took covers."""
        return [
            tp
            for tp in self.positions()
            if tp[0] in topics and self.committable(tp) != self.partitions[tp].confirmed
        ]

    def positions(self) -> list[TP]:
        """Partitions whose commit position is known."""
        return [tp for tp, p in self.partitions.items() if p.base is not None]
