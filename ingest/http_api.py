"""The HTTP webhook bridge and the runs API (FastAPI). A thin translation over the core:

* ``POST /e/{event_key}`` — one event or a list; answers with the ids only after the broker
  acknowledged every event (acks=all). Bad input: 400/413 naming the field and the limit;
  unknown key: 401. In both cases nothing is produced.
* ``GET /v1/runs/{run_id}`` — status, output or error, steps with attempts and timings.
* ``GET /v1/events/{event_id}/runs`` — the runs an event started.
* ``GET /v1/functions/{app}/{fn}/queue`` — the dispatcher's backlog, in-flight count and
  why waiting runs wait (published by the processors about once a second).
* ``DELETE /v1/runs/{run_id}``, ``POST /v1/cancellations``, ``GET /v1/cancellations/{id}`` —
  cancel one run, or a function's runs by creation time and expression (:mod:`.cancellations`).

Event keys are never logged in full: uvicorn's access log is off and requests are logged
here with the key masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from typing import Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import limits
from ..errors import BrokerUnavailable, InvalidInput, LimitExceeded, NotFound, SluicegateError, Unauthorized
from ..partitioning import function_key
from ..events import validate_events
from ..kafka_clients import AsyncProducer, CompactedView
from ..settings import Settings
from ..topics import ensure_core_topics
from ..wire import RunView
from .replay_api import replay_router
from .cancellations import (Cancellation, CancellationIn, CancellationLog, Conflict, ErrorBody, RunCancelling,
                            accepted, cancel_run_command, parse_cancellation)
from .event_keys import EventKeys, mask
from .listing_api import listing_router, start_listing, stop_listing
from .run_views import RunViewFollower
from .schedule_wait import EventSchedule, ScheduleWaiter

log = logging.getLogger("sluicegate.ingest")

_STATUS = {InvalidInput: 400, LimitExceeded: 413, Unauthorized: 401, NotFound: 404, Conflict: 409,
           BrokerUnavailable: 503}


class Accepted(BaseModel):
    ids: list[str]
    status: int = 200
    schedule: dict[str, EventSchedule] | None = Field(
        None, description="with ?wait=schedule: per event id, the functions started, skipped or pending")


class EventRuns(BaseModel):
    data: list[RunView]


class SkipCounts(BaseModel):
    counts: dict[str, int]


class QueueStats(BaseModel):
    """One function's dispatcher figures, as its processor last published them."""

    app_id: str
    function_id: str
    backlog: int = Field(0, description="steps ready to run and waiting for their turn")
    in_flight: int = Field(0, description="steps dispatched and not answered yet")
    waiting: dict[str, int] = Field(default_factory=dict, description=(
        "backlog by reason: concurrency (key full), throttled, window_full (the app's in-flight window "
        "is full), queued (behind other steps of the same backlog)"))
    at: int = Field(0, description="when the processor measured it, ms since the epoch (0: never)")


