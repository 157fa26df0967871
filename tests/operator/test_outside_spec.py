"""``spec.etcd`` of a DistributedLock: what is accepted, what its Secret must hold, which locks it may not
share keys with, and that each namespace reaches an etcd with its own Secret on its own connection."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock.operator.credentials import ClientCredentials
from etcdlock.operator.errors import (
    EtcdAccessDenied,
    InvalidSpec,
    KeyConflict,
    OutsideEtcdNotAllowed,
    SecretInvalid,
    SecretNotFound,
)
from etcdlock.operator.kube import Kube
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.lockkeys import KeyPolicy
from etcdlock.operator.locks import LockRules, Locks, LockSpec, OutsideRules
from etcdlock.operator.outside import OutsideEtcd, SecretCredentials
from etcdlock.operator.stores import Store, Stores
from etcdlock.operator.webhook import lock_refusal
from etcdlock_sandbox.etcd import LocalEtcd

ETCD_A = "https://etcd-a.example:2379"


def body(namespace: str, name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z") -> Any:
    meta = {"namespace": namespace, "name": name, "creationTimestamp": created}
    return {"metadata": meta, "spec": spec}


def secret(**data: bytes) -> dict[str, Any]:
    return {"data": {key: base64.b64encode(value).decode() for key, value in data.items()}}


@pytest.mark.parametrize(
    ("etcd", "message"),
    [
        ({}, "spec.etcd.endpoints must list 1 to 16 client URLs"),
        ({"endpoints": []}, "spec.etcd.endpoints must list 1 to 16 client URLs"),
        ({"endpoints": ["etcd-a:2379"]}, "must start with http:// or https://"),
        ({"endpoints": ["grpc://etcd-a:2379"]}, "must start with http:// or https://"),
        ({"endpoints": ["https://etcd-a"]}, "must name its port"),
        ({"endpoints": ["https://user:pw@etcd-a:2379"]}, "has credentials in it"),
        ({"endpoints": ["https://etcd-a:2379/v3"]}, "is not of the form http(s)://host:port"),
        ({"endpoints": ["https://etcd-a:2379", "http://etcd-b:2379"]}, "mix http:// and https://"),
        ({"endpoints": ["http://etcd-a:2379"], "serverName": "etcd"}, "serverName needs https:// endpoints"),
        ({"endpoints": [ETCD_A], "secretRef": {"name": "Not_A_Name"}}, "must be the name of a Secret"),
    ],
)
def test_a_malformed_etcd_is_an_invalid_spec_naming_the_field(etcd: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape("spec.etcd")) as refused:
        LockSpec.parse("ns", "lock", {"etcd": etcd})
    assert message in str(refused.value)


def test_a_lock_naming_both_a_cluster_and_an_etcd_is_refused_by_the_operator_and_the_webhook() -> None:
    spec = {"clusterRef": {"name": "c"}, "etcd": {"endpoints": [ETCD_A]}}
    with pytest.raises(
        InvalidSpec, match=re.escape("spec.clusterRef and spec.etcd both name where the lock lives")
    ):
        Locks(LockRules()).served(body("ns", "lock", spec))
    why = lock_refusal(body("ns", "lock", spec), "ns", LockRules(), [])
    assert why.startswith("spec.clusterRef and spec.etcd both name where the lock lives")


def test_the_place_of_a_lock_on_an_etcd_the_user_runs_is_written_and_read_back() -> None:
    spec = LockSpec.parse("ns", "lock", {"etcd": {"endpoints": ["https://Etcd-A.example:2379"]}})
    assert spec.etcd is not None and spec.etcd.endpoints == (ETCD_A,)
    assert spec.where is not None and OutsideEtcd.from_where(spec.where) == spec.etcd
    assert OutsideEtcd.from_where("locks-etcd") is None  # an EtcdCluster's name
    with pytest.raises(InvalidSpec):
        OutsideEtcd.from_where('{"endpoints": "not a list"}')


@pytest.mark.parametrize(
    "text",
    [
        '{"endpoints": ["http://a:1"], "secretRef": "x"}',
        '{"endpoints": ["http://a:1"], "secretRef": ["x"]}',
        '{"endpoints": ["http://a:1"], "serverName": 7}',
        '{"endpoints": [["http://a:1"]]}',
        '{"endpoints": [{"url": "http://a:1"}]}',
        '{"endpoints": ["http://a:99999"]}',
        '{"endpoints": ["http://a:1"]',
        "{}",
        '{"\\ud800": 1}',
        '{"a":' + "[" * 100_000,
        '{"a":' + '{"b":' * 100_000,
        '{"endpoints": ["http://a:1"], "pad": "' + "x" * 1_000_000 + '"}',
        '{"endpoints": ["http://' + "a" * 600 + ':1"]}',
    ],
)
def test_a_pods_cluster_annotation_that_describes_no_etcd_is_an_invalid_spec(text: str) -> None:
    """The pod's owner may write anything in ``etcdlock.io/cluster``: whatever it is, it is refused as
    invalid, never an error of another kind (which would stop the operator's takeover)."""
    with pytest.raises(InvalidSpec, match="describes no etcd"):
        OutsideEtcd.from_where(text)


def test_an_operator_may_turn_outside_etcds_off_and_never_lets_a_lock_name_its_own() -> None:
    spec = {"etcd": {"endpoints": [ETCD_A]}}
    with pytest.raises(OutsideEtcdNotAllowed, match="--allow-outside-etcd=false"):
        Locks(LockRules(outside=OutsideRules(allowed=False))).served(body("ns", "lock", spec))
    own = OutsideRules(own_etcd=frozenset({("etcd-a.example", 2379)}))
    with pytest.raises(OutsideEtcdNotAllowed, match="names the operator's own etcd"):
        Locks(LockRules(outside=own)).served(body("ns", "lock", spec))
    assert "turned off" in lock_refusal(
        body("ns", "l", spec), "ns", LockRules(outside=OutsideRules(False)), []
    )


def test_keys_overlap_only_between_locks_on_the_same_etcd_whatever_their_namespace() -> None:
    locks = Locks(LockRules(KeyPolicy.parse(["/shared"], None)))
    on_a = {"etcd": {"endpoints": [ETCD_A, "https://etcd-a2.example:2379"]}, "key": "/shared/jobs"}
    locks.served(body("one", "first", on_a))
    # The same key on another etcd, or on the operator's, does not share contenders.
    locks.served(
        body("two", "elsewhere", {"etcd": {"endpoints": ["https://etcd-b:2379"]}, "key": "/shared/jobs"})
    )
    locks.served(body("two", "default", {"key": "/shared/jobs"}, "2026-01-02T00:00:00Z"))
    # A lock of another namespace naming one endpoint of the same etcd, nested under the older key: refused.
    nested = {"etcd": {"endpoints": ["https://etcd-a2.example:2379"]}, "key": "/shared/jobs/x"}
    with pytest.raises(KeyConflict, match="DistributedLock one/first"):
        locks.served(body("two", "nested", nested, "2026-01-03T00:00:00Z"))
    assert locks.forget("one", "first") == [("two", "nested")]
    locks.served(body("two", "nested", nested, "2026-01-03T00:00:00Z"))


def test_the_secret_must_hold_something_usable() -> None:
    https = OutsideEtcd((ETCD_A,), "creds")
    http = OutsideEtcd(("http://etcd-a:2379",), "creds")
    with pytest.raises(SecretInvalid, match=re.escape("holds one of tls.crt and tls.key")):
        SecretCredentials.of(https, secret(**{"tls.crt": b"cert"}))
    with pytest.raises(SecretInvalid, match="holds one of username and password"):
        SecretCredentials.of(https, secret(username=b"alice"))
    with pytest.raises(SecretInvalid, match=re.escape("but spec.etcd.endpoints are http://")):
        SecretCredentials.of(http, secret(**{"ca.crt": b"ca"}))
    with pytest.raises(SecretInvalid, match="nothing to reach etcd with"):
        SecretCredentials.of(https, secret(other=b"x"))
    with pytest.raises(SecretInvalid, match="a stray newline"):
        SecretCredentials.of(https, secret(username=b"alice", password=b"pw\n"))
    not_a_ca = SecretCredentials.of(https, secret(**{"ca.crt": b"not a certificate"}))
    with pytest.raises(SecretInvalid, match=r"Secret creds: CA file .* holds no PEM certificate"):
        config_from_files(https, not_a_ca)
    first = SecretCredentials.of(http, secret(username=b"alice", password=b"one"))
    assert SecretCredentials.of(http, secret(username=b"alice", password=b"two")).digest != first.digest
    assert "one" not in repr(first)
    keyed = SecretCredentials.of(https, secret(**{"tls.crt": b"cert", "tls.key": b"PRIVATE"}))
    assert "PRIVATE" not in repr(keyed)


def config_from_files(etcd: OutsideEtcd, credentials: SecretCredentials) -> None:
    """Write the Secret's PEMs as the operator does and build the client config (which reads them)."""
    written = ClientCredentials()
    try:
        credentials.config(etcd, written.files("ns", "secret:creds", credentials.pems, ()))
    finally:
        written.close()


@pytest.fixture
def namespaces(api: Any) -> Iterator[tuple[str, str]]:
    core = kubernetes.client.CoreV1Api(api)
    names = (f"own-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}")
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
    yield names
    for name in names:
        core.delete_namespace(name)


@pytest.fixture
async def stores(kubeconfig: Path, etcd: LocalEtcd) -> AsyncIterator[Stores]:
    """The lock stores of a single replica (no election), reaching the sandbox's API like the operator."""
    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
    own = EtcdClient(EtcdConfig.parse(etcd.endpoints))
    made = Stores(Store(own, None, Leadership()), kube)
    yield made
    await made.close()
    await own.close()
    kube.close()


async def test_two_namespaces_naming_one_etcd_each_reach_it_with_their_own_secret_only(
    api: Any, namespaces: tuple[str, str], stores: Stores, auth_etcd: LocalEtcd
) -> None:
    own, other = namespaces
    core = kubernetes.client.CoreV1Api(api)
    right = {"stringData": {"username": "root", "password": "rootpw"}}
    wrong = {"stringData": {"username": "root", "password": "wrong"}}
    core.create_namespaced_secret(own, {"metadata": {"name": "creds"}, **right})
    core.create_namespaced_secret(other, {"metadata": {"name": "creds"}, **wrong})
    core.create_namespaced_secret(own, {"metadata": {"name": "only-in-own"}, **right})
    etcd = OutsideEtcd(tuple(auth_etcd.endpoints), "creds")
    store = await stores.for_outside(own, etcd)
    assert await stores.for_outside(own, etcd) is store  # one client per namespace, etcd and Secret
    await store.etcd.range(b"/etcdlock/locks/" + own.encode())
    # The other namespace names the very same etcd and Secret name: its own Secret is read, and refused.
    with pytest.raises(EtcdAccessDenied, match="refuses the credentials given"):
        await stores.for_outside(other, etcd)
    with pytest.raises(SecretNotFound, match=f"does not exist in namespace {other}"):
        await stores.for_outside(other, OutsideEtcd(tuple(auth_etcd.endpoints), "only-in-own"))


async def test_the_operators_own_etcd_under_another_name_is_refused_by_its_cluster_id(
    namespaces: tuple[str, str], stores: Stores, etcd: LocalEtcd
) -> None:
    """A Service's FQDN, a pod's DNS name, a ClusterIP: no address says it is the operator's etcd (here
    ``localhost`` for its ``127.0.0.1``), the cluster ID etcd answers with does."""
    alias = OutsideEtcd((f"http://localhost:{etcd.members[0].client_port}",))
    with pytest.raises(OutsideEtcdNotAllowed, match=r"the operator's own etcd \(cluster ID [0-9a-f]+\)"):
        await stores.for_outside(namespaces[0], alias)
    with pytest.raises(OutsideEtcdNotAllowed, match=r"leave spec\.etcd out to use it"):
        await stores.for_cluster(namespaces[1], alias.where)  # a pod's etcdlock.io/cluster naming it


async def test_a_pods_annotation_reaches_no_outside_etcd_the_operator_does_not_allow(
    kubeconfig: Path, etcd: LocalEtcd, namespaces: tuple[str, str], auth_etcd: LocalEtcd
) -> None:
    """Pods name their lease's etcd themselves (``etcdlock.io/cluster``): the rules locks are held to hold
    for that too, so the operator connects nowhere it would not for a lock."""
    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
    own = EtcdClient(EtcdConfig.parse(etcd.endpoints))
    turned_off = Stores(Store(own, None, Leadership()), kube, rules=OutsideRules(allowed=False))
    own_etcd = frozenset(OutsideEtcd(tuple(etcd.endpoints)).addresses)
    not_own = Stores(Store(own, None, Leadership()), kube, rules=OutsideRules(own_etcd=own_etcd))
    try:
        elsewhere = OutsideEtcd(tuple(auth_etcd.endpoints))
        with pytest.raises(OutsideEtcdNotAllowed, match="--allow-outside-etcd=false"):
            await turned_off.for_cluster(namespaces[0], elsewhere.where)
        with pytest.raises(OutsideEtcdNotAllowed, match="the operator's own etcd"):
            await not_own.for_cluster(namespaces[0], OutsideEtcd(tuple(etcd.endpoints)).where)
    finally:
        await turned_off.close()
        await not_own.close()
        await own.close()
        kube.close()
