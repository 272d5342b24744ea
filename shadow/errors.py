"""The one error tree of the shadow, with the protocol code each error is answered with.

::

    ShadowError
    ├── RequestError            a request refused; ``code`` is its answer on the wire
    │   ├── BadRequest          400 malformed payload, wrong type, too deep, bad key
    │   ├── Forbidden           403 a topic the sender may not use
    │   ├── NotFound            404 no such resource (or not this node's)
    │   ├── Conflict            409 the write names a version that is no longer current
    │   ├── TooLarge            413 payload or resulting document over its limit
    │   ├── TooManyRequests     429 the node sends faster than its rate limit
    │   └── Unavailable         500 the store cannot take the write now; nothing was changed
    └── StoreError              the database failed (translated to Unavailable at the boundary)
        └── StaleWrite          a conditional write found another version in the row
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "RequestError",
    "ShadowError",
    "StaleWrite",
    "StoreError",
    "TooLarge",
    "TooManyRequests",
    "Unavailable",
]


class ShadowError(Exception):
    """Root of the shadow's errors; the message says what to do."""


class RequestError(ShadowError):
    """A request the shadow refuses; ``code`` is the status it is answered with."""

    code: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class BadRequest(RequestError):
    """400: the payload is malformed, has a wrong type, is too deep or uses a bad key."""

    code = 400


class Forbidden(RequestError):
    """403: the sender may not use this topic."""

    code = 403


class NotFound(RequestError):
    """404: no such resource for this node."""

    code = 404


class Conflict(RequestError):
    """409: the write names a version that is no longer the current one."""

    code = 409

    def __init__(self, message: str, *, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class TooLarge(RequestError):
    """413: the payload or the document it would produce is over its size limit."""

    code = 413


class TooManyRequests(RequestError):
    """429: the node sends faster than its rate limit allows."""

    code = 429


class Unavailable(RequestError):
    """500: the store could not take the write; nothing was changed, retry later."""

    code = 500


class StoreError(ShadowError):
    """The database failed; nothing of the failed transaction was kept."""


class StaleWrite(StoreError):
    """A conditional write found a version other than the one it was based on."""

    def __init__(self, node_ids: list[str]) -> None:
        super().__init__(
            f"{len(node_ids)} shadow(s) changed underneath this write "
            f"(first: {node_ids[0] if node_ids else '-'}); reload them and apply again."
        )
        self.node_ids = node_ids
