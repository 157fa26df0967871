"""The CRDs under crds/ and the examples under examples/: valid for Kubernetes, and served as intended.

Built-in kinds (the CRD itself, the Pod, the Job) are checked with kubernetes-validate's strict schemas,
which refuse any field Kubernetes does not define (a misspelt ``minimun`` in a CRD schema included).
Custom resources are not in those schemas: they are checked against their CRD's own ``openAPIV3Schema``
with the emulator's port of kube-apiserver's pruning, defaulting and validation. Then the real kubectl
applies the CRD and the lock examples to the API emulator, lists them with their printer columns, and has
invalid specs refused by the schema. Each kubectl test works in its own namespace with its own HOME.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from celpy.adapter import json_to_cel

from etcdlock.operator.locks import MAX_LISTED_HOLDERS, MAX_LISTED_WAITERS, LockSpec
from etcdlock_sandbox.apiserver import schema

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
MANIFESTS = sorted(
    p for p in [*CRDS.glob("*.yaml"), *EXAMPLES.glob("*.yaml")] if p.name != "kustomization.yaml"
)
# 1.30: scheduling gates (which hold annotated pods back) are GA from there on; 1.37: the newest release
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
TIMEOUT = 30.0

GROUP = "etcdlock.io"
LOCKS_CRD = f"distributedlocks.{GROUP}"
API_VERSION = f"{GROUP}/v1alpha1"
LOCK_ANNOTATION = "etcdlock.io/lock"


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"
    return docs


ALL_DOCS = [(path, doc) for path in MANIFESTS for doc in documents(path)]
DOC_IDS = [
    f"{path.parent.name}/{path.name}:{doc.get('kind')}/{doc['metadata']['name']}" for path, doc in ALL_DOCS
]
CRD_DOCS = {
    (doc["spec"]["group"], doc["spec"]["names"]["kind"]): doc
    for _, doc in ALL_DOCS
    if doc.get("kind") == "CustomResourceDefinition"
}


def custom_group(doc: dict[str, Any]) -> str | None:
    """The group of a document whose kind one of our CRDs defines (None for built-in kinds)."""
    group = str(doc["apiVersion"]).rpartition("/")[0]
    return group if (group, doc["kind"]) in CRD_DOCS else None


def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = CRD_DOCS[(group, kind)]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    assert served, f"{kind}.{group} has no served version {version}"
    openapi: dict[str, Any] = served[0]["schema"]["openAPIV3Schema"]
    return openapi


LOCK_CRD = CRD_DOCS[(GROUP, "DistributedLock")]
LOCK_VERSION = LOCK_CRD["spec"]["versions"][0]
LOCK_SCHEMA = crd_schema(GROUP, "DistributedLock", "v1alpha1")


def lock(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "DistributedLock", "metadata": {"name": name}}
    if spec is not None:
        doc["spec"] = spec
    return doc


def admitted(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What kube-apiserver stores for ``obj`` (pruned, then defaulted) and its validation problems."""
    stored = schema.apply_defaults(schema.prune(obj, LOCK_SCHEMA), LOCK_SCHEMA)
    return stored, schema.validate(stored, LOCK_SCHEMA)


# -- every document, offline ------------------------------------------------------------------------


def test_the_manifests_are_the_expected_ones() -> None:
    kinds = sorted((path.relative_to(ROOT).as_posix(), doc["kind"]) for path, doc in ALL_DOCS)
    assert kinds == [
        ("crds/distributedlock.yaml", "CustomResourceDefinition"),
        ("crds/etcdcluster.yaml", "CustomResourceDefinition"),
        ("examples/distributedlock-on-cluster.yaml", "DistributedLock"),
        ("examples/distributedlock-outside-etcd.yaml", "DistributedLock"),
        ("examples/distributedlock.yaml", "DistributedLock"),
        ("examples/etcdcluster-backup.yaml", "EtcdCluster"),
        ("examples/etcdcluster-backup.yaml", "Secret"),
        ("examples/etcdcluster-restore.yaml", "EtcdCluster"),
        ("examples/etcdcluster.yaml", "EtcdCluster"),
        ("examples/job.yaml", "Job"),
        ("examples/pod-fencing-token.yaml", "Pod"),
        ("examples/pod.yaml", "Pod"),
        ("examples/semaphore.yaml", "DistributedLock"),
    ]
    for path in MANIFESTS:
        assert path.read_text().startswith("# "), f"{path} should open with a comment saying what it is"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), ALL_DOCS, ids=DOC_IDS)
