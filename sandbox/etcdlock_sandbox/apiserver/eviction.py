"""The eviction subresource of pods (``POST .../pods/NAME/eviction``, a policy/v1 Eviction), as
kube-apiserver serves it: a pod is deleted unless a PodDisruptionBudget forbids it.

As ``pkg/registry/core/pod/storage/eviction.go``: a pod that is being deleted, or whose phase is Pending,
Succeeded or Failed, is deleted without looking at budgets; otherwise the one PodDisruptionBudget whose
selector matches the pod (none: delete; more than one: 500) must have processed its spec
(``status.observedGeneration`` at least its generation) and allow a disruption
(``status.disruptionsAllowed`` > 0), else 429 TooManyRequests with the reason; an allowed eviction takes
one disruption from the budget's status, then deletes the pod with the Eviction's ``deleteOptions`` (a uid
precondition that fails is a 409). The sandbox has no disruption controller: budgets allow what their
status says, as written by whoever writes it (a test).
"""

from __future__ import annotations

from typing import Any

from etcdlock_sandbox.apiserver import errors
from etcdlock_sandbox.apiserver.api import Api
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.apiserver.selectors import label_selector_from_dict

Obj = dict[str, Any]

_NO_BUDGET_NEEDED = ("Pending", "Succeeded", "Failed")
_ATTEMPTS = 5
_SEVERAL_BUDGETS = (
    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
)


async def evict(api: Api, namespace: str, name: str, eviction: Any) -> Obj:
    """Evict the pod ``namespace/name`` as asked by ``eviction`` (the request's body); the Status of
    success, or :class:`ApiError` (404 no pod, 409 precondition, 429 refused by its budget)."""
    options = _checked(eviction, name)
    pods = api.resolve("", "v1", "pods")
    for _ in range(_ATTEMPTS):
        pod = await api.get(pods, namespace, name)
        if not _needs_budget(pod) or await _take_disruption(api, namespace, pod):
            await api.delete(pods, namespace, name, options)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
    raise errors.conflict("poddisruptionbudgets", "policy", name)


def _checked(eviction: Any, name: str) -> Obj:
    """The Eviction's deleteOptions; 400 for a body that is not an Eviction of this pod."""
    if not isinstance(eviction, dict) or eviction.get("kind") not in (None, "Eviction"):
        raise errors.bad_request("the body of the request must be a policy/v1 Eviction")
    if (eviction.get("metadata") or {}).get("name") != name:
        raise errors.bad_request("name in URL does not match name in Eviction object")
    options = eviction.get("deleteOptions") or {}
    if not isinstance(options, dict):
        raise errors.bad_request("deleteOptions must be an object")
    return options


def _needs_budget(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    return not pod["metadata"].get("deletionTimestamp") and phase not in _NO_BUDGET_NEEDED


async def _take_disruption(api: Api, namespace: str, pod: Obj) -> bool:
    """Take one disruption from the pod's budget (True; also without a budget); False if the budget
    changed meanwhile (look again). 429 if it allows none, 500 for more than one budget."""
    budgets = api.resolve("policy", "v1", "poddisruptionbudgets")
    labels = pod["metadata"].get("labels") or {}
    items, _ = await api.list_matching(
        budgets, namespace, lambda b: label_selector_from_dict((b.get("spec") or {}).get("selector"))(labels)
    )
    if not items:
        return True
    if len(items) > 1:
        raise ApiError(500, "InternalError", _SEVERAL_BUDGETS)
    budget = items[0]
    _refuse_unless_allowed(budget)
    status = dict(budget.get("status") or {})
    status["disruptionsAllowed"] = int(status["disruptionsAllowed"]) - 1
    body = {**budget, "status": status}
    try:
        await api.update(budgets, namespace, budget["metadata"]["name"], body, "status")
    except ApiError as exc:
        if exc.code == 409:
            return False
        raise
    return True


def _refuse_unless_allowed(budget: Obj) -> None:
    """429, with kube-apiserver's message and cause, unless the budget allows a disruption now."""
    meta, status = budget["metadata"], budget.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 1):
        why = f"The disruption budget {meta['name']} is still being processed by the server."
    elif int(status.get("disruptionsAllowed") or 0) <= 0:
        why = (
            f"The disruption budget {meta['name']} needs {status.get('desiredHealthy', 0)} healthy pods "
            f"and has {status.get('currentHealthy', 0)} currently"
        )
    else:
        return
    raise ApiError(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
        {"causes": [{"reason": "DisruptionBudget", "message": why}]},
    )
