"""The one error tree of management, each error with the HTTP status and code it is answered with.

::

    ManagementError             500 InternalError  the root; the message says what to do
    ├── BadRequest              400 BadRequest     a request the API cannot take as sent
    ├── Unauthorized            401 Unauthorized   no, a malformed or an unknown bearer token
    ├── Forbidden               403 Forbidden
    ├── NotFound                404 NotFound
    ├── Conflict                409 Conflict
    ├── PayloadTooLarge         413 PayloadTooLarge
    ├── Unprocessable           422 Unprocessable  the right shape, asking what a node cannot run
    ├── Unavailable             503 Unavailable    the database or the broker is not reachable now
    ├── ValidationFailed        400 ValidationFailed  a body against its schema (``field``: where)
    │   └── SelectorError       400 ValidationFailed  a label selector or set (also a ValueError)
    ├── ResourceMissing         404 NotFound       (store.py; also the shadow's StoreError)
    ├── ResourceConflict        409 Conflict       (store.py; also the shadow's StoreError)
    ├── TokenError              401 Unauthorized   (tokens.py) an API or activation token refused
    │   ├── TokenMalformed, TokenForged, TokenExpired
    │   └── TokenKeyError       500 InternalError  the signing key file cannot be used
    ├── CryptoError             500 InternalError  (crypto.py) a keyring or a ciphertext unusable
    └── ConfigError             500 InternalError  (config.py) the configuration is invalid

The API's error middleware (``api/app.py``) answers a ``ManagementError`` with its ``status``,
``code``, message and ``field``, except the 500s, which are logged and answered with a generic
message (their text is for the operator's log, not for the caller). The shadow's errors come
from its own tree (``shadow.errors``): its ``Unavailable`` is the MQTT protocol's 500, which the
API answers 503 like a failed database (``StoreError``). The ``baetyl`` command prints any
``ManagementError`` as one line.

Not under the root: the command's API client errors (``cli/apiclient.py``: ``ClientError``, with
``ApiFailure`` and ``Unreachable``; ``cli/resources.py``: ``ManifestFileError``). They are raised
on the client's side, never answered by the API (``ApiFailure`` only carries the API's answer),
and their modules are loaded by every ``baetyl`` command, the edge agent's ``baetyl edge run``
included, which must load no module of the cloud (``tests/edge/test_agent_imports.py``); the
command catches them beside the root.

Standard library only: the ``baetyl`` command imports this at start.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "ManagementError",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "ValidationFailed",
]


class ManagementError(Exception):
    """An error answered with ``status`` and ``code``; ``message`` says what to do."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(ManagementError):
    status = 400
    code = "BadRequest"


class Unauthorized(ManagementError):
    status = 401
    code = "Unauthorized"


class Forbidden(ManagementError):
    status = 403
    code = "Forbidden"


class NotFound(ManagementError):
    status = 404
    code = "NotFound"


class Conflict(ManagementError):
    status = 409
    code = "Conflict"


class PayloadTooLarge(ManagementError):
    status = 413
    code = "PayloadTooLarge"


class Unprocessable(ManagementError):
    """A body of the right shape that asks for what cannot work (a node could not run it)."""

    status = 422
    code = "Unprocessable"


class Unavailable(ManagementError):
    status = 503
    code = "Unavailable"


class ValidationFailed(ManagementError):
    """A request body does not have the shape its schema asks for; ``field`` names where."""

    status = 400
    code = "ValidationFailed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)

    def __str__(self) -> str:
        return self.message
