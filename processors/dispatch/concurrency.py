"""Concurrency slots with leases (reference §2, issue 4). Pure.

No Kafka, RocksDB or clock here; every ``now_ms`` is wall-clock ms given by the caller (the
dispatcher's clock when it decides, never an event's ``ts``).

Model
-----

A function has at most two :class:`Concurrency` limits. For one ready item the caller
evaluates each limit's key expression (once, at schedule time, cached on the run — reference
§2) and turns the configs into :class:`SlotLimit` s with :func:`slot_limits`. A
``SlotLimit`` names one *counter* (its ``slot``, see :func:`slot_key`) and the ``limit``
this function compares it with. The counter's identity does **not** include the limit: two
functions sharing an ``app``/``account`` key share one counter and each compares it with
its own limit (reference §2, "A sets 5, B sets 50").

Two kinds of holder, by ``per``:

==========  =====================================  =========================================
``per``     holder of the slot                     held
==========  =====================================  =========================================
``"step"``  a lease (id = job id + attempt)        while one step executes: from dispatch to
            with an expiry                         its outcome (:func:`release`) or its lease
                                                   expiry. As in Inngest: sleeps, waits and the
                                                   time between steps hold nothing
``"run"``   the run id, no expiry                  from the run's first dispatch until the run
                                                   ends (:func:`release_run`) — sleeps included.
                                                   What users ask for in inngest/inngest#2263;
                                                   Inngest's SDKs do not offer it
==========  =====================================  =========================================

An item may be dispatched iff **every** applicable limit has room (:func:`can_acquire`):
a ``step`` counter has room when its live leases number fewer than ``limit``, or this lease
already holds it; a ``run`` counter when its runs number fewer than ``limit``, or this run
already holds it (so the next step of a run that holds its run slot needs no new slot).
:func:`acquire` is all-or-none: it records the lease in every step counter and the run in
every run counter, or changes nothing.

A lease is *live* while ``now_ms < expires_ms``; from ``expires_ms`` on it is expired and
counts for nothing, even before :func:`reap` removes it. :func:`reap` returns the expired
lease ids so the caller re-dispatches their steps.

Edge cases
----------

=======================================  ==================================================
case                                     what happens
=======================================  ==================================================
same lease id acquired twice             no-op (``acquired`` is True while it is live): a
(redelivered dispatch)                   lease never counts twice in a slot
lease id known but expired, not reaped   acquire refuses (``acquired=False``) and changes
                                         nothing: its slot may already be someone else's
release of an unknown / released lease   nothing changes (idempotent)
extend of an expired or unknown lease    refused, nothing changes: a heartbeat never
                                         resurrects a lease whose slot was given away; the
                                         worker's result is still accepted or rejected by the
                                         run state machine, not here
extend to an earlier expiry              the expiry never moves backwards
lease expires exactly at ``now_ms``      expired (``expires_ms`` is exclusive)
run ends while its step executes         :func:`release_run` frees the run slots only; the
(cancellation)                           step's lease keeps its step slot until its outcome or
                                         expiry, since the worker is still running it
limit lowered below the current count    nothing is evicted; no acquisition until the count
                                         falls below the new limit
item with no limits                      always acquirable; the lease is still recorded so
                                         :func:`reap` reports it for re-dispatch
two limits naming the same counter       counted once; the smaller limit decides
lease ids reused after reap              would be a new lease: the caller must give a
                                         re-dispatch a fresh id (next attempt)
=======================================  ==================================================

Scopes: ``fn`` counters are keyed by the function, ``app`` by the app, ``account`` by the
account. This module counts whatever state it is given: the counters are exact only when
every holder of a counter goes through one state, i.e. one partition (true for ``fn`` when
work is partitioned by function). How ``app``/``account`` are enforced across partitions is
the dispatcher's concern, not this module's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ...errors import InvalidInput, LimitExceeded

Scope = Literal["fn", "app", "account"]
Per = Literal["step", "run"]

MAX_LIMITS = 2  # per function (reference §2)


@dataclass(frozen=True)
class Concurrency:
    """One concurrency limit of a function, as configured. ``key`` is a CEL expression."""

    limit: int
    key: str | None = None
    scope: Scope = "fn"
    per: Per = "step"

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise InvalidInput(f"concurrency.limit must be at least 1, got {self.limit}",
                               field="concurrency.limit", limit=1)
        if self.scope not in ("fn", "app", "account"):
            raise InvalidInput(f"concurrency.scope must be fn, app or account, got {self.scope!r}",
                               field="concurrency.scope")
        if self.per not in ("step", "run"):
            raise InvalidInput(f"concurrency.per must be step or run, got {self.per!r}",
                               field="concurrency.per")
        if self.scope != "fn" and self.key is None:
            raise InvalidInput(f"concurrency.key is required with scope {self.scope!r} "
                               "(a fixed shared key is a quoted string, e.g. '\"openai\"')",
                               field="concurrency.key")


@dataclass(frozen=True)
class SlotLimit:
    """One limit as it applies to one item: the counter it uses and this function's limit."""

    slot: str
    limit: int
    per: Per


