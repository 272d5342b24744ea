"""Payload codecs: JSON objects and msgpack maps in, only BadRequest or TooLarge out."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.codec import Encoding, decode, encode, sniff
from shadow.errors import BadRequest, TooLarge

LIMIT = 65536
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
OBJECTS = st.dictionaries(TEXT, VALUES, max_size=4)


def packb(value: object) -> bytes:
    """``value`` packed by msgpack as a client would, binary kept apart from strings."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@settings(max_examples=60)
@given(OBJECTS, st.sampled_from(Encoding))
def test_round_trip(value: dict[str, Any], encoding: Encoding) -> None:
    """Any JSON object decodes to itself from either encoding, types (true vs 1, 1 vs 1.0) kept."""
    payload = encode(value, encoding)
    decoded, found = decode(payload, max_bytes=LIMIT)
    assert found is encoding
    assert decoded == value
    # JSON text tells true from 1 and 1 from 1.0, so equal encodings mean equal types.
    assert encode(decoded, Encoding.JSON) == encode(value, Encoding.JSON)


def test_encode_json_is_compact_utf8() -> None:
    """JSON is written without spaces and with non-ASCII characters as UTF-8."""
    assert encode({"a": [1, 2.5], "b": "é"}, Encoding.JSON) == '{"a":[1,2.5],"b":"é"}'.encode()


def test_encode_refuses_nan() -> None:
    """encode never writes NaN, which is not JSON."""
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode({"a": float("nan")}, Encoding.JSON)


def test_encode_msgpack_is_what_clients_decode() -> None:
    """msgpack output is a map that msgpack itself reads back."""
    value = {"a": [1, "x", None, True, 0.5], "b": {"c": -(2**40)}}
    assert msgpack.unpackb(encode(value, Encoding.MSGPACK), raw=False) == value


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [
        (b"{}", Encoding.JSON),
        (b' \t\r\n{"a":1}', Encoding.JSON),
        (b"\x80", Encoding.MSGPACK),
        (b"\x8f", Encoding.MSGPACK),
        (b"\xde\x00\x00", Encoding.MSGPACK),
        (b"\xdf\x00\x00\x00\x00", Encoding.MSGPACK),
    ],
)
def test_sniff_tells_json_from_msgpack(payload: bytes, encoding: Encoding) -> None:
    """A '{' after JSON whitespace is JSON; a msgpack map marker is msgpack."""
    assert sniff(payload) is encoding


@pytest.mark.parametrize(
    "payload",
    [b"", b"   ", b"[1]", b'"a"', b"\xef\xbb\xbf{}", b"\x91\x01", b"\x01", b"\xc0", b"\x0c{}"],
)
def test_sniff_rejects_anything_else(payload: bytes) -> None:
    """Arrays, scalars, a byte-order mark, empty input and msgpack non-maps are refused."""
    with pytest.raises(BadRequest, match="neither a JSON object nor a msgpack map"):
        sniff(payload)


