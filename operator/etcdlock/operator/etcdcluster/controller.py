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
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from etcdlock import clock
from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError
from etcdlock.operator.conditions import carried_over, find
from etcdlock.operator.config import DEFAULT_IMAGE
from etcdlock.operator.credentials import ClientCredentials, TlsFiles
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster.backup import restoring
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.restoring import RESTORING
from etcdlock.operator.etcdcluster.backup.service import ClusterBackups
from etcdlock.operator.etcdcluster.backup.settings import RestoreSpec, StoreSpec
from etcdlock.operator.etcdcluster.issuer import TlsIssuer, TlsState
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
from etcdlock.operator.etcdcluster.rendering import (
    TEMPLATE_HASH,
    RestoreSource,
    children,
    digest,
    statefulset,
)
from etcdlock.operator.etcdcluster.spec import SIZES, ClusterSpec, upgrade_allowed
from etcdlock.operator.etcdcluster.status import (
    Pass,
    failed,
    has_quorum,
    invalid,
    member_events,
    status,
)
from etcdlock.operator.etcdcluster.telemetry import ClusterTelemetry
from etcdlock.operator.etcdcluster.tls import OWN_CA, IssuerRef, TlsSpec
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import ApiUnavailable, Conflict, Kube
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.names import client_secret, member_secret
from etcdlock.operator.stores import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

RENDERED = "etcdlock.io/rendered-template"
APPROVE_REBUILD = "etcdlock.io/approve-rebuild"
RECONCILE_PERIOD = 2.0
OBSERVE_TIMEOUT = 8.0


