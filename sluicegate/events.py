"""Event input: validation (one rule set for the HTTP bridge and the SDK) and ids.

Rules (limits in :mod:`sluicegate.limits`): ``name`` is required, 1..512 characters, no
control characters, and must not start with ``sluicegate/`` (reserved for system events);
``data`` is a JSON object; ``id`` (optional) is 1..128 printable characters; ``ts``
(optional) is ms since the epoch; one serialized event is at most ``max_event_bytes``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import limits
from .errors import InvalidInput, LimitExceeded
from .wire import EventRecord

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RESERVED_PREFIX = "sluicegate/"


def new_event_id(now_ms: int | None = None) -> str:
    """A ULID: 48 bits of ms time then 80 random bits, Crockford base32 (26 characters)."""
    t = int(time.time() * 1000) if now_ms is None else now_ms
    value = (t << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


class EventIn(BaseModel):
    """One event as a sender gives it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=limits.MAX_EVENT_NAME_LENGTH)
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(None, min_length=1, max_length=limits.MAX_ID_LENGTH)
    ts: int | None = Field(None, ge=0)
    user: dict[str, Any] | None = None
    v: str | None = Field(None, max_length=128)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if any(ord(c) < 32 for c in v):
            raise ValueError("must not contain control characters")
        if v.startswith(RESERVED_PREFIX):
            raise ValueError(f"names starting with '{RESERVED_PREFIX}' are reserved for system events")
        return v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and any(ord(c) < 33 for c in v):
            raise ValueError("must not contain whitespace or control characters")
        return v


def _first_error(exc: ValidationError, prefix: str) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
    ctx = err.get("ctx") or {}
    limit = ctx.get("max_length") or ctx.get("min_length") or ctx.get("ge")
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] in ("dict_type", "model_type"):
        msg = "must be a JSON object"
    return InvalidInput(f"{field}: {msg}", field=field, limit=limit)


def validate_events(raw: Any, app_id: str, *, max_event_bytes: int = limits.MAX_EVENT_BYTES,
                    now_ms: int | None = None) -> list[EventRecord]:
    """Turn a sender's event or list of events into records, or raise one clear error.

    All or nothing: if one event is bad, none is accepted.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    many = isinstance(raw, list)
    items = raw if many else [raw]
    if many and len(items) == 0:
        raise InvalidInput("body: send at least one event", field="body")
    if len(items) > limits.MAX_EVENTS_PER_REQUEST:
        raise LimitExceeded(
            f"body: at most {limits.MAX_EVENTS_PER_REQUEST} events per request, got {len(items)}",
            field="body", limit=limits.MAX_EVENTS_PER_REQUEST)
    out: list[EventRecord] = []
    for i, item in enumerate(items):
        prefix = f"[{i}]." if many else ""
        if not isinstance(item, dict):
            field = f"[{i}]" if many else "body"
            raise InvalidInput(f"{field}: an event must be a JSON object", field=field)
        try:
            ev = EventIn.model_validate(item)
        except ValidationError as exc:
            raise _first_error(exc, prefix) from None
        size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        if size > max_event_bytes:
            field = f"[{i}]" if many else "event"
            raise LimitExceeded(
                f"{field}: event is {size} bytes; the limit is {max_event_bytes} bytes",
                field=field, limit=max_event_bytes)
        out.append(EventRecord(app_id=app_id, id=ev.id or new_event_id(now), name=ev.name, data=ev.data,
                               user=ev.user, ts=ev.ts if ev.ts is not None else now, v=ev.v, received_at=now))
    return out
