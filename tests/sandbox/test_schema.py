"""CRD structural schemas in the API emulator: pruning, defaulting and validation like kube-apiserver."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from etcdlock_sandbox.apiserver.schema import apply_defaults, prune, unknown_fields, validate

# The shape of the DistributedLock CRD's openAPIV3Schema.
LOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["clusterRef", "key"],
            "properties": {
                "clusterRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}},
                },
                "permits": {"type": "integer", "format": "int32", "minimum": 1, "default": 1},
                "ttlSeconds": {"type": "integer", "minimum": 5, "maximum": 3600, "default": 30},
                "key": {"type": "string", "minLength": 1, "maxLength": 253},
            },
            "x-kubernetes-validations": [{"rule": "self.permits <= 100", "message": "too many permits"}],
        },
        "status": {
            "type": "object",
            "properties": {
                "holders": {"type": "array", "items": {"type": "string"}},
                "phase": {"type": "string", "enum": ["Pending", "Held", "Released"]},
                "acquiredAt": {"type": "string", "format": "date-time", "nullable": True},
            },
        },
    },
}


def lock(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "etcdlock.io/v1alpha1",
        "kind": "DistributedLock",
        "metadata": {"name": "jobs", "namespace": "default"},
        "spec": {"clusterRef": {"name": "main"}, "key": "/locks/jobs", **spec},
    }


def admit(obj: dict[str, Any], schema: dict[str, Any] = LOCK_SCHEMA) -> tuple[dict[str, Any], list[str]]:
    """What kube-apiserver does on create: prune, default, validate."""
    stored = apply_defaults(prune(obj, schema), schema)
    return stored, validate(stored, schema)


def problems(value: Any, schema: dict[str, Any]) -> list[str]:
    """Validation messages for ``value`` placed at ``spec.x`` under ``schema``."""
    root = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": schema}}}}
    return validate({"spec": {"x": value}}, root)


# -- the DistributedLock round trip -------------------------------------------------------------------


def test_a_valid_lock_is_admitted_with_its_defaults() -> None:
    stored, errors = admit(lock())
    assert errors == []
    assert stored["spec"] == {
        "clusterRef": {"name": "main"},
        "key": "/locks/jobs",
        "permits": 1,
        "ttlSeconds": 30,
    }


def test_an_invalid_lock_gets_one_message_per_problem() -> None:
    _, errors = admit(lock(permits=0, ttlSeconds="string", clusterRef={}))
    assert errors == [
        "spec.clusterRef.name: Required value",
        "spec.permits: Invalid value: 0: spec.permits in body should be greater than or equal to 1",
        'spec.ttlSeconds: Invalid value: "string": spec.ttlSeconds in body must be of type integer: "string"',
    ]


def test_cel_rules_are_not_evaluated() -> None:
    _, errors = admit(lock(permits=1000))
    assert errors == []


# -- defaulting ---------------------------------------------------------------------------------------


def test_defaults_fill_absent_fields_of_an_existing_object() -> None:
    stored = apply_defaults({"spec": {"permits": 3}}, LOCK_SCHEMA)
    assert stored["spec"] == {"permits": 3, "ttlSeconds": 30}


def test_defaults_do_not_create_the_object_that_would_hold_them() -> None:
    assert apply_defaults({"metadata": {"name": "x"}}, LOCK_SCHEMA) == {"metadata": {"name": "x"}}


def test_an_object_with_its_own_default_is_created_and_then_defaulted_inside() -> None:
    schema = copy.deepcopy(LOCK_SCHEMA)
    schema["properties"]["spec"]["default"] = {}
    assert apply_defaults({}, schema)["spec"] == {"permits": 1, "ttlSeconds": 30}


def test_defaults_apply_to_array_items_and_map_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 1}}},
            },
            "byName": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"ttl": {"type": "integer", "default": 5}},
                },
            },
        },
    }
    stored = apply_defaults({"items": [{}, {"weight": 2}], "byName": {"a": {}}}, schema)
    assert stored == {"items": [{"weight": 1}, {"weight": 2}], "byName": {"a": {"ttl": 5}}}


def test_a_null_replaces_with_the_default_unless_the_field_is_nullable() -> None:
    schema = {
        "type": "object",
        "properties": {
            "strict": {"type": "integer", "default": 7},
            "loose": {"type": "integer", "default": 7, "nullable": True},
        },
    }
    assert apply_defaults({"strict": None, "loose": None}, schema) == {"strict": 7, "loose": None}


def test_defaulting_copies_default_values_and_leaves_the_input_alone() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "default": []}},
    }
    original: dict[str, Any] = {}
    first = apply_defaults(original, schema)
    first["tags"].append("x")
    assert apply_defaults(original, schema) == {"tags": []}
    assert original == {}
    assert schema["properties"]["tags"]["default"] == []


# -- pruning ------------------------------------------------------------------------------------------


def test_fields_the_schema_does_not_specify_are_pruned_at_every_level() -> None:
    obj = lock(clusterRef={"name": "main", "zone": "x"}, extra=1)
    obj["bogus"] = True
    pruned = prune(obj, LOCK_SCHEMA)
    assert pruned["spec"] == {"clusterRef": {"name": "main"}, "key": "/locks/jobs"}
    assert "bogus" not in pruned
    assert unknown_fields(obj, LOCK_SCHEMA) == ["bogus", "spec.clusterRef.zone", "spec.extra"]
    assert "extra" in obj["spec"]  # the input is not modified


def test_api_version_kind_and_metadata_survive_at_the_root_even_when_unspecified() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object"}}}
    obj = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"k": "v"}, "custom": 1}}
    assert prune(obj, schema) == obj


def test_preserve_unknown_fields_keeps_unknown_fields_but_prunes_inside_known_ones() -> None:
    schema = {
        "type": "object",
        "properties": {
            "status": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"lease": {"type": "object", "properties": {"id": {"type": "integer"}}}},
            }
        },
    }
    obj = {"status": {"anything": {"nested": [1, {"deep": True}]}, "lease": {"id": 5, "stray": 1}}}
    assert prune(obj, schema) == {"status": {"anything": {"nested": [1, {"deep": True}]}, "lease": {"id": 5}}}


def test_an_object_without_properties_or_preserve_loses_all_its_fields() -> None:
    schema = {"type": "object", "properties": {"spec": {"type": "object"}}}
    assert prune({"spec": {"a": 1}}, schema) == {"spec": {}}


def test_maps_described_by_additional_properties_keep_their_entries() -> None:
    schema = {
        "type": "object",
        "properties": {
            "selector": {"type": "object", "additionalProperties": {"type": "string"}},
            "loose": {"type": "object", "additionalProperties": True},
        },
    }
    obj = {"selector": {"app": "lock", "tier": "db"}, "loose": {"n": 1, "nested": {"a": 1}}}
    # Like kube-apiserver, values under a schema-less "additionalProperties: true" keep their scalars
    # but lose the fields of nested objects.
    assert prune(obj, schema) == {"selector": {"app": "lock", "tier": "db"}, "loose": {"n": 1, "nested": {}}}


def test_embedded_resources_keep_their_type_and_object_meta() -> None:
    schema = {
        "type": "object",
        "properties": {
            "template": {
                "type": "object",
                "x-kubernetes-embedded-resource": True,
                "properties": {"spec": {"type": "object", "properties": {"image": {"type": "string"}}}},
            }
        },
    }
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"image": "i", "x": 1}}
    pruned = prune({"template": template}, schema)
    assert pruned["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"image": "i"},
    }


def test_nulls_without_a_default_in_non_nullable_fields_are_dropped() -> None:
    pruned = prune({"spec": {"key": None, "permits": None}, "status": {"acquiredAt": None}}, LOCK_SCHEMA)
    # permits has a default (defaulting will fill it), acquiredAt is nullable: both nulls stay.
    assert pruned == {"spec": {"permits": None}, "status": {"acquiredAt": None}}
    assert apply_defaults(pruned, LOCK_SCHEMA)["spec"] == {"permits": 1, "ttlSeconds": 30}


def test_array_items_are_pruned_with_the_items_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ports": {
                "type": "array",
                "items": {"type": "object", "properties": {"port": {"type": "integer"}}},
            }
        },
    }
    obj = {"ports": [{"port": 1, "name": "a"}, {"port": 2}]}
    assert prune(obj, schema) == {"ports": [{"port": 1}, {"port": 2}]}
    assert unknown_fields(obj, schema) == ["ports[0].name"]


# -- validation: types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema_type", "value", "actual"),
    [
        ("object", "s", "string"),
        ("array", {}, "object"),
        ("string", 1, "integer"),
        ("integer", "1", "string"),
        ("integer", 1.5, "number"),
        ("integer", True, "boolean"),
        ("number", False, "boolean"),
        ("number", [], "array"),
        ("boolean", "true", "string"),
        ("boolean", 0, "integer"),
    ],
)
def test_a_value_of_the_wrong_type_is_rejected(schema_type: str, value: Any, actual: str) -> None:
    assert problems(value, {"type": schema_type}) == [
        f'spec.x: Invalid value: "{actual}": spec.x in body must be of type {schema_type}: "{actual}"'
    ]


@pytest.mark.parametrize(
    ("schema_type", "value"),
    [("integer", 3), ("integer", 3.0), ("number", 3), ("number", 2.5), ("boolean", False), ("string", "")],
)
def test_compatible_numbers_and_plain_values_pass_the_type_check(schema_type: str, value: Any) -> None:
    # Like kube-apiserver, an integral float such as 3.0 counts as an integer.
    assert problems(value, {"type": schema_type}) == []


def test_null_is_accepted_only_where_nullable() -> None:
    assert problems(None, {"type": "string", "nullable": True}) == []
    assert problems(None, {"type": "string"}) == [
        'spec.x: Invalid value: "null": spec.x in body must be of type string: "null"'
    ]


def test_int_or_string_accepts_both_and_nothing_else() -> None:
    schema = {"x-kubernetes-int-or-string": True}
    assert problems(80, schema) == []
    assert problems("http", schema) == []
    assert problems(True, schema) == [
        'spec.x: Invalid value: "boolean": spec.x in body must be of type integer,string: "boolean"'
    ]


def test_int_or_string_with_its_usual_any_of_reports_the_alternatives_too() -> None:
    schema = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert problems("25%", schema) == []
    assert problems(1.5, schema) == [
        'spec.x: Invalid value: "number": spec.x in body must be of type integer,string: "number"',
        '<nil>: Invalid value: "": "spec.x" must validate at least one schema (anyOf)',
        'spec.x: Invalid value: "number": spec.x in body must be of type integer: "number"',
    ]


# -- validation: keywords -----------------------------------------------------------------------------


def test_required_fields() -> None:
    assert validate({"spec": {"clusterRef": {"name": "a"}}}, LOCK_SCHEMA) == ["spec.key: Required value"]
    schema = {"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}}
    assert validate({}, schema) == ["spec: Required value"]


def test_enum() -> None:
    assert problems(2, {"type": "integer", "enum": [1, 3, 5, 7]}) == [
        'spec.x: Unsupported value: 2: supported values: "1", "3", "5", "7"'
    ]
    assert problems(3, {"type": "integer", "enum": [1, 3, 5, 7]}) == []
    assert problems("Gone", {"type": "string", "enum": ["Pending", "Held"]}) == [
        'spec.x: Unsupported value: "Gone": supported values: "Pending", "Held"'
    ]
    assert problems(True, {"enum": [1]}) == ['spec.x: Unsupported value: true: supported values: "1"']


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"minimum": 1}, 0, "spec.x: Invalid value: 0: spec.x in body should be greater than or equal to 1"),
        (
            {"minimum": 1, "exclusiveMinimum": True},
            1,
            "spec.x: Invalid value: 1: spec.x in body should be greater than 1",
        ),
        (
            {"maximum": 3600},
            3601,
            "spec.x: Invalid value: 3601: spec.x in body should be less than or equal to 3600",
        ),
        (
            {"maximum": 10, "exclusiveMaximum": True},
            10,
            "spec.x: Invalid value: 10: spec.x in body should be less than 10",
        ),
        (
            {"maximum": 0.5},
            0.75,
            "spec.x: Invalid value: 0.75: spec.x in body should be less than or equal to 0.5",
        ),
        ({"multipleOf": 5}, 12, "spec.x: Invalid value: 12: spec.x in body should be a multiple of 5"),
        ({"multipleOf": 0.5}, 0.7, "spec.x: Invalid value: 0.7: spec.x in body should be a multiple of 0.5"),
    ],
)
def test_numeric_bounds(schema: dict[str, Any], value: Any, message: str) -> None:
    assert problems(value, {"type": "number", **schema}) == [message]


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"minimum": 1}, 1),
        ({"minimum": 1, "exclusiveMinimum": True}, 2),
        ({"maximum": 10, "exclusiveMaximum": True}, 9.5),
        ({"multipleOf": 5}, 15),
        ({"multipleOf": 0.5}, 1.5),
    ],
)
def test_numbers_within_bounds_pass(schema: dict[str, Any], value: Any) -> None:
    assert problems(value, {"type": "number", **schema}) == []


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"maxLength": 3}, "abcd", "spec.x: Too long: may not be more than 3 bytes"),
        ({"maxLength": 1}, "ab", "spec.x: Too long: may not be more than 1 byte"),
        ({"minLength": 2}, "a", 'spec.x: Invalid value: "a": spec.x in body should be at least 2 chars long'),
        (
            {"pattern": "^[a-z]+$"},
            "AB",
            "spec.x: Invalid value: \"AB\": spec.x in body should match '^[a-z]+$'",
        ),
    ],
)
def test_string_constraints(schema: dict[str, Any], value: str, message: str) -> None:
    assert problems(value, {"type": "string", **schema}) == [message]


def test_string_lengths_count_characters() -> None:
    assert problems("ééé", {"type": "string", "maxLength": 3}) == []


def test_a_pattern_matches_anywhere_unless_anchored() -> None:
    assert problems("xx-ab-xx", {"type": "string", "pattern": "ab"}) == []


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"minItems": 1}, [], "spec.x: Invalid value: 0: spec.x in body should have at least 1 items"),
        ({"maxItems": 2}, [1, 2, 3], "spec.x: Too many: 3: must have at most 2 items"),
        ({"maxItems": 1}, [1, 2], "spec.x: Too many: 2: must have at most 1 item"),
        (
            {"uniqueItems": True},
            [1, 2, 1],
            'spec.x: Invalid value: "": spec.x in body shouldn\'t contain duplicates',
        ),
    ],
)
def test_array_constraints(schema: dict[str, Any], value: list[Any], message: str) -> None:
    assert problems(value, {"type": "array", **schema}) == [message]


def test_array_items_are_validated_with_their_index_in_the_path() -> None:
    schema = {
        "type": "array",
        "items": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}},
    }
    assert problems([{"port": 1}, {}, {"port": "x"}], schema) == [
        "spec.x[1].port: Required value",
        'spec.x[2].port: Invalid value: "string": spec.x[2].port in body must be of type integer: "string"',
    ]


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        (
            {"minProperties": 1},
            {},
            "spec.x: Invalid value: 0: spec.x in body should have at least 1 properties",
        ),
        ({"maxProperties": 1}, {"a": 1, "b": 2}, "spec.x: Too many: 2: must have at most 1 item"),
        (
            {"additionalProperties": {"type": "integer"}},
            {"a": 1, "b": "two"},
            'spec.x.b: Invalid value: "string": spec.x.b in body must be of type integer: "string"',
        ),
        (
            {"properties": {"a": {"type": "integer"}}, "additionalProperties": False},
            {"a": 1, "b": 2},
            'spec.x: Invalid value: "b": spec.x.b in body is a forbidden property',
        ),
    ],
)
def test_object_constraints(schema: dict[str, Any], value: dict[str, Any], message: str) -> None:
    assert problems(value, {"type": "object", **schema}) == [message]


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        (
            {"type": "string", "format": "date-time"},
            "yesterday",
            'spec.x: Invalid value: "yesterday": spec.x in body must be of type date-time: "yesterday"',
        ),
        (
            {"type": "string", "format": "date"},
            "2024-02-30",
            'spec.x: Invalid value: "2024-02-30": spec.x in body must be of type date: "2024-02-30"',
        ),
        (
            {"type": "integer", "format": "int32"},
            1.5,
            'spec.x: Invalid value: "float64": spec.x in body must be of type int32: "float64"',
        ),
    ],
)
def test_formats(schema: dict[str, Any], value: Any, message: str) -> None:
    assert problems(value, schema) == [message]


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string", "format": "date-time"}, "2024-05-01T10:00:00Z"),
        ({"type": "string", "format": "date-time"}, "2024-05-01T10:00:00.123+02:00"),
        ({"type": "string", "format": "date"}, "2024-02-29"),
        ({"type": "integer", "format": "int32"}, 2**40),  # int32/int64 do not bound values in kube-apiserver
        ({"type": "integer", "format": "int64"}, 7),
        ({"type": "string", "format": "no-such-format"}, "anything"),
        ({"type": "string", "format": "uuid"}, "123e4567-e89b-12d3-a456-426614174000"),
        ({"type": "string", "format": "ipv4"}, "10.0.0.1"),
    ],
)
def test_values_in_format_and_unknown_formats_pass(schema: dict[str, Any], value: Any) -> None:
    assert problems(value, schema) == []


def test_one_of_requires_exactly_one_match() -> None:
    schema = {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert problems({"a": 1}, schema) == []
    assert problems({"a": 1, "b": 2}, schema) == [
        '<nil>: Invalid value: "": "spec.x" must validate one and only one schema (oneOf). '
        "Found 2 valid alternatives"
    ]
    assert problems({}, schema) == [
        '<nil>: Invalid value: "": "spec.x" must validate one and only one schema (oneOf). Found none valid',
        "spec.x.a: Required value",
    ]


def test_all_of_and_not() -> None:
    all_of = {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 5}]}
    assert problems(3, all_of) == []
    assert problems(9, all_of) == [
        "spec.x: Invalid value: 9: spec.x in body should be less than or equal to 5",
        '<nil>: Invalid value: "": "spec.x" must validate all the schemas (allOf)',
    ]
    not_ = {"type": "string", "not": {"enum": ["forbidden"]}}
    assert problems("fine", not_) == []
    assert problems("forbidden", not_) == [
        '<nil>: Invalid value: "": "spec.x" must not validate the schema (not)'
    ]


def test_list_type_set_and_map_items_must_be_unique() -> None:
    as_set = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    assert problems(["a", "b", "a"], as_set) == ['spec.x[2]: Duplicate value: "a"']
    as_map = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}},
    }
    assert problems([{"name": "a", "port": 1}, {"name": "a", "port": 2}], as_map) == [
        'spec.x[1]: Duplicate value: {"name":"a"}'
    ]


def test_embedded_resources_need_api_version_and_kind() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-embedded-resource": True,
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert problems({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, schema) == []
    assert problems({"metadata": {}}, schema) == [
        "spec.x.apiVersion: Required value",
        "spec.x.kind: Required value",
    ]
    assert problems({"apiVersion": "a/b/c", "kind": "Pod"}, schema) == [
        'spec.x.apiVersion: Invalid value: "a/b/c": unexpected GroupVersion string: a/b/c'
    ]


def test_metadata_is_only_checked_to_be_an_object() -> None:
    schema = copy.deepcopy(LOCK_SCHEMA)
    schema["properties"]["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 1}},
    }
    assert validate({"metadata": {"name": "longer-than-one", "anything": [1]}}, schema) == []
    assert validate({"metadata": "x"}, schema) == [
        'metadata: Invalid value: "string": metadata in body must be of type object: "string"'
    ]


def test_validation_reports_every_problem_at_once() -> None:
    stored, errors = admit(
        {"apiVersion": "etcdlock.io/v1alpha1", "kind": "DistributedLock", "spec": {"ttlSeconds": 1}}
    )
    assert errors == [
        "spec.ttlSeconds: Invalid value: 1: spec.ttlSeconds in body should be greater than or equal to 5",
        "spec.clusterRef: Required value",
        "spec.key: Required value",
    ]
    assert stored["spec"]["permits"] == 1
