"""Singleton (reference §7): at most one run per key at a time. Pure.

``decide(state, input, *, config) -> SingletonDecision``. The caller keeps one
:class:`SingletonState` per :func:`singleton_key` and feeds two inputs: :class:`RunArrives`
when a run is scheduled (after rate limit, debounce and idempotency admitted it) and
:class:`RunEnds` when a run with that key completes, fails or is cancelled. Only the order
of inputs matters, so there is no clock argument.

Actions, forwarded in order: :class:`Start` (the run is dispatched now), :class:`Wait` (the
run is recorded as queued behind ``behind_run_id``; it starts with a later ``Start``),
:class:`Skip` (the run is recorded as skipped, never started) and :class:`CancelRun` (cancel
a running run). ``state=None`` means "delete the state".

Decision table (``H`` = ``running_run_id``, the lock holder; ``W`` = ``waiting_run_id``)
------------------------------------------------------------------------------------

================================  ======  =============================  =======================================
input                             mode    state after                    actions
================================  ======  =============================  =======================================
``RunArrives(r)``, no state       any     ``H=r``                        ``Start(r)``
``RunArrives(r)``, ``r`` is H/W   any     unchanged                      none (a redelivered input)
``RunArrives(r)``                 skip    unchanged                      ``Skip(r, "singleton_skipped", H)``
``RunArrives(r)``                 cancel  ``H=r``, no W                  ``CancelRun(H, r)``, ``Start(r)``;
                                                                         and ``Skip(W, "singleton_replaced",
                                                                         r)`` first if a W was left by an
                                                                         earlier ``queue`` config
``RunArrives(r)``, no W           queue   ``H``, ``W=r``                 ``Wait(r, H)``
``RunArrives(r)``, a W            queue   ``H``, ``W=r``                 ``Skip(W, "singleton_replaced", r)``,
                                                                         ``Wait(r, H)``
``RunEnds(H)``, a W               any     ``H=W``, no W                  ``Start(W)``
``RunEnds(H)``, no W              any     ``None`` (delete)              none
``RunEnds(W)``                    any     ``H``, no W                    none (e.g. cancelled while waiting)
``RunEnds(r)``, ``r`` not H/W     any     unchanged                      none
``RunEnds(r)``, no state          any     ``None`` (nothing)             none
================================  ======  =============================  =======================================

Edge cases
----------

* **The cancel race.** In ``cancel`` mode the new run takes the lock at once and the old
  holder is cancelled afterwards; the old holder's ``RunEnds`` arrives later and is for a
  run that no longer holds the lock, so it changes nothing (it must not release the new
  holder's lock). The same rule makes a redelivered ``RunEnds`` harmless.
* **Bursts in cancel mode.** Inputs for one key are decided one at a time, so there is no
  lock race as in Inngest (where a loser of the race is skipped): each arrival cancels the
  current holder and starts; the last one keeps running.
* **Duplicate inputs.** A redelivered ``RunArrives`` of the holder or the waiting run changes
  nothing — above all it must not cancel or replace itself. A redelivered ``RunArrives`` of
  a run that was already skipped, cancelled or ended cannot be told from a new run by this
  state: the caller must not feed an arrival for a run id it has already decided (run ids
  are derived from the event; the caller checks its run store — skipped runs included —
  first).
* **Mode changed between inputs.** The mode is read per arrival; a waiting run left by a
  ``queue`` config still starts when the holder ends, in any mode (it was promised a turn).
* **``RunEnds`` carries the key the run arrived with**: the caller stores each run's
  singleton key with the run, since a new config may compute another key.
* **Skip reasons.** ``singleton_skipped``: a newcomer was skipped because ``existing_run_id``
  holds the lock (Inngest's ``Singleton`` skip reason). ``singleton_replaced``: a waiting run
  was replaced by the newcomer ``existing_run_id`` (queue mode, inngest/inngest#3563).
* **Not a singleton.** A key evaluating to ``false`` means the event is not a singleton:
  :func:`singleton_key` returns ``None`` and the caller starts the run without ``decide``
  (and feeds no ``RunEnds`` for it). A key evaluation error: Inngest ignores the singleton
  setting and the run proceeds — the caller does the same, also without ``decide``.
* **Retries** of the holder keep the lock: only ``RunEnds`` releases it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, model_validator

from ...flow_config import Singleton

SkipReason = Literal["singleton_skipped", "singleton_replaced"]


class SingletonState(BaseModel):
    """The lock of one (function, key): the run holding it and at most one waiting run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    running_run_id: str
    waiting_run_id: str | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "SingletonState":
        if self.waiting_run_id == self.running_run_id:
            raise ValueError("waiting_run_id must differ from running_run_id")
        return self


