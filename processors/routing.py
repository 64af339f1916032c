"""Which functions an event starts, and the id of each run. Pure.

Matching is by exact event name for now (wildcards and ``if`` are a later issue). A run id
is derived from (app, function, event id), so a redelivered event maps to the same run and
the function processor drops the duplicate.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict

from ..wire import EventRecord, FunctionDefinition, Trigger


class TriggerIndex:
    """(app_id, event name) -> functions, rebuilt from the registry when it changes."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, str], list[FunctionDefinition]] = {}

    def rebuild(self, definitions: list[FunctionDefinition]) -> None:
        index: dict[tuple[str, str], list[FunctionDefinition]] = defaultdict(list)
        for fn in definitions:
            for trig in fn.triggers:
                index[(fn.app_id, trig.event)].append(fn)
        self._by_name = dict(index)

    def match(self, event: EventRecord) -> list[FunctionDefinition]:
        return self._by_name.get((event.app_id, event.name), [])


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
