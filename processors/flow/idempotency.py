"""Idempotency (reference §11): first-seen records that drop duplicates for 24 h. Pure.

Two controls share one record, :class:`IdempotencyState` (``first_seen_ms``, wall clock):

* **function level** — ``FlowControl.idempotency`` is a key expression: one run per key
  value per :data:`~sluicegate.flow_config.IDEMPOTENCY_PERIOD_MS`; later events with the
  same value are dropped. Inngest rewrites it as ``rateLimit(limit=1, period=24h, key)``;
  a first-seen record is the same thing (GCRA with limit 1 and burst 0 admits at ``t`` and
  next at ``t + 24 h``, dropped events do not move it) in a form that reads plainly.
  :func:`decide_idempotency`.
* **event-id dedup** — a second event with the same ``id`` within
  :data:`~sluicegate.flow_config.EVENT_DEDUP_PERIOD_MS` triggers no run of this function
  (each function keeps its own record, so fan-out still works). Replays bypass it.
  :func:`decide_event_dedup`.

``now_ms`` is wall-clock ms (when the scheduler decides), not the event's ``ts``.

The window
----------

A record covers the half-open interval ``[first_seen_ms, first_seen_ms + period)``:

=======================================  =================================================
``now_ms``                               decision
=======================================  =================================================
no record                                admitted; record ``first_seen_ms = now_ms``
``< first_seen_ms + period``             duplicate; record unchanged (a duplicate does not
                                         extend the window)
``== first_seen_ms + period``            admitted (the boundary is exclusive: the record
                                         has expired, exactly as GCRA 1/24 h admits at
                                         ``TAT``); a new record ``first_seen_ms = now_ms``
``> first_seen_ms + period``             admitted; new record
``< first_seen_ms`` (clock stepped back) duplicate: still inside the window, which never
                                         ends before ``first_seen_ms + period``
=======================================  =================================================

:func:`idempotency_expires_at` / :func:`event_dedup_expires_at` give ``first_seen_ms +
period``: from then on the record decides like no record, and the caller may delete it.

Other edge cases
----------------

==========================================  ================================================
case                                        what happens
==========================================  ================================================
replay (``replay=True``), event-id dedup    always admitted, nothing recorded: the state is
                                            returned as given (``None`` stays ``None``), so
                                            neither an earlier delivery nor a later one is
                                            affected by the replay (reference §14)
replay, function-level idempotency          not exempt here: the reference only names
                                            event-id dedup as bypassed; a caller that wants
                                            replays to ignore the key does not call
                                            :func:`decide_idempotency` for them
idempotency key evaluates to ``false``      off for this event (it is a rate limit in
                                            Inngest, whose ``false`` key means off):
                                            :func:`idempotency_key` returns ``None``
no idempotency expression                   off: :func:`idempotency_key` returns ``None``
events without a producer ``id``            they get a generated ULID at ingestion, so the
                                            record never matches; the caller may skip it
redelivered input (at least once)           the second delivery reads the record the first
                                            wrote and is a duplicate: the caller must write
                                            the record in the same transaction as the run
==========================================  ================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from ...flow_config import EVENT_DEDUP_PERIOD_MS, IDEMPOTENCY_PERIOD_MS


class IdempotencyState(BaseModel):
    """When the admitted occurrence was seen (wall-clock ms). Also the event-dedup record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_seen_ms: int


@dataclass(frozen=True)
class IdempotencyDecision:
    state: IdempotencyState | None
    duplicate: bool
    changed: bool = False  # False: nothing to persist


def _decide(state: IdempotencyState | None, now_ms: int, period_ms: int) -> IdempotencyDecision:
    if state is not None and now_ms < state.first_seen_ms + period_ms:
        return IdempotencyDecision(state, duplicate=True)
    return IdempotencyDecision(IdempotencyState(first_seen_ms=now_ms), duplicate=False, changed=True)


def decide_idempotency(state: IdempotencyState | None, now_ms: int) -> IdempotencyDecision:
    """Function level: a duplicate key value within 24 h is dropped."""
    return _decide(state, now_ms, IDEMPOTENCY_PERIOD_MS)


def decide_event_dedup(state: IdempotencyState | None, now_ms: int, *, replay: bool = False
                       ) -> IdempotencyDecision:
    """Event id, per function: a duplicate id within 24 h triggers nothing. A replay is
    always admitted and leaves the record as it is."""
    if replay:
        return IdempotencyDecision(state, duplicate=False)
    return _decide(state, now_ms, EVENT_DEDUP_PERIOD_MS)


def idempotency_expires_at(state: IdempotencyState) -> int:
    return state.first_seen_ms + IDEMPOTENCY_PERIOD_MS


def event_dedup_expires_at(state: IdempotencyState) -> int:
    return state.first_seen_ms + EVENT_DEDUP_PERIOD_MS


def idempotency_key(function_key: str, key_value: str | None) -> str | None:
    """The state-table key for a function-level idempotency value, or ``None`` when off.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "idem/" ‖ function_key ‖ "/" ‖ hex(sha1(UTF-8 key value))   (40 hex characters)

    ``key_value`` is :func:`sluicegate.expressions.key_value`'s result: ``None`` (no
    expression) and ``"false"`` both mean off.
    """
    if key_value is None or key_value == "false":
        return None
    return f"idem/{function_key}/{hashlib.sha1(key_value.encode()).hexdigest()}"


def event_dedup_key(function_key: str, event_id: str) -> str:
    """The state-table key of an event id's dedup record for one function.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "dedup/" ‖ function_key ‖ "/" ‖ event_id

    Event ids are 1..128 printable characters without whitespace (``sluicegate.events``)
    and may contain ``/``; the id is kept verbatim (not hashed) so a record names its event.
    Two (function, id) pairs map to one key only if an app or function id contains ``/``
    (``"a/b" + "c/d"`` vs ``"a/b/c" + "d"``): nothing here forbids that; the registry should.
    """
    return f"dedup/{function_key}/{event_id}"
