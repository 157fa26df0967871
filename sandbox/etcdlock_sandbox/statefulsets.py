"""A minimal StatefulSet controller for the sandbox: the pods and claims a StatefulSet asks for.

Pods are named NAME-0 ... NAME-(replicas-1), with ``hostname``/``subdomain`` set so that they have DNS
names in the StatefulSet's Service, the ``statefulset.kubernetes.io/pod-name`` and
``apps.kubernetes.io/pod-index`` labels, and the StatefulSet as controller. Each volumeClaimTemplate gets
a claim CLAIM-NAME-i, created before the pod and kept when the StatefulSet shrinks (the default retention
policy). ``podManagementPolicy: Parallel`` creates and deletes all at once; OrderedReady creates a pod once
all lower ones are Ready and deletes the highest first. A pod that is gone is created again. Updates to the
template reach only pods created afterwards (the ``OnDelete`` strategy: the sandbox does not roll pods).
Status counts replicas, ready and available replicas.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

from etcdlock_sandbox.apiserver.api import MERGE_PATCH, Api
from etcdlock_sandbox.apiserver.errors import ApiError

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ordinal(sts_name: str, pod_name: str) -> int | None:
    head, _, index = pod_name.rpartition("-")
    return int(index) if head == sts_name and index.isdigit() else None


def _owner(sts: Obj) -> Obj:
    meta = sts["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def claim_name(template: Obj, sts_name: str, ordinal: int) -> str:
    return f"{template['metadata']['name']}-{sts_name}-{ordinal}"


def pod_for(sts: Obj, ordinal: int) -> Obj:
    """Pod ``ordinal`` of the StatefulSet, from its current template."""
    meta, spec = sts["metadata"], sts["spec"]
    template = copy.deepcopy(spec.get("template") or {})
    name = f"{meta['name']}-{ordinal}"
    pod_meta = template.get("metadata") or {}
    labels = {
        **(pod_meta.get("labels") or {}),
        "statefulset.kubernetes.io/pod-name": name,
        "apps.kubernetes.io/pod-index": str(ordinal),
    }
    pod_spec = template.get("spec") or {}
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = spec.get("serviceName", "")
    for claim in spec.get("volumeClaimTemplates") or []:
        volume = {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": ""}}
        volume["persistentVolumeClaim"]["claimName"] = claim_name(claim, meta["name"], ordinal)
        pod_spec.setdefault("volumes", []).append(volume)
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "ownerReferences": [_owner(sts)],
        },
        "spec": pod_spec,
    }
    if pod_meta.get("annotations"):
        pod["metadata"]["annotations"] = dict(pod_meta["annotations"])
    return pod


class StatefulSetController:
    """Reconciles every StatefulSet after any change to it or to its pods."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self._sets = api.resolve("apps", "v1", "statefulsets")
        self._pods = api.resolve("", "v1", "pods")
        self._claims = api.resolve("", "v1", "persistentvolumeclaims")
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(self._follow(self._sets), self._follow(self._pods), self._work())

    async def _follow(self, rtype: Any) -> None:
        while True:
            try:
                async for _, obj in self._api.watch(rtype, None, None, lambda _: True):
                    meta = obj["metadata"]
                    if rtype is self._sets:
                        self._mark(meta.get("namespace", ""), meta["name"])
                    for ref in meta.get("ownerReferences") or []:
                        if ref.get("kind") == "StatefulSet" and ref.get("controller"):
                            self._mark(meta.get("namespace", ""), ref["name"])
            except ApiError as exc:
                log.warning("statefulsets: %s watch ended (%s); starting over", rtype.plural, exc)
                await asyncio.sleep(0.5)

    def _mark(self, namespace: str, name: str) -> None:
        self._dirty.add((namespace, name))
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                namespace, name = self._dirty.pop()
                try:
                    await self.reconcile(namespace, name)
                except ApiError as exc:
                    log.warning("statefulset %s/%s: %s; trying again", namespace, name, exc)
                    await asyncio.sleep(0.5)
                    self._mark(namespace, name)

    async def reconcile(self, namespace: str, name: str) -> None:
        try:
            sts = await self._api.get(self._sets, namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        if sts["metadata"].get("deletionTimestamp"):
            return
        uid = sts["metadata"]["uid"]
        items, _ = await self._api.list_matching(self._pods, namespace, lambda _: True)
        pods: dict[int, Obj] = {}
        for pod in items:
            ordinal = _ordinal(name, pod["metadata"]["name"])
            owned = any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or [])
            if ordinal is not None and owned:
                pods[ordinal] = pod
        spec = sts["spec"]
        replicas = int(spec.get("replicas", 1))
        parallel = spec.get("podManagementPolicy") == "Parallel"
        for ordinal in range(replicas):
            if ordinal in pods:
                continue
            if not parallel and not all(pod_ready(pods[i]) for i in range(ordinal) if i in pods):
                break
            await self._ensure_claims(sts, ordinal)
            pods[ordinal] = await self._api.create(self._pods, namespace, pod_for(sts, ordinal))
            if not parallel:
                break
        extra = sorted((i for i in pods if i >= replicas), reverse=True)
        for ordinal in extra if parallel else extra[:1]:
            if not pods[ordinal]["metadata"].get("deletionTimestamp"):
                await self._delete(namespace, pods.pop(ordinal)["metadata"]["name"])
        await self._publish(sts, list(pods.values()))

    async def _ensure_claims(self, sts: Obj, ordinal: int) -> None:
        namespace = sts["metadata"].get("namespace")
        for template in sts["spec"].get("volumeClaimTemplates") or []:
            claim: Obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim_name(template, sts["metadata"]["name"], ordinal),
                    "namespace": namespace,
                    "labels": dict((sts["spec"].get("selector") or {}).get("matchLabels") or {}),
                },
                "spec": copy.deepcopy(template.get("spec") or {}),
            }
            try:
                await self._api.create(self._claims, namespace, claim)
            except ApiError as exc:
                if exc.code != 409:
                    raise

    async def _delete(self, namespace: str, name: str) -> None:
        try:
            await self._api.delete(self._pods, namespace, name)
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _publish(self, sts: Obj, pods: list[Obj]) -> None:
        ready = sum(1 for p in pods if pod_ready(p))
        status = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": len(pods),
            "updatedReplicas": len(pods),
        }
        if all((sts.get("status") or {}).get(k) == v for k, v in status.items()):
            return
        meta = sts["metadata"]
        document = json.dumps({"status": status}).encode()
        await self._api.patch(
            self._sets, meta.get("namespace"), meta["name"], MERGE_PATCH, document, subresource="status"
        )