def _status_of(exc: SluicegateError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def create_api(settings: Settings, *, keys: EventKeys | None = None,
               run_views: RunViewFollower | None = None) -> FastAPI:
    state: dict[str, Any] = {"cancellations": CancellationLog()}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ensure_core_topics(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.dev_mode:
            log.warning("DEV MODE: the event key %r is accepted for app %r. Never run dev mode in production.",
                        "dev", settings.dev_app_id)
        state["producer"] = AsyncProducer(settings.bootstrap_servers)
        state["keys"] = (keys or EventKeys(settings)).start()
        state["runs"] = (run_views or RunViewFollower(settings)).start()
        state["schedule"] = ScheduleWaiter(settings).start()
        state["stats"] = CompactedView(settings.bootstrap_servers, settings.topic("stats"), json.loads).start()
        start_listing(settings, state)
        try:
            yield
        finally:
            stop_listing(state)
            if state.get("registry") is not None:
                state["registry"].stop()
            state["stats"].stop()
            state["schedule"].stop()
            state["runs"].stop()
            state["keys"].stop()
            state["producer"].close()

    app = FastAPI(title="Sluicegate", version="0.1.0", lifespan=lifespan,
                  description="Webhook bridge and runs API of Sluicegate.")
    app.state.sluicegate = state  # the running components (tests put stand-ins here)

    @app.exception_handler(SluicegateError)
    async def _error(_req: Request, exc: SluicegateError) -> JSONResponse:
        return JSONResponse(status_code=_status_of(exc), content={"error": exc.to_dict()})

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        if path.startswith("/e/"):
            path = "/e/" + mask(path[3:])
        log.info("%s %s %s %.1fms", request.method, path, response.status_code,
                 (time.perf_counter() - started) * 1000)
        return response

    def _api_auth(authorization: str | None = Header(None)) -> None:
        token = settings.api_token
        if token and authorization != f"Bearer {token}":
            raise Unauthorized("the runs API needs 'Authorization: Bearer <SLUICEGATE_API_TOKEN>'")

    @app.post("/e/{event_key}", response_model=Accepted, response_model_exclude_none=True,
              summary="Send one event or a list of events")
    async def send_events(event_key: str, request: Request,
                          wait: Literal["schedule"] | None = Query(
                              None, description="'schedule': answer once the functions each event "
                                                "triggers were started or skipped (at most 5 s)")) -> Accepted:
        body = await request.body()
        if len(body) > limits.MAX_REQUEST_BYTES:
            raise LimitExceeded(f"body: request is {len(body)} bytes; the limit is {limits.MAX_REQUEST_BYTES} bytes",
                                field="body", limit=limits.MAX_REQUEST_BYTES)
        app_id = state["keys"].app_for(event_key)
        if app_id is None:
            app_id = await asyncio.to_thread(state["keys"].app_for_fresh, event_key)
        if app_id is None:
            raise Unauthorized(f"unknown event key {mask(event_key)}")
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise InvalidInput(f"body: not valid JSON ({exc})", field="body") from None
        records = validate_events(raw, app_id, max_event_bytes=settings.max_event_bytes)
        await state["producer"].send_many(settings.events_topic, [(r.app_id, r.dumps()) for r in records],
                                          settings.partitions)
        schedule = None
        if wait == "schedule":
            schedule = await state["schedule"].wait(records, state["runs"].store)
        return Accepted(ids=[r.id for r in records], schedule=schedule)

    @app.get("/v1/runs/{run_id}", response_model=RunView, response_model_exclude_none=True,
             dependencies=[Depends(_api_auth)], summary="One run: status, output or error, steps")
    async def get_run(run_id: str) -> RunView:
        view = state["runs"].store.run(run_id)
        if view is None:
            raise NotFound(f"no run {run_id!r} (yet)", run_id=run_id)
        return view

    @app.get("/v1/events/{event_id}/runs", response_model=EventRuns, response_model_exclude_none=True,
             dependencies=[Depends(_api_auth)], summary="The runs an event started")
    async def event_runs(event_id: str) -> EventRuns:
        return EventRuns(data=state["runs"].store.runs_for_event(event_id))

    @app.get("/v1/functions/{app_id}/{function_id}/skips", response_model=SkipCounts,
             dependencies=[Depends(_api_auth)], summary="How many of the runs kept flow control skipped, by reason")
    async def function_skips(app_id: str, function_id: str) -> SkipCounts:
        return SkipCounts(counts=state["runs"].store.skip_counts(app_id, function_id))

    @app.get("/v1/functions/{app_id}/{function_id}/queue", response_model=QueueStats,
             dependencies=[Depends(_api_auth)], summary="Backlog depth, steps in flight and why runs wait")
    async def function_queue(app_id: str, function_id: str) -> QueueStats:
        found = state["stats"].items.get(f"{app_id}/{function_id}")
        if not isinstance(found, dict):
            return QueueStats(app_id=app_id, function_id=function_id)
        return QueueStats.model_validate(found)

    async def _send_command(app_id: str, function_id: str, value: bytes) -> None:
        # the function processor's key: one writer per function, in order with its other commands
        await state["producer"].send_many(settings.commands_topic, [(function_key(app_id, function_id), value)],
                                          settings.partitions)

    async def _send_keyed(key: str, value: bytes, _partition_key: str) -> None:
        await state["producer"].send_many(settings.commands_topic, [(key, value)], settings.partitions)

    app.include_router(replay_router(settings, state, _api_auth, _send_keyed))

    @app.delete("/v1/runs/{run_id}", status_code=202, response_model=RunCancelling,
                dependencies=[Depends(_api_auth)], summary="Cancel one run",
                description=(
                    "Cancels a run that has not ended: it ends `cancelled` and no further step is "
                    "dispatched; a step already executing finishes and its result is discarded. Answers once "
                    "the broker acknowledged the command; `GET /v1/runs/{run_id}` shows `cancelled` when the "
                    "engine applied it. Repeating the call before then is harmless. 404: no such run (yet); "
                    "409: the run already ended (the error names its `status`)."),
                responses={404: {"model": ErrorBody, "description": "unknown run"},
                           409: {"model": ErrorBody, "description": "the run already ended"}})
    async def cancel_run(run_id: str) -> RunCancelling:
        view = state["runs"].store.run(run_id)
        if view is None:
            raise NotFound(f"no run {run_id!r} (yet)", run_id=run_id)
        cmd = cancel_run_command(view)  # Conflict if it already ended
        await _send_command(view.app_id, view.function_id, cmd.dumps())
        return RunCancelling(run_id=view.run_id)

    @app.post("/v1/cancellations", status_code=202, response_model=Cancellation,
              dependencies=[Depends(_api_auth)], summary="Cancel a function's runs in bulk",
              description=(
                  "Cancels the function's runs not yet ended that were created in "
                  "`[started_after, started_before)` and whose trigger event passes `if` (CEL over `event`). "
                  "Times are RFC 3339 date-times with an offset or ms since the epoch. It does not stop new "
                  "runs from being created. Answers `pending` once the broker acknowledged the command; "
                  "follow it with `GET /v1/cancellations/{id}`. 400 names the field at fault."),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": CancellationIn.model_json_schema(by_alias=True)}}}},
              responses={400: {"model": ErrorBody, "description": "invalid request; `error.field` names the field"}})
    async def create_cancellation(request: Request) -> Cancellation:
        cmd = parse_cancellation(await request.body())
        await _send_command(cmd.app_id, cmd.function_id, cmd.dumps())
        item = accepted(cmd)
        state["cancellations"].add(item)
        return item

    @app.get("/v1/cancellations/{cancellation_id}", response_model=Cancellation,
             dependencies=[Depends(_api_auth)], summary="A bulk cancellation: pending, or done with its count",
             description=(
                 "`done` with `cancelled` (how many runs it cancelled) once the engine applied it. `pending` "
                 "is known only to the API process that accepted the request (and is forgotten by a restart); "
                 "elsewhere an accepted but not yet applied cancellation answers 404."),
             responses={404: {"model": ErrorBody, "description": "unknown (or not applied yet, see above)"}})
    async def get_cancellation(cancellation_id: str) -> Cancellation:
        stats = state["stats"].items if "stats" in state else {}
        found = state["cancellations"].status(cancellation_id, stats)
        if found is None:
            raise NotFound(f"no cancellation {cancellation_id!r} (or it is not applied yet)",
                           cancellation_id=cancellation_id)
        return found

    app.include_router(listing_router(settings, state, _api_auth))

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
