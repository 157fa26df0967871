"""The pod flow's reads and writes of pods (and of the DistributedLock a pod asks for), and the helpers
that read a pod.

Writes return the pod as written, so the next conditional write can name its resourceVersion. The one
write that lets a pod run, :meth:`PodApi.ungate`, is conditional on the pod being the version the decision
was taken on, and that version asking for the lock granted: a pod whose annotation changed meanwhile is
never ungated for the old lock.

Every write of the ``etcdlock.io/state`` annotation writes the same value to the ``etcdlock.io/state``
label in the same patch, so that ``kubectl get pods -L etcdlock.io/state`` shows it (no controller
selects on that label: a Job's or ReplicaSet's selector names labels of its own template).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from etcdlock.operator.errors import OperatorError
from etcdlock.operator.kube import Conflict, Kube, retrying
from etcdlock.operator.names import (
    LOCK_ANNOTATION,
    LOCKS,
    MANAGED_LABEL,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    STATE_LABEL,
)

Pod = dict[str, Any]
Ref = tuple[str, str]

_STRATEGIC_MERGE = "application/strategic-merge-patch+json"


class PodChanged(OperatorError):
    """A conditional pod write found a newer version of the pod than the one it was decided on."""

    reason = "PodChanged"


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def pod_ref(pod: Mapping[str, Any]) -> Ref:
    meta = pod["metadata"]
    return meta.get("namespace") or "", meta["name"]


def parse_lease(value: str | None) -> int | None:
    """The lease ID named on a pod (hexadecimal), or None if absent or not a number."""
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def is_labelled(pod: Mapping[str, Any]) -> bool:
    return MANAGED_LABEL in ((pod.get("metadata") or {}).get("labels") or {})


def is_gated(pod: Mapping[str, Any]) -> bool:
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(gate.get("name") == SCHEDULING_GATE for gate in gates)


class PodApi:
    """Pod patches and the DistributedLock a pod asks for, through the shared :class:`Kube` adapter.

    Made once per process, before any campaign: the client's API modules take half a second to load,
    which a new leader should not spend.
    """

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def annotate(
        self,
        ref: Ref,
        annotations: Mapping[str, str | None],
        *,
        ungate: bool = False,
        attempts: int | None = None,
    ) -> Pod | None:
        """Set (None: remove) annotations, and remove the gate if asked, in one patch.

        The pod as written, or None if it is gone. API failures are retried until the write lands, or
        ``attempts`` times (then :class:`~etcdlock.operator.kube.ApiUnavailable`).
        """
        body: dict[str, Any] = {"metadata": _notes(annotations)}
        if ungate:
            body["spec"] = {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]}
        return await retrying(f"pod {ref[0]}/{ref[1]}", lambda: self._patch(ref, body), attempts)

    async def ungate(self, pod: Pod, lock: str, annotations: Mapping[str, str | None]) -> Pod | None:
        """Remove the gate and write ``annotations``, only if the pod is still the version ``pod`` was
        (its resourceVersion is a precondition of the write) and that version asks for ``lock``.

        Returns the pod as written, or None (nothing written) if the pod is gone or asks for another lock.
        Raises :class:`PodChanged` if the pod changed since ``pod`` (decide again on its new version), and
        :class:`~etcdlock.operator.kube.ApiUnavailable` if the API fails. Never retried here: the caller
        decides again before another attempt.
        """
        if annotations_of(pod).get(LOCK_ANNOTATION) != lock:
            return None
        body = {
            "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"], **_notes(annotations)},
            "spec": {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]},
        }
        namespace, name = pod_ref(pod)
        try:
            return await self._patch((namespace, name), body)
        except Conflict:
            raise PodChanged(f"pod {namespace}/{name} changed") from None

    async def evict(self, pod: Pod) -> None:
        """Evict the pod (policy/v1 Eviction: the API server deletes it if its PodDisruptionBudgets allow),
        only the very pod ``pod`` is (its uid is a precondition). Returns once it is evicted or gone (a pod
        of the same name that replaced it is left alone); raises
        :class:`~etcdlock.operator.kube.TooManyRequests` if a budget refuses now, and
        :class:`~etcdlock.operator.kube.ApiUnavailable` if the API fails. Never retried here."""
        namespace, name = pod_ref(pod)
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": pod["metadata"].get("uid")}},
        }
        try:
            await self._kube.call(self._kube.core.create_namespaced_pod_eviction, name, namespace, body)
        except Conflict:
            pass  # another pod of that name: this one is gone

    async def label(self, ref: Ref) -> Pod | None:
        """Label the pod for the operator's pod watch (API failures retried); the pod, or None if gone."""
        body = {"metadata": {"labels": {MANAGED_LABEL: "true"}}}
        return await retrying(f"pod {ref[0]}/{ref[1]}", lambda: self._patch(ref, body))

    async def read(self, ref: Ref) -> Pod | None:
        """The pod as stored now, or None if it is gone (API failures retried)."""
        namespace, name = ref
        read = functools.partial(self._kube.call, self._kube.core.read_namespaced_pod, name, namespace)
        return await retrying(f"pod {namespace}/{name}", read)

    async def read_lock(self, namespace: str, name: str) -> Pod | None:
        """The DistributedLock, or None if it does not exist or is being deleted (API failures retried)."""
        read = functools.partial(self._kube.custom_object, LOCKS, namespace, name)
        lock = await retrying(f"DistributedLock {namespace}/{name}", read)
        if lock is None or lock.get("metadata", {}).get("deletionTimestamp"):
            return None
        return lock

    async def _patch(self, ref: Ref, body: dict[str, Any]) -> Pod | None:
        namespace, name = ref
        patch = self._kube.core.patch_namespaced_pod
        return await self._kube.call(patch, name, namespace, body, _content_type=_STRATEGIC_MERGE)


def _notes(annotations: Mapping[str, str | None]) -> dict[str, Any]:
    """The metadata of a patch writing ``annotations``, the state mirrored as a label (see above)."""
    metadata: dict[str, Any] = {"annotations": dict(annotations)}
    if STATE_ANNOTATION in annotations:
        metadata["labels"] = {STATE_LABEL: annotations[STATE_ANNOTATION]}
    return metadata
