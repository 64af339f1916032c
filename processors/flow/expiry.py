"""When a flow-control record in the processor's ``flow`` table is worth nothing any more,
and a bounded sweep over the table that finds those records. Pure.

Some records only hold a point in time after which they are equivalent to no record at
all; deleting them then changes no decision, and keeps the table from growing with every
key value ever seen:

====================  =========================  =============================================
key prefix            record                     may be deleted from
====================  =========================  =============================================
``rl/``               rate limit GCRA state      its theoretical arrival time (the bucket is
                                                 full again: :func:`rate_limit.state_expires_at`)
``th/``               throttle GCRA state        the same
``idem/``             idempotency key            first seen + 24 h (a repeat is admitted again)
``dedup/``            event-id dedup record      first seen + 24 h
``seen/``             a debounce / batch key's   its last event + 24 h (a redelivery is seconds
                      recent event ids           old); one written before it held a time: never
anything else         debounce / batch groups,   never by this sweep: they end when their run
                      singleton locks, cron      starts (groups), when the run ends (locks), or
                                                 are one per function (cron)
====================  =========================  =============================================

A record that cannot be decoded is left alone (it is not ours to judge).

:func:`sweep` walks the table in key order from a cursor, examines at most ``limit``
records, and returns the keys to delete and where to continue (``None``: the end was
reached, start again from the beginning next time). The processor runs it a slice at a
time in a background lane (``processors/retention_stage.py``), so a full pass costs a few
reads per key and never a long pause.
"""

from __future__ import annotations

import json
from typing import Iterable

from pydantic import ValidationError

from ...flow_config import EVENT_DEDUP_PERIOD_MS

from . import idempotency as idem
from . import rate_limit as rl

FLOW_SWEEP_BATCH = 500       # records one sweep command examines at most
FLOW_SWEEP_INTERVAL_S = 2.0  # how often each owned partition gets one (a pass over 1 M records: ~1 h)


def expires_at(key: bytes, value: bytes) -> int | None:
    """Wall-clock ms from which the record is equivalent to no record; None: never by time."""
    try:
        if key.startswith((b"rl/", b"th/")):
            return rl.state_expires_at(rl.GcraState.model_validate_json(value))
        if key.startswith(b"idem/"):
            return idem.idempotency_expires_at(idem.IdempotencyState.model_validate_json(value))
        if key.startswith(b"dedup/"):
            return idem.event_dedup_expires_at(idem.IdempotencyState.model_validate_json(value))
        if key.startswith(b"seen/"):
            record = json.loads(value)
            if isinstance(record, dict) and isinstance(record.get("at"), int):
                return record["at"] + EVENT_DEDUP_PERIOD_MS
            return None
    except (ValidationError, ValueError):
        return None
    return None


def sweep(items: Iterable[tuple[bytes, bytes]], now_ms: int, limit: int) -> tuple[list[bytes], bytes | None]:
    """(keys to delete, the key to continue from) over at most ``limit`` records of ``items``
    (key order, starting at the cursor). The continuation is the first key not examined, or
    None when ``items`` ran out."""
    deletes: list[bytes] = []
    examined = 0
    for key, value in items:
        if examined == limit:
            return deletes, key
        examined += 1
        at = expires_at(key, value)
        if at is not None and at <= now_ms:
            deletes.append(key)
    return deletes, None
