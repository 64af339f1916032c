"""Durations as users write them: ``int`` milliseconds, ``datetime.timedelta``, or a
Go-style string (``"300ms"``, ``"30s"``, ``"2h45m"``, ``"7d"``, ``"1w"``; reference §0).

:func:`to_ms` turns any of them into whole milliseconds or raises ``ValueError`` naming the
field and the allowed range.
"""

from __future__ import annotations

import datetime as dt
import math
import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

DAY_MS = 86_400_000
MAX_SLEEP_MS = 366 * DAY_MS  # sleep, sleep_until, wait_for_event and invoke timeouts (reference §0)


def _parse(text: str) -> float | None:
    pos, total = 0, 0.0
    text = text.strip()
    if not text:
        return None
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    return total


def to_ms(value: object, *, field: str, minimum: int = 0, maximum: int = MAX_SLEEP_MS) -> int:
    """``value`` in whole ms, within ``[minimum, maximum]``; else ``ValueError`` naming ``field``."""
    if isinstance(value, bool):
        ms: float | None = None
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        ms = value
    elif isinstance(value, dt.timedelta):
        ms = value.total_seconds() * 1000
    elif isinstance(value, str):
        ms = _parse(value)
    else:
        ms = None
    if ms is not None and not math.isfinite(ms):
        ms = None
    if ms is None:
        raise ValueError(f"{field}: expected milliseconds (int), a timedelta or a duration string such as "
                         f"'30s', '2h45m' or '7d'; got {value!r}")
    out = int(round(ms))
    if not minimum <= out <= maximum:
        raise ValueError(f"{field}: must be between {_human(minimum)} and {_human(maximum)}; got {_human(out)}")
    return out


def _human(ms: int) -> str:
    if ms % DAY_MS == 0 and ms:
        return f"{ms // DAY_MS} days" if ms != DAY_MS else "1 day"
    if ms % 1000 == 0:
        return f"{ms // 1000} s"
    return f"{ms} ms"
