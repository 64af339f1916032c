"""The operator's listing surface of the runs API (a FastAPI router mounted by :mod:`.http_api`):

* ``GET /v1/runs`` — runs newest first, by app/function, status and creation time, with an
  opaque cursor (the read model's indexes, :mod:`sluicegate.state.run_view_store`).
* ``GET /v1/functions`` — every registered function (the compacted ``sg.registry``) with its
  runs per status (counters of the read model) and its dispatcher backlog (``sg.stats``).
* ``GET /v1/events`` — recent events of ``sg.events``, read from Kafka on demand.

Every route is under ``/v1`` and needs the API token when one is set. Bad parameters answer
400 ``{"error": {"code", "message", "field", "limit"}}`` naming the parameter, like the rest
of the API (FastAPI's own 422 is translated by this router's route class).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any, Callable, Literal

from confluent_kafka import Consumer, KafkaError, TopicPartition
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput
from ..ids import check_id
from ..kafka_clients import CompactedView
from ..partitioning import partition_for
from ..settings import Settings
from ..state.run_view_store import RUN_STATUSES
from ..wire import EventRecord, FunctionDefinition, RunView
from .cancellations import ErrorBody, parse_time

log = logging.getLogger("sluicegate.ingest.listing")

DEFAULT_RUNS_LIMIT = 50
MAX_RUNS_LIMIT = 500
DEFAULT_EVENTS_LIMIT = 50
MAX_EVENTS_LIMIT = 1000
EXAMINED_PER_RESULT = 10          # a runs page stops after examining 10 x limit index entries
EVENTS_BUDGET_S = 5.0             # the most one GET /v1/events spends reading Kafka
EVENT_READS_AT_ONCE = 4           # concurrent GET /v1/events per API process (each holds a consumer)
CONTROL_PREFIX = b'{"control":'   # the router's wait records in sg.events (processors/wait_router.py)
_TIME_RULE = "an RFC 3339 date-time with an offset (e.g. 2025-01-31T12:00:00Z) or ms since the epoch"
_CURSOR_VERSION = 1


# -- models (OpenAPI) -----------------------------------------------------------------------

class RunError(BaseModel):
    name: str = "Error"
    message: str = ""


class RunSummary(BaseModel):
    """One run as listed: what it is and how it went, without its steps and output
    (``GET /v1/runs/{run_id}`` has them)."""

    run_id: str
    app_id: str
    function_id: str
    function_version: str = ""
    status: Literal["queued", "running", "completed", "failed", "cancelled", "skipped"]
    event_ids: list[str]
    created_at: int = Field(description="ms since the epoch")
    started_at: int | None = None
    ended_at: int | None = None
    duration_ms: int | None = Field(None, description="ended runs: from start (or creation) to end")
    error: RunError | None = None
    skip_reason: str | None = None
    waiting: str | None = None

    @classmethod
    def of(cls, view: RunView) -> "RunSummary":
        duration = None
        if view.ended_at is not None:
            duration = max(0, view.ended_at - (view.started_at or view.created_at))
        return cls(run_id=view.run_id, app_id=view.app_id, function_id=view.function_id,
                   function_version=view.function_version, status=view.status, event_ids=view.event_ids,
                   created_at=view.created_at, started_at=view.started_at, ended_at=view.ended_at,
                   duration_ms=duration, skip_reason=view.skip_reason, waiting=view.waiting,
                   error=None if view.error is None else RunError(name=view.error.name, message=view.error.message))


class RunList(BaseModel):
    """A page of runs, newest first. ``next_cursor``: pass it as ``cursor`` (with the same
    filters) for the next page; absent when there is nothing more. A page can hold fewer
    than ``limit`` runs and still have a cursor (the scan stops after examining 10 × limit
    entries)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "data": [{"run_id": "01JH8W3ZP4QK6T4X2M7B9C0DEF", "app_id": "shop", "function_id": "checkout",
                  "function_version": "5e1f0c2a9b7d4e11", "status": "failed", "event_ids": ["01JH8W3Z00AB"],
                  "created_at": 1738324800000, "started_at": 1738324800012, "ended_at": 1738324861000,
                  "duration_ms": 60988, "error": {"name": "StepError", "message": "card declined"}}],
        "next_cursor": "eyJ2IjoxLCJjIjoxNzM4MzI0ODAwMDAwLCJyIjoiMDFKSDhXM1pQNFFLNlQ0WDJNN0I5QzBERUYifQ"}]})

    data: list[RunSummary]
    next_cursor: str | None = None


