"""``python -m bench <ID> [--quick]`` (from the repository root, project installed)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback

from . import BENCHMARKS


def _terminate(signum: int, _frame: object) -> None:
    # turn SIGTERM into an exception so every ``finally`` (broker, processor, temp dirs) runs
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Sluicegate benchmarks (BENCHMARKS.md).")
    parser.add_argument("id", metavar="ID", type=str.upper, choices=sorted(BENCHMARKS),
                        help="benchmark id: " + ", ".join(sorted(BENCHMARKS)))
    parser.add_argument("--quick", action="store_true", help="reduced run (< 2 minutes), same metrics")
    parser.add_argument("--rates", default=None,
                        help="comma-separated arrival rates in events/s (B1; default 10,100,500)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of measured sending per rate (B1; default 30, --quick 8)")
    parser.add_argument("--partitions", type=int, default=None, help="SLUICEGATE_PARTITIONS for the run")
    parser.add_argument("--tenants", choices=["keys", "apps"], default=None,
                        help="B4's tenant model: keys of one function of one app (default) or separate apps")
    parser.add_argument("--allow-collisions", action="store_true",
                        help="B4 --tenants apps: keep the first quiet app ids even if they share M's partitions")
    parser.add_argument("--pace", type=float, default=None,
                        help="REPLAY: the replay's pace, events/s (default: as fast as it is absorbed)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy the processor log to ./bench-<ID>-processor.log before cleaning up")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _terminate)
    module_name, _, fn_name = BENCHMARKS[args.id].partition(":")
    options = {
        "rates": [float(r) for r in args.rates.split(",")] if args.rates else None,
        "duration": args.duration,
        "partitions": args.partitions,
        "tenants": args.tenants,
        "allow_collisions": args.allow_collisions or None,
        "keep_logs": args.keep_logs,
        "pace": args.pace,
    }
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
        fn(quick=args.quick, **{k: v for k, v in options.items() if v is not None})
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        print(f"bench {args.id}: failed (a real error, not a missed target)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
