"""Kubernetes label selectors: parse, build, match and print them, and validate label sets.

The semantics are those of ``k8s.io/apimachinery/pkg/labels``:

* ``a=b`` / ``a==b`` and ``a in (b,c)`` need the key to be present with one of the values;
* ``a!=b`` and ``a notin (b,c)`` also match when the key is absent;
* ``a`` needs the key present, ``!a`` needs it absent;
* ``a>N`` / ``a<N`` need the key present with a value that is a decimal integer (a 64-bit
  signed one, as Go's ``strconv.ParseInt`` reads it) greater / less than ``N``; a label value
  that is not such an integer does not match, and ``N`` itself must be one (``a>-1`` is refused
  because ``-1`` is not a valid label value, as in Kubernetes);
* requirements are joined by ``,`` and all must match; the empty selector matches everything.

Keys are qualified names (an optional lowercase DNS-subdomain prefix and ``/``, then a name of at
most 63 characters); values are at most 63 characters and may be empty (``a=`` means ``a`` equals
the empty string). Everything the parser accepts, Kubernetes accepts with the same meaning. One
deliberate difference: Kubernetes reads ``a in ()`` as ``a in ("")``; here an empty list is an
error (write ``a in (,)`` for the empty value). As in Kubernetes' ``metav1.LabelSelector``, the
structured ``matchExpressions`` form knows only ``In``, ``NotIn``, ``Exists`` and ``DoesNotExist``:
``Gt``/``Lt`` exist only in the string form.

Label keys, values and sets are checked by ``management/labels.py``; one requirement (key,
operator, values) is ``management/requirements.py``; this module joins them into selectors.

Error tree: :class:`SelectorError` (a :class:`ValueError`, and a ``ValidationFailed`` of
``management.errors``) for every invalid selector or label set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from management.labels import (
    KEY_EXAMPLE,
    MAX_LABELS,
    VALUE_EXAMPLE,
    SelectorError,
    checked_labels,
    key_problem,
    validate_labels,
    value_problem,
)
from management.requirements import (
    LIST_EXAMPLE,
    NO_VALUE_OPERATORS,
    SET_OPERATORS,
    Operator,
    Requirement,
    int64,
)

__all__ = [
    "MAX_LABELS",
    "Operator",
    "Requirement",
    "Selector",
    "SelectorError",
    "validate_labels",
]

_MATCH_OPERATORS: Mapping[str, Operator] = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.NOT_EXISTS,
}


_EXPRESSION_FIELDS = frozenset({"key", "operator", "values"})


@dataclass(frozen=True, slots=True)
class Selector:
    """A conjunction of requirements; the empty selector matches every label set."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        ordered = sorted(self.requirements, key=lambda r: (r.key, r.operator, r.values))
        object.__setattr__(self, "requirements", tuple(ordered))

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse the Kubernetes string form, e.g. ``env in (prod,staging),tier!=db,!canary``."""
        return cls(_Parser(text).parse())

    @classmethod
    def from_match(
        cls,
        match_labels: Mapping[str, str] | None = None,
        match_expressions: Sequence[Mapping[str, Any]] | None = None,
    ) -> Selector:
        """Build a selector from the structured ``matchLabels`` / ``matchExpressions`` form."""
        requirements: list[Requirement] = []
        if match_labels is not None:
            labels = checked_labels(match_labels, field="matchLabels")
            requirements.extend(Requirement(k, Operator.EQUALS, (v,)) for k, v in labels.items())
        if match_expressions is not None:
            expressions: object = match_expressions
            if isinstance(expressions, str | bytes) or not isinstance(expressions, Sequence):
                raise SelectorError(
                    "matchExpressions must be a list of {key, operator, values} objects, "
                    f"not {type(expressions).__name__}; "
                    "write e.g. [{key: env, operator: In, values: [prod]}]"
                )
            for index, expression in enumerate(expressions):
                requirements.append(_expression(expression, field=f"matchExpressions[{index}]"))
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Say whether a label set satisfies every requirement."""
        return all(requirement.matches(labels) for requirement in self.requirements)

    def keys(self) -> frozenset[str]:
        """The label keys this selector looks at."""
        return frozenset(requirement.key for requirement in self.requirements)

    def is_empty(self) -> bool:
        """Say whether this selector has no requirements and so matches everything."""
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def _expression(expression: object, *, field: str) -> Requirement:
    """Turn one ``matchExpressions`` entry into a requirement, refusing anything malformed."""
    example = "write e.g. {key: env, operator: In, values: [prod]}"
    if not isinstance(expression, Mapping):
        raise SelectorError(
            f"{field} must be an object with key, operator and values, "
            f"not {type(expression).__name__}; {example}"
        )
    unknown = sorted(str(name) for name in expression if name not in _EXPRESSION_FIELDS)
    if unknown:
        raise SelectorError(
            f"{field} has unknown field {unknown[0]!r}; "
            f"the fields are 'key', 'operator' and 'values'"
        )
    key = expression.get("key")
    if not isinstance(key, str):
        raise SelectorError(f"{field}.key must be a string label key; {example}")
    problem = key_problem(key)
    if problem is not None:
        raise SelectorError(
            f"{field}.key {key!r} is not a valid label key: {problem}; {KEY_EXAMPLE}"
        )
    name = expression.get("operator")
    operator = _MATCH_OPERATORS.get(name) if isinstance(name, str) else None
    if operator is None:
        raise SelectorError(
            f"{field}.operator {name!r} is not one of 'In', 'NotIn', 'Exists' or 'DoesNotExist'; "
            f"{example}"
        )
    raw = expression.get("values")
    if raw is None:
        raw = []
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise SelectorError(f"{field}.values must be a list of strings; {example}")
    values: list[str] = []
    for position, value in enumerate(raw):
        if not isinstance(value, str):
            raise SelectorError(
                f"{field}.values[{position}] must be a string, not {type(value).__name__}; "
                f"{example}"
            )
        problem = value_problem(value)
        if problem is not None:
            raise SelectorError(
                f"{field}.values[{position}] {value!r} is not a valid label value: {problem}; "
                f"{VALUE_EXAMPLE}"
            )
        values.append(value)
    if operator in SET_OPERATORS and not values:
        raise SelectorError(f"{field}: operator {name!r} needs at least one value; {example}")
    if operator in NO_VALUE_OPERATORS and values:
        raise SelectorError(
            f"{field}: operator {name!r} takes no values, but {len(values)} were given; "
            f"remove 'values'"
        )
    return Requirement(key, operator, tuple(values))


