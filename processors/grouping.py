"""Debounce and batching at schedule time: feed an event (or a due timer) of a grouped
function to its decision (:mod:`.flow.debounce`, :mod:`.flow.batching`) and translate the
result into what the processor writes. Pure.

State keys in the processor's ``flow`` table (stored: never change without a migration)::

    "deb/"   ‖ app/function ‖ "/" ‖ hex(sha1(key value))   DebounceState JSON
    "batch/" ‖ app/function ‖ "/" ‖ hex(sha1(key value))   BatchState JSON
    "seen/"  ‖ <one of the two keys above>                 {"at": ms, "ids": [...]}: the last
                                                            RECENT_IDS event ids taken, and when
                                                            the last was (a bare list before)

No key expression hashes the empty string. The ``seen/`` record makes a redelivered event
(a processor that crashed before committing re-reads its input) a no-op even after the
group it joined has already started its run; it is bounded per key, and deleted 24 h after
its last event (``flow/expiry.py``): a redelivery comes from the span since the last
commit, seconds old, never a day.

Timer ids in the shared timer table are qualified as ``<flow key>|<decision's timer id>``,
because a decision's timer ids are only unique within one (function, key).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Literal

from ..expressions import ExpressionError, evaluate, key_value
from ..partitioning import function_key
from ..wire import EventRecord, FunctionDefinition
from .flow import batching, debounce
from .flow.timer_actions import CancelTimer, SetTimer

RECENT_IDS = 256
Kind = Literal["debounce", "batch"]


@dataclass(frozen=True)
class FlowTimer:
    timer_id: str  # qualified: "<flow key>|<raw id>"
    due_ms: int
    flow_key: str
    raw_id: str


@dataclass
class Grouped:
    puts: dict[str, str | None] = field(default_factory=dict)
    set_timers: list[FlowTimer] = field(default_factory=list)
    cancel_timers: list[tuple[str, int]] = field(default_factory=list)  # (qualified id, due)
    runs: list[tuple[str, list[EventRecord]]] = field(default_factory=list)  # (run seed, events)
    replaced: list[EventRecord] = field(default_factory=list)  # events that will never run
    skipped: tuple[str, str] | None = None  # (reason, detail) for the incoming event


def grouping_of(fn: FunctionDefinition) -> Kind | None:
    if fn.flow is None:
        return None
    if fn.flow.debounce is not None:
        return "debounce"
    if fn.flow.batch is not None:
        return "batch"
    return None


def flow_key_for(fn: FunctionDefinition, kind: Kind, value: str | None) -> str:
    prefix = "deb" if kind == "debounce" else "batch"
    digest = hashlib.sha1((value or "").encode()).hexdigest()
    return f"{prefix}/{function_key(fn.app_id, fn.function_id)}/{digest}"


def qualify(flow_key: str, raw_id: str) -> str:
    return f"{flow_key}|{raw_id}"


def _translate(result: Grouped, flow_key: str, decision: debounce.Decision | batching.Decision,
               known: dict[str, EventRecord]) -> Grouped:
    if decision.changed:
        result.puts[flow_key] = None if decision.state is None else decision.state.model_dump_json()
    for action in decision.actions:
        if isinstance(action, SetTimer):
            result.set_timers.append(FlowTimer(qualify(flow_key, action.timer_id), action.due_ms, flow_key,
                                               action.timer_id))
        elif isinstance(action, CancelTimer):
            result.cancel_timers.append((qualify(flow_key, action.timer_id), action.due_ms))
        elif isinstance(action, (debounce.StartRun, batching.StartRun)):
            result.runs.append((action.run_seed, list(action.events)))
        elif isinstance(action, debounce.Replaced) and action.event_id in known:
            result.replaced.append(known[action.event_id])
    return result


def _load(kind: Kind, raw: str | None) -> debounce.DebounceState | batching.BatchState | None:
    if raw is None:
        return None
    if kind == "debounce":
        return debounce.DebounceState.model_validate_json(raw)
    return batching.BatchState.model_validate_json(raw)


def _held(state: debounce.DebounceState | batching.BatchState | None) -> dict[str, EventRecord]:
    if isinstance(state, debounce.DebounceState):
        return {h.event.id: h.event for h in state.events}
    if isinstance(state, batching.BatchState):
        return {e.id: e for e in state.events}
    return {}


def seen_ids(raw: str | bytes | None) -> list[str]:
    """The event ids of a ``seen/`` record: ``{"at", "ids"}``, or the bare list written before."""
    if raw is None:
        return []
    value = json.loads(raw)
    return list(value["ids"]) if isinstance(value, dict) else list(value)


def on_event(fn: FunctionDefinition, event: EventRecord, state_of: Callable[[str], str | None],
             now_ms: int) -> Grouped:
    """An admitted event of a debounced or batched function."""
    kind = grouping_of(fn)
    assert kind is not None and fn.flow is not None
    payload = event.as_payload()
    config = fn.flow.debounce if kind == "debounce" else fn.flow.batch
    assert config is not None
    try:
        value = key_value(config.key, payload)
    except ExpressionError as exc:
        return Grouped(skipped=("expression_error", f"{kind}.key failed: {exc}"))
    flow_key = flow_key_for(fn, kind, value)
    seen_key = f"seen/{flow_key}"
    seen = seen_ids(state_of(seen_key))
    if event.id in seen:
        return Grouped()  # redelivered: it is in a group or a run already
    result = Grouped(puts={seen_key: json.dumps({"at": now_ms, "ids": (seen + [event.id])[-RECENT_IDS:]})})
    state = _load(kind, state_of(flow_key))
    known = {**_held(state), event.id: event}
    size = len(event.dumps())
    if kind == "debounce":
        assert fn.flow.debounce is not None
        d = debounce.decide(state if isinstance(state, debounce.DebounceState) else None,
                            debounce.EventArrives(event, size), now_ms, config=fn.flow.debounce)
        return _translate(result, flow_key, d, known)
    assert fn.flow.batch is not None
    batchable = True
    if fn.flow.batch.if_exp:
        try:
            batchable = evaluate(fn.flow.batch.if_exp, {"event": payload}) is True
        except ExpressionError:
            batchable = False  # reference §6: false or an error means "not batched"
    b = batching.decide(state if isinstance(state, batching.BatchState) else None,
                        batching.EventArrives(event, size, batchable), now_ms, config=fn.flow.batch)
    return _translate(result, flow_key, b, known)


def on_timer(fn: FunctionDefinition, flow_key: str, raw_id: str, state_of: Callable[[str], str | None],
             now_ms: int) -> Grouped:
    """A due timer of a debounce or batch (re-checked by the decision)."""
    kind: Kind = "debounce" if flow_key.startswith("deb/") else "batch"
    state = _load(kind, state_of(flow_key))
    result = Grouped()
    if kind == "debounce" and fn.flow is not None and fn.flow.debounce is not None:
        d = debounce.decide(state if isinstance(state, debounce.DebounceState) else None,
                            debounce.TimerFired(raw_id), now_ms, config=fn.flow.debounce)
        return _translate(result, flow_key, d, _held(state))
    if kind == "batch" and fn.flow is not None and fn.flow.batch is not None:
        b = batching.decide(state if isinstance(state, batching.BatchState) else None,
                            batching.TimerFired(raw_id), now_ms, config=fn.flow.batch)
        return _translate(result, flow_key, b, _held(state))
    # The function no longer debounces/batches: start what was held, as it was.
    held = list(_held(state).values())
    if held:
        seed = (debounce.debounce_run_seed if kind == "debounce" else batching.batch_run_seed)(
            getattr(state, "debounce_id", None) or getattr(state, "batch_id", ""))
        result.runs.append((seed, held if kind == "batch" else held[-1:]))
    result.puts[flow_key] = None
    return result