class Clusters:
    """Reconciles EtcdClusters; keeps one etcd client per cluster, and one per member for status requests
    (closed by :meth:`forget`).

    ``leadership`` is the operator's own etcd and fence: a pass changes nothing unless this replica still
    leads when it is about to (two replicas restarting members at once could cost a quorum).
    """

    def __init__(
        self,
        kube: Kube,
        leadership: Store,
        events: EventRecorder,
        image: str = DEFAULT_IMAGE,
        metrics: Metrics | None = None,
        retire: Callable[[str, str], None] | None = None,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self._kube = kube
        self._objects = KubeObjects(kube)
        self._leadership = leadership
        self._events = events
        self._image = image
        self._backups = ClusterBackups(kube, events, metrics)
        self._issuer = TlsIssuer(kube, events)
        self._own_credentials = credentials is None
        self._credentials = credentials or ClientCredentials()
        self._tls: dict[tuple[str, str], TlsFiles] = {}  # the client certificate of each cluster with TLS
        self._renewed: set[tuple[str, str]] = set()  # clusters whose lock store waits to be retired
        # Told when a cluster is rebuilt: the locks kept in it must leave the old cluster's client.
        self._retire = retire or (lambda namespace, name: None)
        self._corrupt: set[str] = set()  # snapshots a restore found corrupt, not downloaded again
        self._warned: dict[tuple[str, str], str] = {}  # the last defragmentation failure told, per cluster
        self._clients: dict[tuple[str, str], EtcdClient] = {}
        self._members: dict[tuple[str, str], MemberClients] = {}
        self._telemetry = ClusterTelemetry(metrics)

    async def close(self) -> None:
        await self._backups.close()
        self._telemetry.close()
        for namespace, name in list(self._clients) + list(self._members):
            await self.forget(namespace, name)
        if self._own_credentials:
            self._credentials.close()

    async def forget(self, namespace: str, name: str) -> None:
        await self._backups.forget((namespace, name))
        self._issuer.forget(namespace, name)
        self._tls.pop((namespace, name), None)
        self._renewed.discard((namespace, name))
        self._credentials.forget(namespace, name)
        self._telemetry.forget(namespace, name)
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
            self._telemetry.unobserved(namespace, name)
            return invalid(previous, str(exc), generation)
        run = Pass(spec, previous, generation, version=previous.get("version") or spec.version)
        run.created = str(meta.get("creationTimestamp") or "")
        run.restore = previous.get("restore")
        if spec.restore is not None and run.restore is None and not previous.get("members"):
            sts_there = await self._objects.read("StatefulSet", namespace, name)
            if sts_there is None:
                # A new etcd cluster (its own token, so its own cluster ID and backups), never one on the
                # data an earlier cluster of this name left in its claims.
                token = f"{spec.cluster_token}-{str(meta.get('uid') or '')[:8]}"
                try:
                    await self._no_claims_left(spec)
                    run.restore = await self._plan_restore(spec, spec.restore, "Requested", token)
                except BackupError as exc:
                    self._telemetry.unobserved(namespace, name)
                    return self._restore_failed(body, run, exc)
                self._events.info(body, "RestoreStarted", _restoring(run.restore))
                self._telemetry.unobserved(namespace, name)
                # The plan is in the status before any member exists: a pass that finds the StatefulSet
                # finds the plan it was made from.
                return status(run)
        if run.restore is not None:
            spec = run.spec = replace(spec, token=str(run.restore.get("token") or spec.cluster_token))
        spec = self._kept_tls(body, run)
        tls = await self._keep_tls(body, run)
        if tls is not None and not tls.ready:
            if not previous.get("members"):
                # Nothing is created before the certificates are there: a member would fail to start.
                run.waiting = tls.waiting
                self._telemetry.unobserved(namespace, name)
                return status(run)
            # A running cluster whose certificates cannot be read now is only observed: a template
            # rendered without them would restart every member into a pod that cannot start.
            run.problem, run.problem_reason = tls.waiting, "CertificatesNotReady"
        ca_digest = run.ca_digest = tls.ca_digest if tls is not None else ""
        found = await self._ensure_children(body, spec, self._restore_source(spec, run.restore), ca_digest)
        sts = found["StatefulSet"]
        pods = {p["metadata"]["name"]: p for p in await self._objects.pods(spec.namespace, spec.labels)}
        if run.ca_changed:
            await self._restart_for_new_ca(body, run, sts, pods)
            return self._with_backups(run, status(run))
        run.pod_uids = {name: pod["metadata"]["uid"] for name, pod in pods.items()}
        run.restarts = {name: _restarts(pod) for name, pod in pods.items()}
        if spec.storage_size is not None:
            run.claim_uids = await self._claim_uids(spec)
        if (tls is None or tls.ready) and await self._quorum_lost(body, run, sts, pods):
            # A survivor's data is not a backup: it may lack what the lost majority acknowledged.
            await self._backups.stop((namespace, name))
            return self._with_backups(run, status(run))
        if (run.restore or {}).get("phase") == RESTORING:
            # No backup of a cluster half restored (nor of the old one's remains, during a rebuild): the
            # first full snapshot follows the restore.
            await self._backups.stop((namespace, name))
        run.view = await self._observe(spec, pods)
        self._retire_renewed(run)
        await self._keep_budget(spec, found["PodDisruptionBudget"], run)
        if run.view is None:
            return self._with_backups(run, status(run))
        if (run.restore or {}).get("phase") == RESTORING and has_quorum(run.view):
            await self._finish_restore(body, run)
        if (run.restore or {}).get("phase") != RESTORING and (tls is None or tls.ready):
            await self._converge(body, run, sts, pods)
            await self._keep_backups(body, run)
        new = self._with_backups(run, status(run))
        for kind, reason, message in member_events(previous, new["members"], run.pod_uids):
            record = self._events.warn if kind == "Warning" else self._events.info
            record(body, reason, message)
        return new

    async def _ensure_children(
        self, body: Mapping[str, Any], spec: ClusterSpec, restore: RestoreSource | None, ca_digest: str
    ) -> dict[str, Obj]:
        """Create what is missing. Returns the children by kind."""
        owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}
        found: dict[str, Obj] = {}
        for child in children(spec, owner, restore, ca_digest):
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

    def _kept_tls(self, body: Mapping[str, Any], run: Pass) -> ClusterSpec:
        """The spec with ``spec.tls`` as the cluster was created with it: once its members exist, TLS cannot
        be turned on or off (every peer URL would change) nor its issuer changed (a new CA would cut the
        members off from each other). A change is refused: the status and an Event say so; the duration
        may change. The members exist once the status records TLS (``status.tls``, written by the pass
        that creates them) or a plain client URL (a cluster without TLS, which never waits to create)."""
        spec, previous = run.spec, run.previous
        recorded = previous.get("tls") or {}
        created = bool(recorded) or str(previous.get("clientURL") or "").startswith("http://")
        if not created and not previous.get("members"):
            return spec
        was = recorded_tls(recorded, spec.tls)
        if was == spec.tls:
            return spec
        shown, wanted = (t.describe() if t is not None else "no TLS" for t in (was, spec.tls))
        message = (
            f"spec.tls cannot change once the cluster runs (it has {shown}, the spec asks for {wanted}): "
            "restore a backup into a new EtcdCluster to change it"
        )
        if not _told(previous, message):
            self._events.warn(body, "TLSChangeRefused", message)
        run.problem, run.problem_reason = message, "Refused"
        run.spec = replace(spec, tls=was)
        return run.spec

    async def _keep_tls(self, body: Mapping[str, Any], run: Pass) -> TlsState | None:
        """The cluster's certificates issued or renewed (:mod:`.issuer`), and the operator's client files
        for them. A renewed client certificate retires the cluster's lock store once the cluster answers
        (see :meth:`_retire_renewed`); the old certificate is valid a third of its lifetime more."""
        spec = run.spec
        key = (spec.namespace, spec.name)
        if spec.tls is None:
            self._tls.pop(key, None)
            return None
        state = await self._issuer.ensure(body, spec.tls)
        if state.problem and not run.problem:
            run.problem, run.problem_reason = state.problem, "CertificatesNotRenewable"
        if not state.ready:
            return state
        files = self._credentials.files(spec.namespace, spec.name, state.client)
        known = self._tls.get(key)
        if known is not None and known != files:
            log.info("etcd cluster %s/%s: client certificate renewed", spec.namespace, spec.name)
            self._renewed.add(key)
        self._tls[key] = files
        trusted = str((run.previous.get("tls") or {}).get("caDigest") or "")
        recorded = state.ca_digest
        if trusted and trusted != state.ca_digest and run.previous.get("members"):
            if spec.storage_size is not None:
                run.ca_changed = trusted
            else:
                # Restarting a member means a new pod, and with emptyDir a member without its data: all
                # at once would lose the cluster. The status keeps saying so until the CA is back.
                recorded = trusted
                run.problem, run.problem_reason = (
                    "the members' certificates now come from another CA, which the members do not trust "
                    "(etcd reads its CA only at start), and their data is in emptyDir volumes, so they "
                    "cannot all restart without losing it: give the issuer back its CA, or restore a backup "
                    "into a new EtcdCluster",
                    "CertificateAuthorityChanged",
                )
        run.tls = {
            "issuer": spec.tls.describe(),
            **({"issuerRef": spec.tls.issuer.as_ref()} if spec.tls.issuer is not None else {}),
            "durationSeconds": int(spec.tls.duration),
            "caDigest": recorded,
            "memberSecret": member_secret(spec.name),
            "clientSecret": client_secret(spec.name),
            "notAfter": state.not_after,
        }
        return state

    def _retire_renewed(self, run: Pass) -> None:
        """The lock store of a cluster whose client certificate was renewed is retired once the cluster
        answers with a quorum (its holds then reconnect with the new certificate at once): retired while it
        does not, they could not reconnect, and their leases would expire."""
        key = (run.spec.namespace, run.spec.name)
        if key in self._renewed and run.view is not None and has_quorum(run.view):
            self._renewed.discard(key)
            self._retire(*key)

    async def _restart_for_new_ca(
        self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj]
    ) -> None:
        """The CA the members' certificates come from changed (cert-manager's issuer has another CA; the
        cluster's own CA was started over): etcd reads the CA it trusts only at start, while it takes the
        renewed certificates at once, so a member that trusts only the old CA refuses its peers' and the
        operator's new certificates. Every member restarts together (a brief outage, not a lasting one),
        from a template that names the new CA; only members on claims, which keep their data across a new
        pod (see :meth:`_keep_tls`)."""
        spec = run.spec
        membership = {
            str(m.get("name")): str(m.get("peerURL"))
            for m in run.previous.get("members") or []
            if m.get("peerURL")
        }
        await self._keep_template(spec, sts, membership, run.ca_digest)
        for name, pod in sorted(pods.items()):
            await self._objects.delete_pod(spec.namespace, name, pod["metadata"]["uid"])
        message = (
            f"the members' CA changed (digest {run.ca_changed} to {run.ca_digest}): every member restarts "
            "at once to trust it (one trusting only the old CA refuses the new certificates)"
        )
        self._events.warn(body, "CertificateAuthorityChanged", message)

    def _config(self, spec: ClusterSpec, endpoints: str | list[str], request_timeout: float) -> EtcdConfig:
        """A client config for the cluster's members: with the operator's client certificate under TLS."""
        files = self._tls.get((spec.namespace, spec.name))
        if spec.tls is None or files is None:
            return EtcdConfig.parse(endpoints, request_timeout=request_timeout)
        return files.config(endpoints, request_timeout)

    async def _client(self, spec: ClusterSpec, members: list[int]) -> EtcdClient:
        """A client for these members (by ordinal)."""
        endpoints = [spec.client_url_of(i) for i in members]
        config = self._config(spec, endpoints, 3.0)
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
        await self._keep_template(effective, sts, membership, run.ca_digest)
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
        """Members whose data is gone (see :func:`data_lost`) that etcd still lists under the ID they were
        recorded with (not a member added since under that name).

        Healthy or not: a member that comes back under its old ID with empty data may have forgotten
        entries it acknowledged, so etcd's rule (remove it, add it again) applies either way.
        """
        names = run.spec.names(view)
        recorded = {m.get("name"): m for m in run.previous.get("members") or []}
        gone = data_lost(run, pods)
        return {
            name
            for member in view.members
            if (name := names.get(member.peer_url, "")) in gone
            and (recorded.get(name) or {}).get("id") == format(member.id, "x")
        }

    async def _claim_uids(self, spec: ClusterSpec) -> dict[str, str]:
        """The UID of each member's claim, by member name (one list per pass)."""
        claims = await self._objects.claims(spec.namespace, spec.labels)
        return {
            name[len("data-") :]: claim["metadata"]["uid"]
            for name, claim in claims.items()
            if name.startswith("data-")
        }

    async def _quorum_lost(self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj]) -> bool:
        """Whether a quorum of the voting members lost their data (not merely stopped: see
        :func:`data_lost`); then nothing else is done. The cluster is rebuilt from the latest backup if
        the spec says so or the rebuild was approved; otherwise the status says how to approve it."""
        spec = run.spec
        if (run.restore or {}).get("phase") == RESTORING:
            return False
        voters = {str(m.get("name")) for m in run.previous.get("members") or [] if not m.get("learner")}
        lost = data_lost(run, pods) & voters
        if not voters or len(lost) < quorum(len(voters)):
            return False
        rebuild = int(run.previous.get("rebuilds") or 0) + 1
        approval = f"rebuild-{rebuild}"
        annotations = body["metadata"].get("annotations") or {}
        approved = spec.automatic_recovery or annotations.get(APPROVE_REBUILD) == approval
        store = _recovery_store(spec)
        message = (
            f"the data of {', '.join(sorted(lost))} is gone: {len(lost)} of {len(voters)} voting members, "
            "a quorum, so the cluster cannot recover by itself"
        )
        if store is None:
            message += "; no backup is configured to rebuild it from (spec.backup)"
        elif not approved:
            message += (
                f". To rebuild it from the latest backup in {store.url} (writes after that backup are lost), "
                f"run: kubectl annotate etcdcluster -n {spec.namespace} {spec.name} "
                f"{APPROVE_REBUILD}={approval} --overwrite"
            )
        run.quorum_lost = message
        if store is None or not approved:
            if find(run.previous, "QuorumLost").get("message") != message:
                self._events.warn(body, "QuorumLost", message)
            return True
        try:
            token = f"{spec.namespace}-{spec.name}-{approval}"
            own = _backed_up_cluster(run.previous)
            record = await self._plan_restore(spec, RestoreSpec(store), "QuorumLost", token, own)
        except BackupError as exc:
            run.quorum_lost = f"{message}; the rebuild cannot start: {exc}"
            if find(run.previous, "QuorumLost").get("message") != run.quorum_lost:
                self._events.warn(body, "RebuildFailed", run.quorum_lost)
            return True
        await self._rebuild(body, run, sts, pods, {**record, "rebuild": rebuild})
        return True

    async def _rebuild(
        self, body: Mapping[str, Any], run: Pass, sts: Obj, pods: dict[str, Obj], record: Obj
    ) -> None:
        """Every member starts again from the backup ``record`` names: the StatefulSet bootstraps a new
        cluster (a new token), and every pod and claim of the old one goes."""
        spec = run.spec = replace(run.spec, token=record["token"])
        await self._backups.stop((spec.namespace, spec.name))
        self._retire(spec.namespace, spec.name)
        wanted = statefulset(spec, restore=self._restore_source(spec, record), ca_digest=run.ca_digest)
        patch = [
            {"op": "replace", "path": "/spec/template", "value": wanted["spec"]["template"]},
            {"op": "replace", "path": "/spec/replicas", "value": spec.replicas},
        ]
        await self._objects.patch("StatefulSet", spec.namespace, spec.name, patch)
        for name, pod in sorted(pods.items()):
            await self._objects.delete_pod(spec.namespace, name, pod["metadata"]["uid"])
        if spec.storage_size is not None:
            # Every claim the old cluster may have left, its pod running or not: none may start a member
            # on the old cluster's data.
            recorded = {str(m.get("name")) for m in run.previous.get("members") or []}
            for name in sorted(recorded | {spec.member(i) for i in range(max(SIZES))}):
                await self._objects.delete_claim(spec.namespace, f"data-{name}")
        run.restore, run.rebuilt = record, int(record["rebuild"])
        self._events.warn(body, "RebuildStarted", f"{run.quorum_lost}; {_restoring(record)}")

    async def _plan_restore(
        self,
        spec: ClusterSpec,
        restore: RestoreSpec,
        reason: str,
        token: str,
        cluster: str | None = None,
    ) -> Obj:
        return await restoring.prepare(
            self._kube, spec.namespace, restore, token, reason, cluster, self._corrupt
        )

    async def _no_claims_left(self, spec: ClusterSpec) -> None:
        """A restore starts no member on claims an earlier cluster of this name left (deleting an
        EtcdCluster keeps them): they would start on that data, not the backup."""
        if spec.storage_size is None:
            return
        left = sorted(await self._objects.claims(spec.namespace, spec.labels))
        if left:
            raise BackupError(
                "ClaimsLeft",
                f"claims {', '.join(left)} hold an earlier cluster's data; delete them to restore into "
                f"this name: kubectl delete pvc -n {spec.namespace} {' '.join(left)}",
            )

    def _restore_source(self, spec: ClusterSpec, record: Obj | None) -> RestoreSource | None:
        """What the members restore while the restore is under way (then nothing: a pod created later
        joins the running cluster)."""
        if record is None or record.get("phase") != RESTORING:
            return None
        store = _store_of(spec, record)
        return RestoreSource(self._image, store, str(record["snapshot"]), str(record["sha256"]))

    async def _finish_restore(self, body: Mapping[str, Any], run: Pass) -> None:
        """The members answer: replay the deltas (see :mod:`.backup.restoring`)."""
        spec, record = run.spec, run.restore or {}
        restore = _recorded(spec, record)
        try:
            client = self._clients[(spec.namespace, spec.name)]
            run.restore = await restoring.finish(self._kube, spec.namespace, restore, record, client)
        except (BackupError, EtcdError) as exc:
            run.problem, run.problem_reason = f"restore: {exc}", "RestoreFailed"
            if not _told(run.previous, run.problem):
                self._events.warn(body, "RestoreFailed", run.problem)
            return
        done = run.restore
        message = (
            f"restored {done['snapshot']} and {done['events']} events after it: revision {done['revision']} "
            f"of the backup, {done['keys']} keys"
        )
        if "gapAfter" in done:
            message += f" (the deltas stop continuing after revision {done['gapAfter']})"
        self._events.info(body, "Restored", message)

    def _restore_failed(self, body: Mapping[str, Any], run: Pass, exc: BackupError) -> Obj:
        """A restore that cannot start: nothing is created (so nothing is overwritten) until it can."""
        message = f"cannot restore: {exc}"
        if not _told(run.previous, message):
            self._events.warn(body, "RestoreFailed", message)
        return failed(run.previous, "RestoreFailed", message, run.generation)

    async def _keep_backups(self, body: Mapping[str, Any], run: Pass) -> None:
        spec, view = run.spec, run.view
        assert view is not None
        voters = [m for m in view.members if not m.learner and m.client_url]
        # Snapshots from a follower where one is healthy: the leader has enough to do.
        healthy = [m.client_url for m in sorted(voters, key=lambda m: m.leader) if m.healthy]
        tls = self._tls.get((spec.namespace, spec.name)) if spec.tls is not None else None
        await self._backups.keep(body, spec.backup, healthy, [m.client_url for m in voters], tls)

    def _with_backups(self, run: Pass, new: Obj) -> Obj:
        """The status with what the backups and the restore say; the metrics say what the pass saw
        (every pass that reached the members ends here)."""
        self._telemetry.observed(run)
        key = (run.spec.namespace, run.spec.name)
        paused = ""
        if run.quorum_lost:
            paused = "backups wait: a quorum of the members lost its data"
        elif (run.restore or {}).get("phase") == RESTORING:
            paused = "backups wait until the restore is done (then a full snapshot starts them)"
        shown = self._backups.status(key, run.previous, run.generation, paused)
        if shown is not None:
            new["backup"] = shown[0]
            new["conditions"] = [*new["conditions"], *carried_over([shown[1]], run.previous)]
        return new

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

    async def _keep_template(
        self, spec: ClusterSpec, sts: Obj, membership: dict[str, str], ca_digest: str
    ) -> None:
        """The StatefulSet's template says what a pod created now must run (joining this membership).

        What was rendered is remembered in an annotation: the API server adds defaults to the template,
        so comparing templates would find a difference every time.
        """
        wanted = statefulset(spec, members=membership, ca_digest=ca_digest)["spec"]["template"]
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


