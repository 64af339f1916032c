"""One refill of an in-flight window: which ready items go out now. Pure.

``pump(ready, tickets, free=..., ...) -> PumpResult``. No clock, Kafka or RocksDB here;
``now_ms`` is the dispatcher's wall clock. The caller (``processors/dispatcher.py``) keeps
the backlogs and states, forwards the released items and persists what comes back.

One pump serves one window: the jobs of one app on one work partition. ``ready`` is that
app's backlogs, ``{app: {function: {key: items in order_key order}}}`` (see
:mod:`.fair_selection`); ``tickets[item_id]`` says what releasing the item needs.

Loop, while the window has a free slot:

1. :func:`.fair_selection.select` one item among the *eligible* backlogs (weighted DRR over
   functions and keys, started runs first, then priority and age);
2. a backlog is eligible when its head fits every concurrency limit (:mod:`.concurrency`)
   and, for a run that has not started, its throttle allows a start now (:mod:`.throttle`);
   a throttled head wakes the caller at the first ms its bucket has room (``wake_at_ms``);
3. the released item takes its slots (a lease of ``lease_ms``) and its throttle start.

A replay's runs wait in backlogs of their own (key ``replay:<id>|<key>``); ``replay_free``,
when given, is how many of them may still go out (their share of the window, see
``Settings.replay_window_share``): once it is used, replay backlogs are blocked with
``window_full`` and the rest of the window stays free for live work, so a live run never
waits for a replayed run's step to end.

A blocked backlog keeps its items — nothing is dropped — and its reason is reported so the
API can say why a run waits: ``concurrency``, ``throttled``, ``window_full`` (a replay's
share); runs behind a full window wait for ``window_full`` (``PumpResult.window_full``).

Only heads are read, and each blocked head is judged once per refill: the cost is
O(released + blocked backlogs visited), never O(items).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..flow.rate_limit import GcraState
from . import concurrency as cc
from . import throttle as th
from .fair_selection import FairState, Item, Path, Picked, Weights, select, sorted_ids

Reason = Literal["concurrency", "throttled", "window_full"]
REPLAY_KEY_PREFIX = "replay:"


def replay_key(replay_id: str, key: str) -> str:
    """The backlog key of a replay's runs whose live runs' key is ``key``."""
    return f"{REPLAY_KEY_PREFIX}{replay_id}|{key}"


def is_replay_key(key: str) -> bool:
    return key.startswith(REPLAY_KEY_PREFIX)


def replay_share_free(window: int, share: float, replay_in_flight: int, free: int) -> int:
    """How many replayed jobs may go out now: at most ``share`` of the window (at least one
    slot) in flight at once, and never more than the window's free slots."""
    cap = max(1, int(window * share))
    return max(0, min(free, cap - replay_in_flight))


@dataclass(frozen=True)
class Ticket:
    """What releasing one ready item needs (the item's run, fixed at schedule time)."""

    item: Item
    run_id: str
    lease_id: str
    limits: tuple[cc.SlotLimit, ...] = ()
    throttle: th.Throttle | None = None
    throttle_key: str | None = None


@dataclass(frozen=True)
class Released:
    path: tuple[str, str, str]
    ticket: Ticket


@dataclass(frozen=True)
class PumpResult:
    released: tuple[Released, ...]
    fair: FairState
    concurrency: cc.ConcurrencyState
    throttle_puts: dict[str, GcraState] = field(default_factory=dict)
    blocked: dict[Path, Reason] = field(default_factory=dict)  # backlogs judged blocked, and why
    wake_at_ms: int | None = None   # earliest ms a throttled head may start
    window_full: bool = False       # the window ran out before the eligible items did


class _Tail(Sequence[Item]):
    """A backlog without its first ``start`` items (those released in this refill)."""

    def __init__(self, items: Sequence[Item], start: int) -> None:
        self.items, self.start = items, start

    def __len__(self) -> int:
        return max(0, len(self.items) - self.start)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("slices are not supported")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[self.start + i]


