"""management.errors: one root, and the tree its docstring draws is the one the code has."""

from __future__ import annotations

import re

import pytest

import management
from management import errors
from management.config import ConfigError
from management.crypto import CryptoError
from management.errors import ManagementError
from management.labels import SelectorError
from management.store import ResourceConflict, ResourceMissing
from management.tokens import TokenError, TokenExpired, TokenForged, TokenKeyError, TokenMalformed
from shadow import StoreError

CLASSES: dict[str, type[Exception]] = {
    **{name: getattr(errors, name) for name in errors.__all__},
    **{
        cls.__name__: cls
        for cls in (
            ConfigError,
            CryptoError,
            ResourceConflict,
            ResourceMissing,
            SelectorError,
            TokenError,
            TokenExpired,
            TokenForged,
            TokenKeyError,
            TokenMalformed,
        )
    },
}
# "Name   404 NotFound" in the drawn tree: the class, its status and its code.
DRAWN = re.compile(r"(?:├──|└──)\s+(\w+)\s+(\d{3}) (\w+)")


def test_every_drawn_status_and_code_is_the_classes() -> None:
    """Each class the tree in management/errors.py gives a status and code has exactly those."""
    drawn = DRAWN.findall(errors.__doc__ or "")
    assert len(drawn) >= 15
    for name, status, code in drawn:
        cls = CLASSES[name]
        assert issubclass(cls, ManagementError), name
        assert (cls.status, cls.code) == (int(status), code), name


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_management_error_is_under_the_root_and_drawn(name: str) -> None:
    """No management error stands apart from the root, and the tree names each one."""
    assert issubclass(CLASSES[name], ManagementError)
    assert name in (errors.__doc__ or "")


def test_the_stores_errors_are_also_store_errors() -> None:
    """Code that handles a failed store call (StoreError) still catches the resource errors."""
    assert issubclass(ResourceMissing, StoreError)
    assert issubclass(ResourceConflict, StoreError)
    assert ResourceMissing("gone").status == 404


def test_the_package_docstring_draws_the_tree() -> None:
    """management/__init__.py names the root and its branches, as the other packages do."""
    doc = management.__doc__ or ""
    for name in ("ManagementError", "ValidationFailed", "TokenError", "CryptoError"):
        assert name in doc