def recorded_tls(recorded: Mapping[str, Any], spec: TlsSpec | None) -> TlsSpec | None:
    """The TLS a cluster's status records (None: none), with the duration the spec asks now (it may
    change)."""
    issuer = str(recorded.get("issuer") or "")
    if not issuer:
        return None
    duration = (
        spec.duration if spec is not None else float(recorded.get("durationSeconds") or TlsSpec().duration)
    )
    if issuer == OWN_CA:
        return TlsSpec(None, duration)
    ref = recorded.get("issuerRef") or {}
    kind, _, name = issuer.partition("/")
    return TlsSpec(
        IssuerRef(
            str(ref.get("name") or name),
            str(ref.get("kind") or kind),
            str(ref.get("group") or "cert-manager.io"),
        ),
        duration,
    )


def data_lost(run: Pass, pods: dict[str, Obj]) -> set[str]:
    """Recorded members whose data is known to be gone: with emptyDir, the pod their data was in was
    replaced; with claims, the claim their data was in was deleted or replaced. A member whose pod or
    claim is merely not running (stopped, evicted, its node down) is not lost: it can come back with its
    data."""
    lost = set()
    for was in run.previous.get("members") or []:
        name = str(was.get("name"))
        if run.spec.storage_size is None:
            pod = pods.get(name)
            if pod is not None and was.get("podUID") and pod["metadata"].get("uid") != was["podUID"]:
                lost.add(name)
        elif was.get("claimUID") and run.claim_uids.get(name) != was["claimUID"]:
            lost.add(name)
    return lost


