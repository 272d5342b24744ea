"""Kubernetes label selectors: the string syntax, matching, the structured form and label rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from management.selectors import (
    MAX_LABELS,
    Operator,
    Requirement,
    Selector,
    SelectorError,
    validate_labels,
)

R = Requirement
EQ, NE, IN, NOTIN, EXISTS, ABSENT, GT, LT = (
    Operator.EQUALS,
    Operator.NOT_EQUALS,
    Operator.IN,
    Operator.NOT_IN,
    Operator.EXISTS,
    Operator.NOT_EXISTS,
    Operator.GREATER_THAN,
    Operator.LESS_THAN,
)

# --- parsing ---------------------------------------------------------------------------------

VALID: list[tuple[str, str, tuple[Requirement, ...] | None]] = [
    ("", "", ()),
    ("  \t\n ", "", ()),
    ("a", "a", (R("a", EXISTS),)),
    ("!a", "!a", (R("a", ABSENT),)),
    (" ! a ", "!a", (R("a", ABSENT),)),
    ("a=b", "a=b", (R("a", EQ, ("b",)),)),
    ("a==b", "a=b", (R("a", EQ, ("b",)),)),
    ("a = b", "a=b", (R("a", EQ, ("b",)),)),
    ("a!=b", "a!=b", (R("a", NE, ("b",)),)),
    ("a=", "a=", (R("a", EQ, ("",)),)),
    ("a==", "a=", (R("a", EQ, ("",)),)),
    ("a!=", "a!=", (R("a", NE, ("",)),)),
    ("a=,b", "a=,b", (R("a", EQ, ("",)), R("b", EXISTS))),
    ("a in (b)", "a in (b)", (R("a", IN, ("b",)),)),
    ("a in(b)", "a in (b)", (R("a", IN, ("b",)),)),
    ("a in (c,b,b)", "a in (b,c)", (R("a", IN, ("b", "c")),)),
    ("a  in  ( b , c )", "a in (b,c)", (R("a", IN, ("b", "c")),)),
    ("a\tin\n(b\r,c)", "a in (b,c)", (R("a", IN, ("b", "c")),)),
    ("a notin (x)", "a notin (x)", (R("a", NOTIN, ("x",)),)),
    ("a in (,b)", "a in (,b)", (R("a", IN, ("", "b")),)),
    ("a in (b,)", "a in (,b)", (R("a", IN, ("", "b")),)),
    ("a in (b,,c)", "a in (,b,c)", (R("a", IN, ("", "b", "c")),)),
    ("a in (,)", "a in (,)", (R("a", IN, ("",)),)),
    ("a notin (,)", "a notin (,)", (R("a", NOTIN, ("",)),)),
    ("x=1, y!=2 ,z", "x=1,y!=2,z", (R("x", EQ, ("1",)), R("y", NE, ("2",)), R("z", EXISTS))),
    ("b=1,a=2", "a=2,b=1", (R("a", EQ, ("2",)), R("b", EQ, ("1",)))),
    ("a,a", "a,a", (R("a", EXISTS), R("a", EXISTS))),
    ("in", "in", (R("in", EXISTS),)),
    ("!notin", "!notin", (R("notin", ABSENT),)),
    ("in in (in)", "in in (in)", (R("in", IN, ("in",)),)),
    ("a=notin", "a=notin", (R("a", EQ, ("notin",)),)),
    ("app.kubernetes.io/name=web", "app.kubernetes.io/name=web", None),
    ("example.com/A.b-c_D=X.y-z_1", "example.com/A.b-c_D=X.y-z_1", None),
    ("1=2", "1=2", None),
    ("k" * 63 + "=" + "v" * 63, "k" * 63 + "=" + "v" * 63, None),
    ("a" * 253 + "/b", "a" * 253 + "/b", None),
    ("env in (prod,staging),tier!=db,!canary", "!canary,env in (prod,staging),tier!=db", None),
    ("a>1", "a>1", (R("a", GT, ("1",)),)),
    ("a<1", "a<1", (R("a", LT, ("1",)),)),
    (" a > 10 ", "a>10", (R("a", GT, ("10",)),)),
    ("a>007", "a>007", (R("a", GT, ("007",)),)),
    ("a>0,a<9", "a<9,a>0", (R("a", LT, ("9",)), R("a", GT, ("0",)))),
    ("x.io/cores>3,env=prod", "env=prod,x.io/cores>3", None),
    ("a<9223372036854775807", "a<9223372036854775807", None),
]


@pytest.mark.parametrize(("text", "canonical", "expected"), VALID)
def test_parse_valid(text: str, canonical: str, expected: tuple[Requirement, ...] | None) -> None:
    """Every valid form parses to the expected requirements and prints in canonical form."""
    selector = Selector.parse(text)
    assert str(selector) == canonical
    if expected is not None:
        assert selector.requirements == expected
    assert Selector.parse(canonical) == selector


INVALID: list[tuple[str, int, str]] = [
    (",", 1, "expected a label key or '!' but found ','"),
    (",a", 1, "expected a label key or '!' but found ','"),
    ("a=b,", 5, "expected a requirement after ',' but found the end"),
    ("a,,b", 3, "expected a label key or '!' but found ','"),
    ("a , ", 5, "remove the trailing ','"),
    ("!", 2, "expected a label key after '!' but found the end"),
    ("!!a", 2, "expected a label key after '!' but found '!'"),
    ("!=a", 1, "expected a label key or '!' but found '!='"),
    ("=a", 1, "expected a label key or '!' but found '='"),
    ("(a)", 1, "found '('"),
    ("!a=b", 3, "'!a' means the label is absent"),
    ("!a in (b)", 4, "'!a' means the label is absent"),
    ("a b", 3, "expected an operator"),
    ("in (a)", 4, "expected an operator"),
    ("a ! b", 3, "expected an operator"),
    ("a)", 2, "expected an operator"),
    ("a>", 3, "expected an integer after '>' but found the end of the selector"),
    ("a<,b", 3, "expected an integer after '<' but found ','"),
    ("a>(1)", 3, "expected an integer after '>' but found '('"),
    ("a>=1", 3, "expected an integer after '>' but found '='"),
    ("a>x", 3, "'>' compares with integers but found 'x'"),
    ("a<1.5", 3, "'<' compares with integers but found '1.5'"),
    ("a>1e3", 3, "'>' compares with integers but found '1e3'"),
    ("a>9223372036854775808", 3, "compares with integers but found '9223372036854775808'"),
    ("a>-1", 3, "invalid label value '-1'"),
    ("a>1 2", 5, "expected ',' or the end of the selector but found '2'"),
    ("!a>1", 3, "'!a' means the label is absent"),
    ("a gt 1", 3, "expected an operator"),
    ("a=(", 3, "expected a value after '=' but found '('"),
    ("a!=!", 4, "expected a value after '!=' but found '!'"),
    ("a==)", 4, "expected a value after '==' but found ')'"),
    ("a=b=c", 4, "expected ',' or the end of the selector but found '='"),
    ("a=b c=d", 5, "separate requirements with ','"),
    ("a in b", 6, "expected '(' after 'in' but found 'b'"),
    ("a notin", 8, "expected '(' after 'notin' but found the end"),
    ("a in ()", 6, "the value list after 'in' is empty"),
    ("a notin ( )", 9, "the value list after 'notin' is empty"),
    ("a in (", 7, "missing ')' after '('"),
    ("a in (b", 8, "missing ')' after 'b'"),
    ("a in (b,", 9, "missing ')' after ','"),
    ("a in (b c)", 9, "expected ',' or ')' after 'b' but found 'c'"),
    ("a in (b=c)", 8, "expected ',' or ')' after 'b' but found '='"),
    ("a in (b,,)", 10, "expected a value after ',' but found ')'"),
    ("a in (,,)", 9, "expected a value after ',' but found ')'"),
    ("a in ((b))", 7, "expected a value after '(' but found '('"),
    ("a in (b))", 9, "expected ',' or the end of the selector but found ')'"),
    ("-a=b", 1, "invalid label key '-a' at position 1: the name must consist"),
    ("a-=b", 1, "start and end with a letter or digit"),
    ("a/b/c", 1, "at most one '/'"),
    ("/a", 1, "the prefix before '/' must not be empty"),
    ("a/", 1, "the name must not be empty"),
    ("Example.com/a", 1, "must be a lowercase DNS subdomain"),
    ("ex_ample.com/a", 1, "must be a lowercase DNS subdomain"),
    ("a" * 254 + "/b", 1, "at most 253 characters, not 254"),
    ("k" * 64, 1, "at most 63 characters, not 64"),
    ("x, ü=1", 4, "invalid label key 'ü'"),
    ("a=-b", 3, "invalid label value '-b' at position 3"),
    ("a=b.", 3, "invalid label value 'b.'"),
    ("a=b/c", 3, "invalid label value 'b/c'"),
    ("a=" + "v" * 64, 3, "at most 63 characters, not 64"),
    ("a in (x,_y)", 9, "invalid label value '_y'"),
]


@pytest.mark.parametrize(("text", "position", "fragment"), INVALID)
def test_parse_invalid(text: str, position: int, fragment: str) -> None:
    """Each invalid form is refused with a message naming the selector, position and problem."""
    with pytest.raises(SelectorError) as caught:
        Selector.parse(text)
    message = str(caught.value)
    assert caught.value.position == position
    assert message.startswith(f"label selector {text!r}: ")
    assert fragment in message
    assert f"at position {position}" in message
    assert "; " in message  # every message goes on to say what to write instead


def test_missing_paren_message_is_exact() -> None:
    """The message for an unclosed list names the last value, the position and an example."""
    with pytest.raises(SelectorError) as caught:
        Selector.parse("a in (b")
    assert str(caught.value) == (
        "label selector 'a in (b': missing ')' after 'b' at position 8; "
        "write e.g. 'env in (prod,staging)'"
    )


def test_selector_error_is_a_value_error() -> None:
    """SelectorError is a ValueError so generic input handling catches it."""
    assert issubclass(SelectorError, ValueError)


# --- matching --------------------------------------------------------------------------------

ABSENT_LABELS: dict[str, str] = {"other": "b"}
B = {"a": "b"}
C = {"a": "c"}
EMPTY = {"a": ""}

MATCHING: list[tuple[str, Mapping[str, str], bool]] = [
    ("a=b", B, True),
    ("a=b", C, False),
    ("a=b", ABSENT_LABELS, False),
    ("a=", EMPTY, True),
    ("a=", ABSENT_LABELS, False),
    ("a=", B, False),
    ("a!=b", B, False),
    ("a!=b", C, True),
    ("a!=b", ABSENT_LABELS, True),
    ("a!=", EMPTY, False),
    ("a!=", B, True),
    ("a in (b,c)", B, True),
    ("a in (b,c)", C, True),
    ("a in (b)", C, False),
    ("a in (b,c)", ABSENT_LABELS, False),
    ("a in (,b)", EMPTY, True),
    ("a notin (b,c)", B, False),
    ("a notin (b)", C, True),
    ("a notin (b,c)", ABSENT_LABELS, True),
    ("a notin (,)", EMPTY, False),
    ("a", B, True),
    ("a", EMPTY, True),
    ("a", ABSENT_LABELS, False),
    ("!a", B, False),
    ("!a", EMPTY, False),
    ("!a", ABSENT_LABELS, True),
    ("", {}, True),
    ("", B, True),
    ("a=b,other", {"a": "b", "other": "x"}, True),
    ("a=b,other", B, False),
    ("a=b,!other", {"a": "b", "other": "x"}, False),
    ("a in (b,c),a!=c", C, False),
    ("a in (b,c),a!=c", B, True),
    ("a>1", {"a": "2"}, True),
    ("a>1", {"a": "1"}, False),
    ("a>1", {"a": "0"}, False),
    ("a<1", {"a": "0"}, True),
    ("a<1", {"a": "1"}, False),
    ("a>1", {"a": "010"}, True),
    ("a>1", ABSENT_LABELS, False),
    ("a<1", ABSENT_LABELS, False),
    ("a>1", EMPTY, False),
    ("a<1", B, False),
    ("a<10", {"a": "1.5"}, False),
    ("a<10", {"a": "1_0"}, False),
    ("a>0", {"a": "99999999999999999999"}, False),
    ("a>0,a<3", {"a": "2"}, True),
    ("a>0,a<3", {"a": "3"}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCHING)
def test_matches(text: str, labels: Mapping[str, str], expected: bool) -> None:
    """Each operator matches as in Kubernetes, including when the key is absent."""
    assert Selector.parse(text).matches(labels) is expected


def test_keys_and_is_empty() -> None:
    """keys() lists every key looked at once; only the selector without requirements is empty."""
    selector = Selector.parse("a=b,!c,a notin (x),d")
    assert selector.keys() == frozenset({"a", "c", "d"})
    assert not selector.is_empty()
    assert Selector.parse("").is_empty()
    assert Selector().is_empty()
    assert Selector().keys() == frozenset()


def test_order_does_not_matter_for_equality() -> None:
    """Selectors with the same requirements in another order are equal and hash alike."""
    left = Selector.parse("b in (y,x),a=1,!c")
    right = Selector.parse("!c , a==1 , b in (x,y,x)")
    assert left == right
    assert hash(left) == hash(right)


REQUIREMENT_ERRORS: list[tuple[str, Operator, tuple[str, ...], str]] = [
    ("-a", EXISTS, (), "invalid label key '-a'"),
    ("a", EQ, (), "needs exactly one value, not 0"),
    ("a", NE, ("x", "y"), "needs exactly one value, not 2"),
    ("a", IN, (), "needs at least one value"),
    ("a", NOTIN, (), "needs at least one value"),
    ("a", EXISTS, ("x",), "takes no values"),
    ("a", ABSENT, ("x",), "takes no values"),
    ("a", GT, (), "requirement 'a>' needs exactly one value, not 0; write e.g. 'env>3'"),
    ("a", LT, ("1", "2"), "needs exactly one value, not 2"),
    ("a", GT, ("x",), "compares with 'x', which is not an integer"),
    ("a", LT, ("1_000",), "compares with '1_000', which is not an integer"),
    ("a", GT, ("٣",), "invalid value"),
    ("a", IN, ("ok", "not ok"), "invalid value 'not ok' for label key 'a'"),
]


@pytest.mark.parametrize(("key", "operator", "values", "fragment"), REQUIREMENT_ERRORS)
def test_requirement_validates(
    key: str, operator: Operator, values: tuple[str, ...], fragment: str
) -> None:
    """A requirement built directly is checked like a parsed one."""
    with pytest.raises(SelectorError, match=fragment):
        Requirement(key, operator, values)


def test_requirement_normalises_set_values() -> None:
    """in/notin values are sorted and deduplicated; a plain string operator is accepted."""
    requirement = Requirement("a", "in", ("c", "b", "c"))  # type: ignore[arg-type]
    assert requirement.operator is Operator.IN
    assert requirement.values == ("b", "c")
    assert str(requirement) == "a in (b,c)"


# --- the structured form ---------------------------------------------------------------------


def test_from_match_labels_and_expressions() -> None:
    """matchLabels become equalities and matchExpressions map In/NotIn/Exists/DoesNotExist."""
    selector = Selector.from_match(
        {"app": "web", "tier": ""},
        [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "zone", "operator": "NotIn", "values": ["z1"]},
            {"key": "gpu", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist", "values": []},
        ],
    )
    assert str(selector) == ("app=web,!canary,env in (prod,staging),gpu,tier=,zone notin (z1)")
    assert selector.matches({"app": "web", "tier": "", "env": "prod", "gpu": "1"})
    assert not selector.matches({"app": "web", "tier": "", "env": "dev", "gpu": "1"})
    assert Selector.parse(str(selector)) == selector


def test_from_match_empty_matches_everything() -> None:
    """No matchLabels and no matchExpressions (or empty ones) select every label set."""
    assert Selector.from_match().is_empty()
    assert Selector.from_match({}, []).is_empty()
    assert Selector.from_match(None, None).matches({"x": "y"})


FROM_MATCH_ERRORS: list[tuple[Any, Any, str]] = [
    (["app"], None, "matchLabels must be an object mapping label keys"),
    ({"app": 3}, None, "matchLabels['app'] must be a string, not int"),
    ({1: "x"}, None, "matchLabels has a non-string key 1"),
    ({"-app": "x"}, None, "matchLabels: key '-app' is not a valid label key"),
    ({"app": "x y"}, None, "matchLabels['app'] 'x y' is not a valid label value"),
    (None, {"key": "a"}, "matchExpressions must be a list"),
    (None, "a", "matchExpressions must be a list"),
    (None, ["a"], "matchExpressions[0] must be an object"),
    (None, [{"key": "a", "operator": "In", "values": []}], "'In' needs at least one value"),
    (None, [{"key": "a", "operator": "NotIn"}], "matchExpressions[0]: operator 'NotIn' needs"),
    (None, [{"key": "a", "operator": "Exists", "values": ["x"]}], "'Exists' takes no values"),
    (None, [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}], "takes no values"),
    (None, [{"key": "a", "operator": "in", "values": ["x"]}], "operator 'in' is not one of"),
    # Gt/Lt are string-form only, as in metav1.LabelSelector (LabelSelectorAsSelector refuses them).
    (None, [{"key": "a", "operator": "Gt", "values": ["1"]}], "operator 'Gt' is not one of"),
    (None, [{"key": "a", "operator": "Lt", "values": ["1"]}], "operator 'Lt' is not one of"),
    (None, [{"key": "a"}], "operator None is not one of"),
    (None, [{"operator": "Exists"}], "matchExpressions[0].key must be a string"),
    (
        None,
        [{"key": "A/b", "operator": "Exists"}],
        "matchExpressions[0].key 'A/b' is not a valid label key",
    ),
    (None, [{"key": "a", "operator": "In", "values": "x"}], ".values must be a list"),
    (None, [{"key": "a", "operator": "In", "values": ["x", 2]}], "values[1] must be a string"),
    (None, [{"key": "a", "operator": "In", "values": ["-x"]}], "values[0] '-x' is not a valid"),
    (None, [{"key": "a", "operator": "Exists", "value": "x"}], "unknown field 'value'"),
    (
        None,
        [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "In"}],
        "matchExpressions[1]: operator 'In' needs",
    ),
]


@pytest.mark.parametrize(("labels", "expressions", "fragment"), FROM_MATCH_ERRORS)
def test_from_match_invalid(labels: Any, expressions: Any, fragment: str) -> None:
    """Malformed structured selectors are refused with the offending field named."""
    with pytest.raises(SelectorError) as caught:
        Selector.from_match(labels, expressions)
    assert fragment in str(caught.value)


# --- label sets ------------------------------------------------------------------------------


def test_validate_labels_returns_a_plain_copy() -> None:
    """Valid labels come back as a new dict with the same items."""
    labels = {"app.kubernetes.io/name": "web", "tier": "", "A-b_c.d": "X.1"}
    checked = validate_labels(labels)
    assert checked == labels
    assert checked is not labels
    assert validate_labels({}) == {}
    assert len(validate_labels({f"k{i}": "v" for i in range(MAX_LABELS)})) == MAX_LABELS


LABEL_ERRORS: list[tuple[object, str]] = [
    (None, "labels must be an object mapping label keys to string values, not NoneType"),
    ([("a", "b")], "not list"),
    ({2: "b"}, "labels has a non-string key 2"),
    ({"": "b"}, "labels: key '' is not a valid label key: the name must not be empty"),
    ({"a/b/c": "b"}, "labels: key 'a/b/c' is not a valid label key: a key may contain"),
    ({"k" * 64: "b"}, "the name must be at most 63 characters, not 64"),
    ({"a": 1}, "labels['a'] must be a string, not int"),
    ({"a": None}, "labels['a'] must be a string, not NoneType"),
    ({"a": "v" * 64}, "labels['a'] '" + "v" * 64 + "' is not a valid label value"),
    ({"a": "-b"}, "labels['a'] '-b' is not a valid label value"),
    ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, "labels has 65 labels but at most 64"),
]


@pytest.mark.parametrize(("labels", "fragment"), LABEL_ERRORS)
def test_validate_labels_invalid(labels: object, fragment: str) -> None:
    """Invalid label sets are refused with the field and the key named."""
    with pytest.raises(SelectorError) as caught:
        validate_labels(labels)
    assert fragment in str(caught.value)


def test_validate_labels_names_the_field() -> None:
    """The field argument appears in the message so API errors point at the right place."""
    with pytest.raises(SelectorError, match=r"^spec\.nodeLabels\['zone'\] '-z' "):
        validate_labels({"zone": "-z"}, field="spec.nodeLabels")


# --- properties ------------------------------------------------------------------------------

_ALNUM = st.sampled_from("abcxyzABZ0129")
_INNER = st.text(alphabet="abzAZ09-_.", max_size=6)
_DNS_ALNUM = st.sampled_from("abcxyz0129")
_DNS_INNER = st.text(alphabet="abz09-", max_size=4)


def _bracketed(
    first: st.SearchStrategy[str], inner: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    """Strings that start and end with an alphanumeric character, with anything allowed inside."""
    longer = st.builds(lambda a, mid, z: a + mid + z, first, inner, first)
    return st.one_of(first, longer)


_NAMES = _bracketed(_ALNUM, _INNER)
_PREFIXES = st.lists(_bracketed(_DNS_ALNUM, _DNS_INNER), min_size=1, max_size=3).map(".".join)
_KEYS = st.one_of(
    _NAMES,
    st.builds(lambda prefix, name: f"{prefix}/{name}", _PREFIXES, _NAMES),
    st.sampled_from(["in", "notin", "a", "b"]),
)
_INTEGERS = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    st.integers(min_value=0, max_value=99).map(lambda n: f"0{n}"),
)
_VALUES = st.one_of(
    st.just(""), _NAMES, st.sampled_from(["in", "notin", "x", "y", "1.5", "9" * 20])
)
_LABEL_VALUES = st.one_of(_VALUES, _INTEGERS)


@st.composite
def _requirements(draw: st.DrawFn) -> Requirement:
    key = draw(_KEYS)
    operator = draw(st.sampled_from(list(Operator)))
    if operator in (Operator.IN, Operator.NOT_IN):
        values = tuple(draw(st.lists(_VALUES, min_size=1, max_size=4)))
    elif operator in (Operator.EQUALS, Operator.NOT_EQUALS):
        values = (draw(_VALUES),)
    elif operator in (Operator.GREATER_THAN, Operator.LESS_THAN):
        values = (draw(_INTEGERS),)
    else:
        values = ()
    return Requirement(key, operator, values)


_SELECTORS = st.builds(Selector, st.lists(_requirements(), max_size=5).map(tuple))
# Fewer examples than the default keeps this module under three seconds on a loaded machine.
_FAST = settings(max_examples=50)
_LABELS = st.dictionaries(st.sampled_from(["a", "b", "in", "x.io/a"]), _LABEL_VALUES, max_size=4)


@_FAST
@given(_SELECTORS)
def test_str_parse_round_trip(selector: Selector) -> None:
    """Printing any selector and parsing the text gives the same selector back."""
    assert Selector.parse(str(selector)) == selector


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="ab=!(),<> \tinot/.-_ü", max_size=30),
    )
)
def test_parse_raises_only_selector_error(text: str) -> None:
    """Arbitrary text either parses (and then round-trips) or raises SelectorError."""
    outcome: Selector | SelectorError
    try:
        outcome = Selector.parse(text)
    except SelectorError as error:
        outcome = error
    if isinstance(outcome, Selector):
        assert Selector.parse(str(outcome)) == outcome
    else:
        assert outcome.position is not None
        assert 1 <= outcome.position <= len(text) + 1


@_FAST
@given(_SELECTORS, _LABELS)
def test_conjunction_matches_all_requirements(selector: Selector, labels: dict[str, str]) -> None:
    """A selector matches exactly when every requirement matches, also after a round trip."""
    expected = all(requirement.matches(labels) for requirement in selector.requirements)
    assert selector.matches(labels) is expected
    assert Selector.parse(str(selector)).matches(labels) is expected


@_FAST
@given(_requirements(), _LABELS)
def test_negated_operators_are_complements(
    requirement: Requirement, labels: dict[str, str]
) -> None:
    """!= / notin / ! match exactly when = / in / exists on the same key and values do not."""
    if requirement.operator in (Operator.GREATER_THAN, Operator.LESS_THAN):
        return  # no complement in the syntax; test_comparisons_read_integers covers these
    opposite = {
        Operator.EQUALS: Operator.NOT_EQUALS,
        Operator.NOT_EQUALS: Operator.EQUALS,
        Operator.IN: Operator.NOT_IN,
        Operator.NOT_IN: Operator.IN,
        Operator.EXISTS: Operator.NOT_EXISTS,
        Operator.NOT_EXISTS: Operator.EXISTS,
    }[requirement.operator]
    negated = Requirement(requirement.key, opposite, requirement.values)
    assert negated.matches(labels) is not requirement.matches(labels)


@_FAST
@given(_KEYS, st.sampled_from([Operator.GREATER_THAN, Operator.LESS_THAN]), _INTEGERS, _LABELS)
def test_comparisons_read_integers(
    key: str, operator: Operator, bound: str, labels: dict[str, str]
) -> None:
    """k>N / k<N match exactly when k holds a decimal int64 on that side of N (Kubernetes)."""
    requirement = Requirement(key, operator, (bound,))
    value = labels.get(key)
    number = int(value) if value is not None and value.isascii() and value.isdigit() else None
    if number is not None and number > 2**63 - 1:
        number = None  # strconv.ParseInt fails on overflow, so such a value never matches
    if number is None:
        expected = False
    elif operator is Operator.GREATER_THAN:
        expected = number > int(bound)
    else:
        expected = number < int(bound)
    assert requirement.matches(labels) is expected
    assert Selector.parse(str(requirement)).matches(labels) is expected


@_FAST
@given(st.integers(min_value=0, max_value=2**63 - 2), _INTEGERS)
def test_greater_and_less_split_the_integers(bound: int, value: str) -> None:
    """For an integer label, exactly one of k>N, k<N and k=N holds (numerically, so '07' = 7)."""
    labels = {"k": value}
    above = Selector.parse(f"k>{bound}").matches(labels)
    below = Selector.parse(f"k<{bound}").matches(labels)
    assert above + below + (int(value) == bound) == 1
