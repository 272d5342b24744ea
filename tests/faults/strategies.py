"""What both hostile suites fuzz with: their Hypothesis settings and any JSON value."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# 150 examples each, the same ones every run (derandomized, no example database): a failure
# reproduces, and the suite's time stays put. Examples are slow (a live cloud answers each).
FUZZING = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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