def _recovery_store(spec: ClusterSpec) -> StoreSpec | None:
    """Where a rebuild finds the latest backup: the cluster's own backups, else the one it came from."""
    if spec.backup is not None:
        return spec.backup.store
    return spec.restore.store if spec.restore is not None else None


def _store_of(spec: ClusterSpec, record: Obj) -> StoreSpec:
    """The store a restore record names, with the endpoint and Secret the spec gives it."""
    for store in (s for s in (spec.restore and spec.restore.store, spec.backup and spec.backup.store) if s):
        if store.url == record.get("store"):
            return store
    return StoreSpec(url=str(record.get("store")))


def _recorded(spec: ClusterSpec, record: Obj) -> RestoreSpec:
    """The restore as it was planned (the spec may have changed since: it is read at creation only)."""
    moment = record.get("toTime")
    return RestoreSpec(
        _store_of(spec, record),
        revision=record.get("toRevision"),
        time=datetime.fromisoformat(moment) if moment else None,
    )


def _backed_up_cluster(previous: Obj) -> str | None:
    """The etcd cluster ID the cluster's own backups are under (its last full snapshot's object)."""
    shown = str(((previous.get("backup") or {}).get("lastFull") or {}).get("object") or "")
    return shown.split("/", 1)[0] or None


def _restoring(record: Obj) -> str:
    told = (
        f"every member restores {record['store']}/{record['snapshot']} (revision "
        f"{record['snapshotRevision']}), then the deltas after it are replayed"
    )
    if record.get("skipped"):
        told += f"; passed over, their checksums do not match: {', '.join(record['skipped'])}"
    return told


def _restarts(pod: Obj) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses if s.get("name") == "etcd")


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _told(previous: Obj, message: str) -> bool:
    """Whether the last status already says ``message`` (its Event was recorded then)."""
    return bool(find(previous, "Degraded").get("message") == message)
