"""One error tree with stable codes. Bad input names the field and the limit."""

from __future__ import annotations

from typing import Any


class SluicegateError(Exception):
    """Root of every error Sluicegate raises on purpose. ``code`` never changes."""

    code = "sluicegate_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.fields}


class InvalidInput(SluicegateError):
    """Input broke a rule; ``field`` names where, ``limit`` names the rule when there is one."""

    code = "invalid_input"

    def __init__(self, message: str, *, field: str, limit: Any = None) -> None:
        super().__init__(message, field=field, limit=limit)
        self.field = field
        self.limit = limit


class LimitExceeded(InvalidInput):
    code = "limit_exceeded"


class Unauthorized(SluicegateError):
    code = "unauthorized"


class NotFound(SluicegateError):
    code = "not_found"


class BrokerUnavailable(SluicegateError):
    code = "broker_unavailable"