def test_every_document_validates_against_the_kubernetes_schemas(
    path: Path, doc: dict[str, Any], version: str
) -> None:
    group = custom_group(doc)
    if group is None:
        # Raises SchemaNotFoundError for a kind Kubernetes does not have, ValidationError for a bad field.
        assert kubernetes_validate.validate(doc, version, strict=True) == version
        return
    # A custom resource: its CRD's schema is the Kubernetes schema for it.
    openapi = crd_schema(group, doc["kind"], str(doc["apiVersion"]).rpartition("/")[2])
    assert schema.unknown_fields(doc, openapi) == [], f"{path}: fields the CRD would prune"
    stored = schema.apply_defaults(schema.prune(doc, openapi), openapi)
    assert schema.validate(stored, openapi) == [], path


def _misspell_scope(crd: dict[str, Any]) -> None:
    crd["spec"]["scpe"] = crd["spec"]["scope"]


def _misspell_minimum(crd: dict[str, Any]) -> None:
    permits = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    permits["permits"]["minimun"] = permits["permits"]["minimum"]


def _misspell_json_path(crd: dict[str, Any]) -> None:
    column = crd["spec"]["versions"][0]["additionalPrinterColumns"][0]
    column["jsonpath"] = column["jsonPath"]


@pytest.mark.parametrize("misspell", [_misspell_scope, _misspell_minimum, _misspell_json_path])
def test_strict_validation_refuses_a_misspelt_field_anywhere_in_the_crd(misspell: Any) -> None:
    """kubernetes-validate's strict schemas reach into openAPIV3Schema: the check above has teeth."""
    broken = copy.deepcopy(LOCK_CRD)
    misspell(broken)
    with pytest.raises(kubernetes_validate.ValidationError, match="was unexpected"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# -- the DistributedLock CRD ------------------------------------------------------------------------


def test_the_crd_names_scope_version_and_status_subresource() -> None:
    spec = LOCK_CRD["spec"]
    assert LOCK_CRD["metadata"]["name"] == LOCKS_CRD
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "DistributedLock",
        "listKind": "DistributedLockList",
        "plural": "distributedlocks",
        "singular": "distributedlock",
        "shortNames": ["dlock", "dlocks"],
        "categories": ["etcdlock"],
    }
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1alpha1", True, True)]
    assert LOCK_VERSION["subresources"] == {"status": {}}


