"""What a pod says of its lease's etcd (``etcdlock.io/cluster``) when a new operator takes over: whoever may
edit the pod writes it, so nothing it says may stop the operator, hold back the renewal of other pods'
leases, or make the operator connect where it would not for a lock.

The operator runs as a process on the session's etcd (the ``operated`` fixture), and is restarted with the
pods already there, as after a failover.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
from kubernetes.client import ApiClient
from operator_support import (
    Operated,
    create_lock,
    events_of,
    eventually,
    status_of,
    webhooks_registered,
)
from test_pods import create_pod, finish, held, note, read_pod

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    HELD,
    LEASE_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, free_port
from etcdlock_sandbox.replicas import OperatorProcess

# Longer than an operator takes to start on a loaded machine, and within the operator's bound for a takeover
# that renews every lease at once.
START_BOUND = 90

HOSTILE = {
    "string-secret-ref": '{"endpoints":["http://127.0.0.1:1"],"secretRef":"x"}',
    "deeply-nested": '{"a":' + "[" * 100_000,
    "huge": '{"endpoints":["http://127.0.0.1:1"],"pad":"' + "x" * 200_000 + '"}',
}


def restarted(operator: OperatorProcess) -> int:
    """Start ``operator`` again and wait until it leads; how long its log was before."""
    before = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    operator.start().wait("ready", START_BOUND)
    return before


def logged_since(operator: OperatorProcess, offset: int) -> str:
    return operator.log_path.read_bytes()[offset:].decode(errors="replace")


def where(*endpoints: str) -> str:
    return json.dumps({"endpoints": list(endpoints)})


def dead_endpoint() -> str:
    """A loopback port nothing listens on: an etcd of the user's that is down."""
    return f"http://127.0.0.1:{free_port()}"


def test_pods_whose_cluster_annotation_describes_no_etcd_neither_stop_the_operator_nor_other_pods(
    operated: Operated,
) -> None:
    api, ns, operator = operated.api, operated.namespace, operated.operator
    create_lock(api, ns, "guarded", {})
    operator.stop()
    for name, text in HOSTILE.items():
        notes = {STATE_ANNOTATION: HELD, LEASE_ANNOTATION: "7e57", CLUSTER_ANNOTATION: text}
        create_pod(api, ns, name, "guarded", **notes)
    offset = restarted(operator)
    create_pod(api, ns, "bystander", "guarded")
    eventually(lambda: read_pod(api, ns, "bystander"), held, "another pod holding the lock")
    for name in HOSTILE:
        finish(api, ns, name)
    finish(api, ns, "bystander")
    for name in [*HOSTILE, "bystander"]:
        eventually(
            lambda n=name: read_pod(api, ns, n),
            lambda p: note(p, STATE_ANNOTATION) == RELEASED,
            f"{name} released",
        )
    assert operator.running(), f"the operator exited: see {operator.log_path}"
    assert "Traceback" not in logged_since(operator, offset)


