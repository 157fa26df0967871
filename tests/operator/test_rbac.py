"""The ClusterRole in manifests/ is sufficient and minimal for what the operator really does.

The operator runs as the Deployment runs it (a process resolving cluster names, whole cluster, leader
election, webhook) against a sandbox that records every resource request with its user agent (the
operator's kubernetes client and kopf).
Each of the operator's flows is exercised; then every recorded call must be allowed by a rule, and every
(group, resource, verb) a rule grants must have been used.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient
from operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    create_lock,
    delete_lock,
    events_of,
    eventually,
    webhooks_registered,
)
from test_etcdcluster import SLOW, Env, settled
from test_pods import create_pod, finish, held, note, read_pod

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.handlers import USER_AGENT
from etcdlock.operator.names import LEASE_ANNOTATION, ON_LOST_ANNOTATION, STATE_ANNOTATION
from etcdlock.operator.releaserequest import RELEASE_ANNOTATION, request_text
from etcdlock_sandbox.apiserver.server import AuditRecord
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, free_port
from etcdlock_sandbox.replicas import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
Triple = tuple[str, str, str]


@pytest.fixture(scope="module")
def audited() -> Iterator[SandboxThread]:
    with SandboxThread(audit=True) as sandbox:
        yield sandbox


def cluster_role_rules() -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "manifests" / "base" / "rbac.yaml").read_text())
    (role,) = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return list(role["rules"])


def granted(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def is_operator(record: AuditRecord) -> bool:
    return record.user_agent.startswith((USER_AGENT, "kopf/"))


def state(expected: str) -> Any:
    return lambda pod: note(pod, STATE_ANNOTATION) == expected


def exercise(api: ApiClient, namespace: str, loose: str, backups: Path, etcd: LocalEtcd) -> None:
    """Every flow of the operator once: status, events, gating, release, deletion, invalid and missing,
    eviction."""
    create_lock(api, namespace, "audited", {"ttlSeconds": 10})
    for name in ("one", "two", "three"):
        create_pod(api, namespace, name, "audited")
    eventually(lambda: read_pod(api, namespace, "one"), held, "one holding")
    finish(api, namespace, "one")
    eventually(lambda: read_pod(api, namespace, "two"), held, "two holding")
    exercise_admin_release(api, namespace)
    kubernetes.client.CoreV1Api(api).delete_namespaced_pod("three", namespace)
    create_lock(api, namespace, "elsewhere", {"clusterRef": {"name": "other"}})
    eventually(lambda: events_of(api, namespace, "elsewhere"), bool, "the ClusterNotReady event")
    # A lock on an etcd the user runs: its Secret is read by name (get), never listed or watched.
    outside = {"endpoints": ["http://127.0.0.1:9"], "secretRef": {"name": "absent"}}
    create_lock(api, namespace, "outside", {"etcd": outside})
    eventually(lambda: events_of(api, namespace, "outside"), bool, "the SecretNotFound event")
    create_pod(api, namespace, "orphan", "missing")
    eventually(
        lambda: read_pod(api, namespace, "orphan"),
        lambda p: note(p, STATE_ANNOTATION) == "LockNotFound",
        "waiting for its lock",
    )
    exercise_eviction(api, namespace, etcd)
    create_pod(api, loose, "ungated", "audited")
    eventually(
        lambda: read_pod(api, loose, "ungated"), lambda p: note(p, STATE_ANNOTATION) == "Error", "flag"
    )
    delete_lock(api, namespace, "audited")
    eventually(lambda: read_pod(api, namespace, "two"), state("Released"), "two released")
    exercise_clusters(Env(api, namespace), backups)
    exercise_tls(Env(api, namespace))


def exercise_admin_release(api: ApiClient, namespace: str) -> None:
    """An admin's release request (`kubectl etcdlock release`) of a key that is not there: answered in
    status and an Event, the annotation removed."""
    objects = kubernetes.client.CustomObjectsApi(api)
    request = request_text(f"/etcdlock/locks/{namespace}/audited/0", 1, "auditor", "", "")
    patch = {"metadata": {"annotations": {RELEASE_ANNOTATION: request}}}
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "audited", patch)
    eventually(
        lambda: objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "audited"),
        lambda lock: RELEASE_ANNOTATION not in (lock["metadata"].get("annotations") or {}),
        "the release request answered",
    )


def exercise_eviction(api: ApiClient, namespace: str, etcd: LocalEtcd) -> None:
    """A pod annotated etcdlock.io/on-lost: evict loses its hold (its key deleted): it is evicted."""
    create_lock(api, namespace, "evicting", {"ttlSeconds": 10})
    create_pod(api, namespace, "evictee", "evicting", **{ON_LOST_ANNOTATION: "evict"})
    pod = eventually(lambda: read_pod(api, namespace, "evictee"), held, "evictee holding")
    key = f"/etcdlock/locks/{namespace}/evicting/{note(pod, LEASE_ANNOTATION)}"
    assert etcd.etcdctl("del", key).stdout.strip() == "1"
    core = kubernetes.client.CoreV1Api(api)
    eventually(
        lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace).items],
        lambda names: "evictee" not in names,
        "evictee evicted",
    )


def exercise_tls(env: Env) -> None:
    """Certificates from the operator's own CA (the cluster of :func:`exercise_clusters` has TLS: its
    Secrets were created; they are issued again when the duration changes) and from a cert-manager issuer
    (the Certificates created, then brought to the new duration)."""
    env.patch("audited-etcd", {"tls": {"duration": "1000h"}})
    eventually(
        lambda: env.events("audited-etcd"),
        lambda seen: any(reason == "CertificateRenewed" for reason, _ in seen),
        "the certificates issued again",
        SLOW,
    )
    env.create("audited-cm", {"replicas": 1, "tls": {"issuerRef": {"name": "absent"}}})

    def durations() -> set[str]:
        listed = env.objects.list_namespaced_custom_object(
            "cert-manager.io", "v1", env.namespace, "certificates"
        )
        return {c["spec"]["duration"] for c in listed["items"]}

    eventually(durations, lambda found: found == {f"{2160 * 3600}s"}, "the Certificates", SLOW)
    env.patch("audited-cm", {"tls": {"issuerRef": {"name": "absent"}, "duration": "1000h"}})
    eventually(durations, lambda found: found == {f"{1000 * 3600}s"}, "the Certificates changed", SLOW)


def exercise_clusters(env: Env, backups: Path) -> None:
    """An EtcdCluster with TLS created and backed up (its store's Secret read), a lock on it, scaled out
    and in (claims read and dropped), a member restarted."""
    env.core.create_namespaced_secret(
        env.namespace, {"metadata": {"name": "store"}, "stringData": {"A": "b"}}
    )
    store = {"url": f"file://{backups}", "secretRef": {"name": "store"}}
    spec = {"replicas": 1, "storage": {"size": "1Gi"}, "tls": {}, "backup": {"store": store}}
    env.create("audited-etcd", spec)
    eventually(lambda: env.status("audited-etcd"), settled(1), "one healthy member", SLOW)
    eventually(
        lambda: [c for c in env.status("audited-etcd").get("conditions") or [] if c["type"] == "BackupReady"],
        lambda found: bool(found) and found[0]["status"] == "True",
        "backed up",
        SLOW,
    )
    create_lock(env.api, env.namespace, "on-etcd", {"clusterRef": {"name": "audited-etcd"}})
    create_pod(env.api, env.namespace, "remote", "on-etcd")
    eventually(lambda: read_pod(env.api, env.namespace, "remote"), held, "remote holding", SLOW)
    env.patch("audited-etcd", {"replicas": 3})
    eventually(lambda: env.status("audited-etcd"), settled(3), "three healthy members", SLOW)
    env.patch("audited-etcd", {"replicas": 1, "resources": {"requests": {"cpu": "50m"}}})
    eventually(
        lambda: env.events("audited-etcd"),
        lambda seen: any(reason == "MemberRestarted" for reason, _ in seen),
        "a member restarted for the new template",
        SLOW,
    )
    eventually(lambda: env.status("audited-etcd"), settled(1), "one healthy member again", SLOW)


def test_the_cluster_role_allows_every_call_of_the_operator_and_grants_nothing_unused(
    audited: SandboxThread, etcd: LocalEtcd, webhook_certs: Path, tmp_path: Path
) -> None:
    kubeconfig = audited.write_kubeconfig(tmp_path / "kubeconfig")
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    for name in ("distributedlock.yaml", "etcdcluster.yaml"):
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    namespace, loose = f"rbac-{uuid.uuid4().hex[:6]}", f"loose-{uuid.uuid4().hex[:6]}"
    core = kubernetes.client.CoreV1Api(api)
    for name in (namespace, loose):
        core.create_namespace({"metadata": {"name": name}})
    webhook = WebhookSettings("127.0.0.1", free_port(), webhook_certs)
    with webhooks_registered(api, webhook, namespace):
        running = OperatorProcess(
            etcd.endpoint_list,
            kubeconfig,
            webhook_certs,
            tmp_path / "operator.log",
            election=f"/etcdlock/test/{namespace}/leader",
            leader_ttl=5,
            configure_webhook=False,
            webhook_port=webhook.port,
            cluster_dns=audited.hosts,
            pod_sweep_interval=1,
        ).start()
        try:
            running.wait("ready", 30)
            exercise(api, namespace, loose, tmp_path / "backups", etcd)
        finally:
            running.stop()
    calls = [r for r in audited.audit if is_operator(r)]
    assert calls, "the operator's requests were recorded"
    used = {(r.group, r.resource, r.verb) for r in calls}
    rules = cluster_role_rules()
    allowed = granted(rules)
    refused = sorted(used - allowed)
    assert not refused, f"calls the ClusterRole does not allow: {refused}"
    unused = sorted(allowed - used)
    assert not unused, f"permissions the operator never used: {unused}"
