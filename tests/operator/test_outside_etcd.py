"""DistributedLocks on an etcd the user already runs (``spec.etcd``), end to end in the sandbox.

The operator runs as a process on its own etcd; the "outside" etcds are other real etcd processes: plain,
serving TLS with client certificates, and with users and passwords. What reaches them comes from a Secret
of the lock's namespace only. Pods take such locks, and so does the CLI at the same key on the same etcd:
they exclude each other. A missing, wrong or rotated Secret is said in the lock's status (and the pods'
message) and picked up without restarting the operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from operator_support import (
    BOUND,
    create_lock,
    event_reasons,
    eventually,
    operator_in,
    status_of,
    tolerating,
)
from test_pods import create_pod, finish, gated, held, note, read_pod

from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    ERROR,
    HELD,
    LEASE_ANNOTATION,
    MESSAGE_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls
from etcdlock_sandbox.replicas import OperatorProcess

RECHECK = 1  # the operator's --secret-recheck-interval here, in seconds
ROOT_USER = ["--user", "root:rootpw"]


@dataclass(frozen=True)
class Served:
    api: ApiClient
    namespace: str
    operator: OperatorProcess

    @property
    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.api)

    def secret(
        self, name: str, data: dict[str, bytes | str], kind: str = "Opaque", namespace: str = ""
    ) -> None:
        """Create (or replace) the Secret ``name`` with ``data`` in the test's namespace, or ``namespace``."""
        where = namespace or self.namespace
        string_data = {k: v.decode() if isinstance(v, bytes) else v for k, v in data.items()}
        body = {"metadata": {"name": name}, "type": kind, "stringData": string_data}
        with tolerating(404):
            self.core.delete_namespaced_secret(name, where)
        self.core.create_namespaced_secret(where, body)

    def key(self, lock: str) -> str:
        return f"/etcdlock/locks/{self.namespace}/{lock}"


