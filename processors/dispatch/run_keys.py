"""What the dispatcher fixes for a run when it is first ready (reference §2, §3, §8). Pure.

``run_keys(fn, event, partitions_sharing=...) -> RunKeys``: the run's backlog key, its
concurrency counters, throttle bucket, priority and fairness weight — every expression is
evaluated once, against the trigger event (the first event of a batch), and cached on the
run's dispatch record, so every step of the run uses the same values even if the function's
expressions change later.

=================================  =========================================================
case                               what happens
=================================  =========================================================
no dispatch config                 key ``""``, no limits, no throttle, priority 0, weight 1
key expression fails to evaluate   the value ``"(key error)"``: those runs share one backlog
                                   and one counter (they are limited, never dropped)
priority not an integer / error    0 (reference §8); clamped to ±43 200 s
weight not an integer / error      1; clamped to 1–100
``app``/``account`` scope shared   each partition enforces ``max(1, limit // n)`` where ``n``
by functions on ``n`` partitions   is how many partitions hold a function that names this
                                   counter: the total stays ≤ ``max(limit, n)``; exact (n = 1)
                                   when they share a partition
=================================  =========================================================

The backlog key joins the values that decide whether the head of a backlog may go: the
fairness key's value, then each concurrency key's, then the throttle key's, so one backlog
never holds runs with different counters (its head speaks for all of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...expressions import ExpressionError, evaluate, key_value
from ...flow_config import MAX_FAIRNESS_WEIGHT, PRIORITY_MAX_S
from ...partitioning import function_key
from ...wire import FunctionDefinition
from . import concurrency as cc
from . import throttle as th

KEY_ERROR = "(key error)"
ACCOUNT_ID = ""  # one account per installation


@dataclass(frozen=True)
class RunKeys:
    key: str = ""
    limits: tuple[cc.SlotLimit, ...] = ()
    throttle: th.Throttle | None = None
    throttle_key: str | None = None
    priority_s: int = 0
    weight: int = 1


def _value(expr: str | None, event: dict[str, Any]) -> str | None:
    try:
        return key_value(expr, event)
    except ExpressionError:
        return KEY_ERROR


def _int(expr: str, event: dict[str, Any], default: int, lo: int, hi: int) -> int:
    try:
        v = evaluate(expr, {"event": event})
    except ExpressionError:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return default
    if isinstance(v, float) and not v.is_integer():  # also inf and NaN, which int() rejects
        return default
    return max(lo, min(hi, int(v)))


def run_keys(fn: FunctionDefinition, event: dict[str, Any], *,
             partitions_sharing: dict[str, int] | None = None) -> RunKeys:
    """``partitions_sharing[counter_prefix]``: for ``app``/``account`` counters, how many
    partitions hold a function using them (see the table above); missing means 1."""
    flow = fn.flow
    if flow is None:
        return RunKeys()
    fkey = function_key(fn.app_id, fn.function_id)
    parts: list[str] = []
    if flow.fairness is not None:
        parts.append(_value(flow.fairness.key, event) or "")
    values = [_value(c.key, event) for c in flow.concurrency]
    configs = [cc.Concurrency(limit=c.limit, key=c.key, scope=c.scope, per=c.per) for c in flow.concurrency]
    limits = list(cc.slot_limits(configs, values, function_key=fkey, app_id=fn.app_id, account_id=ACCOUNT_ID))
    for i, (c, lim) in enumerate(zip(flow.concurrency, limits)):
        if c.scope != "fn":
            n = (partitions_sharing or {}).get(shared_counter_id(c.scope, fn.app_id, c.key or ""), 1)
            if n > 1:
                limits[i] = cc.SlotLimit(lim.slot, max(1, lim.limit // n), lim.per)
    parts.extend(v or "" for v in values if v is not None)
    throttle = throttle_key = None
    if flow.throttle is not None:
        t = flow.throttle
        throttle = th.Throttle(limit=t.limit, period_ms=t.period_ms, burst=t.burst, key=t.key)
        tv = _value(t.key, event)
        throttle_key = th.throttle_key(fkey, tv)
        if tv is not None:
            parts.append(tv)
    priority = _int(flow.priority.run, event, 0, -PRIORITY_MAX_S, PRIORITY_MAX_S) if flow.priority else 0
    weight = 1
    if flow.fairness is not None and flow.fairness.weight:
        weight = _int(flow.fairness.weight, event, 1, 1, MAX_FAIRNESS_WEIGHT)
    return RunKeys(key="|".join(parts), limits=tuple(limits), throttle=throttle, throttle_key=throttle_key,
                   priority_s=priority, weight=weight)


def shared_counter_id(scope: str, app_id: str, key_expr: str) -> str:
    """Identifies an ``app``/``account`` counter family by its key expression."""
    return f"{scope}/{app_id if scope == 'app' else ACCOUNT_ID}/{key_expr}"


def partitions_sharing(functions: list[FunctionDefinition], partition_of: Any) -> dict[str, int]:
    """For every ``app``/``account`` counter family: how many partitions use it."""
    seen: dict[str, set[int]] = {}
    for fn in functions:
        if fn.flow is None:
            continue
        for c in fn.flow.concurrency:
            if c.scope != "fn":
                cid = shared_counter_id(c.scope, fn.app_id, c.key or "")
                seen.setdefault(cid, set()).add(partition_of(function_key(fn.app_id, fn.function_id)))
    return {cid: len(ps) for cid, ps in seen.items()}
