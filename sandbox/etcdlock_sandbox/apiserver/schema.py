"""CRD structural schemas (``openAPIV3Schema``) applied to custom resources as kube-apiserver applies them.

On create and update kube-apiserver first prunes the object (unknown fields go, and so do nulls in
non-nullable fields that have no default), then applies ``default``s, then validates. Call the three
functions here in that order::

    obj = prune(obj, schema)
    obj = apply_defaults(obj, schema)
    problems = validate(obj, schema)   # non-empty -> 422 Invalid, one cause per message

The algorithms are ports of apiextensions-apiserver (``pruning``, ``defaulting``, ``listtype``,
``objectmeta``) and of kube-openapi's validator, and the messages are the ``field.Error`` strings a real
server returns, e.g. ``spec.permits: Invalid value: 0: spec.permits in body should be greater than or
equal to 1``. What is deliberately not done:

- ``x-kubernetes-validations`` (CEL rules) are not evaluated: no CEL interpreter here.
- ``metadata`` (at the root and in embedded resources) is kept as it is and only checked to be an object:
  ObjectMeta pruning and validation belong to the caller.
- Validation ratcheting (tolerating unchanged invalid fields on update) is not implemented.
- The schema itself is trusted: the checks kube-apiserver makes when a CRD is created (structural,
  no ``uniqueItems: true``, patterns compile...) are not repeated; unusable parts are skipped.
"""

from __future__ import annotations

import copy
import datetime
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from etcdlock_sandbox.apiserver.gostrings import go_quote

__all__ = ["apply_defaults", "prune", "unknown_fields", "validate"]

Schema = Mapping[str, Any]

_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_EMBEDDED = "x-kubernetes-embedded-resource"
_INT_OR_STRING = "x-kubernetes-int-or-string"
_META_FIELDS = frozenset(("apiVersion", "kind", "metadata"))


# -- schema accessors ---------------------------------------------------------------------------------


def _properties(s: Schema | None) -> Mapping[str, Any]:
    props = s.get("properties") if s is not None else None
    return props if isinstance(props, Mapping) else {}


def _additional(s: Schema | None) -> tuple[bool, Schema | None]:
    """Whether ``additionalProperties`` is set at all, and its schema (``None`` for the boolean forms)."""
    value = s.get("additionalProperties") if s is not None else None
    if isinstance(value, Mapping):
        return True, value
    return isinstance(value, bool), None


def _items(s: Schema | None) -> Schema | None:
    items = s.get("items") if s is not None else None
    return items if isinstance(items, Mapping) else None


def _field_schema(key: str, s: Schema | None) -> Schema | None:
    props = _properties(s)
    if key in props and isinstance(props[key], Mapping):
        return props[key]  # type: ignore[no-any-return]
    return _additional(s)[1]


def _nullable(s: Schema) -> bool:
    return s.get("nullable") is True


def _has_default(s: Schema | None) -> bool:
    return s is not None and s.get("default") is not None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- pruning ------------------------------------------------------------------------------------------