def slot_key(scope: Scope, scope_id: str, per: Per, key_value: str | None) -> str:
    """The counter's name.

    Layout (stored: never change it without a migration; ``tests/unit`` pins it)::

        "cc/" ‖ scope ‖ "/" ‖ scope_id ‖ "/" ‖ per ‖ "/"                         no key expression
        "cc/" ‖ scope ‖ "/" ‖ scope_id ‖ "/" ‖ per ‖ "/" ‖ hex(sha1(UTF-8 key))  with a key

    ``scope_id`` is the function key (``fn``), app id (``app``) or account id (``account``).
    ``per`` is part of the name so a run limit and a step limit never share a counter.
    """
    suffix = "" if key_value is None else hashlib.sha1(key_value.encode()).hexdigest()
    return f"cc/{scope}/{scope_id}/{per}/{suffix}"


def slot_limits(configs: Sequence[Concurrency], key_values: Sequence[str | None], *,
                function_key: str, app_id: str, account_id: str = "") -> tuple[SlotLimit, ...]:
    """The limits for one item. ``key_values[i]`` is ``configs[i].key`` evaluated on the
    run's trigger event (``None`` when it has no key expression)."""
    if len(configs) > MAX_LIMITS:
        raise LimitExceeded(f"concurrency: a function may have at most {MAX_LIMITS} limits, "
                            f"got {len(configs)}", field="concurrency", limit=MAX_LIMITS)
    if len(key_values) != len(configs):
        raise InvalidInput(f"concurrency: {len(configs)} limits but {len(key_values)} key values",
                           field="concurrency")
    scope_ids = {"fn": function_key, "app": app_id, "account": account_id}
    return tuple(SlotLimit(slot_key(c.scope, scope_ids[c.scope], c.per, v), c.limit, c.per)
                 for c, v in zip(configs, key_values))


class Lease(BaseModel):
    """One dispatched step: the step counters it holds until ``expires_ms`` (exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    expires_ms: int
    slots: tuple[str, ...] = ()


class ConcurrencyState(BaseModel):
    """Who holds which counter. ``step_holders``/``run_holders`` are indexes of ``leases`` and
    ``runs``, kept in step by every function here; counters with no holder are absent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    leases: dict[str, Lease] = {}                    # lease id -> lease
    runs: dict[str, tuple[str, ...]] = {}            # run id -> run counters it holds
    step_holders: dict[str, tuple[str, ...]] = {}    # step counter -> lease ids
    run_holders: dict[str, tuple[str, ...]] = {}     # run counter -> run ids


EMPTY = ConcurrencyState()


def _live(lease: Lease | None, now_ms: int) -> bool:
    return lease is not None and now_ms < lease.expires_ms


def in_use(state: ConcurrencyState, slot: str, now_ms: int) -> int:
    """How many slots of counter ``slot`` are held at ``now_ms`` (expired leases excluded)."""
    if slot in state.run_holders:
        return len(state.run_holders[slot])
    return sum(1 for lid in state.step_holders.get(slot, ()) if _live(state.leases.get(lid), now_ms))


def _fits(state: ConcurrencyState, lim: SlotLimit, lease_id: str, run_id: str, now_ms: int) -> bool:
    if lim.per == "run":
        holders = state.run_holders.get(lim.slot, ())
        return run_id in holders or len(holders) < lim.limit
    if lease_id in state.step_holders.get(lim.slot, ()) and _live(state.leases.get(lease_id), now_ms):
        return True
    return in_use(state, lim.slot, now_ms) < lim.limit


def can_acquire(state: ConcurrencyState, limits: Iterable[SlotLimit], now_ms: int, *,
                lease_id: str = "", run_id: str = "") -> bool:
    """True iff every limit has room for this item (see the module docstring)."""
    return all(_fits(state, lim, lease_id, run_id, now_ms) for lim in limits)


def blocking(state: ConcurrencyState, limits: Iterable[SlotLimit], now_ms: int, *,
             lease_id: str = "", run_id: str = "") -> tuple[str, ...]:
    """The counters that have no room — for "why is this run waiting"."""
    return tuple(lim.slot for lim in limits if not _fits(state, lim, lease_id, run_id, now_ms))


@dataclass(frozen=True)
class Acquired:
    state: ConcurrencyState
    acquired: bool
    changed: bool = False  # False: nothing to persist


