"""Admission of a triggered run at schedule time: rate limit, then idempotency. Pure.

``admit(trigger, flow_state, now_ms) -> Admission``. ``flow_state`` maps state-table keys
(:mod:`sluicegate.processors.flow`) to their JSON (or ``None``); the caller persists
``Admission.puts`` (``None`` = delete) in the same record as the run it creates or skips.

Order (reference §16): rate limit → idempotency. A run dropped by the rate limit does not
consume its idempotency key. A key expression that fails to evaluate skips the run with
reason ``expression_error`` (the reference fails the schedule; we make it visible instead).
Debounce, batching and singleton are not enforced here yet: see the README's limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from ..expressions import ExpressionError, key_value
from ..partitioning import function_key
from ..wire import Trigger
from .flow import idempotency as idem
from .flow import rate_limit as rl

SkipReason = Literal["rate_limited", "idempotent_duplicate", "expression_error"]


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: SkipReason | None = None
    detail: str = ""
    puts: dict[str, str | None] = field(default_factory=dict)


def flow_keys(trigger: Trigger) -> dict[str, str]:
    """The state keys :func:`admit` may read for this trigger (so the caller loads only
    those). Raises :class:`ExpressionError` like :func:`admit` would report it."""
    flow = trigger.function.flow
    fkey = function_key(trigger.app_id, trigger.function_id)
    event = trigger.events[0].as_payload()
    keys: dict[str, str] = {}
    if flow is None:
        return keys
    if flow.rate_limit is not None:
        k = rl.rate_limit_key(fkey, key_value(flow.rate_limit.key, event))
        if k is not None:
            keys["rate_limit"] = k
    if flow.idempotency:
        k = idem.idempotency_key(fkey, key_value(flow.idempotency, event))
        if k is not None:
            keys["idempotency"] = k
    return keys


def admit(trigger: Trigger, state_of: Callable[[str], str | None], now_ms: int) -> Admission:
    flow = trigger.function.flow
    if flow is None:
        return Admission(True)
    try:
        keys = flow_keys(trigger)
    except ExpressionError as exc:
        return Admission(False, "expression_error", f"a key expression failed: {exc}")
    puts: dict[str, str | None] = {}

    if "rate_limit" in keys and flow.rate_limit is not None:
        raw = state_of(keys["rate_limit"])
        state = rl.GcraState.model_validate_json(raw) if raw else None
        decision = rl.decide(state, now_ms, flow.rate_limit)
        if not decision.admitted:
            return Admission(False, "rate_limited",
                             f"rate limit {flow.rate_limit.limit} per {flow.rate_limit.period_ms} ms; "
                             f"next admission at {decision.retry_at_ms}")
        if decision.changed and decision.state is not None:
            puts[keys["rate_limit"]] = decision.state.model_dump_json()

    if "idempotency" in keys:
        raw = state_of(keys["idempotency"])
        istate = idem.IdempotencyState.model_validate_json(raw) if raw else None
        idecision = idem.decide_idempotency(istate, now_ms)
        if idecision.duplicate:
            # the rate-limit slot taken above is not given back: Inngest evaluates both the same way
            return Admission(False, "idempotent_duplicate", "a run with this idempotency key started within 24 h",
                             puts)
        if idecision.changed and idecision.state is not None:
            puts[keys["idempotency"]] = idecision.state.model_dump_json()

    return Admission(True, puts=puts)
