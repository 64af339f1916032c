"""The run-view store's listing indexes and counters (``GET /v1/runs``, ``GET /v1/functions``),
on both backends: filters, newest-first order, cursor continuation (never a run twice, never
one skipped, even while runs change status), bounded scans, counters per status, the skip
counter, and indexing a read model written before the indexes existed. Key layouts pinned."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Iterator

import pytest

from sluicegate.state import codecs
from sluicegate.state.run_view_store import RUN_STATUSES, RunViewStore, scan_from
from sluicegate.state.stores import KeyValueStore, MemoryStore, RocksStore
from sluicegate.wire import RunView

T0 = 1_738_324_800_000


@pytest.fixture(params=["memory", "rocks"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    store: KeyValueStore = MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "rocks")
    yield store
    store.close()


@pytest.fixture
def store(kv: KeyValueStore) -> RunViewStore:
    return RunViewStore(kv)


def view(run_id: str, status: str = "queued", *, app: str = "shop", fn: str = "checkout", created: int = T0,
         skip_reason: str | None = None) -> RunView:
    return RunView(run_id=run_id, app_id=app, function_id=fn, status=status,  # type: ignore[arg-type]
                   event_ids=[f"ev-{run_id}"], created_at=created, skip_reason=skip_reason)


# -- key layouts (on disk: never change one without a migration) ---------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    (codecs.run_meta_key("run-1"), b"m/run-1"),
    (codecs.encode_run_meta("queued", 1, "a", "f"), b"\x00" + b"\x00" * 7 + b"\x01a/f"),
    (codecs.encode_run_meta("skipped", 256, "shop", "x"), b"\x05" + b"\x00" * 6 + b"\x01\x00shop/x"),
    (codecs.run_position(0, "r"), b"\xff" * 8 + b"r"),
    (codecs.run_position(1, "r"), b"\xff" * 7 + b"\xfer"),
    (codecs.time_position(255), b"\xff" * 7 + b"\x00"),
    (codecs.run_index_prefix("failed"), b"ix/failed\x00"),
    (codecs.run_index_prefix("queued", "shop"), b"ia/shop\x00queued\x00"),
    (codecs.run_index_prefix("running", "shop", "checkout"), b"if/shop/checkout\x00running\x00"),
    (codecs.status_counter_key("shop", "checkout", "failed"), b"c/status/shop/checkout/failed"),
    (codecs.status_counter_prefix("shop"), b"c/status/shop/"),
    (codecs.status_counter_prefix(), b"c/status/"),
    (codecs.INDEX_VERSION_KEY, b"v/indexes"),
])
def test_listing_key_layouts(key: bytes, expected: bytes) -> None:
    assert key == expected


def test_run_index_keys_are_the_three_scopes_at_one_position() -> None:
    keys = codecs.run_index_keys("failed", 5, "shop", "checkout", "r1")
    pos = codecs.run_position(5, "r1")
    assert keys == [b"ix/failed\x00" + pos, b"ia/shop\x00failed\x00" + pos, b"if/shop/checkout\x00failed\x00" + pos]


@pytest.mark.parametrize(("status", "created", "app", "fn"), [
    ("queued", 0, "a", "f"), ("cancelled", T0, "shop.eu", "check-out_2"), ("skipped", 2**63, "x" * 128, "y" * 128)])
def test_run_meta_round_trip(status: str, created: int, app: str, fn: str) -> None:
    assert codecs.decode_run_meta(codecs.encode_run_meta(status, created, app, fn)) == (status, created, app, fn)


def test_positions_sort_newest_first_then_by_run_id() -> None:
    runs = [(9, "z"), (10, "a"), (255, "b"), (256, "a"), (256, "b"), (2**40, "c"), (T0, "a"), (T0, "a0")]
    shuffled = runs[:]
    random.Random(3).shuffle(shuffled)
    ordered = [codecs.parse_run_position(p) for p in sorted(codecs.run_position(c, r) for c, r in shuffled)]
    assert ordered == sorted(runs, key=lambda cr: (-cr[0], cr[1]))


@pytest.mark.parametrize(("app", "other"), [("shop", "shop2"), ("a", "a.b"), ("ab", "a")])
def test_an_app_index_prefix_never_covers_another_apps(app: str, other: str) -> None:
    for status in RUN_STATUSES:
        for key in codecs.run_index_keys(status, T0, other, "f", "r1"):
            assert not key.startswith(codecs.run_index_prefix(status, app))
            assert not key.startswith(codecs.run_index_prefix(status, app, "f"))


def test_unknown_status_has_no_index() -> None:
    with pytest.raises(ValueError, match="status"):
        codecs.run_index_prefix("done")


# -- filters and pagination -----------------------------------------------------------------------

def dataset() -> list[RunView]:
    """40 runs: two apps, three functions, every status, several runs per millisecond."""
    rng = random.Random(11)
    out = []
    scopes = [("shop", "checkout"), ("shop", "refund"), ("crm", "sync")]
    for i in range(40):
        app, fn = scopes[i % 3]
        created = T0 + (i // 3) * 1000 + rng.choice([0, 0, 7])  # ties on created_at
        out.append(view(f"run-{rng.randrange(10**6):06d}-{i:02d}", RUN_STATUSES[i % 6], app=app, fn=fn,
                        created=created, skip_reason="rate_limited" if i % 6 == 5 else None))
    return out


def expected(views: list[RunView], *, app: str | None = None, fn: str | None = None,
             statuses: tuple[str, ...] | None = None, since: int | None = None,
             until: int | None = None) -> list[str]:
    keep = [v for v in views
            if (app is None or v.app_id == app) and (fn is None or v.function_id == fn)
            and (statuses is None or v.status in statuses)
            and (since is None or v.created_at >= since) and (until is None or v.created_at < until)]
    return [v.run_id for v in sorted(keep, key=lambda v: (-v.created_at, v.run_id))]


def page_through(store: RunViewStore, limit: int, **filters: object) -> tuple[list[str], int]:
    out: list[str] = []
    after = None
    pages = 0
    while True:
        page = store.list_runs(after=after, limit=limit, **filters)  # type: ignore[arg-type]
        pages += 1
        assert len(page.runs) <= limit
        out.extend(v.run_id for v in page.runs)
        if page.next_after is None:
            return out, pages
        assert pages < 200, "the listing does not end"
        after = page.next_after


FILTERS = [
    pytest.param({}, id="everything"),
    pytest.param({"app_id": "shop"}, id="app"),
    pytest.param({"app_id": "shop", "function_id": "refund"}, id="function"),
    pytest.param({"app_id": "crm", "function_id": "checkout"}, id="function-of-another-app"),
    pytest.param({"app_id": "nope"}, id="unknown-app"),
    pytest.param({"statuses": ("failed",)}, id="status"),
    pytest.param({"statuses": ("queued", "running")}, id="two-statuses"),
    pytest.param({"statuses": ("completed", "failed", "completed")}, id="repeated-status"),
    pytest.param({"app_id": "shop", "statuses": ("skipped", "cancelled")}, id="app-and-statuses"),
    pytest.param({"app_id": "shop", "function_id": "checkout", "statuses": ("queued",)}, id="function-and-status"),
    pytest.param({"since": T0 + 4000}, id="since"),
    pytest.param({"until": T0 + 4000}, id="until"),
    pytest.param({"since": T0 + 2000, "until": T0 + 9000}, id="since-and-until"),
    pytest.param({"since": T0 + 3000, "until": T0 + 3001}, id="one-millisecond"),
    pytest.param({"since": T0 + 3007, "until": T0 + 3008}, id="tied-millisecond"),
    pytest.param({"until": T0}, id="until-before-everything"),
    pytest.param({"since": T0 + 10**7}, id="since-after-everything"),
    pytest.param({"until": 0}, id="until-zero"),
    pytest.param({"app_id": "shop", "statuses": ("running", "failed"), "since": T0 + 1000, "until": T0 + 10_000},
                 id="everything-at-once"),
]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("limit", [1, 2, 3, 7, 500])
def test_pages_concatenate_to_the_filtered_newest_first_list(store: RunViewStore, filters: dict[str, object],
                                                            limit: int) -> None:
    views = dataset()
    store.apply(views, {0: len(views)})
    want = expected(views, app=filters.get("app_id"), fn=filters.get("function_id"),  # type: ignore[arg-type]
                    statuses=filters.get("statuses"), since=filters.get("since"),  # type: ignore[arg-type]
                    until=filters.get("until"))  # type: ignore[arg-type]
    got, pages = page_through(store, limit, **filters)
    assert got == want
    assert len(got) == len(set(got))
    # full pages only, and no empty page at the end: one page per `limit` runs (at least one)
    assert pages == max(1, -(-len(want) // limit))


def test_a_page_returns_summaries_of_the_stored_views(store: RunViewStore) -> None:
    store.apply([view("r1", "failed", created=T0)], {})
    [v] = store.list_runs().runs
    assert (v.run_id, v.status, v.created_at, v.event_ids) == ("r1", "failed", T0, ["ev-r1"])


def test_function_needs_its_app_and_statuses_must_exist(store: RunViewStore) -> None:
    with pytest.raises(ValueError, match="app"):
        store.list_runs(function_id="checkout")
    with pytest.raises(ValueError, match="status"):
        store.list_runs(statuses=["done"])
    with pytest.raises(ValueError, match="limit"):
        store.list_runs(limit=0)


@pytest.mark.parametrize(("limit", "max_examined"), [(10, 3), (1, 1), (5, 5), (50, 7)])
def test_a_scan_stops_after_max_examined_with_a_cursor_and_continues(store: RunViewStore, limit: int,
                                                                     max_examined: int) -> None:
    views = dataset()
    store.apply(views, {})
    got: list[str] = []
    after = None
    while True:
        page = store.list_runs(after=after, limit=limit, max_examined=max_examined)
        assert page.examined <= max_examined and len(page.runs) <= min(limit, max_examined)
        got.extend(v.run_id for v in page.runs)
        if page.next_after is None:
            break
        assert len(got) <= len(views), "the listing does not end"
        after = page.next_after
    assert got == expected(views)


def test_default_scan_bound_is_ten_times_the_limit(store: RunViewStore, kv: KeyValueStore) -> None:
    # index entries whose views changed status (a race with the follower): examined, not returned
    views = [view(f"r{i:02d}", "queued", created=T0 + i) for i in range(30)]
    store.apply(views, {})
    stale = {codecs.run_index_prefix("failed") + codecs.run_position(T0 + 100 + i, f"s{i:02d}"): b"" for i in range(25)}
    kv.write_batch(stale)
    page = store.list_runs(statuses=["failed", "queued"], limit=2)
    assert page.runs == [] and page.examined == 20 and page.next_after is not None
    rest, _ = page_through(store, 2, statuses=("failed", "queued"))
    assert rest == expected(views)


# -- status changes: counters, and never listed twice -------------------------------------------

def counts_of(store: RunViewStore, app: str = "shop", fn: str = "checkout") -> dict[str, int]:
    return store.status_counts(app).get((app, fn), dict.fromkeys(RUN_STATUSES, 0))


LIVES = [
    pytest.param(["queued", "running", "completed"], id="completes"),
    pytest.param(["queued", "running", "running", "failed"], id="fails-after-retries"),
    pytest.param(["queued", "cancelled"], id="cancelled-while-queued"),
    pytest.param(["queued", "skipped"], id="replaced-while-queued"),
    pytest.param(["skipped"], id="skipped-at-once"),
    pytest.param(["running", "queued", "running", "completed"], id="out-of-order-is-still-consistent"),
]


@pytest.mark.parametrize("life", LIVES)
@pytest.mark.parametrize("batched", [False, True], ids=["one-batch-per-change", "all-in-one-batch"])
def test_counters_and_indexes_follow_a_runs_life(store: RunViewStore, kv: KeyValueStore, life: list[str],
                                                 batched: bool) -> None:
    store.apply([view("other", "completed")], {})
    changes = [view("r1", s, skip_reason="singleton_replaced" if s == "skipped" else None) for s in life]
    if batched:
        store.apply(changes, {0: 1})
    else:
        for c in changes:
            store.apply([c], {0: 1})
    final = life[-1]
    want = dict.fromkeys(RUN_STATUSES, 0)
    want["completed"] += 1
    want[final] += 1
    assert counts_of(store) == want
    for status in RUN_STATUSES:  # exactly one index entry per scope, under the final status
        ids = [v.run_id for v in store.list_runs(statuses=[status]).runs]
        fn_ids = [v.run_id for v in store.list_runs(app_id="shop", function_id="checkout", statuses=[status]).runs]
        assert ids.count("r1") == fn_ids.count("r1") == (1 if status == final else 0)
    assert [v.run_id for v in store.list_runs().runs].count("r1") == 1
    index_keys = [k for prefix in (b"ix/", b"ia/", b"if/") for k, _ in kv.scan_prefix(prefix)
                  if k.endswith(b"r1")]
    assert len(index_keys) == 3
    assert store.skip_counts("shop", "checkout") == ({"singleton_replaced": 1} if "skipped" in life else {})


def test_a_view_read_again_after_a_crash_counts_nothing_twice(store: RunViewStore) -> None:
    life = [view("r1", "queued"), view("r1", "running"), view("r2", "skipped", skip_reason="rate_limited")]
    store.apply(life, {0: 3})
    before = (counts_of(store), store.skip_counts("shop", "checkout"))
    store.apply(life, {0: 3})  # the follower re-reads from an older offset
    store.apply([life[1]], {0: 3})
    assert (counts_of(store), store.skip_counts("shop", "checkout")) == before
    assert before[0]["running"] == 1 and before[0]["skipped"] == 1 and before[0]["queued"] == 0


# -- deleting runs at the end of their retention ---------------------------------------------------

def keys_naming(kv: KeyValueStore, run_id: str) -> list[bytes]:
    """Every key of the read model that belongs to one run (view, meta, indexes, event lookup)."""
    return [k for prefix in (b"r/", b"m/", b"ix/", b"ia/", b"if/", b"e/") for k, _ in kv.scan_prefix(prefix)
            if k.endswith(run_id.encode())]


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled", "skipped"])
def test_a_deleted_run_leaves_no_key_and_its_counters_drop(store: RunViewStore, kv: KeyValueStore,
                                                         final: str) -> None:
    reason = "rate_limited" if final == "skipped" else None
    store.apply([view("keep", final, skip_reason=reason), view("gone", "running")], {0: 2})
    store.apply([view("gone", final, skip_reason=reason)], {0: 3})
    assert len(keys_naming(kv, "gone")) == 6  # view, meta, three indexes, one event lookup
    store.apply([], {0: 4}, deleted=["gone"])

    assert keys_naming(kv, "gone") == []
    assert store.run("gone") is None and store.runs_for_event("ev-gone") == []
    assert [v.run_id for v in store.list_runs().runs] == ["keep"]
    want = dict.fromkeys(RUN_STATUSES, 0)
    want[final] = 1
    assert counts_of(store) == want
    assert store.skip_counts("shop", "checkout") == ({"rate_limited": 1} if final == "skipped" else {})
    assert store.next_offset(0) == 4
    assert [v.run_id for v in store.runs_for_event("ev-keep")] == ["keep"]


def test_deleting_a_run_twice_or_one_never_seen_changes_nothing(store: RunViewStore, kv: KeyValueStore) -> None:
    store.apply([view("r1", "completed"), view("r2", "completed")], {0: 2})
    store.apply([], {0: 3}, deleted=["r1"])
    before = (counts_of(store), sorted(k for k, _ in kv.scan_prefix(b"")))
    store.apply([], {0: 4}, deleted=["r1", "never-seen"])  # a tombstone read again, an unknown run
    after = (counts_of(store), sorted(k for k, _ in kv.scan_prefix(b"")))
    assert before[0] == after[0] and before[0]["completed"] == 1
    assert [k for k in before[1] if not k.startswith(b"o/")] == [k for k in after[1] if not k.startswith(b"o/")]


def test_a_run_created_again_after_its_deletion_is_indexed_afresh(store: RunViewStore, kv: KeyValueStore) -> None:
    store.apply([view("r1", "completed", created=T0)], {0: 1})
    store.apply([], {0: 2}, deleted=["r1"])
    store.apply([view("r1", "running", created=T0 + 5)], {0: 3})  # the same run id, started again
    assert [v.run_id for v in store.list_runs(statuses=["running"]).runs] == ["r1"]
    assert store.list_runs(statuses=["completed"]).runs == []
    assert counts_of(store)["running"] == 1 and counts_of(store)["completed"] == 0
    assert len(keys_naming(kv, "r1")) == 6


def test_status_counts_per_function_and_app(store: RunViewStore) -> None:
    views = dataset()
    store.apply(views, {})
    every = store.status_counts()
    assert set(every) == {("shop", "checkout"), ("shop", "refund"), ("crm", "sync")}
    for (app, fn), counts in every.items():
        assert list(counts) == list(RUN_STATUSES)
        for status in RUN_STATUSES:
            assert counts[status] == sum(1 for v in views if (v.app_id, v.function_id, v.status) == (app, fn, status))
    assert set(store.status_counts("crm")) == {("crm", "sync")}
    assert store.status_counts("nope") == {}


@pytest.mark.parametrize("statuses", [None, ("queued", "running"), ("queued", "running", "completed")])
@pytest.mark.parametrize("limit", [1, 3])
def test_runs_changing_status_while_paging_are_never_listed_twice_nor_skipped(
        store: RunViewStore, statuses: tuple[str, ...] | None, limit: int) -> None:
    runs = [view(f"r{i:02d}", "queued", created=T0 + (i // 2)) for i in range(12)]  # pairs share a ms
    store.apply(runs, {})
    rng = random.Random(limit)
    listed: list[str] = []
    after = None
    current = {v.run_id: "queued" for v in runs}
    seen_status: dict[str, set[str]] = {v.run_id: {"queued"} for v in runs}
    while True:
        page = store.list_runs(statuses=statuses, after=after, limit=limit)
        listed.extend(v.run_id for v in page.runs)
        # between pages, some runs move on: queued -> running -> completed
        moved = []
        for run_id in rng.sample(sorted(current), 4):
            nxt = {"queued": "running", "running": "completed", "completed": "completed"}[current[run_id]]
            current[run_id] = nxt
            seen_status[run_id].add(nxt)
            moved.append(view(run_id, nxt, created=T0 + int(run_id[1:]) // 2))  # type: ignore[arg-type]
        store.apply(moved, {})
        if page.next_after is None:
            break
        assert len(listed) <= len(runs), f"listed twice: {listed}"
        after = page.next_after
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    order = [v.run_id for v in sorted(runs, key=lambda v: (-v.created_at, v.run_id))]
    assert listed == [r for r in order if r in listed], "not newest first"
    if statuses is None or "completed" in statuses:
        assert sorted(listed) == sorted(current), "a run was skipped"  # every run matches at every moment
    else:
        # a run whose status stayed in the filter the whole time is listed
        always = [r for r in current if seen_status[r] <= set(statuses)]
        assert set(always) <= set(listed)
    assert counts_of(store) == {s: sum(1 for c in current.values() if c == s) for s in RUN_STATUSES}


# -- the follower's batches stay cheap ----------------------------------------------------------

def test_updates_that_keep_the_status_touch_no_index(store: RunViewStore, kv: KeyValueStore) -> None:
    store.apply([view("r1", "running")], {})
    writes: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    real = kv.write_batch

    def spy(puts: dict[bytes, bytes], deletes: list[bytes] = []) -> None:  # noqa: B006
        writes.append((dict(puts), list(deletes)))
        real(puts, deletes)

    kv.write_batch = spy  # type: ignore[method-assign]
    store.apply([view("r1", "running")], {0: 9})  # a step finished: same status
    [(puts, deletes)] = writes
    assert deletes == []
    assert set(puts) == {codecs.run_key("r1"), codecs.event_run_key("ev-r1", "r1"), codecs.offset_key(0)}
    store.apply([view("r1", "completed")], {0: 10})
    puts, deletes = writes[-1]
    assert len(deletes) == 3 and all(b"running" in k for k in deletes)
    assert sum(1 for k in puts if k[:3] in (b"ix/", b"ia/", b"if/")) == 3


# -- a read model written before the indexes existed -----------------------------------------------

def legacy_write(kv: KeyValueStore, views: list[RunView]) -> None:
    """What the store wrote before the listing indexes: views, event index, skip counters."""
    puts = {}
    for v in views:
        puts[codecs.run_key(v.run_id)] = v.dumps()
        for eid in v.event_ids:
            puts[codecs.event_run_key(eid, v.run_id)] = b""
    puts[codecs.skip_counter_key("shop", "checkout", "rate_limited")] = codecs.encode_offset(7)
    kv.write_batch(puts)


@pytest.mark.parametrize("chunk", [1, 3, 500])
def test_an_older_read_model_is_indexed_once(kv: KeyValueStore, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import sluicegate.state.run_view_store as rvs

    monkeypatch.setattr(rvs, "BACKFILL_CHUNK", chunk)
    views = dataset()
    legacy_write(kv, views)
    kv.write_batch({codecs.run_meta_key("nonexistent"): codecs.encode_run_meta("queued", T0, "x", "y")})
    store = RunViewStore(kv)
    assert store.ensure_indexes() == len(views)
    assert store.ensure_indexes() == 0
    assert page_through(store, 4)[0] == expected(views)
    assert page_through(store, 4, app_id="shop", statuses=("failed",))[0] == expected(
        views, app="shop", statuses=("failed",))
    assert sum(counts_of(store).values()) == sum(1 for v in views if (v.app_id, v.function_id) == ("shop", "checkout"))
    assert store.skip_counts("shop", "checkout") == {"rate_limited": 7}  # counted before: left alone
    # a resumed backfill (meta written for some runs already) indexes only the others
    kv2 = MemoryStore()
    legacy_write(kv2, views)
    half = RunViewStore(kv2)
    half._index_changes(views[:10], puts := {}, set(), counts := {})  # type: ignore[var-annotated]
    half._add_counts(counts, puts)
    kv2.write_batch(puts)
    assert half.ensure_indexes() == len(views) - 10
    assert page_through(half, 5)[0] == expected(views)
    assert half.status_counts() == store.status_counts()


def test_the_first_apply_indexes_an_older_read_model(kv: KeyValueStore) -> None:
    legacy_write(kv, [view("old", "queued", created=T0)])
    store = RunViewStore(kv)
    store.apply([view("old", "completed", created=T0), view("new", "queued", created=T0 + 1)], {})
    assert [v.run_id for v in store.list_runs().runs] == ["new", "old"]
    assert counts_of(store)["completed"] == 1 and counts_of(store)["queued"] == 1


# -- scan_from ----------------------------------------------------------------------------------

def test_scan_from_seeks_within_the_prefix(kv: KeyValueStore) -> None:
    kv.write_batch({k: k for k in (b"a/1", b"a/2", b"a/3", b"b/1", b"a")})
    assert [k for k, _ in scan_from(kv, b"a/2", b"a/")] == [b"a/2", b"a/3"]
    assert [k for k, _ in scan_from(kv, b"a/20", b"a/")] == [b"a/3"]
    assert [k for k, _ in scan_from(kv, b"a/", b"a/")] == [b"a/1", b"a/2", b"a/3"]
    assert list(scan_from(kv, b"a/4", b"a/")) == []


def test_many_runs_in_one_millisecond_page_by_run_id(store: RunViewStore) -> None:
    views = [view(f"r{i:03d}", RUN_STATUSES[i % 6], created=T0) for i in range(60)]
    store.apply(views, {})
    for limit in (1, 7, 60):
        assert page_through(store, limit)[0] == sorted(v.run_id for v in views)
    assert list(itertools.islice(page_through(store, 4, statuses=("failed",))[0], 3)) == ["r003", "r009", "r015"]


def test_a_run_seen_under_two_statuses_at_once_is_listed_once(store: RunViewStore, kv: KeyValueStore) -> None:
    # the indexes of two statuses read at slightly different moments while the run moved
    store.apply([view("r1", "queued", created=T0), view("r2", "queued", created=T0 - 1)], {})
    kv.write_batch({codecs.run_index_prefix("running") + codecs.run_position(T0, "r1"): b""})
    page = store.list_runs(statuses=["queued", "running"])
    assert [v.run_id for v in page.runs] == ["r1", "r2"] and page.examined == 3