class FunctionSummary(BaseModel):
    app_id: str
    function_id: str
    name: str = ""
    version: str = ""
    registered: bool = Field(True, description="false: known only from its runs (not in this API's registry view)")
    triggers: list[str] = Field(default_factory=list, description="event names (with wildcards) that start it")
    crons: list[str] = Field(default_factory=list)
    runs: dict[str, int] = Field(description=(
        "runs stored per status (all six statuses); an ended run is kept SLUICEGATE_RUN_RETENTION_MS (7 days)"))
    backlog: int = Field(0, description="steps ready to run and waiting for their turn (dispatcher)")
    in_flight: int = Field(0, description="steps dispatched and not answered yet")
    waiting: dict[str, int] = Field(default_factory=dict, description="backlog by reason")
    stats_at: int = Field(0, description="when the processor measured backlog and in_flight (ms; 0: never)")


class FunctionList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "app_id": "shop", "function_id": "checkout", "name": "Checkout", "version": "5e1f0c2a9b7d4e11",
        "registered": True, "triggers": ["order/created"], "crons": [],
        "runs": {"queued": 3, "running": 8, "completed": 1204, "failed": 7, "cancelled": 1, "skipped": 0},
        "backlog": 3, "in_flight": 8, "waiting": {"concurrency": 3}, "stats_at": 1738324800000}]}]})

    data: list[FunctionSummary]


