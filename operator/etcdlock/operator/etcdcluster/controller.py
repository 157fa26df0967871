"""The EtcdCluster controller: every few seconds, one reconcile pass per cluster.

A pass makes sure the children exist (:mod:`.rendering`), asks etcd itself how the members are
(:func:`.membership.observe`), takes at most one membership step (:func:`.membership.next_step`), keeps
the StatefulSet in step with the membership, and returns the status it saw (:mod:`.status`). Between
membership changes it does the slow work one member at a time, only while every member is healthy:
restarting a member whose pod runs an older template (an upgrade, a changed resource request), and
defragmenting a member whose last defragmentation is older than the spec's interval. Every membership
change and every refusal is an Event on the EtcdCluster, and so is what happened to a member's process
since the last pass (restarted by the kubelet, stopped answering, answering again).

A member's data is gone when its pod was replaced while its data lived in an emptyDir (the pod is not the
one it was last healthy in, and it is not healthy): such a member is removed and added again, and its pod
is recreated to start empty, as a new member.

It runs without kopf: Kubernetes through :class:`~etcdlock.operator.kube.Kube` (:mod:`.objects`),
Events through an :class:`~etcdlock.operator.events.EventRecorder`, both passed in. A call the API does
not take ends the pass with the adapter's error: :class:`~etcdlock.operator.kube.ApiUnavailable`, or
:class:`~etcdlock.operator.kube.Conflict` for a child created since the pass read it (:mod:`.objects`
says how each write meets a conflict). The next pass starts again from what is there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from etcdlock import clock
from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError
from etcdlock.operator.conditions import find
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster.membership import (
    ClusterView,
    MemberClients,
    Step,
    apply,
    next_step,
    observe,
    quorum,
)
from etcdlock.operator.etcdcluster.objects import KubeObjects
from etcdlock.operator.etcdcluster.rendering import TEMPLATE_HASH, children, digest, statefulset
from etcdlock.operator.etcdcluster.spec import ClusterSpec, upgrade_allowed
from etcdlock.operator.etcdcluster.status import Pass, invalid, member_events, status
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import ApiUnavailable, Conflict, Kube
from etcdlock.operator.stores import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

RENDERED = "etcdlock.io/rendered-template"
RECONCILE_PERIOD = 2.0
OBSERVE_TIMEOUT = 8.0


class Clusters:
    """Reconciles EtcdClusters; keeps one etcd client per cluster, and one per member for status requests
    (closed by :meth:`forget`).

    ``leadership`` is the operator's own etcd and fence: a pass changes nothing unless this replica still
    leads when it is about to (two replicas restarting members at once could cost a quorum).
    """

    def __init__(self, kube: Kube, leadership: Store, events: EventRecorder) -> None:
        self._objects = KubeObjects(kube)
        self._leadership = leadership
        self._events = events
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

    async def reconcile_changes(self, body: Mapping[str, Any]) -> Obj:
        """One pass; the status fields it changed (none if the API failed: the next pass starts over)."""
        try:
            status = await self.reconcile(body)
        except (ApiUnavailable, Conflict) as exc:
            log.warning("EtcdCluster %s: %s; next pass", body["metadata"]["name"], exc)
            return {}
        current = dict(body.get("status") or {})
        return {key: value for key, value in status.items() if current.get(key) != value}

    async def reconcile(self, body: Mapping[str, Any]) -> Obj:
        """One pass over the cluster ``body`` (the EtcdCluster object); returns its new status. Raises
        :class:`~etcdlock.operator.kube.ApiUnavailable` or :class:`Conflict` when the pass cannot go on
        (see the module docstring); the next pass starts over."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        try:
            spec = ClusterSpec.parse(namespace, name, dict(body.get("spec") or {}))
        except InvalidSpec as exc:
            if not _told(previous, str(exc)):
                self._events.warn(body, "InvalidSpec", str(exc))
            return invalid(previous, str(exc), generation)
        run = Pass(spec, previous, generation, version=previous.get("version") or spec.version)
        run.created = str(meta.get("creationTimestamp") or "")
        found = await self._ensure_children(body, spec)
        sts = found["StatefulSet"]
        pods = {p["metadata"]["name"]: p for p in await self._objects.pods(spec.namespace, spec.labels)}
        run.pod_uids = {name: pod["metadata"]["uid"] for name, pod in pods.items()}
        run.restarts = {name: _restarts(pod) for name, pod in pods.items()}
        run.view = await self._observe(spec, pods)
        await self._keep_budget(spec, found["PodDisruptionBudget"], run)
        if run.view is None:
            return status(run)
        await self._converge(body, run, sts, pods)
        new = status(run)
        for kind, reason, message in member_events(previous, new["members"], run.pod_uids):
            record = self._events.warn if kind == "Warning" else self._events.info
            record(body, reason, message)
        return new

    async def _ensure_children(self, body: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Obj]:
        """Create what is missing. Returns the children by kind."""
        owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}
        found: dict[str, Obj] = {}
        for child in children(spec, owner):
            kind, child_name = child["kind"], child["metadata"]["name"]
            current = await self._objects.read(kind, spec.namespace, child_name)
            if current is None:
                current = await self._objects.create(child)
                self._events.info(body, "Created", f"created {kind} {child_name}")
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

    async def _converge(self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj]) -> None:
        spec, view = run.spec, run.view
        assert view is not None
        if not await self._leadership.confirmed():
            log.info(
                "etcd cluster %s/%s: not changed, this replica no longer leads", spec.namespace, spec.name
            )
            return
        lost = self._lost(run, view, pods)
        run.lost = lost
        names = spec.names(view)
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
        if step.action in ("refuse", "wait"):
            if step.action == "refuse" and not _told(run.previous, step.reason):
                self._events.warn(body, "MembershipRefused", step.reason)
            return
        if step.action == "done":
            await self._settle(body, run, sts, pods)
            return
        try:
            taken = await apply(self._clients[(spec.namespace, spec.name)], view, step)
        except EtcdError as exc:
            run.problem, run.problem_reason = f"{step.action} {step.member} failed: {exc}", "ChangeFailed"
            if not _told(run.previous, run.problem):
                self._events.warn(body, "MembershipChangeFailed", run.problem)
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
        names = run.spec.names(view)
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

    def _effective_spec(self, body: Mapping[str, Any], run: Pass, sts: Obj) -> ClusterSpec:
        """The spec to render: a version change only if etcd's upgrade path allows it. Refused, the
        members keep the image they run now (the StatefulSet's), even part-way through an earlier upgrade."""
        spec = run.spec
        current = run.version
        if spec.version == current or upgrade_allowed(current, spec.version):
            return spec
        message = f"cannot go from etcd {current} to {spec.version}: one minor version at a time, never down"
        if not _told(run.previous, message):
            self._events.warn(body, "UpgradeRefused", message)
        run.problem, run.problem_reason = message, "Refused"
        containers = ((sts["spec"].get("template") or {}).get("spec") or {}).get("containers") or [{}]
        return replace(spec, version=current, image=containers[0].get("image") or spec.image)

    async def _keep_template(self, spec: ClusterSpec, sts: Obj, membership: dict[str, str]) -> None:
        """The StatefulSet's template says what a pod created now must run (joining this membership).

        What was rendered is remembered in an annotation: the API server adds defaults to the template,
        so comparing templates would find a difference every time.
        """
        wanted = statefulset(spec, members=membership)["spec"]["template"]
        rendered = digest(wanted)
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
        self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj], step: Step, lost: set[str]
    ) -> None:
        spec = run.spec
        ordinal = spec.ordinal(step.member)
        if step.action == "add-learner":
            self._events.info(body, "MemberAdded", f"added {step.member} as a learner ({step.reason})")
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
                self._events.info(body, "MemberReplaced", f"{step.member} starts again with empty data")
        elif step.action == "promote":
            self._events.info(body, "MemberPromoted", f"{step.member} is a voting member")
        elif step.action == "move-leader":
            self._events.info(body, "LeaderMoved", f"leadership moved to {step.member} ({step.reason})")
        elif step.action == "remove":
            self._events.info(body, "MemberRemoved", f"removed {step.member or '?'} ({step.reason})")
            if step.member in lost:
                return
            if ordinal is not None and ordinal >= spec.replicas:
                await self._scale(spec, sts, ordinal)
                if spec.storage_size is not None:
                    await self._objects.delete_claim(spec.namespace, f"data-{step.member}")

    async def _settle(self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj]) -> None:
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
            names = spec.names(view)
            leader = next((names.get(m.peer_url) for m in view.members if m.leader), None)
            stale.sort(key=lambda p: (p["metadata"]["name"] == leader, p["metadata"]["name"]))
            pod = stale[0]
            message = f"restarting {pod['metadata']['name']} with the new template"
            self._events.info(body, "MemberRestarted", message)
            await self._objects.delete_pod(spec.namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
            return
        run.version = spec.version if not run.problem else run.version
        await self._defragment_one(body, run)

    async def _defragment_one(self, body: Mapping[str, Any], run: Pass) -> None:
        spec, view = run.spec, run.view
        assert view is not None
        if spec.defragment_interval <= 0:
            return
        names = spec.names(view)
        last = {m.get("name"): m.get("lastDefragmentation") for m in run.previous.get("members") or []}
        created = run.created
        due = [
            m
            for m in view.members
            if clock.age(last.get(names.get(m.peer_url)) or created) >= spec.defragment_interval
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
                self._events.warn(body, "DefragmentationFailed", message)
            return
        run.defragmented = names.get(member.peer_url, "")
        self._events.info(body, "Defragmented", f"defragmented {run.defragmented}")


def _restarts(pod: Obj) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses if s.get("name") == "etcd")


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _told(previous: Obj, message: str) -> bool:
    """Whether the last status already says ``message`` (its Event was recorded then)."""
    return bool(find(previous, "Degraded").get("message") == message)
