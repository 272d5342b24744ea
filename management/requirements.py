"""One requirement of a label selector: a key, an operator and its values, and how it matches.

The semantics are those of ``k8s.io/apimachinery/pkg/labels`` (see ``management/selectors.py``,
which joins requirements into selectors and parses the string form).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from management.labels import KEY_EXAMPLE, VALUE_EXAMPLE, SelectorError, key_problem, value_problem

__all__ = [
    "COMPARISONS",
    "LIST_EXAMPLE",
    "NO_VALUE_OPERATORS",
    "ONE_VALUE_OPERATORS",
    "SET_OPERATORS",
    "SINGLE_VALUE_OPERATORS",
    "Operator",
    "Requirement",
    "int64",
]


LIST_EXAMPLE = "write e.g. 'env in (prod,staging)'"


class Operator(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"
    GREATER_THAN = ">"
    LESS_THAN = "<"


SET_OPERATORS = frozenset({Operator.IN, Operator.NOT_IN})
ONE_VALUE_OPERATORS = frozenset({Operator.EQUALS, Operator.NOT_EQUALS})
NO_VALUE_OPERATORS = frozenset({Operator.EXISTS, Operator.NOT_EXISTS})
COMPARISONS = frozenset({Operator.GREATER_THAN, Operator.LESS_THAN})
SINGLE_VALUE_OPERATORS = ONE_VALUE_OPERATORS | COMPARISONS
# Go's strconv.ParseInt(s, 10, 64): an optional sign, ASCII digits, within int64. Python's int()
# is wider (underscores, surrounding spaces, other scripts' digits), so the form is checked first.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def int64(text: str) -> int | None:
    """Read text as Go's ``strconv.ParseInt(text, 10, 64)`` does; None when it would fail."""
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One condition on one label key; values are sorted and deduplicated for ``in``/``notin``."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        operator = Operator(self.operator)
        values = tuple(self.values)
        problem = key_problem(self.key)
        if problem is not None:
            raise SelectorError(f"invalid label key {self.key!r}: {problem}; {KEY_EXAMPLE}")
        for value in values:
            problem = value_problem(value)
            if problem is not None:
                raise SelectorError(
                    f"invalid value {value!r} for label key {self.key!r}: {problem}; "
                    f"{VALUE_EXAMPLE}"
                )
        if operator in SET_OPERATORS:
            if not values:
                raise SelectorError(
                    f"requirement '{self.key} {operator}' needs at least one value; {LIST_EXAMPLE}"
                )
            values = tuple(sorted(set(values)))
        elif operator in SINGLE_VALUE_OPERATORS and len(values) != 1:
            raise SelectorError(
                f"requirement '{self.key}{operator}' needs exactly one value, not {len(values)}; "
                f"write e.g. 'env{operator}{'3' if operator in COMPARISONS else 'prod'}'"
            )
        elif operator in NO_VALUE_OPERATORS and values:
            raise SelectorError(
                f"requirement {operator.name} on {self.key!r} takes no values, "
                f"but {len(values)} were given; drop the values"
            )
        if operator in COMPARISONS and int64(values[0]) is None:
            raise SelectorError(
                f"requirement '{self.key}{operator}{values[0]}' compares with {values[0]!r}, "
                "which is not an integer; write a whole number of at most 19 digits, "
                f"e.g. '{self.key}{operator}3'"
            )
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "values", values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Say whether a label set satisfies this requirement (Kubernetes semantics)."""
        match self.operator:
            case Operator.EXISTS:
                return self.key in labels
            case Operator.NOT_EXISTS:
                return self.key not in labels
            case Operator.EQUALS | Operator.IN:
                return self.key in labels and labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return self.key not in labels or labels[self.key] not in self.values
            case Operator.GREATER_THAN | Operator.LESS_THAN:
                # Kubernetes: an absent key or a value that is not an integer does not match.
                present = labels.get(self.key)
                number = None if present is None else int64(present)
                if number is None:
                    return False
                bound = int(self.values[0])
                return number > bound if self.operator is Operator.GREATER_THAN else number < bound

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.NOT_EXISTS:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS | Operator.GREATER_THAN | Operator.LESS_THAN:
                return f"{self.key}{self.operator}{self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                # The lone empty value is '(,)': Kubernetes reads '()' as ("") but we refuse it.
                listed = "," if self.values == ("",) else ",".join(self.values)
                return f"{self.key} {self.operator} ({listed})"
