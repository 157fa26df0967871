"""Shared fixtures: real etcd processes on loopback (never a mock) and clients connected to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from etcdlock.etcd import EtcdClient, EtcdConfig, Session
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, LocalTls

AUTH_TOKEN_TTL = 2

pytest_plugins = ["etcdlock_sandbox.pytest_plugin"]


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalEtcd]:
    """One single-member etcd for the whole run; tests keep apart by using unique lock names."""
    with LocalEtcd(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[LocalEtcd]:
    """A fresh three-member etcd for failure tests (members get killed)."""
    with LocalEtcd(size=3) as cluster:
        yield cluster


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A lock name unique to the test."""
    return f"test/{request.node.name}"


@pytest.fixture
async def client(etcd: LocalEtcd) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as etcd_client:
        yield etcd_client


@pytest.fixture
async def session(client: EtcdClient) -> AsyncIterator[Session]:
    async with Session(client, ttl=10) as etcd_session:
        yield etcd_session


@pytest.fixture(scope="session")
def sandbox(k8s_sandbox: SandboxThread) -> SandboxThread:
    """The Kubernetes API emulator of etcdlock_sandbox.pytest_plugin, shared by the whole run."""
    return k8s_sandbox


@pytest.fixture(scope="session")
def kubeconfig(k8s_kubeconfig: Path) -> Path:
    """A kubeconfig file pointing at the sandbox (for kubectl and the kubernetes client)."""
    return k8s_kubeconfig


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("etcdlock-test-client")
    files = LocalTls(
        ca_file=directory / "ca.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server-key.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(files.ca_file)
    server.cert_chain_pems[0].write_to_path(files.server_cert_file)
    server.private_key_pem.write_to_path(files.server_key_file)
    client.cert_chain_pems[0].write_to_path(files.client_cert_file)
    client.private_key_pem.write_to_path(files.client_key_file)
    return files


@pytest.fixture(scope="session")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificate of a CA that signed nothing etcd uses."""
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(path)
    return path


@pytest.fixture(scope="session")
def encrypted_client_key(tls: LocalTls, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client key of ``tls``, encrypted with a passphrase (which gRPC has no way to ask for)."""
    key = serialization.load_pem_private_key(tls.client_key_file.read_bytes(), None)
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    path = tmp_path_factory.mktemp("encrypted") / "client-key.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


@pytest.fixture(scope="module")
def tls_etcd(tls: LocalTls) -> Iterator[LocalEtcd]:
    """One single-member etcd per test module that serves https and demands a client certificate."""
    with LocalEtcd(size=1, tls=tls) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[LocalEtcd]:
    """One single-member etcd per test module, with authentication on; tokens expire after 2 idle seconds.

    Users: ``root:rootpw`` (may do anything) and ``alice:alicepw`` (read and write under ``locks/`` only).
    """
    with LocalEtcd(size=1, extra_args=[f"--auth-token-ttl={AUTH_TOKEN_TTL}"]) as cluster:
        for args in (
            ["user", "add", "root:rootpw", "--interactive=false"],
            ["user", "grant-role", "root", "root"],
            ["user", "add", "alice:alicepw", "--interactive=false"],
            ["role", "add", "locker"],
            ["role", "grant-permission", "locker", "readwrite", "locks/", "--prefix=true"],
            ["user", "grant-role", "alice", "locker"],
            ["auth", "enable"],
        ):
            done = cluster.etcdctl(*args)
            assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
        yield cluster