@dataclass(frozen=True)
class RunArrives:
    run_id: str


@dataclass(frozen=True)
class RunEnds:
    """The run completed, failed or was cancelled."""

    run_id: str


Input = Union[RunArrives, RunEnds]


@dataclass(frozen=True)
class Start:
    kind: Literal["start"] = field(default="start", init=False)
    run_id: str


@dataclass(frozen=True)
class Wait:
    kind: Literal["wait"] = field(default="wait", init=False)
    run_id: str
    behind_run_id: str


@dataclass(frozen=True)
class Skip:
    kind: Literal["skip"] = field(default="skip", init=False)
    run_id: str
    reason: SkipReason
    existing_run_id: str


@dataclass(frozen=True)
class CancelRun:
    kind: Literal["cancel_run"] = field(default="cancel_run", init=False)
    run_id: str
    replaced_by_run_id: str


Action = Union[Start, Wait, Skip, CancelRun]


@dataclass(frozen=True)
class SingletonDecision:
    state: SingletonState | None
    actions: tuple[Action, ...] = ()
    changed: bool = False  # False: nothing to persist
    note: str = ""


def _arrives(state: SingletonState | None, run_id: str, config: Singleton) -> SingletonDecision:
    if state is None:
        return SingletonDecision(SingletonState(running_run_id=run_id), (Start(run_id),), changed=True)
    holder, waiting = state.running_run_id, state.waiting_run_id
    if run_id in (holder, waiting):
        return SingletonDecision(state, note="duplicate arrival")
    if config.mode == "skip":
        return SingletonDecision(state, (Skip(run_id, "singleton_skipped", holder),))
    replaced = () if waiting is None else (Skip(waiting, "singleton_replaced", run_id),)
    if config.mode == "cancel":
        return SingletonDecision(SingletonState(running_run_id=run_id),
                                 (*replaced, CancelRun(holder, run_id), Start(run_id)), changed=True)
    return SingletonDecision(SingletonState(running_run_id=holder, waiting_run_id=run_id),
                             (*replaced, Wait(run_id, holder)), changed=True)


def _ends(state: SingletonState | None, run_id: str) -> SingletonDecision:
    if state is None:
        return SingletonDecision(None, note="no lock")
    if run_id == state.running_run_id:
        if state.waiting_run_id is None:
            return SingletonDecision(None, changed=True)
        waiting = state.waiting_run_id
        return SingletonDecision(SingletonState(running_run_id=waiting), (Start(waiting),), changed=True)
    if run_id == state.waiting_run_id:
        return SingletonDecision(SingletonState(running_run_id=state.running_run_id), changed=True)
    return SingletonDecision(state, note="not the holder")


def decide(state: SingletonState | None, event: Input, *, config: Singleton) -> SingletonDecision:
    """The one entry point for every input of one (function, singleton key)."""
    if isinstance(event, RunArrives):
        return _arrives(state, event.run_id, config)
    return _ends(state, event.run_id)


def singleton_key(function_key: str, key_value: str | None) -> str | None:
    """The state-table key of a run's lock, or ``None`` when the event is not a singleton.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "singleton/" ‖ function_key ‖ "/"                          no key expression
        "singleton/" ‖ function_key ‖ "/" ‖ hex(sha1(UTF-8 key))   with a key (40 hex characters)

    ``key_value`` is :func:`sluicegate.expressions.key_value`'s result: ``None`` when there
    is no key expression (one lock for the whole function), ``"false"`` → ``None``.
    """
    if key_value is None:
        return f"singleton/{function_key}/"
    if key_value == "false":
        return None
    return f"singleton/{function_key}/{hashlib.sha1(key_value.encode()).hexdigest()}"
