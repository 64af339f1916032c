"""Which functions an event starts, and the id of each run. Pure.

Matching: exact names through a dict, trailing wildcards (``app/*``, ``app/user.*``) through
a list of prefixes, then each trigger's ``if`` (CEL, compiled once; an error counts as no
match). A function that matches through several triggers gets one run. A run id is derived
from (app, function, event id), so a redelivered event maps to the same run and the
function processor drops the duplicate.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict

from ..triggers import TriggerEvent
from ..wire import EventRecord, FunctionDefinition, Trigger


class TriggerIndex:
    """(app_id, event name) -> functions, rebuilt from the registry when it changes."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], list[tuple[TriggerEvent, FunctionDefinition]]] = {}
        self._wildcards: dict[str, list[tuple[TriggerEvent, FunctionDefinition]]] = {}

    def rebuild(self, definitions: list[FunctionDefinition]) -> None:
        exact: dict[tuple[str, str], list[tuple[TriggerEvent, FunctionDefinition]]] = defaultdict(list)
        wildcards: dict[str, list[tuple[TriggerEvent, FunctionDefinition]]] = defaultdict(list)
        for fn in definitions:
            for trig in fn.triggers:
                if trig.prefix is None:
                    exact[(fn.app_id, trig.event)].append((trig, fn))
                else:
                    wildcards[fn.app_id].append((trig, fn))
        self._exact, self._wildcards = dict(exact), dict(wildcards)

    def match(self, event: EventRecord) -> list[FunctionDefinition]:
        candidates = self._exact.get((event.app_id, event.name), []) + [
            (t, fn) for t, fn in self._wildcards.get(event.app_id, ()) if event.name.startswith(t.prefix or "")]
        if not candidates:
            return []
        payload = event.as_payload()
        out: dict[str, FunctionDefinition] = {}
        for trig, fn in candidates:
            if fn.function_id not in out and trig.matches(event.name, payload):
                out[fn.function_id] = fn
        return list(out.values())


def run_id_for(app_id: str, function_id: str, event_id: str) -> str:
    """Deterministic run id: 26 characters of base32. NEVER change (dedup depends on it)."""
    digest = hashlib.sha256(f"{app_id}\x00{function_id}\x00{event_id}".encode()).digest()
    return base64.b32encode(digest).decode().rstrip("=")[:26].lower()


def triggers_for(event: EventRecord, functions: list[FunctionDefinition]) -> list[Trigger]:
    return [
        Trigger(app_id=fn.app_id, function_id=fn.function_id,
                run_id=run_id_for(fn.app_id, fn.function_id, event.id), function=fn, events=[event])
        for fn in functions
    ]
