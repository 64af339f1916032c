"""Guards on faust's commit (processors/faust_tuning.py): its next commit offset never passes
the committed offset's own record while that is not acked, and resuming the flow after a
rebalance no longer empties the agents' queues (the records in them were fetched after
faust's seek back to the commits and would never be read again)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from sluicegate.processors import faust_tuning

faust_tuning.apply()
TOPIC = TP("sg.commands", 0)


@pytest.fixture(autouse=True)
def no_stall_clocks_of_other_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    # stall clocks are keyed by id(consumer): a consumer of an earlier case, gone, can leave one
    # under the id a new consumer gets (CI once failed the stall test that way: the stale
    # clock was on real monotonic time, the test's own clock far behind it)
    monkeypatch.setattr(faust_tuning, "_stalled", {})


def consumer(acked: list[int], committed: int | None, gap: tuple[int, int] | None = None) -> SimpleNamespace:
    c = SimpleNamespace(_acked=defaultdict(list), _committed_offset=defaultdict(lambda: None),
                        _gap=defaultdict(IntervalTree), _acked_index=defaultdict(set))
    c._acked[TOPIC] = list(acked)
    c._acked_index[TOPIC] = set(acked)
    c._committed_offset[TOPIC] = committed
    if gap is not None:
        c._gap[TOPIC].addi(*gap)
    return c


@pytest.mark.parametrize("acked, committed, gap, expected", [
    ([100, 101, 102], 100, None, 103),      # the committed offset's record acked: commit the run
    ([101, 102], 100, None, None),          # 100 not acked: faust itself would commit 103
    ([105, 106], 100, None, None),          # far ahead: faust refuses too
    ([100, 101, 103], 100, None, 102),      # stops at the first hole
    ([101, 102], 100, (100, 101), 103),     # 100 is a known gap (no record there): commit
    ([], 100, None, None),
    ([7, 8], None, None, 9),                # no committed offset known: faust's own answer
])
def test_next_commit_offset(acked, committed, gap, expected) -> None:
    assert faust_tuning._new_offset(consumer(acked, committed, gap), TOPIC) == expected


def test_a_refused_commit_keeps_the_acks_for_later() -> None:
    c = consumer([101, 102], 100)
    assert faust_tuning._new_offset(c, TOPIC) is None
    c._acked[TOPIC].append(100)  # the record at the committed offset is acked at last
    assert faust_tuning._new_offset(c, TOPIC) == 103


def test_resuming_the_flow_keeps_queued_records_and_a_revoke_still_clears_them() -> None:
    async def scenario() -> None:
        flow = FlowControlEvent(initially_suspended=False)
        queue: FlowControlQueue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        queue.put_nowait("fetched after the seek")
        flow.suspend()
        flow.resume()
        assert queue.qsize() == 1 and flow.is_active()
        flow.suspend()
        flow.clear()  # what faust does when a rebalance revokes partitions
        assert queue.qsize() == 0

    asyncio.run(scenario())


def test_fausts_own_answer_passes_the_unacked_record() -> None:
    """Why the guard exists: faust's _new_offset commits over offset 100, never acked."""
    assert faust_tuning._original_new_offset(consumer([101, 102], 100), TOPIC) == 103


def test_a_commit_held_back_too_long_reads_the_missing_record_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(faust_tuning.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        c = consumer([101, 102], 100)
        seeks: list[tuple[TP, int]] = []

        async def seek(tp: TP, offset: int) -> None:
            seeks.append((tp, offset))

        c.seek = seek
        assert faust_tuning._new_offset(c, TOPIC) is None  # held back: the clock starts
        clock[0] += faust_tuning.STALL_S - 1
        assert faust_tuning._new_offset(c, TOPIC) is None
        await asyncio.sleep(0)
        assert seeks == []  # lanes hold a commit back for milliseconds, not this long
        clock[0] += 1
        assert faust_tuning._new_offset(c, TOPIC) is None
        await asyncio.sleep(0)
        assert seeks == [(TOPIC, 100)]  # read again from the committed offset
        clock[0] += 1
        faust_tuning._new_offset(c, TOPIC)
        await asyncio.sleep(0)
        assert seeks == [(TOPIC, 100)]  # not again at once: the clock started over
        c._acked[TOPIC].append(100)
        assert faust_tuning._new_offset(c, TOPIC) == 103
        assert (id(c), TOPIC) not in faust_tuning._stalled

    asyncio.run(scenario())
