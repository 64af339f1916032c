"""The listing routes (``GET /v1/runs``, ``/v1/functions``, ``/v1/events``) without a broker:
FastAPI's TestClient on an app whose lifespan does not run, with a real run-view store in
memory and stand-ins for the registry, the stats view and the events reader; the events
reader itself against a fake consumer; and the CLI's ``runs``/``events``/``functions``
(formatting, and against the routes served by uvicorn)."""

from __future__ import annotations

import base64
import json
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import sluicegate.ingest.listing_api as listing
from sluicegate import cli
from sluicegate.ingest.http_api import create_api
from sluicegate.ingest.listing_api import EventsReader, decode_cursor, encode_cursor
from sluicegate.local_broker import free_port
from sluicegate.partitioning import partition_for
from sluicegate.settings import Settings
from sluicegate.state.run_view_store import RUN_STATUSES, RunViewStore
from sluicegate.state.stores import MemoryStore
from sluicegate.triggers import TriggerCron, TriggerEvent
from sluicegate.wire import ErrorInfo, EventRecord, FunctionDefinition, RunView, StepView
from api_fakes import run_cli

SETTINGS = Settings(topic_prefix="unit", partitions=4)
T0 = 1_738_324_800_000  # 2025-01-31T12:00:00Z


class Runs:
    def __init__(self) -> None:
        self.store = RunViewStore(MemoryStore())


class Items:
    def __init__(self, items: dict[str, object] | None = None) -> None:
        self.items = items or {}


class FakeEventsReader:
    def __init__(self, events: list[EventRecord] | None = None, complete: bool = True) -> None:
        self.events = events or []
        self.complete = complete
        self.calls: list[dict[str, Any]] = []

    def read(self, **kwargs: Any) -> tuple[list[EventRecord], bool]:
        self.calls.append(kwargs)
        return self.events[:kwargs["limit"]], self.complete


def run(run_id: str, status: str = "completed", *, app: str = "shop", fn: str = "checkout",
        created: int = T0, **extra: Any) -> RunView:
    return RunView(run_id=run_id, app_id=app, function_id=fn, status=status,  # type: ignore[arg-type]
                   event_ids=[f"ev-{run_id}"], created_at=created, **extra)


def definition(app: str, fn: str, *events: str, crons: tuple[str, ...] = ()) -> FunctionDefinition:
    return FunctionDefinition(app_id=app, function_id=fn, name=fn.title(),
                              triggers=[TriggerEvent(event=e) for e in events],
                              crons=[TriggerCron(cron=c) for c in crons], retries=4, version="v1")


def event(i: int, name: str = "order/created", app: str = "shop") -> EventRecord:
    return EventRecord(app_id=app, id=f"e{i}", name=name, data={"n": i}, ts=T0 + i, received_at=T0 + i)


def make_api(token: str | None = None) -> tuple[Any, dict[str, Any]]:
    app = create_api(SETTINGS.model_copy(update={"api_token": token}))
    state = app.state.sluicegate
    state["runs"] = Runs()
    state["stats"] = Items()
    state["registry"] = Items()
    state["events_reader"] = FakeEventsReader()
    return app, state


@pytest.fixture
def api() -> Any:
    app, state = make_api()
    client = TestClient(app)  # not as a context manager: the lifespan (broker) does not run
    client.state = state  # type: ignore[attr-defined]
    return client


def store_of(api: Any) -> RunViewStore:
    return api.state["runs"].store  # type: ignore[no-any-return]


