"""The ``sluicegate`` command.

    sluicegate dev [--app examples/hello.py:sg]   broker + topics + processor + HTTP + worker
    sluicegate broker                              a local Kafka broker only
    sluicegate fetch-broker                        download the broker's jars (Maven) into the cache
    sluicegate processor                           the faust processors
    sluicegate api                                 the HTTP bridge and runs API
    sluicegate worker FILE.py:ATTR                 a worker for an app (--concurrency N jobs at once)
    sluicegate keys create --app APP | keys list   event keys
    sluicegate topics                              create the core topics
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

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
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action == "create" and not args.app:
        parser.error("keys create needs --app")
    args.fn(args)


if __name__ == "__main__":
    main()