@pytest.fixture(scope="module")
def served(
    k8s_sandbox: SandboxThread,
    api: ApiClient,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """A namespace (deleted at the end) served by the operator as a process on ``etcd``, with its webhook,
    reading Secrets again every second; stopped by PID at the end."""
    namespace = f"outside-{uuid.uuid4().hex[:8]}"
    logs = tmp_path_factory.mktemp("outside")
    recheck = ("--secret-recheck-interval", str(RECHECK))
    with operator_in(namespace, k8s_sandbox, api, etcd, kubeconfig, webhook_certs, logs, recheck) as operator:
        yield Served(api, namespace, operator)


@pytest.fixture(scope="module")
def plain() -> Iterator[LocalEtcd]:
    """An etcd of the user's, without TLS or authentication."""
    with LocalEtcd(size=1) as cluster:
        yield cluster


def etcdctl_ok(cluster: LocalEtcd, *args: str) -> str:
    done = cluster.etcdctl(*args)
    assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def users(served: Served) -> Iterator[LocalEtcd]:
    """An etcd of the user's with authentication on (tokens expire after 2 idle seconds). The users
    ``locker:lockerpw`` and ``rotor:rotorpw`` may use the namespace's locks and its epoch key, as the
    README tells an etcd admin to grant, and nothing else."""
    ns = served.namespace
    with LocalEtcd(size=1, extra_args=["--auth-token-ttl=2"]) as cluster:
        etcdctl_ok(cluster, "user", "add", "root:rootpw", "--interactive=false")
        etcdctl_ok(cluster, "user", "grant-role", "root", "root")
        etcdctl_ok(cluster, "role", "add", "locks")
        etcdctl_ok(
            cluster, "role", "grant-permission", "locks", "readwrite", f"/etcdlock/locks/{ns}/", "--prefix"
        )
        etcdctl_ok(
            cluster, "role", "grant-permission", "locks", "readwrite", f"/etcdlock/operator/epoch/{ns}"
        )
        for user in ("locker:lockerpw", "rotor:rotorpw"):
            etcdctl_ok(cluster, "user", "add", user, "--interactive=false")
            etcdctl_ok(cluster, "user", "grant-role", user.split(":")[0], "locks")
        etcdctl_ok(cluster, "auth", "enable")
        yield cluster


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def is_ready(status: dict[str, Any]) -> bool:
    return ready(status).get("status") == "True"


def not_ready_for(reason: str) -> Any:
    return lambda status: ready(status).get("status") == "False" and ready(status).get("reason") == reason


def waiting_because(text: str) -> Any:
    return lambda pod: (
        note(pod, STATE_ANNOTATION) == WAITING and text in (note(pod, MESSAGE_ANNOTATION) or "")
    )


def etcdlock(endpoints: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "etcdlock", "--endpoints", endpoints, *args]


@contextlib.contextmanager
def cli_holding(endpoints: str, key: str, holder: str, *flags: str) -> Iterator[None]:
    """``etcdlock lock KEY`` on the user's etcd, holding the lock until the block ends (then SIGINT)."""
    argv = etcdlock(endpoints, *flags, "lock", key, "--holder", holder)
    cli = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        assert line.startswith(key), (
            line,
            cli.stderr.read() if cli.poll() is not None and cli.stderr else "",
        )
        yield
        cli.send_signal(signal.SIGINT)
        assert cli.wait(BOUND) == 0
    finally:
        cli.kill()
        cli.wait(BOUND)


def try_lock(endpoints: str, key: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``etcdlock lock KEY --timeout 0 -- true``: exit 0 if it got the lock at once, 2 if someone holds it."""
    argv = etcdlock(endpoints, *flags, "lock", key, "--timeout", "0", "--", "true")
    return subprocess.run(argv, capture_output=True, text=True, timeout=BOUND, check=False)


def holders(status: dict[str, Any]) -> list[str]:
    return [h["holder"] for h in status.get("holders") or []]


def test_pods_and_the_cli_take_turns_on_a_lock_in_an_etcd_the_user_runs(
    served: Served, plain: LocalEtcd, etcd: LocalEtcd
) -> None:
    api, ns, lock = served.api, served.namespace, "plain"
    create_lock(api, ns, lock, {"etcd": {"endpoints": [plain.endpoints[0]]}, "ttlSeconds": 10})
    eventually(lambda: status_of(api, ns, lock), is_ready, "the lock served")
    key = served.key(lock)
    with cli_holding(plain.endpoint_list, key, "nightly-cron"):
        eventually(
            lambda: status_of(api, ns, lock), lambda s: holders(s) == ["nightly-cron"], "the CLI holding"
        )
        create_pod(api, ns, "worker", lock)
        pod = eventually(
            lambda: read_pod(api, ns, "worker"), waiting_because("waiting for a permit"), "waiting"
        )
        assert gated(pod)
    pod = eventually(lambda: read_pod(api, ns, "worker"), held, "the pod holding once the CLI let go")
    # The pod's lease lives in the user's etcd, and the pod says so: a release after a restart goes there.
    assert json.loads(note(pod, CLUSTER_ANNOTATION) or "{}") == {"endpoints": [plain.endpoints[0]]}
    assert try_lock(plain.endpoint_list, key).returncode == 2, "the CLI got the lock the pod holds"
    assert etcdctl_ok(etcd, "get", key, "--prefix", "--keys-only").strip() == "", (
        "keys in the operator's etcd"
    )
    finish(api, ns, "worker")
    eventually(
        lambda: read_pod(api, ns, "worker"), lambda p: note(p, STATE_ANNOTATION) == RELEASED, "released"
    )
    eventually(lambda: status_of(api, ns, lock), lambda s: s.get("phase") == "Free", "free again")
    assert etcdctl_ok(plain, "get", key, "--prefix", "--keys-only").strip() == ""
    assert try_lock(plain.endpoint_list, key).returncode == 0


def test_a_client_certificate_from_a_tls_secret_reaches_an_etcd_that_demands_one(
    served: Served, tls_etcd: LocalEtcd, tls: LocalTls
) -> None:
    api, ns, lock = served.api, served.namespace, "tls"
    pems = {
        "ca.crt": tls.ca_file.read_bytes(),
        "tls.crt": tls.client_cert_file.read_bytes(),
        "tls.key": tls.client_key_file.read_bytes(),
    }
    served.secret("etcd-client", pems, "kubernetes.io/tls")
    spec = {"etcd": {"endpoints": tls_etcd.endpoints, "secretRef": {"name": "etcd-client"}}, "ttlSeconds": 10}
    create_lock(api, ns, lock, spec)
    eventually(lambda: status_of(api, ns, lock), is_ready, "the lock served over TLS")
    flags = (
        "--cacert",
        str(tls.ca_file),
        "--cert",
        str(tls.client_cert_file),
        "--key",
        str(tls.client_key_file),
    )
    with cli_holding(tls_etcd.endpoint_list, served.key(lock), "tls-cli", *flags):
        eventually(lambda: status_of(api, ns, lock), lambda s: holders(s) == ["tls-cli"], "the CLI holding")
        create_pod(api, ns, "secure-worker", lock)
        eventually(
            lambda: read_pod(api, ns, "secure-worker"), waiting_because("waiting for a permit"), "waiting"
        )
    eventually(lambda: read_pod(api, ns, "secure-worker"), held, "the pod holding over TLS")
    finish(api, ns, "secure-worker")


def test_an_etcd_that_demands_a_client_certificate_the_secret_lacks_is_said(
    served: Served, tls_etcd: LocalEtcd, tls: LocalTls
) -> None:
    api, ns, lock = served.api, served.namespace, "tls-without-cert"
    served.secret("ca-only", {"ca.crt": tls.ca_file.read_bytes()})
    create_lock(api, ns, lock, {"etcd": {"endpoints": tls_etcd.endpoints, "secretRef": {"name": "ca-only"}}})
    status = eventually(lambda: status_of(api, ns, lock), not_ready_for("EtcdDenied"), "the lock not served")
    assert ready(status)["reason"] == "EtcdDenied", status
    message = ready(status)["message"]
    assert f"etcd at {tls_etcd.endpoints[0]} refuses the credentials given" in message
    assert "rejected the client certificate" in message


def test_a_user_and_password_from_a_secret_and_a_wrong_password_said_until_it_is_fixed(
    served: Served, users: LocalEtcd
) -> None:
    api, ns, lock = served.api, served.namespace, "auth"
    pid = served.operator.process.pid if served.operator.process else None
    served.secret("etcd-user", {"username": "locker", "password": "wrong"})
    create_lock(api, ns, lock, {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "etcd-user"}}})
    status = eventually(
        lambda: status_of(api, ns, lock), not_ready_for("EtcdDenied"), "the wrong password said"
    )
    assert "refuses the credentials" in ready(status)["message"]
    assert status["phase"] == "Error"
    event_reasons(api, ns, lock, "EtcdDenied")
    create_pod(api, ns, "auth-worker", lock)
    pod = eventually(
        lambda: read_pod(api, ns, "auth-worker"), waiting_because("refuses the credentials"), "waiting"
    )
    assert gated(pod)
    served.secret("etcd-user", {"username": "locker", "password": "lockerpw"})
    eventually(lambda: status_of(api, ns, lock), is_ready, "the lock served with the right password")
    eventually(lambda: read_pod(api, ns, "auth-worker"), held, "the pod holding")
    assert try_lock(users.endpoint_list, served.key(lock), "--user", "locker:lockerpw").returncode == 2
    assert served.operator.process is not None and served.operator.process.pid == pid, (
        "the operator restarted"
    )
    finish(api, ns, "auth-worker")


def test_a_missing_secret_is_said_and_the_lock_is_served_once_it_is_created(
    served: Served, users: LocalEtcd
) -> None:
    api, ns, lock = served.api, served.namespace, "late"
    create_lock(api, ns, lock, {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "late-user"}}})
    status = eventually(
        lambda: status_of(api, ns, lock), not_ready_for("SecretNotFound"), "the Secret missing"
    )
    assert (
        f"Secret late-user (spec.etcd.secretRef) does not exist in namespace {ns}" in ready(status)["message"]
    )
    event_reasons(api, ns, lock, "SecretNotFound")
    create_pod(api, ns, "patient", lock)
    eventually(lambda: read_pod(api, ns, "patient"), waiting_because("Secret late-user"), "the pod says why")
    served.secret("late-user", {"username": "locker", "password": "lockerpw"})
    eventually(lambda: status_of(api, ns, lock), is_ready, "the lock served once the Secret exists")
    eventually(lambda: read_pod(api, ns, "patient"), held, "the pod holding")
    finish(api, ns, "patient")


def test_a_secret_in_another_namespace_is_never_read(served: Served, users: LocalEtcd) -> None:
    api, ns, lock = served.api, served.namespace, "borrowing"
    other = f"other-{uuid.uuid4().hex[:8]}"
    served.core.create_namespace({"metadata": {"name": other}})
    try:
        served.secret("theirs", {"username": "locker", "password": "lockerpw"}, namespace=other)
        create_lock(api, ns, lock, {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "theirs"}}})
        status = eventually(
            lambda: status_of(api, ns, lock), not_ready_for("SecretNotFound"), "not found here"
        )
        assert f"does not exist in namespace {ns}" in ready(status)["message"]
    finally:
        served.core.delete_namespace(other)


def test_rotated_credentials_are_used_without_a_restart_and_holds_carry_over(
    served: Served, users: LocalEtcd
) -> None:
    api, ns, lock = served.api, served.namespace, "rotating"
    served.secret("rotor", {"username": "rotor", "password": "rotorpw"})
    create_lock(api, ns, lock, {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "rotor"}}})
    create_pod(api, ns, "before-rotation", lock)
    before = eventually(lambda: read_pod(api, ns, "before-rotation"), held, "a pod holding")
    # Rotation as the README says: the new credentials first, the Secret next, the old ones removed last.
    etcdctl_ok(users, *ROOT_USER, "user", "add", "rotor2:rotated", "--interactive=false")
    etcdctl_ok(users, *ROOT_USER, "user", "grant-role", "rotor2", "locks")
    served.secret("rotor", {"username": "rotor2", "password": "rotated"})
    eventually(
        lambda: served.operator.log_path.read_text(),
        lambda text: f"Secret {ns}/rotor changed or went" in text,
        "the client logged in with the old credentials retired",
    )
    etcdctl_ok(users, *ROOT_USER, "user", "delete", "rotor")
    create_pod(api, ns, "after-rotation", lock)
    eventually(
        lambda: read_pod(api, ns, "after-rotation"), waiting_because("waiting for a permit"), "waiting"
    )
    still = read_pod(api, ns, "before-rotation")
    assert held(still), note(still, MESSAGE_ANNOTATION)
    assert note(still, TOKEN_ANNOTATION) == note(before, TOKEN_ANNOTATION)
    finish(api, ns, "before-rotation")
    eventually(lambda: read_pod(api, ns, "after-rotation"), held, "the next pod holding, with the new user")
    eventually(lambda: status_of(api, ns, lock), is_ready, "the lock served with the new user")
    finish(api, ns, "after-rotation")


def test_a_hold_lost_in_an_etcd_that_refuses_the_operator_is_said_as_lost(
    served: Served, users: LocalEtcd
) -> None:
    """The etcd admin deletes the user a holding pod's lease was kept with (the Secret still names it),
    then revokes the lease: the pod lost the lock, and it is told so, although the operator can neither
    confirm its leadership in that etcd nor delete anything there any more."""
    api, ns, lock = served.api, served.namespace, "revoked"
    etcdctl_ok(users, *ROOT_USER, "user", "add", "revokee:revokeepw", "--interactive=false")
    etcdctl_ok(users, *ROOT_USER, "user", "grant-role", "revokee", "locks")
    served.secret("revokee", {"username": "revokee", "password": "revokeepw"})
    create_lock(api, ns, lock, {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "revokee"}}})
    create_pod(api, ns, "revoked-worker", lock)
    pod = eventually(lambda: read_pod(api, ns, "revoked-worker"), held, "the pod holding")
    etcdctl_ok(users, *ROOT_USER, "user", "delete", "revokee")
    etcdctl_ok(users, *ROOT_USER, "lease", "revoke", note(pod, LEASE_ANNOTATION) or "")
    pod = eventually(
        lambda: read_pod(api, ns, "revoked-worker"),
        lambda p: note(p, STATE_ANNOTATION) == ERROR,
        "the lost hold said",
    )
    message = note(pod, MESSAGE_ANNOTATION) or ""
    assert message.startswith(f"lost {lock}") and "internal error" not in message, message
    event_reasons(api, ns, "revoked-worker", "LockLost")
    finish(api, ns, "revoked-worker")


def test_the_operators_own_etcd_under_another_name_is_refused_and_nothing_is_written_there(
    served: Served, etcd: LocalEtcd
) -> None:
    """The operator was given ``http://127.0.0.1:PORT``; ``localhost`` is the same etcd by another name, as
    a Service's FQDN or a ClusterIP would be: neither the lock nor its pods may reach it that way."""
    api, ns, lock = served.api, served.namespace, "own-by-another-name"
    alias = f"http://localhost:{etcd.members[0].client_port}"
    create_lock(api, ns, lock, {"etcd": {"endpoints": [alias]}})
    status = eventually(
        lambda: status_of(api, ns, lock), not_ready_for("OutsideEtcdNotAllowed"), "the lock refused"
    )
    assert "spec.etcd names the operator's own etcd (cluster ID " in ready(status)["message"]
    event_reasons(api, ns, lock, "OutsideEtcdNotAllowed")
    create_pod(api, ns, "own-etcd-worker", lock)
    pod = eventually(
        lambda: read_pod(api, ns, "own-etcd-worker"),
        waiting_because("names the operator's own etcd"),
        "the pod says why it waits",
    )
    assert gated(pod)
    assert etcdctl_ok(etcd, "get", f"/etcdlock/operator/epoch/{ns}").strip() == "", "an epoch written there"
    assert etcdctl_ok(etcd, "get", served.key(lock), "--prefix", "--keys-only").strip() == ""
    served.core.delete_namespaced_pod("own-etcd-worker", ns)


def test_a_lock_naming_both_a_cluster_and_an_etcd_is_refused(served: Served, plain: LocalEtcd) -> None:
    spec = {"clusterRef": {"name": "locks-etcd"}, "etcd": {"endpoints": plain.endpoints}}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        create_lock(served.api, served.namespace, "both", spec)
    assert refused.value.status == 403
    assert "spec.clusterRef and spec.etcd both name where the lock lives" in str(refused.value.body)


def test_an_operator_restart_keeps_a_pod_holding_a_lock_in_an_etcd_the_user_runs(
    served: Served, plain: LocalEtcd
) -> None:
    api, ns, lock = served.api, served.namespace, "steady"
    create_lock(api, ns, lock, {"etcd": {"endpoints": plain.endpoints}, "ttlSeconds": 15})
    create_pod(api, ns, "steady-worker", lock)
    before = eventually(lambda: read_pod(api, ns, "steady-worker"), held, "the pod holding")
    key = served.key(lock)
    keys = etcdctl_ok(plain, "get", key, "--prefix", "--keys-only").split()
    assert len(keys) == 1
    served.operator.stop()  # SIGTERM: the pod's lease is left alive, for the next operator to adopt
    served.operator.start().wait("ready", 30)
    # The new operator renews the lease in the user's etcd (named on the pod) and adopts the hold.
    eventually(lambda: status_of(api, ns, lock), lambda s: holders(s) == [f"pod/{ns}/steady-worker"], "held")
    after = read_pod(api, ns, "steady-worker")
    assert held(after) and note(after, TOKEN_ANNOTATION) == note(before, TOKEN_ANNOTATION)
    assert etcdctl_ok(plain, "get", key, "--prefix", "--keys-only").split() == keys
    finish(api, ns, "steady-worker")
    eventually(
        lambda: read_pod(api, ns, "steady-worker"),
        lambda p: note(p, STATE_ANNOTATION) == RELEASED,
        "released",
    )
    eventually(
        lambda: etcdctl_ok(plain, "get", key, "--prefix", "--keys-only").strip(),
        lambda out: out == "",
        "gone",
    )


def test_a_holding_pod_whose_secret_is_deleted_stays_held_until_its_lease_is_known_lost(
    served: Served, users: LocalEtcd
) -> None:
    """The Secret goes while a pod holds: its etcd cannot be reached any more. The pod stays Held (never
    relabelled Waiting, which a next leader would take for a pod the webhook missed), told that the hold
    is kept while its lease lives; once a lease TTL passed with nobody renewing it, it lost the lock."""
    api, ns, lock = served.api, served.namespace, "unreachable"
    served.secret("vanishing", {"username": "locker", "password": "lockerpw"})
    spec = {"etcd": {"endpoints": users.endpoints, "secretRef": {"name": "vanishing"}}, "ttlSeconds": 5}
    create_lock(api, ns, lock, spec)
    create_pod(api, ns, "stranded", lock)
    before = eventually(lambda: read_pod(api, ns, "stranded"), held, "the pod holding")
    served.core.delete_namespaced_secret("vanishing", ns)
    kept = eventually(
        lambda: read_pod(api, ns, "stranded"),
        lambda p: "cannot be reached" in (note(p, MESSAGE_ANNOTATION) or ""),
        "the pod told its etcd cannot be reached",
    )
    assert note(kept, STATE_ANNOTATION) == HELD, note(kept, MESSAGE_ANNOTATION)
    assert (kept["metadata"].get("labels") or {}).get(STATE_ANNOTATION) == HELD
    assert "the hold is kept while its lease lives" in (note(kept, MESSAGE_ANNOTATION) or "")
    assert note(kept, TOKEN_ANNOTATION) == note(before, TOKEN_ANNOTATION)
    event_reasons(api, ns, "stranded", "EtcdUnreachable")
    lost = eventually(
        lambda: read_pod(api, ns, "stranded"),
        lambda p: note(p, STATE_ANNOTATION) == ERROR,
        "the lost hold said",
        3 * BOUND,  # a lease TTL (15 s at least) after the Secret went
    )
    message = note(lost, MESSAGE_ANNOTATION) or ""
    assert message.startswith(f"lost {lock}: its etcd could not be reached"), message
    event_reasons(api, ns, "stranded", "LockLost")
    finish(api, ns, "stranded")
