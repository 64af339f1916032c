"""``sluicegate replay ...`` and ``sluicegate rerun ...``: the HTTP API's replay and rerun,
with a progress bar (rich) while a replay runs."""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import quote

from .settings import Settings

FINAL = ("done", "cancelled", "failed")


def _api() -> tuple[Any, Any, Any, Any]:
    from .cli import _api_call, _api_error, _api_url, _time_arg

    return _api_call, _api_error, _api_url, _time_arg


def replay_request(args: argparse.Namespace) -> dict[str, object]:
    _call, _error, _url, time_arg = _api()
    body: dict[str, object] = {"app_id": args.app}
    if args.function:
        body["functions"] = list(args.function)
    if args.since is not None:
        body["since"] = time_arg(args.since)
    if args.until is not None:
        body["until"] = time_arg(args.until)
    if args.if_exp is not None:
        body["if"] = args.if_exp
    if args.only_failed:
        body["only_failed"] = True
    if args.pace is not None:
        body["pace"] = args.pace
    if args.dry_run:
        body["dry_run"] = True
    return body


def cmd_replay(args: argparse.Namespace) -> None:
    call, error, url, _time = _api()
    settings = Settings()
    base, token = url(settings, args.url), settings.api_token
    if args.action == "status":
        status, body = call(base, token, "GET", f"/v1/replays/{quote(args.replay_id, safe='')}")
        if status != 200:
            raise SystemExit(f"sluicegate replay: {error(status, body)}")
        print(_line(body))
        return
    if args.action == "cancel":
        status, body = call(base, token, "DELETE", f"/v1/replays/{quote(args.replay_id, safe='')}")
        if status != 202:
            raise SystemExit(f"sluicegate replay: {error(status, body)}")
        print(f"replay {args.replay_id} cancelling")
        return
    if not args.app:
        raise SystemExit("sluicegate replay: --app is required")
    status, body = call(base, token, "POST", "/v1/replays", replay_request(args))
    if args.dry_run:
        if status != 200:
            raise SystemExit(f"sluicegate replay: {error(status, body)}")
        by_fn = ", ".join(f"{fn}: {n}" for fn, n in sorted((body.get("by_function") or {}).items())) or "none"
        print(f"dry run: {body['events_read']} event(s) read, {body['would_run']} run(s) would start ({by_fn}), "
              f"{body['skipped']} skipped" + (" — stopped at the limit" if body.get("truncated") else ""))
        return
    if status != 202:
        raise SystemExit(f"sluicegate replay: {error(status, body)}")
    replay_id = str(body["id"])
    print(f"replay {replay_id} started: {body.get('total', 0)} offset(s) of {args.app} to read")
    if args.no_wait:
        return
    _follow(call, error, base, token, replay_id, int(body.get("total") or 0))


def _follow(call: Any, error: Any, base: str, token: str | None, replay_id: str, total: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    last: dict[str, Any] = {}
    with Progress(TextColumn("[bold]replay[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[runs]} run(s) · {task.fields[skipped]} skipped"), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(replay_id[:10], total=max(total, 1), runs=0, skipped=0)
        while True:
            status, body = call(base, token, "GET", f"/v1/replays/{quote(replay_id, safe='')}")
            if status == 200:
                last = body
                bar.update(task, completed=int(body.get("position") or 0), total=max(int(body.get("total") or total), 1),
                           runs=body.get("runs_created", 0), skipped=body.get("skipped", 0))
                if body.get("status") in FINAL:
                    break
            elif status != 404:  # 404: the processor has not taken it up yet
                raise SystemExit(f"sluicegate replay: {error(status, body)}")
            time.sleep(0.5)
    print(_line(last))
    if last.get("status") == "failed":
        raise SystemExit(1)


def _line(body: dict[str, Any]) -> str:
    return (f"replay {body.get('id')} {body.get('status')}: {body.get('events_read', 0)} event(s) read, "
            f"{body.get('runs_created', 0)} run(s) started, {body.get('skipped', 0)} skipped "
            f"({body.get('position', 0)}/{body.get('total', 0)} offsets)")


def cmd_rerun(args: argparse.Namespace) -> None:
    call, error, url, _time = _api()
    settings = Settings()
    base = url(settings, args.url)
    body = {} if args.from_step is None else {"from_step": args.from_step}
    status, out = call(base, settings.api_token, "POST", f"/v1/runs/{quote(args.run_id, safe='')}/rerun", body)
    if status != 202:
        raise SystemExit(f"sluicegate rerun: {error(status, out)}")
    print(f"run {out['run_id']} started as a rerun of {args.run_id}"
          + (f" from step {args.from_step!r}" if args.from_step else ""))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay events through the functions' current code (through the HTTP API)",
                       description="sluicegate replay --app A [--function F ...] [--since T] [--until T] "
                                   "[--if EXPR] [--only-failed] [--pace N] [--dry-run]; sluicegate replay "
                                   "status ID; sluicegate replay cancel ID. Times: RFC 3339, ms since the "
                                   "epoch, or 'now'.")
    p.add_argument("action", nargs="?", choices=["start", "status", "cancel"], default="start")
    p.add_argument("replay_id", nargs="?", metavar="ID", help="status/cancel: the replay")
    p.add_argument("--app", help="the app whose events to replay")
    p.add_argument("--function", action="append", metavar="F", help="a function to replay into (repeat; default all)")
    p.add_argument("--since", metavar="T", help="events accepted at or after T (default: the oldest kept)")
    p.add_argument("--until", metavar="T", help="events accepted before T (default: now)")
    p.add_argument("--if", dest="if_exp", metavar="EXPR", help="only events passing this CEL expression over event")
    p.add_argument("--only-failed", action="store_true", help="only events whose original run failed or was cancelled")
    p.add_argument("--pace", type=float, metavar="N", help="at most N events per second")
    p.add_argument("--dry-run", action="store_true", help="count what would run; start nothing")
    p.add_argument("--no-wait", action="store_true", help="return once started (no progress bar)")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_replay)
    p = sub.add_parser("rerun", help="run a run again with the current code, from the start or from a step")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--from-step", metavar="STEP", help="keep the results of the steps before STEP")
    p.add_argument("--url", default=None, help="base URL of the HTTP API")
    p.set_defaults(fn=cmd_rerun)
