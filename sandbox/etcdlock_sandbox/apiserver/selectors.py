"""Label and field selectors for list and watch, parsed and matched the way kube-apiserver does.

The grammar, the matching rules and the error messages follow ``k8s.io/apimachinery`` (``labels.Parse``,
``fields.ParseSelector``, ``metav1.LabelSelectorAsSelector``), so a client that works against this emulator
sees the same 400s it would get from a real cluster. Points that surprise people and are deliberate:

- ``k=`` and ``k==`` are valid: they select objects whose label ``k`` is the empty string.
- ``!=`` and ``notin`` also select objects that lack the key; ``in`` and ``=`` never do.
- ``k>N`` / ``k<N`` (integer comparison) are accepted, as by kube-apiserver.
- Field selectors are not whitespace tolerant: ``metadata.name = x`` names the field ``"metadata.name "``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldGetter",
    "FieldMatcher",
    "LabelMatcher",
    "SelectorError",
    "label_selector_from_dict",
    "parse_field_selector",
    "parse_label_selector",
]

from etcdlock_sandbox.apiserver.gostrings import go_quote


class SelectorError(ValueError):
    """Malformed selector or unsupported field (kube-apiserver answers 400 BadRequest with this message)."""


LabelMatcher = Callable[[Mapping[str, str]], bool]
FieldMatcher = Callable[[dict[str, Any]], bool]
FieldGetter = Callable[[dict[str, Any]], str | None]

# -- validation of label keys and values (k8s.io/apimachinery/pkg/api/validate/content) -------------------

_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_VALUE_FMT = f"({_NAME_FMT})?"
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_FMT = _DNS_LABEL_FMT + "(\\." + _DNS_LABEL_FMT + ")*"
_DNS_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_MAX_NAME = 63
_MAX_VALUE = 63
_MAX_SUBDOMAIN = 253


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # Kubernetes' RegexError, including its double spaces between examples.
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    listed = " or ".join(f"'{example}', " for example in examples)
    return f"{msg} (e.g. {listed}regex used for validation is '{fmt}')"


def _fullmatch(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value, flags=re.ASCII) is not None


def _label_key_errors(key: str) -> list[str]:
    errs: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if len(prefix) > _MAX_SUBDOMAIN:
                errs.append(f"prefix part must be no more than {_MAX_SUBDOMAIN} bytes")
            if not _fullmatch(_DNS_SUBDOMAIN_FMT, prefix):
                detail = _regex_error(_DNS_SUBDOMAIN_MSG, _DNS_SUBDOMAIN_FMT, "example.com")
                errs.append("prefix part " + detail)
    else:
        return [
            "a valid label key "
            + _regex_error(_NAME_MSG, _NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name.encode()) > _MAX_NAME:
        errs.append(f"name part must be no more than {_MAX_NAME} bytes")
    if not _fullmatch(_NAME_FMT, name):
        errs.append("name part " + _regex_error(_NAME_MSG, _NAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def _label_value_errors(value: str) -> list[str]:
    errs: list[str] = []
    if len(value.encode()) > _MAX_VALUE:
        errs.append(f"must be no more than {_MAX_VALUE} bytes")
    if not _fullmatch(_VALUE_FMT, value):
        errs.append(_regex_error(_VALUE_MSG, _VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _go_json_strings(values: Sequence[str] | None) -> str:
    """``json.Marshal`` of a ``[]string`` (nil marshals as ``null``)."""
    if values is None:
        return "null"
    return "[" + ",".join(go_quote(value) for value in values) + "]"


def _aggregate(errors: list[str]) -> str:
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# -- requirements -----------------------------------------------------------------------------------

_IN, _NOT_IN, _EQUALS, _DOUBLE_EQUALS, _NOT_EQUALS = "in", "notin", "=", "==", "!="
_GREATER, _LESS, _EXISTS, _DOES_NOT_EXIST = "gt", "lt", "exists", "!"
_BINARY_OPERATORS = (_IN, _NOT_IN, _EQUALS, _DOUBLE_EQUALS, _NOT_EQUALS, _GREATER, _LESS)


def _parse_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``: optional sign, decimal digits only, in int64 range."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator in (_IN, _EQUALS, _DOUBLE_EQUALS):
            return present and labels[self.key] in self.values
        if self.operator in (_NOT_IN, _NOT_EQUALS):
            return not present or labels[self.key] not in self.values
        if self.operator == _EXISTS:
            return present
        if self.operator == _DOES_NOT_EXIST:
            return not present
        if not present or len(self.values) != 1:
            return False
        have, want = _parse_int64(labels[self.key]), _parse_int64(self.values[0])
        if have is None or want is None:
            return False
        return have > want if self.operator == _GREATER else have < want


def _new_requirement(key: str, operator: str, values: list[str] | None) -> _Requirement:
    """Validate like ``labels.NewRequirement`` (field paths are relative, as in kube's messages)."""
    errs: list[str] = []
    key_errs = _label_key_errors(key)
    if key_errs:
        errs.append(f"key: Invalid value: {go_quote(key)}: {'; '.join(key_errs)}")
    vals = values or []
    if operator in (_IN, _NOT_IN):
        if not vals:
            errs.append(
                f"values: Invalid value: {_go_json_strings(values)}: "
                "for 'in', 'notin' operators, values set can't be empty"
            )
    elif operator in (_EQUALS, _DOUBLE_EQUALS, _NOT_EQUALS):
        if len(vals) != 1:
            errs.append(
                f"values: Invalid value: {_go_json_strings(values)}: "
                "exact-match compatibility requires one single value"
            )
    elif operator in (_EXISTS, _DOES_NOT_EXIST):
        if vals:
            errs.append(
                f"values: Invalid value: {_go_json_strings(values)}: "
                "values set must be empty for exists and does not exist"
            )
    else:
        if len(vals) != 1:
            errs.append(
                f"values: Invalid value: {_go_json_strings(values)}: "
                "for 'Gt', 'Lt' operators, exactly one value is required"
            )
        for i, value in enumerate(vals):
            if _parse_int64(value) is None:
                errs.append(
                    f"values[{i}]: Invalid value: {go_quote(value)}: "
                    "for 'Gt', 'Lt' operators, the value must be an integer"
                )
    for i, value in enumerate(vals):
        value_errs = _label_value_errors(value)
        if value_errs:
            errs.append(f"values[{i}][{key}]: Invalid value: {go_quote(value)}: {'; '.join(value_errs)}")
    if errs:
        raise SelectorError(_aggregate(errs))
    return _Requirement(key, operator, tuple(vals))


@dataclass(frozen=True)
class _LabelSelector:
    """A conjunction of requirements; no requirements selects everything."""

    requirements: tuple[_Requirement, ...]
    nothing: bool = False

    def __call__(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        have = labels or {}
        return all(requirement.matches(have) for requirement in self.requirements)


# -- label selector string parser (a port of labels.Parse: lexer, then recursive descent) --------------

_IDENT, _END, _ERROR = "identifier", "end", "error"
_OPEN, _CLOSE, _COMMA = "(", ")", ","
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_KEYWORDS = {
    ")": _CLOSE,
    ",": _COMMA,
    "!": _DOES_NOT_EXIST,
    "==": _DOUBLE_EQUALS,
    "=": _EQUALS,
    ">": _GREATER,
    "in": _IN,
    "<": _LESS,
    "!=": _NOT_EQUALS,
    "notin": _NOT_IN,
    "(": _OPEN,
}


def _lex(text: str) -> list[tuple[str, str]]:
    # Go reads bytes and treats NUL as the end of input; a NUL here ends the selector the same way.
    text = text.split("\x00", 1)[0]
    tokens: list[tuple[str, str]] = []
    pos, size = 0, len(text)
    while True:
        while pos < size and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= size:
            tokens.append((_END, ""))
            return tokens
        if text[pos] in _SPECIAL:
            # The longest run of special characters that still spells an operator ("!=", "=="...).
            buffer, last = "", None
            while pos < size and text[pos] in _SPECIAL:
                buffer += text[pos]
                pos += 1
                if buffer in _KEYWORDS:
                    last = (_KEYWORDS[buffer], buffer)
                elif last is not None:
                    pos -= 1
                    break
            tokens.append(last or (_ERROR, f"error expected: keyword found '{buffer}'"))
            continue
        start = pos
        while pos < size and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        tokens.append((_KEYWORDS.get(word, _IDENT), word))


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.position = 0

    def _token(self, index: int, values: bool) -> tuple[str, str]:
        kind, literal = self.tokens[index]
        if values and kind in (_IN, _NOT_IN):
            kind = _IDENT  # in the values context, "in" and "notin" are plain words
        return kind, literal

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        return self._token(self.position, values)

    def consume(self, values: bool = True) -> tuple[str, str]:
        self.position += 1
        return self._token(self.position - 1, values)

    def parse(self) -> list[_Requirement]:
        requirements: list[_Requirement] = []
        while True:
            kind, literal = self.lookahead()
            if kind in (_IDENT, _DOES_NOT_EXIST):
                try:
                    requirements.append(self.requirement())
                except SelectorError as exc:
                    raise SelectorError(f"unable to parse requirement: {exc}") from None
                kind, literal = self.consume()
                if kind == _END:
                    return requirements
                if kind == _COMMA:
                    after_kind, after_literal = self.lookahead()
                    if after_kind not in (_IDENT, _DOES_NOT_EXIST):
                        raise SelectorError(f"found '{after_literal}', expected: identifier after ','")
                    continue
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            if kind == _END:
                return requirements
            raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> _Requirement:
        operator = ""
        kind, key = self.consume()
        if kind == _DOES_NOT_EXIST:
            operator = _DOES_NOT_EXIST
            kind, key = self.consume()
        if kind != _IDENT:
            raise SelectorError(f"found '{key}', expected: identifier")
        key_errs = _label_key_errors(key)
        if key_errs:
            # kube validates the key here with a nil field path, hence "<nil>".
            raise SelectorError(f"<nil>: Invalid value: {go_quote(key)}: {'; '.join(key_errs)}")
        if operator == _DOES_NOT_EXIST or self.lookahead()[0] in (_END, _COMMA):
            # "!key" is complete on its own; whatever follows it is the caller's problem ("!a=b" fails there).
            return _new_requirement(key, operator or _EXISTS, [])
        kind, literal = self.consume(values=False)
        if kind not in _BINARY_OPERATORS:
            raise SelectorError(f"found '{literal}', expected: {', '.join(_BINARY_OPERATORS)}")
        values = self.set_values() if kind in (_IN, _NOT_IN) else self.exact_value()
        return _new_requirement(key, kind, sorted(set(values)))

    def set_values(self) -> list[str]:
        kind, literal = self.consume()
        if kind != _OPEN:
            raise SelectorError(f"found '{literal}' expected: '('")
        kind, literal = self.lookahead()
        if kind in (_IDENT, _COMMA):
            values = self.identifiers()
            if self.consume()[0] != _CLOSE:
                raise SelectorError(f"found '{literal}', expected: ')'")
            return values
        if kind == _CLOSE:
            self.consume()
            return [""]
        raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")

    def identifiers(self) -> list[str]:
        values: list[str] = []
        while True:
            kind, literal = self.consume()
            if kind == _IDENT:
                values.append(literal)
                after_kind, after_literal = self.lookahead()
                if after_kind == _COMMA:
                    continue
                if after_kind == _CLOSE:
                    return values
                raise SelectorError(f"found '{after_literal}', expected: ',' or ')'")
            if kind == _COMMA:
                # Empty entries ("(,a)", "(a,)", "(a,,b)") stand for the empty value.
                if not values:
                    values.append("")
                after_kind, _ = self.lookahead()
                if after_kind == _CLOSE:
                    values.append("")
                    return values
                if after_kind == _COMMA:
                    values.append("")
                continue
            raise SelectorError(f"found '{literal}', expected: ',', or identifier")

    def exact_value(self) -> list[str]:
        if self.lookahead()[0] in (_END, _COMMA):
            return [""]
        kind, literal = self.consume()
        if kind == _IDENT:
            return [literal]
        raise SelectorError(f"found '{literal}', expected: identifier")


def parse_label_selector(text: str) -> LabelMatcher:
    """Parse a ``labelSelector`` query parameter; the empty string selects everything.

    The returned callable takes an object's ``metadata.labels`` (``None`` counts as no labels).
    """
    requirements = _LabelParser(text).parse()
    return _LabelSelector(tuple(sorted(requirements, key=lambda r: r.key)))


def label_selector_from_dict(selector: Mapping[str, Any] | None) -> LabelMatcher:
    """A ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions``) as a matcher.

    As ``metav1.LabelSelectorAsSelector``: an empty selector selects everything, ``None`` (a nil selector)
    selects nothing. Callers whose API defaults a missing selector to "everything" (webhook
    ``objectSelector``/``namespaceSelector``) should pass ``{}`` for a missing one.
    """
    if selector is None:
        return _LabelSelector((), nothing=True)
    if not isinstance(selector, Mapping):
        raise SelectorError(f"label selector must be an object, not {type(selector).__name__}")
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be an object of strings")
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    requirements: list[_Requirement] = []
    for key in sorted(match_labels):
        value = match_labels[key]
        if not isinstance(key, str) or not isinstance(value, str):
            raise SelectorError(f"matchLabels must map strings to strings, not {key!r}: {value!r}")
        requirements.append(_new_requirement(key, _EQUALS, [value]))
    operators = {"In": _IN, "NotIn": _NOT_IN, "Exists": _EXISTS, "DoesNotExist": _DOES_NOT_EXIST}
    for expression in expressions:
        if not isinstance(expression, Mapping):
            raise SelectorError("each of matchExpressions must be an object")
        operator = expression.get("operator", "")
        if operator not in operators:
            raise SelectorError(f"{go_quote(str(operator))} is not a valid label selector operator")
        key = expression.get("key", "")
        values = expression.get("values")
        if not isinstance(key, str) or not _all_strings(values):
            raise SelectorError("matchExpressions need a string key and a list of string values")
        requirements.append(_new_requirement(key, operators[operator], list(values) if values else None))
    return _LabelSelector(tuple(requirements))


def _all_strings(values: object) -> bool:
    return values is None or (isinstance(values, list) and all(isinstance(value, str) for value in values))


# -- field selectors (fields.ParseSelector, then the per-resource field label check) -------------------


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    terms, start, in_slash = [], 0, False
    for i, ch in enumerate(text):
        if in_slash:
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """The first operator (``!=``, ``==``, ``=``) from the left, as kube finds it."""
    for i in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, i):
                return term[:i], operator, term[i + len(operator) :]
    return None


def _unescape(value: str) -> str:
    if not any(ch in value for ch in "\\,="):
        return value
    out: list[str] = []
    in_slash = False
    for ch in value:
        if in_slash:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch in ",=":
            # kube prints the rune with %v, i.e. as its code point.
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if in_slash:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


@dataclass(frozen=True)
class _FieldTerm:
    field: str
    value: str
    equal: bool


@dataclass(frozen=True)
class _FieldSelector:
    terms: tuple[_FieldTerm, ...]
    getters: Mapping[str, FieldGetter]

    def __call__(self, obj: dict[str, Any]) -> bool:
        for term in self.terms:
            # A field the object lacks reads as "", as in kube's fields.Set.
            have = self.getters[term.field](obj) or ""
            if (have == term.value) != term.equal:
                return False
        return True


def parse_field_selector(text: str, fields: Mapping[str, FieldGetter]) -> FieldMatcher:
    """Parse a ``fieldSelector`` query parameter against the fields one resource supports.

    ``fields`` maps each supported field label (``metadata.name``, ``status.phase``...) to a getter; a getter
    returning ``None`` means the object lacks the field, which compares equal to ``""``.
    """
    terms: list[_FieldTerm] = []
    for part in sorted(_split_terms(text) if text else []):
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        lhs, operator, rhs = split
        terms.append(_FieldTerm(lhs, _unescape(rhs), operator != "!="))
    for term in terms:
        if term.field not in fields:
            known = ", ".join(go_quote(name) for name in fields)
            raise SelectorError(f"{go_quote(term.field)} is not a known field selector: only {known}")
    return _FieldSelector(tuple(terms), dict(fields))
