"""Kubernetes label keys, values and label sets: what is valid, and what to write instead.

Keys are qualified names (an optional lowercase DNS-subdomain prefix and ``/``, then a name of at
most 63 characters); values are at most 63 characters and may be empty. A label set has at most
``MAX_LABELS`` labels. Selectors over labels are ``management/selectors.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from management.errors import ValidationFailed

__all__ = [
    "KEY_EXAMPLE",
    "MAX_LABELS",
    "VALUE_EXAMPLE",
    "SelectorError",
    "checked_labels",
    "key_problem",
    "validate_labels",
    "value_problem",
]

MAX_LABELS = 64
_MAX_NAME = 63
_MAX_PREFIX = 253
_MAX_VALUE = 63
_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)

KEY_EXAMPLE = "write e.g. 'app' or 'app.kubernetes.io/name'"
VALUE_EXAMPLE = "write e.g. 'prod' or 'v1.2-rc_3'"


class SelectorError(ValidationFailed, ValueError):
    """A label selector or a label set is invalid; the message says where and how to fix it."""

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__("selector", message)
        self.position = position  # 1-based, when the error is in the text of a selector


def key_problem(key: str) -> str | None:
    """Say what is wrong with a label key, or return None when it is valid."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            return "a key may contain at most one '/'"
        if not prefix:
            return "the prefix before '/' must not be empty"
        if len(prefix) > _MAX_PREFIX:
            return f"the prefix must be at most {_MAX_PREFIX} characters, not {len(prefix)}"
        if not _DNS_SUBDOMAIN.fullmatch(prefix):
            return (
                f"the prefix {prefix!r} must be a lowercase DNS subdomain "
                "(a-z, 0-9, '-' and '.', starting and ending with a letter or digit)"
            )
    if not name:
        return "the name must not be empty"
    if len(name) > _MAX_NAME:
        return f"the name must be at most {_MAX_NAME} characters, not {len(name)}"
    if not _NAME.fullmatch(name):
        return (
            "the name must consist of letters, digits, '-', '_' and '.', "
            "and start and end with a letter or digit"
        )
    return None


def value_problem(value: str) -> str | None:
    """Say what is wrong with a label value, or return None when it is valid."""
    if len(value) > _MAX_VALUE:
        return f"a value must be at most {_MAX_VALUE} characters, not {len(value)}"
    if value and not _NAME.fullmatch(value):
        return (
            "a value must be empty or consist of letters, digits, '-', '_' and '.', "
            "and start and end with a letter or digit"
        )
    return None


def checked_labels(labels: object, *, field: str) -> dict[str, str]:
    """Check a mapping of label keys to values and return a plain copy of it."""
    if not isinstance(labels, Mapping):
        raise SelectorError(
            f"{field} must be an object mapping label keys to string values, "
            f"not {type(labels).__name__}; write e.g. {{app: web, env: prod}}"
        )
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str):
            raise SelectorError(f"{field} has a non-string key {key!r}; label keys are strings")
        problem = key_problem(key)
        if problem is not None:
            raise SelectorError(
                f"{field}: key {key!r} is not a valid label key: {problem}; {KEY_EXAMPLE}"
            )
        if not isinstance(value, str):
            raise SelectorError(
                f"{field}[{key!r}] must be a string, not {type(value).__name__}; "
                "quote numbers and booleans, e.g. '\"3\"'"
            )
        problem = value_problem(value)
        if problem is not None:
            raise SelectorError(
                f"{field}[{key!r}] {value!r} is not a valid label value: {problem}; {VALUE_EXAMPLE}"
            )
        checked[key] = value
    return checked


def validate_labels(labels: object, *, field: str = "labels") -> dict[str, str]:
    """Check a label set against the Kubernetes rules and our limit; return a plain copy."""
    checked = checked_labels(labels, field=field)
    if len(checked) > MAX_LABELS:
        raise SelectorError(
            f"{field} has {len(checked)} labels but at most {MAX_LABELS} are allowed; "
            "remove some or fold them into fewer labels"
        )
    return checked