def test_the_printer_columns() -> None:
    columns = [
        (c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
        for c in LOCK_VERSION["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Permits", "integer", ".spec.permits", 0),
        ("Holders", "string", ".status.holders[*].holder", 0),
        ("Waiters", "integer", ".status.waiterCount", 0),
        ("Token", "integer", ".status.holders[0].fencingToken", 0),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 0),
        ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', 0),
        ("Phase", "string", ".status.phase", 1),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def test_the_schema_is_structural_and_describes_every_field() -> None:
    for path, node in walk(LOCK_SCHEMA):
        assert node.get("type"), f"{path or '<root>'} has no type (not a structural schema)"
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path} keeps unknown fields"
        assert "x-kubernetes-int-or-string" not in node, path
        if path != ".metadata":
            assert node.get("description"), f"{path or '<root>'} has no description for kubectl explain"
        if node.get("type") == "array":
            assert node.get("x-kubernetes-list-type") in ("atomic", "map", "set"), path
        if "pattern" in node:
            re.compile(node["pattern"])
    status = LOCK_SCHEMA["properties"]["status"]["properties"]
    assert set(status) == {
        "phase",
        "holders",
        "holderCount",
        "waiters",
        "waiterCount",
        "podLeaseTTLSeconds",
        "observedGeneration",
        "conditions",
        "kopf",
        "lastAdminRelease",
    }
    assert set(status["kopf"]["properties"]) == {"progress", "last-handled-configuration", "dummy"}
    assert set(status["holders"]["items"]["properties"]) == {
        "holder",
        "key",
        "fencingToken",
        "leaseID",
        "since",
    }
    assert set(status["waiters"]["items"]["properties"]) == {"holder", "key", "fencingToken", "leaseID"}
    assert status["waiters"]["maxItems"] > 0
    assert status["holders"]["maxItems"] >= MAX_LISTED_HOLDERS, "every listed holder must fit"
    assert status["waiters"]["maxItems"] >= MAX_LISTED_WAITERS, "every listed waiter must fit"
    assert status["phase"]["enum"] == ["Free", "Held", "Error"]
    conditions = status["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == (
        "map",
        ["type"],
    )
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, {"permits": 1, "ttlSeconds": 30}),
        ({}, {"permits": 1, "ttlSeconds": 30}),
        ({"permits": 3}, {"permits": 3, "ttlSeconds": 30}),
        ({"ttlSeconds": 600}, {"permits": 1, "ttlSeconds": 600}),
        (
            {"clusterRef": {"name": "etcd-main"}},
            {"clusterRef": {"name": "etcd-main"}, "permits": 1, "ttlSeconds": 30},
        ),
        ({"key": "jobs/nightly"}, {"key": "jobs/nightly", "permits": 1, "ttlSeconds": 30}),
        ({"key": "/etcdlock/locks/ns/l"}, {"key": "/etcdlock/locks/ns/l", "permits": 1, "ttlSeconds": 30}),
    ],
    ids=["no-spec", "empty", "permits", "ttl", "clusterRef", "relative-key", "absolute-key"],
)
def test_defaults(spec: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """permits and ttlSeconds are schema defaults; the key is not (the operator computes it)."""
    stored, problems = admitted(lock("defaults", spec))
    assert problems == []
    assert stored["spec"] == expected


INVALID_SPECS = [
    (
        "permits-0",
        {"permits": 0},
        "spec.permits: Invalid value: 0: spec.permits in body should be greater than or equal to 1",
    ),
    (
        "permits-1001",
        {"permits": 1001},
        "spec.permits: Invalid value: 1001: spec.permits in body should be less than or equal to 1000",
    ),
    (
        "permits-string",
        {"permits": "3"},
        'spec.permits: Invalid value: "string": spec.permits in body must be of type integer: "string"',
    ),
    (
        "ttl-4",
        {"ttlSeconds": 4},
        "spec.ttlSeconds: Invalid value: 4: spec.ttlSeconds in body should be greater than or equal to 5",
    ),
    (
        "ttl-3601",
        {"ttlSeconds": 3601},
        "spec.ttlSeconds: Invalid value: 3601: spec.ttlSeconds in body should be less than or equal to 3600",
    ),
    ("clusterRef-no-name", {"clusterRef": {}}, "spec.clusterRef.name: Required value"),
    (
        "clusterRef-bad-name",
        {"clusterRef": {"name": "Etcd_Main"}},
        'spec.clusterRef.name: Invalid value: "Etcd_Main": spec.clusterRef.name in body should match',
    ),
    (
        "key-empty",
        {"key": ""},
        'spec.key: Invalid value: "": spec.key in body should be at least 1 chars long',
    ),
    (
        "key-trailing-slash",
        {"key": "/locks/a/"},
        'spec.key: Invalid value: "/locks/a/": spec.key in body should match',
    ),
    (
        "key-empty-segment",
        {"key": "locks//a"},
        'spec.key: Invalid value: "locks//a": spec.key in body should match',
    ),
    ("key-slash", {"key": "/"}, 'spec.key: Invalid value: "/": spec.key in body should match'),
    ("key-too-long", {"key": "k" * 513}, "spec.key: Too long: may not be more than 512 bytes"),
    ("etcd-no-endpoints", {"etcd": {}}, "spec.etcd.endpoints: Required value"),
    (
        "etcd-empty-endpoints",
        {"etcd": {"endpoints": []}},
        "spec.etcd.endpoints: Invalid value: 0: spec.etcd.endpoints in body should have at least 1 items",
    ),
    (
        "etcd-endpoint-without-port",
        {"etcd": {"endpoints": ["https://etcd-main-client"]}},
        'spec.etcd.endpoints[0]: Invalid value: "https://etcd-main-client": spec.etcd.endpoints[0] in body '
        "should match",
    ),
    (
        "etcd-endpoint-other-scheme",
        {"etcd": {"endpoints": ["unix://etcd:2379"]}},
        'spec.etcd.endpoints[0]: Invalid value: "unix://etcd:2379"',
    ),
    (
        "etcd-secret-bad-name",
        {"etcd": {"endpoints": ["http://etcd:2379"], "secretRef": {"name": "Etcd_Creds"}}},
        'spec.etcd.secretRef.name: Invalid value: "Etcd_Creds": spec.etcd.secretRef.name in body',
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"), [c[1:] for c in INVALID_SPECS], ids=[c[0] for c in INVALID_SPECS]
)
def test_the_schema_refuses_invalid_specs_naming_the_field(spec: dict[str, Any], message: str) -> None:
    _, problems = admitted(lock("invalid", spec))
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems


def operator_status() -> dict[str, Any]:
    """A status as the operator writes it: two holders of a permits=2 lock and one waiter (from etcdctl)."""
    key = "/etcdlock/locks/ns/nightly-report"
    return {
        "phase": "Held",
        "holders": [
            {
                "holder": "ns/nightly-report",
                "key": f"{key}/694d9a1b2c3d4e01",
                "fencingToken": 41,
                "leaseID": "694d9a1b2c3d4e01",
                "since": "2026-01-01T02:00:00Z",
            },
            {
                "holder": "ci-runner-7",
                "key": f"{key}/694d9a1b2c3d4e02",
                "fencingToken": 42,
                "leaseID": "694d9a1b2c3d4e02",
                "since": "2026-01-01T02:00:03Z",
            },
        ],
        "waiters": [
            {"holder": f"{key}/2d", "key": f"{key}/2d", "fencingToken": 57, "leaseID": "2d"},
        ],
        "waiterCount": 1,
        "podLeaseTTLSeconds": 30,
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Held",
                "message": "2/2 held, 1 waiting at " + key,
                "lastTransitionTime": "2026-01-01T02:00:03Z",
                "observedGeneration": 1,
            },
        ],
    }


