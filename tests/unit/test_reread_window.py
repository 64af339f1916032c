"""Which records the processor counts as read again after a takeover (``processors/reread_window.py``):
for those, a command that changes nothing sends its run's standing outputs again."""

from __future__ import annotations

import pytest

from sluicegate.processors.reread_window import RereadWindow

A, B, C = ("sg.commands", 0), ("sg.results", 0), ("sg.commands", 3)


def learnt(ends: dict[tuple[str, int], int] | None) -> RereadWindow:
    window = RereadWindow()
    if ends is not None:
        window.learn(ends)
    return window


@pytest.mark.parametrize(("ends", "tp", "offset", "covered"), [
    pytest.param(None, A, 10**9, True, id="ends-not-known-yet-everything-counts"),
    pytest.param({A: 100}, A, 0, True, id="first-record"),
    pytest.param({A: 100}, A, 99, True, id="last-record-there-at-the-takeover"),
    pytest.param({A: 100}, A, 100, False, id="first-record-produced-after-the-takeover"),
    pytest.param({A: 100}, A, 5_000, False, id="long-after"),
    pytest.param({A: 100, B: 7}, B, 6, True, id="results-partition-below-its-end"),
    pytest.param({A: 100, B: 7}, B, 7, False, id="results-partition-at-its-end"),
    pytest.param({A: 100}, C, 0, True, id="partition-without-a-known-end-counts"),
    pytest.param({A: 0}, A, 0, False, id="empty-partition-at-the-takeover"),
    pytest.param({}, A, 3, True, id="no-ends-learnt"),
])
def test_covers(ends: dict[tuple[str, int], int] | None, tp: tuple[str, int], offset: int, covered: bool) -> None:
    assert learnt(ends).covers(tp, offset) is covered


def test_a_new_rebalance_forgets_the_ends_until_they_are_learnt_again() -> None:
    window = learnt({A: 100})
    assert window.covers(A, 150) is False
    window.reset()
    assert window.covers(A, 150) is True
    window.learn({A: 200})
    assert (window.covers(A, 150), window.covers(A, 200)) == (True, False)
