"""The commit ledger (topology/commits.py): every record reaches the steps once, in offset order,
and a commit never covers a record that is not finished.

Each case is one of the ways Faust's own bookkeeping lost or reordered input under SIGKILLs and
rebalances (README, "Operating"): records skipped or still in a batch, queues cleared after a
fetch, fetches delivered after a seek, transaction markers, a group without commits.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topology.commits import REWIND_RETRY_S, CommitLedger

TP = ("raw", 0)
Ledger = CommitLedger[tuple[str, int]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ledger_at(committed: int | None, clock: Clock | None = None) -> Ledger:
    ledger: Ledger = CommitLedger(clock=clock or Clock())
    ledger.assign(TP)
    ledger.position(TP, committed)
    return ledger


def fetch(ledger: Ledger, offsets: list[int]) -> None:
    """One fetch, begun now, bringing `offsets` in order."""
    ledger.fetched(TP, offsets, ledger.epochs())


def take(ledger: Ledger, offsets: list[int]) -> list[int]:
    """A batch: the offsets it may process, which then finish."""
    taken = [o for o in offsets if ledger.admit(TP, o)]
    for o in taken:
        ledger.finish(TP, o)
    return taken


# --- commits ---------------------------------------------------------------------------------------


def test_commits_the_run_of_finished_offsets_from_the_committed_position() -> None:
    ledger = ledger_at(10)
    fetch(ledger, [10, 11, 12])
    assert take(ledger, [10, 11, 12]) == [10, 11, 12]
    assert ledger.committable(TP) == 13


def test_a_record_still_in_a_batch_holds_the_position() -> None:
    ledger = ledger_at(10)
    fetch(ledger, [10, 11, 12])
    assert [ledger.admit(TP, o) for o in (10, 11, 12)] == [True, True, True]
    ledger.finish(TP, 10)
    ledger.finish(TP, 12)  # 11 is still being processed
    assert ledger.committable(TP) == 11
    ledger.finish(TP, 11)
    assert ledger.committable(TP) == 13


def test_no_record_is_taken_before_the_committed_offset_is_known() -> None:
    """After an assignment Faust may hand over records still buffered from the previous one;
    the partition is read again from the committed offset once the tables are recovered."""
    ledger: Ledger = CommitLedger(clock=Clock())
    ledger.assign(TP)
    fetch(ledger, [9, 10])
    assert take(ledger, [9, 10]) == []
    ledger.seeking(TP)
    ledger.position(TP, 7)
    fetch(ledger, [7, 8, 9, 10])
    assert take(ledger, [7, 8, 9, 10]) == [7, 8, 9, 10]
    assert ledger.committable(TP) == 11


def test_a_group_without_commits_starts_at_the_log_start() -> None:
    ledger: Ledger = CommitLedger(clock=Clock())
    ledger.assign(TP)
    ledger.seeking(TP)
    ledger.position(TP, 0, sought=False)  # the worker looks up the log start
    fetch(ledger, [0, 1])
    assert take(ledger, [0, 1]) == [0, 1]
    assert ledger.committable(TP) == 2


def test_a_reassigned_partition_starts_from_the_new_committed_offset() -> None:
    ledger = ledger_at(0)
    fetch(ledger, [0, 1, 2])
    take(ledger, [0, 1, 2])
    ledger.forget([TP])
    assert ledger.committable(TP) is None
    ledger.assign(TP)
    ledger.position(TP, 1)  # another worker committed up to 1 meanwhile
    fetch(ledger, [1, 2])
    assert take(ledger, [1, 2]) == [1, 2]
    assert ledger.committable(TP) == 3


# --- order: each record once, in offset order --------------------------------------------------------


def test_records_lost_on_the_way_are_refused_after_and_the_partition_rewound() -> None:
    """Faust cleared 192..206 from its queue when flow resumed; 207 arrived next."""
    ledger = ledger_at(180)
    fetch(ledger, list(range(180, 220)))
    assert take(ledger, list(range(180, 192))) == list(range(180, 192))
    assert take(ledger, list(range(207, 220))) == []  # never ahead of 192
    assert ledger.rewinds() == {TP: 192}
    ledger.seek(TP, 192)
    fetch(ledger, list(range(192, 220)))
    assert take(ledger, list(range(192, 220))) == list(range(192, 220))
    assert ledger.committable(TP) == 220


def test_a_rewind_is_asked_once_while_its_records_are_on_their_way() -> None:
    clock = Clock()
    ledger = ledger_at(0, clock)
    fetch(ledger, [0, 1, 2, 3])
    take(ledger, [0, 2])
    assert ledger.rewinds() == {TP: 1}
    ledger.seek(TP, 1)
    take(ledger, [3])  # stale: from the fetch before the seek
    assert ledger.rewinds() == {}
    clock.now += REWIND_RETRY_S  # and if they were lost again, once more
    take(ledger, [3])
    assert ledger.rewinds() == {TP: 1}


def test_copies_of_records_already_taken_are_refused_without_a_rewind() -> None:
    """Faust seeks to the committed offset after recovery: records taken before come again."""
    ledger = ledger_at(5)
    fetch(ledger, [5, 6, 7])
    take(ledger, [5, 6, 7])
    ledger.position(TP, 5)
    fetch(ledger, [5, 6, 7, 8])
    assert take(ledger, [5, 6, 7, 8]) == [8]
    assert ledger.rewinds() == {}
    assert ledger.committable(TP) == 9


def test_a_fetch_that_goes_back_without_a_seek_is_one_warning_per_truncation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unclean leader election truncates the log and the consumer resets itself, unseen by the
    ledger: its records below the position are still refused as copies (those written since the
    truncation are lost to the steps), and an operator is told once per occurrence."""
    ledger = ledger_at(0)
    fetch(ledger, list(range(10)))
    assert take(ledger, list(range(10))) == list(range(10))
    with caplog.at_level(logging.WARNING, logger="prefect_events"):
        fetch(ledger, [6, 7])  # the log was cut at 6 and written again
        fetch(ledger, [8, 9, 10])
        assert take(ledger, [6, 7, 8, 9, 10]) == [10]  # skipped as before
        ledger.seeking(TP)
        ledger.seek(TP, 8)  # a seek back re-reads copies: no truncation
        fetch(ledger, [8, 9, 10, 11])
        fetch(ledger, [3, 4])  # a second truncation
    assert take(ledger, [8, 9, 10, 11, 3, 4]) == [11]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"raw[0]: a fetch brought offsets {first}-{last} where the next was {was}, with no seek: "
            "the broker truncated the log (an unclean leader election?). Its records below the "
            f"position {position} are skipped as copies of processed ones; any written since the "
            "truncation were not processed",
        )
        for first, last, was, position in ((6, 7, 10, 10), (3, 4, 12, 11))
    ]


