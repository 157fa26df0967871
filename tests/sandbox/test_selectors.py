"""Label and field selectors of the API emulator: kube-apiserver's grammar, matching and 400 messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from etcdlock_sandbox.apiserver.selectors import (
    SelectorError,
    label_selector_from_dict,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "lock", "tier": "db", "empty": "", "replicas": "3", "example.com/team": "infra"}

# -- label selector strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=lock", True),
        ("app=other", False),
        ("app==lock", True),
        ("app==other", False),
        ("app!=other", True),
        ("app!=lock", False),
        ("app in (lock,other)", True),
        ("app in (other)", False),
        ("app notin (other,more)", True),
        ("app notin (lock)", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("replicas>2", True),
        ("replicas>3", False),
        ("replicas<4", True),
        ("replicas<3", False),
        ("example.com/team=infra", True),
    ],
)
def test_each_label_operator_matches_like_kube_apiserver(selector: str, expected: bool) -> None:
    assert parse_label_selector(selector)(LABELS) is expected


@pytest.mark.parametrize("selector", ["missing!=x", "missing notin (x,y)", "!missing"])
def test_negative_operators_select_objects_without_the_key(selector: str) -> None:
    assert parse_label_selector(selector)({}) is True


@pytest.mark.parametrize("selector", ["missing=x", "missing==x", "missing in (x)", "missing", "missing>1"])
def test_positive_operators_never_select_objects_without_the_key(selector: str) -> None:
    assert parse_label_selector(selector)({"other": "x"}) is False


def test_requirements_separated_by_commas_must_all_hold() -> None:
    selector = parse_label_selector("app=lock,tier in (db,cache),!legacy")
    assert selector(LABELS) is True
    assert selector({**LABELS, "legacy": "yes"}) is False
    assert selector({**LABELS, "tier": "web"}) is False


@pytest.mark.parametrize("selector", ["", "   ", "\t"])
def test_an_empty_selector_selects_everything(selector: str) -> None:
    match = parse_label_selector(selector)
    assert match({}) is True
    assert match(LABELS) is True


def test_whitespace_around_keys_operators_and_values_is_ignored() -> None:
    selector = parse_label_selector("  app = lock ,  tier  in  ( db , cache ) ,  ! legacy ")
    assert selector(LABELS) is True


def test_missing_labels_count_as_no_labels() -> None:
    assert parse_label_selector("!app")(None) is True  # type: ignore[arg-type]


@pytest.mark.parametrize("selector", ["empty=", "empty==", "empty in ()", "empty in (,x)", "empty in (x,)"])
def test_an_omitted_value_means_the_empty_string(selector: str) -> None:
    # As in kube-apiserver, "k=" is valid and selects k == "" (it is not a syntax error).
    assert parse_label_selector(selector)(LABELS) is True
    assert parse_label_selector(selector)({"empty": "y"}) is False


def test_in_and_notin_are_ordinary_words_where_a_key_or_value_is_expected() -> None:
    assert parse_label_selector("in in (notin)")({"in": "notin"}) is True


def test_gt_and_lt_do_not_match_non_integer_label_values() -> None:
    assert parse_label_selector("app>1")(LABELS) is False


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("a in (", "unable to parse requirement: found '', expected: ',', ')' or identifier"),
        ("a in (x", "unable to parse requirement: found '', expected: ',' or ')'"),
        ("a in x", "unable to parse requirement: found 'x' expected: '('"),
        ("a in (x y)", "unable to parse requirement: found 'y', expected: ',' or ')'"),
        ("=v", "found '=', expected: !, identifier, or 'end of string'"),
        ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("a=b,", "found '', expected: identifier after ','"),
        ("a,,b", "found ',', expected: identifier after ','"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a=(", "unable to parse requirement: found '(', expected: identifier"),
        (
            "a>b",
            'unable to parse requirement: values[0]: Invalid value: "b": '
            "for 'Gt', 'Lt' operators, the value must be an integer",
        ),
    ],
)
def test_malformed_label_selectors_are_rejected_with_kube_apiserver_messages(
    selector: str, message: str
) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_label_selector(selector)
    assert str(caught.value) == message


def test_a_bad_key_is_rejected_naming_the_rule() -> None:
    with pytest.raises(SelectorError) as caught:
        parse_label_selector("a$b=c")
    assert str(caught.value) == (
        'unable to parse requirement: <nil>: Invalid value: "a$b": name part must consist of alphanumeric '
        "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  "
        "or 'my.name',  or '123-abc', regex used for validation is "
        "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
    )


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("-app=x", "name part must consist of alphanumeric characters"),
        ("/app=x", "prefix part must be non-empty"),
        ("Example.com/app=x", "prefix part a lowercase RFC 1123 subdomain must consist of"),
        ("a/b/c=x", "a valid label key must consist of alphanumeric characters"),
        ("example.com/=x", "name part must be non-empty"),
        ("a" * 64 + "=x", "name part must be no more than 63 bytes"),
    ],
)
def test_keys_are_validated_as_qualified_names(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError, match=r"^unable to parse requirement: <nil>: Invalid value") as caught:
        parse_label_selector(selector)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("app=b$c", 'values[0][app]: Invalid value: "b$c": a valid label must be an empty string or consist'),
        ("app=-x", 'values[0][app]: Invalid value: "-x": a valid label must be'),
        ("app in (ok,bad$)", 'values[0][app]: Invalid value: "bad$"'),
        ("app=" + "v" * 64, "must be no more than 63 bytes"),
    ],
)
def test_values_are_validated_as_label_values(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_label_selector(selector)
    assert fragment in str(caught.value)


def test_selector_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_label_selector("=")


# -- metav1.LabelSelector -----------------------------------------------------------------------------


def test_match_labels_and_match_expressions_must_all_hold() -> None:
    selector = label_selector_from_dict(
        {
            "matchLabels": {"app": "lock"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["db", "cache"]},
                {"key": "stage", "operator": "NotIn", "values": ["test"]},
                {"key": "replicas", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector(LABELS) is True
    assert selector({**LABELS, "app": "other"}) is False
    assert selector({**LABELS, "tier": "web"}) is False
    assert selector({**LABELS, "stage": "test"}) is False
    assert selector({k: v for k, v in LABELS.items() if k != "replicas"}) is False
    assert selector({**LABELS, "legacy": ""}) is False


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "tier", "operator": "In", "values": ["db"]}, {"tier": "db"}, True),
        ({"key": "tier", "operator": "In", "values": ["db"]}, {}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["db"]}, {}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["db"]}, {"tier": "db"}, False),
        ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
        ({"key": "tier", "operator": "Exists"}, {}, False),
        ({"key": "tier", "operator": "DoesNotExist"}, {}, True),
        ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "db"}, False),
    ],
)
def test_each_match_expression_operator(
    expression: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert label_selector_from_dict({"matchExpressions": [expression]})(labels) is expected


def test_an_empty_label_selector_selects_everything_and_a_missing_one_nothing() -> None:
    assert label_selector_from_dict({})(LABELS) is True
    assert label_selector_from_dict({"matchLabels": {}, "matchExpressions": []})({}) is True
    assert label_selector_from_dict(None)(LABELS) is False


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            '"Equals" is not a valid label selector operator',
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
            "values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            'values: Invalid value: ["x"]: values set must be empty for exists and does not exist',
        ),
        (
            {"matchLabels": {"a": "b$"}},
            'values[0][a]: Invalid value: "b$": a valid label must be an empty string',
        ),
        ({"matchLabels": {"a b": "x"}}, 'key: Invalid value: "a b": name part must consist of'),
    ],
)
def test_invalid_label_selectors_are_rejected(selector: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        label_selector_from_dict(selector)
    assert str(caught.value).startswith(message)


# -- field selectors ----------------------------------------------------------------------------------


def _get(*path: str) -> Callable[[dict[str, Any]], str | None]:
    def getter(obj: dict[str, Any]) -> str | None:
        node: Any = obj
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return str(node)

    return getter


FIELDS = {
    "metadata.name": _get("metadata", "name"),
    "metadata.namespace": _get("metadata", "namespace"),
    "status.phase": _get("status", "phase"),
}
POD = {"metadata": {"name": "web-1", "namespace": "default"}, "status": {"phase": "Running"}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=web-1", True),
        ("metadata.name==web-1", True),
        ("metadata.name=web-2", False),
        ("metadata.name!=web-2", True),
        ("metadata.name!=web-1", False),
        ("metadata.name=web-1,status.phase=Running", True),
        ("metadata.name=web-1,status.phase!=Running", False),
        ("metadata.namespace=default,status.phase==Running", True),
        ("", True),
    ],
)
def test_field_selector_operators(selector: str, expected: bool) -> None:
    assert parse_field_selector(selector, FIELDS)(POD) is expected


def test_a_field_the_object_lacks_compares_as_the_empty_string() -> None:
    pending = {"metadata": {"name": "web-2"}}
    assert parse_field_selector("status.phase=", FIELDS)(pending) is True
    assert parse_field_selector("status.phase!=Running", FIELDS)(pending) is True
    assert parse_field_selector("metadata.namespace=default", FIELDS)(pending) is False


def test_escaped_commas_and_equals_signs_are_part_of_the_value() -> None:
    obj = {"metadata": {"name": "a,b=c"}}
    assert parse_field_selector(r"metadata.name=a\,b\=c", FIELDS)(obj) is True


def test_an_unsupported_field_is_rejected_listing_the_supported_ones() -> None:
    with pytest.raises(SelectorError) as caught:
        parse_field_selector("spec.nodeName=n1", FIELDS)
    assert str(caught.value) == (
        '"spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace", '
        '"status.phase"'
    )


def test_field_selectors_do_not_trim_whitespace() -> None:
    with pytest.raises(SelectorError, match=r'^"metadata\.name " is not a known field selector'):
        parse_field_selector("metadata.name = web-1", FIELDS)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        (
            "status.phase=x,nonsense",
            "invalid selector: 'status.phase=x,nonsense'; can't understand 'nonsense'",
        ),
        ("metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
        (r"metadata.name=a\b", "invalid field selector: invalid escape sequence: \\b"),
        ("metadata.name=a\\", "invalid field selector: invalid escape sequence: \\"),
    ],
)
def test_malformed_field_selectors_are_rejected(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_field_selector(selector, FIELDS)
    assert str(caught.value) == message
