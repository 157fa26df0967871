"""The EtcdCluster controller: every few seconds, one reconcile pass per cluster.

A pass makes sure the children exist (:mod:`.rendering`), asks etcd itself how the members are
(:func:`.membership.observe`), takes at most one membership step (:func:`.membership.next_step`), keeps
the StatefulSet in step with the membership, and returns the status it saw. Between membership changes
it does the slow work one member at a time, only while every member is healthy: restarting a member whose
pod runs an older template (an upgrade, a changed resource request), and defragmenting a member whose
last defragmentation is older than the spec's interval. Every membership change and every refusal is an
Event on the EtcdCluster, and so is what happened to a member's process since the last pass (restarted by
the kubelet, stopped answering, answering again).

A member's data is gone when its pod was replaced while its data lived in an emptyDir (the pod is not the
one it was last healthy in, and it is not healthy): such a member is removed and added again, and its pod
is recreated to start empty, as a new member.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster.membership import (
    ClusterView,
    MemberClients,
    MemberState,
    Step,
    apply,
    next_step,
    observe,
    quorum,
)
from etcdlock.operator.etcdcluster.rendering import TEMPLATE_HASH, children, statefulset
from etcdlock.operator.etcdcluster.spec import SIZES, ClusterSpec, upgrade_allowed
from etcdlock.operator.stores import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

RENDERED = "etcdlock.io/rendered-template"
RECONCILE_PERIOD = 2.0
OBSERVE_TIMEOUT = 8.0


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _age(timestamp: str | None) -> float:
    if not timestamp:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


class KubeObjects:
    """The few Kubernetes calls the controller makes, as dicts (None for 404), off the event loop."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.policy = kubernetes.client.PolicyV1Api(api)

    @staticmethod
    async def _call(method: Any, *args: Any, **kwargs: Any) -> Obj | None:
        def call() -> Obj | None:
            try:
                response = method(*args, _preload_content=False, **kwargs)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            data: Obj = json.loads(response.data or b"{}")
            return data

        return await asyncio.to_thread(call)

    def _kind(self, kind: str) -> tuple[Any, Any, Any]:
        """(read, create, patch) for a child kind."""
        if kind == "Service":
            c = self.core
            return c.read_namespaced_service, c.create_namespaced_service, c.patch_namespaced_service
        if kind == "StatefulSet":
            a = self.apps
            return (
                a.read_namespaced_stateful_set,
                a.create_namespaced_stateful_set,
                a.patch_namespaced_stateful_set,
            )
        p = self.policy
        return (
            p.read_namespaced_pod_disruption_budget,
            p.create_namespaced_pod_disruption_budget,
            p.patch_namespaced_pod_disruption_budget,
        )

    async def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        return await self._call(self._kind(kind)[0], name, namespace)

    async def create(self, obj: Obj) -> Obj | None:
        return await self._call(self._kind(obj["kind"])[1], obj["metadata"]["namespace"], obj)

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj | list[Obj]) -> Obj | None:
        return await self._call(self._kind(kind)[2], name, namespace, patch)

    async def pods(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return list((found or {}).get("items") or [])

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete the pod if it is still the one with ``uid`` (not its successor of the same name)."""
        body = {"preconditions": {"uid": uid}}
        try:
            await self._call(self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def delete_claim(self, namespace: str, name: str) -> None:
        await self._call(self.core.delete_namespaced_persistent_volume_claim, name, namespace)


@dataclass
class Pass:
    """What one reconcile pass saw and did, turned into the status at the end."""

    spec: ClusterSpec
    previous: Obj
    view: ClusterView | None = None
    step: Step | None = None
    activity: str = ""
    version: str = ""
    problem: str = ""
    problem_reason: str = ""
    defragmented: str = ""
    created: str = ""
    pod_uids: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # of the etcd container, by pod name
    lost: set[str] = field(default_factory=set)


class Clusters:
    """Reconciles EtcdClusters; keeps one etcd client per cluster, and one per member for status requests
    (closed by :meth:`forget`).

    ``leadership`` is the operator's own etcd and fence: a pass changes nothing unless this replica still
    leads when it is about to (two replicas restarting members at once could cost a quorum).
    """

    def __init__(self, kube: kubernetes.client.ApiClient, leadership: Store) -> None:
        self._objects = KubeObjects(kube)
        self._leadership = leadership
        self._warned: dict[tuple[str, str], str] = {}  # the last defragmentation failure told, per cluster
        self._clients: dict[tuple[str, str], EtcdClient] = {}
        self._members: dict[tuple[str, str], MemberClients] = {}

    async def close(self) -> None:
        for namespace, name in list(self._clients) + list(self._members):
            await self.forget(namespace, name)

    async def forget(self, namespace: str, name: str) -> None:
        client = self._clients.pop((namespace, name), None)
        if client is not None:
            await client.close()
        members = self._members.pop((namespace, name), None)
        if members is not None:
            await members.close()

    async def reconcile(self, body: kopf.Body) -> Obj:
        """One pass over the cluster ``body``; returns its new status."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        try:
            spec = ClusterSpec.parse(namespace, name, dict(body.get("spec") or {}))
        except InvalidSpec as exc:
            if _condition(previous, "Degraded").get("message") != str(exc):
                kopf.warn(body, reason="InvalidSpec", message=str(exc))
            return _invalid_status(previous, str(exc), generation)
        run = Pass(spec, previous, version=previous.get("version") or spec.version)
        run.created = str(meta.get("creationTimestamp") or "")
        found = await self._ensure_children(body, spec)
        sts = found["StatefulSet"]
        pods = {p["metadata"]["name"]: p for p in await self._objects.pods(spec.namespace, spec.labels)}
        run.pod_uids = {name: pod["metadata"]["uid"] for name, pod in pods.items()}
        run.restarts = {name: _restarts(pod) for name, pod in pods.items()}
        run.view = await self._observe(spec, pods)
        await self._keep_budget(spec, found["PodDisruptionBudget"], run)
        if run.view is None:
            return _status(run, generation)
        await self._converge(body, run, sts, pods)
        status = _status(run, generation)
        for kind, reason, message in _member_events(previous, status["members"], run.pod_uids):
            if kind == "Warning":
                kopf.warn(body, reason=reason, message=message)
            else:
                kopf.info(body, reason=reason, message=message)
        return status

    async def _ensure_children(self, body: kopf.Body, spec: ClusterSpec) -> dict[str, Obj]:
        """Create what is missing. Returns the children by kind."""
        owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}
        found: dict[str, Obj] = {}
        for child in children(spec, owner):
            kind, child_name = child["kind"], child["metadata"]["name"]
            current = await self._objects.read(kind, spec.namespace, child_name)
            if current is None:
                current = await self._objects.create(child)
                kopf.info(body, reason="Created", message=f"created {kind} {child_name}")
            if current is not None:
                found[kind] = current
        return found

    async def _keep_budget(self, spec: ClusterSpec, budget: Obj, run: Pass) -> None:
        """minAvailable is the quorum of the voters there are, while more run than wanted (scale-in);
        when nobody answers, of the voters etcd listed last."""
        if run.view is not None:
            voters = len(run.view.voters)
        else:
            voters = sum(1 for m in run.previous.get("members") or [] if not m.get("learner"))
        wanted = quorum(max(voters, spec.replicas))
        if budget["spec"].get("minAvailable") != wanted:
            patch = {"spec": {"minAvailable": wanted}}
            await self._objects.patch("PodDisruptionBudget", spec.namespace, spec.name, patch)

    async def _client(self, spec: ClusterSpec, members: list[int]) -> EtcdClient:
        """A client for these members (by ordinal)."""
        endpoints = [spec.client_url_of(i) for i in members]
        config = EtcdConfig.parse(endpoints, request_timeout=3.0)
        key = (spec.namespace, spec.name)
        client = self._clients.get(key)
        if client is None or client.config != config:
            if client is not None:
                await client.close()
            client = self._clients[key] = EtcdClient(config)
        return client

    async def _observe(self, spec: ClusterSpec, pods: dict[str, Obj]) -> ClusterView | None:
        """What etcd says, asked of the members whose pods run (only they have addresses, hence names)."""
        running = sorted(
            ordinal
            for name, pod in pods.items()
            if (ordinal := spec.ordinal(name)) is not None and (pod.get("status") or {}).get("podIP")
        )
        if not running:
            return None
        try:
            async with asyncio.timeout(OBSERVE_TIMEOUT):
                client = await self._client(spec, running)
                members = self._members.setdefault((spec.namespace, spec.name), MemberClients())
                view = await observe(client, members)
        except (EtcdError, TimeoutError) as exc:
            log.info("etcd cluster %s/%s not reachable yet: %s", spec.namespace, spec.name, exc)
            return None
        return view if view.members else None

    async def _converge(self, body: kopf.Body, run: Pass, sts: Obj, pods: dict[str, Obj]) -> None:
        spec, view = run.spec, run.view
        assert view is not None
        if not await self._leadership.confirmed():
            log.info(
                "etcd cluster %s/%s: not changed, this replica no longer leads", spec.namespace, spec.name
            )
            return
        lost = self._lost(run, view, pods)
        run.lost = lost
        names = _names(spec, view)
        effective = self._effective_spec(body, run, sts)
        step = next_step(view, spec.wanted(), frozenset(lost))
        if step.target is not None and not step.member:
            step = replace(step, member=names.get(step.target.peer_url, ""))
        run.step = step
        membership = {names[m.peer_url]: m.peer_url for m in view.members if m.peer_url in names}
        if step.action == "add-learner":
            membership[step.member] = step.peer_url
        await self._keep_template(effective, sts, membership)
        # Every member etcd lists has a pod (a scale-up lost after its MemberAdd is made good here).
        listed = [names[m.peer_url] for m in view.members if m.peer_url in names]
        ordinals = [o for name in listed if (o := spec.ordinal(name)) is not None]
        if ordinals and int(sts["spec"].get("replicas") or 0) <= max(ordinals):
            await self._scale(spec, sts, max(ordinals) + 1)
        client = self._clients[(spec.namespace, spec.name)]
        if step.action in ("refuse", "wait"):
            if step.action == "refuse" and _condition(run.previous, "Degraded").get("message") != step.reason:
                kopf.warn(body, reason="MembershipRefused", message=step.reason)
            return
        if step.action == "done":
            await self._settle(body, run, sts, pods)
            return
        try:
            taken = await apply(client, view, step)
        except EtcdError as exc:
            run.problem, run.problem_reason = f"{step.action} {step.member} failed: {exc}", "ChangeFailed"
            if _condition(run.previous, "Degraded").get("message") != run.problem:
                kopf.warn(body, reason="MembershipChangeFailed", message=run.problem)
            return
        if not taken:
            return
        await self._after_step(body, run, sts, pods, step, lost)

    def _lost(self, run: Pass, view: ClusterView, pods: dict[str, Obj]) -> set[str]:
        """Members whose emptyDir data went with a pod that was replaced (see the module docstring).

        Healthy or not: a member that comes back under its old ID with empty data may have forgotten
        entries it acknowledged, so etcd's rule (remove it, add it again) applies either way. Only the
        member the pod was recorded for counts (matched by ID), not a member added since under that name.
        """
        if run.spec.storage_size is not None:
            return set()
        names = _names(run.spec, view)
        recorded = {m.get("name"): m for m in run.previous.get("members") or []}
        lost = set()
        for member in view.members:
            name = names.get(member.peer_url, "")
            pod, was = pods.get(name), recorded.get(name) or {}
            if pod is None or not was.get("podUID") or was.get("id") != format(member.id, "x"):
                continue
            if pod["metadata"].get("uid") != was["podUID"]:
                lost.add(name)
        return lost

    def _effective_spec(self, body: kopf.Body, run: Pass, sts: Obj) -> ClusterSpec:
        """The spec to render: a version change only if etcd's upgrade path allows it. Refused, the
        members keep the image they run now (the StatefulSet's), even part-way through an earlier upgrade."""
        spec = run.spec
        current = run.version
        if spec.version == current or upgrade_allowed(current, spec.version):
            return spec
        message = f"cannot go from etcd {current} to {spec.version}: one minor version at a time, never down"
        if _condition(run.previous, "Degraded").get("message") != message:
            kopf.warn(body, reason="UpgradeRefused", message=message)
        run.problem, run.problem_reason = message, "Refused"
        containers = ((sts["spec"].get("template") or {}).get("spec") or {}).get("containers") or [{}]
        return replace(spec, version=current, image=containers[0].get("image") or spec.image)

    async def _keep_template(self, spec: ClusterSpec, sts: Obj, membership: dict[str, str]) -> None:
        """The StatefulSet's template says what a pod created now must run (joining this membership).

        What was rendered is remembered in an annotation: the API server adds defaults to the template,
        so comparing templates would find a difference every time.
        """
        wanted = statefulset(spec, members=membership)["spec"]["template"]
        rendered = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:12]
        annotations = sts["metadata"].get("annotations")
        if (annotations or {}).get(RENDERED) == rendered:
            return
        # A JSON patch replaces the template whole: a merge would keep overrides the spec no longer has.
        note: Obj = {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {**(annotations or {}), RENDERED: rendered},
        }
        patch = [{"op": "replace", "path": "/spec/template", "value": wanted}, note]
        patched = await self._objects.patch("StatefulSet", spec.namespace, spec.name, patch)
        if patched is not None:
            sts.update(patched)

    async def _scale(self, spec: ClusterSpec, sts: Obj, replicas: int) -> None:
        if int(sts["spec"].get("replicas") or 0) != replicas:
            await self._objects.patch(
                "StatefulSet", spec.namespace, spec.name, {"spec": {"replicas": replicas}}
            )
            sts["spec"]["replicas"] = replicas

    async def _after_step(
        self, body: kopf.Body, run: Pass, sts: Obj, pods: dict[str, Obj], step: Step, lost: set[str]
    ) -> None:
        spec = run.spec
        ordinal = spec.ordinal(step.member)
        if step.action == "add-learner":
            kopf.info(body, reason="MemberAdded", message=f"added {step.member} as a learner ({step.reason})")
            pod = pods.get(step.member)
            if pod is None and spec.storage_size is not None:
                # A claim left from an earlier member of that name would start the new one on old data.
                await self._objects.delete_claim(spec.namespace, f"data-{step.member}")
            if ordinal is not None:
                await self._scale(spec, sts, max(ordinal + 1, int(sts["spec"].get("replicas") or 0)))
            if pod is not None:
                # A pod from before this member was added (its data lost, or a removed member's) must start
                # again, empty, to join as the new member: its claim goes too.
                if spec.storage_size is not None:
                    await self._objects.delete_claim(spec.namespace, f"data-{step.member}")
                await self._objects.delete_pod(spec.namespace, step.member, pod["metadata"]["uid"])
                kopf.info(
                    body, reason="MemberReplaced", message=f"{step.member} starts again with empty data"
                )
        elif step.action == "promote":
            kopf.info(body, reason="MemberPromoted", message=f"{step.member} is a voting member")
        elif step.action == "move-leader":
            kopf.info(
                body, reason="LeaderMoved", message=f"leadership moved to {step.member} ({step.reason})"
            )
        elif step.action == "remove":
            kopf.info(body, reason="MemberRemoved", message=f"removed {step.member or '?'} ({step.reason})")
            if step.member in lost:
                return
            if ordinal is not None and ordinal >= spec.replicas:
                await self._scale(spec, sts, ordinal)
                if spec.storage_size is not None:
                    await self._objects.delete_claim(spec.namespace, f"data-{step.member}")

    async def _settle(self, body: kopf.Body, run: Pass, sts: Obj, pods: dict[str, Obj]) -> None:
        """Every wanted member votes: size the StatefulSet, then one restart or one defragmentation."""
        spec, view = run.spec, run.view
        assert view is not None
        await self._scale(spec, sts, spec.replicas)
        wanted_hash = ((sts["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(
            TEMPLATE_HASH
        )
        stale = [
            p
            for p in pods.values()
            if ((p["metadata"].get("annotations") or {}).get(TEMPLATE_HASH)) != wanted_hash
        ]
        if stale:
            run.activity = "Upgrading"
        all_healthy = all(m.healthy for m in view.members) and len(view.members) == spec.replicas
        if not all_healthy or len(pods) != spec.replicas or not all(_ready(p) for p in pods.values()):
            return
        if stale:
            names = _names(spec, view)
            leader = next((names.get(m.peer_url) for m in view.members if m.leader), None)
            stale.sort(key=lambda p: (p["metadata"]["name"] == leader, p["metadata"]["name"]))
            pod = stale[0]
            kopf.info(
                body,
                reason="MemberRestarted",
                message=f"restarting {pod['metadata']['name']} with the new template",
            )
            await self._objects.delete_pod(spec.namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
            return
        run.version = spec.version if not run.problem else run.version
        await self._defragment_one(body, run)

    async def _defragment_one(self, body: kopf.Body, run: Pass) -> None:
        spec, view = run.spec, run.view
        assert view is not None
        if spec.defragment_interval <= 0:
            return
        names = _names(spec, view)
        last = {m.get("name"): m.get("lastDefragmentation") for m in run.previous.get("members") or []}
        created = run.created
        due = [
            m
            for m in view.members
            if _age(last.get(names.get(m.peer_url)) or created) >= spec.defragment_interval
        ]
        if not due:
            return
        member = min(due, key=lambda m: (m.leader, names.get(m.peer_url, "")))
        config = replace(
            self._clients[(spec.namespace, spec.name)].config,
            endpoints=EtcdConfig.parse(member.client_url).endpoints,
            request_timeout=60.0,
        )
        try:
            async with EtcdClient(config) as direct:
                await direct.defragment()
        except EtcdError as exc:
            message = f"{names.get(member.peer_url)}: {exc}"
            if self._warned.get((spec.namespace, spec.name)) != message:
                self._warned[(spec.namespace, spec.name)] = message
                kopf.warn(body, reason="DefragmentationFailed", message=message)
            return
        run.defragmented = names.get(member.peer_url, "")
        kopf.info(body, reason="Defragmented", message=f"defragmented {run.defragmented}")


def _restarts(pod: Obj) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses if s.get("name") == "etcd")


def _member_events(previous: Obj, members: list[Obj], pod_uids: dict[str, str]) -> list[tuple[str, str, str]]:
    """(type, reason, message) of what happened to members since the last pass, in the pod each was last
    healthy in: its process exited and was restarted by the kubelet, it stopped answering, it answers
    again. A new member, or one whose pod was replaced (deleted, upgraded), is left to the other Events.
    """
    before = {m.get("name"): m for m in previous.get("members") or []}
    events = []
    for member in members:
        name, was = member["name"], before.get(member["name"]) or {}
        if not was.get("podUID") or was["podUID"] != pod_uids.get(name):
            continue
        restarts = member.get("restarts", 0)
        if restarts > was.get("restarts", 0):
            message = f"{name}: its etcd process exited and the kubelet restarted it"
            message += f" (restart count {restarts})"
            events.append(("Warning", "MemberProcessRestarted", message))
        if was.get("healthy") and not member["healthy"]:
            events.append(("Warning", "MemberUnhealthy", f"{name} does not answer"))
        elif not was.get("healthy") and member["healthy"]:
            events.append(("Normal", "MemberRecovered", f"{name} answers again"))
    return events


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _names(spec: ClusterSpec, view: ClusterView) -> dict[str, str]:
    """Peer URL -> member name, by the spec's naming (a just-added learner has no name in etcd yet)."""
    by_url = {spec.peer_url(i): spec.member(i) for i in range(max(SIZES))}
    return {m.peer_url: by_url.get(m.peer_url, m.name) for m in view.members}


def _condition(status: Obj, kind: str) -> Obj:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _conditions(previous: Obj, generation: int, *wanted: tuple[str, str, str, str]) -> list[Obj]:
    """Conditions (type, status, reason, message), keeping lastTransitionTime while status is unchanged."""
    result = []
    for kind, state, reason, message in wanted:
        before = _condition(previous, kind)
        since = before.get("lastTransitionTime") if before.get("status") == state else None
        result.append(
            {
                "type": kind,
                "status": state,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": since or _now(),
            }
        )
    return result


def _invalid_status(previous: Obj, message: str, generation: int) -> Obj:
    return {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": _conditions(
            previous,
            generation,
            ("Available", _condition(previous, "Available").get("status") or "False", "InvalidSpec", message),
            ("Progressing", "False", "InvalidSpec", message),
            ("Degraded", "True", "InvalidSpec", message),
        ),
    }


def _member_status(run: Pass, member: MemberState, name: str, pods: dict[str, str]) -> Obj:
    before: Obj = next((m for m in run.previous.get("members") or [] if m.get("name") == name), {})
    entry: Obj = {
        "name": name,
        "id": format(member.id, "x"),
        "peerURL": member.peer_url,
        "clientURL": member.client_url,
        "leader": member.leader,
        "learner": member.learner,
        "healthy": member.healthy,
    }
    # A lost member keeps the pod its data was in on record until it is replaced.
    pod = pods.get(name) if member.healthy and name not in run.lost else before.get("podUID")
    if pod:
        entry["podUID"] = pod
    if name in run.restarts:
        entry["restarts"] = run.restarts[name]
    since = _now() if run.defragmented == name else before.get("lastDefragmentation")
    if since:
        entry["lastDefragmentation"] = since
    return entry


def _status(run: Pass, generation: int) -> Obj:
    spec, view, previous = run.spec, run.view, run.previous
    status: Obj = {
        "clientURL": spec.client_url,
        "observedGeneration": generation,
        "version": run.version,
    }
    if view is None:
        created = _condition(previous, "Available").get("status") == "True" or previous.get("phase") not in (
            None,
            "Creating",
        )
        reason = "Unreachable" if created else "Creating"
        message = (
            "no member answers with a quorum"
            if created
            else "waiting for the members to start and elect a leader"
        )
        status.update(
            phase="Degraded" if created else "Creating",
            ready=f"0/{spec.replicas}",
            readyMembers=0,
            leader="",
            # What etcd said last, marked unhealthy: the record of each member's pod (data loss) and of
            # its defragmentation must survive a pass in which nobody answers.
            members=[{**m, "healthy": False, "leader": False} for m in previous.get("members") or []],
            conditions=_conditions(
                previous,
                generation,
                ("Available", "False", reason, message),
                ("Progressing", "True", reason, message),
                ("Degraded", "True" if created else "False", reason, message),
            ),
        )
        return status
    names = _names(spec, view)
    members = [_member_status(run, m, names.get(m.peer_url, m.name), run.pod_uids) for m in view.members]
    members.sort(key=lambda m: m["name"])
    ready = sum(1 for m in view.voters if m.healthy)
    step = run.step
    available = ready >= len(view.voters) // 2 + 1
    done = step is not None and step.action == "done" and not run.activity
    unhealthy = [m["name"] for m in members if not m["healthy"]]
    if run.problem:
        degraded = ("True", run.problem_reason, run.problem)
    elif step is not None and step.action == "refuse":
        degraded = ("True", "NoQuorum" if "quorum" in step.reason else "Refused", step.reason)
    elif unhealthy:
        degraded = ("True", "MembersUnhealthy", f"not healthy: {', '.join(unhealthy)}")
    else:
        degraded = ("False", "Healthy", "every member is healthy")
    if done:
        progressing = ("False", "Settled", f"{len(view.voters)} voting members as wanted")
        phase = "Degraded" if degraded[0] == "True" else "Running"
    else:
        action = step.action if step is not None else "wait"
        what = step.reason if step is not None else ""
        reason = run.activity or {
            "add-learner": "AddingMember",
            "promote": "PromotingMember",
            "remove": "RemovingMember",
            "move-leader": "MovingLeader",
        }.get(action, "Waiting")
        progressing = ("True", reason, f"{action} {step.member if step else ''}: {what}".strip())
        phase = run.activity or ("Degraded" if degraded[0] == "True" and not available else "Scaling")
    leader = next((m["name"] for m in members if m["leader"]), "")
    status.update(
        phase=phase,
        ready=f"{ready}/{spec.replicas}",
        readyMembers=ready,
        leader=leader,
        members=members,
        conditions=_conditions(
            previous,
            generation,
            (
                "Available",
                "True" if available else "False",
                "Quorum" if available else "NoQuorum",
                f"{ready} of {len(view.voters)} voting members healthy",
            ),
            ("Progressing", *progressing),
            ("Degraded", *degraded),
        ),
    )
    return status