def test_a_truncation_is_told_once_while_the_partition_waits_for_its_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until records reach the position again, each quiet rewind seeks past the log's end, and
    the consumer resets itself to the log start: the same truncation, not a new one."""
    ledger = ledger_at(0)
    fetch(ledger, list(range(10)))
    take(ledger, list(range(10)))
    with caplog.at_level(logging.WARNING, logger="prefect_events"):
        fetch(ledger, [6, 7])  # cut at 6, written again
        for _ in range(3):
            ledger.seeking(TP)
            ledger.seek(TP, 10)  # a quiet rewind, past the end
            fetch(ledger, list(range(8)))  # reset to the log start
        assert take(ledger, list(range(8))) == []
        fetch(ledger, [8, 9, 10])
        assert take(ledger, [8, 9, 10]) == [10]
    told = [r.getMessage().split(": ")[1] for r in caplog.records]
    assert told == ["a fetch brought offsets 6-7 where the next was 10, with no seek"]


# --- gaps: offsets that hold no record ---------------------------------------------------------------


def test_offsets_a_fetch_steps_over_again_after_a_seek_are_transaction_markers() -> None:
    ledger = ledger_at(0)
    fetch(ledger, [0, 1, 3, 4])  # 2: a commit marker
    assert take(ledger, [0, 1, 3, 4]) == [0, 1]  # seen once: 3 and 4 wait for a second look
    assert ledger.rewinds() == {TP: 2}
    ledger.seek(TP, 2)
    fetch(ledger, [3, 4])
    fetch(ledger, [9])  # 5..8 between two fetches: markers, compacted records
    assert take(ledger, [3, 4, 9]) == [3, 4]
    assert ledger.rewinds() == {TP: 5}
    ledger.seek(TP, 5)
    fetch(ledger, [9])
    assert take(ledger, [9]) == [9]
    assert ledger.committable(TP) == 10


def test_a_record_the_broker_shows_late_is_no_gap() -> None:
    """Tansu, with concurrent writers to a partition, can answer a fetch at the tail without a
    record it shows a moment later (README, "The embedded broker"): taking the hole for a
    transaction marker lost the record. The re-read finds it."""
    ledger = ledger_at(0)
    fetch(ledger, [0, 1, 3, 4])  # 2 not visible yet
    assert take(ledger, [0, 1, 3, 4]) == [0, 1]
    assert ledger.rewinds() == {TP: 2}
    ledger.seek(TP, 2)
    fetch(ledger, [2, 3, 4])
    assert take(ledger, [2, 3, 4]) == [2, 3, 4]
    assert ledger.committable(TP) == 5
    fetch(ledger, [6])  # a later hole at 5, seen once...
    ledger.seek(TP, 5)
    fetch(ledger, [5, 6])  # ...was none: nothing is left suspected
    assert take(ledger, [5, 6]) == [5, 6]
    assert ledger.partitions[TP].suspects == {}


def test_a_gap_seen_twice_in_one_fetch_epoch_is_not_confirmed() -> None:
    """Only a fetch after a seek begun since the first sighting confirms a gap."""
    ledger = ledger_at(0)
    fetched_in = ledger.epochs()
    ledger.fetched(TP, [0, 2], fetched_in)
    ledger.fetched(TP, [2], {TP: -1})  # an older fetch proves nothing either
    assert take(ledger, [0, 2]) == [0]
    assert ledger.committable(TP) == 1


def test_records_faust_drops_after_fetching_are_no_gap() -> None:
    """Faust's getmany drops fetched records when flow stops, the generation changes or the
    partition is not active; the consumer's position is past them all the same."""
    ledger = ledger_at(0)
    fetch(ledger, [0, 1, 2])  # 1 and 2 dropped by Faust before any step saw them
    fetch(ledger, [3, 4])
    assert take(ledger, [0, 3, 4]) == [0]
    assert ledger.rewinds() == {TP: 1}
    assert ledger.committable(TP) == 1


