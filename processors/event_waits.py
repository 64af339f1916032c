"""Which waiting runs an event resumes: the decision core of ``step.wait_for_event``,
invoke results and ``cancel_on``. Pure (no Kafka, faust or clock: ``now_ms`` is given).

The router stage calls it for every event of an app; the events of one app go through one
router partition in order, so one :class:`WaitIndex` and one :class:`LookbackBuffer` per
router partition see everything they need.

Holds:

* :class:`Waiter` — one pending wait (stored as JSON in the router's table).
* :func:`match_to_if`, :func:`bind_trigger`, :func:`make_waiter` — build a waiter.
* :func:`accepts`, :func:`first_match` — does an event resume one waiter.
* :class:`WaitIndex` — the live waiters of a partition; ``match(event)`` finds every one
  it resumes (equality expressions are answered by a dict lookup).
* :class:`LookbackBuffer` — recent events, so a wait registered late still sees the events
  accepted after its step was planned (inngest/inngest#1433).

Rules (reference §9, §13.1):

* ``match="data.x"`` is sugar for ``if="event.data.x == async.data.x"``; the two cannot
  be combined. In ``if``, ``event`` is the run's trigger event and ``async`` the candidate.
* ``event.*`` is filled in when the wait is created: the waiter keeps only the referenced
  values of the trigger event (``bound``), never the whole event.
* An event resumes a waiter when all hold:

  - same app and ``event.name == waiter.event``;
  - ``waiter.since_ms <= event.received_at < waiter.expires_ms`` (only events accepted
    after the wait's step was planned, and not after the wait timed out);
  - ``event.id != waiter.trigger_event_id`` (the trigger never resumes its own run);
  - no expression, or the expression evaluates to exactly ``true`` with
    ``{"event": bound, "async": payload}``. Any evaluation error (missing field, wrong
    type, uncompilable source) means "no match", never an exception.

  :meth:`WaitIndex.match` also requires the waiter to be live at ``now_ms``:
  ``now_ms < expires_ms``. A waiter is expired at ``now_ms >= expires_ms`` — the same
  instant its timeout timer (due at ``expires_ms``) fires, so the two never both win.
* One event may resume many waiters. Nothing here removes a waiter: the caller drops the
  ones it resolved or cleaned up.

Indexing: an expression that is ``async.<q> == event.<p>`` (either order), or
``async.<q> == <literal>`` (string, number, bool, null), is answered by a dict lookup on
``(q, value)``. A ``&&`` conjunction with such a term is looked up by one such term
(preferring one keyed by a trigger value over a literal) and then evaluated in full:
``false && x`` is false in CEL, so a lookup miss is never a match. Values are keyed so that
the lookup agrees with CEL's ``==``: strings, bools, null, and numbers strictly within
±2**53 (int 5 and double 5.0 are equal; a bool is not a number). Anything else — other
expressions, lists/maps, huge numbers — is evaluated one by one. A waiter whose equality
term reads a field the trigger event lacks can never match and costs nothing at match time.
"""

from __future__ import annotations

import copy
import functools
import heapq
import math
import re
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput
from ..expressions import ExpressionError, InvalidExpression, compile_expression, evaluate, match_expression
from ..wire import EventRecord

SKEW_MS = 10_000
"""How far ``received_at`` may go backwards between two events of one partition."""

Purpose = Literal["step", "invoke", "cancel"]
Path = tuple[str, ...]


class InvalidMatch(InvalidInput, ValueError):
    code = "invalid_match"


