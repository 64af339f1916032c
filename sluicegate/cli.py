"""The ``sluicegate`` command.

    sluicegate dev [--app examples/hello.py:sg]   broker + topics + processor + HTTP + worker
    sluicegate broker                              a local Kafka broker only
    sluicegate fetch-broker                        download the broker's jars (Maven) into the cache
    sluicegate processor                           the faust processors
    sluicegate api                                 the HTTP bridge and runs API
    sluicegate worker FILE.py:ATTR                 a worker for an app (--concurrency N jobs at once)
    sluicegate keys create --app APP | keys list   event keys
    sluicegate cancel RUN_ID                       cancel one run (through the HTTP API)
    sluicegate cancel --app A --function F --until T [--since T] [--if EXPR] [--wait [S]]
                                                   cancel a function's runs created in [since, until)
    sluicegate runs [--app A] [--function F] [--status S] [--since T] [--until T] [--limit N] [--all]
                                                   list runs, newest first (through the HTTP API)
    sluicegate runs show RUN_ID                    one run as JSON
    sluicegate events [--app A] [--name N] [--since T] [--limit N]
                                                   recent events, oldest first
    sluicegate functions [--app A]                 functions with runs per status and backlog
    sluicegate topics                              create the core topics
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .settings import Settings


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_broker(args: argparse.Namespace) -> None:
    from .local_broker import LocalBroker

    broker = LocalBroker(port=args.port, data_dir=Path(args.data_dir) if args.data_dir else None).start()
    print(f"Kafka {broker.bootstrap_servers} (Ctrl-C to stop)", flush=True)
    _wait_for_signal()
    broker.stop()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


def cmd_fetch_broker(args: argparse.Namespace) -> None:
    from .local_broker import KAFKA_VERSION, check_java, fetch_broker_jars

    check_java()
    print(f"Apache Kafka {KAFKA_VERSION} broker jars: {fetch_broker_jars()}")


def cmd_processor(args: argparse.Namespace) -> None:
    from .processors.faust_app import run_processor

    settings = Settings()
    sys.argv = [sys.argv[0], "worker"]  # faust's Worker reads argv
    run_processor(settings)


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from .ingest.http_api import create_api

    settings = Settings()
    _logging(settings)
    uvicorn.run(create_api(settings), host=settings.http_host, port=settings.http_port,
                access_log=False, log_level=settings.log_level.lower())


def cmd_worker(args: argparse.Namespace) -> None:
    from .app_loader import load_app

    settings = Settings()
    _logging(settings)
    sg = load_app(args.app)
    sg.settings = sg.settings.model_copy(update={"bootstrap_servers": settings.bootstrap_servers})
    try:
        worker = sg.worker(concurrency=args.concurrency)
    except ValueError as exc:
        sys.exit(f"sluicegate worker: {exc}")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    print(f"worker for app {sg.app_id!r}: functions {sorted(sg.functions)}, "
          f"{worker.concurrency} job(s) at once", flush=True)
    _wait_for_signal()
    worker.stop()


def cmd_topics(args: argparse.Namespace) -> None:
    from .topics import ensure_core_topics

    ensure_core_topics(Settings())
    print("topics ready")


def cmd_keys(args: argparse.Namespace) -> None:
    from .ingest.event_keys import EventKeys, create_key

    settings = Settings()
    if args.action == "create":
        key = create_key(settings, args.app)
        print(f"event key for app {args.app!r} (shown once, store it now):\n{key}")
    else:
        keys = EventKeys(settings).start()
        for key_hash, rec in keys.listing():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.created_at / 1000))
            print(f"{rec.prefix:12} app={rec.app_id:24} created={created}Z id={key_hash[:12]}")
        keys.stop()


def _api_url(settings: Settings, url: str | None) -> str:
    """--url, else SLUICEGATE_API_URL, else the API's own host and port from the settings."""
    if url or os.environ.get("SLUICEGATE_API_URL"):
        return (url or os.environ["SLUICEGATE_API_URL"]).rstrip("/")
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def _api_call(base: str, token: str | None, method: str, path: str,
              body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    """One call to the runs API: (status, JSON body). Raises ``SystemExit`` if the API cannot be reached."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(f"sluicegate: cannot reach the API at {base}: {reason}") from None
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"error": {"message": raw.decode(errors="replace")[:500]}}
    return status, parsed if isinstance(parsed, dict) else {"data": parsed}


def _api_error(status: int, body: dict[str, object]) -> str:
    err = body.get("error")
    if isinstance(err, dict) and err.get("message"):
        return f"{err['message']} (HTTP {status})"
    return f"HTTP {status}: {json.dumps(body)[:500]}"


def _time_arg(value: str | None) -> str | int | None:
    """``now``, ms since the epoch, or an RFC 3339 date-time (checked by the API)."""
    if value is None:
        return None
    if value.strip().lower() == "now":
        return int(time.time() * 1000)
    return int(value) if value.strip().isdigit() else value


def _iso(ms: object) -> str:
    if not isinstance(ms, int):
        return "the beginning"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def cmd_cancel(args: argparse.Namespace) -> None:
    settings = Settings()
    base = _api_url(settings, args.url)
    token = settings.api_token
    if args.run_id:
        from urllib.parse import quote

        status, body = _api_call(base, token, "DELETE", f"/v1/runs/{quote(args.run_id, safe='')}")
        if status == 202:
            print(f"run {args.run_id} cancelling (GET {base}/v1/runs/{args.run_id} shows 'cancelled' once applied)")
            return
        err = body.get("error")
        if status == 409 and isinstance(err, dict) and err.get("status") == "cancelled":
            print(f"run {args.run_id} was already cancelled")
            return
        raise SystemExit(f"sluicegate cancel: {_api_error(status, body)}")
    request: dict[str, object] = {"app_id": args.app, "function_id": args.function,
                                  "started_before": _time_arg(args.until)}
    if args.since is not None:
        request["started_after"] = _time_arg(args.since)
    if args.if_exp is not None:
        request["if"] = args.if_exp
    status, body = _api_call(base, token, "POST", "/v1/cancellations", request)
    if status != 202:
        raise SystemExit(f"sluicegate cancel: {_api_error(status, body)}")
    cid = str(body["id"])
    what = (f"runs of {args.app}/{args.function} created from {_iso(body.get('started_after'))} "
            f"to {_iso(body.get('started_before'))}" + (f" where {args.if_exp}" if args.if_exp else ""))
    if args.wait is None:
        print(f"cancellation {cid} pending: {what} (GET {base}/v1/cancellations/{cid})")
        return
    deadline = time.monotonic() + args.wait
    while True:
        status, body = _api_call(base, token, "GET", f"/v1/cancellations/{cid}")
        if status == 200 and body.get("status") == "done":
            print(f"cancellation {cid} done: {body.get('cancelled')} run(s) cancelled ({what})")
            return
        if status not in (200, 404):
            raise SystemExit(f"sluicegate cancel: {_api_error(status, body)}")
        if time.monotonic() >= deadline:
            raise SystemExit(f"sluicegate cancel: cancellation {cid} still pending after {args.wait:g} s ({what})")
        time.sleep(0.5)


# -- listing: runs, events, functions (GET /v1/runs, /v1/events, /v1/functions) --------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def _listing_time(value: str | None, now_ms: int | None = None) -> str | int | None:
    """``now``, a duration ago (``30m``, ``2h``, ``7d``), ms since the epoch, or an RFC 3339
    date-time (checked by the API)."""
    if value is None:
        return None
    text = value.strip().lower()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    for unit in sorted(_UNITS_MS, key=len, reverse=True):
        number = text[:-len(unit)]
        if text.endswith(unit) and number.replace(".", "", 1).isdigit():
            return now - int(float(number) * _UNITS_MS[unit])
    if text == "now":
        return now
    return _time_arg(value)


def _utc(ms: object) -> str:
    if not isinstance(ms, int):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _duration(ms: int) -> str:
    """123ms, 4.2s, 3m04s, 2h05m, 4d03h."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    s = ms // 1000
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def _table(rows: list[list[str]], right: frozenset[int] = frozenset(),
           widths: list[int] | None = None) -> tuple[list[str], list[int]]:
    """Lines of a plain-text table, and its column widths (to keep later pages aligned)."""
    widths = list(widths or [0] * len(rows[0]))
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(r) for r in rows], widths


