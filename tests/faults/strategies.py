"""Hypothesis strategies both hostile suites draw from: any JSON value, small and nested."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """JSON values (null, booleans, ``integers``, finite floats, short text, small lists and
    objects nested a few deep): each suite says which integers strain what it feeds."""
    leaves = (
        st.none()
        | st.booleans()
        | integers
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=16,
    )