class EventList(BaseModel):
    """Events in the order they were accepted (oldest first). ``complete`` is false when
    the 5 s reading budget ran out before the answer was certain: then it holds what was
    found so far."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "app_id": "shop", "id": "01JH8W3Z00AB", "name": "order/created", "data": {"sku": "A-1"},
        "ts": 1738324800000, "received_at": 1738324800003}], "order": "oldest_first", "complete": True}]})

    data: list[EventRecord]
    order: Literal["oldest_first"] = "oldest_first"
    complete: bool = True


# -- parameters -----------------------------------------------------------------------------

def parse_statuses(value: str | None) -> tuple[str, ...] | None:
    """``failed`` or ``queued,running`` → the statuses; ``None``/empty: all."""
    if value is None or not value.strip():
        return None
    out = []
    for part in value.split(","):
        name = part.strip().lower()
        if not name:  # "failed," or "a,,b"
            continue
        if name not in RUN_STATUSES:
            raise InvalidInput(f"status: {part.strip()!r} is not a run status; use one of "
                               f"{', '.join(RUN_STATUSES)} (or a comma-separated list)", field="status")
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_scope(app: str | None, function: str | None) -> tuple[str | None, str | None]:
    """(app, function) from ``app=`` and ``function=`` (which also takes ``app/fn``)."""
    app_id = check_id(app, field="app") if app else None
    if not function:
        return app_id, None
    if "/" in function:
        fn_app, fn = function.split("/", 1)
        check_id(fn_app, field="function")
        if app_id is not None and fn_app != app_id:
            raise InvalidInput(f"function: {function!r} is in app {fn_app!r}, not in app {app_id!r}",
                               field="function")
        return fn_app, check_id(fn, field="function")
    if app_id is None:
        raise InvalidInput("function: needs app (app=APP&function=FN, or function=APP/FN)", field="function")
    return app_id, check_id(function, field="function")


def encode_cursor(position: tuple[int, str]) -> str:
    raw = json.dumps({"v": _CURSOR_VERSION, "c": position[0], "r": position[1]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    bad = InvalidInput("cursor: not a cursor this API returned (pass next_cursor unchanged)", field="cursor")
    if len(cursor) > 1024:
        raise bad
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(raw, dict) or raw.get("v") != _CURSOR_VERSION:
        raise bad
    created, run_id = raw.get("c"), raw.get("r")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0 \
            or not isinstance(run_id, str) or not run_id or "\x00" in run_id:
        raise bad
    return created, run_id


def _time(value: str | None, field: str) -> int | None:
    return None if value is None or not value.strip() else parse_time(value, field=field)


# -- reading events from Kafka --------------------------------------------------------------

class EventsReader:
    """Reads ``sg.events`` on demand with a group-less consumer (blocking: call it in a thread).

    With ``since``: from ``offsets_for_times(since)`` on each partition, forward, up to
    ``limit`` matching records per partition; the answer is the ``limit`` oldest of them.
    Without: the ``limit`` newest matching records (each partition read backwards in growing
    chunks from its end). Either way the answer is oldest first (record timestamp, then
    partition and offset) and reading stops after ``budget_s``. Events are keyed by app, so
    with ``app_id`` only that app's partition is read. Control records (the router's waits,
    ``{"control":...``) are skipped."""

    def __init__(self, settings: Settings, budget_s: float = EVENTS_BUDGET_S) -> None:
        self.settings = settings
        self.budget_s = budget_s

    def read(self, *, app_id: str | None, name: str | None, since_ms: int | None,
             limit: int) -> tuple[list[EventRecord], bool]:
        """(events oldest first, complete)."""
        topic = self.settings.events_topic
        deadline = time.monotonic() + self.budget_s
        match = _matcher(app_id, name)
        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap_servers,
                             "group.id": "sluicegate-events-listing", "enable.auto.commit": False,
                             "enable.partition.eof": True, "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 20, "log_level": 3})
        found: list[tuple[int, int, int, EventRecord]] = []
        complete = True
        try:
            if app_id is not None:
                partitions = [partition_for(app_id, self.settings.partitions)]
            else:
                partitions = sorted(consumer.list_topics(topic, timeout=self.budget_s).topics[topic].partitions)
            for p in partitions:
                left = max(0.1, deadline - time.monotonic())
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left, cached=False)
                if since_ms is not None:
                    start = consumer.offsets_for_times([TopicPartition(topic, p, since_ms)], timeout=left)[0].offset
                    if start < 0:  # nothing at or after since in this partition
                        continue
                    got, done = self._read(consumer, p, max(start, low), high, match, limit, deadline)
                else:
                    got, done = self._tail(consumer, p, low, high, match, limit, deadline)
                found.extend(got)
                complete = complete and done
                if time.monotonic() >= deadline:
                    complete = complete and p == partitions[-1]
                    break
        finally:
            consumer.close()
        found.sort(key=lambda item: item[:3])
        chosen = found[:limit] if since_ms is not None else found[-limit:]
        return [item[3] for item in chosen], complete

    def _read(self, consumer: Consumer, partition: int, start: int, end: int,
              match: Callable[[bytes | None], EventRecord | None], max_matches: int | None,
              deadline: float) -> tuple[list[tuple[int, int, int, EventRecord]], bool]:
        """Matching records at offsets ``[start, end)`` (at most ``max_matches``); (found, done)."""
        out: list[tuple[int, int, int, EventRecord]] = []
        if start >= end:
            return out, True
        consumer.assign([TopicPartition(self.settings.events_topic, partition, start)])
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out, False
            for msg in consumer.consume(500, min(0.2, left)):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        return out, True
                    continue
                offset = msg.offset()
                if offset >= end:
                    return out, True
                record = match(msg.value())
                if record is not None:
                    ts = msg.timestamp()[1]
                    out.append((ts if ts > 0 else record.received_at, partition, offset, record))
                    if max_matches is not None and len(out) >= max_matches:
                        return out, True
                if offset >= end - 1:
                    return out, True

    def _tail(self, consumer: Consumer, partition: int, low: int, high: int,
              match: Callable[[bytes | None], EventRecord | None], limit: int,
              deadline: float) -> tuple[list[tuple[int, int, int, EventRecord]], bool]:
        """The last ``limit`` matching records before ``high``: chunks read backwards, each
        four times the previous one."""
        out: list[tuple[int, int, int, EventRecord]] = []
        end, chunk = high, max(2 * limit, 256)
        while end > low and len(out) < limit:
            start = max(low, end - chunk)
            got, done = self._read(consumer, partition, start, end, match, None, deadline)
            out = got + out
            if not done:
                return out[-limit:], False
            end, chunk = start, min(chunk * 4, 262_144)
        return out[-limit:], True


def _matcher(app_id: str | None, name: str | None) -> Callable[[bytes | None], EventRecord | None]:
    # a cheap byte test first when the name cannot be written two ways in JSON
    needle = None
    if name is not None and name.isprintable() and '"' not in name and "\\" not in name:
        needle = b'"name":' + json.dumps(name, ensure_ascii=False).encode()

    def match(value: bytes | None) -> EventRecord | None:
        if not value or value.startswith(CONTROL_PREFIX):
            return None
        if needle is not None and needle not in value:
            return None
        try:
            record = EventRecord.model_validate_json(value)
        except ValueError:
            return None
        if (app_id is not None and record.app_id != app_id) or (name is not None and record.name != name):
            return None
        return record

    return match


# -- wiring -----------------------------------------------------------------------------------

def _decode_definition(raw: bytes) -> FunctionDefinition | None:
    try:
        return FunctionDefinition.model_validate_json(raw)
    except ValueError:
        log.warning("registry: undecodable function definition ignored")
        return None


def start_listing(settings: Settings, state: dict[str, Any]) -> None:
    """What the listing routes read besides the run views: the registry view (``state["registry"]``,
    shared with the other routes that need it; kept if one is there already) and the events reader."""
    if state.get("registry") is None:
        state["registry"] = CompactedView(settings.bootstrap_servers, settings.registry_topic,
                                          _decode_definition).start()
    state.setdefault("events_reader", EventsReader(settings))


def stop_listing(state: dict[str, Any]) -> None:
    registry = state.pop("registry", None)  # popped: stopped once, whoever else looks for it
    if registry is not None:
        registry.stop()


class _Route(APIRoute):
    """FastAPI's parameter errors (422) answered as this API's 400 naming the parameter."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Any:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
                field = loc[-1] if loc else "query"
                ctx = first.get("ctx") or {}
                limit = next((ctx[k] for k in ("le", "ge", "lt", "gt") if k in ctx), None)
                detail = {"code": "invalid_input", "message": f"{field}: {first.get('msg', 'invalid')}",
                          "field": field, "limit": limit}
                return JSONResponse(status_code=400, content={"error": detail})

        return handle


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a bad parameter; `error.field` names it"},
    "4XX": {"model": ErrorBody, "description": "401 without the API token (when one is set)"},
}


