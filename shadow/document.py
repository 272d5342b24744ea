"""The shadow document: sections with versions, RFC 7386 merge, delta, metadata, limits.

A shadow has two sections, ``desired`` and ``reported``. Each is a :class:`Section`: a JSON object
(``state``), per-leaf write times mirroring the state's shape (``metadata``, AWS IoT shadow style)
and a version that every write bumps.

Everything here is pure (stdlib only) and never mutates its inputs: the edge agent imports it, and
the service shares the objects it returns between readers. Objects returned by :func:`merge` and
:func:`stamp` may share unchanged sub-objects with their inputs, so nobody may mutate them in place.

Only :func:`validate` accepts untrusted input; :func:`merge`, :func:`delta` and :func:`stamp`
expect validated documents (their recursion is bounded by the documents' depth).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shadow.errors import BadRequest, TooLarge

__all__ = [
    "EMPTY",
    "JSONObject",
    "Limits",
    "Section",
    "delta",
    "encoded_size",
    "merge",
    "stamp",
    "validate",
]

JSONObject = dict[str, Any]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# The C encoder (one shot, no indent); check_circular stays on because encoded_size is public.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Keys shown as ``a.b`` in paths; any other key is shown quoted, as ``a["b.c"]``.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-:@/+]+")


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits on one section's state.

    ``max_bytes`` is the size of the state as compact UTF-8 JSON; ``max_depth`` counts nested
    containers, the section's top object being depth 1 (``{"a": {"b": 1}}`` and ``{"a": [1]}``
    are depth 2); ``max_key_length`` counts characters.
    """

    max_bytes: int = 65536
    max_depth: int = 10
    max_key_length: int = 128

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_depth", "max_key_length"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, not {value!r}.")


def encoded_size(value: object) -> int:
    """The length in bytes of ``value`` as compact UTF-8 JSON (how limits measure a state).

    Raises ``TypeError``/``ValueError`` for values JSON cannot encode (bytes, NaN, ...).
    """
    text = _ENCODER.encode(value)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _child_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _show_key(key: str) -> str:
    shown = key if len(key) <= 40 else key[:40] + "..."
    return json.dumps(shown, ensure_ascii=False)