RUN_HEADERS = ["RUN ID", "FUNCTION", "STATUS", "CREATED", "DURATION"]
FUNCTION_HEADERS = ["FUNCTION", "TRIGGERS", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SKIPPED",
                    "BACKLOG", "IN FLIGHT"]
EVENT_HEADERS = ["RECEIVED", "EVENT ID", "APP", "NAME", "DATA"]


def run_row(run: dict[str, Any], now_ms: int) -> list[str]:
    """One run of ``GET /v1/runs`` as table cells. STATUS carries the skip reason or why the
    run waits; DURATION is an ended run's (start, or creation, to end), a running run's so
    far marked ``+``, or ``-``."""
    status = str(run.get("status", "?"))
    note = run.get("skip_reason") if status == "skipped" else run.get("waiting")
    if note:
        status = f"{status} ({note})"
    started = run.get("started_at")
    if isinstance(run.get("duration_ms"), int):
        duration = _duration(run["duration_ms"])
    elif isinstance(started, int) and run.get("ended_at") is None:
        duration = _duration(max(0, now_ms - started)) + "+"
    else:
        duration = "-"
    return [str(run.get("run_id", "")), f"{run.get('app_id')}/{run.get('function_id')}", status,
            _utc(run.get("created_at")), duration]


def format_runs(runs: list[dict[str, Any]], now_ms: int, widths: list[int] | None = None,
                header: bool = True) -> tuple[list[str], list[int]]:
    """The runs table (``header=False`` and the previous page's widths for a further page)."""
    rows = [run_row(r, now_ms) for r in runs]
    if header:
        rows.insert(0, RUN_HEADERS)
    if not rows:
        return [], widths or []
    return _table(rows, right=frozenset({4}), widths=widths)


