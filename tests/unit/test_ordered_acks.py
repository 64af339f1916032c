"""Acks in offset order per partition (processors/ordered_acks.py): whatever order records
are handled in, faust is never handed an ack whose partition has an earlier record unhandled,
so its commit (which can pass a record not acked) cannot pass one either."""

from __future__ import annotations

import itertools
import random

import pytest

from sluicegate.processors.ordered_acks import OrderedAcks


def handle_in(order: list[int], offsets: list[int]) -> list[list[int]]:
    """Track ``offsets`` of one partition, handle them in ``order`` (indexes); what each
    handling released."""
    acks: OrderedAcks[str, int] = OrderedAcks()
    entries = [acks.track("p", o) for o in offsets]
    return [acks.handled(entries[i]) for i in order]


@pytest.mark.parametrize("order, released", [
    ([0, 1, 2], [[10], [11], [12]]),            # in order: each at once
    ([2, 1, 0], [[], [], [10, 11, 12]]),        # reversed: all with the first
    ([1, 0, 2], [[], [10, 11], [12]]),          # the committed offset itself late (faust's off-by-one)
    ([1, 2, 0], [[], [], [10, 11, 12]]),
    ([0, 2, 1], [[10], [], [11, 12]]),
])
def test_a_record_is_released_only_when_every_earlier_one_is_handled(order, released) -> None:
    assert handle_in(order, [10, 11, 12]) == released


def test_every_order_releases_each_record_once_in_offset_order_never_past_a_gap() -> None:
    offsets = [3, 4, 5, 6, 7]
    for order in itertools.permutations(range(len(offsets))):
        out = handle_in(list(order), offsets)
        flat = [o for batch in out for o in batch]
        assert flat == offsets, order
        handled: set[int] = set()
        for i, batch in zip(order, out):
            handled.add(offsets[i])
            for o in batch:  # everything before a released offset was handled
                assert all(e in handled for e in offsets if e <= o), (order, o)


def test_partitions_do_not_wait_for_each_other() -> None:
    acks: OrderedAcks[str, str] = OrderedAcks()
    a1, a2 = acks.track("a", "a1"), acks.track("a", "a2")
    b1 = acks.track("b", "b1")
    assert acks.handled(a2) == []
    assert acks.handled(b1) == ["b1"]  # b is not held back by a's gap
    assert acks.handled(a1) == ["a1", "a2"]
    assert len(acks) == 0


def test_clear_forgets_everything_and_a_record_handled_after_it_is_never_released() -> None:
    acks: OrderedAcks[str, str] = OrderedAcks()
    a1, a2, a3 = (acks.track("a", f"a{i}") for i in (1, 2, 3))
    assert acks.handled(a2) == []
    assert acks.clear() == 3 and len(acks) == 0
    # a1 was being handled when the rebalance came: faust reads it again, it is not acked now
    assert acks.handled(a1) == [] and acks.handled(a3) == []
    # records delivered after the rebalance start a fresh line
    again = acks.track("a", "a1")
    assert acks.handled(again) == ["a1"]


def test_random_interleavings_of_partitions_and_clears_release_only_gapless_prefixes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        acks: OrderedAcks[int, tuple[int, int]] = OrderedAcks()
        next_offset = {p: 0 for p in range(3)}
        live: list = []
        handled: dict[int, set[int]] = {p: set() for p in range(3)}
        acked: dict[int, list[int]] = {p: [] for p in range(3)}
        for _step in range(60):
            roll = rng.random()
            if roll < 0.45:
                p = rng.randrange(3)
                live.append(acks.track(p, (p, next_offset[p])))
                next_offset[p] += 1
            elif roll < 0.95 and live:
                entry = live.pop(rng.randrange(len(live)))
                p, o = entry.record
                handled[p].add(o)
                for rp, ro in acks.handled(entry):
                    assert rp == p
                    acked[p].append(ro)
            elif roll >= 0.95:
                acks.clear()  # a rebalance: faust re-reads from the last acked offset + 1
                live = []
                for p in range(3):
                    next_offset[p] = acked[p][-1] + 1 if acked[p] else 0
        for p in range(3):  # acks are gapless from 0 and cover only handled offsets
            assert acked[p] == list(range(len(acked[p])))
            assert set(acked[p]) <= handled[p]
