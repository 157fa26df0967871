"""The three PATCH flavours of the API emulator: RFC 7386, RFC 6902 and Kubernetes' strategic merge."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from etcdlock_sandbox.apiserver.patches import (
    PatchError,
    PatchTestFailed,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)

# --- RFC 7386 merge patch -----------------------------------------------------------------------

# RFC 7386 Appendix A, the rows whose target is an object.
RFC7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386_EXAMPLES)
def test_merge_patch_follows_the_rfc_7386_examples(target: Any, patch: Any, expected: Any) -> None:
    assert apply_merge_patch(target, patch) == expected


@pytest.mark.parametrize("patch", [["c"], None, "bar", 3])
def test_merge_patch_that_replaces_the_object_with_a_non_object_is_rejected(patch: Any) -> None:
    # RFC 7386 says such a patch replaces the document; an API object cannot be an array or scalar.
    with pytest.raises(PatchError, match="must be a JSON object"):
        apply_merge_patch({"a": "foo"}, patch)


def test_merge_patch_replaces_lists_and_deletes_labels_with_null() -> None:
    pod = {"metadata": {"labels": {"app": "x", "tier": "web"}}, "spec": {"containers": [{"name": "a"}]}}
    result = apply_merge_patch(
        pod, {"metadata": {"labels": {"tier": None, "new": "1"}}, "spec": {"containers": [{"name": "b"}]}}
    )
    assert result == {
        "metadata": {"labels": {"app": "x", "new": "1"}},
        "spec": {"containers": [{"name": "b"}]},
    }


# --- RFC 6902 JSON patch ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "operations", "expected"),
    [
        # RFC 6902 Appendix A.1 - A.8, A.10, A.11, A.16.
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
        (
            {"foo": ["bar", "baz"]},
            [{"op": "add", "path": "/foo/1", "value": "qux"}],
            {"foo": ["bar", "qux", "baz"]},
        ),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
        (
            {"baz": "qux", "foo": "bar"},
            [{"op": "replace", "path": "/baz", "value": "boo"}],
            {"baz": "boo", "foo": "bar"},
        ),
        (
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
        ),
        (
            {"foo": ["all", "grass", "cows", "eat"]},
            [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
            {"foo": ["all", "cows", "eat", "grass"]},
        ),
        (
            {"baz": "qux", "foo": ["a", 2, "c"]},
            [
                {"op": "test", "path": "/baz", "value": "qux"},
                {"op": "test", "path": "/foo/1", "value": 2},
            ],
            {"baz": "qux", "foo": ["a", 2, "c"]},
        ),
        (
            {"foo": "bar"},
            [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
            {"foo": "bar", "child": {"grandchild": {}}},
        ),
        (
            {"foo": "bar"},
            [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
            {"foo": "bar", "baz": "qux"},
        ),
        (
            {"foo": ["bar"]},
            [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
            {"foo": ["bar", ["abc", "def"]]},
        ),
    ],
)
def test_json_patch_follows_the_rfc_6902_examples(target: Any, operations: Any, expected: Any) -> None:
    assert apply_json_patch(target, operations) == expected


def test_json_patch_copy_duplicates_a_value_without_sharing_it() -> None:
    result = apply_json_patch(
        {"spec": {"template": {"labels": {"app": "x"}}}},
        [
            {"op": "copy", "from": "/spec/template/labels", "path": "/labels"},
            {"op": "add", "path": "/labels/extra", "value": "1"},
        ],
    )
    assert result == {"spec": {"template": {"labels": {"app": "x"}}}, "labels": {"app": "x", "extra": "1"}}


def test_json_patch_escapes_slash_and_tilde_in_keys() -> None:
    obj = {"metadata": {"annotations": {"etcdlock.io/holder": "a", "a~b": "1"}}}
    result = apply_json_patch(
        obj,
        [
            {"op": "test", "path": "/metadata/annotations/etcdlock.io~1holder", "value": "a"},
            {"op": "replace", "path": "/metadata/annotations/etcdlock.io~1holder", "value": "b"},
            {"op": "remove", "path": "/metadata/annotations/a~0b"},
            {"op": "add", "path": "/metadata/annotations/x~1y~0z", "value": "2"},
        ],
    )
    assert result == {"metadata": {"annotations": {"etcdlock.io/holder": "b", "x/y~z": "2"}}}


def test_json_patch_dash_appends_to_a_list() -> None:
    obj = {"metadata": {"finalizers": ["a"]}}
    result = apply_json_patch(obj, [{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}])
    assert result["metadata"]["finalizers"] == ["a", "b"]


def test_json_patch_failed_test_raises_patch_test_failed_and_changes_nothing() -> None:
    obj = {"metadata": {"resourceVersion": "7"}, "spec": {"holder": "a"}}
    original = copy.deepcopy(obj)
    operations = [
        {"op": "replace", "path": "/spec/holder", "value": "b"},
        {"op": "test", "path": "/metadata/resourceVersion", "value": "6"},
    ]
    with pytest.raises(
        PatchTestFailed,
        match=r"test operation does not apply: operation 1 \(test /metadata/resourceVersion\)",
    ):
        apply_json_patch(obj, operations)
    assert obj == original


def test_json_patch_test_compares_json_types() -> None:
    # RFC 6902 A.15: a string and a number are never equal; nor are true and 1.
    with pytest.raises(PatchTestFailed):
        apply_json_patch({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}])
    with pytest.raises(PatchTestFailed):
        apply_json_patch({"a": True}, [{"op": "test", "path": "/a", "value": 1}])


def test_json_patch_test_of_null_passes_for_an_absent_member_like_kube_apiserver() -> None:
    obj = {"metadata": {"name": "x"}}
    result = apply_json_patch(
        obj,
        [
            {"op": "test", "path": "/metadata/annotations", "value": None},
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}},
        ],
    )
    assert result == {"metadata": {"name": "x", "annotations": {"a": "1"}}}
    with pytest.raises(PatchTestFailed, match="is not equal to null"):
        apply_json_patch(obj, [{"op": "test", "path": "/metadata/name", "value": None}])
    with pytest.raises(PatchTestFailed):
        apply_json_patch(obj, [{"op": "test", "path": "/spec/missing/deeper", "value": None}])


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        (
            [{"op": "remove", "path": "/spec/missing"}],
            r"remove operation does not apply: operation 0 \(remove /spec/missing\)",
        ),
        (
            [{"op": "replace", "path": "/nope", "value": 1}],
            r"replace operation does not apply: operation 0 \(replace /nope\)",
        ),
        (
            [{"op": "add", "path": "/a/b/c", "value": 1}],
            r"add operation does not apply: operation 0 \(add /a/b/c\)",
        ),
        ([{"op": "add", "path": "/spec/list/5", "value": 1}], r"add operation does not apply"),
        ([{"op": "move", "from": "/spec", "path": "/spec/inner"}], r"move operation does not apply"),
        ([{"op": "copy", "from": "/nowhere", "path": "/x"}], r"copy operation does not apply"),
        ([{"op": "add", "path": "/a"}], r"invalid JSON patch: operation 0 \(add /a\).*'value'"),
        ([{"op": "frobnicate", "path": "/a"}], r"invalid JSON patch: operation 0 .*frobnicate"),
        ([{"path": "/a", "value": 1}], r"invalid JSON patch: operation 0"),
        ([{"op": "add", "path": "no-slash", "value": 1}], r"invalid JSON patch: operation 0"),
        (["add"], r"invalid JSON patch"),
        ({"op": "add", "path": "/a", "value": 1}, r"must be a JSON array"),
        ([{"op": "replace", "path": "", "value": ["not", "an", "object"]}], r"not an object"),
    ],
)
def test_json_patch_errors_name_the_operation(operations: Any, message: str) -> None:
    obj = {"spec": {"list": [1]}}
    with pytest.raises(PatchError, match=message) as caught:
        apply_json_patch(obj, operations)
    assert not isinstance(caught.value, PatchTestFailed)


def test_json_patch_checks_every_operation_before_applying_any() -> None:
    operations = [{"op": "test", "path": "/a", "value": 2}, {"op": "bogus", "path": "/a"}]
    with pytest.raises(PatchError, match="operation 1") as caught:
        apply_json_patch({"a": 1}, operations)
    assert not isinstance(caught.value, PatchTestFailed)


# --- Strategic merge patch ----------------------------------------------------------------------


def statefulset() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "etcd",
            "namespace": "db",
            "labels": {"app": "etcd", "tier": "storage"},
            "annotations": {"note": "keep"},
            "finalizers": ["etcdlock.io/cleanup", "foregroundDeletion"],
        },
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "etcd"}},
                "spec": {
                    "containers": [
                        {
                            "name": "etcd",
                            "image": "etcd:3.5",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 2379, "name": "client"}],
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
                        },
                        {"name": "metrics", "image": "exporter:1"},
                    ],
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "schedulingGates": [{"name": "etcdlock.io/wait"}, {"name": "other"}],
                },
            },
        },
    }


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return result


def pod_spec_patch(spec: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"template": {"spec": spec}}}


def test_smp_merges_containers_by_name_so_an_image_change_keeps_the_others() -> None:
    result = apply_strategic_merge_patch(
        statefulset(), pod_spec_patch({"containers": [{"name": "metrics", "image": "exporter:2"}]})
    )
    assert [c["name"] for c in containers(result)] == ["etcd", "metrics"]
    assert containers(result)[1] == {"name": "metrics", "image": "exporter:2"}
    assert containers(result)[0] == containers(statefulset())[0]


def test_smp_puts_a_new_container_before_the_existing_ones_like_kubernetes() -> None:
    # Without $setElementOrder, kube-apiserver orders the patch's items first unless it knows their
    # old positions (kubectl's "Update API Objects in Place" task shows the same).
    result = apply_strategic_merge_patch(
        statefulset(), pod_spec_patch({"containers": [{"name": "proxy", "image": "p:1"}]})
    )
    assert [c["name"] for c in containers(result)] == ["proxy", "etcd", "metrics"]


def test_smp_merges_env_by_name_and_null_deletes_a_field_of_an_item() -> None:
    patch = pod_spec_patch(
        {
            "containers": [
                {"name": "etcd", "env": [{"name": "A", "value": None}, {"name": "B", "value": "two"}]}
            ]
        }
    )
    env = containers(apply_strategic_merge_patch(statefulset(), patch))[0]["env"]
    assert env == [{"name": "A"}, {"name": "B", "value": "two"}]


def test_smp_keeps_the_patch_order_of_the_items_it_names_like_kubernetes() -> None:
    # apimachinery's "preserve the order from the patch in a merging list" cases: the items the patch
    # names take its order; the others keep their place relative to them in the live list.
    obj = {"spec": {"containers": [{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}]}}
    result = apply_strategic_merge_patch(
        obj, {"spec": {"containers": [{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]}}
    )
    assert result["spec"]["containers"] == [
        {"name": "2", "image": "b"},
        {"name": "3", "image": "c"},
        {"name": "1", "image": "a"},
    ]
    finalizers = {"metadata": {"finalizers": ["1", "2", "3"]}}
    assert apply_strategic_merge_patch(finalizers, {"metadata": {"finalizers": ["3", "1"]}}) == {
        "metadata": {"finalizers": ["2", "3", "1"]}
    }


def test_smp_merges_container_ports_by_container_port_and_service_ports_by_port() -> None:
    result = apply_strategic_merge_patch(
        statefulset(),
        pod_spec_patch(
            {"containers": [{"name": "etcd", "ports": [{"containerPort": 2379, "protocol": "TCP"}]}]}
        ),
    )
    assert containers(result)[0]["ports"] == [{"containerPort": 2379, "name": "client", "protocol": "TCP"}]

    service = {"spec": {"ports": [{"port": 2379, "name": "client"}, {"port": 2380, "name": "peer"}]}}
    result = apply_strategic_merge_patch(service, {"spec": {"ports": [{"port": 2380, "targetPort": 12380}]}})
    assert result["spec"]["ports"] == [
        {"port": 2379, "name": "client"},
        {"port": 2380, "name": "peer", "targetPort": 12380},
    ]


def test_smp_patch_delete_removes_a_container() -> None:
    result = apply_strategic_merge_patch(
        statefulset(), pod_spec_patch({"containers": [{"name": "etcd", "$patch": "delete"}]})
    )
    assert containers(result) == [{"name": "metrics", "image": "exporter:1"}]


def test_smp_patch_delete_removes_a_scheduling_gate() -> None:
    patch = pod_spec_patch({"schedulingGates": [{"name": "etcdlock.io/wait", "$patch": "delete"}]})
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert result["spec"]["template"]["spec"]["schedulingGates"] == [{"name": "other"}]


def test_smp_patch_delete_in_a_map_empties_it() -> None:
    result = apply_strategic_merge_patch(statefulset(), {"metadata": {"annotations": {"$patch": "delete"}}})
    assert result["metadata"]["annotations"] == {}


def test_smp_patch_replace_replaces_a_map_instead_of_merging() -> None:
    result = apply_strategic_merge_patch(
        statefulset(), {"metadata": {"labels": {"$patch": "replace", "app": "etcd2"}}}
    )
    assert result["metadata"]["labels"] == {"app": "etcd2"}


def test_smp_patch_replace_as_a_list_item_replaces_the_list() -> None:
    patch = pod_spec_patch({"containers": [{"$patch": "replace"}, {"name": "only", "image": "o:1"}]})
    assert containers(apply_strategic_merge_patch(statefulset(), patch)) == [{"name": "only", "image": "o:1"}]


def test_smp_patch_merge_is_rejected_like_kube_apiserver() -> None:
    with pytest.raises(PatchError, match="unknown patch type"):
        apply_strategic_merge_patch(statefulset(), {"metadata": {"labels": {"$patch": "merge", "a": "b"}}})
    with pytest.raises(PatchError, match="merging lists cannot yet be specified"):
        apply_strategic_merge_patch(statefulset(), pod_spec_patch({"containers": [{"$patch": "merge"}]}))
    with pytest.raises(PatchError, match="unknown patch type"):
        apply_strategic_merge_patch(
            statefulset(), pod_spec_patch({"containers": [{"name": "etcd", "$patch": "remove"}]})
        )


def test_smp_set_element_order_reorders_containers() -> None:
    patch = pod_spec_patch({"$setElementOrder/containers": [{"name": "metrics"}, {"name": "etcd"}]})
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert [c["name"] for c in containers(result)] == ["metrics", "etcd"]
    assert "$setElementOrder/containers" not in result["spec"]["template"]["spec"]


def test_smp_set_element_order_places_new_items_and_keeps_server_only_items() -> None:
    obj = {"spec": {"containers": [{"name": "a"}, {"name": "injected"}, {"name": "b"}]}}
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "containers": [{"name": "c", "image": "c:1"}],
        }
    }
    result = apply_strategic_merge_patch(obj, patch)
    assert result == {
        "spec": {
            "containers": [{"name": "a"}, {"name": "injected"}, {"name": "b"}, {"name": "c", "image": "c:1"}]
        }
    }


def test_smp_set_element_order_must_agree_with_the_patch_list() -> None:
    patch = {"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b"}]}}
    with pytest.raises(PatchError, match="doesn't match"):
        apply_strategic_merge_patch({"spec": {"containers": [{"name": "a"}]}}, patch)


def test_smp_finalizers_merge_as_an_ordered_union() -> None:
    patch = {"metadata": {"finalizers": ["foregroundDeletion", "etcdlock.io/new"]}}
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert sorted(result["metadata"]["finalizers"]) == [
        "etcdlock.io/cleanup",
        "etcdlock.io/new",
        "foregroundDeletion",
    ]
    assert len(result["metadata"]["finalizers"]) == 3


def test_smp_delete_from_primitive_list_removes_a_finalizer() -> None:
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["etcdlock.io/cleanup", "absent"]}}
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert result["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert "$deleteFromPrimitiveList/finalizers" not in result["metadata"]


def test_smp_delete_from_primitive_list_of_a_missing_list_adds_nothing() -> None:
    result = apply_strategic_merge_patch(
        {"metadata": {"name": "x"}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert result == {"metadata": {"name": "x"}}


def test_smp_finalizers_outside_metadata_are_replaced() -> None:
    # Namespace spec.finalizers has no patchStrategy tag, unlike metadata.finalizers.
    namespace = {"spec": {"finalizers": ["kubernetes"]}, "metadata": {"finalizers": ["a"]}}
    result = apply_strategic_merge_patch(
        namespace, {"spec": {"finalizers": ["other"]}, "metadata": {"finalizers": ["b"]}}
    )
    assert result["spec"]["finalizers"] == ["other"]
    assert sorted(result["metadata"]["finalizers"]) == ["a", "b"]


def test_smp_labels_and_annotations_merge_and_null_deletes() -> None:
    patch = {
        "metadata": {
            "labels": {"tier": None, "role": "leader"},
            "annotations": {"etcdlock.io/holder": "a", "gone": None},
        }
    }
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert result["metadata"]["labels"] == {"app": "etcd", "role": "leader"}
    assert result["metadata"]["annotations"] == {"note": "keep", "etcdlock.io/holder": "a"}


def test_smp_replaces_lists_without_a_merge_key() -> None:
    patch = pod_spec_patch({"tolerations": [{"key": "other", "operator": "Exists"}]})
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert result["spec"]["template"]["spec"]["tolerations"] == [{"key": "other", "operator": "Exists"}]


def test_smp_merges_owner_references_by_uid_conditions_by_type_and_webhooks_by_name() -> None:
    obj = {
        "metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "Scheduled", "status": "True"}]
        },
        "webhooks": [{"name": "a.etcdlock.io", "failurePolicy": "Fail"}, {"name": "b.etcdlock.io"}],
    }
    patch = {
        "metadata": {"ownerReferences": [{"uid": "2", "controller": True}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        "webhooks": [{"name": "a.etcdlock.io", "failurePolicy": "Ignore"}],
    }
    result = apply_strategic_merge_patch(obj, patch)
    assert result["metadata"]["ownerReferences"] == [
        {"uid": "1", "name": "a"},
        {"uid": "2", "name": "b", "controller": True},
    ]
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Scheduled", "status": "True"},
    ]
    assert result["webhooks"] == [
        {"name": "a.etcdlock.io", "failurePolicy": "Ignore"},
        {"name": "b.etcdlock.io"},
    ]


def test_smp_follows_the_kinds_whose_fields_differ_from_the_common_table() -> None:
    # PodDisruptionBudgetSpec.selector has patchStrategy=replace; StatefulSetSpec.selector merges.
    pdb = {"kind": "PodDisruptionBudget", "spec": {"selector": {"matchLabels": {"app": "etcd", "old": "x"}}}}
    patch = {"spec": {"selector": {"matchLabels": {"app": "etcd2"}}}}
    assert apply_strategic_merge_patch(pdb, patch)["spec"]["selector"] == {"matchLabels": {"app": "etcd2"}}
    sts = {"kind": "StatefulSet", "spec": {"selector": {"matchLabels": {"app": "etcd", "old": "x"}}}}
    assert apply_strategic_merge_patch(sts, patch)["spec"]["selector"] == {
        "matchLabels": {"app": "etcd2", "old": "x"}
    }
    # CustomResourceDefinitionStatus.conditions has no merge key: replaced, unlike a pod's.
    crd = {
        "kind": "CustomResourceDefinition",
        "status": {"conditions": [{"type": "Established"}, {"type": "NamesAccepted"}]},
    }
    result = apply_strategic_merge_patch(
        crd, {"status": {"conditions": [{"type": "Established", "status": "True"}]}}
    )
    assert result["status"]["conditions"] == [{"type": "Established", "status": "True"}]


def test_smp_retain_keys_clears_the_fields_it_does_not_name() -> None:
    # kubectl apply switching a volume from emptyDir to a configMap.
    patch = pod_spec_patch(
        {"volumes": [{"$retainKeys": ["configMap", "name"], "name": "data", "configMap": {"name": "cfg"}}]}
    )
    result = apply_strategic_merge_patch(statefulset(), patch)
    assert result["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "configMap": {"name": "cfg"}}]
    bad = pod_spec_patch(
        {"volumes": [{"$retainKeys": ["name"], "name": "data", "secret": {"secretName": "s"}}]}
    )
    with pytest.raises(PatchError, match="retainKeys"):
        apply_strategic_merge_patch(statefulset(), bad)


def test_smp_new_fields_never_store_directives_or_nulls() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [
                        {
                            "name": "init",
                            "image": "i:1",
                            "args": None,
                            "$setElementOrder/env": [{"name": "X"}],
                            "env": [{"name": "X", "value": "1"}, {"name": "Y", "$patch": "delete"}],
                        }
                    ],
                    "affinity": {"$patch": "delete"},
                }
            }
        }
    }
    result = apply_strategic_merge_patch(statefulset(), patch)
    pod_spec = result["spec"]["template"]["spec"]
    assert pod_spec["initContainers"] == [
        {"name": "init", "image": "i:1", "env": [{"name": "X", "value": "1"}]}
    ]
    assert "affinity" not in pod_spec


def test_smp_kubectl_apply_shaped_patch() -> None:
    live = statefulset()
    # The server added a container and an env var that the user's manifest never had.
    containers(live)[0]["env"].append({"name": "INJECTED", "value": "1"})
    containers(live).append({"name": "istio-proxy", "image": "proxy:1"})
    applied = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "etcd", "namespace": "db"},
    }
    last_applied = json.dumps(applied, separators=(",", ":")) + "\n"
    # What `kubectl apply` sends after the user bumped the image, added env C and a container, and
    # dropped the metrics container and the tier label.
    patch = {
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
            "labels": {"tier": None},
        },
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "etcd"}, {"name": "backup"}],
                    "containers": [
                        {
                            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                            "env": [{"name": "C", "value": "3"}],
                            "image": "etcd:3.6",
                            "name": "etcd",
                        },
                        {"image": "backup:1", "name": "backup"},
                        {"$patch": "delete", "name": "metrics"},
                    ],
                }
            }
        },
    }
    result = apply_strategic_merge_patch(live, patch)
    assert result["metadata"]["annotations"] == {
        "note": "keep",
        "kubectl.kubernetes.io/last-applied-configuration": last_applied,
    }
    assert result["metadata"]["labels"] == {"app": "etcd"}
    # As in apimachinery's "add map and delete map from merging list" case, the server-only container
    # takes the slot the deleted one freed, ahead of the new one.
    assert [c["name"] for c in containers(result)] == ["etcd", "istio-proxy", "backup"]
    etcd = containers(result)[0]
    assert etcd["image"] == "etcd:3.6"
    assert etcd["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
        {"name": "C", "value": "3"},
        {"name": "INJECTED", "value": "1"},
    ]
    assert etcd["ports"] == [{"containerPort": 2379, "name": "client"}]
    assert "$setElementOrder/containers" not in result["spec"]["template"]["spec"]
    assert all(not key.startswith("$") for key in etcd)


def test_smp_null_patch_changes_nothing_and_non_objects_are_rejected() -> None:
    assert apply_strategic_merge_patch(statefulset(), None) == statefulset()
    with pytest.raises(PatchError, match="must be a JSON object"):
        apply_strategic_merge_patch(statefulset(), [{"op": "add"}])


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}},
            "invalid patch format of primitive list",
        ),
        ({"spec": {"$setElementOrder": []}}, "invalid patch format of setElementOrder list"),
        (pod_spec_patch({"containers": [{"image": "no-name"}]}), "does not contain declared merge key: name"),
        (pod_spec_patch({"containers": [{"$patch": "delete"}]}), "does not contain declared merge key: name"),
        (pod_spec_patch({"containers": ["etcd"]}), "list element types are not identical"),
        ({"metadata": {"finalizers": [["nested"]]}}, "lists of lists"),
        (pod_spec_patch({"volumes": [{"$retainKeys": "name", "name": "data"}]}), "retainKeys"),
    ],
)
def test_smp_malformed_patches_are_rejected(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError, match=message):
        apply_strategic_merge_patch(statefulset(), patch)


@pytest.mark.parametrize(
    ("apply", "patch"),
    [
        (apply_merge_patch, {"metadata": {"labels": {"app": None, "x": "1"}}, "spec": {"replicas": 1}}),
        (
            apply_json_patch,
            [
                {"op": "add", "path": "/metadata/labels/x", "value": "1"},
                {"op": "remove", "path": "/spec/template/spec/containers/0/env/0"},
                {"op": "copy", "from": "/spec/template", "path": "/spec/copy"},
            ],
        ),
        (
            apply_strategic_merge_patch,
            {
                "metadata": {
                    "labels": {"app": None},
                    "$deleteFromPrimitiveList/finalizers": ["foregroundDeletion"],
                },
                "spec": {
                    "template": {
                        "spec": {
                            "$setElementOrder/containers": [{"name": "metrics"}, {"name": "etcd"}],
                            "containers": [{"name": "etcd", "env": [{"name": "A", "$patch": "delete"}]}],
                            "volumes": [{"$retainKeys": ["name", "secret"], "name": "data", "secret": {}}],
                        }
                    }
                },
            },
        ),
    ],
)
def test_patches_never_mutate_their_inputs(apply: Any, patch: Any) -> None:
    target = statefulset()
    target_before = copy.deepcopy(target)
    patch_before = copy.deepcopy(patch)
    result = apply(target, patch)
    assert target == target_before
    assert patch == patch_before
    assert result != target
    # Nor does the result share structure with them.
    result["metadata"]["labels"]["shared?"] = "no"
    assert target == target_before
    assert patch == patch_before
