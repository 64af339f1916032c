"""Throttle (reference §3): GCRA on run starts; excess waits, never dropped. Pure.

``decide(state, now_ms, config) -> ThrottleDecision``. ``now_ms`` is wall-clock ms (when the
dispatcher is about to start a run, not the event's ``ts``). Only a run's *first* dispatch
is throttled; later steps are not. The caller evaluates the key expression, keeps one
:class:`~sluicegate.processors.flow.rate_limit.GcraState` per :func:`throttle_key` (the same
state model as rate limit), and persists what comes back.

Algorithm (GCRA, as Inngest's ``gcra.lua`` called from ``acquire.lua``)
-----------------------------------------------------------------------

* emission interval ``T = period_ms / limit``;
* ``capacity = limit + burst`` starts at one instant from an idle key: Inngest calls GCRA
  with ``burst' = limit + burst - 1`` (reference §3: "limit 2, period 6 s, burst 1 lets 3
  start at once, then 1 every 3 s");
* a start at ``now`` is allowed iff ``TAT - now <= (capacity - 1) * T``; then
  ``TAT := max(TAT, now) + T``. A refused start leaves the state **unchanged** (the run stays
  in its backlog; waiting must not push the next start further out).

``next_at_ms`` is always the first whole ms at which one (more) start would be allowed,
given the returned state: ``max(now_ms, ceil(TAT - (capacity - 1) * T))``. After a refusal
it is exact (every ms before it is refused, it is allowed); after an allowed start it says
when the key has room again, so the dispatcher can park the backlog until then.

``burst`` defaults to **0** here, so an idle key starts ``limit`` runs at once and then one
per ``T``: "30 per minute" starts 30, then one every 2 s. Inngest's Python SDK sends
``burst=1`` by default (capacity ``limit + 1``); a function ported from it keeps that
behaviour by setting ``burst=1``.

Arithmetic is in integer ticks of ``1 / limit`` ms, exactly as
:mod:`sluicegate.processors.flow.rate_limit` (``T = period_ms`` ticks), so it is exact for
every ``(limit, period_ms)``.

Edge cases
----------

=====================================  ==========================================================
case                                   what happens
=====================================  ==========================================================
no state (``None``) or ``TAT <= now``  idle: allowed (capacity >= 1)
``TAT - now == (capacity-1) * T``      allowed (the boundary is inclusive)
refused start                          state unchanged, ``changed=False``; the run waits in its
                                       backlog until ``next_at_ms`` — never dropped
clock steps backwards by ``X``         starts wait ``X`` longer; never an extra start
limit/period/burst changed             the TAT is honoured as written (in the new ticks; a
                                       ``tat_rem >= limit`` rounds up to the next ms, < 1 ms)
two functions, same key value          separate buckets (reference §3): the state key holds the
                                       function key
no key expression                      one bucket per function
the same run decided twice             counted twice: the caller persists the state in the same
                                       write as the run's start
=====================================  ==========================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from ...errors import InvalidInput
from ..flow.rate_limit import GcraState, tat_ticks

SECOND_MS = 1000
MAX_PERIOD_MS = 7 * 24 * 3600 * SECOND_MS  # reference §3: period is 1 s to 7 d


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` run starts per ``period_ms`` (per ``key`` value), ``burst`` more at once."""

    limit: int
    period_ms: int
    burst: int = 0
    key: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise InvalidInput(f"throttle.limit must be at least 1, got {self.limit}",
                               field="throttle.limit", limit=1)
        if not SECOND_MS <= self.period_ms <= MAX_PERIOD_MS:
            raise InvalidInput(f"throttle.period_ms must be between {SECOND_MS} and {MAX_PERIOD_MS}, "
                               f"got {self.period_ms}", field="throttle.period_ms", limit=MAX_PERIOD_MS)
        if self.burst < 0:
            raise InvalidInput(f"throttle.burst must be at least 0, got {self.burst}",
                               field="throttle.burst", limit=0)

    @property
    def capacity(self) -> int:
        """Starts allowed at one instant from an idle key."""
        return self.limit + self.burst


class ThrottleDecision(NamedTuple):
    state: GcraState | None
    allowed: bool
    next_at_ms: int      # first whole ms at which one more start is allowed (>= now_ms)
    changed: bool = False  # False: nothing to persist


def _next_at(tat: int, tolerance: int, now_ms: int, limit: int) -> int:
    return max(now_ms, -(-(tat - tolerance) // limit))


def decide(state: GcraState | None, now_ms: int, config: Throttle) -> ThrottleDecision:
    """Allow or defer one run start at wall-clock ``now_ms``."""
    limit = config.limit
    emission = config.period_ms          # T, in ticks of 1/limit ms
    now = now_ms * limit
    tolerance = (config.capacity - 1) * emission
    tat = tat_ticks(state, now, limit)
    if tat - now > tolerance:
        return ThrottleDecision(state, False, _next_at(tat, tolerance, now_ms, limit))
    new_tat = max(tat, now) + emission
    tat_ms, tat_rem = divmod(new_tat, limit)
    return ThrottleDecision(GcraState(tat_ms=tat_ms, tat_rem=tat_rem), True,
                            _next_at(new_tat, tolerance, now_ms, limit), changed=True)


def throttle_key(function_key: str, key_value: str | None) -> str:
    """The state-table key for one run start.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "th/" ‖ function_key ‖ "/"                          no key expression
        "th/" ‖ function_key ‖ "/" ‖ hex(sha1(UTF-8 key))   with a key (40 hex characters)
    """
    if key_value is None:
        return f"th/{function_key}/"
    return f"th/{function_key}/{hashlib.sha1(key_value.encode()).hexdigest()}"