def test_the_status_the_operator_writes_is_accepted_whole() -> None:
    obj = {**lock("held", {"permits": 2}), "status": operator_status()}
    assert schema.unknown_fields(obj, LOCK_SCHEMA) == []
    stored, problems = admitted(obj)
    assert problems == []
    assert stored["status"] == operator_status()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "phase",
            "Busy",
            'status.phase: Unsupported value: "Busy": supported values: "Free", "Held", "Error"',
        ),
        (
            "waiterCount",
            -1,
            "status.waiterCount: Invalid value: -1: status.waiterCount in body should be greater",
        ),
        ("holders", [{"holder": "x", "key": "k/1"}], "status.holders[0].fencingToken: Required value"),
        (
            "conditions",
            [
                {
                    "type": "Ready",
                    "status": "Yes",
                    "reason": "Held",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            'status.conditions[0].status: Unsupported value: "Yes"',
        ),
    ],
    ids=["phase", "waiterCount", "holder-without-token", "condition-status"],
)
def test_the_schema_refuses_a_malformed_status(field: str, value: Any, message: str) -> None:
    status = operator_status()
    status[field] = value
    _, problems = admitted({**lock("bad-status"), "status": status})
    assert any(p.startswith(message) for p in problems), problems


def cel_refusals(spec: dict[str, Any]) -> list[str]:
    """The messages of the CRD's x-kubernetes-validations rules (CEL, which the emulator does not evaluate)
    that ``spec`` breaks, evaluated as kube-apiserver does: each rule with ``self`` its own field."""
    environment = celpy.Environment()
    spec_schema = LOCK_SCHEMA["properties"]["spec"]
    checked = [(spec_schema, spec)]
    if "etcd" in spec:
        checked.append((spec_schema["properties"]["etcd"], spec["etcd"]))
    broken = []
    for node, value in checked:
        for rule in node.get("x-kubernetes-validations") or []:
            program = environment.program(environment.compile(rule["rule"]))
            if not program.evaluate({"self": json_to_cel(value)}):
                broken.append(rule["message"])
    return broken


