"""Status conditions, written one way for every kind (Kubernetes' ``metav1.Condition``).

Kubernetes' rule for ``lastTransitionTime``: it is the last time the condition's *status* changed; a
new reason or message under the same status keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from etcdlock import clock

Condition = dict[str, Any]


def condition(kind: str, status: str, reason: str, message: str, generation: int) -> Condition:
    """A condition that transitions now (see :func:`carried_over` for one that did not)."""
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": clock.now(),
    }


def find(status: Mapping[str, Any] | None, kind: str) -> Condition:
    """The condition of that type in ``status`` (a status with ``conditions``), or an empty dict."""
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == kind), {})


def carried_over(wanted: Iterable[Condition], previous: Mapping[str, Any] | None) -> list[Condition]:
    """``wanted``, each keeping the lastTransitionTime it had in ``previous`` (a status) while its status
    is the same."""
    result = []
    for new in wanted:
        old = find(previous, new["type"])
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            new = {**new, "lastTransitionTime": old["lastTransitionTime"]}
        result.append(new)
    return result


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with no lastTransitionTime: for telling whether anything else changed."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])
    ]
    return {**status, "conditions": conditions}