def format_functions(items: list[dict[str, Any]]) -> list[str]:
    rows = [FUNCTION_HEADERS]
    for f in items:
        runs = f.get("runs") if isinstance(f.get("runs"), dict) else {}
        triggers = [str(t) for t in f.get("triggers") or []] + [f"cron {c}" for c in f.get("crons") or []]
        name = f"{f.get('app_id')}/{f.get('function_id')}" + ("" if f.get("registered", True) else " (unregistered)")
        counts = [str(runs.get(s, 0)) for s in ("queued", "running", "completed", "failed", "cancelled", "skipped")]
        rows.append([name, ", ".join(triggers) or "-", *counts, str(f.get("backlog", 0)), str(f.get("in_flight", 0))])
    return _table(rows, right=frozenset(range(2, 10)))[0]


def format_events(events: list[dict[str, Any]], data_width: int = 60) -> list[str]:
    rows = [EVENT_HEADERS]
    for e in events:
        data = json.dumps(e.get("data", {}), separators=(",", ":"), ensure_ascii=False)
        if len(data) > data_width:
            data = data[:data_width - 3] + "..."
        rows.append([_utc(e.get("received_at")), str(e.get("id", "")), str(e.get("app_id", "")),
                     str(e.get("name", "")), data])
    return _table(rows)[0]


def _listing_get(args: argparse.Namespace, path: str, params: dict[str, Any], prog: str) -> dict[str, Any]:
    from urllib.parse import urlencode

    settings = Settings()
    query = urlencode({k: v for k, v in params.items() if v is not None})
    status, body = _api_call(_api_url(settings, args.url), settings.api_token, "GET",
                             path + (f"?{query}" if query else ""))
    if status != 200:
        raise SystemExit(f"{prog}: {_api_error(status, body)}")
    return body