@pytest.mark.parametrize(
    ("spec", "refusals"),
    [
        ({"etcd": {"endpoints": ["https://etcd-main-client:2379"], "serverName": "etcd-main"}}, []),
        ({"clusterRef": {"name": "locks-etcd"}}, []),
        (
            {"clusterRef": {"name": "locks-etcd"}, "etcd": {"endpoints": ["http://etcd:2379"]}},
            ["clusterRef and etcd both name where the lock lives; give one of them"],
        ),
        (
            {"etcd": {"endpoints": ["https://etcd-0:2379", "http://etcd-1:2379"]}},
            ["endpoints mix http:// and https://"],
        ),
        (
            {"etcd": {"endpoints": ["http://etcd:2379"], "serverName": "etcd"}},
            ["serverName needs https:// endpoints"],
        ),
    ],
)
def test_the_crd_rules_refuse_a_lock_in_two_places_and_mixed_endpoints(
    spec: dict[str, Any], refusals: list[str]
) -> None:
    assert admitted(lock("checked", spec))[1] == []  # what the schema alone lets through...
    assert cel_refusals(spec) == refusals  # ...and what its CEL rules then refuse


# -- the examples ---------------------------------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    (doc,) = documents(EXAMPLES / name)
    return doc


def test_the_examples_are_a_lock_a_semaphore_and_their_users() -> None:
    mutex, semaphore = example("distributedlock.yaml"), example("semaphore.yaml")
    assert (mutex["metadata"]["name"], mutex["spec"]["permits"]) == ("nightly-report", 1)
    assert (semaphore["metadata"]["name"], semaphore["spec"]["permits"]) == ("report-workers", 3)
    pod = example("pod.yaml")
    assert pod["metadata"]["annotations"][LOCK_ANNOTATION] == "nightly-report"
    job = example("job.yaml")
    assert job["spec"]["template"]["metadata"]["annotations"][LOCK_ANNOTATION] == "report-workers"
    assert job["spec"]["parallelism"] > semaphore["spec"]["permits"], (
        "the Job should show the semaphore at work"
    )
    for pod_spec in (pod["spec"], job["spec"]["template"]["spec"]):
        assert pod_spec["restartPolicy"] == "Never"
        for container in pod_spec["containers"]:
            assert container["image"].startswith("busybox:")
            assert re.search(r"\bsleep \d\b", " ".join(container["command"])), container["command"]
    for doc in (pod, job, mutex, semaphore):
        assert "namespace" not in doc["metadata"], "examples go to whatever namespace kubectl targets"


def test_the_outside_etcd_example_is_a_lock_the_operator_serves() -> None:
    doc = example("distributedlock-outside-etcd.yaml")
    spec = LockSpec.parse("team-a", doc["metadata"]["name"], doc["spec"])
    assert spec.etcd is not None and spec.etcd.tls and spec.etcd.secret == "etcd-main-lock-client"
    assert spec.key == "/etcdlock/locks/team-a/shard-rebalance"
    assert "namespace" not in doc["metadata"], "examples go to whatever namespace kubectl targets"


def test_the_backup_examples_restore_what_the_other_backs_up() -> None:
    secret, backed_up = documents(EXAMPLES / "etcdcluster-backup.yaml")
    (restored,) = documents(EXAMPLES / "etcdcluster-restore.yaml")
    store = backed_up["spec"]["backup"]["store"]
    assert store["secretRef"]["name"] == secret["metadata"]["name"]
    assert restored["spec"]["restore"]["store"] == store
    for doc in (secret, backed_up, restored):
        assert "namespace" not in doc["metadata"], "examples go to whatever namespace kubectl targets"


# -- the real kubectl against the emulator -------------------------------------------------------------


def run_kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=ROOT
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{' '.join(done.args)} exited {done.returncode}: {done.stderr.strip()}"
    return done.stdout


