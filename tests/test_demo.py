"""``make run`` works on a fresh clone: the sandbox with the operator, five contenders for one lock
(etcdctl, pods, the CLI) served one after another in arrival order and reported in etcd's order (each
release before the next holder), an EtcdCluster brought up with a pod holding a lock kept in it, backed up
(a full snapshot and a delta) and restored into a second cluster with the same keys; then the commands it
prints work as printed, in a new shell, down to ``etcdlock sandbox down``, which leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from etcdlock_sandbox import daemon

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["etcdctl", "report-1", "report-2", "laptop", "report-3"]
PODS = [name for name in ORDER if name.startswith("report-")]


def test_demo_prints_hand_offs_in_etcd_order_and_its_hints_work_in_a_new_shell(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    shell: subprocess.Popen[str] | None = None
    try:
        done = subprocess.run(
            [sys.executable, "-m", "etcdlock_sandbox.demo", "--dir", str(directory)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        check_hand_offs(done.stdout)
        check_cluster(done.stdout)

        script = hints_script(done.stdout)
        shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", script],
            cwd=ROOT,
            env=fresh_environment(tmp_path / "home"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        output, _ = shell.communicate(timeout=300)
        assert shell.returncode == 0, output
        assert re.search(r"^nightly-report +0/1 +SchedulingGated ", output, re.MULTILINE), output
        assert output.count("condition met") == 3, output
        assert re.search(r"^nightly-report +0/1 +SchedulingGated .* Waiting$", output, re.MULTILINE), output
        assert re.search(r"^1 +holding +me ", output, re.MULTILINE), output  # kubectl etcdlock queue
        assert re.search(r"^2 +waiting +pod/default/nightly-report ", output, re.MULTILINE), output
        assert re.search(r'^\{"level":"\w+","ts":', output, re.MULTILINE), output  # an etcd member's log
        assert re.search(r"^ +clusterRef\t<Object>", output, re.MULTILINE), output  # kubectl explain
        assert "etcdctl holds it too" in output
        assert "sandbox stopped" in output

        assert not directory.exists(), f"left behind: {sorted(p.name for p in directory.iterdir())}"
        assert processes_under(directory) == [], "no process of the sandbox is left running"
    finally:  # never leave a sandbox or a hint's background job behind, whatever failed above
        if shell is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
        daemon.down(directory)


def check_hand_offs(stdout: str) -> None:
    """The lock's part: everyone joined in order (the pods gated), then each held and released in turn,
    each release before the next holder, at increasing revisions; the pods' annotations agree."""
    part = stdout.split("all done; the lock is free again")[0]
    joined = re.findall(r"\[([\w-]+)\] joined the line at revision \d+(.*)", part)
    assert [name for name, _ in joined] == ORDER, part
    assert [gate for name, gate in joined if name in PODS] == [", pod SchedulingGated (etcdlock.io/lock)"] * 3
    turns = hand_offs(part)
    assert [(name, step) for name, step, _ in turns] == [
        (name, step) for name in ORDER for step in ("holds", "released")
    ], part
    tokens = [int(token) for _, _, token in turns[::2]]
    assert tokens == sorted(set(tokens)), part
    served = [int(at) for at in re.findall(r"holds the lock with fencing token \d+ \(revision (\d+)\)", part)]
    released = [int(at) for at in re.findall(r"released the lock \(revision (\d+)\)", part)]
    assert served[1:] == released[:-1], "each one holds at the revision the one before released"
    assert released == sorted(set(released)), part
    held = dict(zip(ORDER, tokens, strict=True))
    for pod in PODS:
        record = f"[{pod}] pod Succeeded, etcdlock.io/state=Released, etcdlock.io/fencing-token={held[pod]}"
        assert record in part, part


def hand_offs(stdout: str) -> list[tuple[str, str, str]]:
    """(contender, "holds" with its fencing token or "released" with its revision), in printed order.

    A mutual exclusion shown right prints every release before the next holder: one line out of order
    would read as two holders at once.
    """
    turns = []
    for line in stdout.splitlines():
        if match := re.search(r"\[([\w-]+)\] holds the lock with fencing token (\d+)", line):
            turns.append((match[1], "holds", match[2]))
        elif match := re.search(r"\[([\w-]+)\] released the lock \(revision (\d+)\)", line):
            turns.append((match[1], "released", match[2]))
    return turns


def check_cluster(stdout: str) -> None:
    assert "[locks-etcd] phase Running, ready 3/3" in stdout
    assert stdout.count("healthy") == 3
    assert re.search(r"\[migrate\] lock state Held with fencing token \d+ \(in locks-etcd\)", stdout)
    assert re.search(r"\[locks-etcd-restored\] restored \S+\.db and \d+ events after it", stdout)
    counts = dict(re.findall(r"\[(locks-etcd(?:-restored)?)\] (\d+) keys", stdout))
    assert counts.keys() == {"locks-etcd", "locks-etcd-restored"}, stdout
    assert counts["locks-etcd"] == counts["locks-etcd-restored"] and int(counts["locks-etcd"]) >= 120


def hints_script(stdout: str) -> str:
    """The printed commands as one bash script, as a user pastes them into a new shell: the ``export``
    line, then every command in order (but scaling the cluster out, which takes long), failing at the
    first command that fails."""
    lines = stdout.split("The sandbox keeps running. In a new shell, from ", 1)[1].splitlines()
    assert lines[0] == f"{ROOT}, first run:" and lines[2] == "then, in this order:", lines[:3]
    commands = [line for line in lines[3:] if "kubectl scale" not in line]
    return "\n".join(["set -ex", lines[1], *commands])


def fresh_environment(home: Path) -> dict[str, str]:
    """A new login's environment: a system PATH and a home, nothing of this test's venv. PYTHONPATH is
    kept when set: it names the checkout under test when the venv's editable install is another one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def processes_under(directory: Path) -> list[str]:
    """Command lines of live processes that name a path under ``directory`` (the members' data dirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(directory) in line and "pytest" not in line:
                found.append(line)
    return found
