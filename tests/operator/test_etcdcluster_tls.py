"""EtcdCluster with TLS end to end in the sandbox: the operator (a real process, resolving names as a pod
does) issues a CA and the members' and client certificates, the members (real etcd processes) serve peers
and clients over TLS with client-certificate authentication from the Secret mounted as files, the
certificates are renewed while a lock is held (etcd reads the renewed files by itself: no member restarts),
the cluster is scaled, backed up to S3 and restored into another TLS cluster, and turning TLS off is
refused. Clients here run as a pod's would: in the sandbox's cluster DNS, with the client Secret's files.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
import trustme
from cryptography import x509
from kubernetes.client import ApiClient
from operator_support import Operated, create_lock, eventually, status_of
from test_backup_restore import CREDENTIALS, S3_SETTINGS, bucket, store  # noqa: F401 (fixture)
from test_etcdcluster import SLOW, Env, condition, settled
from test_pods import create_pod, held, read_pod

from etcdlock.operator.names import TOKEN_ANNOTATION
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.network import with_cluster_dns
from etcdlock_sandbox.s3 import S3Server

DURATION = 60  # seconds (the shortest spec.tls.duration): renewed after 40, within the module's life
PYTHON_ETCDLOCK = [sys.executable, "-m", "etcdlock"]


class TlsEnv(Env):
    def __init__(self, api: ApiClient, namespace: str, hosts: Path, folder: Path) -> None:
        super().__init__(api, namespace)
        self.hosts = hosts
        self.folder = folder

    def secret(self, name: str) -> dict[str, bytes]:
        found = self.core.read_namespaced_secret(name, self.namespace)
        return {key: base64.b64decode(value) for key, value in (found.data or {}).items()}

    def client_files(self, cluster: str) -> list[str]:
        """``--cacert``, ``--cert`` and ``--key`` for the cluster's client Secret, as a user mounts it."""
        folder = self.folder / cluster
        folder.mkdir(exist_ok=True)
        for key, value in self.secret(f"{cluster}-client-tls").items():
            (folder / key).write_bytes(value)
        return [
            f"--cacert={folder / 'ca.crt'}",
            f"--cert={folder / 'tls.crt'}",
            f"--key={folder / 'tls.key'}",
        ]

    def in_cluster(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``argv`` run as in a pod: cluster DNS names resolve."""
        return subprocess.run(
            with_cluster_dns(self.hosts, argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def etcdctl(self, cluster: str, *args: str, tls: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"https://{cluster}-client.{self.namespace}.svc:2379"
        files = self.client_files(cluster) if tls else [f"--cacert={self.folder / cluster / 'ca.crt'}"]
        return self.in_cluster(
            [etcd_binary("etcdctl"), f"--endpoints={endpoint}", "--dial-timeout=5s", *files, *args]
        )


@pytest.fixture(scope="module")
def env(operated: Operated, tmp_path_factory: pytest.TempPathFactory) -> TlsEnv:
    secret = {"metadata": {"name": CREDENTIALS}, "stringData": S3_SETTINGS}
    kubernetes.client.CoreV1Api(operated.api).create_namespaced_secret(operated.namespace, secret)
    return TlsEnv(operated.api, operated.namespace, operated.hosts, tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def secure(env: TlsEnv, s3_server: S3Server, bucket: str) -> str:  # noqa: F811
    backup = {"store": store(s3_server, bucket, "secure"), "fullInterval": "1h", "deltaInterval": "1s"}
    env.create("secure", {"replicas": 3, "tls": {"duration": f"{DURATION}s"}, "backup": backup})
    return "secure"


def served_certificate(env: TlsEnv, pod: str, port: int = 2379) -> bytes:
    """The certificate a member serves on ``port`` now (a new handshake), DER; presenting the client
    certificate, as the member demands."""
    folder = env.folder / "secure"
    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    context.check_hostname = False  # a pod's address, which the certificate does not name
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    address = env.pods("secure")[pod].status.pod_ip
    with socket.create_connection((address, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_a_tls_cluster_serves_peers_and_clients_over_tls_with_client_certificates(
    env: TlsEnv, secure: str
) -> None:
    status = eventually(lambda: env.status(secure), settled(3), "three healthy voters over TLS", SLOW)
    ns = env.namespace
    assert status["clientURL"] == f"https://secure-client.{ns}.svc:2379"
    assert all(m["peerURL"] == f"https://{m['name']}.secure.{ns}.svc:2380" for m in status["members"])
    assert status["tls"]["issuer"] == "etcdlock"
    assert status["tls"]["clientSecret"] == "secure-client-tls"
    member, client, ca = (
        env.secret("secure-member-tls"),
        env.secret("secure-client-tls"),
        env.secret("secure-ca"),
    )
    assert member["ca.crt"] == client["ca.crt"] == ca["ca.crt"]
    # The CA's key stays in its own Secret; the members' Secret has only their certificate and key.
    assert set(member) == {"ca.crt", "tls.crt", "tls.key"}
    # A client with the client certificate writes and reads through the client Service (once its name
    # resolves: the Service lists a member once its pod is ready).
    put = eventually(
        lambda: env.etcdctl(secure, "put", "/tls/greeting", "hello"),
        lambda done: done.returncode == 0,
        "a write through the client Service",
        SLOW,
    )
    assert put.stdout.strip() == "OK"
    got = env.etcdctl(secure, "get", "--print-value-only", "/tls/greeting")
    assert got.stdout.strip() == "hello", got.stderr
    # Without a client certificate the member refuses the handshake.
    refused = env.etcdctl(secure, "get", "/tls/greeting", tls=False)
    assert refused.returncode != 0
    # Plain HTTP gets nothing either.
    plain = env.in_cluster(
        [
            etcd_binary("etcdctl"),
            f"--endpoints=http://secure-client.{ns}.svc:2379",
            "--dial-timeout=3s",
            "get",
            "/tls/greeting",
        ]
    )
    assert plain.returncode != 0
    # The members' metrics port stays plain HTTP for probes and Prometheus.
    assert condition(status, "Ready")["status"] == "True"


def test_a_pod_takes_a_lock_in_the_tls_cluster_and_the_cli_queues_behind_it(env: TlsEnv, secure: str) -> None:
    eventually(lambda: env.status(secure), settled(3), "three healthy voters", SLOW)
    key = f"/etcdlock/locks/{env.namespace}/tls-job"
    create_lock(env.api, env.namespace, "tls-job", {"key": key, "clusterRef": {"name": secure}})
    create_pod(env.api, env.namespace, "tls-worker", "tls-job")
    eventually(lambda: read_pod(env.api, env.namespace, "tls-worker"), held, "the pod holds the lock", SLOW)
    token = read_pod(env.api, env.namespace, "tls-worker")["metadata"]["annotations"][TOKEN_ANNOTATION]
    assert int(token) > 0
    # The CLI, with the client Secret's files, sees the pod as the holder.
    endpoint = f"--endpoints=https://secure-client.{env.namespace}.svc:2379"
    shown = env.in_cluster(
        [*PYTHON_ETCDLOCK, endpoint, *env.client_files(secure), "status", key, "-o", "json"]
    )
    assert shown.returncode == 0, shown.stderr
    holders = json.loads(shown.stdout)["holders"]
    assert len(holders) == 1 and holders[0]["fencingToken"] == int(token)
    # From outside the cluster's DNS: a member's address, with the name the certificate carries.
    address = env.pods(secure)["secure-1"].status.pod_ip
    outside = subprocess.run(
        [
            *PYTHON_ETCDLOCK,
            f"--endpoints=https://{address}:2379",
            *env.client_files(secure),
            f"--tls-server-name=secure-client.{env.namespace}.svc",
            "status",
            key,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert outside.returncode == 0, outside.stderr
    assert json.loads(outside.stdout)["holders"][0]["fencingToken"] == int(token)
    # ... and cannot take it while the pod holds it (try once, exit 2).
    tried = env.in_cluster(
        [*PYTHON_ETCDLOCK, endpoint, *env.client_files(secure), "lock", "--timeout=0", key]
    )
    assert tried.returncode == 2, tried.stderr


def test_renewed_certificates_are_served_without_restarting_a_member_and_the_lock_stays_held(
    env: TlsEnv, secure: str
) -> None:
    eventually(lambda: env.status(secure), settled(3), "three healthy voters", SLOW)
    before = env.secret("secure-member-tls")["tls.crt"]
    uids = {name: pod.metadata.uid for name, pod in env.pods(secure).items()}
    env.client_files(secure)
    assert served_certificate(env, "secure-0") == der_of(before)
    renewed = eventually(
        lambda: env.secret("secure-member-tls")["tls.crt"], lambda cert: cert != before, "a renewal", DURATION
    )
    # etcd reads the renewed files for each new handshake: every member serves the new certificate (once
    # the mount shows it) with the process it ran before.
    env.client_files(secure)
    for pod in sorted(uids):
        eventually(
            lambda p=pod: served_certificate(env, p),
            lambda der: der == der_of(renewed),
            f"{pod} serves it",
            30,
        )
    after = env.pods(secure)
    assert {name: pod.metadata.uid for name, pod in after.items()} == uids
    assert all((pod.status.container_statuses or [])[0].restart_count == 0 for pod in after.values())
    reasons = [reason for reason, _ in env.events(secure)]
    assert "CertificateRenewed" in reasons and "MemberRestarted" not in reasons
    # The cluster stays healthy, and the pod's hold went on with the new client certificate.
    eventually(lambda: env.status(secure), settled(3), "three healthy voters after the renewal", SLOW)
    put = env.etcdctl(secure, "put", "/tls/after-renewal", "yes")
    assert put.returncode == 0, put.stderr
    eventually(
        lambda: read_pod(env.api, env.namespace, "tls-worker"), held, "the pod still holds the lock", SLOW
    )
    lock = status_of(env.api, env.namespace, "tls-job")
    assert [h["fencingToken"] for h in lock.get("holders") or []] == [
        int(read_pod(env.api, env.namespace, "tls-worker")["metadata"]["annotations"][TOKEN_ANNOTATION])
    ]


def test_a_tls_cluster_scales_out_and_in(env: TlsEnv, secure: str) -> None:
    eventually(lambda: env.status(secure), settled(3), "three healthy voters", SLOW)
    env.scale(secure, 5)
    status = eventually(lambda: env.status(secure), settled(5), "five healthy voters over TLS", 3 * SLOW)
    assert all(m["peerURL"].startswith("https://") for m in status["members"])
    env.scale(secure, 3)
    eventually(lambda: env.status(secure), settled(3), "three again", 3 * SLOW)
    got = env.etcdctl(secure, "get", "--print-value-only", "/tls/greeting")
    assert got.stdout.strip() == "hello", got.stderr


def test_turning_tls_off_on_a_running_cluster_is_refused(env: TlsEnv, secure: str) -> None:
    eventually(lambda: env.status(secure), settled(3), "three healthy voters", SLOW)
    env.objects.patch_namespaced_custom_object(
        "etcdlock.io", "v1alpha1", env.namespace, "etcdclusters", secure, {"spec": {"tls": None}}
    )
    degraded = eventually(
        lambda: condition(env.status(secure), "Degraded"),
        lambda c: c["status"] == "True" and "spec.tls cannot change" in c["message"],
        "the change refused",
        SLOW,
    )
    assert degraded["reason"] == "Refused"
    assert "TLSChangeRefused" in [reason for reason, _ in env.events(secure)]
    got = env.etcdctl(secure, "get", "--print-value-only", "/tls/greeting")
    assert got.stdout.strip() == "hello", got.stderr
    status = env.status(secure)
    assert status["clientURL"].startswith("https://") and status["tls"]["issuer"] == "etcdlock"
    env.patch(secure, {"tls": {"duration": f"{DURATION}s"}})
    eventually(
        lambda: condition(env.status(secure), "Degraded"),
        lambda c: c["status"] == "False",
        "healthy again",
        SLOW,
    )


def test_a_tls_cluster_is_backed_up_and_restored_into_another_tls_cluster(
    env: TlsEnv,
    secure: str,
    s3_server: S3Server,
    bucket: str,  # noqa: F811
) -> None:
    eventually(lambda: env.status(secure), settled(3), "three healthy voters", SLOW)
    put = env.etcdctl(secure, "put", "/tls/backed-up", "kept")
    assert put.returncode == 0, put.stderr
    eventually(
        lambda: env.status(secure).get("backup") or {},
        lambda b: bool(b.get("lastFull")) and bool(b.get("lastDelta")),
        "a full snapshot and a delta",
        SLOW,
    )
    revision = int(
        json.loads(env.etcdctl(secure, "get", "/tls/backed-up", "-w", "json").stdout)["header"]["revision"]
    )
    eventually(
        lambda: (env.status(secure).get("backup") or {}).get("lastDelta") or {},
        lambda d: int(d.get("revision") or 0) >= revision,
        "the write in a delta",
        SLOW,
    )
    restore = {"store": store(s3_server, bucket, "secure")}
    env.create("secure-copy", {"replicas": 3, "tls": {}, "restore": restore})
    eventually(lambda: env.status("secure-copy"), settled(3), "the copy up over TLS", 3 * SLOW)
    assert env.secret("secure-copy-ca")["ca.crt"] != env.secret("secure-ca")["ca.crt"]
    # Through the client Service, once its name resolves (it lists a member once its pod is ready).
    got = eventually(
        lambda: env.etcdctl("secure-copy", "get", "--print-value-only", "/tls/backed-up"),
        lambda done: done.returncode == 0,
        "a read from the copy",
        SLOW,
    )
    assert got.stdout.strip() == "kept", got.stderr


@pytest.mark.timeout(600)
def test_certificates_from_a_cert_manager_issuer_once_it_exists(env: TlsEnv) -> None:
    """The sandbox's cert-manager stand-in issues from CA issuers, as cert-manager's CA issuer does."""
    managed = {"replicas": 1, "storage": {"size": "1Gi"}, "tls": {"issuerRef": {"name": "etcd-ca"}}}
    env.create("managed", managed)
    waiting = eventually(
        lambda: next(
            (c for c in env.status("managed").get("conditions") or [] if c["type"] == "Progressing"), {}
        ),
        lambda c: c.get("reason") == "WaitingForCertificates",
        "waiting for cert-manager",
        SLOW,
    )
    assert "Issuer/etcd-ca" in waiting["message"] and "managed-member-tls" in waiting["message"]
    assert not env.pods("managed")
    apps = kubernetes.client.AppsV1Api(env.api)
    assert not [
        s for s in apps.list_namespaced_stateful_set(env.namespace).items if s.metadata.name == "managed"
    ]
    wanted = {
        c["metadata"]["name"]: c["spec"]
        for c in env.objects.list_namespaced_custom_object(
            "cert-manager.io", "v1", env.namespace, "certificates"
        )["items"]
    }
    assert set(wanted) == {"managed-member", "managed-client"}
    assert wanted["managed-member"]["secretName"] == "managed-member-tls"
    assert wanted["managed-member"]["issuerRef"] == {
        "name": "etcd-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"*.managed.{env.namespace}.svc" in wanted["managed-member"]["dnsNames"]
    assert (
        "server auth" in wanted["managed-member"]["usages"]
        and "client auth" in wanted["managed-member"]["usages"]
    )
    assert wanted["managed-client"]["usages"][0] == "client auth"
    # The issuer arrives: the cluster comes up on its certificates.
    ca = trustme.CA()
    data = {"tls.crt": ca.cert_pem.bytes(), "tls.key": ca.private_key_pem.bytes()}
    env.core.create_namespaced_secret(
        env.namespace,
        {
            "metadata": {"name": "etcd-ca-key"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        },
    )
    issuer = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": {"name": "etcd-ca"},
        "spec": {"ca": {"secretName": "etcd-ca-key"}},
    }
    env.objects.create_namespaced_custom_object("cert-manager.io", "v1", env.namespace, "issuers", issuer)
    status = eventually(
        lambda: env.status("managed"), settled(1), "one healthy member on cert-manager's certificates", SLOW
    )
    assert status["tls"]["issuer"] == "Issuer/etcd-ca"
    assert env.secret("managed-member-tls")["ca.crt"] == ca.cert_pem.bytes()
    put = eventually(
        lambda: env.etcdctl("managed", "put", "/managed/key", "issued"),
        lambda done: done.returncode == 0,
        "a write with cert-manager's client certificate",
        SLOW,
    )
    assert put.stdout.strip() == "OK"
    # A Certificate edited by hand is brought back to what the cluster needs.
    env.objects.patch_namespaced_custom_object(
        "cert-manager.io",
        "v1",
        env.namespace,
        "certificates",
        "managed-member",
        {"spec": {"dnsNames": ["elsewhere"]}},
    )
    eventually(
        lambda: env.objects.get_namespaced_custom_object(
            "cert-manager.io", "v1", env.namespace, "certificates", "managed-member"
        )["spec"]["dnsNames"],
        lambda names: names == wanted["managed-member"]["dnsNames"],
        "the Certificate's names put back",
        SLOW,
    )

    # The members' Secret gone, and no issuer to make it again: the cluster is only observed, nothing is
    # restarted into a pod that could not start; the issuer back, the Secret is issued again.
    uid = env.pods("managed")["managed-0"].metadata.uid
    template = apps.read_namespaced_stateful_set("managed", env.namespace).spec.template.metadata.annotations
    env.objects.delete_namespaced_custom_object("cert-manager.io", "v1", env.namespace, "issuers", "etcd-ca")
    env.core.delete_namespaced_secret("managed-member-tls", env.namespace)
    degraded = eventually(
        lambda: condition(env.status("managed"), "Degraded"),
        lambda c: c["reason"] == "CertificatesNotReady",
        "the missing Secret reported",
        SLOW,
    )
    assert "managed-member-tls is not issued yet" in degraded["message"]
    env.objects.create_namespaced_custom_object("cert-manager.io", "v1", env.namespace, "issuers", issuer)
    eventually(
        lambda: condition(env.status("managed"), "Degraded"),
        lambda c: c["status"] == "False",
        "healthy",
        SLOW,
    )
    assert env.pods("managed")["managed-0"].metadata.uid == uid
    assert (
        apps.read_namespaced_stateful_set("managed", env.namespace).spec.template.metadata.annotations
        == template
    )
    # The issuer's CA changes (a new CA Secret), and cert-manager issues from it: a member trusting only the
    # old CA would refuse the new certificates, so every member restarts together, and the cluster serves
    # with the new CA.
    new_ca = trustme.CA()
    data = {"tls.crt": new_ca.cert_pem.bytes(), "tls.key": new_ca.private_key_pem.bytes()}
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    env.core.create_namespaced_secret(env.namespace, {"metadata": {"name": "etcd-ca-key-2"}, "data": encoded})
    switch = {"spec": {"ca": {"secretName": "etcd-ca-key-2"}}}
    env.objects.patch_namespaced_custom_object(
        "cert-manager.io", "v1", env.namespace, "issuers", "etcd-ca", switch
    )
    for secret in ("managed-member-tls", "managed-client-tls"):
        env.core.delete_namespaced_secret(secret, env.namespace)
    eventually(
        lambda: env.events("managed"),
        lambda seen: any(reason == "CertificateAuthorityChanged" for reason, _ in seen),
        "every member restarted for the new CA",
        SLOW,
    )
    eventually(lambda: env.status("managed"), settled(1), "healthy on the new CA", SLOW)
    assert env.pods("managed")["managed-0"].metadata.uid != uid
    assert env.secret("managed-member-tls")["ca.crt"] == new_ca.cert_pem.bytes()
    got = eventually(
        lambda: env.etcdctl("managed", "get", "--print-value-only", "/managed/key"),
        lambda done: done.returncode == 0,
        "a read with the new client certificate",
        SLOW,
    )
    assert got.stdout.strip() == "issued"


def test_a_deleted_ca_is_reported_and_not_replaced_behind_the_members_backs(env: TlsEnv) -> None:
    """A new CA would cut the members off from each other: the operator says what to do instead."""
    copy = "secure-copy"
    eventually(lambda: env.status(copy), settled(3), "the copy up over TLS", SLOW)
    saved = env.core.read_namespaced_secret(f"{copy}-ca", env.namespace)
    member = env.secret(f"{copy}-member-tls")
    env.core.delete_namespaced_secret(f"{copy}-ca", env.namespace)
    degraded = eventually(
        lambda: condition(env.status(copy), "Degraded"),
        lambda c: c["reason"] == "CertificatesNotRenewable",
        "the lost CA reported",
        SLOW,
    )
    assert f"{copy}-ca is gone" in degraded["message"] and "restore it" in degraded["message"]
    with pytest.raises(kubernetes.client.ApiException):
        env.core.read_namespaced_secret(f"{copy}-ca", env.namespace)
    got = env.etcdctl(copy, "get", "--print-value-only", "/tls/backed-up")
    assert got.stdout.strip() == "kept", got.stderr
    # Another CA in its place: nothing is issued from it either.
    other = trustme.CA()
    pems = {"tls.crt": other.cert_pem.bytes(), "tls.key": other.private_key_pem.bytes()}
    pems["ca.crt"] = pems["tls.crt"]
    encoded = {key: base64.b64encode(value).decode() for key, value in pems.items()}
    env.core.create_namespaced_secret(env.namespace, {"metadata": {"name": f"{copy}-ca"}, "data": encoded})
    eventually(
        lambda: condition(env.status(copy), "Degraded"),
        lambda c: "is not the one the members trust" in c["message"],
        "another CA reported",
        SLOW,
    )
    assert env.secret(f"{copy}-member-tls") == member
    # The CA the members trust, back: healthy again.
    env.core.delete_namespaced_secret(f"{copy}-ca", env.namespace)
    env.core.create_namespaced_secret(
        env.namespace, {"metadata": {"name": f"{copy}-ca"}, "type": saved.type, "data": saved.data}
    )
    eventually(
        lambda: condition(env.status(copy), "Degraded"),
        lambda c: c["status"] == "False",
        "healthy again",
        SLOW,
    )
    assert env.secret(f"{copy}-member-tls") == member


def test_secrets_of_another_owner_are_not_taken_over(env: TlsEnv) -> None:
    """A Secret of the name the cluster needs, owned by something else (an earlier cluster of that name
    still being deleted, another tool), is never overwritten: the cluster waits, saying why."""
    owner = env.core.create_namespaced_config_map(env.namespace, {"metadata": {"name": "someone-else"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "someone-else", "uid": owner.metadata.uid}
    theirs = {
        "metadata": {"name": "taken-client-tls", "ownerReferences": [reference]},
        "stringData": {"a": "b"},
    }
    env.core.create_namespaced_secret(env.namespace, theirs)
    env.create("taken", {"replicas": 1, "tls": {}})
    waiting = eventually(
        lambda: next(
            (c for c in env.status("taken").get("conditions") or [] if c["type"] == "Progressing"), {}
        ),
        lambda c: c.get("reason") == "WaitingForCertificates",
        "the foreign Secret reported",
        SLOW,
    )
    assert "taken-client-tls" in waiting["message"] and "not this EtcdCluster's" in waiting["message"]
    assert env.secret("taken-client-tls") == {"a": b"b"}
    assert not env.pods("taken")
    env.core.delete_namespaced_secret("taken-client-tls", env.namespace)
    eventually(lambda: env.status("taken"), settled(1), "up once the name is free", SLOW)
