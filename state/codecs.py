"""Byte layouts of keys. These formats are stored on disk and in changelogs: never change
one without a migration (tests in ``tests/unit/test_codecs.py`` pin them).

Timer key (function processor, table ``timers``)::

    due_ms : 8 bytes, unsigned big-endian, wall-clock ms since the epoch
    timer_id : UTF-8 bytes, the rest of the key

  A forward scan walks timers soonest first; a due-scan stops at the first key > now.

Run-expiry key (function processor, table ``expiry``; one per ended run)::

    expires_ms : 8 bytes, unsigned big-endian (the run's end + the run retention)
    run_id : UTF-8 bytes, the rest of the key

  Read in key order straight from the partition's RocksDB, never held in memory; faust's
  own offset key (``__faust\x00offset__``) sorts after every expiry key and is not one.

Run-view keys (the API's read model, one RocksDB)::

    b"r/" ‖ run_id                          -> RunView JSON
    b"e/" ‖ event_id ‖ b"\\x00" ‖ run_id    -> b"" (index: runs started by an event)
    b"o/" ‖ partition (4 bytes big-endian)  -> next offset to read of sg.runs (8 bytes big-endian)
    b"c/skip/" ‖ app ‖ b"/" ‖ fn ‖ b"/" ‖ reason  -> skipped runs stored (8 bytes big-endian)

  ``event_id`` and ``run_id`` never contain NUL (ids are validated at ingestion); app and
  function ids never contain ``/`` (:mod:`sluicegate.ids`).

Listing indexes of the same read model (written in the same atomic batch as the views,
:mod:`sluicegate.state.run_view_store`)::

    b"m/" ‖ run_id                           -> run meta: status code (1 byte, index in
                                                RUN_STATUSES) ‖ created_at (8 bytes BE) ‖
                                                app ‖ b"/" ‖ fn  (UTF-8)
    b"ix/" ‖ status ‖ NUL ‖ rev ‖ run_id                -> b""  (every run, by status)
    b"ia/" ‖ app ‖ NUL ‖ status ‖ NUL ‖ rev ‖ run_id    -> b""  (an app's runs, by status)
    b"if/" ‖ app ‖ b"/" ‖ fn ‖ NUL ‖ status ‖ NUL ‖ rev ‖ run_id  -> b""  (a function's runs)
    b"c/status/" ‖ app ‖ b"/" ‖ fn ‖ b"/" ‖ status  -> runs now in that status (8 bytes BE)
    b"v/indexes"                             -> version of the indexes built (8 bytes BE)

  ``rev`` is ``2**64 - 1 - created_at`` as 8 bytes big-endian, so a forward scan of one
  index walks runs newest first (ties: run id ascending). The part after the status,
  ``rev ‖ run_id`` (the *position*), orders runs the same way in every index, which is
  what merging several statuses and resuming from a cursor rely on. Statuses and ids
  never contain NUL, so no index prefix is a prefix of another one.
"""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def timer_key(due_ms: int, timer_id: str) -> bytes:
    if due_ms < 0:
        raise ValueError("due_ms must be >= 0")
    return _U64.pack(due_ms) + timer_id.encode()


def parse_timer_key(key: bytes) -> tuple[int, str]:
    return _U64.unpack_from(key)[0], key[8:].decode()


def expiry_key(expires_ms: int, run_id: str) -> bytes:
    if expires_ms < 0:
        raise ValueError("expires_ms must be >= 0")
    return _U64.pack(expires_ms) + run_id.encode()


def parse_expiry_key(key: bytes) -> tuple[int, str] | None:
    """(expires_ms, run_id), or None for a key of another layout (faust's offset key)."""
    if len(key) <= 8 or key[0] != 0:  # expiry times stay below 2**56 ms (year ~2.3 million)
        return None
    return _U64.unpack_from(key)[0], key[8:].decode()


def run_key(run_id: str) -> bytes:
    return b"r/" + run_id.encode()