def test_a_marker_right_at_the_seek_position_is_a_gap() -> None:
    ledger = ledger_at(0)
    fetch(ledger, [0])
    take(ledger, [0])
    ledger.seek(TP, 1)
    fetch(ledger, [2, 3])  # 1 is a marker
    assert take(ledger, [2, 3]) == []
    ledger.seek(TP, 1)
    fetch(ledger, [2, 3])  # still stepped over after another seek
    assert take(ledger, [2, 3]) == [2, 3]
    assert ledger.committable(TP) == 4


def test_a_fetch_begun_before_a_seek_proves_no_gap() -> None:
    ledger = ledger_at(0)
    fetched_in = ledger.epochs()  # a fetch begins...
    ledger.seek(TP, 0)  # ...a seek happens...
    ledger.fetched(TP, [0, 5], fetched_in)  # ...and the old fetch returns with a jump
    assert take(ledger, [0, 5]) == [0]
    assert ledger.committable(TP) == 1


@given(
    finished=st.sets(st.integers(min_value=0, max_value=40)),
    committed=st.integers(min_value=0, max_value=20),
)
def test_never_commits_past_an_unfinished_offset(finished: set[int], committed: int) -> None:
    ledger = ledger_at(committed)
    fetch(ledger, list(range(committed, 41)))
    for o in range(committed, 41):
        ledger.admit(TP, o)
    for o in finished:
        ledger.finish(TP, o)
    position = ledger.committable(TP)
    assert position is not None and position >= committed
    assert all(o in finished for o in range(committed, position))
    assert position not in finished or position > 40


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=80))
def test_whatever_order_records_arrive_in_the_steps_see_each_once_in_order(arrivals: list[int]) -> None:
    ledger = ledger_at(0)
    taken = take(ledger, arrivals)
    assert taken == list(range(len(taken)))


