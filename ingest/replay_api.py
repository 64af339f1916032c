"""Replay and rerun over HTTP (issue 6): ``POST/GET/DELETE /v1/replays``, ``POST /v1/runs/{id}/rerun``.

* A replay request names an app, optionally functions, and a range of ``sg.events``: a time
  range (``since``/``until``, turned into offsets of the app's partition with
  ``offsets_for_times``) or explicit ``ranges`` (partition → [start, end) offsets). The
  processor runs it (``processors/replay_stage.py``) and publishes its progress, which
  ``GET`` reads from ``sg.stats``.
* ``dry_run``: this process reads the range itself and counts what would run — the events,
  the runs they would start (today's triggers of the chosen functions, the ``if`` filter, and
  with ``only_failed`` the original runs' statuses from the run read model) — and answers at
  once; nothing is produced.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, Literal

from confluent_kafka import Consumer, TopicPartition
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInput, NotFound
from ..events import new_event_id
from ..expressions import InvalidExpression, compile_expression
from ..ids import check_id
from ..kafka_clients import CompactedView
from ..partitioning import function_key, partition_for
from ..processors.replay_plan import CONTROL_PREFIX, RETRY_STATUSES, replayable, triggers_for_event
from ..processors.replay_stage import replay_key
from ..processors.routing import TriggerIndex, run_id_for
from ..settings import Settings
from ..wire import EventRecord, FunctionDefinition, ReplayCancel, ReplaySpec, ReplayStart, RerunRun
from .cancellations import ErrorBody, parse_time

MAX_PACE = 100_000
DRY_RUN_MAX_EVENTS = 2_000_000
DRY_RUN_MAX_S = 60.0


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"examples": [
        {"app_id": "shop", "functions": ["checkout"], "since": "2026-11-20T00:00:00Z",
         "until": "2026-11-21T00:00:00Z", "only_failed": True},
        {"app_id": "shop", "ranges": {"2": [1000, 5000]}, "if": "event.data.plan == 'pro'", "pace": 200,
         "dry_run": True}]})

    app_id: str
    functions: list[str] | None = Field(None, max_length=100, description="function ids; omit for all of the app's")
    since: Any = Field(None, description="RFC 3339 with an offset, or ms since the epoch; omit for the oldest kept")
    until: Any = Field(None, description="exclusive; omit for now")
    ranges: dict[int, tuple[int, int]] | None = Field(None, description="partition → [start, end) offsets of sg.events "
                                                                         "(instead of since/until)")
    if_: str | None = Field(None, alias="if", max_length=4096, description="CEL over `event`: only matching events")
    only_failed: bool = Field(False, description="only events whose original run failed or was cancelled")
    pace: float | None = Field(None, gt=0, le=MAX_PACE, description="at most this many events per second")
    dry_run: bool = Field(False, description="count what would run; start nothing")


class Replay(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "01JD3X7Q8Z6K2M4N5P6R7S8T9V", "app_id": "shop", "status": "running", "functions": ["checkout"],
        "events_read": 1200, "runs_created": 37, "skipped": 1163, "position": 1200, "total": 20000,
        "started_at": 1763800000000, "updated_at": 1763800004000, "only_failed": True}]})

    id: str
    app_id: str
    status: Literal["starting", "running", "done", "cancelled", "failed"]
    functions: list[str] | None = None
    events_read: int = 0
    runs_created: int = Field(0, description="replayed runs started")
    skipped: int = Field(0, description="events that started no run (filters, no function, original succeeded)")
    position: int = Field(0, description="offsets read so far")
    total: int = Field(0, description="offsets in the range")
    started_at: int | None = None
    updated_at: int | None = None
    finished_at: int | None = None
    only_failed: bool = False
    pace_per_s: float | None = None
    error: str | None = None


class DryRun(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "app_id": "shop", "events_read": 20000, "would_run": 412, "skipped": 19588,
        "by_function": {"checkout": 412}, "ranges": {"2": [0, 20000]}, "truncated": False}]})

    app_id: str
    dry_run: Literal[True] = True
    events_read: int
    would_run: int
    skipped: int
    by_function: dict[str, int]
    ranges: dict[int, tuple[int, int]]
    truncated: bool = Field(False, description="the count stopped at its limit (events or time)")


class RerunIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"from_step": "charge"}]})
    from_step: str | None = Field(None, max_length=256, description=(
        "rerun from this step: the results of the steps before it are kept"))


class Rerun(BaseModel):
    run_id: str = Field(description="the new run")
    rerun_of: str
    from_step: str | None = None


def _first_error(exc: ValidationError) -> InvalidInput:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    field = "if" if field == "if_" else field
    return InvalidInput(f"{field}: {err['msg']}", field=field)


def parse_replay(body: bytes) -> ReplayIn:
    try:
        raw = json.loads(body or b"{}")
    except ValueError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})", field="body") from None
    try:
        req = ReplayIn.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None
    check_id(req.app_id, field="app_id")
    for i, fn in enumerate(req.functions or []):
        check_id(fn, field=f"functions[{i}]")
    if req.if_ is not None:
        try:
            compile_expression(req.if_, field="if")
        except InvalidExpression as exc:
            raise InvalidInput(exc.message, field="if") from None
    if req.ranges is not None and (req.since is not None or req.until is not None):
        raise InvalidInput("ranges: give ranges or since/until, not both", field="ranges")
    for p, (start, end) in (req.ranges or {}).items():
        if p < 0 or start < 0 or end < start:
            raise InvalidInput(f"ranges: partition {p}: need 0 <= start <= end, got [{start}, {end})", field="ranges")
    return req


def time_ranges(settings: Settings, app_id: str, since_ms: int | None, until_ms: int | None) -> dict[int, tuple[int, int]]:
    """The app's ``sg.events`` partition as [start, end) offsets for a time range (blocking)."""
    partition = partition_for(app_id, settings.partitions)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "sluicegate-replay-api",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        tp = TopicPartition(settings.events_topic, partition)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)

        def at(ms: int | None, default: int) -> int:
            if ms is None:
                return default
            found = consumer.offsets_for_times([TopicPartition(settings.events_topic, partition, ms)], timeout=10)[0]
            return high if found.offset < 0 else max(low, found.offset)

        start, end = at(since_ms, low), at(until_ms, high)
        return {partition: (start, max(start, end))}
    finally:
        consumer.close()