def event_run_key(event_id: str, run_id: str) -> bytes:
    return b"e/" + event_id.encode() + b"\x00" + run_id.encode()


def event_runs_prefix(event_id: str) -> bytes:
    return b"e/" + event_id.encode() + b"\x00"


def run_id_from_event_run_key(key: bytes) -> str:
    return key.split(b"\x00", 1)[1].decode()


def skip_counter_prefix(app_id: str, function_id: str) -> bytes:
    return f"c/skip/{app_id}/{function_id}/".encode()


def skip_counter_key(app_id: str, function_id: str, reason: str) -> bytes:
    return skip_counter_prefix(app_id, function_id) + reason.encode()


def offset_key(partition: int) -> bytes:
    return b"o/" + _U32.pack(partition)


def encode_offset(offset: int) -> bytes:
    return _U64.pack(offset)


def decode_offset(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


# -- listing indexes of the run views ---------------------------------------------------------

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "skipped")
_STATUS_CODE = {name: i for i, name in enumerate(RUN_STATUSES)}
_MAX_U64 = 2**64 - 1
INDEX_VERSION_KEY = b"v/indexes"


def run_meta_key(run_id: str) -> bytes:
    return b"m/" + run_id.encode()


def encode_run_meta(status: str, created_at: int, app_id: str, function_id: str) -> bytes:
    return bytes([_STATUS_CODE[status]]) + _U64.pack(max(0, created_at)) + f"{app_id}/{function_id}".encode()


def decode_run_meta(raw: bytes) -> tuple[str, int, str, str]:
    """(status, created_at, app_id, function_id)."""
    app_id, function_id = raw[9:].decode().split("/", 1)
    return RUN_STATUSES[raw[0]], _U64.unpack_from(raw, 1)[0], app_id, function_id


def run_position(created_at: int, run_id: str) -> bytes:
    """``rev(created_at) ‖ run_id``: where a run sorts in every listing index (newest first)."""
    return _U64.pack(_MAX_U64 - max(0, created_at)) + run_id.encode()


def parse_run_position(position: bytes) -> tuple[int, str]:
    return _MAX_U64 - _U64.unpack_from(position)[0], position[8:].decode()


def time_position(created_at: int) -> bytes:
    """The first position of runs created at ``created_at`` (before any run id)."""
    return _U64.pack(_MAX_U64 - max(0, created_at))


def run_index_prefix(status: str, app_id: str | None = None, function_id: str | None = None) -> bytes:
    """The index of runs in ``status``: of every app, of one app, or of one function."""
    if status not in _STATUS_CODE:
        raise ValueError(f"unknown run status {status!r}")
    if app_id is None:
        if function_id is not None:
            raise ValueError("a function index needs its app")
        return b"ix/" + status.encode() + b"\x00"
    if function_id is None:
        return b"ia/" + app_id.encode() + b"\x00" + status.encode() + b"\x00"
    return b"if/" + f"{app_id}/{function_id}".encode() + b"\x00" + status.encode() + b"\x00"


def run_index_keys(status: str, created_at: int, app_id: str, function_id: str, run_id: str) -> list[bytes]:
    """The three index entries of one run (every run, its app, its function)."""
    position = run_position(created_at, run_id)
    return [run_index_prefix(status) + position, run_index_prefix(status, app_id) + position,
            run_index_prefix(status, app_id, function_id) + position]


def status_counter_prefix(app_id: str | None = None, function_id: str | None = None) -> bytes:
    if app_id is None:
        return b"c/status/"
    if function_id is None:
        return f"c/status/{app_id}/".encode()
    return f"c/status/{app_id}/{function_id}/".encode()


def status_counter_key(app_id: str, function_id: str, status: str) -> bytes:
    return status_counter_prefix(app_id, function_id) + status.encode()


def parse_status_counter_key(key: bytes) -> tuple[str, str, str]:
    """(app_id, function_id, status)."""
    app_id, function_id, status = key[len(b"c/status/"):].decode().split("/", 2)
    return app_id, function_id, status
