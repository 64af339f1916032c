"""The dispatcher's durable record of one active run (table ``dispatch``, key: run id).

A record exists from a run's first ready job until the run has ended *and* no step of it is
executing. While a ``step.parallel`` runs, each branch job has a record of its own (key
``<run id>#<step hash>``, ``branch`` set) that shares the run's keys and limits; the run's
own record then stays ``idle`` and holds the run-level slots. It holds what the dispatcher decided at schedule time (reference §2: keys are
evaluated once and cached on the run) and where the run's current job is:

=========  ===========================================================================
phase      meaning
=========  ===========================================================================
ready      the job waits in its backlog (``processors/dispatch/backlogs.py``)
inflight   the job is in ``sg.work.<app>`` or executing, under lease ``lease_id``
idle       nothing to run now (retry backoff; later: sleeps, waits); run slots stay held
=========  ===========================================================================

The in-memory backlogs, leases and counters of a partition are rebuilt from these records
when the partition is assigned.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


BRANCH_MARK = "#"  # a branch job's id is ``<run job id>#<step hash[:16]>``


def dispatch_key(run_id: str, branch: str | None) -> str:
    """The run id for the run's job; ``<run id>#<hash[:16]>`` for a ``step.parallel`` branch."""
    return run_id if not branch else f"{run_id}{BRANCH_MARK}{branch[:16]}"


def job_dispatch_key(run_id: str, job_id: str) -> str:
    """The dispatch key of the job ``job_id`` of run ``run_id`` (an outcome names its job)."""
    _, mark, branch = job_id.rpartition(BRANCH_MARK)
    return dispatch_key(run_id, branch if mark else None)


class ActiveRun(BaseModel):
    run_id: str
    app_id: str
    function_id: str
    partition: int
    key: str = ""                 # the backlog (fairness, concurrency and throttle key values)
    enqueued_at: int              # the run's creation time: every step of the run scores by it
    priority_s: int = 0
    weight: int = 1
    limits: list[tuple[str, int, str]] = []   # (counter, limit, per)
    throttle: tuple[int, int, int] | None = None  # (limit, period_ms, burst)
    throttle_key: str | None = None
    phase: Literal["ready", "inflight", "idle"] = "ready"
    job_id: str = ""
    attempt: int = 0
    started: bool = False         # a job of this run has been dispatched before
    lease_id: str = ""
    lease_expires: int = 0
    dispatches: int = 0
    run_ended: bool = False       # the run ended while its step was executing
    finish_due: int | None = None  # the finish timeout's timer, set at the first dispatch
    branch: str | None = None     # a step.parallel branch job: its step's hash

    @property
    def dkey(self) -> str:
        """The record's key (table ``dispatch``, backlogs, leases)."""
        return dispatch_key(self.run_id, self.branch)

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()