def _type_name(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary"
    if isinstance(value, tuple):
        return "tuple"
    return type(value).__name__


def _check_key(key: object, path: str, limits: Limits) -> str:
    if not isinstance(key, str):
        raise BadRequest(
            f"{path} has a key of type {_type_name(key)} ({repr(key)[:40]}); "
            "object keys must be strings, use a string key."
        )
    if not key:
        raise BadRequest(f"{path} has an empty key; give every key a non-empty name.")
    if key[0] == "$":
        raise BadRequest(
            f"{path} has the key {_show_key(key)}; keys starting with '$' are reserved, rename it."
        )
    if len(key) > limits.max_key_length:
        raise BadRequest(
            f"{path} has a key of {len(key)} characters ({_show_key(key)}); the limit is "
            f"{limits.max_key_length}, use a shorter key."
        )
    return key


def _check_scalar(value: object, path: str) -> None:
    """Accept a non-container JSON value; raise BadRequest naming ``path`` for anything else."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise BadRequest(
                f"{path} is an integer outside the signed 64-bit range; "
                "send it as a string or a float."
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(
                f"{path} is {value!r}, which JSON cannot represent; send a finite number or null."
            )
        return
    if isinstance(value, bytes | bytearray | memoryview):
        raise BadRequest(
            f"{path} is a binary value; binary values are not allowed, encode it as a "
            "string (for example base64)."
        )
    raise BadRequest(
        f"{path} is a {_type_name(value)}, which is not a JSON value; use an object, array, "
        "string, number, boolean or null."
    )


# A path is built only for an error message: the root name, or (parent path, key or index).
_Path = str | tuple["_Path", str | int]


def _render(path: _Path) -> str:
    parts: list[str | int] = []
    while isinstance(path, tuple):
        path, step = path
        parts.append(step)
    rendered = path
    for step in reversed(parts):
        rendered = f"{rendered}[{step}]" if isinstance(step, int) else _child_path(rendered, step)
    return rendered


def _check_structure(value: object, limits: Limits, path: str) -> JSONObject:
    """Check types, keys and depth without recursion; return ``value`` as a JSON object."""
    if not isinstance(value, dict):
        raise BadRequest(
            f"{path} must be a JSON object, not {_type_name(value)}; "
            'send an object such as {"key": "value"}.'
        )
    max_depth = limits.max_depth
    max_key_length = limits.max_key_length
    isfinite = math.isfinite
    # Each value takes at least one byte of JSON, so more values than max_bytes is too large
    # whatever they are; counting them also bounds the walk over shared sub-objects.
    budget = limits.max_bytes
    stack: list[tuple[dict[Any, Any] | list[Any], _Path, int]] = [(value, path, 1)]
    while stack:
        container, here, depth = stack.pop()
        budget -= len(container)
        if budget < 0:
            raise TooLarge(
                f"{path} holds more than {limits.max_bytes} values, so it is over the limit of "
                f"{limits.max_bytes} bytes as compact JSON; send a smaller state."
            )
        pairs: Any = container.items() if isinstance(container, dict) else enumerate(container)
        keyed = isinstance(container, dict)
        for key, item in pairs:
            if keyed and (
                type(key) is not str or not key or key[0] == "$" or len(key) > max_key_length
            ):
                _check_key(key, _render(here), limits)
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if _INT64_MIN <= item <= _INT64_MAX:
                    continue
            elif kind is float:
                if isfinite(item):
                    continue
            elif isinstance(item, dict | list):
                if depth >= max_depth:
                    raise BadRequest(
                        f"{_render((here, key))} is nested {depth + 1} levels deep; "
                        f"the limit is {max_depth}, flatten the document."
                    )
                stack.append((item, (here, key), depth + 1))
                continue
            _check_scalar(item, _render((here, key)))
    return value


def validate(value: object, limits: Limits, *, path: str) -> JSONObject:
    """Check that ``value`` is a JSON object within ``limits``; return it unchanged.

    ``path`` names the value in error messages (``reported`` gives ``reported.apps[2].name``).
    Raises :class:`BadRequest` for a wrong type, a bad key or too deep a nesting and
    :class:`TooLarge` when its compact JSON is over ``limits.max_bytes``.
    """
    state = _check_structure(value, limits, path)
    _check_size(state, limits, path)
    return state


def _check_size(state: JSONObject, limits: Limits, path: str) -> str:
    """The state as compact JSON, checked against the size limit."""
    try:
        text = _ENCODER.encode(state)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(
            f"{path} has a string with a lone UTF-16 surrogate, which UTF-8 cannot encode; "
            "use valid Unicode text."
        ) from None
    if size > limits.max_bytes:
        raise TooLarge(
            f"{path} is {size} bytes as compact JSON; the limit is {limits.max_bytes} bytes, "
            "send a smaller state or remove keys you no longer need."
        )
    return text


def merge(target: JSONObject, patch: JSONObject) -> JSONObject:
    """Apply ``patch`` to ``target`` as an RFC 7386 JSON merge patch; return a new object.

    Objects merge key by key, arrays and scalars replace, ``None`` deletes the key; an object
    patched onto a non-object becomes the patch without its nulls. The inputs are not mutated;
    the result may share unchanged sub-objects with them.
    """
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = merge(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = value
    return result


def _same(a: object, b: object) -> bool:
    """JSON equality: like ``==`` but ``true`` is not ``1`` (1 and 1.0 are the same number)."""
    if a is b:
        return True
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        return all(key in b and _same(value, b[key]) for key, value in a.items())
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(b, dict | list):
        return False
    return bool(a == b)


def delta(desired: JSONObject, reported: JSONObject) -> JSONObject:
    """The part of ``desired`` that ``reported`` does not match yet.

    Where both hold an object the comparison recurses (an empty difference is left out);
    otherwise a key is in the delta when ``reported`` lacks it or holds another value. Keys only
    in ``reported`` are ignored. ``true`` and ``1`` differ; ``1`` and ``1.0`` do not.
    """
    result: JSONObject = {}
    for key, want in desired.items():
        if key not in reported:
            result[key] = want
            continue
        have = reported[key]
        if want is have:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                result[key] = inner
        elif not _same(want, have):
            result[key] = want
    return result


def _is_leaf_metadata(metadata: object) -> bool:
    return isinstance(metadata, dict) and type(metadata.get("timestamp")) is int


def stamp(metadata: JSONObject, patch: JSONObject, now_ms: int) -> JSONObject:
    """The metadata of ``merge(state, patch)``, given ``metadata`` mirroring ``state``.

    A leaf (scalar or array) written by the patch gets ``{"timestamp": now_ms}``; an object gets a
    dict of its keys' metadata; a ``None`` deletes the key's metadata. Leaf metadata is the one
    whose ``"timestamp"`` is an int: a state key named ``timestamp`` has a dict there. Inputs are
    not mutated.
    """
    result = dict(metadata)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            if not isinstance(current, dict) or _is_leaf_metadata(current):
                current = {}
            result[key] = stamp(current, value, now_ms)
        else:
            result[key] = {"timestamp": now_ms}
    return result


@dataclass(frozen=True, slots=True)
class Section:
    """One side of a shadow (desired or reported): its state, per-key timestamps, version.

    The version counts writes: every :meth:`apply` or :meth:`replace` bumps it by one, even a
    patch that changes nothing, so a writer can always tell its write went in.
    """

    state: JSONObject
    metadata: JSONObject
    version: int = 0
    encoded: str | None = field(default=None, compare=False, repr=False)
    """The state as compact JSON when it is known already (writers reuse it)."""

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version < 0:
            raise ValueError(f"Section.version must be an integer >= 0, not {self.version!r}.")

    def apply(self, patch: JSONObject, now_ms: int, limits: Limits, *, path: str) -> Section:
        """This section with ``patch`` merged in (RFC 7386), stamped at ``now_ms``, version + 1.

        Raises :class:`BadRequest` for an invalid patch (types, keys, depth) and
        :class:`TooLarge` when the merged state is over ``limits.max_bytes``; the patch's own
        size is not measured (the payload limit bounds it; a patch of deletions may exceed the
        state limit and still be fine). The merged state cannot be deeper than the patch or the
        current state, so only the patch's depth is walked: the state was checked when written.
        Costs one JSON encoding of the merged state.
        """
        _check_structure(patch, limits, path)
        state = merge(self.state, patch)
        text = _check_size(state, limits, path)
        return Section(state, stamp(self.metadata, patch, now_ms), self.version + 1, text)

    def replace(self, state: JSONObject, now_ms: int, limits: Limits, *, path: str) -> Section:
        """This section with its state replaced by ``state``, every key stamped, version + 1.

        ``None`` values delete, as in a patch onto an empty state: they are left out.
        """
        _check_structure(state, limits, path)
        merged = merge({}, state)
        text = _check_size(merged, limits, path)
        return Section(merged, stamp({}, state, now_ms), self.version + 1, text)

    def to_dict(self) -> dict[str, Any]:
        """The section as a JSON object: ``{"state": ..., "metadata": ..., "version": ...}``."""
        return {"state": self.state, "metadata": self.metadata, "version": self.version}

    @classmethod
    def from_dict(cls, data: object) -> Section:
        """The section :meth:`to_dict` produced; raises ``ValueError`` on a wrong shape."""
        if not isinstance(data, Mapping):
            raise ValueError(f"A section must be an object, not {type(data).__name__}.")
        unknown = sorted(str(key) for key in data if key not in ("state", "metadata", "version"))
        if unknown:
            raise ValueError(
                f"A section has only state, metadata and version; remove {', '.join(unknown)}."
            )
        state = data.get("state")
        metadata = data.get("metadata")
        version = data.get("version")
        if not isinstance(state, dict):
            raise ValueError(f"A section's state must be an object, not {type(state).__name__}.")
        if not isinstance(metadata, dict):
            raise ValueError(
                f"A section's metadata must be an object, not {type(metadata).__name__}."
            )
        if type(version) is not int or version < 0:
            raise ValueError(f"A section's version must be an integer >= 0, not {version!r}.")
        return cls(state, metadata, version)


EMPTY = Section({}, {}, 0)
