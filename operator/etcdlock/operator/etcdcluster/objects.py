"""The EtcdCluster controller's Kubernetes calls, through the shared adapter
(:class:`~etcdlock.operator.kube.Kube`: dicts, None for 404, :class:`Conflict` for 409,
:class:`~etcdlock.operator.kube.ApiUnavailable` for anything else): the cluster's children by kind, its
members' pods and their volume claims.

The 409 policy of each write: a create of a child that exists already raises :class:`Conflict` (someone
created it since it was read; the controller reads it next pass); a pod deleted on the condition that it is
still the one seen was replaced already, which is what the delete was for (nothing to do). The patches name
no resourceVersion and the claim deletes no precondition: they meet no conflict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from etcdlock.operator.kube import Conflict, Kube

Obj = dict[str, Any]
Method = Callable[..., Any]


class KubeObjects:
    """The controller's Kubernetes calls: its children by kind, the members' pods and their claims."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def _kind(self, kind: str) -> tuple[Method, Method, Method]:
        """(read, create, patch) for a child kind."""
        core, apps, policy = self.kube.core, self.kube.apps, self.kube.policy
        calls: dict[str, tuple[Method, Method, Method]] = {
            "Service": (
                core.read_namespaced_service,
                core.create_namespaced_service,
                core.patch_namespaced_service,
            ),
            "StatefulSet": (
                apps.read_namespaced_stateful_set,
                apps.create_namespaced_stateful_set,
                apps.patch_namespaced_stateful_set,
            ),
            "PodDisruptionBudget": (
                policy.read_namespaced_pod_disruption_budget,
                policy.create_namespaced_pod_disruption_budget,
                policy.patch_namespaced_pod_disruption_budget,
            ),
        }
        return calls[kind]

    async def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        return await self.kube.call(self._kind(kind)[0], name, namespace)

    async def create(self, obj: Obj) -> Obj | None:
        """Raises :class:`Conflict` if it exists (created since it was read)."""
        return await self.kube.call(self._kind(obj["kind"])[1], obj["metadata"]["namespace"], obj)

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj | list[Obj]) -> Obj | None:
        return await self.kube.call(self._kind(kind)[2], name, namespace, patch)

    async def pods(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
        return await self.kube.pods([namespace], ",".join(f"{k}={v}" for k, v in labels.items()))

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete the pod if it is still the one with ``uid``. A conflict says it is not: it was replaced
        already (by its successor of the same name), which is what the delete was for."""
        body = {"preconditions": {"uid": uid}}
        with contextlib.suppress(Conflict):
            await self.kube.call(self.kube.core.delete_namespaced_pod, name, namespace, body=body)

    async def claims(self, namespace: str, labels: dict[str, str]) -> dict[str, Obj]:
        """The members' claims by name, in one list (a StatefulSet labels them with its selector)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        listed = await self.kube.call(
            self.kube.core.list_namespaced_persistent_volume_claim, namespace, label_selector=selector
        )
        return {c["metadata"]["name"]: c for c in (listed or {}).get("items") or []}

    async def delete_claim(self, namespace: str, name: str) -> None:
        await self.kube.call(self.kube.core.delete_namespaced_persistent_volume_claim, name, namespace)
