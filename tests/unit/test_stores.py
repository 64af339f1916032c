"""The one key-value interface on both backends, and the run-view read model on top of it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

from sluicegate.state import codecs
from sluicegate.state.run_view_store import RunViewStore
from sluicegate.state.stores import KeyValueStore, MemoryStore, RocksStore
from sluicegate.wire import ErrorInfo, RunView, StepView

BACKENDS = ["memory", "rocks"]
on_both_backends = pytest.mark.parametrize("store", BACKENDS, indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    kv: KeyValueStore = MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "rocks")
    yield kv
    kv.close()


def put(kv: KeyValueStore, *keys: bytes) -> None:
    kv.write_batch({k: b"v:" + k for k in keys})


# -- get / put / delete ----------------------------------------------------------------------


@on_both_backends
def test_get_missing_is_none(store: KeyValueStore) -> None:
    assert store.get(b"nope") is None


@on_both_backends
@pytest.mark.parametrize(("batches", "expected"), [
    pytest.param([({b"a": b"1"}, [])], {b"a": b"1"}, id="put"),
    pytest.param([({b"a": b"1"}, []), ({b"a": b"2"}, [])], {b"a": b"2"}, id="overwrite"),
    pytest.param([({b"a": b"1", b"b": b"2"}, []), ({}, [b"a"])], {b"a": None, b"b": b"2"}, id="delete"),
    pytest.param([({}, [b"missing"])], {b"missing": None}, id="delete-missing-is-a-no-op"),
    pytest.param([({b"a": b"1"}, [b"a"])], {b"a": None}, id="put-and-delete-in-one-batch"),
    pytest.param([({b"a": b""}, [])], {b"a": b""}, id="empty-value-is-not-missing"),
    pytest.param([({b"a": b""}, []), ({}, [b"a"])], {b"a": None}, id="delete-empty-value"),
    pytest.param([({b"\x00": b"nul", b"\xff" * 3: b"high"}, [])], {b"\x00": b"nul", b"\xff\xff\xff": b"high"},
                 id="binary-keys"),
    pytest.param([({b"a": b"1"}, []), ({}, [b"a"]), ({b"a": b"3"}, [])], {b"a": b"3"}, id="put-after-delete"),
])
def test_write_batches_then_get(store: KeyValueStore, batches: list[tuple[dict[bytes, bytes], list[bytes]]],
                                expected: dict[bytes, bytes | None]) -> None:
    for puts, deletes in batches:
        store.write_batch(puts, deletes)
    assert {k: store.get(k) for k in expected} == expected


@on_both_backends
def test_deleted_keys_leave_scans(store: KeyValueStore) -> None:
    put(store, b"p/1", b"p/2", b"p/3")
    store.write_batch({}, [b"p/2"])
    assert [k for k, _ in store.scan_prefix(b"p/")] == [b"p/1", b"p/3"]


# -- scans -----------------------------------------------------------------------------------

KEYS = [b"", b"a", b"b", b"b/", b"b/1", b"b/10", b"b/2", b"b/\xff", b"b0", b"c", b"\x80", b"\xff"]


@on_both_backends
@pytest.mark.parametrize(("prefix", "limit", "expected"), [
    (b"b/", None, [b"b/", b"b/1", b"b/10", b"b/2", b"b/\xff"]),
    (b"b/", 0, []),
    (b"b/", 1, [b"b/"]),
    (b"b/", 3, [b"b/", b"b/1", b"b/10"]),
    (b"b/", 100, [b"b/", b"b/1", b"b/10", b"b/2", b"b/\xff"]),
    (b"b/1", None, [b"b/1", b"b/10"]),
    (b"b", None, [b"b", b"b/", b"b/1", b"b/10", b"b/2", b"b/\xff", b"b0"]),
    (b"", 4, [b"a", b"b", b"b/", b"b/1"]),  # an empty prefix walks everything (b"" is never put)
    (b"\x80", None, [b"\x80"]),  # bytes compare unsigned
    (b"zz", None, []),
    (b"0", None, []),
])
def test_scan_prefix_order_and_limit(store: KeyValueStore, prefix: bytes, limit: int | None,
                                     expected: list[bytes]) -> None:
    shuffled = [k for k in KEYS if k]
    random.Random(3).shuffle(shuffled)
    for key in shuffled:  # one batch per key: the order of writes must not matter
        put(store, key)
    assert list(store.scan_prefix(prefix, limit)) == [(k, b"v:" + k) for k in expected]


@on_both_backends
def test_timer_keys_scan_soonest_first(store: KeyValueStore) -> None:
    due = [(300, "c"), (2**33, "a"), (1, "z"), (256, "b"), (255, "y")]
    store.write_batch({codecs.timer_key(t, i): b"" for t, i in due})
    assert [codecs.parse_timer_key(k) for k, _ in store.scan_prefix(b"")] == sorted(due)


def test_rocks_store_keeps_data_across_reopen(tmp_path: Path) -> None:
    first = RocksStore(tmp_path / "db")
    first.write_batch({b"k": b"v", b"gone": b"x"})
    first.write_batch({}, [b"gone"])
    first.close()
    again = RocksStore(tmp_path / "db")
    try:
        assert (again.get(b"k"), again.get(b"gone")) == (b"v", None)
    finally:
        again.close()


# -- run views -------------------------------------------------------------------------------


def view(run_id: str, *event_ids: str, status: str = "running", output: object = None) -> RunView:
    return RunView(run_id=run_id, app_id="shop", function_id="welcome", status=status,  # type: ignore[arg-type]
                   event_ids=list(event_ids), created_at=1_000, output=output)


@pytest.fixture
def runs(store: KeyValueStore) -> RunViewStore:
    rvs = RunViewStore(store)
    rvs.apply([view("run-b", "ev1"), view("run-a", "ev1", "ev2"), view("run-c", "ev10")], {0: 10, 3: 7})
    return rvs


@on_both_backends
def test_run_view_round_trip(runs: RunViewStore) -> None:
    full = RunView(
        run_id="run-x", app_id="shop", function_id="welcome", function_version="v1", status="failed",
        event_ids=["ev9"], created_at=1, started_at=2, ended_at=3, output={"a": [1, 2]},
        error=ErrorInfo(name="ValueError", message="no"),
        steps=[StepView(hash="h", id="s", status="completed", output=5)],
    )
    runs.apply([full], {})
    assert runs.run("run-x") == full
    assert runs.run("run-a") == view("run-a", "ev1", "ev2")
    assert runs.run("missing") is None


@on_both_backends
@pytest.mark.parametrize(("event_id", "limit", "run_ids"), [
    ("ev1", 1000, ["run-a", "run-b"]),  # byte order of run ids
    ("ev1", 1, ["run-a"]),
    ("ev2", 1000, ["run-a"]),
    ("ev10", 1000, ["run-c"]),  # ev1's prefix does not reach ev10
    ("ev", 1000, []),
    ("unknown", 1000, []),
])
def test_runs_for_event(runs: RunViewStore, event_id: str, limit: int, run_ids: list[str]) -> None:
    assert [v.run_id for v in runs.runs_for_event(event_id, limit)] == run_ids


@on_both_backends
def test_later_view_replaces_earlier(runs: RunViewStore) -> None:
    runs.apply([view("run-a", "ev1", "ev2", status="completed", output=42)], {0: 11})
    assert runs.run("run-a") == view("run-a", "ev1", "ev2", status="completed", output=42)
    assert [(v.run_id, v.status) for v in runs.runs_for_event("ev1")] == [("run-a", "completed"),
                                                                          ("run-b", "running")]


@on_both_backends
def test_next_offset_per_partition(store: KeyValueStore) -> None:
    rvs = RunViewStore(store)
    assert [rvs.next_offset(p) for p in range(4)] == [None] * 4
    rvs.apply([view("run-a", "ev1")], {0: 10, 3: 7})
    assert [rvs.next_offset(p) for p in range(4)] == [10, None, None, 7]
    rvs.apply([], {3: 2**40, 1: 0})  # offsets alone; partitions not named keep their offset
    assert [rvs.next_offset(p) for p in range(4)] == [10, 0, None, 2**40]
    assert store.get(codecs.offset_key(3)) == codecs.encode_offset(2**40)


def test_skipped_runs_are_counted_once_per_function_and_reason() -> None:
    from sluicegate.state.run_view_store import RunViewStore
    from sluicegate.state.stores import MemoryStore
    from sluicegate.wire import RunView

    def view(run_id: str, reason: str, fn: str = "reset") -> RunView:
        return RunView(run_id=run_id, app_id="shop", function_id=fn, status="skipped", event_ids=[f"e-{run_id}"],
                       created_at=1, skip_reason=reason)

    store = RunViewStore(MemoryStore())
    store.apply([view("r1", "rate_limited"), view("r2", "rate_limited"), view("r3", "idempotent_duplicate")], {0: 3})
    store.apply([view("r1", "rate_limited"), view("r4", "rate_limited", fn="other")], {0: 5})  # r1 re-read
    assert store.skip_counts("shop", "reset") == {"idempotent_duplicate": 1, "rate_limited": 2}
    assert store.skip_counts("shop", "other") == {"rate_limited": 1}
    assert store.skip_counts("shop", "res") == {}