def test_a_down_etcd_named_by_waiting_pods_does_not_hold_back_renewing_other_leases(
    operated: Operated, etcd: LocalEtcd
) -> None:
    """Twelve waiting pods name etcds of the user's that are down: the new operator renews the lease of a
    pod holding a lock on its own etcd before that lease (as short as the operator allows) expires."""
    api, ns, operator = operated.api, operated.namespace, operated.operator
    create_lock(api, ns, "steady", {"ttlSeconds": 5})
    create_lock(api, ns, "far", {"etcd": {"endpoints": [dead_endpoint()]}})
    create_pod(api, ns, "steady-holder", "steady")
    before = eventually(lambda: read_pod(api, ns, "steady-holder"), held, "a pod holding")
    key = f"/etcdlock/locks/{ns}/steady"
    keys = etcd.etcdctl("get", key, "--prefix", "--keys-only").stdout.split()
    assert len(keys) == 1
    operator.stop()
    one_down = dead_endpoint()
    places = [where(dead_endpoint()) for _ in range(8)] + [where(one_down)] * 4
    for number, place in enumerate(places):
        notes = {STATE_ANNOTATION: WAITING, LEASE_ANNOTATION: format(0x5EED + number, "x")}
        create_pod(api, ns, f"far-{number}", "far", **{**notes, CLUSTER_ANNOTATION: place})
    restarted(operator)
    create_lock(api, ns, "sentinel", {})
    create_pod(api, ns, "sentinel", "sentinel")
    eventually(lambda: read_pod(api, ns, "sentinel"), held, "a pod created after the restart holding")
    eventually(
        lambda: status_of(api, ns, "steady"),
        lambda s: [h["holder"] for h in s.get("holders") or []] == [f"pod/{ns}/steady-holder"],
        "the holder adopted",
    )
    after = read_pod(api, ns, "steady-holder")
    assert held(after) and note(after, TOKEN_ANNOTATION) == note(before, TOKEN_ANNOTATION), after
    assert etcd.etcdctl("get", key, "--prefix", "--keys-only").stdout.split() == keys
    assert "LockLost" not in [reason for reason, _ in events_of(api, ns, "steady-holder")]
    for name in ["steady-holder", "sentinel", *(f"far-{n}" for n in range(len(places)))]:
        finish(api, ns, name)


@contextlib.contextmanager
def without_outside_etcds(
    sandbox: SandboxThread, api: ApiClient, etcd: LocalEtcd, kubeconfig: Path, certs: Path, logs: Path
) -> Iterator[tuple[str, OperatorProcess]]:
    """A namespace of its own, served by an operator process started with ``--allow-outside-etcd=false``
    (on an election of its own), once the ``outsider`` pod is there; stopped by PID at the end."""
    namespace = f"no-outside-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    settings = WebhookSettings("127.0.0.1", free_port(), certs)
    try:
        with webhooks_registered(api, settings, namespace):
            operator = OperatorProcess(
                etcd.endpoint_list,
                kubeconfig,
                certs,
                logs / "operator.log",
                namespaces=(namespace,),
                election=f"/etcdlock/test/{namespace}/leader",
                configure_webhook=False,
                webhook_port=settings.port,
                cluster_dns=sandbox.hosts,
                extra_args=("--allow-outside-etcd=false",),
            )
            try:
                yield namespace, operator
            finally:
                operator.stop()
    finally:
        core.delete_namespace(namespace)


def test_a_pods_annotation_makes_an_operator_that_allows_no_outside_etcd_connect_nowhere(
    k8s_sandbox: SandboxThread,
    api: ApiClient,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    tmp_path: Path,
) -> None:
    with (
        LocalEtcd(size=1) as theirs,
        without_outside_etcds(k8s_sandbox, api, etcd, kubeconfig, webhook_certs, tmp_path) as (ns, operator),
    ):
        notes = {
            STATE_ANNOTATION: HELD,
            LEASE_ANNOTATION: "7e57",
            CLUSTER_ANNOTATION: where(*theirs.endpoints),
        }
        create_pod(api, ns, "outsider", "theirs", **notes)
        operator.start().wait("ready", START_BOUND)
        create_lock(api, ns, "sentinel", {})
        create_pod(api, ns, "sentinel", "sentinel")
        eventually(lambda: read_pod(api, ns, "sentinel"), held, "a pod created after the start holding")
        finish(api, ns, "outsider")
        eventually(
            lambda: read_pod(api, ns, "outsider"),
            lambda p: note(p, STATE_ANNOTATION) == RELEASED,
            "the outsider released",
        )
        written = theirs.etcdctl("get", "", "--from-key", "--keys-only")
        assert written.returncode == 0, written.stderr
        assert written.stdout.strip() == "", f"the operator wrote in an etcd it may not use: {written.stdout}"
        finish(api, ns, "sentinel")