def error_of(r: Any, field: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    assert err["code"] == "invalid_input" and err["message"].startswith(f"{field}:"), err
    return err  # type: ignore[no-any-return]


# -- GET /v1/runs --------------------------------------------------------------------------------

def test_runs_are_listed_newest_first_as_summaries(api: Any) -> None:
    big = run("r-old", "failed", created=T0, started_at=T0 + 5, ended_at=T0 + 1005,
              error=ErrorInfo(name="StepError", message="card declined", stack="x" * 1000),
              steps=[StepView(hash="h", id="s", status="failed", output={"big": "y" * 1000})])
    store_of(api).apply([big, run("r-new", "queued", created=T0 + 1, waiting="concurrency"),
                         run("r-skip", "skipped", created=T0 - 1, skip_reason="rate_limited", ended_at=T0)], {})
    r = api.get("/v1/runs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["run_id"] for x in body["data"]] == ["r-new", "r-old", "r-skip"]
    assert "next_cursor" not in body or body["next_cursor"] is None
    old = body["data"][1]
    assert old["duration_ms"] == 1000 and old["error"] == {"name": "StepError", "message": "card declined"}
    assert "steps" not in old and "output" not in old
    assert body["data"][0]["waiting"] == "concurrency" and "duration_ms" not in body["data"][0]
    assert body["data"][2]["skip_reason"] == "rate_limited" and body["data"][2]["duration_ms"] == 1


def test_runs_follow_cursors_to_the_end(api: Any) -> None:
    views = [run(f"r{i:02d}", RUN_STATUSES[i % 6], app="shop" if i % 2 else "crm", fn="a" if i % 3 else "b",
                 created=T0 + i // 2) for i in range(30)]
    store_of(api).apply(views, {})
    for params, want in [
        ({}, views),
        ({"app": "shop"}, [v for v in views if v.app_id == "shop"]),
        ({"app": "shop", "function": "a"}, [v for v in views if (v.app_id, v.function_id) == ("shop", "a")]),
        ({"function": "shop/a"}, [v for v in views if (v.app_id, v.function_id) == ("shop", "a")]),
        ({"app": "shop", "function": "shop/a"}, [v for v in views if (v.app_id, v.function_id) == ("shop", "a")]),
        ({"status": "failed,queued"}, [v for v in views if v.status in ("failed", "queued")]),
        ({"status": " Failed , queued,"}, [v for v in views if v.status in ("failed", "queued")]),
        ({"since": str(T0 + 3), "until": "2025-01-31T12:00:00.010Z"}, [v for v in views if T0 + 3 <= v.created_at < T0 + 10]),
    ]:
        got: list[str] = []
        cursor = None
        while True:
            r = api.get("/v1/runs", params={**params, "limit": 4, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, (params, r.text)
            page = r.json()
            assert len(page["data"]) <= 4
            got.extend(x["run_id"] for x in page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert got == [v.run_id for v in sorted(want, key=lambda v: (-v.created_at, v.run_id))], params


def test_runs_default_limit_is_50(api: Any) -> None:
    store_of(api).apply([run(f"r{i:03d}", created=T0 + i) for i in range(60)], {})
    page = api.get("/v1/runs").json()
    assert len(page["data"]) == 50 and page["next_cursor"]
    rest = api.get("/v1/runs", params={"cursor": page["next_cursor"]}).json()
    assert len(rest["data"]) == 10 and rest.get("next_cursor") is None


@pytest.mark.parametrize(("limit", "ok", "bound"), [
    ("0", False, 1), ("-3", False, 1), ("1", True, None), ("500", True, None), ("501", False, 500),
    ("100000", False, 500), ("abc", False, None), ("2.5", False, None), ("", False, None)])
def test_runs_limit_bounds(api: Any, limit: str, ok: bool, bound: int | None) -> None:
    store_of(api).apply([run(f"r{i}", created=T0 + i) for i in range(3)], {})
    r = api.get("/v1/runs", params={"limit": limit})
    if ok:
        assert r.status_code == 200 and len(r.json()["data"]) == min(3, int(limit))
    else:
        err = error_of(r, "limit")
        assert err["limit"] == bound


@pytest.mark.parametrize(("params", "field", "says"), [
    ({"status": "done"}, "status", "'done' is not a run status"),
    ({"status": "failed,done"}, "status", "queued, running, completed, failed, cancelled, skipped"),
    ({"status": "FAILED;queued"}, "status", "not a run status"),
    ({"function": "checkout"}, "function", "needs app"),
    ({"app": "crm", "function": "shop/checkout"}, "function", "not in app 'crm'"),
    ({"function": "shop/bad id"}, "function", "not a valid id"),
    ({"function": "/checkout"}, "function", "1 to 128"),
    ({"app": "bad app"}, "app", "not a valid id"),
    ({"app": "x" * 129}, "app", "1 to 128"),
    ({"since": "yesterday"}, "since", "RFC 3339"),
    ({"until": "2025-01-31T12:00:00"}, "until", "no UTC offset"),
    ({"since": str(T0), "until": str(T0)}, "since", "must be before until"),
    ({"since": "-5"}, "since", "RFC 3339"),
])
def test_runs_bad_parameters_name_the_field(api: Any, params: dict[str, str], field: str, says: str) -> None:
    err = error_of(api.get("/v1/runs", params=params), field)
    assert says in err["message"], err


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "garbage!", "%%%", _b64(b"not json"), _b64(b"[1, 2]"), _b64(b'{"v": 2, "c": 1, "r": "x"}'),
    _b64(b'{"v": 1, "c": -1, "r": "x"}'), _b64(b'{"v": 1, "c": "1", "r": "x"}'), _b64(b'{"v": 1, "c": 1}'),
    _b64(b'{"v": 1, "c": 1, "r": ""}'), _b64(b'{"v": 1, "c": true, "r": "x"}'), "A" * 2000,
    _b64(b'{"v": 1, "c": 1, "r": "a\\u0000b"}'),
])
def test_runs_bad_cursor_is_400(api: Any, cursor: str) -> None:
    err = error_of(api.get("/v1/runs", params={"cursor": cursor}), "cursor")
    assert "next_cursor" in err["message"]


@pytest.mark.parametrize("position", [(0, "r"), (T0, "shop.checkout.01JH8W"), (2**62, "é/ü")])
def test_cursor_round_trip(position: tuple[int, str]) -> None:
    cursor = encode_cursor(position)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == position


# -- GET /v1/functions ----------------------------------------------------------------------------

def test_functions_with_counts_and_queue_figures(api: Any) -> None:
    api.state["registry"].items.update({
        "shop/checkout": definition("shop", "checkout", "order/created"),
        "shop/nightly": definition("shop", "nightly", "shop/*", crons=("0 3 * * *",)),
        "crm/sync": definition("crm", "sync", "crm/contact.changed"),
        "broken": None,  # an undecodable record
    })
    api.state["stats"].items.update({
        "shop/checkout": {"app_id": "shop", "function_id": "checkout", "backlog": 4, "in_flight": 2,
                          "waiting": {"concurrency": 4}, "at": T0},
        "cancellation/x": {"cancelled": 1}})
    store_of(api).apply([run("a", "queued"), run("b", "running"), run("c", "completed"), run("d", "completed"),
                         run("e", "failed", fn="gone"), run("f", "queued", app="crm", fn="sync")], {})
    store_of(api).apply([run("a", "running")], {})
    r = api.get("/v1/functions")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [(f["app_id"], f["function_id"]) for f in data] == [
        ("crm", "sync"), ("shop", "checkout"), ("shop", "gone"), ("shop", "nightly")]
    crm, checkout, gone, nightly = data
    assert checkout["runs"] == {"queued": 0, "running": 2, "completed": 2, "failed": 0, "cancelled": 0, "skipped": 0}
    assert (checkout["backlog"], checkout["in_flight"], checkout["waiting"], checkout["stats_at"]) == (
        4, 2, {"concurrency": 4}, T0)
    assert checkout["triggers"] == ["order/created"] and checkout["registered"] is True
    assert checkout["name"] == "Checkout" and checkout["version"] == "v1"
    assert nightly["runs"] == dict.fromkeys(RUN_STATUSES, 0) and nightly["crons"] == ["0 3 * * *"]
    assert nightly["backlog"] == 0 and nightly["stats_at"] == 0
    assert gone["registered"] is False and gone["runs"]["failed"] == 1
    assert crm["runs"]["queued"] == 1
    only = api.get("/v1/functions", params={"app": "crm"}).json()["data"]
    assert [(f["app_id"], f["function_id"]) for f in only] == [("crm", "sync")]
    assert api.get("/v1/functions", params={"app": "nobody"}).json()["data"] == []
    error_of(api.get("/v1/functions", params={"app": "no way"}), "app")


def test_functions_without_a_registry_view_list_those_with_runs(api: Any) -> None:
    del api.state["registry"]
    store_of(api).apply([run("a", "failed")], {})
    [only] = api.get("/v1/functions").json()["data"]
    assert (only["function_id"], only["registered"], only["runs"]["failed"]) == ("checkout", False, 1)


# -- GET /v1/events -------------------------------------------------------------------------------

def test_events_pass_their_filters_to_the_reader(api: Any) -> None:
    reader = api.state["events_reader"]
    reader.events = [event(i) for i in range(5)]
    r = api.get("/v1/events", params={"app": "shop", "name": "order/created", "since": "2025-01-31T12:00:00Z",
                                      "limit": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"data": [json.loads(event(i).dumps()) for i in range(3)], "order": "oldest_first",
                        "complete": True}
    assert reader.calls == [{"app_id": "shop", "name": "order/created", "since_ms": T0, "limit": 3}]
    api.get("/v1/events")
    assert reader.calls[-1] == {"app_id": None, "name": None, "since_ms": None, "limit": 50}
    reader.complete = False
    assert api.get("/v1/events").json()["complete"] is False


@pytest.mark.parametrize(("limit", "ok", "bound"), [
    ("0", False, 1), ("1", True, None), ("1000", True, None), ("1001", False, 1000), ("x", False, None)])
def test_events_limit_bounds(api: Any, limit: str, ok: bool, bound: int | None) -> None:
    r = api.get("/v1/events", params={"limit": limit})
    if ok:
        assert r.status_code == 200 and api.state["events_reader"].calls[-1]["limit"] == int(limit)
    else:
        assert error_of(r, "limit")["limit"] == bound
        assert api.state["events_reader"].calls == []


@pytest.mark.parametrize(("params", "field"), [
    ({"app": "a b"}, "app"), ({"since": "soon"}, "since"), ({"name": ""}, "name")])
def test_events_bad_parameters_name_the_field(api: Any, params: dict[str, str], field: str) -> None:
    error_of(api.get("/v1/events", params=params), field)
    assert api.state["events_reader"].calls == []


# -- auth and OpenAPI ---------------------------------------------------------------------------

def test_the_listing_routes_need_the_api_token_when_one_is_set() -> None:
    app, state = make_api(token="t0ken")
    client = TestClient(app)
    for path in ("/v1/runs", "/v1/functions", "/v1/events", "/v1/runs?limit=0"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/runs", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert state["events_reader"].calls == []


def test_openapi_documents_the_listing_routes() -> None:
    spec = create_api(SETTINGS).openapi()
    for path, params in [("/v1/runs", {"app", "function", "status", "since", "until", "cursor", "limit"}),
                         ("/v1/functions", {"app"}), ("/v1/events", {"app", "name", "since", "limit"})]:
        op = spec["paths"][path]["get"]
        assert op["summary"] and op["description"]
        assert {"200", "400"} <= set(op["responses"]) and "422" not in op["responses"]
        documented = {p["name"]: p for p in op["parameters"] if p["name"] != "authorization"}
        assert set(documented) == params
        for name, p in documented.items():
            assert p["schema"].get("description") or p.get("description"), (path, name)
    limit = {p["name"]: p for p in spec["paths"]["/v1/runs"]["get"]["parameters"]}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 500, 50)
    events_limit = {p["name"]: p for p in spec["paths"]["/v1/events"]["get"]["parameters"]}["limit"]["schema"]
    assert (events_limit["minimum"], events_limit["maximum"]) == (1, 1000)
    status = {p["name"]: p for p in spec["paths"]["/v1/runs"]["get"]["parameters"]}["status"]["schema"]
    assert status["examples"]
    for name in ("RunList", "FunctionList", "EventList"):
        assert spec["components"]["schemas"][name]["examples"], name


# -- the events reader against a fake consumer --------------------------------------------------------

class FakeMessage:
    def __init__(self, partition: int, offset: int, ts: int, value: bytes | None, eof: bool = False) -> None:
        self._p, self._o, self._ts, self._v, self._eof = partition, offset, ts, value, eof

    def error(self) -> Any:
        if not self._eof:
            return None

        class Eof:
            def code(self) -> int:
                return listing.KafkaError._PARTITION_EOF
        return Eof()

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def value(self) -> bytes | None:
        return self._v


class FakeConsumer:
    """Partitions of (timestamp, value) records; ``low`` offsets were deleted by retention."""

    log: dict[int, list[tuple[int, bytes | None]]] = {}
    low: dict[int, int] = {}
    delay_s = 0.0
    assigned_log: list[tuple[int, int]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.pos: tuple[int, int] | None = None

    def list_topics(self, topic: str, timeout: float) -> Any:
        class Meta:
            pass
        md = Meta()
        md.topics = {topic: Meta()}  # type: ignore[attr-defined]
        md.topics[topic].partitions = {p: None for p in self.log}  # type: ignore[attr-defined]
        return md

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return self.low.get(tp.partition, 0), len(self.log[tp.partition])

    def offsets_for_times(self, tps: list[Any], timeout: float) -> list[Any]:
        out = []
        for tp in tps:
            recs = self.log[tp.partition]
            first = next((o for o, (ts, _) in enumerate(recs) if ts >= tp.offset and o >= self.low.get(tp.partition, 0)),
                         -1)
            out.append(listing.TopicPartition(tp.topic, tp.partition, first))
        return out

    def assign(self, tps: list[Any]) -> None:
        [tp] = tps
        self.pos = (tp.partition, tp.offset)
        self.assigned_log.append(self.pos)

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if self.delay_s:
            time.sleep(self.delay_s)
        assert self.pos is not None
        p, o = self.pos
        recs = self.log[p]
        batch = [FakeMessage(p, i, recs[i][0], recs[i][1]) for i in range(o, min(len(recs), o + 3))]
        if not batch:
            return [FakeMessage(p, len(recs), 0, None, eof=True)]
        self.pos = (p, o + len(batch))
        return batch

    def close(self) -> None:
        pass


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    FakeConsumer.log, FakeConsumer.low, FakeConsumer.delay_s, FakeConsumer.assigned_log = {}, {}, 0.0, []
    monkeypatch.setattr(listing, "Consumer", FakeConsumer)
    return FakeConsumer


def fill(kafka: type[FakeConsumer], events: list[EventRecord], controls_every: int = 0) -> None:
    kafka.log = {p: [] for p in range(SETTINGS.partitions)}
    for i, e in enumerate(events):
        p = partition_for(e.app_id, SETTINGS.partitions)
        kafka.log[p].append((e.received_at, e.dumps()))
        if controls_every and i % controls_every == 0:
            kafka.log[p].append((e.received_at, b'{"control":"wait_add","waiter":{"name":"order/created"}}'))


def names(events: list[EventRecord]) -> list[str]:
    return [e.id for e in events]


def test_reader_tail_is_the_newest_matching_events_oldest_first(kafka: type[FakeConsumer]) -> None:
    evs = [event(i, name="a" if i % 4 else "b", app="shop" if i % 3 else "crm") for i in range(2000)]
    fill(kafka, evs, controls_every=5)
    reader = EventsReader(SETTINGS)
    got, complete = reader.read(app_id="shop", name="b", since_ms=None, limit=7)
    want = [e.id for e in evs if e.app_id == "shop" and e.name == "b"][-7:]
    assert complete and names(got) == want
    # only the app's partition was read
    assert {p for p, _ in kafka.assigned_log} == {partition_for("shop", SETTINGS.partitions)}
    got, _ = reader.read(app_id=None, name=None, since_ms=None, limit=5)
    assert names(got) == [e.id for e in evs[-5:]]


def test_reader_since_is_the_first_matching_events_from_there(kafka: type[FakeConsumer]) -> None:
    evs = [event(i, name="a" if i % 2 else "b", app=("shop", "crm", "ops")[i % 3]) for i in range(300)]
    fill(kafka, evs, controls_every=3)
    reader = EventsReader(SETTINGS)
    got, complete = reader.read(app_id=None, name="a", since_ms=T0 + 100, limit=10)
    assert complete and names(got) == [e.id for e in evs if e.name == "a" and e.received_at >= T0 + 100][:10]
    got, _ = reader.read(app_id="crm", name=None, since_ms=T0 + 290, limit=50)
    assert names(got) == [e.id for e in evs if e.app_id == "crm" and e.received_at >= T0 + 290]
    assert reader.read(app_id="crm", name=None, since_ms=T0 + 10**6, limit=50) == ([], True)


def test_reader_skips_control_and_undecodable_records_and_respects_retention(kafka: type[FakeConsumer]) -> None:
    evs = [event(i) for i in range(10)]
    fill(kafka, evs, controls_every=1)
    p = partition_for("shop", SETTINGS.partitions)
    kafka.log[p].append((T0 + 50, b"not json"))
    kafka.log[p].append((T0 + 51, None))
    kafka.low = {p: 4}  # the first 4 records are gone
    got, complete = EventsReader(SETTINGS).read(app_id="shop", name=None, since_ms=None, limit=100)
    assert complete and names(got) == [e.id for e in evs[2:]]
    got, _ = EventsReader(SETTINGS).read(app_id="shop", name=None, since_ms=0, limit=100)
    assert names(got) == [e.id for e in evs[2:]]


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "tab\there", "ünïcode/évent", "a"])
def test_reader_matches_names_exactly_however_they_are_written(kafka: type[FakeConsumer], name: str) -> None:
    evs = [event(0, name=name), event(1, name=name + "x"), event(2, name="x" + name), event(3, name=name)]
    fill(kafka, evs)
    got, _ = EventsReader(SETTINGS).read(app_id="shop", name=name, since_ms=None, limit=10)
    assert names(got) == ["e0", "e3"]


def test_reader_stops_at_its_time_budget(kafka: type[FakeConsumer]) -> None:
    fill(kafka, [event(i, name="common") for i in range(500)])
    kafka.delay_s = 0.01
    started = time.monotonic()
    got, complete = EventsReader(SETTINGS, budget_s=0.3).read(app_id="shop", name="rare", since_ms=None, limit=5)
    assert got == [] and complete is False
    assert time.monotonic() - started < 2


# -- the CLI: formatting ------------------------------------------------------------------------------

@pytest.mark.parametrize(("ms", "text"), [
    (0, "0ms"), (999, "999ms"), (1000, "1.0s"), (4250, "4.2s"), (59_999, "60.0s"), (60_000, "1m00s"),
    (184_000, "3m04s"), (3_600_000, "1h00m"), (7_500_000, "2h05m"), (86_400_000, "1d00h"), (356_400_000, "4d03h")])
def test_durations(ms: int, text: str) -> None:
    assert cli._duration(ms) == text


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("now", T0), ("30m", T0 - 1_800_000), ("2h", T0 - 7_200_000), ("7d", T0 - 7 * 86_400_000),
    ("1.5h", T0 - 5_400_000), ("90s", T0 - 90_000), ("250ms", T0 - 250), ("1w", T0 - 604_800_000),
    (str(T0), T0), ("2025-01-31T12:00:00Z", "2025-01-31T12:00:00Z")])
def test_cli_times(value: str | None, expected: object) -> None:
    assert cli._listing_time(value, now_ms=T0) == expected


RUNS = [
    {"run_id": "01JH8W3ZP4QK6T4X2M7B9C0DEF", "app_id": "shop", "function_id": "checkout", "status": "completed",
     "created_at": T0, "started_at": T0 + 10, "ended_at": T0 + 4260, "duration_ms": 4250},
    {"run_id": "r2", "app_id": "shop", "function_id": "refund", "status": "running", "created_at": T0 + 1000,
     "started_at": T0 + 1000},
    {"run_id": "r3", "app_id": "crm", "function_id": "sync", "status": "queued", "created_at": T0 + 2000,
     "waiting": "concurrency"},
    {"run_id": "r4", "app_id": "crm", "function_id": "sync", "status": "skipped", "created_at": T0 + 3000,
     "ended_at": T0 + 3000, "duration_ms": 0, "skip_reason": "rate_limited"},
]


def test_runs_table() -> None:
    lines, widths = cli.format_runs(RUNS, now_ms=T0 + 61_000)
    assert lines == [
        "RUN ID                      FUNCTION       STATUS                  CREATED               DURATION",
        "01JH8W3ZP4QK6T4X2M7B9C0DEF  shop/checkout  completed               2025-01-31 12:00:00Z      4.2s",
        "r2                          shop/refund    running                 2025-01-31 12:00:01Z    1m00s+",
        "r3                          crm/sync       queued (concurrency)    2025-01-31 12:00:02Z         -",
        "r4                          crm/sync       skipped (rate_limited)  2025-01-31 12:00:03Z       0ms",
    ]
    # columns line up: every row has its CREATED at the header's column
    col = lines[0].index("CREATED")
    assert all(line[col:col + 10] == "2025-01-31" for line in lines[1:])
    # a further page keeps the widths and prints no header
    more, widths2 = cli.format_runs([{**RUNS[1], "run_id": "x"}], now_ms=T0 + 61_000, widths=widths, header=False)
    assert widths2 == widths and len(more) == 1 and more[0].index("2025") == col
    assert cli.format_runs([], now_ms=T0, header=False) == ([], [])


def test_functions_and_events_tables() -> None:
    lines = cli.format_functions([
        {"app_id": "shop", "function_id": "checkout", "triggers": ["order/created"], "crons": ["0 3 * * *"],
         "runs": {"queued": 3, "running": 8, "completed": 1204, "failed": 7, "cancelled": 1, "skipped": 0},
         "backlog": 3, "in_flight": 8},
        {"app_id": "shop", "function_id": "gone", "registered": False, "triggers": [], "runs": {"failed": 2}}])
    assert lines[0].split() == ["FUNCTION", "TRIGGERS", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
                                "SKIPPED", "BACKLOG", "IN", "FLIGHT"]
    assert lines[1].startswith("shop/checkout") and "order/created, cron 0 3 * * *" in lines[1]
    assert lines[1].split()[-8:] == ["3", "8", "1204", "7", "1", "0", "3", "8"]
    assert lines[2].startswith("shop/gone (unregistered)") and lines[2].split()[-8:] == [
        "0", "0", "0", "2", "0", "0", "0", "0"]
    assert lines[1].index("1204") + 4 == lines[0].index("COMPLETED") + len("COMPLETED")  # numbers right-aligned
    ev = cli.format_events([json.loads(event(1).dumps()),
                            {**json.loads(event(2).dumps()), "data": {"long": "z" * 100}}])
    assert ev[0].split() == ["RECEIVED", "EVENT", "ID", "APP", "NAME", "DATA"]
    assert ev[1].split() == ["2025-01-31", "12:00:00Z", "e1", "shop", "order/created", '{"n":1}']
    assert ev[2].endswith("...") and len(ev[2].split()[-1]) == 60


# -- the CLI against the routes served by uvicorn -----------------------------------------------------

@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("SLUICEGATE_API_URL", "SLUICEGATE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    app, state = make_api(token="cli-token")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("SLUICEGATE_API_TOKEN", "cli-token")
    monkeypatch.setenv("SLUICEGATE_API_URL", f"http://127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(5)


def test_cli_runs_one_page_then_all(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = served
    state["runs"].store.apply([run(f"r{i:02d}", "failed" if i % 2 else "completed", created=T0 + i)
                               for i in range(7)], {})
    code, out, err = run_cli(["runs", "--limit", "2"], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["RUN", "r06", "r05"]
    assert "--cursor" in err and "--all" in err
    cursor = err.split("--cursor ")[1].split(",")[0]
    code, out, err = run_cli(["runs", "--limit", "2", "--cursor", cursor], capsys)
    assert [line.split()[0] for line in out.splitlines()] == ["RUN", "r04", "r03"]
    code, out, err = run_cli(["runs", "--limit", "2", "--all", "--function", "shop/checkout", "--status", "failed"],
                             capsys)
    assert code == 0 and err == ""
    assert [line.split()[0] for line in out.splitlines()] == ["RUN", "r05", "r03", "r01"]
    code, out, _ = run_cli(["runs", "--all", "--json", "--limit", "3", "--since", str(T0 + 5)], capsys)
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == ["r06", "r05"]
    code, out, _ = run_cli(["runs", "--app", "nobody"], capsys)
    assert code == 0 and out.splitlines() == ["  ".join(cli.RUN_HEADERS)]


def test_cli_runs_show_and_errors(served: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = served
    state["runs"].store.apply([run("r1", "completed", output={"ok": True})], {})
    code, out, _ = run_cli(["runs", "show", "r1"], capsys)
    assert code == 0 and json.loads(out)["output"] == {"ok": True}
    code, _, err = run_cli(["runs", "show", "nope"], capsys)
    assert code == 1 and "no run 'nope'" in err and "404" in err
    code, _, err = run_cli(["runs", "--status", "done"], capsys)
    assert code == 1 and err.startswith("sluicegate runs: status:") and "400" in err
    code, _, err = run_cli(["runs", "--limit", "501"], capsys)
    assert code == 1 and "limit" in err
    code, _, err = run_cli(["runs", "show"], capsys)
    assert code == 1 and "runs show RUN_ID" in err
    code, _, err = run_cli(["runs", "show", "r1", "--status", "failed"], capsys)
    assert code == 1 and "--status" in err


def test_cli_functions_and_events(served: Any, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = served
    state["registry"].items["shop/checkout"] = definition("shop", "checkout", "order/created")
    state["runs"].store.apply([run("r1", "failed")], {})
    code, out, _ = run_cli(["functions"], capsys)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["shop/checkout", "order/created"]
    assert out.splitlines()[1].split()[2:] == ["0", "0", "0", "1", "0", "0", "0", "0"]
    code, out, _ = run_cli(["functions", "--app", "crm", "--json"], capsys)
    assert code == 0 and out == ""
    state["events_reader"].events = [event(1), event(2)]
    state["events_reader"].complete = False
    code, out, err = run_cli(["events", "--app", "shop", "--name", "order/created", "--since", "1h", "--limit", "5"],
                             capsys)
    assert code == 0 and [line.split()[2] for line in out.splitlines()[1:]] == ["e1", "e2"]
    assert "reading stopped" in err
    call = state["events_reader"].calls[-1]
    assert (call["app_id"], call["name"], call["limit"]) == ("shop", "order/created", 5)
    assert abs(call["since_ms"] - (time.time() * 1000 - 3_600_000)) < 60_000
    monkeypatch.setenv("SLUICEGATE_API_TOKEN", "wrong")
    code, _, err = run_cli(["functions"], capsys)
    assert code == 1 and "401" in err


def test_cli_says_when_the_api_cannot_be_reached(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["runs", "--url", f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 1 and "cannot reach the API" in err
