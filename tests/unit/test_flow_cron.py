"""Cron decisions: exactly once per tick, missed ticks while down, time zones, jitter."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from sluicegate.processors.flow import cron
from sluicegate.triggers import TriggerCron

T0 = int(datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc).timestamp() * 1000)
MIN = 60_000
EVERY_MINUTE = TriggerCron(cron="* * * * *")


@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("* * * * *", T0, T0 + MIN),
    ("* * * * *", T0 - 1, T0),
    ("0 * * * *", T0, T0 + 60 * MIN),
    ("* * * * * */2", T0, T0 + 2000),                       # 6th field: seconds
    ("TZ=Europe/Paris 0 13 * * *", T0 - 1, T0),            # 13:00 Paris == 12:00 UTC in November
    ("CRON_TZ=America/New_York 0 7 * * *", T0 - 1, T0),    # 07:00 New York == 12:00 UTC in November
])
def test_next_tick(expr: str, after: int, expected: int) -> None:
    assert cron.next_tick(expr, after) == expected


def test_first_sync_sets_the_next_tick_and_fires_nothing() -> None:
    d = cron.decide(None, cron.Sync(), T0 + 10, trigger=EVERY_MINUTE, seed="shop/f")
    assert (d.fire_tick_ms, d.set_timer, d.missed, d.changed) == (None, (T0 + MIN, T0 + MIN), [], True)
    again = cron.decide(d.state, cron.Sync(), T0 + 20, trigger=EVERY_MINUTE, seed="shop/f")
    assert again.changed is False and again.set_timer is None  # a pending timer is kept


def test_a_due_tick_fires_once_and_schedules_the_next() -> None:
    state = cron.CronState(pending_tick_ms=T0 + MIN)
    d = cron.decide(state, cron.TickDue(T0 + MIN), T0 + MIN + 5, trigger=EVERY_MINUTE, seed="s")
    assert (d.fire_tick_ms, d.set_timer, d.state.last_fired_ms) == (T0 + MIN, (T0 + 2 * MIN, T0 + 2 * MIN), T0 + MIN)
    replay = cron.decide(d.state, cron.TickDue(T0 + MIN), T0 + MIN + 9, trigger=EVERY_MINUTE, seed="s")
    assert replay.fire_tick_ms is None and replay.changed is False


def test_an_early_timer_does_nothing() -> None:
    d = cron.decide(cron.CronState(), cron.TickDue(T0 + MIN), T0 + MIN - 1, trigger=EVERY_MINUTE, seed="s")
    assert (d.fire_tick_ms, d.changed) == (None, False)


@pytest.mark.parametrize(("inp", "now"), [
    (cron.Sync(), T0 + 5 * MIN + 30_000),
    (cron.TickDue(T0 + MIN), T0 + 5 * MIN + 30_000),
])
def test_ticks_missed_while_down_are_reported_and_only_the_latest_runs(inp: cron.Input, now: int) -> None:
    state = cron.CronState(last_fired_ms=T0, pending_tick_ms=T0 + MIN)
    d = cron.decide(state, inp, now, trigger=EVERY_MINUTE, seed="s")
    assert d.fire_tick_ms == T0 + 5 * MIN
    assert d.missed == [T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN, T0 + 4 * MIN]
    assert d.set_timer == (T0 + 6 * MIN, T0 + 6 * MIN) and d.state.last_fired_ms == T0 + 5 * MIN


def test_a_never_fired_pending_tick_whose_timer_was_lost_fires_on_sync() -> None:
    d = cron.decide(cron.CronState(pending_tick_ms=T0 + MIN), cron.Sync(), T0 + MIN + 100, trigger=EVERY_MINUTE,
                    seed="s")
    assert (d.fire_tick_ms, d.missed) == (T0 + MIN, [])


def test_jitter_is_deterministic_and_bounded() -> None:
    trig = TriggerCron(cron="* * * * *", jitter_ms=30_000)
    d1 = cron.decide(None, cron.Sync(), T0, trigger=trig, seed="shop/f")
    d2 = cron.decide(None, cron.Sync(), T0, trigger=trig, seed="shop/f")
    assert d1.set_timer == d2.set_timer
    tick, due = d1.set_timer
    assert tick == T0 + MIN and tick <= due <= tick + 30_000
    assert cron.jitter_for("x", 5, 0) == 0


def test_key_and_seed_layouts_are_pinned() -> None:
    assert cron.cron_state_key("shop/f", "* * * * *") == "cron/shop/f/" + __import__("hashlib").sha1(
        b"* * * * *").hexdigest()
    assert cron.cron_run_seed("* * * * *", 5) == "cron * * * * * 5"