class _View(Mapping):
    """``ready`` with the released items taken off the heads, without copying backlogs."""

    def __init__(self, ready: Mapping, taken: Mapping[Path, int], path: Path = ()) -> None:
        self.ready, self.taken, self.path = ready, taken, path

    def __getitem__(self, k: str):  # type: ignore[override]
        child = self.ready[k]
        p = self.path + (k,)
        if len(p) == 3:
            n = self.taken.get(p, 0)
            return _Tail(child, n) if n else child
        return _View(child, self.taken, p)

    def __iter__(self):  # type: ignore[override]
        return iter(self.ready)

    def sorted_ids(self) -> Sequence[str]:
        return sorted_ids(self.ready)

    def __len__(self) -> int:
        return len(self.ready)


def pump(ready: Mapping, tickets: Mapping[str, Ticket], *, free: int, fair: FairState,
         concurrency: cc.ConcurrencyState, throttle_state: Callable[[str], GcraState | None],
         now_ms: int, lease_ms: int, weights: Weights = Weights(), replay_free: int | None = None) -> PumpResult:
    """Release up to ``free`` items of ``ready``, of them at most ``replay_free`` from replay
    backlogs (``None``: no separate cap) (see the module docstring)."""
    if free < 0:
        raise ValueError(f"free must be >= 0, got {free}")
    if replay_free is not None and replay_free < 0:
        raise ValueError(f"replay_free must be >= 0, got {replay_free}")
    replays_released = 0
    taken: dict[Path, int] = {}
    view = _View(ready, taken)
    puts: dict[str, GcraState] = {}
    blocked: dict[Path, Reason] = {}
    judged: dict[Path, bool] = {}
    wake: list[int] = []
    state = concurrency
    released: list[Released] = []

    def gcra(key: str) -> GcraState | None:
        return puts[key] if key in puts else throttle_state(key)

    def is_blocked(path: Path) -> bool:
        if len(path) < 3:
            return False
        if path in judged:
            return judged[path]
        items = view[path[0]][path[1]][path[2]]
        reason: Reason | None = None
        if len(items) and replay_free is not None and replays_released >= replay_free and is_replay_key(path[2]):
            reason = "window_full"
        elif len(items):
            head = items[0]
            t = tickets[head.item_id]
            if cc.blocking(state, t.limits, now_ms, lease_id=t.lease_id, run_id=t.run_id):
                reason = "concurrency"
            elif not head.started and t.throttle is not None and t.throttle_key is not None:
                d = th.decide(gcra(t.throttle_key), now_ms, t.throttle)
                if not d.allowed:
                    reason = "throttled"
                    wake.append(d.next_at_ms)
        judged[path] = reason is not None
        if reason is not None:
            blocked[path] = reason
        return reason is not None

    window_full = False
    while True:
        if len(released) >= free:
            window_full = _any_eligible(view, fair, weights, is_blocked)
            break
        sel = select(fair, view, 1, weights, blocked=is_blocked)
        fair = sel.state
        if not sel.picked:
            break
        picked: Picked = sel.picked[0]
        path = (picked.tenant, picked.function, picked.key)
        t = tickets[picked.item.item_id]
        got = cc.acquire(state, t.limits, lease_id=t.lease_id, run_id=t.run_id,
                         expires_ms=now_ms + lease_ms, now_ms=now_ms)
        if not got.acquired:
            # only when the ticket reuses a lease id that expired unreaped: hold the backlog
            # back for this refill rather than count the lease twice
            judged[path] = True
            blocked[path] = "concurrency"
            continue
        state = got.state
        if not picked.item.started and t.throttle is not None and t.throttle_key is not None:
            d = th.decide(gcra(t.throttle_key), now_ms, t.throttle)
            assert d.allowed and d.state is not None
            puts[t.throttle_key] = d.state
        released.append(Released(path, t))
        taken[path] = taken.get(path, 0) + 1
        if is_replay_key(picked.key):
            replays_released += 1
        judged.clear()  # the slots and heads changed: judge again
        blocked.clear()
        wake.clear()
    return PumpResult(tuple(released), fair, state, puts, dict(blocked),
                      min(wake) if wake else None, window_full)


def _any_eligible(view: Mapping, fair: FairState, weights: Weights, is_blocked: Callable[[Path], bool]) -> bool:
    return bool(select(fair, view, 1, weights, blocked=is_blocked).picked)