def listing_router(settings: Settings, state: dict[str, Any], auth: Callable[..., None]) -> APIRouter:
    """The listing routes, reading the running components in ``state`` (``runs``, ``stats``,
    ``registry``, ``events_reader``: :func:`start_listing`)."""
    router = APIRouter(route_class=_Route, dependencies=[Depends(auth)])
    event_reads = asyncio.Semaphore(EVENT_READS_AT_ONCE)

    @router.get("/v1/runs", response_model=RunList, response_model_exclude_none=True, responses=_ERRORS,
                summary="List runs, newest first, by function, status and creation time",
                description=(
                    "Runs newest first (by `created_at`, then run id), filtered by app or function, "
                    "status (one or a comma list) and creation time `[since, until)`. Pages of `limit` "
                    "runs (default 50, at most 500): pass `next_cursor` back as `cursor` with the same "
                    "filters to continue; a run is never listed twice nor skipped while paging, even if it "
                    "changes status meanwhile. Runs created after the first page are not in later pages "
                    "(start again to see them). The list is eventually consistent (milliseconds behind the "
                    "engine)."))
    async def list_runs(
        app: str | None = Query(None, description="only this app's runs", examples=["shop"]),
        function: str | None = Query(None, description="only this function's runs: `FN` (with `app`) or `APP/FN`",
                                     examples=["checkout", "shop/checkout"]),
        status: str | None = Query(None, description=f"one of {', '.join(RUN_STATUSES)}, or a comma list",
                                   examples=["failed", "queued,running"]),
        since: str | None = Query(None, description=f"runs created at or after this: {_TIME_RULE}",
                                  examples=["2025-01-31T00:00:00Z", "1738281600000"]),
        until: str | None = Query(None, description=f"runs created before this: {_TIME_RULE}",
                                  examples=["2025-01-31T12:00:00Z"]),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page"),
        limit: int = Query(DEFAULT_RUNS_LIMIT, ge=1, le=MAX_RUNS_LIMIT,
                           description=f"runs per page, 1 to {MAX_RUNS_LIMIT}", examples=[50]),
    ) -> RunList:
        app_id, function_id = parse_scope(app, function)
        statuses = parse_statuses(status)
        since_ms, until_ms = _time(since, "since"), _time(until, "until")
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise InvalidInput(f"since: must be before until ({since_ms} >= {until_ms} ms)", field="since")
        after = decode_cursor(cursor) if cursor else None
        page = await asyncio.to_thread(
            state["runs"].store.list_runs, app_id=app_id, function_id=function_id, statuses=statuses,
            since=since_ms, until=until_ms, after=after, limit=limit, max_examined=EXAMINED_PER_RESULT * limit)
        return RunList(data=[RunSummary.of(v) for v in page.runs],
                       next_cursor=encode_cursor(page.next_after) if page.next_after else None)

    @router.get("/v1/functions", response_model=FunctionList, responses=_ERRORS,
                summary="Every function with its runs per status and its backlog",
                description=(
                    "Every function in the registry (and any other that has runs in the read model, with "
                    "`registered: false`), sorted by app and function: its triggers, its runs per status "
                    "(counted by the read model as the runs change status) and its dispatcher figures "
                    "(`backlog`, `in_flight`, `waiting`, published by the processors about once a second)."))
    async def list_functions(
        app: str | None = Query(None, description="only this app's functions", examples=["shop"]),
    ) -> FunctionList:
        app_id = check_id(app, field="app") if app else None
        registry = state.get("registry")
        definitions = [d for d in (list(registry.items.values()) if registry is not None else ())
                       if isinstance(d, FunctionDefinition) and (app_id is None or d.app_id == app_id)]
        counts = await asyncio.to_thread(state["runs"].store.status_counts, app_id)
        stats = state["stats"].items if "stats" in state else {}
        out: dict[tuple[str, str], FunctionSummary] = {}
        for d in definitions:
            out[(d.app_id, d.function_id)] = FunctionSummary(
                app_id=d.app_id, function_id=d.function_id, name=d.name, version=d.version,
                triggers=[t.event for t in d.triggers], crons=[c.cron for c in d.crons],
                runs=dict.fromkeys(RUN_STATUSES, 0))
        for key, by_status in counts.items():
            item = out.get(key) or FunctionSummary(app_id=key[0], function_id=key[1], registered=False,
                                                   runs=dict.fromkeys(RUN_STATUSES, 0))
            item.runs.update(by_status)
            out[key] = item
        for (app_key, fn_key), item in out.items():
            figures = stats.get(f"{app_key}/{fn_key}")
            if isinstance(figures, dict):
                item.backlog = int(figures.get("backlog", 0) or 0)
                item.in_flight = int(figures.get("in_flight", 0) or 0)
                item.waiting = {str(k): int(v) for k, v in (figures.get("waiting") or {}).items()}
                item.stats_at = int(figures.get("at", 0) or 0)
        return FunctionList(data=[out[k] for k in sorted(out)])

    @router.get("/v1/events", response_model=EventList, response_model_exclude_none=True, responses=_ERRORS,
                summary="Recent events, oldest first",
                description=(
                    "Events read from `sg.events` (kept `SLUICEGATE_EVENTS_RETENTION_MS`), oldest first. With "
                    "`since`: the first `limit` events accepted at or after it. Without: the last `limit` "
                    "events. Filtered by app (recommended: only that app's partition is read) and exact "
                    "event name. Reading stops after 5 s; `complete: false` says the answer may lack events."))
    async def list_events(
        app: str | None = Query(None, description="only this app's events", examples=["shop"]),
        name: str | None = Query(None, description="only events with exactly this name", examples=["order/created"]),
        since: str | None = Query(None, description=f"events accepted at or after this: {_TIME_RULE}",
                                  examples=["2025-01-31T11:00:00Z"]),
        limit: int = Query(DEFAULT_EVENTS_LIMIT, ge=1, le=MAX_EVENTS_LIMIT,
                           description=f"events to return, 1 to {MAX_EVENTS_LIMIT}", examples=[50]),
    ) -> EventList:
        app_id = check_id(app, field="app") if app else None
        if name is not None and not name:
            raise InvalidInput("name: must not be empty", field="name")
        since_ms = _time(since, "since")
        reader = state.get("events_reader") or state.setdefault("events_reader", EventsReader(settings))
        async with event_reads:
            events, complete = await asyncio.to_thread(reader.read, app_id=app_id, name=name,
                                                       since_ms=since_ms, limit=limit)
        return EventList(data=events, complete=complete)

    return router
