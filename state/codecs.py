"""Byte layouts of keys. These formats are stored on disk and in changelogs: never change
one without a migration (tests in ``tests/unit/test_codecs.py`` pin them).

Timer key (function processor, table ``timers``)::

    due_ms : 8 bytes, unsigned big-endian, wall-clock ms since the epoch
    timer_id : UTF-8 bytes, the rest of the key

  A forward scan walks timers soonest first; a due-scan stops at the first key > now.

Run-view keys (the API's read model, one RocksDB)::

    b"r/" ‖ run_id                          -> RunView JSON
    b"e/" ‖ event_id ‖ b"\\x00" ‖ run_id    -> b"" (index: runs started by an event)
    b"o/" ‖ partition (4 bytes big-endian)  -> next offset to read of sg.runs (8 bytes big-endian)
    b"c/skip/" ‖ app ‖ b"/" ‖ fn ‖ b"/" ‖ reason  -> skipped runs so far (8 bytes big-endian)

  ``event_id`` and ``run_id`` never contain NUL (ids are validated at ingestion); app and
  function ids never contain ``/`` (:mod:`sluicegate.ids`).
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
