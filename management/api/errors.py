"""The API's errors: each one an HTTP status and a machine-readable code.

Every error response is ``{"code", "message", "requestId"}`` (plus ``"field"`` for validation),
whatever raised it; the middleware in ``app.py`` does the translation.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
]


class ApiError(Exception):
    """An error answered with ``status`` and ``code``; ``message`` says what to do."""

    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(ApiError):
    status = 400
    code = "BadRequest"


class Unauthorized(ApiError):
    status = 401
    code = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "Forbidden"


class NotFound(ApiError):
    status = 404
    code = "NotFound"


class Conflict(ApiError):
    status = 409
    code = "Conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PayloadTooLarge"


class Unprocessable(ApiError):
    """A body of the right shape that asks for what cannot work (a node could not run it)."""

    status = 422
    code = "Unprocessable"


class Unavailable(ApiError):
    status = 503
    code = "Unavailable"
