"""How long an ended run is kept, and which ones are due to go. Pure.

A run that ends (completed, failed, cancelled, skipped) is kept ``run_retention_ms``
(``SLUICEGATE_RUN_RETENTION_MS``, 7 days by default: as long as ``sg.events`` keeps the
events a replay would read), then its state, its view and its listing entries are deleted.
A run that has not ended is never deleted, however old.

The function processor writes one expiry entry per ended run into the changelogged table
``expiry`` (key: :func:`~sluicegate.state.codecs.expiry_key`, expiry time first) in the
same command that ends the run. A 1 s task peeks at each owned partition's first entry
(RocksDB key order; the entries are never held in memory, however many runs are kept) and,
when it is due, sends that partition an ``ExpireRuns`` command; the agent deletes at most
:data:`EXPIRE_BATCH` due runs per command and sends itself another while more are due.
The command waits in a background lane, behind live new work of the partition.

Table of cases (:func:`due_entries`, keys in their RocksDB order):

=====================================================  ======================================
entries                                                 due now, and whether more follow
=====================================================  ======================================
none                                                    nothing, no more
all later than ``now``                                  nothing, no more
some at or before ``now``                               those, in key order; no more
more due than ``limit``                                 the first ``limit``; more
a key of another layout (faust's offset key)            skipped
=====================================================  ======================================
"""

from __future__ import annotations

from typing import Iterable

from ..state.codecs import parse_expiry_key
from ..state.run_state import RunState

EXPIRE_BATCH = 200          # runs one ExpireRuns command deletes at most
SWEEP_INTERVAL_S = 1.0      # how often the processor peeks at each partition's first entry
RESEND_AFTER_MS = 30_000    # an ExpireRuns not handled by then (lost at a rebalance) is sent again
MIN_SAFE_RETENTION_MS = 24 * 3600 * 1000  # event-id dedup (reference: 24 h) needs the run to exist


def expires_at(run: RunState, retention_ms: int) -> int | None:
    """When an ended run may be deleted; None while it has not ended."""
    if not run.finished:
        return None
    return (run.ended_at if run.ended_at is not None else run.created_at) + retention_ms


def due_entries(keys: Iterable[bytes], now_ms: int, limit: int) -> tuple[list[tuple[bytes, str]], bool]:
    """The expiry entries due at ``now_ms`` as (key, run id), in key order, at most
    ``limit``; and whether another due entry follows them."""
    due: list[tuple[bytes, str]] = []
    for key in keys:
        parsed = parse_expiry_key(key)
        if parsed is None:
            continue
        expires, run_id = parsed
        if expires > now_ms:
            return due, False
        if len(due) == limit:
            return due, True
        due.append((key, run_id))
    return due, False
