"""Run views wait up to a hold, a later view of the same run replaces the held one, and every
held view can be taken before a commit (processors/held_views.py)."""

from __future__ import annotations

import pytest

from sluicegate.processors.held_views import HOLD_MS, MAX_HELD, HeldViews

# (run id, partition, state, held at ms)
Hold = tuple[str, int, str, int]


@pytest.mark.parametrize(("holds", "now", "due", "left"), [
    pytest.param([], 1_000, [], [], id="nothing-held"),
    pytest.param([("r1", 0, "created", 0)], 99, [], ["r1"], id="younger-than-the-hold-waits"),
    pytest.param([("r1", 0, "created", 0)], 100, [("r1", 0, "created")], [], id="held-for-the-hold-goes"),
    pytest.param([("r1", 0, "created", 0), ("r1", 0, "ended", 60)], 100, [("r1", 0, "ended")], [],
                 id="a-later-view-replaces-the-held-one-and-keeps-its-time"),
    pytest.param([("r1", 0, "created", 0), ("r1", 0, "ended", 60)], 99, [], ["r1"],
                 id="a-run-that-ends-within-the-hold-sends-nothing-yet"),
    pytest.param([("r1", 0, "a", 0), ("r2", 1, "b", 50), ("r3", 2, "c", 120)], 150,
                 [("r1", 0, "a"), ("r2", 1, "b")], ["r3"], id="oldest-first-up-to-the-youngest-due"),
    pytest.param([("r1", 0, "a", 0), ("r2", 1, "b", 50), ("r1", 0, "a2", 140)], 120,
                 [("r1", 0, "a2")], ["r2"], id="a-replaced-view-keeps-its-place-in-line"),
    pytest.param([("r1", 3, "a", 0), ("r1", 3, "b", 10)], 500, [("r1", 3, "b")], [],
                 id="the-partition-comes-with-the-view"),
])
def test_views_wait_for_the_hold_and_the_latest_goes(holds: list[Hold], now: int,
                                                    due: list[tuple[str, int, str]], left: list[str]) -> None:
    views: HeldViews[str] = HeldViews(hold_ms=100)
    for run_id, partition, state, at in holds:
        views.hold(run_id, partition, state, at)
    assert views.due(now) == due
    assert list(views.held) == left and len(views) == len(left)


def test_beyond_max_held_the_oldest_go_at_once() -> None:
    views: HeldViews[str] = HeldViews(hold_ms=100, max_held=3)
    for i in range(5):
        views.hold(f"r{i}", 0, f"s{i}", 10 + i)
    assert views.due(20) == [("r0", 0, "s0"), ("r1", 0, "s1")]
    assert list(views.held) == ["r2", "r3", "r4"]
    assert views.due(20) == []  # at the bound: they wait for the hold


def test_take_all_empties_in_order_of_first_hold() -> None:
    views: HeldViews[str] = HeldViews()
    views.hold("b", 1, "b1", 5)
    views.hold("a", 0, "a1", 6)
    views.hold("b", 1, "b2", 7)
    assert views.take_all() == [("b", 1, "b2"), ("a", 0, "a1")]
    assert len(views) == 0 and not views and views.due(10_000) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"hold_ms": -1}, "hold_ms must be 0 or more, got -1", id="negative-hold"),
    pytest.param({"max_held": 0}, "max_held must be at least 1, got 0", id="no-room"),
])
def test_bad_settings_are_refused_by_name(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeldViews(**kwargs)


def test_defaults_hold_a_tenth_of_a_second_and_bound_memory() -> None:
    views: HeldViews[str] = HeldViews()
    assert (views.hold_ms, views.max_held) == (HOLD_MS, MAX_HELD) == (100, 5_000)
