"""The operator's listing surface on a real broker: ``GET /v1/runs`` (filters, cursors),
``GET /v1/functions`` (runs per status from the read model's counters, the registry) and
``GET /v1/events`` (read from ``sg.events``; oldest first), and the CLI on top of them."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from sluicegate import cli
from sluicegate.sdk import NonRetriableError, TriggerEvent

from polling import wait_until as _wait

if TYPE_CHECKING:
    from conftest import Engine




def _all_pages(engine: "Engine", params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every run of a listing, following the cursors; (runs, pages)."""
    out: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        r = engine.http.get("/v1/runs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["data"]) <= int(params.get("limit", 50))
        out.extend(body["data"])
        cursor = body.get("next_cursor")
        if not cursor:
            return out, pages
        assert pages < 100


def test_list_runs_functions_and_events(engine_cleanup: "Engine", capsys: pytest.CaptureFixture[str]) -> None:
    engine = engine_cleanup
    sg = engine.app("listing")
    app = sg.app_id

    @sg.function(id="ok", trigger=TriggerEvent(event="list.ok"))
    def ok(ctx: Any, step: Any) -> Any:
        return step.run("double", lambda: 2 * ctx.event["data"]["n"])

    @sg.function(id="bad", trigger=TriggerEvent(event="list.bad"))
    def bad(ctx: Any, step: Any) -> Any:
        def boom() -> None:
            raise NonRetriableError(f"bad input {ctx.event['data']['n']}")
        return step.run("boom", boom)

    engine.start_worker(sg)
    before = int(time.time() * 1000) - 1
    ok_ids: list[str] = []
    bad_ids: list[str] = []
    for n in range(5):  # one at a time: distinct creation times, sent in a known order
        ok_ids += sg.send({"name": "list.ok", "data": {"n": n}})
        if n < 4:
            bad_ids += sg.send({"name": "list.bad", "data": {"n": n}})
        time.sleep(0.01)
    runs = {eid: engine.wait_run(eid) for eid in ok_ids + bad_ids}
    assert {runs[e]["status"] for e in ok_ids} == {"completed"}
    assert {runs[e]["status"] for e in bad_ids} == {"failed"}

    def newest_first(event_ids: list[str]) -> list[str]:
        chosen = [runs[e] for e in event_ids]
        return [r["run_id"] for r in sorted(chosen, key=lambda r: (-r["created_at"], r["run_id"]))]

    # by function, two at a time (app + function, and the app/fn form)
    got, pages = _all_pages(engine, {"app": app, "function": "ok", "limit": 2})
    assert [r["run_id"] for r in got] == newest_first(ok_ids) and pages == 3
    assert {r["function_id"] for r in got} == {"ok"} and all(r["duration_ms"] >= 0 for r in got)
    assert "steps" not in got[0] and "output" not in got[0]
    got, _ = _all_pages(engine, {"function": f"{app}/bad", "limit": 3})
    assert [r["run_id"] for r in got] == newest_first(bad_ids)
    assert all("bad input" in r["error"]["message"] for r in got), [r["error"] for r in got]

    # by status, across the app's functions; a status a function never reached lists nothing
    got, pages = _all_pages(engine, {"app": app, "status": "failed", "limit": 3})
    assert [r["run_id"] for r in got] == newest_first(bad_ids) and pages == 2
    got, _ = _all_pages(engine, {"app": app, "status": "completed,failed", "limit": 4})
    assert [r["run_id"] for r in got] == newest_first(ok_ids + bad_ids)
    assert _all_pages(engine, {"app": app, "function": "bad", "status": "completed"})[0] == []
    assert _all_pages(engine, {"app": app, "status": "queued,running"})[0] == []
    # by creation time
    third = runs[ok_ids[2]]["created_at"]
    got, _ = _all_pages(engine, {"app": app, "since": str(third), "limit": 2})
    assert {r["run_id"] for r in got} == {r["run_id"] for r in runs.values() if r["created_at"] >= third}
    # every run of the whole installation includes ours, once
    everything, _ = _all_pages(engine, {"limit": 500})
    ids = [r["run_id"] for r in everything]
    assert len(ids) == len(set(ids)) and set(newest_first(ok_ids + bad_ids)) <= set(ids)
    # bad parameters name the field
    r = engine.http.get("/v1/runs", params={"status": "done"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "status"
    r = engine.http.get("/v1/runs", params={"limit": 501})
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"

    # functions: runs per status from the read model, registry data, queue figures
    def functions() -> dict[str, dict[str, Any]]:
        r = engine.http.get("/v1/functions", params={"app": app})
        assert r.status_code == 200, r.text
        return {f["function_id"]: f for f in r.json()["data"]}

    fns = _wait(lambda: (lambda f: f if set(f) == {"ok", "bad"} else None)(functions()), 30, "both functions")
    assert fns["ok"]["runs"] == {"queued": 0, "running": 0, "completed": 5, "failed": 0, "cancelled": 0, "skipped": 0}
    assert fns["bad"]["runs"] == {"queued": 0, "running": 0, "completed": 0, "failed": 4, "cancelled": 0, "skipped": 0}
    assert fns["ok"]["registered"] and fns["ok"]["triggers"] == ["list.ok"] and fns["ok"]["version"]
    # queue figures come from sg.stats, which the dispatcher publishes once a second: a
    # run's view can say failed a moment before the freed slot reaches the figures
    seen: list[dict[str, Any]] = []

    def drained() -> bool:
        seen[:] = [{n: (f["backlog"], f["in_flight"]) for n, f in functions().items()}]
        return seen[0] == {"ok": (0, 0), "bad": (0, 0)}

    try:
        _wait(drained, 10, "backlog and in flight of both functions back to 0")
    except AssertionError as e:
        raise AssertionError(f"{e}; last (backlog, in_flight) seen: {seen}") from None
    every = engine.http.get("/v1/functions").json()["data"]
    assert {(f["app_id"], f["function_id"]) for f in every} >= {(app, "ok"), (app, "bad")}

    # events: oldest first; without since the newest `limit`, with since the first `limit` from there
    r = engine.http.get("/v1/events", params={"app": app, "name": "list.bad"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order"] == "oldest_first" and body["complete"] is True
    assert [e["id"] for e in body["data"]] == bad_ids
    assert all(e["name"] == "list.bad" and e["app_id"] == app for e in body["data"])
    assert [e["data"]["n"] for e in body["data"]] == [0, 1, 2, 3]
    tail = engine.http.get("/v1/events", params={"app": app, "name": "list.ok", "limit": 2}).json()["data"]
    assert [e["id"] for e in tail] == ok_ids[-2:]
    head = engine.http.get("/v1/events", params={"app": app, "name": "list.ok", "since": str(before),
                                                 "limit": 3}).json()["data"]
    assert [e["id"] for e in head] == ok_ids[:3]
    late = engine.http.get("/v1/events", params={"app": app, "since": str(int(time.time() * 1000) + 60_000)})
    assert late.json()["data"] == []
    # without app: every partition is read; ours are among the newest of that name
    anywhere = engine.http.get("/v1/events", params={"name": "list.bad", "since": str(before)}).json()["data"]
    assert [e["id"] for e in anywhere if e["app_id"] == app] == bad_ids
    # the run's failure notices are events too (system events), under their own name
    failed = engine.http.get("/v1/events", params={"app": app, "name": "sluicegate/function.failed"}).json()["data"]
    assert {e["data"]["run_id"] for e in failed} == {runs[e]["run_id"] for e in bad_ids}

    # the CLI on top of the same routes
    url = engine.api.url
    cli.main(["runs", "--function", f"{app}/ok", "--limit", "2", "--all", "--url", url])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["RUN", "ID"] and [line.split()[0] for line in out[1:]] == newest_first(ok_ids)
    cli.main(["runs", "show", runs[bad_ids[0]]["run_id"], "--url", url])
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    cli.main(["functions", "--app", app, "--url", url])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [f"{app}/bad", f"{app}/ok"]
    cli.main(["events", "--app", app, "--name", "list.ok", "--since", "10m", "--url", url])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[1:]] == ok_ids