def dry_run(settings: Settings, spec: ReplaySpec, definitions: list[FunctionDefinition],
            status_of: Callable[[str], str | None]) -> DryRun:
    """Read the range and count what a replay would start (blocking; bounded)."""
    index = TriggerIndex()
    index.rebuild(definitions)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "sluicegate-replay-api",
                         "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
    counts: dict[str, int] = {}
    read = skipped = 0
    truncated = False
    deadline = time.monotonic() + DRY_RUN_MAX_S
    try:
        pending = {p: r for p, r in spec.ranges.items() if r[1] > r[0]}
        if pending:
            consumer.assign([TopicPartition(settings.events_topic, p, start) for p, (start, _e) in pending.items()])
        while pending:
            if read >= DRY_RUN_MAX_EVENTS or time.monotonic() > deadline:
                truncated = True
                break
            for msg in consumer.consume(1000, 0.5):
                p = msg.partition()
                if p not in pending:
                    continue
                if msg.error() is not None or msg.offset() >= pending[p][1] - 1:
                    if msg.error() is None:
                        read, skipped = _count(msg.value(), spec, index, status_of, counts, read, skipped)
                    pending.pop(p, None)
                    continue
                read, skipped = _count(msg.value(), spec, index, status_of, counts, read, skipped)
    finally:
        consumer.close()
    return DryRun(app_id=spec.app_id, events_read=read, would_run=sum(counts.values()), skipped=skipped,
                  by_function=counts, ranges=spec.ranges, truncated=truncated)


def _count(value: bytes | None, spec: ReplaySpec, index: TriggerIndex, status_of: Callable[[str], str | None],
           counts: dict[str, int], read: int, skipped: int) -> tuple[int, int]:
    if not value or value.startswith(CONTROL_PREFIX):
        return read, skipped
    try:
        event = EventRecord.model_validate_json(value)
    except ValueError:
        return read, skipped
    if not replayable(spec, event):
        return read, skipped
    triggers = triggers_for_event(spec, event, index.match(event))
    if spec.only_failed:
        triggers = [t for t in triggers if status_of(t.replay_of or "") in RETRY_STATUSES]
    for t in triggers:
        counts[t.function_id] = counts.get(t.function_id, 0) + 1
    return read + 1, skipped + (0 if triggers else 1)


