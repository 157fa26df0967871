"""``etcdlock sandbox up`` / ``down`` as a newcomer runs them: the installed command, then kubectl."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ETCDLOCK = str(Path(sys.executable).with_name("etcdlock"))
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
TIMEOUT = 90.0

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: notes.cli.sandbox.example.com
spec:
  group: cli.sandbox.example.com
  scope: Namespaced
  names: {plural: notes, singular: note, kind: Note}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                text: {type: string}
"""
NOTE = """\
apiVersion: cli.sandbox.example.com/v1
kind: Note
metadata:
  name: first
spec:
  text: hello
"""


def etcdlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ETCDLOCK, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def exited(pid: int) -> bool:
    """Gone, or a zombie (it exited; the init process that adopted it reaps it when it will)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_exited(pid: int, bound: float = TIMEOUT) -> None:
    deadline = time.monotonic() + bound
    while not exited(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {bound}s"
        time.sleep(0.05)


def session_members(session: int) -> list[int]:
    """Live processes of a session: the daemon leads its own (``start_new_session``) and etcd is in it."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # After the command name: state, ppid, pgrp, session.
            if int(fields[3]) == session and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def printed_commands(stdout: str) -> str:
    """The commands ``up`` printed after "in a new shell, first run:", as one script (comments and all),
    but the last one, ``sandbox down``."""
    lines = stdout.split("in a new shell, first run:\n", 1)[1].splitlines()
    commands = [line for line in lines if line.startswith("  ")]
    assert "etcdlock sandbox down" in commands[-1], commands
    return "\n".join(commands[:-1])


