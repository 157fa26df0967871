"""The scale subresource of custom resources, as apiextensions-apiserver serves it (autoscaling/v1 Scale).

A CRD version that declares ``subresources.scale`` names where its objects keep the wanted replicas
(``specReplicasPath``), the observed ones (``statusReplicasPath``) and optionally a label selector in string
form (``labelSelectorPath``). Reading ``.../NAME/scale`` turns the object into a Scale; writing one (PUT or
a patch of the Scale, as ``kubectl scale`` sends) writes its ``spec.replicas`` back into the object, which
is then validated and stored like any other update.
"""

from __future__ import annotations

import copy
from typing import Any

from etcdlock_sandbox.apiserver import errors
from etcdlock_sandbox.apiserver.resources import ResourceType
from etcdlock_sandbox.apiserver.tables import evaluate

Obj = dict[str, Any]


def _read(rtype: ResourceType, key: str, obj: Obj) -> Any:
    """The value at the CRD's scale path ``key`` (a JSONPath such as ``.spec.replicas``), or None."""
    path = str((rtype.scale or {}).get(key) or "")
    values = evaluate(path, obj) if path else []
    return values[0] if values else None


def scale_of(rtype: ResourceType, obj: Obj) -> Obj:
    """The Scale of ``obj``; a replicas path with no integer there reads as 0."""
    meta = obj["metadata"]
    spec = _read(rtype, "specReplicasPath", obj)
    observed = _read(rtype, "statusReplicasPath", obj)
    status: Obj = {"replicas": observed if isinstance(observed, int) else 0}
    selector = _read(rtype, "labelSelectorPath", obj)
    if isinstance(selector, str):
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": spec if isinstance(spec, int) else 0},
        "status": status,
    }


def scaled(rtype: ResourceType, obj: Obj, scale: Any) -> Obj:
    """``obj`` with the replicas of ``scale`` (a Scale as a client sent it) at its spec replicas path.

    The Scale's resourceVersion, if it has one, is kept as the update's precondition, as the real server
    does. A Scale that is not one (wrong kind, replicas not a non-negative integer) is refused with 400 or
    kube-apiserver's 422 for Scale.
    """
    name = obj["metadata"]["name"]
    if not isinstance(scale, dict):
        raise errors.bad_request("the body of the request must be a JSON object")
    if scale.get("kind") not in (None, "Scale") or scale.get("apiVersion") not in (None, "autoscaling/v1"):
        raise errors.bad_request(f"expected an autoscaling/v1 Scale, not {scale.get('kind')!r}")
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise errors.bad_request(f"spec.replicas must be an integer, not {replicas!r}")
    if replicas < 0:
        raise errors.invalid(
            "Scale",
            "autoscaling",
            name,
            [f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"],
        )
    result = copy.deepcopy(obj)
    *parents, last = [key for key in str((rtype.scale or {})["specReplicasPath"]).split(".") if key]
    target = result
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = replicas
    version = (scale.get("metadata") or {}).get("resourceVersion")
    if version:
        result["metadata"]["resourceVersion"] = str(version)
    return result