def kubectl_env(kubeconfig: Path, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}


class Kubectl:
    """kubectl with the sandbox's kubeconfig, a private HOME and the test's own namespace."""

    def __init__(self, env: dict[str, str], namespace: str, workdir: Path) -> None:
        self.env, self.namespace, self.workdir = env, namespace, workdir

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.env, f"--namespace={self.namespace}", *args)

    def out(self, *args: str) -> str:
        return ok(self(*args))

    def file(self, name: str, doc: dict[str, Any]) -> str:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(doc))
        return str(path)


def header(output: str) -> list[str]:
    return output.splitlines()[0].split()


def rows(output: str) -> dict[str, list[str]]:
    """Rows of kubectl's column output by NAME, cells split at the header's column offsets."""
    lines = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    table = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line)], strict=True)]
        table[cells[0]] = cells[1:]
    return table


@pytest.fixture(scope="module")
def lock_crd(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """crds/ applied with kubectl and Established; removed after the module if this module created it."""
    env = kubectl_env(kubeconfig, tmp_path_factory.mktemp("crds") / "home")
    applied = ok(run_kubectl(env, "apply", "-f", "crds/"))
    assert f"customresourcedefinition.apiextensions.k8s.io/{LOCKS_CRD} " in applied
    waited = ok(
        run_kubectl(env, "wait", "--for", "condition=established", f"crd/{LOCKS_CRD}", "--timeout=10s")
    )
    assert "condition met" in waited
    yield LOCKS_CRD
    if f"{LOCKS_CRD} created" in applied:
        run_kubectl(env, "delete", "crd", LOCKS_CRD, "--wait=false")


@pytest.fixture
def kubectl(
    lock_crd: str, kubeconfig: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Kubectl]:
    namespace = "manifests-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    namespace = namespace[:63].strip("-")
    env = kubectl_env(kubeconfig, tmp_path / "home")
    assert ok(run_kubectl(env, "create", "namespace", namespace)).strip() == f"namespace/{namespace} created"
    yield Kubectl(env, namespace, tmp_path)
    run_kubectl(env, "delete", "namespace", namespace, "--wait=false")


def test_kubectl_applies_the_lock_examples_and_lists_them_with_their_columns(kubectl: Kubectl) -> None:
    applied = kubectl.out("apply", "-f", "examples/distributedlock.yaml", "-f", "examples/semaphore.yaml")
    assert applied.splitlines() == [
        "distributedlock.etcdlock.io/nightly-report created",
        "distributedlock.etcdlock.io/report-workers created",
    ]
    again = kubectl.out("apply", "-f", "examples/distributedlock.yaml", "-f", "examples/semaphore.yaml")
    assert again.count("unchanged") == 2, again

    listed = kubectl.out("get", "dlock")
    assert header(listed) == ["NAME", "PERMITS", "HOLDERS", "WAITERS", "TOKEN", "READY", "REASON", "AGE"]
    table = rows(listed)
    assert sorted(table) == ["nightly-report", "report-workers"]
    assert table["nightly-report"][:4] == ["1", "", "", ""]  # no operator here: nobody holds or waits
    assert table["report-workers"][:4] == ["3", "", "", ""]

    assert header(kubectl.out("get", "dlocks", "-o", "wide")) == [
        "NAME",
        "PERMITS",
        "HOLDERS",
        "WAITERS",
        "TOKEN",
        "READY",
        "REASON",
        "PHASE",
        "AGE",
    ]
    for name in ("distributedlocks", "distributedlock", "distributedlocks.etcdlock.io"):
        assert sorted(rows(kubectl.out("get", name))) == ["nightly-report", "report-workers"], name
    # The category lists every kind of the project (kubectl get etcdlock), found through discovery.
    listed_all = kubectl.out("get", "etcdlock", "-o", "name")
    assert sorted(listed_all.split()) == [
        "distributedlock.etcdlock.io/nightly-report",
        "distributedlock.etcdlock.io/report-workers",
    ]

    stored = json.loads(kubectl.out("get", "dlock", "report-workers", "-o", "json"))
    assert stored["spec"] == {"permits": 3, "ttlSeconds": 60}
    assert stored["metadata"]["generation"] == 1
    assert "status" not in stored  # the operator writes it, through the status subresource


def test_defaults_are_applied_by_the_server(kubectl: Kubectl) -> None:
    kubectl.out("apply", "-f", kubectl.file("bare.yaml", lock("bare")))
    kubectl.out("apply", "-f", kubectl.file("keyed.yaml", lock("keyed", {"key": "jobs/nightly"})))
    bare = json.loads(kubectl.out("get", "dlock", "bare", "-o", "json"))
    assert bare["spec"] == {"permits": 1, "ttlSeconds": 30}
    keyed = json.loads(kubectl.out("get", "dlock", "keyed", "-o", "json"))
    assert keyed["spec"] == {"key": "jobs/nightly", "permits": 1, "ttlSeconds": 30}


def test_the_status_subresource_takes_the_operators_status_and_the_columns_show_it(kubectl: Kubectl) -> None:
    kubectl.out("apply", "-f", "examples/semaphore.yaml")
    status = operator_status()
    status["holders"] = status["holders"][:1]  # one holder: the HOLDERS cell is the same on every server
    patched = kubectl.out(
        "patch",
        "dlock",
        "report-workers",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    assert patched.strip() == "distributedlock.etcdlock.io/report-workers patched"
    table = rows(kubectl.out("get", "dlock", "-o", "wide"))
    assert table["report-workers"][:7] == ["3", "ns/nightly-report", "1", "41", "True", "Held", "Held"]
    stored = json.loads(kubectl.out("get", "dlock", "report-workers", "-o", "json"))
    assert stored["status"] == status
    assert stored["metadata"]["generation"] == 1  # a status write is not a spec change

    refused = kubectl(
        "patch",
        "dlock",
        "report-workers",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Busy"}}),
    )
    assert refused.returncode == 1
    assert 'status.phase: Unsupported value: "Busy"' in refused.stderr


KUBECTL_INVALID = [
    (
        "permits-0",
        {"permits": 0},
        "spec.permits: Invalid value: 0: spec.permits in body should be greater than or equal to 1",
    ),
    (
        "ttl-4",
        {"ttlSeconds": 4},
        "spec.ttlSeconds: Invalid value: 4: spec.ttlSeconds in body should be greater than or equal to 5",
    ),
    (
        "ttl-3601",
        {"ttlSeconds": 3601},
        "spec.ttlSeconds: Invalid value: 3601: spec.ttlSeconds in body should be less than or equal to 3600",
    ),
    ("clusterRef-no-name", {"clusterRef": {}}, "spec.clusterRef.name: Required value"),
    (
        "key-trailing-slash",
        {"key": "locks/a/"},
        'spec.key: Invalid value: "locks/a/": spec.key in body should match',
    ),
]


@pytest.mark.parametrize(
    ("spec", "message"), [c[1:] for c in KUBECTL_INVALID], ids=[c[0] for c in KUBECTL_INVALID]
)
def test_kubectl_apply_of_an_invalid_spec_fails_naming_the_field(
    kubectl: Kubectl, spec: dict[str, Any], message: str
) -> None:
    done = kubectl("apply", "-f", kubectl.file("invalid.yaml", lock("invalid", spec)))
    assert done.returncode == 1
    assert 'The DistributedLock "invalid" is invalid' in done.stderr
    assert message in done.stderr
    missing = kubectl("get", "dlock", "invalid")
    assert missing.returncode == 1
    assert 'distributedlocks.etcdlock.io "invalid" not found' in missing.stderr


def test_an_unknown_spec_field_is_refused_under_kubectls_strict_validation(kubectl: Kubectl) -> None:
    """kubectl asks for ``fieldValidation=Strict``; like kube-apiserver, the server refuses the typo."""
    done = kubectl("apply", "-v=6", "-f", kubectl.file("typo.yaml", lock("typo", {"permitz": 2})))
    assert "fieldValidation=Strict" in done.stderr
    assert done.returncode == 1
    assert 'strict decoding error: unknown field "spec.permitz"' in done.stderr
    assert kubectl("get", "dlock", "typo").returncode == 1
