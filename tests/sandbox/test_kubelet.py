"""The sandbox's pretend kubelet: pods go Pending → Running → Succeeded/Failed without containers."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from etcdlock_sandbox.kubelet import EXIT_CODE, RUN_SECONDS

BOUND = 10.0
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
Core = kubernetes.client.CoreV1Api


@pytest.fixture(scope="module")
def core(kubeconfig: Path) -> Core:
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture
def namespace(core: Core) -> Iterator[str]:
    name = f"kubelet-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def create(core: Core, namespace: str, name: str, gated: bool = False, **notes: str) -> None:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    if gated:
        spec["schedulingGates"] = [{"name": "example.com/hold"}]
    core.create_namespaced_pod(namespace, {"metadata": {"name": name, "annotations": notes}, "spec": spec})


def phase_becomes(core: Core, namespace: str, name: str, phase: str) -> Any:
    deadline = time.monotonic() + BOUND
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase == phase:
            return pod
        assert time.monotonic() < deadline, f"{name} stayed {pod.status.phase}, expected {phase}"
        time.sleep(0.05)


def test_an_ungated_pod_runs_and_a_gated_one_waits(core: Core, namespace: str) -> None:
    create(core, namespace, "free")
    create(core, namespace, "held", gated=True)
    running = phase_becomes(core, namespace, "free", "Running")
    assert running.status.start_time is not None
    assert running.status.container_statuses[0].state.running is not None
    assert core.read_namespaced_pod("held", namespace).status.phase == "Pending"
    core.patch_namespaced_pod("held", namespace, {"spec": {"schedulingGates": None}})
    phase_becomes(core, namespace, "held", "Running")


def test_run_seconds_finishes_the_pod_with_its_exit_code(core: Core, namespace: str) -> None:
    create(core, namespace, "ok", **{RUN_SECONDS: "0.2"})
    create(core, namespace, "broken", **{RUN_SECONDS: "0.2", EXIT_CODE: "3"})
    done = phase_becomes(core, namespace, "ok", "Succeeded")
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    failed = phase_becomes(core, namespace, "broken", "Failed")
    assert failed.status.container_statuses[0].state.terminated.exit_code == 3


def test_kubectl_shows_finished_pods_as_completed_or_error(
    core: Core, namespace: str, kubeconfig: Path
) -> None:
    create(core, namespace, "ok", **{RUN_SECONDS: "0"})
    create(core, namespace, "broken", **{RUN_SECONDS: "0", EXIT_CODE: "1"})
    phase_becomes(core, namespace, "ok", "Succeeded")
    phase_becomes(core, namespace, "broken", "Failed")
    listed = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "pods", "--no-headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()}
    assert rows == {"ok": "Completed", "broken": "Error"}


def test_run_seconds_added_later_finishes_a_running_pod(core: Core, namespace: str) -> None:
    create(core, namespace, "long")
    phase_becomes(core, namespace, "long", "Running")
    core.patch_namespaced_pod("long", namespace, {"metadata": {"annotations": {RUN_SECONDS: "0"}}})
    phase_becomes(core, namespace, "long", "Succeeded")


def test_kubectl_can_finish_a_pod_by_patching_its_status(
    core: Core, namespace: str, kubeconfig: Path
) -> None:
    create(core, namespace, "manual")
    phase_becomes(core, namespace, "manual", "Running")
    patch = '{"status":{"phase":"Succeeded"}}'
    done = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            namespace,
            "patch",
            "pod",
            "manual",
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    phase_becomes(core, namespace, "manual", "Succeeded")


def test_the_namespace_carries_its_name_label(core: Core, namespace: str) -> None:
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["kubernetes.io/metadata.name"] == namespace


def test_a_pod_finished_before_the_kubelet_starts_it_stays_finished(core: Core, namespace: str) -> None:
    """The race a test can cause: the pod is ungated and at once reported Succeeded; the kubelet's
    Running, decided on the earlier version of the pod, must not land on top of it."""
    create(core, namespace, "quick", gated=True)
    core.patch_namespaced_pod("quick", namespace, {"spec": {"schedulingGates": None}})
    core.patch_namespaced_pod_status("quick", namespace, {"status": {"phase": "Succeeded"}})
    for _ in range(20):  # the kubelet has had every chance to act on the ungated version
        assert core.read_namespaced_pod("quick", namespace).status.phase == "Succeeded"
        time.sleep(0.05)
