"""The operator's cancellation surface of the runs API: request rules, wire commands and the
answers of ``DELETE /v1/runs/{id}``, ``POST /v1/cancellations`` and
``GET /v1/cancellations/{id}`` (the routes themselves are in :mod:`.http_api`).

Both kinds of cancellation are *commands* to the function processor (``sg.commands``, key
``app_id/function_id``), which applies them in the function's partition, in order with
everything else that happens to its runs; the API only validates and produces them.

* A single cancellation answers ``202 cancelling`` once the command is acknowledged; the
  run view shows ``cancelled`` when the processor applied it. A step that is executing
  finishes and its result is discarded. A run the processor finds already ended is left
  as it is, so a repeated or late ``DELETE`` is harmless.
* A bulk cancellation (``CancelRuns``) cancels the function's runs, not yet ended, created
  in ``[started_after, started_before)`` whose first event passes ``if`` (CEL over
  ``event``). When the processor has applied it, it publishes
  ``{"id", "app_id", "function_id", "cancelled", "at"}`` under the key
  ``cancellation/<id>`` to the compacted ``sg.stats`` topic, which the API follows.
  Until then only the API process that accepted it knows it (``status: pending``);
  another API process, or this one after a restart, answers 404 until it is done.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput, LimitExceeded, SluicegateError
from ..events import new_event_id
from ..expressions import compile_expression
from ..ids import check_id
from ..wire import CancelRun, CancelRuns, RunView

ENDED = ("completed", "failed", "cancelled", "skipped")
MAX_BODY_BYTES = 64 * 1024
MAX_IF_LENGTH = 4096
MAX_MS = 253_402_300_799_999          # 9999-12-31T23:59:59.999Z
PENDING_KEPT = 10_000                 # bulk cancellations remembered as pending, per API process
API_REASON = "cancelled by API"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIELDS = ("app_id", "function_id", "started_after", "started_before", "if")
_TIME_RULE = "an RFC 3339 date-time with an offset (e.g. 2025-01-31T12:00:00Z) or ms since the epoch"


class Conflict(SluicegateError):
    """The request contradicts the resource's state (e.g. cancelling a run that ended)."""

    code = "conflict"


def stats_key(cancellation_id: str) -> str:
    """The key of a bulk cancellation's result in the compacted ``sg.stats`` topic."""
    return f"cancellation/{cancellation_id}"


# -- models (OpenAPI) -----------------------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="stable error code", examples=["invalid_input"])
    message: str = Field(examples=["started_before: is required"])
    field: str | None = Field(None, description="the request field at fault", examples=["started_before"])
    limit: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class RunCancelling(BaseModel):
    """The cancellation was handed to the engine; ``GET /v1/runs/{run_id}`` shows
    ``cancelled`` once it is applied."""

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"run_id": "01JH8W3ZP4QK6T4X2M7B9C0DEF", "status": "cancelling"}]})

    run_id: str
    status: Literal["cancelling"] = "cancelling"


class CancellationIn(BaseModel):
    """A bulk cancellation: the function's runs not yet ended, created in
    ``[started_after, started_before)``, whose trigger event passes ``if``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "examples": [{"app_id": "shop", "function_id": "checkout",
                      "started_after": "2025-01-31T00:00:00Z", "started_before": "2025-01-31T12:00:00Z",
                      "if": "event.data.plan == \"free\""},
                     {"app_id": "shop", "function_id": "checkout", "started_before": 1738324800000}]})

    app_id: str = Field(description="the function's app", min_length=1, max_length=128)
    function_id: str = Field(description="the function", min_length=1, max_length=128)
    started_after: str | int | None = Field(None, description=f"runs created at or after this; {_TIME_RULE}")
    started_before: str | int = Field(description=f"runs created before this (required); {_TIME_RULE}")
    if_: str | None = Field(None, alias="if", max_length=MAX_IF_LENGTH,
                            description="a CEL boolean over `event` (the run's first trigger event)")


class Cancellation(BaseModel):
    """A bulk cancellation and how far it got. ``pending``: accepted, not applied yet
    (only the API process that accepted it knows it then). ``done``: the processor applied
    it and cancelled ``cancelled`` runs at ``at`` (ms since the epoch)."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={
        "examples": [{"id": "01JH8W5B2N3R9S7T1V0X4Y6Z8A", "app_id": "shop", "function_id": "checkout",
                      "started_after": None, "started_before": 1738324800000, "if": None,
                      "status": "done", "cancelled": 42, "at": 1738324801234}]})

    id: str
    app_id: str
    function_id: str
    started_after: int | None = Field(None, description="ms since the epoch (null: from the beginning)")
    started_before: int | None = Field(None, description="ms since the epoch (null: not known to this API process)")
    if_: str | None = Field(None, alias="if", description="the CEL filter over `event`, if any")
    status: Literal["pending", "done"]
    cancelled: int | None = Field(None, description="done: how many runs it cancelled")
    at: int | None = Field(None, description="done: when the processor applied it, ms since the epoch")


# -- validation -----------------------------------------------------------------------------

