"""``POST /e/{key}?wait=schedule``: tell the sender what its events started.

The API follows the registry like the router does, so it knows which functions an event
triggers (names, wildcards, ``if``). Run ids are derived from (app, function, event id), so
it then waits — bounded — until the processor's run view of each appears:

* ``started``: a run exists (queued or running or already finished);
* ``skipped``: flow control skipped it (reason: rate_limited, idempotent_duplicate,
  singleton_skipped, debounced_replaced, ...);
* ``pending``: debounced or batched — the run starts later; or no view within the wait.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from ..kafka_clients import CompactedView
from ..processors.grouping import grouping_of
from ..processors.routing import TriggerIndex, run_id_for
from ..settings import Settings
from ..state.run_view_store import RunViewStore
from ..wire import EventRecord, FunctionDefinition

WAIT_S = 5.0


class EventSchedule(BaseModel):
    started: dict[str, str] = Field(default_factory=dict, description="function id -> run id")
    skipped: dict[str, str] = Field(default_factory=dict, description="function id -> reason")
    pending: list[str] = Field(default_factory=list, description="debounced/batched, or not decided in time")


class ScheduleWaiter:
    def __init__(self, settings: Settings) -> None:
        self.index = TriggerIndex()
        self.view = CompactedView(settings.bootstrap_servers, settings.registry_topic,
                                  FunctionDefinition.model_validate_json, self._changed)

    def _changed(self, _key: str, _value: object) -> None:
        self.index.rebuild([v for v in self.view.items.values() if isinstance(v, FunctionDefinition)])

    def start(self) -> "ScheduleWaiter":
        self.view.start()
        self._changed("", None)
        return self

    def stop(self) -> None:
        self.view.stop()

    async def wait(self, events: list[EventRecord], store: RunViewStore, timeout: float = WAIT_S
                   ) -> dict[str, EventSchedule]:
        await asyncio.to_thread(self.view.wait_caught_up, min(e.received_at for e in events) / 1000, 1.0)
        expected: dict[str, list[FunctionDefinition]] = {e.id: self.index.match(e) for e in events}
        out = {e.id: EventSchedule() for e in events}
        deadline = time.monotonic() + timeout
        while True:
            undecided = 0
            for event in events:
                result = out[event.id]
                for fn in expected[event.id]:
                    if fn.function_id in result.started or fn.function_id in result.skipped:
                        continue
                    view = store.run(run_id_for(event.app_id, fn.function_id, event.id))
                    if view is not None and view.status == "skipped":
                        result.skipped[fn.function_id] = view.skip_reason or "skipped"
                    elif view is not None:
                        result.started[fn.function_id] = view.run_id
                    elif grouping_of(fn) is None:
                        undecided += 1
            if undecided == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        for event in events:
            result = out[event.id]
            result.pending = sorted(fn.function_id for fn in expected[event.id]
                                    if fn.function_id not in result.started and fn.function_id not in result.skipped)
        return out
