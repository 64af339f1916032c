"""Identifiers that end up in topic names and state keys: app ids and function ids."""

from __future__ import annotations

import re

from . import limits
from .errors import InvalidInput

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ID_RULE = "use letters, digits, '.', '_' and '-' (starting with a letter or digit)"


def check_id(value: str, *, field: str) -> str:
    """Return ``value`` or raise :class:`InvalidInput` naming ``field``: ids become part of
    topic names (``sg.work.<app>``) and of '/'-separated state keys."""
    if not isinstance(value, str) or not 1 <= len(value) <= limits.MAX_ID_LENGTH:
        raise InvalidInput(f"{field}: 1 to {limits.MAX_ID_LENGTH} characters", field=field,
                           limit=limits.MAX_ID_LENGTH)
    if not ID_PATTERN.match(value):
        raise InvalidInput(f"{field}: {value!r} is not a valid id: {ID_RULE}", field=field)
    return value
