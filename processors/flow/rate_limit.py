"""Rate limit (reference §4): GCRA on run admissions; excess events are dropped. Pure.

``decide(state, now_ms, config) -> RateDecision``. ``now_ms`` is wall-clock ms (the time
the scheduler decides, not the event's ``ts``). The caller evaluates the key expression,
keeps one :class:`GcraState` per :func:`rate_limit_key`, and persists what comes back.

Algorithm (GCRA, as Inngest's ``ratelimit.lua`` via the ``throttled`` library)
---------------------------------------------------------------------------------

* emission interval ``T = period_ms / limit`` — the time one admission "costs";
* ``burst`` extra admissions on top of one, so ``capacity = burst + 1`` at one instant;
* ``TAT`` (theoretical arrival time) is the state; an empty state means ``TAT <= now``.

An event at ``now`` is admitted iff ``TAT - now <= burst * T``; then
``TAT := max(TAT, now) + T``. Otherwise it is dropped and the state is **not** changed;
``retry_at_ms = ceil(TAT - burst * T)`` is the first whole ms at which one event would be
admitted (exact: every event before it is dropped, one at it is admitted).

Burst by mode (:class:`~sluicegate.flow_config.RateLimit`):

==========  ===============  ====================  =========================================
mode        ``burst``        capacity at once      behaviour
==========  ===============  ====================  =========================================
``gcra``    ``limit // 10``  ``limit // 10 + 1``   Inngest's: ``limit=5`` per 24 h admits one,
                                                   then one every 4.8 h (inngest/inngest#1460)
``window``  ``limit - 1``    ``limit``             "N per window": from an empty state N
                                                   events at one instant are admitted, the
                                                   N+1th is dropped; capacity refills one per
                                                   ``T``, so ``period_ms`` after a full burst
                                                   all N are available again
==========  ===============  ====================  =========================================

``window`` is not a fixed window: capacity refills evenly, one admission per ``T``. Both
modes are a token bucket of size ``capacity`` refilled one token per ``T``: over any
interval of length ``d`` at most ``capacity + floor(d / T)`` events are admitted, so a steady
stream gets at most ``limit`` per ``period_ms``.

Arithmetic and rounding
-----------------------

All arithmetic is in integer *ticks* of ``1 / limit`` ms, where ``T = period_ms`` ticks,
so it is exact for every ``(limit, period_ms)`` — ``limit=3`` per 1000 ms admits exactly 3
at once in ``window`` mode, and ``limit=2000`` per second (``T = 0.5`` ms) works, which a
whole-ms TAT could not represent. The state stores the TAT as ``tat_ms`` (whole ms, floor)
plus ``tat_rem`` (the remaining ticks, ``0 <= tat_rem < limit``); ``tat_rem`` is 0 whenever
``T`` is a whole number of ms. The only rounding is ``retry_at_ms`` (rounded up to the first
whole ms that admits) and :func:`state_expires_at` (rounded up: the state is equivalent to
empty from ``ceil(TAT)`` on).

Edge cases
----------

=====================================  ==========================================================
case                                   what happens
=====================================  ==========================================================
no state (``None``)                    same as ``TAT = now``: admitted (capacity >= 1 always)
stale state (``TAT <= now``)           same as no state; :func:`state_expires_at` says when the
                                       caller may delete it (``ceil(TAT)``)
``TAT - now == burst * T`` exactly     admitted (the boundary is inclusive)
dropped event                          state returned unchanged (``changed=False``), so drops
                                       never push the next admission further out
clock steps backwards by ``X``         ``TAT - now`` grows by ``X``: more drops, never an extra
                                       admission; the wait lengthens by ``X``
``T`` not a whole ms                   exact (ticks); ``tat_rem`` carries the fraction
``limit`` changed since the state      the TAT is re-read in the new ticks; a ``tat_rem`` that no
was written                            longer fits (``>= limit``) rounds the TAT up to the next ms.
                                       Error < 1 ms, once
shorter ``period_ms``, larger          the TAT is a time and is honoured as written: after
``limit`` or other ``mode`` since      1/24 h → 1/min a key that was just admitted waits out the
the state was written                  old day (at most the old ``capacity * T``). Not clamped
                                       (Inngest clamps on read and writes the clamp back, but a
                                       drop must not change the state here); a caller that wants
                                       a fresh start deletes the function's ``rl/`` state on a
                                       config change
key evaluates to ``false``             rate limiting is off for this event: :func:`rate_limit_key`
                                       returns ``None``; the caller does not call ``decide``
no key expression                      one state for the whole function (``rl/<function_key>/``)
key evaluation error                   the caller fails the schedule (reference §4), not here
same event decided twice (redelivery)  counted twice: this module cannot tell. Inngest keeps a
                                       30-min idempotency record per event for this; the caller
                                       must persist the state in the same transaction as the run
                                       it creates, or skip events it has already scheduled
=====================================  ==========================================================

Password reset (limit 1 per hour, ``gcra``): five requests within seconds → the first is
admitted, four are dropped with ``retry_at_ms = first + 1 h``; one at ``first + 1 h`` is
admitted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ...flow_config import RateLimit


class GcraState(BaseModel):
    """The theoretical arrival time of one key: ``tat_ms + tat_rem / limit`` ms (wall clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tat_ms: int
    tat_rem: int = Field(0, ge=0, description="ticks of 1/limit ms past tat_ms")


@dataclass(frozen=True)
class RateDecision:
    state: GcraState | None
    admitted: bool
    retry_at_ms: int | None = None  # set when dropped: the first ms at which one would be admitted
    changed: bool = False           # False: nothing to persist


def burst(config: RateLimit) -> int:
    """Admissions on top of one that may happen at the same instant (see the table above)."""
    return config.limit // 10 if config.mode == "gcra" else config.limit - 1


def tat_ticks(state: GcraState | None, now_ticks: int, limit: int) -> int:
    """The state's TAT in ticks of 1/limit ms (shared with the dispatcher's throttle)."""
    if state is None:
        return now_ticks
    if state.tat_rem >= limit:  # written under a larger limit: round up to the next ms
        return (state.tat_ms + 1) * limit
    return state.tat_ms * limit + state.tat_rem


def decide(state: GcraState | None, now_ms: int, config: RateLimit) -> RateDecision:
    """Admit or drop one event at wall-clock ``now_ms``."""
    limit = config.limit
    emission = config.period_ms          # T, in ticks of 1/limit ms
    now = now_ms * limit
    tolerance = burst(config) * emission
    tat = tat_ticks(state, now, limit)
    if tat - now > tolerance:
        allow_at = tat - tolerance
        return RateDecision(state, admitted=False, retry_at_ms=-(-allow_at // limit))
    tat_ms, tat_rem = divmod(max(tat, now) + emission, limit)
    return RateDecision(GcraState(tat_ms=tat_ms, tat_rem=tat_rem), admitted=True, changed=True)


def state_expires_at(state: GcraState) -> int:
    """The wall-clock ms from which ``state`` is equivalent to no state (``ceil(TAT)``):
    the caller may delete it then."""
    return state.tat_ms + (1 if state.tat_rem else 0)


def rate_limit_key(function_key: str, key_value: str | None) -> str | None:
    """The state-table key for one event, or ``None`` when rate limiting is off for it.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "rl/" ‖ function_key ‖ "/"                          no key expression (whole function)
        "rl/" ‖ function_key ‖ "/" ‖ hex(sha1(UTF-8 key))   with a key (40 hex characters)

    ``key_value`` is :func:`sluicegate.expressions.key_value`'s result: ``None`` when there
    is no key expression, ``"false"`` when it evaluated to ``false`` (→ ``None``: off).
    The key is hashed so any value (long, binary-ish, containing ``/``) gives a fixed-size
    key; the fixed suffix keeps the layout unambiguous when read from the right.
    """
    if key_value is None:
        return f"rl/{function_key}/"
    if key_value == "false":
        return None
    return f"rl/{function_key}/{hashlib.sha1(key_value.encode()).hexdigest()}"