def test_records_delivered_and_never_taken_are_read_again() -> None:
    """A quiet partition: Faust dropped its last records and nothing comes after them."""
    clock = Clock()
    ledger = ledger_at(0, clock)
    fetch(ledger, [0, 1, 2])
    take(ledger, [0])
    assert ledger.stalled(5.0) == {}  # 1 and 2 may still be on their way
    clock.now += 5.0
    assert ledger.stalled(5.0) == {TP: 1}
    assert ledger.stalled(5.0) == {}  # asked once; again only after another quiet spell
    ledger.seek(TP, 1)
    fetch(ledger, [1, 2])
    assert take(ledger, [1, 2]) == [1, 2]
    clock.now += 10.0
    assert ledger.stalled(5.0) == {}  # nothing waiting


def test_flow_resuming_rewinds_partitions_with_records_not_taken() -> None:
    ledger = ledger_at(0)
    fetch(ledger, [0, 1, 2])
    take(ledger, [0, 1])
    assert ledger.resume() == {TP: 2}
    take(ledger, [2])
    assert ledger.resume() == {}


def test_records_queued_behind_a_busy_step_are_not_taken_for_lost() -> None:
    clock = Clock()
    ledger = ledger_at(0, clock)
    other = ("raw", 1)
    ledger.assign(other)
    ledger.position(other, 0)
    fetch(ledger, [0, 1])  # partition 0's records wait in Faust's queue...
    for o in range(10):  # ...while the step works through partition 1's backlog
        clock.now += 1.0
        assert ledger.admit(other, o)
        assert ledger.stalled(5.0) == {}


def test_a_fetch_that_overlaps_a_seek_proves_no_gap() -> None:
    """A fetch that returns while a seek is under way proves nothing, whatever it brings."""
    ledger = ledger_at(3)
    ledger.seeking(TP)
    fetch(ledger, [3, 4])  # Faust drops them; the consumer is past them
    ledger.position(TP, 3)
    assert take(ledger, [5]) == []  # the consumer pauses the partition while it seeks...
    assert ledger.rewinds() == {TP: 3}
    ledger.seeking(TP)
    ledger.seek(TP, 3)
    fetch(ledger, [3, 4, 5])  # ...so the first fetch after it starts at the seek position
    assert take(ledger, [3, 4, 5]) == [3, 4, 5]
    assert ledger.committable(TP) == 6


def test_a_partition_with_nothing_fetched_is_sought_again_when_all_is_quiet() -> None:
    """Seen after a partition moved between workers: assigned, active, never fetched again."""
    clock = Clock()
    ledger = ledger_at(7, clock)
    assert ledger.quiet(5.0) == {}
    clock.now += 5.0
    assert ledger.quiet(5.0) == {TP: 7}
    assert ledger.quiet(5.0) == {}  # once per quiet spell
    fetch(ledger, [7])
    clock.now += 10.0
    assert ledger.quiet(5.0) == {}  # fetched: not quiet, waiting to be taken (stalled's case)


def test_a_partition_the_consumer_was_not_moved_on_proves_no_gap_from_its_position() -> None:
    """aiokafka's seek_to_committed leaves a partition without a commit where it is: its first
    record after that says nothing about the offsets before it (here 0..1222 were records)."""
    ledger: Ledger = CommitLedger(clock=Clock())
    ledger.assign(TP)
    ledger.seeking(TP)
    ledger.position(TP, 0, sought=False)
    fetch(ledger, [1223, 1224])
    assert take(ledger, [1223, 1224]) == []
    assert ledger.committable(TP) == 0


def test_a_fetch_begun_during_a_seek_and_returned_after_it_hides_no_records() -> None:
    """Seen in the 2-worker chaos run: 676-742 came in a fetch begun while the seek ran, 743 in
    the next; taking 676 as the first record after the seek made 676-742 'markers'."""
    ledger = ledger_at(0)
    ledger.seeking(TP)
    during = ledger.epochs()
    ledger.position(TP, 676)
    ledger.fetched(TP, list(range(676, 743)), during)  # Faust drops these
    fetch(ledger, [743])
    assert take(ledger, [743]) == []
    assert ledger.rewinds() == {TP: 676}
