"""The cancellation routes of the runs API without a broker: FastAPI's TestClient on an app
whose lifespan does not run; stand-ins for the producer, the run views and the stats view
are put in ``app.state.sluicegate``."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from sluicegate.errors import InvalidInput
from sluicegate.ingest.cancellations import (CancellationLog, accepted, parse_time, stats_key,
                                             validate_cancellation)
from sluicegate.ingest.http_api import create_api
from sluicegate.partitioning import function_key, partition_for
from sluicegate.settings import Settings
from sluicegate.wire import RunView, command_adapter
from api_fakes import FakeStats

SETTINGS = Settings(topic_prefix="unit", partitions=4)
T0 = 1_738_324_800_000  # 2025-01-31T12:00:00Z


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, int]] = []

    async def send_many(self, topic: str, records: list[tuple[str, bytes]], partitions: int,
                        timeout: float = 30.0) -> None:
        for key, value in records:
            self.sent.append((topic, key, value, partition_for(key, partitions)))


class FakeStore:
    def __init__(self, views: list[RunView]) -> None:
        self.views = {v.run_id: v for v in views}

    def run(self, run_id: str) -> RunView | None:
        return self.views.get(run_id)


class FakeRuns:
    def __init__(self, views: list[RunView]) -> None:
        self.store = FakeStore(views)


def view(run_id: str, status: str) -> RunView:
    return RunView(run_id=run_id, app_id="shop", function_id="checkout", status=status,  # type: ignore[arg-type]
                   event_ids=["e1"], created_at=T0)


@pytest.fixture
def api() -> Any:
    app = create_api(SETTINGS)
    state = app.state.sluicegate
    state["producer"] = FakeProducer()
    state["runs"] = FakeRuns([view("r-queued", "queued"), view("r-running", "running"),
                              *(view(f"r-{s}", s) for s in ("completed", "failed", "cancelled", "skipped"))])
    state["stats"] = FakeStats()
    client = TestClient(app)  # not as a context manager: the lifespan (broker) does not run
    client.state = state  # type: ignore[attr-defined]
    return client


# -- DELETE /v1/runs/{run_id} -----------------------------------------------------------------

def test_delete_unknown_run_is_404_and_produces_nothing(api: Any) -> None:
    r = api.delete("/v1/runs/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and "nope" in r.json()["error"]["message"]
    assert api.state["producer"].sent == []


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "skipped"])
def test_delete_ended_run_is_409_naming_its_status(api: Any, status: str) -> None:
    r = api.delete(f"/v1/runs/r-{status}")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "conflict" and err["status"] == status and status in err["message"]
    assert api.state["producer"].sent == []


@pytest.mark.parametrize("run_id", ["r-queued", "r-running"])
def test_delete_live_run_produces_cancel_run_to_the_functions_partition(api: Any, run_id: str) -> None:
    for _ in range(2):  # repeated calls: the same answer, a harmless second command
        r = api.delete(f"/v1/runs/{run_id}")
        assert r.status_code == 202, r.text
        assert r.json() == {"run_id": run_id, "status": "cancelling"}
    sent = api.state["producer"].sent
    assert len(sent) == 2
    topic, key, value, partition = sent[0]
    assert topic == SETTINGS.commands_topic == "unit.commands"
    assert key == function_key("shop", "checkout")
    assert partition == partition_for(key, SETTINGS.partitions)
    cmd = command_adapter.validate_json(value)
    assert cmd.kind == "cancel"
    assert (cmd.app_id, cmd.function_id, cmd.run_id, cmd.by, cmd.reason) == (
        "shop", "checkout", run_id, "api", "cancelled by API")


# -- POST /v1/cancellations: validation ----------------------------------------------------------

GOOD = {"app_id": "shop", "function_id": "checkout", "started_before": T0}

BAD = [
    # (body, field, code)
    pytest.param({**GOOD, "app_id": "bad id"}, "app_id", "invalid_input", id="app-id-space"),
    pytest.param({**GOOD, "app_id": "-lead"}, "app_id", "invalid_input", id="app-id-leading-dash"),
    pytest.param({**GOOD, "app_id": "a/b"}, "app_id", "invalid_input", id="app-id-slash"),
    pytest.param({**GOOD, "app_id": "x" * 129}, "app_id", "invalid_input", id="app-id-too-long"),
    pytest.param({**GOOD, "app_id": ""}, "app_id", "invalid_input", id="app-id-empty"),
    pytest.param({**GOOD, "app_id": 7}, "app_id", "invalid_input", id="app-id-number"),
    pytest.param({k: v for k, v in GOOD.items() if k != "app_id"}, "app_id", "invalid_input", id="app-id-missing"),
    pytest.param({**GOOD, "function_id": "fn!"}, "function_id", "invalid_input", id="function-id-bang"),
    pytest.param({k: v for k, v in GOOD.items() if k != "function_id"}, "function_id", "invalid_input",
                 id="function-id-missing"),
    pytest.param({"app_id": "shop", "function_id": "checkout"}, "started_before", "invalid_input",
                 id="started-before-missing"),
    pytest.param({**GOOD, "started_before": None}, "started_before", "invalid_input", id="started-before-null"),
    pytest.param({**GOOD, "started_before": "yesterday"}, "started_before", "invalid_input",
                 id="started-before-not-a-date"),
    pytest.param({**GOOD, "started_before": "2025-01-31T12:00:00"}, "started_before", "invalid_input",
                 id="started-before-no-offset"),
    pytest.param({**GOOD, "started_before": -1}, "started_before", "invalid_input", id="started-before-negative"),
    pytest.param({**GOOD, "started_before": 1.5}, "started_before", "invalid_input", id="started-before-fraction"),
    pytest.param({**GOOD, "started_before": True}, "started_before", "invalid_input", id="started-before-bool"),
    pytest.param({**GOOD, "started_before": [T0]}, "started_before", "invalid_input", id="started-before-list"),
    pytest.param({**GOOD, "started_after": T0 + 1}, "started_after", "invalid_input", id="range-reversed"),
    pytest.param({**GOOD, "started_after": T0}, "started_after", "invalid_input", id="range-empty"),
    pytest.param({**GOOD, "started_after": "2025-01-31T13:00:00+01:00"}, "started_after", "invalid_input",
                 id="range-empty-with-offsets"),
    pytest.param({**GOOD, "started_after": "soon"}, "started_after", "invalid_input", id="started-after-bad"),
    pytest.param({**GOOD, "if": "event.data.plan =="}, "if", "invalid_expression", id="if-syntax"),
    pytest.param({**GOOD, "if": "   "}, "if", "invalid_expression", id="if-empty"),
    pytest.param({**GOOD, "if": 3}, "if", "invalid_input", id="if-not-a-string"),
    pytest.param({**GOOD, "if": "true || " * 600 + "true"}, "if", "limit_exceeded", id="if-too-long"),
    pytest.param({**GOOD, "if_exp": "true"}, "if_exp", "invalid_input", id="unknown-field-if-exp"),
    pytest.param({**GOOD, "fn": "x"}, "fn", "invalid_input", id="unknown-field"),
    pytest.param([GOOD], "body", "invalid_input", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "field", "code"), BAD)
def test_bad_cancellation_request_names_the_field_and_produces_nothing(api: Any, body: Any, field: str,
                                                                       code: str) -> None:
    r = api.post("/v1/cancellations", json=body)
    assert r.status_code in (400, 413), r.text
    err = r.json()["error"]
    assert (err["field"], err["code"]) == (field, code), err
    assert err["message"].startswith(f"{field}:"), err["message"]
    assert api.state["producer"].sent == []


def test_bad_json_body_is_400_naming_the_body(api: Any) -> None:
    r = api.post("/v1/cancellations", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "body"


def test_bad_if_names_line_and_column() -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_cancellation({**GOOD, "if": "event.data.x > > 1"})
    assert exc.value.field == "if" and "line 1" in exc.value.message


@pytest.mark.parametrize(("raw", "ms"), [
    (T0, T0),
    (str(T0), T0),
    (float(T0), T0),
    ("2025-01-31T12:00:00Z", T0),
    ("2025-01-31t12:00:00z", T0),
    ("2025-01-31T12:00:00.250Z", T0 + 250),
    ("2025-01-31T13:00:00+01:00", T0),
    (0, 0),
])
def test_times_are_rfc3339_or_epoch_ms(raw: Any, ms: int) -> None:
    assert parse_time(raw, field="started_before") == ms


# -- POST /v1/cancellations: accepted, and GET ----------------------------------------------------

def test_accepted_cancellation_produces_cancel_runs_and_is_pending_then_done(api: Any) -> None:
    body = {"app_id": "shop", "function_id": "checkout", "started_after": "2025-01-31T11:00:00Z",
            "started_before": "2025-01-31T12:00:00Z", "if": 'event.data.plan == "free"'}
    r = api.post("/v1/cancellations", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    cid = out.pop("id")
    assert len(cid) == 26  # a ULID
    assert out == {"app_id": "shop", "function_id": "checkout", "started_after": T0 - 3_600_000,
                   "started_before": T0, "if": 'event.data.plan == "free"', "status": "pending",
                   "cancelled": None, "at": None}
    [(topic, key, value, partition)] = api.state["producer"].sent
    assert (topic, key, partition) == (SETTINGS.commands_topic, "shop/checkout", partition_for(key, 4))
    cmd = command_adapter.validate_json(value)
    assert cmd.kind == "cancel_many"
    assert (cmd.cancellation_id, cmd.app_id, cmd.function_id, cmd.started_after, cmd.started_before,
            cmd.if_exp) == (cid, "shop", "checkout", T0 - 3_600_000, T0, 'event.data.plan == "free"')

    got = api.get(f"/v1/cancellations/{cid}")
    assert got.status_code == 200 and got.json()["status"] == "pending"

    # the processor applied it and published its record to sg.stats
    api.state["stats"].items[stats_key(cid)] = {"id": cid, "app_id": "shop", "function_id": "checkout",
                                                "cancelled": 3, "at": T0 + 5}
    done = api.get(f"/v1/cancellations/{cid}").json()
    assert done == {"id": cid, "app_id": "shop", "function_id": "checkout", "started_after": T0 - 3_600_000,
                    "started_before": T0, "if": 'event.data.plan == "free"', "status": "done",
                    "cancelled": 3, "at": T0 + 5}


def test_minimal_cancellation_has_no_lower_bound_and_no_filter(api: Any) -> None:
    r = api.post("/v1/cancellations", json=GOOD)
    assert r.status_code == 202, r.text
    cmd = command_adapter.validate_json(api.state["producer"].sent[0][2])
    assert (cmd.started_after, cmd.started_before, cmd.if_exp) == (None, T0, None)
    assert json.loads(api.state["producer"].sent[0][2]).get("started_after") is None


def test_get_cancellation_unknown_is_404_and_done_ones_from_any_process_are_found(api: Any) -> None:
    r = api.get("/v1/cancellations/01UNKNOWN")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # accepted by another API process: only the processor's record is known here
    api.state["stats"].items[stats_key("01OTHER")] = {"id": "01OTHER", "app_id": "a", "function_id": "f",
                                                      "cancelled": 0, "at": 5}
    got = api.get("/v1/cancellations/01OTHER").json()
    assert (got["status"], got["cancelled"], got["app_id"], got["function_id"]) == ("done", 0, "a", "f")
    # a queue-stats record of an app named "cancellation" is not a cancellation
    api.state["stats"].items["cancellation/fn"] = {"app_id": "cancellation", "function_id": "fn", "backlog": 3}
    assert api.get("/v1/cancellations/fn").status_code == 404


def test_cancellation_log_forgets_the_oldest() -> None:
    log = CancellationLog(keep=2)
    for i in range(3):
        cmd = validate_cancellation({**GOOD}, cancellation_id=f"c{i}")
        log.add(accepted(cmd))
    assert log.get("c0") is None and log.get("c1") is not None and log.get("c2") is not None


def test_the_routes_need_the_api_token_when_one_is_set() -> None:
    app = create_api(SETTINGS.model_copy(update={"api_token": "t0ken"}))
    client = TestClient(app)
    assert client.delete("/v1/runs/x").status_code == 401
    assert client.post("/v1/cancellations", json=GOOD).status_code == 401
    assert client.get("/v1/cancellations/x").status_code == 401


def test_openapi_documents_the_cancellation_routes_with_examples() -> None:
    spec = create_api(SETTINGS).openapi()
    post = spec["paths"]["/v1/cancellations"]["post"]
    assert post["summary"] and "202" in post["responses"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert "if" in body["properties"] and body["examples"]
    assert spec["paths"]["/v1/runs/{run_id}"]["delete"]["summary"] == "Cancel one run"
    assert spec["paths"]["/v1/cancellations/{cancellation_id}"]["get"]["summary"]
    for name in ("Cancellation", "RunCancelling"):
        assert spec["components"]["schemas"][name]["examples"]
