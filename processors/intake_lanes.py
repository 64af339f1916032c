"""Which intake lane a command of the function processor waits in (``processors/fair_intake.py``). Pure.

Lanes of one partition take turns, and each keeps its records in offset order, so the
choice of lane is the choice of what may overtake what:

* ``RESULTS`` — what moves a run that has started: step outcomes, heartbeats, run timers
  (retries, sleeps, wait and invoke timeouts, lifecycle timeouts), resolved waits, cancels
  of one run, dispatcher ticks. Every record read from ``sg.results`` is one.
* ``("key", app, function, key)`` — a trigger of a function whose schedule-time decision does
  not depend on the order of its events (no rate limit, debounce, batch, idempotency or
  singleton): one lane per dispatcher backlog key (the concurrency, throttle and fairness key
  values), so one key's burst of triggers does not hold back another key's trigger. The
  dispatcher orders runs by their backlog anyway.
* ``("fn", app, function)`` — triggers of a function whose flow control depends on their
  order, with its debounce, batch and cron timers: one lane, offset order.
* ``("replay", id)`` — a replay's triggers and the mark that follows each chunk of them: a
  background lane (:func:`is_background`), served only when no live trigger waits.
* ``("housekeeping",)`` — deleting runs past their retention (``ExpireRuns``) and flow
  records worth nothing any more (``SweepFlow``): a background lane too.
* ``("control",)`` — everything else (bulk cancellations, reruns, replay control), in order.
"""

from __future__ import annotations

from typing import Hashable

from ..wire import AnyCommand, CronSync, ExpireRuns, FunctionDefinition, ReplayMark, SweepFlow, TimerFired, Trigger
from .dispatch.run_keys import run_keys
from .fair_intake import RESULTS

RESULT_KINDS = frozenset({"outcome", "heartbeat", "dispatch_tick", "wait_resolved", "cancel"})
CONTROL = ("control",)
HOUSEKEEPING = ("housekeeping",)


def order_sensitive(fn: FunctionDefinition) -> bool:
    """Does scheduling a run of ``fn`` depend on the order of its events?"""
    flow = fn.flow
    return flow is not None and any(x is not None for x in (
        flow.rate_limit, flow.debounce, flow.batch, flow.idempotency, flow.singleton))


def is_background(lane: Hashable) -> bool:
    """A replay's lane, or housekeeping: they wait behind live new work of the partition."""
    return lane == HOUSEKEEPING or (isinstance(lane, tuple) and len(lane) == 2 and lane[0] == "replay")


def command_lane(cmd: AnyCommand | None, from_results: bool = False) -> Hashable:
    if from_results:
        return RESULTS
    if cmd is None:
        return CONTROL
    if cmd.kind in RESULT_KINDS or (isinstance(cmd, TimerFired) and not cmd.flow_key):
        return RESULTS
    if isinstance(cmd, Trigger):
        if cmd.replay_id is not None:
            return ("replay", cmd.replay_id)
        if order_sensitive(cmd.function):
            return ("fn", cmd.app_id, cmd.function_id)
        event = cmd.events[0].as_payload() if cmd.events else {}
        return ("key", cmd.app_id, cmd.function_id, run_keys(cmd.function, event).key)
    if isinstance(cmd, ReplayMark):
        return ("replay", cmd.replay_id)
    if isinstance(cmd, (ExpireRuns, SweepFlow)):
        return HOUSEKEEPING
    if isinstance(cmd, (TimerFired, CronSync)):
        return ("fn", cmd.app_id, cmd.function_id)
    return CONTROL