def _add(index: Mapping[str, tuple[str, ...]], keys: Iterable[str], holder: str) -> dict[str, tuple[str, ...]]:
    out = dict(index)
    for k in keys:
        if holder not in out.get(k, ()):
            out[k] = (*out.get(k, ()), holder)
    return out


def _remove(index: Mapping[str, tuple[str, ...]], keys: Iterable[str], holder: str) -> dict[str, tuple[str, ...]]:
    out = dict(index)
    for k in keys:
        rest = tuple(h for h in out.get(k, ()) if h != holder)
        if rest:
            out[k] = rest
        else:
            out.pop(k, None)
    return out


def _drop_expired_holders(index: Mapping[str, tuple[str, ...]], slots: Iterable[str],
                          leases: Mapping[str, Lease], now_ms: int) -> dict[str, tuple[str, ...]]:
    """Forget expired leases in ``slots`` (they already count for nothing) so indexes stay small."""
    out = dict(index)
    for k in slots:
        if k in out:
            rest = tuple(h for h in out[k] if _live(leases.get(h), now_ms))
            if len(rest) != len(out[k]):
                out[k] = rest
    return out


def acquire(state: ConcurrencyState, limits: Sequence[SlotLimit], *, lease_id: str, run_id: str,
            expires_ms: int, now_ms: int) -> Acquired:
    """Take a slot in every limit for one dispatched step, or none (``acquired=False``)."""
    existing = state.leases.get(lease_id)
    if existing is not None:  # a redelivered dispatch: never count a lease twice
        return Acquired(state, acquired=_live(existing, now_ms))
    if not can_acquire(state, limits, now_ms, lease_id=lease_id, run_id=run_id):
        return Acquired(state, acquired=False)
    step_slots = tuple(dict.fromkeys(lim.slot for lim in limits if lim.per == "step"))
    run_slots = tuple(dict.fromkeys(lim.slot for lim in limits if lim.per == "run"))
    held = state.runs.get(run_id, ())
    new_run_slots = tuple(s for s in run_slots if s not in held)
    return Acquired(ConcurrencyState(
        leases={**state.leases, lease_id: Lease(run_id=run_id, expires_ms=expires_ms, slots=step_slots)},
        runs={**state.runs, run_id: (*held, *new_run_slots)} if new_run_slots else state.runs,
        step_holders=_add(state.step_holders, step_slots, lease_id),
        run_holders=_add(state.run_holders, new_run_slots, run_id),
    ), acquired=True, changed=True)


def release(state: ConcurrencyState, lease_id: str) -> ConcurrencyState:
    """The step's outcome arrived: free its step slots. Idempotent; run slots stay held."""
    lease = state.leases.get(lease_id)
    if lease is None:
        return state
    leases = {k: v for k, v in state.leases.items() if k != lease_id}
    return state.model_copy(update={
        "leases": leases, "step_holders": _remove(state.step_holders, lease.slots, lease_id)})


def release_run(state: ConcurrencyState, run_id: str) -> ConcurrencyState:
    """The run ended (completed, failed, cancelled): free its run slots. Idempotent."""
    slots = state.runs.get(run_id)
    if slots is None:
        return state
    return state.model_copy(update={
        "runs": {k: v for k, v in state.runs.items() if k != run_id},
        "run_holders": _remove(state.run_holders, slots, run_id)})


def extend(state: ConcurrencyState, lease_id: str, new_expires_ms: int, now_ms: int) -> Acquired:
    """A heartbeat: push a live lease's expiry out (never in). ``acquired=False`` when the
    lease is unknown or already expired — it is not revived (its slot may be someone else's)."""
    lease = state.leases.get(lease_id)
    if not _live(lease, now_ms):
        return Acquired(state, acquired=False)
    assert lease is not None
    if new_expires_ms <= lease.expires_ms:
        return Acquired(state, acquired=True)
    leases = {**state.leases, lease_id: lease.model_copy(update={"expires_ms": new_expires_ms})}
    return Acquired(state.model_copy(update={"leases": leases}), acquired=True, changed=True)


def reap(state: ConcurrencyState, now_ms: int) -> tuple[ConcurrencyState, tuple[str, ...]]:
    """Remove every lease expired at ``now_ms``; return them (oldest expiry first, then id)
    so the caller re-dispatches their steps."""
    expired = sorted((lease.expires_ms, lid) for lid, lease in state.leases.items() if not _live(lease, now_ms))
    if not expired:
        return state, ()
    ids = tuple(lid for _, lid in expired)
    slots = {s for lid in ids for s in state.leases[lid].slots}
    leases = {k: v for k, v in state.leases.items() if _live(v, now_ms)}
    holders = _drop_expired_holders(state.step_holders, slots, leases, now_ms)
    holders = {k: v for k, v in holders.items() if v}
    return state.model_copy(update={"leases": leases, "step_holders": holders}), ids