# --- the string syntax -----------------------------------------------------------------------


class _Kind(Enum):
    WORD = "word"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    BANG = "!"
    OPEN = "("
    CLOSE = ")"
    COMMA = ","
    LESS = "<"
    GREATER = ">"
    END = "end"


_WHITESPACE = frozenset(" \t\r\n")
_SYMBOLS: Mapping[str, _Kind] = {
    "=": _Kind.EQUALS,
    "==": _Kind.DOUBLE_EQUALS,
    "!=": _Kind.NOT_EQUALS,
    "!": _Kind.BANG,
    "(": _Kind.OPEN,
    ")": _Kind.CLOSE,
    ",": _Kind.COMMA,
    "<": _Kind.LESS,
    ">": _Kind.GREATER,
}
_SPECIAL = frozenset("=!(),<>")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    start: int  # 0-based index into the selector text

    def describe(self) -> str:
        return "the end of the selector" if self.kind is _Kind.END else repr(self.text)


def _tokens(text: str) -> list[_Token]:
    """Split selector text as the Kubernetes lexer does: symbols, and words between them."""
    tokens: list[_Token] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char in _WHITESPACE:
            index += 1
        elif char in _SPECIAL:
            pair = text[index : index + 2]
            symbol = pair if pair in ("==", "!=") else char
            tokens.append(_Token(_SYMBOLS[symbol], symbol, index))
            index += len(symbol)
        else:
            start = index
            while index < length and text[index] not in _WHITESPACE and text[index] not in _SPECIAL:
                index += 1
            tokens.append(_Token(_Kind.WORD, text[start:index], start))
    tokens.append(_Token(_Kind.END, "", length))
    return tokens