def cmd_runs(args: argparse.Namespace) -> None:
    if args.rest:
        filters = [f"--{n}" for n in ("app", "function", "status", "since", "until", "limit", "cursor")
                   if getattr(args, n) is not None] + (["--all"] if args.all else [])
        if len(args.rest) != 2 or args.rest[0] != "show":
            raise SystemExit("sluicegate runs: use 'runs [--app A ...]' to list, or 'runs show RUN_ID'")
        if filters:
            raise SystemExit(f"sluicegate runs show: takes only RUN_ID (not {filters[0]})")
        from urllib.parse import quote

        body = _listing_get(args, f"/v1/runs/{quote(args.rest[1], safe='')}", {}, "sluicegate runs show")
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    params: dict[str, Any] = {
        "app": args.app, "function": args.function, "status": args.status, "since": _listing_time(args.since),
        "until": _listing_time(args.until), "limit": args.limit, "cursor": args.cursor}
    widths: list[int] | None = None
    first = True
    while True:
        body = _listing_get(args, "/v1/runs", params, "sluicegate runs")
        runs = [r for r in body.get("data", []) if isinstance(r, dict)]
        if args.json:
            for r in runs:
                print(json.dumps(r, ensure_ascii=False), flush=True)
        else:
            lines, widths = format_runs(runs, int(time.time() * 1000), widths, header=first)
            if lines:
                print("\n".join(lines), flush=True)
        first = False
        cursor = body.get("next_cursor")
        if not cursor:
            return
        if not args.all:
            print(f"(more: --cursor {cursor}, or --all)", file=sys.stderr)
            return
        params["cursor"] = cursor


def cmd_events(args: argparse.Namespace) -> None:
    body = _listing_get(args, "/v1/events", {"app": args.app, "name": args.name,
                                             "since": _listing_time(args.since), "limit": args.limit},
                        "sluicegate events")
    events = [e for e in body.get("data", []) if isinstance(e, dict)]
    if args.json:
        for e in events:
            print(json.dumps(e, ensure_ascii=False))
    else:
        print("\n".join(format_events(events)))
    if body.get("complete") is False:
        print("(reading stopped after 5 s: there may be more events; narrow with --app, --name or --since)",
              file=sys.stderr)


def cmd_functions(args: argparse.Namespace) -> None:
    body = _listing_get(args, "/v1/functions", {"app": args.app}, "sluicegate functions")
    items = [f for f in body.get("data", []) if isinstance(f, dict)]
    if args.json:
        for f in items:
            print(json.dumps(f, ensure_ascii=False))
    else:
        print("\n".join(format_functions(items)))


def _add_listing_commands(sub: Any) -> None:
    api = ("The API is --url, else SLUICEGATE_API_URL, else SLUICEGATE_HTTP_HOST:SLUICEGATE_HTTP_PORT; "
           "SLUICEGATE_API_TOKEN is sent as the bearer token.")
    times = "Times: 'now', a duration ago (30m, 2h, 7d), ms since the epoch, or RFC 3339 (2025-01-31T12:00:00Z). "
    p = sub.add_parser("runs", help="list runs newest first, or show one (runs show RUN_ID)",
                       description="sluicegate runs [filters] | sluicegate runs show RUN_ID. The table shows the "
                                   "run id, function, status (with the skip reason or why it waits), creation "
                                   "time (UTC) and duration (a running run's so far, marked '+'). " + times + api)
    p.add_argument("rest", nargs="*", metavar="show RUN_ID", help="show one run as JSON")
    p.add_argument("--app", help="only this app's runs")
    p.add_argument("--function", help="only this function's runs (FN with --app, or APP/FN)")
    p.add_argument("--status", help="queued, running, completed, failed, cancelled or skipped; or a comma list")
    p.add_argument("--since", metavar="T", help="runs created at or after T")
    p.add_argument("--until", metavar="T", help="runs created before T")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="runs per page, 1-500 (default 50)")
    p.add_argument("--all", action="store_true", help="follow the cursors to the end of the listing")
    p.add_argument("--cursor", default=None, help="continue a listing from this cursor")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_runs)
    p = sub.add_parser("events", help="recent events, oldest first (through the HTTP API)",
                       description="Without --since: the last N events; with it: the first N accepted at or "
                                   "after T; oldest first either way. " + times + api)
    p.add_argument("--app", help="only this app's events")
    p.add_argument("--name", help="only events with exactly this name")
    p.add_argument("--since", metavar="T", help="events accepted at or after T")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="events, 1-1000 (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per event instead of the table")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_events)
    p = sub.add_parser("functions", help="functions with their runs per status and backlog (through the HTTP API)",
                       description=api)
    p.add_argument("--app", help="only this app's functions")
    p.add_argument("--json", action="store_true", help="one JSON object per function instead of the table")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_functions)