def test_decode_enforces_max_bytes() -> None:
    """A payload over max_bytes is TooLarge naming both sizes; exactly max_bytes is fine."""
    payload = b'{"a":"xxxx"}'
    assert decode(payload, max_bytes=len(payload)) == ({"a": "xxxx"}, Encoding.JSON)
    with pytest.raises(TooLarge, match="payload is 12 bytes; the limit is 11 bytes"):
        decode(payload, max_bytes=11)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"[1, 2]", "neither a JSON object nor a msgpack map"),
        (b"\x92\x01\x02", "neither a JSON object nor a msgpack map"),
        (b'{"a": "\xff"}', "not valid UTF-8 (byte 7"),
        (b'{"a": NaN}', "contains NaN"),
        (b'{"a": Infinity}', "contains Infinity"),
        (b'{"a": [-Infinity]}', "contains -Infinity"),
        (b'{"a": 1e400}', "number 1e400, which is out of range"),
        (b'{"a": -1e400}', "number -1e400, which is out of range"),
        (b'{"a": 1} {}', "not valid JSON: Extra data at line 1 column 10 (char 9)"),
        (b'{"a": }', "not valid JSON: Expecting value at line 1 column 7"),
        (b'{"a": 1', "not valid JSON"),
        (b'{"a": ' + b"1" * 5000 + b"}", "integer with too many digits"),
        (b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b"}", "nested too deeply"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (packb({"a": b"x"}), "binary values are not allowed"),
        (packb({"a": [{"b": bytearray(b"x")}]}), "binary values are not allowed"),
        (packb({b"a": 1}), "map key of type bytes"),
        (packb({1: 1}), "int is not allowed for map key"),
        (packb({"a": msgpack.ExtType(5, b"x")}), "extension type (5)"),
        (packb({"a": msgpack.Timestamp(1)}), "extension types are not allowed"),
        (packb({"a": float("nan")}), "contains nan"),
        (packb({"a": [float("-inf")]}), "contains -inf"),
        (packb({"a": 1}) + b"\x01", "extra data after the msgpack map"),
        (packb({"a": 1})[:-1], "not valid msgpack"),
        (b"\x81\xa1a\xa2\xff\xfe", "string that is not valid UTF-8"),
        (b"\x81\xa2\xff\xfe\x01", "string that is not valid UTF-8"),
        (b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0", "nested too deeply"),
        (b"\xdf\xff\xff\xff\xff", "not valid msgpack"),
        (b"\x81\xa1a\xdd\xff\xff\xff\xff", "not valid msgpack"),
        (b"\x81\xa1a\xc1", "not valid msgpack"),
    ],
)
def test_decode_rejects_with_a_reason(payload: bytes, fragment: str) -> None:
    """Each malformed or non-JSON payload is a BadRequest whose message says what is wrong."""
    with pytest.raises(BadRequest) as caught:
        decode(payload, max_bytes=1 << 20)
    assert fragment in caught.value.message
    assert caught.value.message.endswith(".")


def test_decode_keeps_surrogate_pairs() -> None:
    """A character outside the BMP escaped as a surrogate pair decodes to that character."""
    assert decode(b'{"a": "\\ud83d\\ude00"}', max_bytes=100) == ({"a": "😀"}, Encoding.JSON)


def test_decode_leaves_json_limits_to_validate() -> None:
    """Integers beyond 64 bits and '$' keys decode; shadow.document.validate refuses them."""
    assert decode(b'{"$a": 18446744073709551616}', max_bytes=100)[0] == {"$a": 2**64}


def check_decode(payload: bytes) -> None:
    """decode returns an object or raises BadRequest/TooLarge; nothing else escapes."""
    try:
        value, encoding = decode(payload, max_bytes=512)
    except (BadRequest, TooLarge):
        return
    assert isinstance(value, dict)
    assert isinstance(encoding, Encoding)
    # Whatever decoded can be written back as JSON (integer ranges are validate's business).
    encode(value, Encoding.JSON).decode("utf-8")


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_decode_of_any_bytes_raises_only_request_errors(payload: bytes) -> None:
    """Arbitrary bytes never make decode raise anything but BadRequest or TooLarge."""
    check_decode(payload)


@settings(max_examples=150)
@given(
    st.sampled_from([b"{", b"\x81", b"\x82", b"\xde\x00\x03", b"\xdf\x00\x00\x00\x02"]), st.binary()
)
def test_decode_of_garbage_after_a_map_marker(prefix: bytes, rest: bytes) -> None:
    """Garbage behind a JSON or msgpack map opener only yields BadRequest or TooLarge."""
    check_decode(prefix + rest)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid payload truncated, with bytes flipped, or with bytes inserted."""
    payload = bytearray(encode(draw(OBJECTS), draw(st.sampled_from(Encoding))))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "truncate"]))
        at = draw(st.integers(0, max(len(payload) - 1, 0)))
        if action == "flip" and payload:
            payload[at] = draw(st.integers(0, 255))
        elif action == "insert":
            payload[at:at] = draw(
                st.sampled_from([b"\xc1", b"\xcb", b"\xc4\x01", b"\xd4\x01", b"\\ud800", b"NaN"])
            )
        else:
            del payload[at:]
    return bytes(payload)


@settings(max_examples=100)
@given(damaged())
def test_decode_of_damaged_payloads_raises_only_request_errors(payload: bytes) -> None:
    """Valid payloads with damage only ever yield an object, BadRequest or TooLarge."""
    check_decode(payload)
