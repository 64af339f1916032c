"""Cron triggers (reference §12): each tick fires exactly once, across restarts. Pure.

The caller keeps one :class:`CronState` per (function, cron expression) — key
:func:`cron_state_key` — in its changelogged flow table, and feeds:

* :class:`Sync` whenever it is not sure a timer is pending (on start, after a rebalance,
  when the registry shows a new cron function). Idempotent: a pending timer is kept.
* :class:`TickDue` when the timer of tick ``tick_ms`` fires (re-checked here).

Exactly once: ``last_fired_ms`` only moves forward; a tick at or before it never fires
again, and the run id is derived from (cron, tick), so a replayed fire maps to the same run.

Missed ticks (the engine was down): on :class:`Sync`, if ticks between ``last_fired_ms`` and
``now`` were missed, they are reported (``missed``) and only the latest fires (policy
"latest", the default). A function that never fired before starts at the next tick.

Times: ticks are wall-clock ms computed by croniter in the expression's time zone (``TZ=``
prefix, default UTC). A 6-field expression has seconds as its last field (a croniter
extension, used for fine-grained schedules and tests). Jitter delays a tick's timer by a
deterministic amount in ``[0, jitter_ms]`` derived from the function and the tick.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Union
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ...triggers import TriggerCron, split_timezone

MAX_MISSED_REPORTED = 100


class CronState(BaseModel):
    last_fired_ms: int | None = None  # the latest tick that fired (never moves back)
    pending_tick_ms: int | None = None  # the tick whose timer is set


@dataclass(frozen=True)
class Sync:
    pass


@dataclass(frozen=True)
class TickDue:
    tick_ms: int


Input = Union[Sync, TickDue]


@dataclass(frozen=True)
class CronDecision:
    state: CronState
    fire_tick_ms: int | None = None  # start the run of this tick now
    set_timer: tuple[int, int] | None = None  # (tick, due ms): set the timer of the next tick
    missed: list[int] = field(default_factory=list)  # ticks skipped while down (reported)
    changed: bool = False


def next_tick(cron: str, after_ms: int) -> int:
    """The first tick strictly after ``after_ms`` (wall-clock ms)."""
    from croniter import croniter

    tz_name, expr = split_timezone(cron)
    tz = ZoneInfo(tz_name) if tz_name else timezone.utc
    start = datetime.fromtimestamp(after_ms / 1000, tz)
    return int(round(croniter(expr, start).get_next(float) * 1000))


def jitter_for(seed: str, tick_ms: int, jitter_ms: int) -> int:
    if jitter_ms <= 0:
        return 0
    digest = hashlib.blake2b(f"{seed}:{tick_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (jitter_ms + 1)


def cron_state_key(function_key: str, cron: str) -> str:
    """``"cron/" ‖ app/function ‖ "/" ‖ hex(sha1(cron))``. Stored: never change."""
    return f"cron/{function_key}/{hashlib.sha1(cron.encode()).hexdigest()}"


def cron_run_seed(cron: str, tick_ms: int) -> str:
    """Seed of a tick's run id (contains a space, so it never equals an event id). Never change."""
    return f"cron {cron} {tick_ms}"


def _schedule_next(state: CronState, trigger: TriggerCron, seed: str, after_ms: int) -> tuple[CronState, tuple[int, int]]:
    tick = next_tick(trigger.cron, after_ms)
    return state.model_copy(update={"pending_tick_ms": tick}), (tick, tick + jitter_for(seed, tick, trigger.jitter_ms))


def decide(state: CronState | None, inp: Input, now_ms: int, *, trigger: TriggerCron, seed: str) -> CronDecision:
    state = state or CronState()
    if isinstance(inp, Sync):
        if state.pending_tick_ms is not None and state.pending_tick_ms > now_ms:
            return CronDecision(state)  # a timer is pending and not due yet
        missed: list[int] = []
        fire: int | None = None
        if state.last_fired_ms is not None:
            tick = next_tick(trigger.cron, state.last_fired_ms)
            while tick <= now_ms and len(missed) <= MAX_MISSED_REPORTED:
                missed.append(tick)
                tick = next_tick(trigger.cron, tick)
            if missed:
                fire = missed.pop()  # policy "latest": run the newest missed tick once
        elif state.pending_tick_ms is not None and state.pending_tick_ms <= now_ms:
            fire = state.pending_tick_ms  # its timer was lost with a crash: fire it now
        if fire is not None:
            state = state.model_copy(update={"last_fired_ms": fire})
        state, timer = _schedule_next(state, trigger, seed, max(now_ms, state.last_fired_ms or now_ms))
        return CronDecision(state, fire_tick_ms=fire, set_timer=timer, missed=missed, changed=True)
    # TickDue
    if state.last_fired_ms is not None and inp.tick_ms <= state.last_fired_ms:
        return CronDecision(state)  # fired already (a replayed or duplicate timer)
    if inp.tick_ms > now_ms:
        return CronDecision(state)  # early: not due by this clock
    # A late timer (the engine was down): later ticks may be due too; run only the latest.
    due = [inp.tick_ms]
    tick = next_tick(trigger.cron, inp.tick_ms)
    while tick <= now_ms and len(due) <= MAX_MISSED_REPORTED:
        due.append(tick)
        tick = next_tick(trigger.cron, tick)
    fire = due.pop()
    state = state.model_copy(update={"last_fired_ms": fire})
    state, timer = _schedule_next(state, trigger, seed, max(now_ms, fire))
    return CronDecision(state, fire_tick_ms=fire, set_timer=timer, missed=due, changed=True)
