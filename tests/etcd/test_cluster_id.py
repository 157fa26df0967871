"""Which etcd cluster a client reaches (:meth:`EtcdClient.cluster_id`), whatever address it was given: the
operator tells its own etcd from another by it, since one etcd has many names (a Service's short name and
FQDN, a pod's DNS name, a ClusterIP)."""

from __future__ import annotations

import json

from engine_support import bounded

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock_sandbox.etcd import LocalEtcd

ROOT = "root:rootpw"
ALICE = "alice:alicepw"  # may read and write under locks/ only


async def test_every_address_of_one_cluster_reads_the_id_etcdctl_shows_and_another_cluster_another(
    etcd_cluster: LocalEtcd, etcd: LocalEtcd
) -> None:
    by_address = EtcdClient(EtcdConfig.parse(etcd_cluster.endpoints[0]))
    # Another member, by another name of its address.
    by_name = EtcdClient(EtcdConfig.parse(f"http://localhost:{etcd_cluster.members[2].client_port}"))
    elsewhere = EtcdClient(EtcdConfig.parse(etcd.endpoints))
    async with by_address, by_name, elsewhere:
        first, second, other = [await bounded(c.cluster_id()) for c in (by_address, by_name, elsewhere)]
    done = etcd_cluster.etcdctl("endpoint", "status", "-w", "json")
    assert done.returncode == 0, done.stderr
    assert {s["Status"]["header"]["cluster_id"] for s in json.loads(done.stdout)} == {first}
    assert second == first
    assert other != first


async def test_a_user_without_admin_rights_reads_the_cluster_id(auth_etcd: LocalEtcd) -> None:
    """A namespace's etcd user may touch its keys only: the ID must come from an answer it gets (etcd 3.6
    answers Status to root only)."""
    async with (
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ALICE)) as alice,
        EtcdClient(EtcdConfig.parse(auth_etcd.endpoints, user=ROOT)) as root,
    ):
        assert await bounded(alice.cluster_id()) == await bounded(root.cluster_id())
