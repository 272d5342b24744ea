"""Payload codecs: a shadow document travels as a UTF-8 JSON object or a msgpack map.

:func:`decode` is the one gate for untrusted bytes: whatever it is given, it returns a
``dict`` of JSON values (str keys; None, bool, int, finite float, str, list, dict) or raises
:class:`~shadow.errors.BadRequest` / :class:`~shadow.errors.TooLarge`. It checks the encoding,
not the shadow's limits (depth, key rules, 64-bit integers): :func:`shadow.document.validate`
does that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NoReturn

import msgpack

from shadow.errors import BadRequest, TooLarge

__all__ = ["Encoding", "decode", "encode", "sniff"]

_JSON_WHITESPACE = b" \t\r\n"
# fixmap (0x80-0x8f), map 16 (0xde), map 32 (0xdf)
_MSGPACK_MAP_MARKERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Encoding(StrEnum):
    """How a payload is encoded; a reply uses the request's encoding."""

    JSON = "json"
    MSGPACK = "msgpack"


def sniff(payload: bytes) -> Encoding:
    """The encoding of ``payload`` from its first byte; raises BadRequest for neither."""
    if payload and payload[0] in _MSGPACK_MAP_MARKERS:
        return Encoding.MSGPACK
    if payload.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        return Encoding.JSON
    raise BadRequest(
        "payload is neither a JSON object nor a msgpack map; "
        "send UTF-8 JSON starting with '{' or a msgpack map."
    )


def decode(payload: bytes, *, max_bytes: int) -> tuple[dict[str, Any], Encoding]:
    """Decode a JSON object or msgpack map; raise only BadRequest or TooLarge.

    Raises :class:`TooLarge` when ``payload`` is over ``max_bytes`` and :class:`BadRequest`
    for anything that is not one well-formed object of JSON values.
    """
    if len(payload) > max_bytes:
        raise TooLarge(
            f"payload is {len(payload)} bytes; the limit is {max_bytes} bytes, send less at once."
        )
    encoding = sniff(payload)
    value = _decode_json(payload) if encoding is Encoding.JSON else _decode_msgpack(payload)
    if not isinstance(value, dict):
        raise BadRequest(f"payload is a {type(value).__name__}; send a JSON object or msgpack map.")
    return value, encoding


def encode(value: Mapping[str, Any], encoding: Encoding) -> bytes:
    """``value`` as compact UTF-8 JSON or as msgpack (str and bin types kept apart)."""
    if encoding is Encoding.JSON:
        return _ENCODER.encode(value).encode("utf-8")
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _reject_constant(name: str) -> NoReturn:
    raise BadRequest(f"payload contains {name}, which JSON does not allow; send a finite number.")


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise BadRequest(
            f"payload contains the number {text[:40]}, which is out of range for a 64-bit float; "
            "send a smaller number."
        )
    return number


def _decode_json(payload: bytes) -> object:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"payload is not valid UTF-8 (byte {exc.start}: {exc.reason}); send UTF-8 JSON."
        ) from None
    try:
        value: object = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos}); send exactly one JSON object."
        ) from None
    except RecursionError:
        raise BadRequest("payload is nested too deeply to parse; flatten the document.") from None
    except ValueError:  # an integer with more digits than Python converts (sys.int_info)
        raise BadRequest(
            "payload has an integer with too many digits to convert; "
            "send integers within the signed 64-bit range."
        ) from None
    # "\ud800" escapes decode to lone surrogates, which no UTF-8 encoder can write back.
    if b"\\ud" in payload or b"\\uD" in payload:
        try:
            _ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "payload has a \\u escape of a lone UTF-16 surrogate; escape characters "
                "outside the BMP as a surrogate pair or send them as UTF-8."
            ) from None
    return value


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise BadRequest(
        f"payload has a msgpack extension type ({code}); extension types are not allowed, "
        "send plain msgpack values."
    )


def _decode_msgpack(payload: bytes) -> object:
    limit = len(payload)
    try:
        value: object = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            timestamp=0,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except msgpack.ExtraData:
        raise BadRequest(
            "payload has extra data after the msgpack map; send exactly one map."
        ) from None
    except msgpack.StackError:
        raise BadRequest("payload is nested too deeply to parse; flatten the document.") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"payload has a msgpack string that is not valid UTF-8 ({exc.reason}); "
            "send strings as UTF-8 and binary data as base64 strings."
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequest(f"payload is not valid msgpack ({exc}); send one msgpack map.") from None
    _check_msgpack_values(value)
    return value


def _check_msgpack_values(value: object) -> None:
    """Reject what msgpack carries but JSON does not: binary, extension types, NaN, odd keys."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if type(key) is not str:
                    raise BadRequest(
                        f"payload has a map key of type {type(key).__name__}; "
                        "map keys must be strings."
                    )
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadRequest(
                    f"payload contains {item!r}, which JSON does not allow; send a finite number."
                )
        elif isinstance(item, bytes):
            raise BadRequest(
                "payload has a msgpack binary value; binary values are not allowed, "
                "send them as base64 strings."
            )
        elif not (item is None or isinstance(item, str | int)):  # bool is an int
            raise BadRequest(
                f"payload has a msgpack {type(item).__name__} value; extension types are not "
                "allowed, send plain msgpack values."
            )
