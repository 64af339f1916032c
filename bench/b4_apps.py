"""B4's second tenant model, ``--tenants apps``: M and A1..A9 are separate apps.

In Sluicegate the primary tenant is the app: each app has its own work topic
(``sg.work.<app>``), its own in-flight window (``dispatch_window`` per app per partition) and
its own workers. Here every tenant is an app (``b4m-<runid>``, ``b4a1-<runid>``, ...) with the
same one-step 50 ms function and no concurrency key; M's worker runs ``EXECUTORS`` (50) jobs
at once, each quiet app has its own worker of ``QUIET_EXECUTORS`` (5).

What the apps still share is the processor: an app's events go to ``sg.events`` partition
``partition_for(app_id)``, a function's triggers and outcomes to ``sg.commands`` partition
``partition_for(function_key(app, fn))``, and each partition is read in order. faust's one
consumer reads every partition, round-robin; ``SLUICEGATE_PROCESSOR_BUFFER`` bounds how many
records of a busy partition can be ahead of a quiet one's. So by default the quiet apps' ids
are chosen (suffixes tried in turn) so that neither partition is M's; ``--allow-collisions``
keeps the first names tried whatever their partitions and reports the colliding apps apart.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sluicegate.partitioning import function_key, partition_for
from sluicegate.sdk import Sluicegate
from sluicegate.settings import Settings

from .fairness_common import EXECUTORS, Ledger, stop_worker_quietly
from .harness import BenchStack

FUNCTION_ID = "b4-work"
EVENT_NAME = "bench/b4"
QUIET_EXECUTORS = 5
MAX_TRIES = 10_000
GROUPS = ("none", "sg.events", "sg.commands", "both")  # which of M's partitions a quiet app shares


@dataclass(frozen=True)
class Placement:
    tenant: str
    app_id: str
    events_p: int    # sg.events partition of the app's events
    commands_p: int  # sg.commands partition of its function's triggers and outcomes
    tries: int       # names tried before this one was kept (0: the first)
    group: str       # "none", "sg.events", "sg.commands" or "both": M's partitions it shares


def place_apps(run_id: str, partitions: int, quiet: list[str], avoid: bool = True) -> dict[str, Placement]:
    """M's app ``b4m-<runid>`` and each quiet tenant's app ``b4a<i>-<runid>[-<k>]``: with
    ``avoid`` the first suffix ``k`` whose sg.events and sg.commands partitions both differ
    from M's (impossible with one partition: then the first name, sharing both)."""

    def parts(app: str) -> tuple[int, int]:
        return partition_for(app, partitions), partition_for(function_key(app, FUNCTION_ID), partitions)

    m_app = f"b4m-{run_id}"
    m_ev, m_cmd = parts(m_app)
    out = {"M": Placement("M", m_app, m_ev, m_cmd, 0, "-")}
    for tenant in quiet:
        base = f"b4{tenant.lower()}-{run_id}"
        for k in range(MAX_TRIES if avoid and partitions > 1 else 1):
            app = base if k == 0 else f"{base}-{k}"
            ev, cmd = parts(app)
            if ev != m_ev and cmd != m_cmd:
                break
        group = {(False, False): "none", (True, False): "sg.events", (False, True): "sg.commands",
                 (True, True): "both"}[(ev == m_ev, cmd == m_cmd)]
        out[tenant] = Placement(tenant, app, ev, cmd, k, group)
    return out


