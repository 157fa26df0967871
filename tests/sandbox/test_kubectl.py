"""The real kubectl against the API emulator: what someone types after ``etcdlock sandbox up``.

Every test works in its own namespace (made with ``kubectl create namespace``) and gives kubectl its own
HOME, so kubectl's discovery cache never carries over between tests or runs. No flag that weakens kubectl
(``--validate=false`` and the like) is used: what passes here passes for a user of the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from etcdlock_sandbox.etcd import etcd_binary

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
TIMEOUT = 30.0
GROUP = "kubectl.sandbox.example.com"
WIDGETS = f"widgets.{GROUP}"

WIDGET_CRD = f"""\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {WIDGETS}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}}
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {{}}
        scale: {{specReplicasPath: .spec.size, statusReplicasPath: .status.ready}}
      additionalPrinterColumns:
        - {{name: Size, type: integer, jsonPath: .spec.size}}
        - {{name: Color, type: string, jsonPath: .spec.color}}
        - {{name: Phase, type: string, jsonPath: .status.phase}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {{type: integer, minimum: 1, maximum: 10}}
                color: {{type: string, enum: [red, green, blue]}}
            status:
              type: object
              properties:
                phase: {{type: string}}
                ready: {{type: integer}}
"""


def widget(name: str, size: int = 3, color: str = "red") -> str:
    return f"""\
apiVersion: {GROUP}/v1
kind: Widget
metadata:
  name: {name}
spec:
  size: {size}
  color: {color}
"""


def gated_pod(name: str, labels: str = "app: demo", gated: bool = True) -> str:
    gates = "  schedulingGates:\n    - name: example.com/hold\n" if gated else ""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
{gates}  containers:
    - name: main
      image: busybox
      command: [sleep, "3600"]
"""


def run_kubectl(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def kubectl_env(kubeconfig: Path, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}


class Kubectl:
    """kubectl with the sandbox's kubeconfig, a private HOME and ``--namespace`` set to the test's own."""

    def __init__(self, env: dict[str, str], namespace: str, workdir: Path) -> None:
        self.env = env
        self.namespace = namespace
        self.workdir = workdir

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.env, f"--namespace={self.namespace}", *args, check=check)

    def out(self, *args: str) -> str:
        return self(*args).stdout

    def start(self, *args: str) -> subprocess.Popen[str]:
        """kubectl in the background (for ``kubectl wait`` while the test changes the object)."""
        return subprocess.Popen(
            [KUBECTL, f"--namespace={self.namespace}", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def file(self, name: str, text: str) -> str:
        path = self.workdir / name
        path.write_text(text)
        return str(path)


def table(output: str) -> list[dict[str, str]]:
    """The rows of kubectl's column output, keyed by header; cells are cut at the header's offsets."""
    lines = [line for line in output.splitlines() if line.strip()]
    starts = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    rows = []
    for line in lines[1:]:
        ends = [s for s, _ in starts[1:]] + [len(line)]
        rows.append({h: line[s:e].strip() for (s, h), e in zip(starts, ends, strict=True)})
    return rows


def header(output: str) -> list[str]:
    return re.findall(r"\S+(?: \S+)*", output.splitlines()[0])


def wait_for_watch(process: subprocess.Popen[str]) -> str:
    """Read a ``-v=6`` kubectl's log until it has opened its watch (bounded by kubectl's own --timeout).

    Changes made after that are seen by the watch; changes made before kubectl's first read are not.
    """
    assert process.stderr is not None
    seen = ""
    for line in process.stderr:
        seen += line
        if "watch=true" in line:
            return seen
    raise AssertionError(f"kubectl ended before it watched: {seen}")


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def widgets_crd(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Widget CRD, applied with kubectl and waited for until Established; deleted after the module."""
    workdir = tmp_path_factory.mktemp("widgets-crd")
    env = kubectl_env(kubeconfig, workdir / "home")
    (workdir / "crd.yaml").write_text(WIDGET_CRD)
    applied = run_kubectl(env, "apply", "-f", str(workdir / "crd.yaml"))
    assert f"customresourcedefinition.apiextensions.k8s.io/{WIDGETS} created" in applied.stdout
    waited = run_kubectl(env, "wait", "--for", "condition=established", f"crd/{WIDGETS}", "--timeout=10s")
    assert "condition met" in waited.stdout
    yield WIDGETS
    run_kubectl(env, "delete", "crd", WIDGETS, "--wait=false", check=False)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kubectl]:
    namespace = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:55].strip("-")
    env = kubectl_env(kubeconfig, tmp_path / "home")
    created = run_kubectl(env, "create", "namespace", namespace)
    assert created.stdout.strip() == f"namespace/{namespace} created"
    yield Kubectl(env, namespace, tmp_path)
    run_kubectl(env, "delete", "namespace", namespace, "--wait=false", check=False)


def test_get_prints_namespaces_and_pods_in_every_output_format(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("pod.yaml", gated_pod("web")))

    namespaces = kubectl.out("get", "namespaces")
    assert header(namespaces) == ["NAME", "STATUS", "AGE"]
    statuses = {row["NAME"]: row["STATUS"] for row in table(namespaces)}
    assert (statuses["default"], statuses[kubectl.namespace]) == ("Active", "Active")

    pods = kubectl.out("get", "pods")
    assert header(pods) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    [row] = table(pods)
    assert (row["NAME"], row["READY"], row["STATUS"], row["RESTARTS"]) == (
        "web",
        "0/1",
        "SchedulingGated",
        "0",
    )

    wide = kubectl.out("get", "pods", "-o", "wide")
    assert header(wide) == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
    ]
    assert table(wide)[0]["NODE"] == "<none>"

    listed = json.loads(kubectl.out("get", "pods", "-o", "json"))
    assert listed["kind"] == "List"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["web"]

    pod = yaml.safe_load(kubectl.out("get", "pod", "web", "-o", "yaml"))
    assert (pod["kind"], pod["metadata"]["namespace"]) == ("Pod", kubectl.namespace)
    assert pod["spec"]["schedulingGates"] == [{"name": "example.com/hold"}]
    assert pod["status"]["phase"] == "Pending"
    assert {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}.items() <= pod["status"][
        "conditions"
    ][0].items()

    assert kubectl.out("get", "pods", "-o", "name").split() == ["pod/web"]

    everywhere = kubectl.out("get", "pods", "-A")
    assert header(everywhere)[:2] == ["NAMESPACE", "NAME"]
    assert [row["NAME"] for row in table(everywhere) if row["NAMESPACE"] == kubectl.namespace] == ["web"]

    missing = kubectl("get", "pod", "nothing-here", check=False)
    assert missing.returncode == 1
    assert 'pods "nothing-here" not found' in missing.stderr


def test_a_crd_applied_with_kubectl_becomes_established_and_its_names_are_served(kubectl: Kubectl) -> None:
    name = f"gadgets.{GROUP}"
    crd = WIDGET_CRD.replace(WIDGETS, name).replace("widget", "gadget").replace("Widget", "Gadget")
    crd = crd.replace("wdg", "gdg")
    path = kubectl.file("crd.yaml", crd)

    assert (
        kubectl.out("apply", "-f", path).strip()
        == f"customresourcedefinition.apiextensions.k8s.io/{name} created"
    )
    waited = kubectl("wait", "--for", "condition=established", f"crd/{name}", "--timeout=10s")
    assert waited.stdout.strip() == f"customresourcedefinition.apiextensions.k8s.io/{name} condition met"
    assert name in [row["NAME"] for row in table(kubectl.out("get", "crd"))]
    assert name in kubectl.out("get", "crds", "-o", "name")

    resources = table(kubectl.out("api-resources", f"--api-group={GROUP}"))
    assert {
        "NAME": "gadgets",
        "SHORTNAMES": "gdg",
        "APIVERSION": f"{GROUP}/v1",
        "KIND": "Gadget",
    }.items() <= (next(row for row in resources if row["NAME"] == "gadgets").items())
    kubectl("apply", "-f", kubectl.file("g.yaml", widget("g1").replace("Widget", "Gadget")))
    assert kubectl.out("get", "gdg", "-o", "name").split() == [f"gadget.{GROUP}/g1"]

    deleted = kubectl("delete", "-f", path, "--wait", "--timeout=10s")
    assert deleted.stdout.strip() == f'customresourcedefinition.apiextensions.k8s.io "{name}" deleted'
    gone = kubectl("get", "gadgets", check=False)
    assert gone.returncode == 1
    # With discovery cached, kubectl's list gets a 404; a fresh discovery no longer names gadgets.
    assert "could not find the requested resource (gadgets)" in gone.stderr
    fresh = kubectl("get", "gadgets", f"--cache-dir={kubectl.workdir / 'fresh-cache'}", check=False)
    assert fresh.returncode == 1
    assert 'the server doesn\'t have a resource type "gadgets"' in fresh.stderr


def test_applying_a_custom_resource_twice_is_unchanged_and_a_change_is_configured(
    kubectl: Kubectl, widgets_crd: str
) -> None:
    path = kubectl.file("widget.yaml", widget("alpha", size=3))
    assert kubectl.out("apply", "-f", path).strip() == f"widget.{GROUP}/alpha created"
    assert kubectl.out("apply", "-f", path).strip() == f"widget.{GROUP}/alpha unchanged"

    kubectl.file("widget.yaml", widget("alpha", size=7, color="blue"))
    assert kubectl.out("apply", "-f", path).strip() == f"widget.{GROUP}/alpha configured"
    spec = json.loads(kubectl.out("get", "widget", "alpha", "-o", "jsonpath={.spec}"))
    assert spec == {"size": 7, "color": "blue"}
    applied = json.loads(
        kubectl.out(
            "get",
            "widget",
            "alpha",
            "-o",
            "jsonpath={.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}",
        )
    )
    assert applied["spec"] == {"size": 7, "color": "blue"}
    assert kubectl.out("get", "widget", "alpha", "-o", "jsonpath={.metadata.generation}") == "2"


def test_a_custom_resource_that_breaks_the_crd_schema_is_rejected_naming_the_field(
    kubectl: Kubectl, widgets_crd: str
) -> None:
    too_small = kubectl("apply", "-f", kubectl.file("small.yaml", widget("small", size=0)), check=False)
    assert too_small.returncode == 1
    assert "spec.size" in too_small.stderr
    assert "greater than or equal to 1" in too_small.stderr

    off_palette = kubectl(
        "apply", "-f", kubectl.file("purple.yaml", widget("purple", color="purple")), check=False
    )
    assert off_palette.returncode == 1
    assert "spec.color" in off_palette.stderr
    assert 'Unsupported value: "purple"' in off_palette.stderr

    nothing = kubectl("get", "widgets", check=False)
    assert nothing.stdout == ""
    assert f"No resources found in {kubectl.namespace} namespace." in nothing.stderr


def test_applying_a_configmap_and_a_gated_pod_twice_then_changing_them(kubectl: Kubectl) -> None:
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: {mode}\n"
    path = kubectl.file("cm.yaml", configmap.format(mode="fast"))
    assert kubectl.out("apply", "-f", path).strip() == "configmap/settings created"
    assert kubectl.out("apply", "-f", path).strip() == "configmap/settings unchanged"
    kubectl.file("cm.yaml", configmap.format(mode="safe"))
    assert kubectl.out("apply", "-f", path).strip() == "configmap/settings configured"
    assert kubectl.out("get", "configmap", "settings", "-o", "jsonpath={.data.mode}") == "safe"

    pod = kubectl.file("pod.yaml", gated_pod("worker", labels="app: demo"))
    assert kubectl.out("apply", "-f", pod).strip() == "pod/worker created"
    assert kubectl.out("apply", "-f", pod).strip() == "pod/worker unchanged"
    kubectl.file("pod.yaml", gated_pod("worker", labels="app: demo, tier: back"))
    changed = kubectl("apply", "-f", pod, "-v=8")
    assert changed.stdout.strip() == "pod/worker configured"
    # kubectl sends built-in kinds a strategic merge patch (it knows their Go types).
    assert re.search(r"PATCH http://\S+/api/v1/namespaces/\S+/pods/worker", changed.stderr)
    assert "Content-Type: application/strategic-merge-patch+json" in changed.stderr
    labels = json.loads(kubectl.out("get", "pod", "worker", "-o", "jsonpath={.metadata.labels}"))
    assert labels == {"app": "demo", "tier": "back"}
    assert table(kubectl.out("get", "pods"))[0]["STATUS"] == "SchedulingGated"

    # Dropping the gate from the manifest: the patch deletes the list, and the pod may be scheduled (the
    # sandbox's pretend kubelet then runs it).
    kubectl.file("pod.yaml", gated_pod("worker", labels="app: demo, tier: back", gated=False))
    assert kubectl.out("apply", "-f", pod).strip() == "pod/worker configured"
    assert table(kubectl.out("get", "pods"))[0]["STATUS"] in ("Pending", "Running")
    assert kubectl.out("get", "pod", "worker", "-o", "jsonpath={.spec.schedulingGates}") == ""
    # ... and a gate can never be added back (422, as in Kubernetes).
    kubectl.file("pod.yaml", gated_pod("worker", labels="app: demo, tier: back"))
    regated = kubectl("apply", "-f", pod, check=False)
    assert regated.returncode == 1
    assert "spec.schedulingGates: Forbidden" in regated.stderr


def test_annotate_and_label_then_select_by_label(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl("apply", "-f", kubectl.file("a.yaml", widget("first") + "---\n" + widget("second")))

    assert kubectl.out("annotate", "widget", "first", "example.com/note=hello").strip() == (
        f"widget.{GROUP}/first annotated"
    )
    assert (
        kubectl.out("get", "widget", "first", "-o", "jsonpath={.metadata.annotations.example\\.com/note}")
        == "hello"
    )
    assert kubectl.out("label", "widget", "first", "tier=gold").strip() == f"widget.{GROUP}/first labeled"
    kubectl("label", "widget", "second", "tier=silver")

    def names(selector: str) -> list[str]:
        return kubectl.out("get", "widgets", "-l", selector, "-o", "name").split()

    assert names("tier=gold") == [f"widget.{GROUP}/first"]
    assert names("tier!=gold") == [f"widget.{GROUP}/second"]
    assert sorted(names("tier in (gold,silver)")) == [f"widget.{GROUP}/first", f"widget.{GROUP}/second"]
    assert names("tier notin (gold)") == [f"widget.{GROUP}/second"]

    refused = kubectl("label", "widget", "second", "tier=gold", check=False)
    assert refused.returncode == 1
    assert "already has a value (silver)" in refused.stderr
    kubectl("label", "widget", "second", "tier=gold", "--overwrite")
    assert len(names("tier=gold")) == 2
    kubectl("label", "widget", "first", "tier-")
    assert names("!tier") == [f"widget.{GROUP}/first"]
    kubectl("annotate", "widget", "first", "example.com/note-")
    annotations = json.loads(kubectl.out("get", "widget", "first", "-o", "jsonpath={.metadata.annotations}"))
    assert list(annotations) == ["kubectl.kubernetes.io/last-applied-configuration"]


def test_patch_as_merge_json_and_strategic_merge(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl("apply", "-f", kubectl.file("w.yaml", widget("gizmo", size=2, color="red")))

    merged = kubectl("patch", "widget", "gizmo", "--type", "merge", "-p", '{"spec":{"color":"green"}}')
    assert merged.stdout.strip() == f"widget.{GROUP}/gizmo patched"
    replaced = '[{"op":"test","path":"/spec/size","value":2},{"op":"replace","path":"/spec/size","value":9}]'
    kubectl("patch", "widget", "gizmo", "--type", "json", "-p", replaced)
    assert json.loads(kubectl.out("get", "widget", "gizmo", "-o", "jsonpath={.spec}")) == {
        "size": 9,
        "color": "green",
    }
    failed_test = kubectl(
        "patch",
        "widget",
        "gizmo",
        "--type",
        "json",
        "-p",
        '[{"op":"test","path":"/spec/size","value":2}]',
        check=False,
    )
    assert failed_test.returncode == 1
    # Word for word what kubectl prints for kube-apiserver's answer to a failed test operation.
    assert failed_test.stderr.strip() == (
        "The request is invalid: the server rejected our request due to an error in our request"
    )
    out_of_range = kubectl(
        "patch", "widget", "gizmo", "--type", "merge", "-p", '{"spec":{"size":11}}', check=False
    )
    assert out_of_range.returncode == 1
    assert "spec.size" in out_of_range.stderr

    # No --type: a strategic merge patch, kubectl's default for built-in kinds. Containers merge by name.
    kubectl("apply", "-f", kubectl.file("pod.yaml", gated_pod("runner")))
    patch = json.dumps(
        {
            "metadata": {"labels": {"role": "batch"}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
        }
    )
    strategic = kubectl("patch", "pod", "runner", "-p", patch)
    assert strategic.stdout.strip() == "pod/runner patched"
    pod = json.loads(kubectl.out("get", "pod", "runner", "-o", "json"))
    assert pod["metadata"]["labels"] == {"app": "demo", "role": "batch"}
    [container] = pod["spec"]["containers"]
    assert (container["image"], container["command"]) == ("busybox:1.36", ["sleep", "3600"])


def test_scale_a_custom_resource_through_its_scale_subresource(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl("apply", "-f", kubectl.file("w.yaml", widget("scaled", size=2)))

    scaled = kubectl("scale", "widget", "scaled", "--replicas=5")
    assert scaled.stdout.strip() == f"widget.{GROUP}/scaled scaled"
    assert kubectl.out("get", "widget", "scaled", "-o", "jsonpath={.spec.size}") == "5"
    # --current-replicas reads the Scale first and writes it back with its resourceVersion.
    kubectl("scale", "widget", "scaled", "--current-replicas=5", "--replicas=4")
    mismatch = kubectl("scale", "widget", "scaled", "--current-replicas=9", "--replicas=1", check=False)
    assert mismatch.returncode == 1 and "Expected replicas to be 9, was 4" in mismatch.stderr
    refused = kubectl("scale", "widget", "scaled", "--replicas=11", check=False)
    assert refused.returncode == 1 and "spec.size" in refused.stderr
    assert kubectl.out("get", "widget", "scaled", "-o", "jsonpath={.spec.size}") == "4"


def test_delete_waits_for_finalizers_and_deletes_from_a_file(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl("apply", "-f", kubectl.file("w.yaml", widget("held")))
    kubectl(
        "patch", "widget", "held", "--type", "merge", "-p", '{"metadata":{"finalizers":["example.com/hold"]}}'
    )
    deleting = kubectl("delete", "widget", "held", "--wait=false")
    assert deleting.stdout.strip() == f'widget.{GROUP} "held" deleted'
    assert kubectl.out("get", "widget", "held", "-o", "jsonpath={.metadata.deletionTimestamp}") != ""

    waiter = kubectl.start("wait", "--for=delete", "widget/held", "--timeout=20s", "-v=6")
    watching = wait_for_watch(waiter)
    kubectl(
        "patch", "widget", "held", "--type", "json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]'
    )
    code, stdout, stderr = finish(waiter)
    assert code == 0, watching + stderr
    assert stdout.strip() == f"widget.{GROUP}/held condition met"
    assert kubectl("get", "widget", "held", check=False).returncode == 1

    manifest = kubectl.file(
        "both.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: doomed\ndata:\n  a: b\n---\n" + widget("doomed"),
    )
    kubectl("apply", "-f", manifest)
    deleted = kubectl("delete", "-f", manifest, "--wait", "--timeout=10s")
    assert deleted.stdout.splitlines() == ['configmap "doomed" deleted', f'widget.{GROUP} "doomed" deleted']
    for kind in ("configmap", "widget"):
        gone = kubectl("get", kind, "doomed", check=False)
        assert gone.returncode == 1
        assert "NotFound" in gone.stderr

    kubectl("apply", "-f", kubectl.file("pod.yaml", gated_pod("brief")))
    assert kubectl.out("delete", "pod", "brief", "--wait").strip() == 'pod "brief" deleted'
    already = kubectl("wait", "--for=delete", "pod/brief", "--timeout=5s", check=False)
    assert already.returncode == 0, already.stderr


def test_wait_for_a_jsonpath_on_a_custom_resources_status(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl("apply", "-f", kubectl.file("w.yaml", widget("rocket")))
    waiter = kubectl.start("wait", "--for=jsonpath={.status.phase}=Ready", "widget/rocket", "--timeout=20s")
    # The main endpoint ignores status when the CRD has the status subresource: still not Ready.
    kubectl("patch", "widget", "rocket", "--type", "merge", "-p", '{"status":{"phase":"Ready"}}')
    assert kubectl.out("get", "widget", "rocket", "-o", "jsonpath={.status.phase}") == ""
    assert waiter.poll() is None, finish(waiter)
    kubectl(
        "patch",
        "widget",
        "rocket",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        '{"status":{"phase":"Ready"}}',
    )
    code, stdout, stderr = finish(waiter)
    assert code == 0, stderr
    assert stdout.strip() == f"widget.{GROUP}/rocket condition met"

    timed_out = kubectl(
        "wait", "--for=jsonpath={.status.phase}=Done", "widget/rocket", "--timeout=1s", check=False
    )
    assert timed_out.returncode == 1
    assert "timed out" in timed_out.stderr


def test_get_custom_resources_prints_the_crds_printer_columns(kubectl: Kubectl, widgets_crd: str) -> None:
    kubectl(
        "apply",
        "-f",
        kubectl.file("w.yaml", widget("big", size=9, color="blue") + "---\n" + widget("tiny", size=1)),
    )
    kubectl(
        "patch",
        "widget",
        "big",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        '{"status":{"phase":"Ready"}}',
    )

    for resource in ("widgets", "widget", "wdg", WIDGETS):
        printed = kubectl.out("get", resource)
        assert header(printed) == ["NAME", "SIZE", "COLOR", "PHASE"], resource
        assert table(printed) == [
            {"NAME": "big", "SIZE": "9", "COLOR": "blue", "PHASE": "Ready"},
            {"NAME": "tiny", "SIZE": "1", "COLOR": "red", "PHASE": ""},
        ], resource

    everywhere = kubectl.out("get", "wdg", "-A")
    assert header(everywhere) == ["NAMESPACE", "NAME", "SIZE", "COLOR", "PHASE"]
    mine = [row for row in table(everywhere) if row["NAMESPACE"] == kubectl.namespace]
    assert [(row["NAME"], row["SIZE"], row["PHASE"]) for row in mine] == [
        ("big", "9", "Ready"),
        ("tiny", "1", ""),
    ]


def test_create_configmap_from_literals_and_get_events(kubectl: Kubectl) -> None:
    created = kubectl(
        "create", "configmap", "greeting", "--from-literal=text=hello", "--from-literal=lang=en"
    )
    assert created.stdout.strip() == "configmap/greeting created"
    assert json.loads(kubectl.out("get", "configmap", "greeting", "-o", "jsonpath={.data}")) == {
        "text": "hello",
        "lang": "en",
    }
    assert {"NAME": "greeting", "DATA": "2"}.items() <= table(kubectl.out("get", "cm", "greeting"))[0].items()
    kubectl("create", "secret", "generic", "token", "--from-literal=value=s3cret")
    assert {"NAME": "token", "TYPE": "Opaque", "DATA": "1"}.items() <= table(kubectl.out("get", "secret"))[
        0
    ].items()

    none = kubectl("get", "events")
    assert none.stdout == ""
    assert f"No resources found in {kubectl.namespace} namespace." in none.stderr

    event = f"""\
apiVersion: v1
kind: Event
metadata:
  name: greeting.hello
involvedObject: {{apiVersion: v1, kind: ConfigMap, name: greeting, namespace: {kubectl.namespace}}}
reason: Greeted
message: said hello
type: Normal
count: 1
source: {{component: kubectl-test}}
"""
    kubectl("apply", "-f", kubectl.file("event.yaml", event))
    events = kubectl.out("get", "events")
    assert header(events) == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    [row] = table(events)
    assert (row["TYPE"], row["REASON"], row["OBJECT"], row["MESSAGE"]) == (
        "Normal",
        "Greeted",
        "configmap/greeting",
        "said hello",
    )
    assert table(kubectl.out("get", "events", "-o", "wide"))[0]["SOURCE"] == "kubectl-test"
    assert kubectl.out("get", "events", "--field-selector", "reason=Greeted", "-o", "name").split() == [
        "event/greeting.hello"
    ]
    assert kubectl("get", "events", "--field-selector", "reason=Other").stdout == ""


def test_every_example_applies_after_the_crds(kubectl: Kubectl) -> None:
    """``kubectl apply -f crds/`` then ``-f examples/``: every example is created (the Job too: batch/v1)."""
    root = Path(__file__).resolve().parents[2]
    kubectl("apply", "-f", str(root / "crds"))
    kubectl("wait", "--for", "condition=established", "crd/distributedlocks.etcdlock.io", "--timeout=10s")
    created = kubectl("apply", "-f", str(root / "examples")).stdout.splitlines()
    for expected in (
        "job.batch/report-shards created",
        "pod/nightly-report created",
        "etcdcluster.etcdlock.io/locks-etcd created",
    ):
        assert expected in created, created
    examples = sorted((root / "examples").glob("*.yaml"))
    documents = [d for f in examples for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(created) == len(documents), created  # one "created" line each
    locks = sum(d["kind"] == "DistributedLock" for d in documents)
    assert sum(line.startswith("distributedlock.etcdlock.io/") for line in created) == locks


def read_lines(process: subprocess.Popen[str], count: int, until: str = "") -> list[str]:
    """The first ``count`` lines of a background kubectl's output (or its lines up to one containing
    ``until``); the process is killed if they do not come within TIMEOUT."""
    assert process.stdout is not None
    timer = threading.Timer(TIMEOUT, process.kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if (until and until in line) or (not until and len(lines) == count):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"kubectl ended (or was stopped after {TIMEOUT}s) before printing it: {lines}")


def stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate(timeout=TIMEOUT)


def test_get_watch_prints_the_columns_of_every_later_event(kubectl: Kubectl, widgets_crd: str) -> None:
    """Watch events come as tables (kubectl asks for them): later rows have the CRD's columns too."""
    kubectl("apply", "-f", kubectl.file("w.yaml", widget("first", size=2)))
    watching = kubectl.start("get", "widgets", "--watch", "--output-watch-events", "-v=6")
    try:
        wait_for_watch(watching)
        kubectl("patch", "widget", "first", "--type=merge", "-p", '{"spec":{"size":7,"color":"green"}}')
        kubectl("apply", "-f", kubectl.file("w2.yaml", widget("second", size=4, color="blue")))
        kubectl("delete", "widget", "first")
        lines = read_lines(watching, 5)
    finally:
        stop(watching)
    assert header(lines[0]) == ["EVENT", "NAME", "SIZE", "COLOR", "PHASE"]
    assert table("\n".join(lines)) == [
        {"EVENT": "ADDED", "NAME": "first", "SIZE": "2", "COLOR": "red", "PHASE": ""},
        {"EVENT": "MODIFIED", "NAME": "first", "SIZE": "7", "COLOR": "green", "PHASE": ""},
        {"EVENT": "ADDED", "NAME": "second", "SIZE": "4", "COLOR": "blue", "PHASE": ""},
        {"EVENT": "DELETED", "NAME": "first", "SIZE": "7", "COLOR": "green", "PHASE": ""},
    ]


def test_get_watch_of_pods_prints_their_status_columns(kubectl: Kubectl) -> None:
    watching = kubectl.start("get", "pods", "--watch", "-v=6")
    try:
        wait_for_watch(watching)
        kubectl("apply", "-f", kubectl.file("pod.yaml", gated_pod("held")))
        lines = read_lines(watching, 2)
    finally:
        stop(watching)
    assert header(lines[0]) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table("\n".join(lines))[0] | {"AGE": ""} == {
        "NAME": "held",
        "READY": "0/1",
        "STATUS": "SchedulingGated",
        "RESTARTS": "0",
        "AGE": "",
    }


def test_sort_by_orders_rows_by_any_field_of_the_objects(kubectl: Kubectl, widgets_crd: str) -> None:
    """``--sort-by`` needs the whole objects in the table's rows (kubectl asks for includeObject=Object)."""
    sizes = {"alpha": 5, "bravo": 2, "charlie": 9}
    kubectl(
        "apply",
        "-f",
        kubectl.file("w.yaml", "---\n".join(widget(name, size=size) for name, size in sizes.items())),
    )
    by_size = kubectl.out("get", "widgets", "--sort-by=.spec.size")
    assert [(row["NAME"], row["SIZE"]) for row in table(by_size)] == [
        ("bravo", "2"),
        ("alpha", "5"),
        ("charlie", "9"),
    ]
    pods = [("a-pod", "zeta"), ("b-pod", "alpha")]
    for name, image in pods:
        kubectl("run", name, f"--image={image}", "--restart=Never")
    by_image = kubectl.out("get", "pods", "--sort-by=.spec.containers[0].image")
    assert [row["NAME"] for row in table(by_image)] == ["b-pod", "a-pod"]
    assert [row["NAME"] for row in table(kubectl.out("get", "pods", "--sort-by=.metadata.name"))] == [
        "a-pod",
        "b-pod",
    ]


WORKLOADS = """\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: client, port: 2379}, {name: metrics, port: 9090, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db-peers}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 2380}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db-peers
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: busybox}, {name: sidecar, image: nginx}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: fast
        resources: {requests: {storage: 1Gi}}
"""


def test_get_statefulsets_services_and_claims_prints_their_columns(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", kubectl.file("workloads.yaml", WORKLOADS))
    kubectl("wait", "--for=jsonpath={.status.readyReplicas}=2", "sts/db", f"--timeout={TIMEOUT:.0f}s")
    sts = kubectl.out("get", "statefulsets", "-o", "wide")
    assert header(sts) == ["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"]
    assert table(sts)[0] | {"AGE": ""} == {
        "NAME": "db",
        "READY": "2/2",
        "AGE": "",
        "CONTAINERS": "db,sidecar",
        "IMAGES": "busybox,nginx",
    }

    services = kubectl.out("get", "services", "-o", "wide")
    assert header(services) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    rows = {row["NAME"]: row for row in table(services)}
    assert (rows["db"]["TYPE"], rows["db"]["EXTERNAL-IP"], rows["db"]["PORT(S)"]) == (
        "ClusterIP",
        "<none>",
        "2379/TCP,9090/UDP",
    )
    assert (rows["db-peers"]["CLUSTER-IP"], rows["db-peers"]["SELECTOR"]) == ("None", "app=db")

    kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data-db-1", f"--timeout={TIMEOUT:.0f}s")
    claims = kubectl.out("get", "pvc", "-o", "wide")
    assert header(claims) == [
        "NAME",
        "STATUS",
        "VOLUME",
        "CAPACITY",
        "ACCESS MODES",
        "STORAGECLASS",
        "VOLUMEATTRIBUTESCLASS",
        "AGE",
        "VOLUMEMODE",
    ]
    assert [(row["NAME"], row["STATUS"], row["STORAGECLASS"]) for row in table(claims)] == [
        ("data-db-0", "Bound", "fast"),
        ("data-db-1", "Bound", "fast"),
    ]


def test_explain_prints_the_descriptions_and_fields_of_the_crds(kubectl: Kubectl) -> None:
    """kubectl explain reads the CRDs' schemas from the server's OpenAPI v3 documents."""
    root = Path(__file__).resolve().parents[2]
    kubectl("apply", "-f", str(root / "crds"))
    kubectl("wait", "--for", "condition=established", "crd/distributedlocks.etcdlock.io", "--timeout=10s")
    crd = yaml.safe_load((root / "crds" / "distributedlock.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # kubectl's discovery cache, written before the CRDs existed, knows no short name "dlock" yet; like
    # any kubectl, api-resources renews it.
    kubectl("api-resources", "--api-group=etcdlock.io")

    kind = kubectl.out("explain", "dlock")
    assert "KIND:       DistributedLock" in kind and "VERSION:    v1alpha1" in kind
    assert " ".join(schema["description"].split()[:6]) in " ".join(kind.split())

    spec = kubectl.out("explain", "dlock.spec")
    for field, declared in schema["properties"]["spec"]["properties"].items():
        shown = {"object": "Object"}.get(declared["type"], declared["type"])
        assert f"{field}\t<{shown}>" in spec, field
        assert " ".join(declared["description"].split()[:5]) in " ".join(spec.split()), field

    tls = kubectl.out("explain", "etcd.spec.tls")
    assert "issuerRef\t<Object>" in tls and "FIELD: tls <Object>" in tls

    pods = kubectl("explain", "pods")
    assert "KIND:       Pod" in pods.stdout and "metadata\t<ObjectMeta>" in pods.stdout


ETCD_STATEFULSET = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: member}
spec:
  replicas: 1
  serviceName: member
  selector: {matchLabels: {app: member}}
  template:
    metadata: {labels: {app: member}}
    spec:
      initContainers:
        - {name: version, image: "registry.k8s.io/etcd:3.5.21-0", command: [etcdutl, version]}
      containers:
        - name: etcd
          image: registry.k8s.io/etcd:3.5.21-0
          command:
            - /usr/local/bin/etcd
            - --name=m
            - --data-dir=/var/lib/etcd/data
            - --listen-client-urls=http://0.0.0.0:2379
            - --advertise-client-urls=http://0.0.0.0:2379
            - --listen-peer-urls=http://0.0.0.0:2380
            - --initial-advertise-peer-urls=http://0.0.0.0:2380
            - --initial-cluster=m=http://0.0.0.0:2380
          readinessProbe: {httpGet: {path: /health, port: 2379}}
          volumeMounts: [{name: data, mountPath: /var/lib/etcd}]
      volumes: [{name: data, emptyDir: {}}]
"""


def test_logs_of_an_etcd_pod_show_etcds_lines_and_follow_new_ones(kubectl: Kubectl) -> None:
    """A StatefulSet's etcd pod runs the real etcd: kubectl logs shows what it wrote, -f what it writes."""
    kubectl("apply", "-f", kubectl.file("sts.yaml", ETCD_STATEFULSET))
    kubectl("wait", "--for=jsonpath={.status.readyReplicas}=1", "sts/member", "--timeout=90s")

    whole = kubectl.out("logs", "member-0")
    messages = [json.loads(line)["msg"] for line in whole.splitlines()]
    assert "ready to serve client requests" in messages
    assert kubectl.out("logs", "member-0", "-c", "etcd").startswith(whole)
    assert kubectl.out("logs", "sts/member").startswith(whole)
    [last] = kubectl.out("logs", "member-0", "--tail=1").splitlines()
    assert last in kubectl.out("logs", "member-0").splitlines()
    assert "is not valid for pod member-0" in kubectl("logs", "member-0", "-c", "nope", check=False).stderr
    assert kubectl.out("logs", "member-0", "-c", "version").startswith("etcdutl version: 3.5.")
    refused = kubectl("logs", "member-0", "--since=1m", check=False)
    assert refused.returncode != 0 and "--since is not served" in refused.stderr

    following = kubectl.start("logs", "-f", "member-0", "--tail=1")
    try:
        assert read_lines(following, 1)[0] in kubectl.out("logs", "member-0").splitlines()
        address = kubectl.out("get", "pod", "member-0", "-o", "jsonpath={.status.podIP}")
        subprocess.run(
            [etcd_binary("etcdctl"), f"--endpoints=http://{address}:2379", "defrag"],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        followed = read_lines(following, 0, until="finished defragment")
        kubectl("delete", "pod", "member-0", "--wait=false")
        assert following.wait(timeout=TIMEOUT) == 0  # the followed log ends with its pod
    finally:
        stop(following)
    assert "starting defragment" in [json.loads(line)["msg"] for line in followed]


def test_logs_of_a_pod_that_runs_nothing_are_empty(kubectl: Kubectl) -> None:
    kubectl("run", "pretend", "--image=busybox", "--restart=Never")
    kubectl("apply", "-f", kubectl.file("gated.yaml", gated_pod("held")))
    for pod in ("pretend", "held"):
        done = kubectl("logs", pod)
        assert (done.stdout, done.stderr) == ("", ""), pod