def in_new_shell(home: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a new bash that read no profile, with a system PATH (not this test's venv) and a home.
    PYTHONPATH is kept when set: it names the checkout under test when the venv's editable install is
    another one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_sandbox_up_serves_kubectl_and_down_stops_every_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home")}

    def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [KUBECTL, *args],
            env={**env, "KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    pid: int | None = None
    try:
        started = etcdlock("sandbox", "up", "--dir", str(state))
        assert started.returncode == 0, started.stderr
        kubeconfig = state / "kubeconfig"
        assert f"its kubeconfig is {kubeconfig}" in started.stdout
        assert f"export KUBECONFIG={kubeconfig}" in started.stdout
        pid = int((state / "sandbox.pid").read_text())
        members = session_members(pid)
        assert pid in members
        etcd = [p for p in members if Path(f"/proc/{p}/exe").resolve().name == "etcd"]
        assert len(etcd) == 1, members
        server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

        (tmp_path / "crd.yaml").write_text(CRD)
        (tmp_path / "note.yaml").write_text(NOTE)
        kubectl(kubeconfig, "apply", "-f", str(tmp_path / "crd.yaml"))
        kubectl(
            kubeconfig,
            "wait",
            "--for=condition=established",
            "crd/notes.cli.sandbox.example.com",
            "--timeout=10s",
        )
        created = kubectl(kubeconfig, "apply", "-f", str(tmp_path / "note.yaml"))
        assert created.stdout.strip() == "note.cli.sandbox.example.com/first created"
        assert kubectl(kubeconfig, "get", "note", "first", "-o", "jsonpath={.spec.text}").stdout == "hello"

        shown = in_new_shell(tmp_path / "home", printed_commands(started.stdout))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "default" in shown.stdout.split(), shown.stdout

        again = etcdlock("sandbox", "up", "--dir", str(state))
        assert again.returncode == 0, again.stderr
        assert f"export KUBECONFIG={kubeconfig}" in again.stdout
        assert int((state / "sandbox.pid").read_text()) == pid
        assert json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == server
        assert kubectl(kubeconfig, "get", "notes", "-o", "name").stdout.split() == [
            "note.cli.sandbox.example.com/first"
        ]

        stopped = etcdlock("sandbox", "down", "--dir", str(state))
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "sandbox stopped"
        assert [p for p in members if not exited(p)] == []
        assert not state.exists(), "down removed every file it wrote, then the folder up created"

        nothing = etcdlock("sandbox", "down", "--dir", str(state))
        assert nothing.returncode == 0, nothing.stderr
        assert nothing.stdout.strip() == "no sandbox was running"
    finally:  # never leave a sandbox behind, whatever failed above
        with contextlib.suppress(OSError, ValueError):
            pid = pid or int((state / "sandbox.pid").read_text())
        if pid is not None and not exited(pid):
            etcdlock("sandbox", "down", "--dir", str(state))
            if not exited(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def test_sandbox_up_operator_refuses_a_running_sandbox_without_it_and_says_what_to_do(tmp_path: Path) -> None:
    """``up --operator`` never reports an operator that does not run: a sandbox started without one, or
    whose operator exited, is left as it is (its objects kept) with one line saying why and to take it
    down first; after that, ``up --operator`` starts one, and ``up`` again says it runs."""
    state = tmp_path / "state"
    crds = str(Path(__file__).resolve().parents[2] / "crds")
    pid: int | None = None
    try:
        plain = etcdlock("sandbox", "up", "--dir", str(state))
        assert plain.returncode == 0, plain.stderr
        assert "the etcdlock operator runs in it" not in plain.stdout
        pid = int((state / "sandbox.pid").read_text())

        refused = etcdlock("sandbox", "up", "--operator", "--crds", crds, "--dir", str(state))
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "it was started without --operator" in refused.stderr
        assert f"etcdlock sandbox down --dir {state.resolve()}" in refused.stderr
        assert int((state / "sandbox.pid").read_text()) == pid and not exited(pid), "the sandbox kept running"

        assert etcdlock("sandbox", "down", "--dir", str(state)).returncode == 0
        started = etcdlock("sandbox", "up", "--operator", "--crds", crds, "--dir", str(state))
        assert started.returncode == 0, started.stderr
        assert "the etcdlock operator runs in it" in started.stdout
        pid = int((state / "sandbox.pid").read_text())
        for again in (("--operator", "--crds", crds), ()):
            done = etcdlock("sandbox", "up", *again, "--dir", str(state))
            assert done.returncode == 0, done.stderr
            assert "the etcdlock operator runs in it" in done.stdout
            assert int((state / "sandbox.pid").read_text()) == pid

        operator = int((state / "operator.pid").read_text())
        os.kill(operator, signal.SIGKILL)
        wait_exited(operator)
        crashed = etcdlock("sandbox", "up", "--operator", "--crds", crds, "--dir", str(state))
        assert crashed.returncode == 1 and crashed.stdout == ""
        assert f"its operator exited: see {state.resolve() / 'operator.log'}" in crashed.stderr
        plain = etcdlock("sandbox", "up", "--dir", str(state))
        assert plain.returncode == 0 and "the etcdlock operator runs in it" not in plain.stdout
    finally:  # never leave a sandbox behind, whatever failed above
        with contextlib.suppress(OSError, ValueError):
            pid = int((state / "sandbox.pid").read_text())
        if pid is not None and not exited(pid):
            etcdlock("sandbox", "down", "--dir", str(state))
            if not exited(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def test_sandbox_down_removes_only_what_it_wrote_and_up_starts_fresh_logs(tmp_path: Path) -> None:
    """A sandbox with its operator writes logs, pid files, its webhook's certificates and its metrics URL
    in the folder: ``up`` starts its logs afresh (a previous run's lines do not pile up), ``down`` stops
    every process and removes every file it wrote, and nothing of the user's."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "mine.txt").write_text("the user's own file\n")
    for log in ("operator.log", "sandbox.log"):
        (state / log).write_text("a line of a previous run\n")
    crds = str(Path(__file__).resolve().parents[2] / "crds")
    pid: int | None = None
    try:
        started = etcdlock("sandbox", "up", "--operator", "--crds", crds, "--dir", str(state))
        assert started.returncode == 0, started.stderr
        pid = int((state / "sandbox.pid").read_text())
        operator = int((state / "operator.pid").read_text())
        members = session_members(pid)
        written = {path.name for path in state.iterdir()}
        assert {"operator.log", "metrics-url", "webhook", "etcd", "kubeconfig"} <= written, written
        for log in ("operator.log", "sandbox.log"):
            assert "a line of a previous run" not in (state / log).read_text(), f"{log} grew on the last one"

        stopped = etcdlock("sandbox", "down", "--dir", str(state))
        assert stopped.returncode == 0, stopped.stderr
        assert [p for p in [*members, operator] if not exited(p)] == []
        assert sorted(path.name for path in state.iterdir()) == ["mine.txt"]
        assert (state / "mine.txt").read_text() == "the user's own file\n"
    finally:  # never leave a sandbox behind, whatever failed above
        if pid is not None and not exited(pid):
            etcdlock("sandbox", "down", "--dir", str(state))
            if not exited(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