def cmd_dev(args: argparse.Namespace) -> None:
    from .devstack import DevStack

    stack = DevStack(app_spec=args.app, http_port=args.port)
    stack.start()
    base = f"http://127.0.0.1:{stack.http_port}"
    print(f"""
Sluicegate is running (DEV MODE: event key 'dev' sends events for app '{stack.app_id}').
  Kafka:      {stack.bootstrap_servers}
  HTTP:       {base}   (OpenAPI docs at {base}/docs)
  Functions:  {', '.join(stack.function_ids)}

Send an event:
  curl -s -X POST {base}/e/dev -H 'content-type: application/json' \\
       -d '{{"name": "demo/hello", "data": {{"name": "Ada"}}}}'
Then read its run (use the id the call returned):
  curl -s {base}/v1/events/<EVENT_ID>/runs

Ctrl-C stops everything.
""", flush=True)
    try:
        _wait_for_signal()
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sluicegate", description="Durable execution with flow control on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dev", help="run everything locally with the example app")
    p.add_argument("--app", default="examples/hello.py:sg", help="app to run a worker for (FILE.py:ATTR or module:attr)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SLUICEGATE_HTTP_PORT", "8288")))
    p.set_defaults(fn=cmd_dev)
    p = sub.add_parser("broker", help="run a local Kafka broker")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(fn=cmd_broker)
    sub.add_parser("fetch-broker", help="download the Kafka broker jars (once)").set_defaults(fn=cmd_fetch_broker)
    sub.add_parser("processor", help="run the faust processors").set_defaults(fn=cmd_processor)
    sub.add_parser("api", help="run the HTTP bridge and runs API").set_defaults(fn=cmd_api)
    p = sub.add_parser("worker", help="run a worker for an app")
    p.add_argument("app", help="FILE.py:ATTR or module:attr of a Sluicegate client")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="jobs run at once, 1-1000 (default: SLUICEGATE_WORKER_CONCURRENCY, else 8)")
    p.set_defaults(fn=cmd_worker)
    sub.add_parser("topics", help="create the core topics").set_defaults(fn=cmd_topics)
    p = sub.add_parser("keys", help="event keys")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--app", help="app id (for create)")
    p.set_defaults(fn=cmd_keys)
    p = sub.add_parser("cancel", help="cancel one run, or a function's runs in bulk (through the HTTP API)",
                       description="sluicegate cancel RUN_ID | sluicegate cancel --app A --function F --until T "
                                   "[--since T] [--if EXPR]. Times: RFC 3339 (2025-01-31T12:00:00Z), ms since "
                                   "the epoch, or 'now'. The API is --url, else SLUICEGATE_API_URL, else "
                                   "SLUICEGATE_HTTP_HOST:SLUICEGATE_HTTP_PORT; SLUICEGATE_API_TOKEN is sent "
                                   "as the bearer token.")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to cancel")
    p.add_argument("--app", help="bulk: the function's app id")
    p.add_argument("--function", help="bulk: the function id")
    p.add_argument("--until", metavar="T", help="bulk: runs created before T (required)")
    p.add_argument("--since", metavar="T", help="bulk: runs created at or after T")
    p.add_argument("--if", dest="if_exp", metavar="EXPR", help="bulk: only runs whose event passes this CEL expression")
    p.add_argument("--wait", nargs="?", type=float, const=60.0, default=None, metavar="S",
                   help="bulk: wait until the engine applied it (at most S seconds, default 60) and print the count")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_cancel)
    from .cli_replay import add_commands as add_replay_commands

    add_replay_commands(sub)
    _add_listing_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action == "create" and not args.app:
        parser.error("keys create needs --app")
    if args.command == "cancel":
        bulk = [name for name in ("app", "function", "until", "since", "if_exp", "wait")
                if getattr(args, name) is not None]
        if args.run_id and bulk:
            parser.error("cancel: give either RUN_ID or --app/--function/--until, not both")
        if not args.run_id and not all(getattr(args, name) for name in ("app", "function", "until")):
            parser.error("cancel: give RUN_ID, or --app, --function and --until for a bulk cancellation")
    args.fn(args)


if __name__ == "__main__":
    main()
