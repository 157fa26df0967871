"""`etcdlock status NAME` of a name with no keys, when the current kube context has a DistributedLock NAME:
the hint names that lock's key (its spec.key, or the default). Any failure to ask Kubernetes (no
kubeconfig, the API unreachable, no such lock, no kubernetes package) leaves the generic hint."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from cli_support import EXIT_TIMEOUT, Cli, clean_env
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from etcdlock.operator.names import GROUP, LOCKS, VERSION
from etcdlock_sandbox.cluster import CONTEXT, SandboxThread
from etcdlock_sandbox.etcd import free_port

ROOT = Path(__file__).resolve().parents[2]


def generic_hint(name: str) -> str:
    return (
        f"etcdlock: nothing is under {name}/ in etcd: if {name} is a DistributedLock's name, its key is "
        f"/etcdlock/locks/<namespace>/{name} unless its spec.key says otherwise (see kubectl get dlock -A)"
    )


@pytest.fixture(scope="module")
def kube(kubeconfig: Path) -> ApiClient:
    """The sandbox API, with the DistributedLock CRD (created by an earlier module of the run, maybe)."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    crd = yaml.safe_load((ROOT / "crds" / "distributedlock.yaml").read_text())
    try:
        kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    return client


@pytest.fixture
def namespace(kube: ApiClient) -> Iterator[str]:
    name = f"hint-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def context(sandbox: SandboxThread, namespace: str, tmp_path: Path) -> Path:
    """A kubeconfig whose current context is the sandbox, in the test's namespace."""
    return sandbox.write_kubeconfig(tmp_path / "kubeconfig", namespace)


def create_lock(kube: ApiClient, namespace: str, name: str, spec: dict[str, object]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DistributedLock", "metadata": {"name": name}}
    kubernetes.client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, LOCKS, {**body, "spec": spec}
    )


def status_stderr(cli: Cli, name: str, kubeconfig: Path | str) -> list[str]:
    proc = cli.etcdlock("status", name, "-o", "json", env=clean_env(KUBECONFIG=str(kubeconfig)))
    assert proc.wait() == 0, proc.describe()
    assert json.loads(proc.stdout)["holders"] == []
    return proc.stderr.splitlines()


@pytest.mark.parametrize("spec_key", [None, "elsewhere"])
def test_a_distributed_locks_name_gets_its_key_from_the_kube_context(
    cli: Cli, kube: ApiClient, namespace: str, context: Path, spec_key: str | None
) -> None:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    key = f"/etcdlock/locks/{namespace}/{spec_key or name}"
    create_lock(kube, namespace, name, {"key": key} if spec_key else {})
    assert status_stderr(cli, name, context) == [
        f"etcdlock: no keys under {name}/; DistributedLock {namespace}/{name} in kube context {CONTEXT} "
        f"keeps its lock at {key}: etcdlock status {key}"
    ]

    # The command the hint gives shows the lock's holder.
    holder = cli.etcdlock("lock", key, "--holder", "hint-test")
    holder.readlines(2)
    assert [h["holder"] for h in cli.status(key)["holders"]] == ["hint-test"]


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ({"clusterRef": {"name": "locks-etcd"}}, "the etcd of EtcdCluster locks-etcd"),
        (
            {"etcd": {"endpoints": ["https://etcd-a.db.svc:2379", "https://etcd-b.db.svc:2379"]}},
            "the etcd at https://etcd-a.db.svc:2379,https://etcd-b.db.svc:2379",
        ),
    ],
)
def test_the_hint_names_the_etcd_that_keeps_a_lock_outside_the_operators(
    cli: Cli, kube: ApiClient, namespace: str, context: Path, where: dict[str, object], said: str
) -> None:
    name = f"far-{uuid.uuid4().hex[:8]}"
    create_lock(kube, namespace, name, where)
    key = f"/etcdlock/locks/{namespace}/{name}"
    assert status_stderr(cli, name, context) == [
        f"etcdlock: no keys under {name}/; DistributedLock {namespace}/{name} in kube context {CONTEXT} "
        f"keeps its lock at {key} in {said}: etcdlock status {key}"
    ]


def test_a_name_with_no_distributed_lock_in_the_context_gets_the_generic_hint(
    cli: Cli, kube: ApiClient, namespace: str, context: Path
) -> None:
    name = f"absent-{uuid.uuid4().hex[:8]}"
    create_lock(kube, namespace, f"other-{name}", {})
    assert status_stderr(cli, name, context) == [generic_hint(name)]


def test_without_a_kubeconfig_the_generic_hint_stays(cli: Cli, tmp_path: Path) -> None:
    name = f"nokube-{uuid.uuid4().hex[:8]}"
    assert status_stderr(cli, name, tmp_path / "no-such-kubeconfig") == [generic_hint(name)]


def test_an_unreachable_api_leaves_the_generic_hint(cli: Cli, sandbox: SandboxThread, tmp_path: Path) -> None:
    """The kubeconfig names an API server where nothing listens: the look-up fails, silently."""
    name = f"down-{uuid.uuid4().hex[:8]}"
    kubeconfig = sandbox.write_kubeconfig(tmp_path / "kubeconfig")
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{free_port()}"
    kubeconfig.write_text(json.dumps(config))
    assert status_stderr(cli, name, kubeconfig) == [generic_hint(name)]


def test_without_the_kubernetes_package_the_generic_hint_stays(
    cli: Cli, kube: ApiClient, namespace: str, context: Path
) -> None:
    """As on a plain `pip install etcdlock`: the kubernetes module is absent (an import of it fails)."""
    name = f"plain-{uuid.uuid4().hex[:8]}"
    create_lock(kube, namespace, name, {})
    run = (
        "import sys; sys.modules['kubernetes'] = None; "
        "from etcdlock.cli.main import run; sys.exit(run(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, "--endpoints", cli.endpoints, "status", name],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
        env=clean_env(KUBECONFIG=str(context)),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [generic_hint(name)]
