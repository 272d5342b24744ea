"""Node properties on the node: the cloud's desired ones, the reported ones, the agent's own.

The desired properties come with the desired document (``nodeprops``). Programs on the node
read them, and report their own, through the agent's local endpoint (:func:`property_routes`,
served beside the function proxy on ``127.0.0.1``)::

    GET   /node/properties   -> {"desire": {...}, "report": {...}, "refused": {...}}
    PATCH /node/properties   <- {"temp": 21.5, "old": null}   (a merge patch; null deletes)

Keys starting with ``baetyl.`` are the agent's: it applies the desired value itself, reports
the value in effect under the same key, and refuses what it cannot apply (a wrong type, out of
range, an unknown key) with a cause under ``nodepropsRefused``; apps may not set them. The one
agent property is ``baetyl.keepalive``, the MQTT keepalive in whole seconds from 5 to 600
(absent: the agent's default, 30 s); the broker drops a connection silent for
ceil(1.5 x keepalive) s, which bounds how long a half-open link shows the node online.

Reports go through the agent's report queue (coalesced, re-sent, kept over a restart); what
apps reported is also kept in ``<state-dir>/properties.json`` (0600), so that ``GET`` answers
the same after a restart and a full report (after every reconnect) carries all of it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shadow import JSONObject, Limits, RequestError, merge, validate

if TYPE_CHECKING:  # aiohttp is loaded with the local endpoint's server (edge.functions.forward)
    from aiohttp import web

__all__ = [
    "KEEPALIVE",
    "KEEPALIVE_RANGE",
    "MAX_BODY",
    "REFUSED",
    "REPORTED",
    "RESERVED_PREFIX",
    "NodeProperties",
    "PropertyError",
    "is_loopback",
    "property_routes",
]

log = logging.getLogger(__name__)

REPORTED: Final = "nodeprops"
"""The key of the properties in the desired and the reported state."""
REFUSED: Final = "nodepropsRefused"
"""The reported key holding, per agent property the agent could not apply, the cause."""
RESERVED_PREFIX: Final = "baetyl."
KEEPALIVE: Final = "baetyl.keepalive"
KEEPALIVE_RANGE: Final = (5, 600)
MAX_BODY: Final = 16 * 1024
"""The largest ``PATCH`` body, in bytes."""
LIMITS: Final = Limits(max_bytes=16 * 1024, max_depth=4, max_key_length=128)
"""What the reported properties may hold, all of them together (leaving room in the 64 KiB
reported state for the node's other reports)."""
MAX_KEYS: Final = 256  # as many as the cloud lets an operator desire
_FILE_FORMAT: Final = 1


class PropertyError(Exception):
    """A property update refused; ``status`` is its HTTP status, the message says what to do."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _keepalive(value: object) -> int:
    """The keepalive a desired value asks for; ValueError with the cause if it cannot be."""
    low, high = KEEPALIVE_RANGE
    if type(value) is not int and not (isinstance(value, float) and value.is_integer()):
        raise ValueError(
            f"{KEEPALIVE} must be a whole number of seconds from {low} to {high}, not "
            f"{json.dumps(value)}; set it to a number such as 30."
        )
    seconds = int(value)
    if not low <= seconds <= high:
        raise ValueError(
            f"{KEEPALIVE} must be from {low} to {high} seconds, not {seconds}; the agent keeps "
            "the keepalive in effect until it is."
        )
    return seconds


class NodeProperties:
    """The node's properties as the agent knows them; reports go to ``report`` (the queue's put).

    ``default_keepalive`` is the keepalive when none is desired. ``activation`` ties the
    kept file to this activation: a node activated again starts with no reported properties.
    """

    def __init__(
        self,
        path: Path,
        *,
        activation: str,
        default_keepalive: int,
        report: Callable[[JSONObject], None],
    ) -> None:
        self._path = path
        self._activation = activation
        self._default_keepalive = _keepalive(default_keepalive)
        self._report = report
        self._desired: JSONObject = {}
        self._apps: JSONObject = self._load()  # what apps reported
        self._own: JSONObject = {KEEPALIVE: self._default_keepalive}  # the agent's, in effect
        self._refused: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------------

    @property
    def keepalive(self) -> int:
        """The MQTT keepalive in effect, in seconds."""
        value = self._own[KEEPALIVE]
        assert isinstance(value, int)
        return value

    @property
    def desired(self) -> JSONObject:
        return dict(self._desired)

    @property
    def reported(self) -> JSONObject:
        """Every reported property: the apps' and the agent's own."""
        return {**self._apps, **self._own}

    @property
    def refused(self) -> dict[str, str]:
        """Per agent property that could not be applied, why."""
        return dict(self._refused)

    def view(self) -> JSONObject:
        """What ``GET /node/properties`` answers."""
        return {"desire": self.desired, "report": self.reported, "refused": self.refused}

    def full_patch(self) -> JSONObject:
        """The report patch carrying every property (for a full report)."""
        return {REPORTED: self.reported, REFUSED: self.refused or None}

    # -- the cloud's side ------------------------------------------------------------------------

    def desire(self, nodeprops: object) -> None:
        """Take the desired properties (``nodeprops`` of a desired document) and apply the
        agent's own; what changed in them is reported."""
        self._desired = dict(nodeprops) if isinstance(nodeprops, dict) else {}
        own: JSONObject = {KEEPALIVE: self._own[KEEPALIVE]}
        refused: dict[str, str] = {}
        for key, value in self._desired.items():
            if not key.startswith(RESERVED_PREFIX):
                continue
            if key != KEEPALIVE:
                refused[key] = (
                    f"{key} is not a property the agent knows (it knows {KEEPALIVE}); "
                    f"remove it, or use a name not starting with {RESERVED_PREFIX!r}."
                )
                continue
            try:
                own[KEEPALIVE] = _keepalive(value)
            except ValueError as exc:
                refused[key] = str(exc)
        if KEEPALIVE not in self._desired:
            own[KEEPALIVE] = self._default_keepalive
        patch: JSONObject = {}
        changed = {k: v for k, v in own.items() if self._own.get(k) != v}
        if changed:
            patch[REPORTED] = changed
        if refused != self._refused:
            gone: JSONObject = {key: None for key in self._refused if key not in refused}
            patch[REFUSED] = {**gone, **refused} if refused else None
        for key, cause in refused.items():
            if self._refused.get(key) != cause:
                log.warning("desired node property %s refused: %s", key, cause)
        self._own, self._refused = own, refused
        if patch:
            self._report(patch)

    # -- the apps' side --------------------------------------------------------------------------

    def update(self, patch: object) -> JSONObject:
        """Apply an app's merge patch to the reported properties, keep and report it.

        Raises :class:`PropertyError` (nothing changed) for what is not a JSON object of
        properties within the limits, or for a key of the agent's.
        """
        if not isinstance(patch, dict):
            raise PropertyError(
                'The body must be a JSON object of properties, e.g. {"temp": 21.5}; '
                "a null value deletes a property."
            )
        for key in patch:
            if key.startswith(RESERVED_PREFIX):
                raise PropertyError(
                    f"{key!r}: properties starting with {RESERVED_PREFIX!r} are the agent's, "
                    "set from the cloud; report yours under another name.",
                    status=403,
                )
        try:
            validate(patch, LIMITS, path="properties")
            updated = merge(self._apps, patch)
            validate(updated, LIMITS, path="the reported properties")
        except RequestError as exc:
            raise PropertyError(exc.message, status=exc.code) from None
        if len(updated) > MAX_KEYS:
            raise PropertyError(
                f"The node would report {len(updated)} properties; at most {MAX_KEYS} are "
                "allowed. Delete some (set them to null)."
            )
        if updated != self._apps:
            self._apps = updated
            self._save()
            self._report({REPORTED: dict(patch)})
        return self.view()

    # -- the file --------------------------------------------------------------------------------

    def _load(self) -> JSONObject:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the node properties kept in %s: %s", self._path, exc)
            return {}
        if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
            log.warning("ignoring %s: not a node properties file of this agent", self._path)
            return {}
        if data.get("activation") != self._activation:
            log.info("the node was activated again: the properties apps reported are dropped")
            return {}
        reported = data.get("reported")
        if not isinstance(reported, dict):
            return {}
        try:
            return validate(reported, LIMITS, path=str(self._path))
        except RequestError as exc:
            log.warning("ignoring %s: %s", self._path, exc.message)
            return {}

    def _save(self) -> None:
        """Write what apps reported (0600, fsynced, renamed); a failure is logged, not raised:
        the report is queued either way and the file is written again at the next change."""
        text = json.dumps(
            {"format": _FILE_FORMAT, "activation": self._activation, "reported": self._apps},
            separators=(",", ":"),
        )
        try:
            fd, temporary = tempfile.mkstemp(
                prefix=f".{self._path.name}.", suffix=".tmp", dir=self._path.parent
            )
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(temporary, self._path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("could not keep the node properties in %s: %s", self._path, exc)


# -- the local endpoint ----------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"code": code, "message": message}, status=status)


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is this machine's loopback (only such callers are served)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # a dual-stack socket's IPv4 caller
    return address.is_loopback


def property_routes(properties: NodeProperties) -> list[web.RouteDef]:
    """``GET`` and ``PATCH /node/properties`` on the agent's local endpoint."""
    from aiohttp import web

    def refused_caller(request: web.Request) -> web.Response | None:
        if is_loopback(request.remote):
            return None
        return _error(
            403,
            "NotLocal",
            "Only programs on this node may read or report its properties; call "
            "http://127.0.0.1 from the node itself.",
        )

    async def get(request: web.Request) -> web.Response:
        return refused_caller(request) or web.json_response(properties.view())

    async def patch(request: web.Request) -> web.Response:
        refused = refused_caller(request)
        if refused is not None:
            return refused
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(
                413,
                "TooLarge",
                f"The body is {request.content_length} bytes; the limit is {MAX_BODY}. "
                "Report fewer or smaller properties at a time.",
            )
        body = await _read_capped(request, MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _error(
                413,
                "TooLarge",
                f"The body is over {MAX_BODY} bytes; report fewer or smaller properties at a time.",
            )
        try:
            value = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return _error(
                400,
                "InvalidProperties",
                'The body is not JSON; send a JSON object of properties, e.g. {"temp": 21.5}.',
            )
        try:
            return web.json_response(properties.update(value))
        except PropertyError as exc:
            code = {403: "ReservedProperty", 413: "TooLarge"}.get(exc.status, "InvalidProperties")
            return _error(exc.status, code, exc.message)

    return [web.get("/node/properties", get), web.patch("/node/properties", patch)]


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes when it is longer (a chunked one has no length)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")