class _Parser:
    """A recursive-descent parser following ``labels.Parser`` with positioned error messages."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokens(text)
        self._index = 0

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind is not _Kind.END:
            self._index += 1
        return token

    def _fail(
        self, token: _Token, message: str, hint: str, *, detail: str | None = None
    ) -> SelectorError:
        position = token.start + 1
        where = f"{message} at position {position}" + (f": {detail}" if detail else "")
        return SelectorError(f"label selector {self._text!r}: {where}; {hint}", position=position)

    def parse(self) -> tuple[Requirement, ...]:
        requirements: list[Requirement] = []
        if self._peek().kind is _Kind.END:
            return ()
        while True:
            requirements.append(self._requirement())
            token = self._next()
            if token.kind is _Kind.END:
                return tuple(requirements)
            if token.kind is not _Kind.COMMA:
                raise self._fail(
                    token,
                    f"expected ',' or the end of the selector but found {token.describe()}",
                    "separate requirements with ',', e.g. 'env=prod,tier!=db'",
                )
            if self._peek().kind is _Kind.END:
                raise self._fail(
                    self._peek(),
                    "expected a requirement after ',' but found the end of the selector",
                    "remove the trailing ',' or add a requirement, e.g. 'env=prod,tier=web'",
                )

    def _requirement(self) -> Requirement:
        token = self._next()
        negated = token.kind is _Kind.BANG
        if negated:
            token = self._next()
        if token.kind is not _Kind.WORD:
            expected = "a label key after '!'" if negated else "a label key or '!'"
            raise self._fail(
                token,
                f"expected {expected} but found {token.describe()}",
                "write e.g. 'env=prod' or '!canary'",
            )
        key = token.text
        problem = key_problem(key)
        if problem is not None:
            raise self._fail(token, f"invalid label key {key!r}", KEY_EXAMPLE, detail=problem)
        following = self._peek()
        if following.kind in (_Kind.END, _Kind.COMMA):
            return Requirement(key, Operator.NOT_EXISTS if negated else Operator.EXISTS)
        if negated:
            raise self._fail(
                following,
                f"'!{key}' means the label is absent and takes no operator or value, "
                f"but found {following.describe()}",
                f"write '!{key}' alone, or e.g. '{key}!=value'",
            )
        operator = self._next()
        match operator.kind:
            case _Kind.EQUALS | _Kind.DOUBLE_EQUALS:
                return Requirement(key, Operator.EQUALS, (self._exact_value(key, operator),))
            case _Kind.NOT_EQUALS:
                return Requirement(key, Operator.NOT_EQUALS, (self._exact_value(key, operator),))
            case _Kind.WORD if operator.text in ("in", "notin"):
                values = self._value_list(key, operator)
                return Requirement(key, Operator(operator.text), values)
            case _Kind.LESS | _Kind.GREATER:
                return Requirement(key, Operator(operator.text), (self._number(key, operator),))
            case _:
                raise self._fail(
                    operator,
                    "expected an operator ('=', '==', '!=', 'in', 'notin', '>' or '<'), ',' or "
                    f"the end of the selector after key {key!r} but found {operator.describe()}",
                    f"write e.g. '{key}=value', '{key} in (x,y)' or '{key}>3'",
                )

    def _exact_value(self, key: str, operator: _Token) -> str:
        token = self._peek()
        if token.kind in (_Kind.END, _Kind.COMMA):
            return ""  # 'a=' means the value is the empty string
        if token.kind is not _Kind.WORD:
            raise self._fail(
                token,
                f"expected a value after {operator.text!r} but found {token.describe()}",
                f"write e.g. '{key}{operator.text}prod', or '{key}{operator.text}' "
                "for the empty value",
            )
        return self._value(self._next())

    def _number(self, key: str, operator: _Token) -> str:
        """The integer after '>' or '<' (Kubernetes reads a missing one as '' and refuses it)."""
        hint = f"write a whole number of at most 19 digits, e.g. '{key}{operator.text}3'"
        token = self._peek()
        if token.kind is not _Kind.WORD:
            raise self._fail(
                token,
                f"expected an integer after {operator.text!r} but found {token.describe()}",
                hint,
            )
        value = self._value(self._next())
        if int64(value) is None:
            raise self._fail(
                token,
                f"{operator.text!r} compares with integers but found {value!r}",
                hint,
            )
        return value

    def _value(self, token: _Token) -> str:
        problem = value_problem(token.text)
        if problem is not None:
            raise self._fail(
                token, f"invalid label value {token.text!r}", VALUE_EXAMPLE, detail=problem
            )
        return token.text

    def _value_list(self, key: str, operator: _Token) -> tuple[str, ...]:
        opening = self._next()
        if opening.kind is not _Kind.OPEN:
            raise self._fail(
                opening,
                f"expected '(' after {operator.text!r} but found {opening.describe()}",
                f"write e.g. '{key} {operator.text} (prod,staging)'",
            )
        if self._peek().kind is _Kind.CLOSE:
            raise self._fail(
                opening,
                f"the value list after {operator.text!r} is empty",
                f"list at least one value, e.g. '{key} {operator.text} (prod,staging)'",
            )
        # Ported from labels.Parser.parseIdentifiersList so that empty entries mean "" exactly
        # where Kubernetes says so: '(,a)', '(a,)', '(a,,b)' and '(,)'.
        values: list[str] = []
        last = opening
        while True:
            token = self._next()
            if token.kind is _Kind.WORD:
                values.append(self._value(token))
                last = token
                following = self._peek()
                if following.kind is _Kind.COMMA:
                    continue
                if following.kind is _Kind.CLOSE:
                    break
                raise self._missing_close(last, following)
            if token.kind is _Kind.COMMA:
                last = token
                if not values:
                    values.append("")
                following = self._peek()
                if following.kind is _Kind.CLOSE:
                    values.append("")
                    break
                if following.kind is _Kind.COMMA:
                    last = self._next()
                    values.append("")
                continue
            raise self._missing_close(last, token)
        self._next()  # the ')'
        return tuple(values)

    def _missing_close(self, last: _Token, found: _Token) -> SelectorError:
        if found.kind is _Kind.END:
            return self._fail(found, f"missing ')' after {last.text!r}", LIST_EXAMPLE)
        expected = "',' or ')'" if last.kind is _Kind.WORD else "a value"
        return self._fail(
            found,
            f"expected {expected} after {last.text!r} but found {found.describe()}",
            LIST_EXAMPLE,
        )