class Waiter(BaseModel):
    """One pending wait. Stored as JSON (:meth:`dumps`/:meth:`loads`): never rename fields
    without a migration."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    wait_id: str
    app_id: str
    function_id: str
    run_id: str
    event: str = Field(description="the event name waited for")
    if_exp: str | None = Field(None, description="CEL over event (the trigger) and async (the candidate)")
    bound: dict[str, Any] = Field(default_factory=dict, description="the trigger's values that if_exp references")
    since_ms: int = Field(description="only events with received_at >= since_ms")
    expires_ms: int = Field(description="live while now_ms < expires_ms")
    trigger_event_id: str | None = None
    purpose: Purpose = "step"

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def loads(cls, raw: bytes | str) -> Waiter:
        return cls.model_validate_json(raw)


# ---------------------------------------------------------------------------- building

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def match_to_if(match: str) -> str:
    """``"data.user.id"`` → ``"event.data.user.id == async.data.user.id"``.

    ``match`` must be a dotted path of identifiers relative to the event (``data.x``,
    ``user.x``, ...); raises :class:`InvalidMatch` (a ``ValueError``) otherwise
    (:func:`sluicegate.expressions.match_expression` holds the rule).
    """
    try:
        return match_expression(match)
    except InvalidExpression as exc:
        raise InvalidMatch(exc.message, field="match") from None


# A CEL string literal: raw (no escapes) or not, optionally bytes, single/double/triple quoted.
_STRING = (r"(?:[bB]?[rR]|[rR][bB])(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"[^\"\n]*\"|'[^'\n]*')"
           r"|[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''"
           r"|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')")
_STRING_RE = re.compile(_STRING)
# `event` followed by its dotted field chain; group 2 set when the chain is called (a method).
_EVENT_REF = re.compile(rf"(?:{_STRING})|(?<![\w.])event\b((?:\s*\.\s*{_IDENT})*)(\s*\()?")


def event_paths(if_exp: str) -> list[Path]:
    """The ``event.<path>`` references of an expression, outside string literals, in order.

    A bare ``event`` (or ``event[...]``) gives the empty path (the whole event); a chain
    that is called (``event.data.s.startsWith(...)``) loses its last segment (the method).
    """
    out: list[Path] = []
    for m in _EVENT_REF.finditer(if_exp):
        chain = m.group(1)
        if chain is None:  # a string literal
            continue
        path = tuple(seg.strip() for seg in chain.split(".")[1:])
        if m.group(2) and path:
            path = path[:-1]
        if path not in out:
            out.append(path)
    return out


@functools.lru_cache(maxsize=4096)
def _binding_paths(if_exp: str) -> tuple[Path, ...]:
    """:func:`event_paths` minus those covered by a shorter one (shortest first)."""
    done: list[Path] = []
    for path in sorted(event_paths(if_exp), key=len):
        if not any(path[:len(p)] == p for p in done):
            done.append(path)
    return tuple(done)


def bind_trigger(if_exp: str, trigger_event: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sparse part of the trigger event that ``if_exp`` reads as ``event.*``.

    Each referenced path is copied with its value; containers on the way are kept (so
    ``has(event.data.x)`` still works), a missing key is simply absent (evaluating it then
    errors, i.e. no match). A path covered by a shorter one is not copied twice.
    """
    if not trigger_event:
        return {}
    out: dict[str, Any] = {}
    for path in _binding_paths(if_exp):
        if not path:
            return copy.deepcopy(dict(trigger_event))
        _copy_path(trigger_event, out, path)
    return out


_SCALARS = (str, int, float, bool, type(None))


def _copy_path(src: Mapping[str, Any], dst: dict[str, Any], path: Path) -> None:
    for i, key in enumerate(path):
        if key not in src:
            return
        value = src[key]
        if i == len(path) - 1 or not isinstance(value, Mapping):
            # the leaf, or a non-map on the way (CEL errors on it just the same)
            dst[key] = value if isinstance(value, _SCALARS) else copy.deepcopy(value)
            return
        dst = dst.setdefault(key, {})
        src = value


def make_waiter(*, wait_id: str, app_id: str, function_id: str, run_id: str, event: str,
                since_ms: int, expires_ms: int, trigger_event: Mapping[str, Any] | None,
                match: str | None = None, if_exp: str | None = None, purpose: Purpose = "step") -> Waiter:
    """A waiter from a wait's options: resolves ``match``, validates the expression (raises
    :class:`~sluicegate.expressions.InvalidExpression` / :class:`InvalidMatch`) and binds
    ``event.*`` to ``trigger_event`` (the run's first event payload, or None)."""
    if match and if_exp:
        raise InvalidMatch("match and if cannot be combined", field="match")
    source = match_to_if(match) if match else (if_exp or None)
    if source:
        compile_expression(source, field="match" if match else "if")
    return Waiter(wait_id=wait_id, app_id=app_id, function_id=function_id, run_id=run_id, event=event,
                  if_exp=source, bound=bind_trigger(source, trigger_event) if source else {},
                  since_ms=since_ms, expires_ms=expires_ms,
                  trigger_event_id=(trigger_event or {}).get("id"), purpose=purpose)