def prune(obj: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """A copy of ``obj`` without the fields the schema does not specify.

    Under ``x-kubernetes-preserve-unknown-fields: true`` unknown fields stay (fields the schema does
    specify are still pruned inside). ``apiVersion``, ``kind`` and ``metadata`` stay at the root and in
    ``x-kubernetes-embedded-resource`` objects. Nulls in fields that are neither ``nullable`` nor have a
    ``default`` are dropped too, as kube-apiserver does before defaulting. Note kube's quirk, kept here:
    values under ``additionalProperties: true``/``false`` (no schema) keep their scalars but lose every
    field of nested objects.
    """
    result = copy.deepcopy(obj)
    _prune(result, schema, [], "", root=True)
    _prune_nulls(result, schema)
    return result


def unknown_fields(obj: dict[str, Any], schema: Schema) -> list[str]:
    """The paths ``prune`` would drop (``spec.foo``, ``spec.items[0].bar``), sorted.

    This is what kube-apiserver reports as ``unknown field "spec.foo"`` warnings, or rejects with
    ``fieldValidation=Strict``.
    """
    unknown: list[str] = []
    _prune(copy.deepcopy(obj), schema, unknown, "", root=True)
    return sorted(unknown)


def _prune(
    x: Any, s: Schema | None, unknown: list[str], path: str, root: bool = False, preserving: bool = False
) -> None:
    """Drop (and list in ``unknown``) the fields ``s`` does not know.

    Below ``x-kubernetes-preserve-unknown-fields`` (``preserving``, inherited through list items) unknown
    fields stay, and only the known ones are pruned inside.
    """
    preserving = preserving or (s is not None and s.get(_PRESERVE) is True)
    if isinstance(x, dict):
        if s is None:
            if not preserving:
                unknown.extend(_join(path, key) for key in x)
                x.clear()
            return
        embedded = root or s.get(_EMBEDDED) is True
        props = _properties(s)
        has_additional, additional = _additional(s)
        for key in list(x):
            if embedded and key in _META_FIELDS:
                continue
            if key in props:
                child = props[key] if isinstance(props[key], Mapping) else None
                _prune(x[key], child, unknown, _join(path, key))
            elif has_additional:
                _prune(x[key], additional, unknown, _join(path, key))
            elif not preserving:
                unknown.append(_join(path, key))
                del x[key]
    elif isinstance(x, list):
        if s is None and preserving:
            return
        items = _items(s)
        for i, value in enumerate(x):
            _prune(value, items, unknown, f"{path}[{i}]", preserving=preserving)


def _prune_nulls(x: Any, s: Schema | None) -> None:
    if isinstance(x, dict):
        for key in list(x):
            sub = _field_schema(key, s)
            if x[key] is None and sub is not None and not _nullable(sub) and not _has_default(sub):
                del x[key]
            else:
                _prune_nulls(x[key], sub)
    elif isinstance(x, list):
        items = _items(s)
        for value in x:
            _prune_nulls(value, items)


# -- defaulting ---------------------------------------------------------------------------------------


def apply_defaults(obj: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """A copy of ``obj`` with the schema's ``default`` values applied.

    A default fills a field that is absent (or null while not ``nullable``); defaults inside an object
    apply only where that object exists, so ``spec.permits`` is defaulted when ``spec`` is there, and
    ``spec`` itself appears only if it has a ``default`` of its own (after which the defaults inside it
    apply too). Default values are copied, never shared between objects.
    """
    result = copy.deepcopy(obj)
    _default(result, schema)
    return result


def _default(x: Any, s: Schema | None) -> None:
    if s is None:
        return
    if isinstance(x, dict):
        props = _properties(s)
        for key, prop in props.items():
            if not isinstance(prop, Mapping) or not _has_default(prop):
                continue
            if key not in x or (x[key] is None and not _nullable(prop)):
                x[key] = copy.deepcopy(prop["default"])
        additional = _additional(s)[1]
        for key in list(x):
            if key in props:
                _default(x[key], props[key] if isinstance(props[key], Mapping) else None)
            elif additional is not None:
                if x[key] is None and not _nullable(additional):
                    x[key] = copy.deepcopy(additional.get("default"))
                _default(x[key], additional)
    elif isinstance(x, list):
        items = _items(s)
        for i in range(len(x)):
            if x[i] is None and items is not None and not _nullable(items):
                x[i] = copy.deepcopy(items.get("default"))
            _default(x[i], items)


# -- Go formatting of values in messages --------------------------------------------------------------


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of ``abs(value)`` and the decimal point position (0.DIGITS x 10^dp)."""
    _, digits, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    return text, len(text) + exponent


def _format_float(value: float, exponent_form: Callable[[int], bool], json_exponent: bool) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, point = _shortest_digits(value)
    exp = point - 1
    if exponent_form(exp):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        width = 1 if json_exponent else 2
        return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):0{width}d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _go_float(value: float) -> str:
    """Go's ``%v`` of a float64 (``1``, ``1.5``, ``1e+06``)."""
    return _format_float(value, lambda exp: exp < -4 or exp >= 6, json_exponent=False)


def _go_json_float(value: float) -> str:
    """``encoding/json`` of a float64 (``1``, ``1.5``, ``1e+21``, ``1e-7``)."""
    return _format_float(value, lambda exp: exp < -6 or exp >= 21, json_exponent=True)


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _go_json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_json(value: Any) -> str:
    """``encoding/json.Marshal`` of a decoded JSON value (compact, map keys sorted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_json_float(value)
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, Mapping):
        members = (f"{_go_json_string(str(k))}:{_go_json(value[k])}" for k in sorted(value, key=str))
        return "{" + ",".join(members) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(item) for item in value) + "]"
    return _go_json_string(str(value))


def _go_value(value: Any) -> str:
    """A bad value as ``field.Error`` prints it: ``%v`` for scalars, ``%q`` for strings, JSON otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return go_quote(value)
    return _go_json(value)


# -- field.Error strings ------------------------------------------------------------------------------


def _field(name: str) -> str:
    """kube-openapi error names become field paths; an empty one prints as a nil path."""
    if name.startswith("."):
        name = name[1:]
    return name or "<nil>"


def _invalid(name: str, value: Any, detail: str) -> str:
    return f"{_field(name)}: Invalid value: {_go_value(value)}: {detail}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- JSON values --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(s: Schema, key: str) -> float | None:
    """A numeric schema keyword (``minimum``, ``maxLength``...), or None when absent or not a number."""
    value = s.get(key)
    return value if _is_number(value) else None


def _is_json_integer(value: float) -> bool:
    """go-openapi's ``IsFloat64AJSONInteger``: a float that is exactly an integer JSON can carry."""
    return math.isfinite(value) and value.is_integer() and abs(value) <= 2**53 - 1


def _json_type(value: Any) -> tuple[str, str]:
    """The JSON type of a decoded value and the format go-openapi infers for it."""
    if isinstance(value, bool):
        return "boolean", ""
    if isinstance(value, int):
        return "integer", "int64"
    if isinstance(value, float):
        return "number", "float64"
    if isinstance(value, str):
        return "string", ""
    if isinstance(value, (list, tuple)):
        return "array", ""
    if isinstance(value, Mapping):
        return "object", ""
    return "null" if value is None else type(value).__name__, ""


def _same(a: Any, b: Any) -> bool:
    """Deep equality of JSON values: numbers by value, but a boolean is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


# -- formats ------------------------------------------------------------------------------------------

_DATE_TIME_TAIL = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))")
_DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST_CHAR = r"(?:[a-zA-Z0-9]|[^\x00-\x7f])"
_HOSTNAME = re.compile(
    rf"{_HOST_CHAR}(?:-?{_HOST_CHAR}{{0,62}})?"
    rf"|(?:{_HOST_CHAR}(?:(?:[a-zA-Z0-9-]|[^\x00-\x7f]){{0,61}}{_HOST_CHAR})?\.)+(?:[a-zA-Z]|[^\x00-\x7f]){{2,63}}"
)


def _fullmatch(pattern: str, text: str, flags: int = 0) -> bool:
    return re.fullmatch(pattern, text, flags | re.ASCII) is not None


def _is_date(text: str) -> bool:
    if not _fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return False
    try:
        datetime.date(int(text[:4]), int(text[5:7]), int(text[8:]))
    except ValueError:
        return False
    return True


def _is_date_time(text: str) -> bool:
    # strfmt.IsDateTime, including its split on every "t".
    parts = text.lower().split("t")
    if len(text) < 4 or len(parts) < 2 or not _is_date(parts[0]):
        return False
    match = _DATE_TIME_TAIL.fullmatch(parts[1])
    return match is not None and match[1] <= "23" and match[2] <= "59" and match[3] <= "59"


def _is_ip(text: str, version: int) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.version == version


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def _is_uuid(version: str) -> Callable[[str], bool]:
    """strfmt's UUID checks (any case, dashes optional); ``version`` "" accepts every version."""
    third = f"{version}[0-9a-f]{{3}}" if version else "[0-9a-f]{4}"
    fourth = "[89ab][0-9a-f]{3}" if version in ("4", "5") else "[0-9a-f]{4}"
    pattern = f"[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?{third}-?{fourth}-?[0-9a-f]{{12}}"
    return lambda text: _fullmatch(pattern, text, re.IGNORECASE)


def _is_hostname(text: str) -> bool:
    return (
        _HOSTNAME.fullmatch(text) is not None
        and len(text) <= 255
        and all(len(part) <= 63 for part in text.split("."))
    )


# Formats kube-apiserver validates in CRDs (names without "-", as go-openapi normalizes them). Those
# mapped to None are accepted without a check here (isbn, credit card numbers...).
_STRING_FORMATS: dict[str, Callable[[str], bool] | None] = {
    "bsonobjectid": lambda t: _fullmatch("[0-9a-fA-F]{24}", t),
    "uri": lambda t: _fullmatch(r"([a-zA-Z][a-zA-Z0-9+.-]*:|/)\S*", t),
    "email": lambda t: _fullmatch(r"[^@\s<>]+@[^@\s<>]+", t),
    "hostname": _is_hostname,
    "ipv4": lambda t: _is_ip(t, 4),
    "ipv6": lambda t: ":" in t and _is_ip(t, 6),
    "cidr": _is_cidr,
    "mac": lambda t: _fullmatch(r"[0-9a-fA-F]{2}([-:]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4,6}", t),
    "uuid": _is_uuid(""),
    "uuid3": _is_uuid("3"),
    "uuid4": _is_uuid("4"),
    "uuid5": _is_uuid("5"),
    "isbn": None,
    "isbn10": None,
    "isbn13": None,
    "creditcard": None,
    "ssn": lambda t: _fullmatch(r"[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}", t),
    "hexcolor": lambda t: _fullmatch("#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})", t),
    "rgbcolor": lambda t: _fullmatch(r"rgb\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\)", t),
    "byte": lambda t: _fullmatch(
        r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})", t
    ),
    "password": None,
    "date": _is_date,
    "duration": lambda t: (
        _fullmatch(r"[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+|0", t)
        or _fullmatch(r"\s*[0-9]+\s*[a-zA-Z]+\s*", t)
    ),
    "datetime": _is_date_time,
    "k8sshortname": lambda t: len(t) <= 63 and _fullmatch(_DNS_LABEL, t),
    "k8slongname": lambda t: len(t) <= 253 and _fullmatch(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", t),
}


def _effective_format(s: Schema, types: list[str]) -> str:
    """The format kube-apiserver keeps: unknown ones are stripped, as when it builds its validator."""
    fmt = s.get("format")
    if not isinstance(fmt, str) or not fmt:
        return ""
    schema_type = types[0] if len(types) == 1 else ""
    if schema_type in ("", "string"):
        return fmt if fmt.replace("-", "") in _STRING_FORMATS else ""
    if schema_type == "integer":
        return fmt if fmt in ("int32", "int64") else ""
    if schema_type == "number":
        return fmt if fmt in ("float", "double") else ""
    return ""


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


# -- validation ---------------------------------------------------------------------------------------


def validate(obj: dict[str, Any], schema: Schema) -> list[str]:
    """Problems with ``obj`` under ``schema``, one kube-apiserver ``field.Error`` message each.

    The checks run in kube-apiserver's order: the OpenAPI schema (types, bounds, enums, required...),
    then embedded resources (``apiVersion``/``kind`` present and well formed), then
    ``x-kubernetes-list-type`` ``set``/``map`` uniqueness. An empty list means the object is valid.
    """
    validator = _Validator()
    validator.node(obj, schema, "", root=True)
    if "metadata" in obj and not isinstance(obj["metadata"], Mapping):
        validator.type_error("metadata", "object", _json_type(obj["metadata"])[0])
    problems = validator.errors
    problems += _embedded_problems("", obj, schema, root=True)
    problems += _list_problems("", obj, schema)
    return list(dict.fromkeys(problems))


class _Validator:
    """kube-openapi's SchemaValidator, reduced to what structural schemas can express."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def node(self, value: Any, s: Any, path: str, root: bool = False) -> None:
        if not isinstance(s, Mapping):
            return
        types = _types(s)
        fmt = _effective_format(s, types)
        self.type_check(value, s, types, fmt, path)
        if value is None:
            self.enum(value, s, path)
            return
        self.junctors(value, s, path)
        if isinstance(value, str):
            self.string(value, s, path)
            self.format(value, fmt, path)
        elif _is_number(value):
            self.number(value, s, path)
        elif isinstance(value, list):
            self.array(value, s, path)
        self.enum(value, s, path)
        if isinstance(value, Mapping):
            self.object(value, s, path, root)

    def sub(self, value: Any, s: Any, path: str) -> list[str]:
        other = _Validator()
        other.node(value, s, path)
        return other.errors

    def type_error(self, path: str, expected: str, actual: str) -> None:
        detail = f"{path} in body must be of type {expected}: {go_quote(actual)}"
        self.errors.append(_invalid(path, actual, detail))

    def type_check(self, value: Any, s: Schema, types: list[str], fmt: str, path: str) -> None:
        if not types and not fmt:
            return
        if value is None:
            if types and "null" not in types and not _nullable(s):
                self.type_error(path, ",".join(types), "null")
            return
        json_type, data_format = _json_type(value)
        float_int = json_type == "number" and _is_json_integer(value) and "integer" in types
        int_float = json_type == "integer" and "number" in types
        string_or_array = json_type in ("string", "array")
        if (
            fmt
            and not string_or_array
            and not (json_type in types or data_format == fmt or float_int or int_float)
        ):
            self.type_error(path, fmt, data_format)
            return
        if fmt and string_or_array and "number" not in types and "integer" not in types:
            return
        if not (json_type in types or float_int or int_float):
            self.type_error(path, ",".join(types), json_type)

    def junctors(self, value: Any, s: Schema, path: str) -> None:
        any_of, one_of, all_of, not_ = s.get("anyOf"), s.get("oneOf"), s.get("allOf"), s.get("not")
        quoted = go_quote(path)
        if isinstance(any_of, list) and any_of:
            best: list[str] | None = None
            for alternative in any_of:
                errors = self.sub(value, alternative, path)
                if not errors:
                    best = None
                    break
                if best is None or len(errors) < len(best):
                    best = errors
            else:
                self.composite(f"{quoted} must validate at least one schema (anyOf)")
            self.errors += best or []
        if isinstance(one_of, list) and one_of:
            valid, best = 0, None
            for alternative in one_of:
                errors = self.sub(value, alternative, path)
                if not errors:
                    valid, best = valid + 1, None
                elif valid == 0 and (best is None or len(errors) < len(best)):
                    best = errors
            if valid != 1:
                found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
                self.composite(f"{quoted} must validate one and only one schema (oneOf). {found}")
                self.errors += best or []
        if isinstance(all_of, list) and all_of:
            valid = 0
            for part in all_of:
                errors = self.sub(value, part, path)
                self.errors += errors
                valid += not errors
            if valid != len(all_of):
                self.composite(
                    f"{quoted} must validate all the schemas (allOf){'. None validated' if not valid else ''}"
                )
        if isinstance(not_, Mapping) and not self.sub(value, not_, path):
            self.composite(f"{quoted} must not validate the schema (not)")

    def composite(self, message: str) -> None:
        # Not tied to a field: kube-apiserver reports these against its nil root path.
        self.errors.append(f'<nil>: Invalid value: "": {message}')

    def string(self, value: str, s: Schema, path: str) -> None:
        max_length, min_length, pattern = _num(s, "maxLength"), _num(s, "minLength"), s.get("pattern")
        if max_length is not None and len(value) > max_length:
            self.errors.append(
                f"{_field(path)}: Too long: may not be more than {_plural(int(max_length), 'byte')}"
            )
        elif min_length is not None and len(value) < min_length:
            detail = f"{path} in body should be at least {int(min_length)} chars long"
            self.errors.append(_invalid(path, value, detail))
        elif isinstance(pattern, str) and pattern:
            compiled = _compile(pattern)
            if compiled is not None and compiled.search(value) is None:
                self.errors.append(_invalid(path, value, f"{path} in body should match '{pattern}'"))

    def format(self, value: str, fmt: str, path: str) -> None:
        check = _STRING_FORMATS.get(fmt.replace("-", "")) if fmt else None
        if check is not None and not check(value):
            self.errors.append(
                _invalid(path, value, f"{path} in body must be of type {fmt}: {go_quote(value)}")
            )

    def number(self, value: float, s: Schema, path: str) -> None:
        # go-openapi compares an integer with int64(bound), i.e. the bound truncated toward zero.
        is_int = isinstance(value, int)
        multiple_of = _num(s, "multipleOf")
        if multiple_of is not None:
            if multiple_of < 0:
                detail = f"factor MultipleOf declared for {path} must be positive: {_go_value(multiple_of)}"
                self.errors.append(_invalid(path, multiple_of, detail))
            elif is_int and math.trunc(multiple_of) != 0:
                factor = math.trunc(multiple_of)
                if value % factor:
                    self.errors.append(
                        _invalid(path, value, f"{path} in body should be a multiple of {factor}")
                    )
            elif multiple_of != 0:
                ratio = (1 / multiple_of * value) if multiple_of < 1 else (value / multiple_of)
                if not _is_json_integer(float(ratio)):
                    detail = f"{path} in body should be a multiple of {_go_float(float(multiple_of))}"
                    self.errors.append(_invalid(path, value, detail))
        minimum, maximum = _num(s, "minimum"), _num(s, "maximum")
        if minimum is not None:
            bound = math.trunc(minimum) if is_int else float(minimum)
            exclusive = s.get("exclusiveMinimum") is True
            if value < bound or (exclusive and value == bound):
                word = "greater than" if exclusive else "greater than or equal to"
                shown = str(bound) if is_int else _go_float(float(bound))
                self.errors.append(_invalid(path, value, f"{path} in body should be {word} {shown}"))
        if maximum is not None:
            bound = math.trunc(maximum) if is_int else float(maximum)
            exclusive = s.get("exclusiveMaximum") is True
            if value > bound or (exclusive and value == bound):
                word = "less than" if exclusive else "less than or equal to"
                shown = str(bound) if is_int else _go_float(float(bound))
                self.errors.append(_invalid(path, value, f"{path} in body should be {word} {shown}"))

    def array(self, value: list[Any], s: Schema, path: str) -> None:
        items = _items(s)
        if items is not None:
            for i, item in enumerate(value):
                self.node(item, items, f"{path}[{i}]")
        min_items, max_items = _num(s, "minItems"), _num(s, "maxItems")
        if min_items is not None and len(value) < min_items:
            detail = f"{path} in body should have at least {int(min_items)} items"
            self.errors.append(_invalid(path, len(value), detail))
        if max_items is not None and len(value) > max_items:
            self.errors.append(
                f"{_field(path)}: Too many: {len(value)}: must have at most {_plural(int(max_items), 'item')}"
            )
        if s.get("uniqueItems") is True and any(
            _same(value[i], value[j]) for i in range(len(value)) for j in range(i)
        ):
            self.errors.append(_invalid(path, "", f"{path} in body shouldn't contain duplicates"))

    def enum(self, value: Any, s: Schema, path: str) -> None:
        allowed = s.get("enum")
        if not isinstance(allowed, list) or not allowed:
            return
        # A null never matches, not even a null in the enum: go-openapi skips nil enum members.
        if value is not None and any(option is not None and _same(value, option) for option in allowed):
            return
        shown = ", ".join(go_quote(o if isinstance(o, str) else _go_json(o)) for o in allowed)
        self.errors.append(
            f"{_field(path)}: Unsupported value: {_go_value(value)}: supported values: {shown}"
        )

    def object(self, value: Mapping[str, Any], s: Schema, path: str, root: bool) -> None:
        count = len(value)
        min_props, max_props = _num(s, "minProperties"), _num(s, "maxProperties")
        if min_props is not None and count < min_props:
            detail = f"{path} in body should have at least {int(min_props)} properties"
            self.errors.append(_invalid(path, count, detail))
            return
        if max_props is not None and count > max_props:
            self.errors.append(
                f"{_field(path)}: Too many: {count}: must have at most {_plural(int(max_props), 'item')}"
            )
            return
        props = _properties(s)
        additional = s.get("additionalProperties")
        if additional is False:
            for key in value:
                if key not in props:
                    self.errors.append(_invalid(path, key, f"{path}.{key} in body is a forbidden property"))
        elif isinstance(additional, Mapping):
            for key, item in value.items():
                if key not in props:
                    self.node(item, additional, f"{path}.{key}")
        for key, prop in props.items():
            if key in value and not (root and key == "metadata"):
                self.node(value[key], prop, _join(path, key))
        required = s.get("required")
        for key in required if isinstance(required, list) else ():
            if key not in value:
                self.errors.append(f"{_field(f'{path}.{key}')}: Required value")


def _types(s: Schema) -> list[str]:
    if s.get(_INT_OR_STRING) is True:
        return ["integer", "string"]
    kind = s.get("type")
    return [kind] if isinstance(kind, str) and kind else []


# -- embedded resources (apiextensions objectmeta.Validate) -------------------------------------------

_DNS1035 = "[a-z]([-a-z0-9]*[a-z0-9])?"


def _embedded_problems(path: str, x: Any, s: Schema | None, root: bool = False) -> list[str]:
    if s is None:
        return []
    problems: list[str] = []
    if isinstance(x, Mapping):
        if s.get(_EMBEDDED) is True and not root:
            problems += _embedded_resource(path, x)
        props = _properties(s)
        additional = _additional(s)[1]
        for key, value in x.items():
            if key in props and isinstance(props[key], Mapping):
                problems += _embedded_problems(_join(path, key), value, props[key])
            elif additional is not None:
                problems += _embedded_problems(f"{path}[{key}]", value, additional)
    elif isinstance(x, list):
        items = _items(s)
        for i, value in enumerate(x):
            problems += _embedded_problems(f"{path}[{i}]", value, items)
    return problems


def _embedded_resource(path: str, x: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for key in ("apiVersion", "kind"):
        if key not in x:
            problems.append(f"{_join(path, key)}: Required value")
    api_version, kind, metadata = x.get("apiVersion"), x.get("kind"), x.get("metadata")
    if "apiVersion" in x:
        where = _join(path, "apiVersion")
        if not isinstance(api_version, str):
            problems.append(f"{where}: Invalid value: {_go_value(api_version)}: must be a string")
        elif not api_version:
            problems.append(f'{where}: Invalid value: "": must not be empty')
        elif api_version != "/" and api_version.count("/") > 1:
            detail = f"unexpected GroupVersion string: {api_version}"
            problems.append(f"{where}: Invalid value: {go_quote(api_version)}: {detail}")
    if "kind" in x:
        where = _join(path, "kind")
        if not isinstance(kind, str):
            problems.append(f"{where}: Invalid value: {_go_value(kind)}: must be a string")
        elif not kind:
            problems.append(f'{where}: Invalid value: "": must not be empty')
        else:
            errs = []
            if len(kind) > 63:
                errs.append("must be no more than 63 bytes")
            if not _fullmatch(_DNS1035, kind.lower()):
                errs.append(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                    "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                    f"'abc-123', regex used for validation is '{_DNS1035}')"
                )
            if errs:
                detail = "may have mixed case, but should otherwise match: " + ",".join(errs)
                problems.append(f"{where}: Invalid value: {go_quote(kind)}: {detail}")
    if "metadata" in x and not isinstance(metadata, Mapping):
        problems.append(f"{_join(path, 'metadata')}: Invalid value: {_go_value(metadata)}: must be an object")
    return problems


# -- list types (apiextensions listtype.ValidateListSetsAndMaps) --------------------------------------


def _list_problems(path: str, x: Any, s: Schema | None) -> list[str]:
    if s is None:
        return []
    problems: list[str] = []
    if isinstance(x, Mapping):
        additional = _additional(s)[1]
        props = _properties(s)
        for key, value in x.items():
            if additional is not None:
                problems += _list_problems(f"{path}[{key}]", value, additional)
            if key in props and isinstance(props[key], Mapping):
                problems += _list_problems(_join(path, key), value, props[key])
    elif isinstance(x, list):
        list_type = s.get("x-kubernetes-list-type")
        if list_type == "set":
            problems += [f"{path}[{i}]: Duplicate value: {_go_value(x[i])}" for i in _repeats(x)]
        elif list_type == "map":
            problems += _list_map_problems(path, s, x)
        items = _items(s)
        for i, value in enumerate(x):
            problems += _list_problems(f"{path}[{i}]", value, items)
    return problems


def _identity(value: Any) -> tuple[str, str]:
    # Go compares scalars as typed interface values (1 and 1.0 differ) and compounds by their JSON.
    if isinstance(value, (Mapping, list)):
        return "json", _go_json(value)
    return type(value).__name__, repr(value)


def _repeats(values: list[Any]) -> list[int]:
    """Indexes of the second occurrence of each repeated value."""
    seen: dict[tuple[str, str], int] = {}
    repeats = []
    for i, value in enumerate(values):
        identity = _identity(value)
        seen[identity] = seen.get(identity, 0) + 1
        if seen[identity] == 2:
            repeats.append(i)
    return repeats


def _list_map_problems(path: str, s: Schema, x: list[Any]) -> list[str]:
    for i, item in enumerate(x):
        if item is not None and not isinstance(item, Mapping):
            return [
                f"{path}[{i}]: Invalid value: {_go_value(item)}: "
                "must be an object for an array of list-type map"
            ]
    keys = [k for k in s.get("x-kubernetes-list-map-keys") or [] if isinstance(k, str)]
    identities = [{k: item[k] for k in keys if k in item} if item is not None else {} for item in x]
    return [f"{path}[{i}]: Duplicate value: {_go_json(identities[i])}" for i in _repeats(identities)]