def parse_time(value: Any, *, field: str) -> int:
    """An RFC 3339 date-time (with an offset) or integer ms since the epoch → ms."""
    if isinstance(value, bool) or value is None:
        raise InvalidInput(f"{field}: must be {_TIME_RULE}", field=field)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidInput(f"{field}: ms since the epoch must be a whole number", field=field)
        value = int(value)
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            ms = int(text)
        else:
            try:
                when = datetime.fromisoformat(text.upper())
            except ValueError:
                raise InvalidInput(f"{field}: {value!r} is not {_TIME_RULE}", field=field) from None
            if when.tzinfo is None:
                raise InvalidInput(f"{field}: {value!r} has no UTC offset; add one (e.g. 'Z' or '+02:00')",
                                   field=field)
            ms = (when - _EPOCH) // timedelta(milliseconds=1)
    else:
        raise InvalidInput(f"{field}: must be {_TIME_RULE}", field=field)
    if not 0 <= ms <= MAX_MS:
        raise InvalidInput(f"{field}: {value!r} is out of range (1970 to 9999)", field=field, limit=MAX_MS)
    return ms


def parse_cancellation(body: bytes, *, cancellation_id: str | None = None) -> CancelRuns:
    """The body of ``POST /v1/cancellations`` → the wire command, or one :class:`InvalidInput`
    naming the field at fault (nothing is produced then)."""
    if len(body) > MAX_BODY_BYTES:
        raise LimitExceeded(f"body: request is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes",
                            field="body", limit=MAX_BODY_BYTES)
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})", field="body") from None
    return validate_cancellation(raw, cancellation_id=cancellation_id)


def validate_cancellation(raw: Any, *, cancellation_id: str | None = None) -> CancelRuns:
    if not isinstance(raw, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    for name in raw:
        if name not in _FIELDS:
            hint = " (the expression field is 'if')" if name in ("if_exp", "if_") else ""
            raise InvalidInput(f"{name}: unknown field{hint}; expected one of {', '.join(_FIELDS)}", field=name)
    for name in ("app_id", "function_id", "started_before"):
        if raw.get(name) is None:
            raise InvalidInput(f"{name}: is required", field=name)
    app_id = check_id(raw["app_id"], field="app_id")
    function_id = check_id(raw["function_id"], field="function_id")
    before = parse_time(raw["started_before"], field="started_before")
    after = None
    if raw.get("started_after") is not None:
        after = parse_time(raw["started_after"], field="started_after")
        if after >= before:
            raise InvalidInput(f"started_after: must be before started_before ({after} >= {before} ms)",
                               field="started_after")
    if_exp = raw.get("if")
    if if_exp is not None:
        if not isinstance(if_exp, str):
            raise InvalidInput("if: must be a string (a CEL expression over `event`)", field="if")
        if len(if_exp) > MAX_IF_LENGTH:
            raise LimitExceeded(f"if: {len(if_exp)} characters; the limit is {MAX_IF_LENGTH}", field="if",
                                limit=MAX_IF_LENGTH)
        compile_expression(if_exp, field="if")
    return CancelRuns(cancellation_id=cancellation_id or new_event_id(), app_id=app_id, function_id=function_id,
                      started_after=after, started_before=before, if_exp=if_exp)


def cancel_run_command(view: RunView) -> CancelRun:
    """``DELETE /v1/runs/{id}``: the command for a run the API knows, or :class:`Conflict`
    if that run already ended."""
    if view.status in ENDED:
        raise Conflict(f"run {view.run_id!r} already ended: its status is {view.status!r}",
                       run_id=view.run_id, status=view.status)
    return CancelRun(app_id=view.app_id, function_id=view.function_id, run_id=view.run_id,
                     reason=API_REASON, by="api")


# -- status ---------------------------------------------------------------------------------

def accepted(cmd: CancelRuns) -> Cancellation:
    return Cancellation(id=cmd.cancellation_id, app_id=cmd.app_id, function_id=cmd.function_id,
                        started_after=cmd.started_after, started_before=cmd.started_before,
                        if_=cmd.if_exp, status="pending")


class CancellationLog:
    """The bulk cancellations this API process accepted (the last :data:`PENDING_KEPT`),
    so that ``GET`` can answer ``pending`` before the processor reports them done."""

    def __init__(self, keep: int = PENDING_KEPT) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Cancellation] = OrderedDict()

    def add(self, item: Cancellation) -> None:
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self._keep:
                self._items.popitem(last=False)

    def get(self, cancellation_id: str) -> Cancellation | None:
        with self._lock:
            return self._items.get(cancellation_id)

    def status(self, cancellation_id: str, stats: dict[str, object]) -> Cancellation | None:
        """Done (from the processor's record in ``sg.stats``), pending, or ``None``: unknown."""
        known = self.get(cancellation_id)
        record = stats.get(stats_key(cancellation_id))
        if isinstance(record, dict) and "cancelled" in record:
            base = known.model_dump(by_alias=True) if known else {
                "id": cancellation_id, "app_id": record.get("app_id", ""),
                "function_id": record.get("function_id", "")}
            for name in ("started_after", "started_before", "if"):
                if name in record and record[name] is not None:
                    base[name] = record[name]
            base.update(status="done", cancelled=int(record["cancelled"]), at=record.get("at"))
            return Cancellation.model_validate(base)
        return known