# ---------------------------------------------------------------------------- equality shape

_SAFE = 2**53
_MISSING: Any = object()


def equality_key(value: Any) -> Hashable | None:
    """A dict key such that two values have equal keys iff CEL's ``==`` says they are equal,
    or None when the value is not indexable (lists, maps, bytes, NaN/inf, |n| >= 2**53).

    CEL compares int and double numerically (converting the int to double), so only numbers
    strictly within ±2**53, where that conversion is exact, are keyed; Python then compares
    them exactly like CEL (``("n", 5) == ("n", 5.0)``, ``-0.0 == 0``).
    """
    if value is None:
        return ("z",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, int):
        return ("n", value) if -_SAFE < value < _SAFE else None
    if isinstance(value, float):
        return ("n", value) if math.isfinite(value) and -_SAFE < value < _SAFE else None
    return None


def _walk(value: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


_PATH = rf"(?:\s*\.\s*{_IDENT})+"
_SIDE_PATH = re.compile(rf"(event|async)({_PATH})")
_NUMBER = (r"-?(?:0[xX][0-9a-fA-F]+|\d+\.\d+(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
           r"|\d+(?:[eE][+-]?\d+)?)[uU]?")
_SIDE = rf"(?:(?:event|async){_PATH}|{_STRING}|true|false|null|{_NUMBER})"
_EQUALITY = re.compile(rf"\s*({_SIDE})\s*==\s*({_SIDE})\s*")


@dataclass(frozen=True)
class _Term:
    """``async.<q> == event.<p>`` (``p`` set) or ``async.<q> == <literal>`` (``key`` set)."""

    q: Path
    p: Path | None
    key: Hashable | None


@dataclass(frozen=True)
class _Shape:
    terms: tuple[_Term, ...]  # the indexable equality conjuncts, in source order
    pure: bool  # the whole expression is one such term


def _split_conjuncts(src: str) -> list[str] | None:
    """The top-level ``&&`` operands, or None when there is a top-level ``||`` or ``?:``,
    a comment, or unbalanced brackets (then nothing is indexed)."""
    parts: list[str] = []
    depth = start = i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in "\"'rRbB":
            m = _STRING_RE.match(src, i)
            if m:
                i = m.end()
                continue
        if c.isalnum() or c == "_":
            while i < n and (src[i].isalnum() or src[i] == "_"):
                i += 1
            continue
        if src.startswith("//", i):
            return None
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            if src.startswith("&&", i):
                parts.append(src[start:i])
                i += 2
                start = i
                continue
            if src.startswith("||", i) or c == "?":
                return None
        i += 1
    if depth:
        return None
    parts.append(src[start:])
    return parts


def _side(text: str) -> tuple[str, Any]:
    m = _SIDE_PATH.fullmatch(text)
    if m:
        return m.group(1), tuple(seg.strip() for seg in m.group(2).split(".")[1:])
    try:
        return "literal", equality_key(evaluate(text, {}))
    except (ExpressionError, ValueError, RuntimeError):
        return "literal", None


def _term(conjunct: str) -> _Term | None:
    m = _EQUALITY.fullmatch(conjunct)
    if not m:
        return None
    sides = [_side(m.group(1)), _side(m.group(2))]
    asyncs = [s for s in sides if s[0] == "async"]
    if len(asyncs) != 1:
        return None
    other = sides[1] if sides[0][0] == "async" else sides[0]
    if other[0] == "event":
        return _Term(q=asyncs[0][1], p=other[1], key=None)
    return _Term(q=asyncs[0][1], p=None, key=other[1]) if other[1] is not None else None


@functools.lru_cache(maxsize=4096)
def _shape(if_exp: str) -> _Shape:
    try:
        compile_expression(if_exp, field="if")
    except InvalidInput:
        return _Shape((), False)
    parts = _split_conjuncts(if_exp)
    if parts is None:
        return _Shape((), False)
    terms = [_term(p) for p in parts]
    found = tuple(t for t in terms if t is not None)
    return _Shape(found, pure=len(parts) == 1 and len(found) == 1)


class _Plan(NamedTuple):
    """How to test one waiter: ``all`` (no expression), ``never`` (an equality term reads a
    field the trigger lacks), ``eq`` (look up ``key`` at ``async.<q>``; then evaluate when
    ``evaluate``), or ``scan`` (evaluate)."""

    kind: Literal["all", "never", "eq", "scan"]
    q: Path = ()
    key: Hashable | None = None
    evaluate: bool = True


def _plan(w: Waiter) -> _Plan:
    if not w.if_exp:
        return _Plan("all", evaluate=False)
    shape = _shape(w.if_exp)
    bound_terms: list[_Plan] = []  # keyed by a trigger value: usually the most selective
    literal_terms: list[_Plan] = []
    for term in shape.terms:
        if term.p is None:
            literal_terms.append(_Plan("eq", term.q, term.key, evaluate=not shape.pure))
            continue
        value = _walk(w.bound, term.p)
        if value is _MISSING:
            return _Plan("never")  # this conjunct errors, so the whole expression is never true
        key = equality_key(value)
        if key is not None:
            bound_terms.append(_Plan("eq", term.q, key, evaluate=not shape.pure))
    return (bound_terms or literal_terms or [_Plan("scan")])[0]


def _eval_true(w: Waiter, payload: dict[str, Any]) -> bool:
    try:
        return evaluate(w.if_exp or "true", {"event": w.bound, "async": payload}) is True
    except (ExpressionError, ValueError, RuntimeError):
        return False


def _plan_accepts(plan: _Plan, w: Waiter, payload: dict[str, Any]) -> bool:
    if plan.kind == "all":
        return True
    if plan.kind == "never":
        return False
    if plan.kind == "eq" and equality_key(_walk(payload, plan.q)) != plan.key:
        return False
    return not plan.evaluate or _eval_true(w, payload)


def _eligible(w: Waiter, app_id: str, name: str, event_id: str, received_at: int) -> bool:
    return (w.app_id == app_id and w.event == name and w.since_ms <= received_at < w.expires_ms
            and event_id != w.trigger_event_id)


def accepts(waiter: Waiter, event: EventRecord) -> bool:
    """Does ``event`` resume ``waiter`` (every rule but liveness at a given ``now_ms``)?"""
    if not _eligible(waiter, event.app_id, event.name, event.id, event.received_at):
        return False
    return _plan_accepts(_plan(waiter), waiter, event.as_payload())


def first_match(waiter: Waiter, events: Iterable[EventRecord]) -> dict[str, Any] | None:
    """The payload of the first of ``events`` that resumes ``waiter``, or None."""
    plan = _plan(waiter)
    for event in events:
        if (_eligible(waiter, event.app_id, event.name, event.id, event.received_at)
                and _plan_accepts(plan, waiter, payload := event.as_payload())):
            return payload
    return None


# ---------------------------------------------------------------------------- the index

class _Entry:
    __slots__ = ("seq", "waiter", "plan")

    def __init__(self, seq: int, waiter: Waiter, plan: _Plan) -> None:
        self.seq = seq
        self.waiter = waiter
        self.plan = plan


class _Group:
    """The waiters of one (app, event name)."""

    __slots__ = ("eq", "scan", "never")

    def __init__(self) -> None:
        self.eq: dict[Path, dict[Hashable, dict[str, _Entry]]] = {}
        self.scan: dict[str, _Entry] = {}  # "all" and "scan" plans, in insertion order
        self.never: dict[str, _Entry] = {}

    def __bool__(self) -> bool:
        return bool(self.eq or self.scan or self.never)


class WaitIndex:
    """The live waiters of one router partition.

    ``match`` costs a dict lookup per distinct ``async.<q>`` path of indexed waiters of the
    event's name, plus one CEL evaluation (~12 µs) per waiter that could not be indexed (or
    per bucket hit of a conjunction). Expiry is a lazy min-heap.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._heap: list[tuple[int, int, str]] = []  # (expires_ms, seq, wait_id); stale rows skipped
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, wait_id: object) -> bool:
        return wait_id in self._entries

    def get(self, wait_id: str) -> Waiter | None:
        entry = self._entries.get(wait_id)
        return entry.waiter if entry else None

    def add(self, waiter: Waiter) -> None:
        """Add (or replace: same ``wait_id``) a waiter."""
        if waiter.wait_id in self._entries:
            self.drop(waiter.wait_id)
        self._seq += 1
        plan = _plan(waiter)
        entry = _Entry(self._seq, waiter, plan)
        self._entries[waiter.wait_id] = entry
        group = self._groups.setdefault((waiter.app_id, waiter.event), _Group())
        if plan.kind == "eq":
            group.eq.setdefault(plan.q, {}).setdefault(plan.key, {})[waiter.wait_id] = entry
        elif plan.kind == "never":
            group.never[waiter.wait_id] = entry
        else:
            group.scan[waiter.wait_id] = entry
        heapq.heappush(self._heap, (waiter.expires_ms, entry.seq, waiter.wait_id))

    def drop(self, wait_id: str) -> Waiter | None:
        """Remove a waiter; returns it, or None when it was not there."""
        entry = self._entries.pop(wait_id, None)
        if entry is None:
            return None
        w, plan = entry.waiter, entry.plan
        gkey = (w.app_id, w.event)
        group = self._groups[gkey]
        if plan.kind == "eq":
            buckets = group.eq[plan.q]
            bucket = buckets[plan.key]
            del bucket[wait_id]
            if not bucket:
                del buckets[plan.key]
                if not buckets:
                    del group.eq[plan.q]
        elif plan.kind == "never":
            del group.never[wait_id]
        else:
            del group.scan[wait_id]
        if not group:
            del self._groups[gkey]
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [(e.waiter.expires_ms, e.seq, wid) for wid, e in self._entries.items()]
            heapq.heapify(self._heap)
        return w

    def match(self, event: EventRecord, now_ms: int) -> list[Waiter]:
        """Every live waiter (``now_ms < expires_ms``) that ``event`` resumes, in the order
        they were added. Removes nothing."""
        group = self._groups.get((event.app_id, event.name))
        if group is None:
            return []
        payload = event.as_payload()
        received_at, event_id = event.received_at, event.id
        hits: list[_Entry] = []

        def live(w: Waiter) -> bool:
            return (w.since_ms <= received_at < w.expires_ms and now_ms < w.expires_ms
                    and event_id != w.trigger_event_id)

        for q, buckets in group.eq.items():
            key = equality_key(_walk(payload, q))
            bucket = buckets.get(key) if key is not None else None
            if bucket:
                for entry in bucket.values():
                    w = entry.waiter
                    if live(w) and (not entry.plan.evaluate or _eval_true(w, payload)):
                        hits.append(entry)
        for entry in group.scan.values():
            if live(entry.waiter) and _plan_accepts(entry.plan, entry.waiter, payload):
                hits.append(entry)
        if len(hits) > 1:
            hits.sort(key=lambda e: e.seq)
        return [e.waiter for e in hits]

    def expired(self, now_ms: int) -> list[Waiter]:
        """The waiters with ``expires_ms <= now_ms``, soonest first. Removes nothing (the
        caller drops what it cleaned up); costs O(k log n) for k expired."""
        due: list[tuple[int, int, str]] = []
        out: list[Waiter] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            row = heapq.heappop(heap)
            entry = self._entries.get(row[2])
            if entry is not None and entry.seq == row[1]:
                due.append(row)
                out.append(entry.waiter)
        for row in due:
            heapq.heappush(heap, row)
        return out

    def indexed_count(self) -> int:
        """How many waiters are answered by a dict lookup (no per-event evaluation)."""
        return sum(len(b) for g in self._groups.values() for bs in g.eq.values() for b in bs.values())

    def counts(self) -> dict[str, int]:
        """``indexed`` (dict lookup), ``scanned`` (checked one by one), ``never`` (cannot match)."""
        return {"indexed": self.indexed_count(),
                "scanned": sum(len(g.scan) for g in self._groups.values()),
                "never": sum(len(g.never) for g in self._groups.values())}


# ---------------------------------------------------------------------------- lookback

class _Buffered(NamedTuple):
    offset: int
    app_id: str
    name: str
    id: str
    received_at: int
    payload: dict[str, Any]


class LookbackBuffer:
    """The recent events of one router partition, in arrival (offset) order.

    A wait's step is planned at ``since_ms``, but its waiter reaches the router later; the
    events accepted in between already went by. On registering a waiter, the router asks
    :meth:`candidates` (when :meth:`covers` says the buffer can answer) so those events
    still count.

    Bounds: at most ``max_events`` events; on :meth:`append`/:meth:`evict`, events are
    evicted from the oldest *arrival* while there are too many or while the oldest has
    ``received_at < now_ms - max_age_ms`` (an old event behind a newer head stays a little
    longer; harmless). Memory: one small tuple plus the event's payload dict per event
    (~0.5-2 KB for typical events: 10k events ≈ 5-20 MB).

    :meth:`covers` (``since_ms``) is True only when every event of the partition with
    ``received_at >= since_ms`` that ever arrived is still buffered. Within a partition
    ``received_at`` can go backwards by up to :data:`SKEW_MS`, so:

    * after an eviction: covered iff ``newest_evicted_ms < since_ms - SKEW_MS``, where
      ``newest_evicted_ms`` is the largest ``received_at`` ever evicted (the evicted events
      are older than ``since_ms``, and so — by the skew bound — is everything that arrived
      before the buffer's first event, which was itself evicted);
    * with nothing evicted yet: covered iff ``started_at_ms < since_ms - SKEW_MS``, where
      ``started_at_ms`` (given by the caller) bounds the ``received_at`` of every event
      the partition delivered before this buffer's first one (e.g. the router's clock when
      it took the partition).

    Appending an offset not above the last one is ignored (a redelivery after a restart).
    """

    def __init__(self, *, started_at_ms: int, max_events: int = 10_000, max_age_ms: int = 120_000) -> None:
        if max_events < 1 or max_age_ms < 0:
            raise ValueError("max_events must be >= 1 and max_age_ms >= 0")
        self.started_at_ms = started_at_ms
        self.max_events = max_events
        self.max_age_ms = max_age_ms
        self.started_offset: int | None = None
        self.last_offset: int | None = None
        self.newest_evicted_ms: int | None = None
        self._events: deque[_Buffered] = deque()

    def __len__(self) -> int:
        return len(self._events)

    def append(self, offset: int, event: EventRecord, now_ms: int) -> None:
        """Buffer the event at ``offset`` (ignored unless above the last offset), then evict."""
        if self.last_offset is not None and offset <= self.last_offset:
            return
        if self.started_offset is None:
            self.started_offset = offset
        self.last_offset = offset
        self._events.append(_Buffered(offset, event.app_id, event.name, event.id, event.received_at,
                                      event.as_payload()))
        self.evict(now_ms)

    def evict(self, now_ms: int) -> int:
        """Evict by count and age; returns how many were evicted."""
        events, oldest_kept, n = self._events, now_ms - self.max_age_ms, 0
        while events and (len(events) > self.max_events or events[0].received_at < oldest_kept):
            gone = events.popleft()
            n += 1
            if self.newest_evicted_ms is None or gone.received_at > self.newest_evicted_ms:
                self.newest_evicted_ms = gone.received_at
        return n

    def covers(self, since_ms: int) -> bool:
        """Does the buffer still hold every event with ``received_at >= since_ms`` (rule above)?"""
        horizon = self.started_at_ms if self.newest_evicted_ms is None else self.newest_evicted_ms
        return horizon < since_ms - SKEW_MS

    def candidates(self, waiter: Waiter) -> list[dict[str, Any]]:
        """The buffered payloads that resume ``waiter``, in arrival order."""
        plan = _plan(waiter)
        return [b.payload for b in self._events
                if _eligible(waiter, b.app_id, b.name, b.id, b.received_at) and _plan_accepts(plan, waiter, b.payload)]

    def offsets(self) -> list[int]:
        """The buffered offsets, in arrival order (introspection)."""
        return [b.offset for b in self._events]