class AppsStack:
    """BenchStack plus one app per tenant, each with the one-step function and its own worker.
    Offers what B4's phases use of :class:`~bench.fairness_common.FairStack` (``settings``,
    ``event``, ``alive``, ``prime``, ``stop_worker``, ``stop_processor``, ``close``, ``pids``)."""

    def __init__(self, name: str, quiet: list[str], *, partitions: int = 8, executors: int = EXECUTORS,
                 quiet_executors: int = QUIET_EXECUTORS, avoid_collisions: bool = True,
                 keep_logs: bool = False) -> None:
        self.name, self.quiet = name, quiet
        self.executors, self.quiet_executors = executors, quiet_executors
        self.avoid_collisions = avoid_collisions
        self.stack = BenchStack(name, partitions=partitions, keep_logs=keep_logs)
        self.settings: Settings | None = None
        self.placement: dict[str, Placement] = {}
        self.app_of: dict[str, str] = {}
        self.app_id = ""  # M's
        self.sgs: dict[str, Sluicegate] = {}
        self.workers: dict[str, Any] = {}
        self.event_name = EVENT_NAME

    def start(self, handler: Callable[..., Any]) -> "AppsStack":
        settings = self.stack.start_broker()
        # the processor child gets dispatch_window from these settings: M's window = its executors
        self.settings = self.stack.settings = settings.model_copy(update={"dispatch_window": self.executors})
        self.placement = place_apps(self.stack.run_id, settings.partitions, self.quiet, self.avoid_collisions)
        self.app_of = {t: p.app_id for t, p in self.placement.items()}
        self.app_id = self.app_of["M"]
        for tenant, app in self.app_of.items():
            sg = Sluicegate(app_id=app, settings=self.settings)
            sg.function(id=FUNCTION_ID, trigger=EVENT_NAME, retries=0)(handler)
            self.sgs[tenant] = sg
            self.workers[tenant] = sg.worker(
                concurrency=self.executors if tenant == "M" else self.quiet_executors).start()
        self.stack.start_processor()
        return self

    def client(self, tenant: str) -> Sluicegate:
        """A new client of ``tenant``'s app (its own producer)."""
        return Sluicegate(app_id=self.app_of[tenant], settings=self.settings)

    def event(self, tenant: str, seq: int, sent: float | None = None, **extra: Any) -> dict[str, Any]:
        return {"name": EVENT_NAME, "data": {"tenant": tenant, "seq": seq, "sent": sent, **extra}}

    def groups(self) -> dict[str, set[str]]:
        """Collision group -> quiet tenants in it (empty groups left out)."""
        out: dict[str, set[str]] = {}
        for t in self.quiet:
            out.setdefault(self.placement[t].group, set()).add(t)
        return {g: out[g] for g in GROUPS if g in out}

    def describe(self) -> str:
        s = self.settings
        assert s is not None
        return (f"broker {s.bootstrap_servers} (kafka {self.stack.kafka}, {self.stack.timings['broker_s']:.1f} s), "
                f"processor ready in {self.stack.timings['processor_s']:.1f} s; partitions {s.partitions}, "
                f"dispatch_window {s.dispatch_window} per app, processor_buffer {s.processor_buffer}; "
                f"{len(self.app_of)} apps: M's worker runs {self.executors} jobs at once, each quiet app's "
                f"{self.quiet_executors}; no concurrency key")

    def placement_text(self) -> str:
        m = self.placement["M"]
        tried = sum(p.tries for p in self.placement.values())
        n_coll = sum(1 for t in self.quiet if self.placement[t].group != "none")
        how = (f"ids chosen to avoid them ({tried} name(s) skipped)" if self.avoid_collisions
               else "first ids kept (--allow-collisions)")
        lines = [f"M = {m.app_id}: sg.events partition {m.events_p}, sg.commands partition {m.commands_p}; "
                 f"quiet apps sharing one of them with M: {n_coll}/{len(self.quiet)} ({how})"]
        for t in self.quiet:
            p = self.placement[t]
            lines.append(f"  {t} = {p.app_id}: sg.events {p.events_p}, sg.commands {p.commands_p}"
                         + ("" if p.group == "none" else f"  <- shares M's {p.group}"))
        return "\n".join(lines)

    def alive(self) -> None:
        self.stack.check_processor()
        for tenant, w in self.workers.items():
            if w is not None and w._thread is not None and not w._thread.is_alive():
                raise RuntimeError(f"the worker of {tenant} died (see the log above)")

    def prime(self, ledger: Ledger, timeout: float = 90.0) -> float:
        """One event per app all the way through (registry read, groups joined, topics warm)."""
        t0 = time.monotonic()
        for i, sg in enumerate(self.sgs.values()):
            sg.send(self.event("prime", -100 - i, time.time()))
        while ledger.count("prime") < len(self.sgs):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{ledger.count('prime')}/{len(self.sgs)} apps' first event reached its step "
                                   f"within {timeout:.0f} s:\n"
                                   f"{self.stack.processor.tail() if self.stack.processor else ''}")
            self.alive()
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop_worker(self, timeout: float = 5.0) -> None:
        """Stop every app's worker (in parallel)."""
        workers, self.workers = self.workers, {}

        threads = [threading.Thread(target=stop_worker_quietly, args=(w, timeout), daemon=True)
                   for w in workers.values()]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout + 10)

    def stop_processor(self) -> None:
        self.stack.stop_processor()

    def close(self) -> None:
        self.stop_worker()
        for sg in self.sgs.values():
            try:
                sg.close()
            except Exception:
                pass
            sg._producer = None
        gc.collect()
        self.stack.stop()

    def pids(self) -> dict[str, int]:
        import os

        out = {f"bench ({len(self.app_of)} workers + senders)": os.getpid()}
        out.update(self.stack.child_pids())
        return out