def replay_router(settings: Settings, state: dict[str, Any], auth: Callable[..., None],
                  send_command: Callable[[str, str, bytes], Any]) -> APIRouter:
    """The routes; ``send_command(key, value, partition_key)`` produces to ``sg.commands`` (acks=all)."""
    router = APIRouter(dependencies=[Depends(auth)])

    def published(replay_id: str) -> Replay:
        """The replay's progress as the processor last published it (``sg.stats``), or 404."""
        stats = state["stats"].items if "stats" in state else {}
        found = stats.get(replay_key(replay_id))
        if not isinstance(found, dict):
            raise NotFound(f"no replay {replay_id!r} (yet)")
        return Replay.model_validate(found)

    async def registry() -> CompactedView:
        view = state.get("registry")
        if view is None:
            view = CompactedView(settings.bootstrap_servers, settings.registry_topic,
                                 FunctionDefinition.model_validate_json)
            await asyncio.to_thread(view.start)
            state["registry"] = view
        return view

    @router.post("/v1/replays", status_code=202, response_model=Replay | DryRun, response_model_exclude_none=True,
                 summary="Replay a range of events through the functions' current code",
                 description=(
                     "Re-reads `sg.events` (a time range of the app's events, or explicit offsets) and starts a "
                     "**new** run of each chosen function for every event it triggers today, optionally only "
                     "events matching `if` and only those whose original run failed or was cancelled. Replayed "
                     "runs skip rate limits, idempotency, debounce and batching, but go through the fair "
                     "dispatcher (concurrency, throttle, priority) as a backlog of their own, so live traffic "
                     "keeps its turns. `pace` caps events per second. A replay resumes after a crash and never "
                     "starts the same replayed run twice. `dry_run` counts instead (200)."),
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": ReplayIn.model_json_schema(by_alias=True)}}}},
                 responses={200: {"model": DryRun, "description": "dry run: what would run"},
                            400: {"model": ErrorBody, "description": "invalid request; `error.field` names it"}})
    async def post_replay(request: Request) -> Any:
        req = parse_replay(await request.body())
        if req.ranges is None:
            since = None if req.since is None else parse_time(req.since, field="since")
            until = None if req.until is None else parse_time(req.until, field="until")
            if since is not None and until is not None and since >= until:
                raise InvalidInput("since: must be before until", field="since")
            ranges = await asyncio.to_thread(time_ranges, settings, req.app_id, since, until)
        else:
            ranges = req.ranges
        view = await registry()
        known = {d.function_id for d in view.items.values()
                 if isinstance(d, FunctionDefinition) and d.app_id == req.app_id}
        for i, fn in enumerate(req.functions or []):
            if fn not in known:
                raise NotFound(f"functions[{i}]: app {req.app_id!r} has no registered function {fn!r}")
        spec = ReplaySpec(replay_id=new_event_id(), app_id=req.app_id, functions=req.functions, ranges=ranges,
                          if_exp=req.if_, only_failed=req.only_failed, pace_per_s=req.pace,
                          created_at=int(time.time() * 1000))
        if req.dry_run:
            definitions = [d for d in view.items.values() if isinstance(d, FunctionDefinition)]
            store = state["runs"].store

            def status_of(run_id: str) -> str | None:
                found = store.run(run_id)
                return None if found is None else found.status

            result = await asyncio.to_thread(dry_run, settings, spec, definitions, status_of)
            return JSONResponse(status_code=200, content=result.model_dump(mode="json"))
        key = replay_key(spec.replay_id)
        await send_command(key, ReplayStart(spec=spec).dumps(), key)
        total = sum(end - start for start, end in ranges.values())
        return Replay(id=spec.replay_id, app_id=spec.app_id, status="starting", functions=spec.functions,
                      total=total, only_failed=spec.only_failed, pace_per_s=spec.pace_per_s,
                      started_at=spec.created_at)

    @router.get("/v1/replays/{replay_id}", response_model=Replay, response_model_exclude_none=True,
                summary="A replay's status and progress",
                responses={404: {"model": ErrorBody, "description": "unknown (or not started yet)"}})
    async def get_replay(replay_id: str) -> Replay:
        return published(replay_id)

    @router.delete("/v1/replays/{replay_id}", status_code=202, response_model=Replay,
                   response_model_exclude_none=True, summary="Cancel a replay",
                   description="Stops reading; runs it already started go on. 404: unknown replay.",
                   responses={404: {"model": ErrorBody, "description": "unknown replay"}})
    async def cancel_replay(replay_id: str) -> Replay:
        found = published(replay_id)
        key = replay_key(replay_id)
        await send_command(key, ReplayCancel(replay_id=replay_id).dumps(), key)
        return found

    @router.post("/v1/runs/{run_id}/rerun", status_code=202, response_model=Rerun, response_model_exclude_none=True,
                 summary="Run a run again, from the start or from a step",
                 description=(
                     "Starts a new run from the same trigger events with the function's current code. With "
                     "`from_step`, the results of the steps before it are kept and execution resumes at it."),
                 responses={404: {"model": ErrorBody, "description": "unknown run"},
                            400: {"model": ErrorBody, "description": "`from_step` is not a step of the run"}})
    async def rerun_run(run_id: str, body: RerunIn | None = None) -> Rerun:
        view = state["runs"].store.run(run_id)
        if view is None:
            raise NotFound(f"no run {run_id!r} (yet)")
        from_step = body.from_step if body is not None else None
        if from_step is not None and from_step not in [s.id for s in view.steps if s.status in ("completed", "failed")]:
            raise InvalidInput(f"from_step: run {run_id} has no finished step {from_step!r} "
                               f"(its steps: {[s.id for s in view.steps]})", field="from_step")
        new_run_id = run_id_for(view.app_id, view.function_id, f"rerun\x00{run_id}\x00{new_event_id()}")
        cmd = RerunRun(app_id=view.app_id, function_id=view.function_id, run_id=run_id, new_run_id=new_run_id,
                       from_step=from_step)
        key = function_key(view.app_id, view.function_id)
        await send_command(key, cmd.dumps(), key)
        return Rerun(run_id=new_run_id, rerun_of=run_id, from_step=from_step)

    return router


__all__ = ["DryRun", "Replay", "ReplayIn", "Rerun", "RerunIn", "replay_router"]
