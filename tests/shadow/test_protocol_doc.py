"""Every example in PROTOCOL.md is a message the code accepts and means what the text says."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shadow import (
    Encoding,
    decode,
    delta,
    encode,
    merge,
    parse_accepted,
    parse_delta,
    parse_desire,
    parse_rejected,
    parse_resource,
)
from shadow.envelopes import parse_get, parse_report, parse_resource_get

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
EXAMPLE = re.compile(r"<!-- example: ([a-z-]+) -->\n```json\n(.*?)\n```", re.DOTALL)
PARSERS: dict[str, Any] = {
    "report": parse_report,
    "accepted": parse_accepted,
    "delta": parse_delta,
    "get": parse_get,
    "desire": parse_desire,
    "resource-get": parse_resource_get,
    "resource": parse_resource,
    "rejected": parse_rejected,
}
DOCUMENTED_CODES = {400, 403, 404, 409, 413, 429, 500}


def examples() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, body in EXAMPLE.findall(DOC.read_text(encoding="utf-8")):
        found[kind].append(json.loads(body))
    return found


def test_every_message_kind_has_an_example() -> None:
    """Each message of the protocol, and the merge and delta rules, are shown by an example."""
    assert set(examples()) == {*PARSERS, "merge", "delta-rule"}


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_message_examples_parse_in_both_encodings(kind: str) -> None:
    """Each message example is valid as JSON and, encoded as msgpack, decodes to the same."""
    for example in examples()[kind]:
        PARSERS[kind](example)
        for encoding in ("json", "msgpack"):
            payload = encode(example, Encoding(encoding))
            value, _ = decode(payload, max_bytes=1 << 20)
            assert value == example
        assert msgpack.unpackb(msgpack.packb(example)) == example


def test_every_documented_error_code_has_an_example() -> None:
    """The rejected examples cover exactly the documented codes."""
    codes = {parse_rejected(example).code for example in examples()["rejected"]}
    assert codes == DOCUMENTED_CODES
    table = DOC.read_text(encoding="utf-8")
    for code in DOCUMENTED_CODES:
        assert re.search(rf"^\| {code} \|", table, re.MULTILINE), code


def test_merge_example_is_what_merge_does() -> None:
    """The documented merge example is the output of merge()."""
    for example in examples()["merge"]:
        assert merge(example["before"], example["patch"]) == example["after"]


def test_delta_example_is_what_delta_does() -> None:
    """The documented delta example is the output of delta()."""
    for example in examples()["delta-rule"]:
        assert delta(example["desired"], example["reported"]) == example["delta"]
