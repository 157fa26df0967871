"""``make run`` works on a fresh clone: the sandbox with the operator, five contenders for one lock
(etcdctl, pods, the CLI) served one after another in arrival order and reported so (each release before
the next holder), an EtcdCluster brought up with a pod holding a lock kept in it, backed up (a full
snapshot and a delta) and restored into a second cluster with the same keys, and nothing left running with
--down.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from etcdlock_sandbox import daemon

ROOT = Path(__file__).resolve().parents[1]


def test_demo_serves_pods_etcdctl_and_the_cli_in_turn(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    done = subprocess.run(
        [sys.executable, "-m", "etcdlock_sandbox.demo", "--dir", str(directory), "--down"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    turns = hand_offs(done.stdout)
    order = ["etcdctl", "report-1", "report-2", "laptop", "report-3"]
    assert [(name, event) for name, event, _ in turns] == [
        (name, event) for name in order for event in ("held", "released")
    ], done.stdout
    tokens = [int(token) for _, event, token in turns if event == "held"]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    assert done.stdout.count("lock state Released, pod Succeeded") == 3
    assert "[locks-etcd] phase Running, ready 3/3" in done.stdout
    assert done.stdout.count("healthy") == 3
    assert re.search(r"\[migrate\] lock state Held with fencing token \d+ \(in locks-etcd\)", done.stdout)
    assert re.search(r"\[locks-etcd-restored\] restored \S+\.db and \d+ events after it", done.stdout)
    counts = dict(re.findall(r"\[(locks-etcd(?:-restored)?)\] (\d+) keys", done.stdout))
    assert counts.keys() == {"locks-etcd", "locks-etcd-restored"}, done.stdout
    assert counts["locks-etcd"] == counts["locks-etcd-restored"] and int(counts["locks-etcd"]) >= 120
    assert daemon.running_pid(directory) is None, "--down stopped the sandbox"
    assert processes_under(directory) == [], "no etcd member of the sandbox is left running"


def hand_offs(stdout: str) -> list[tuple[str, str, str]]:
    """(contender, "held" or "released", fencing token) in the order the demo printed them.

    A mutual exclusion shown right prints every release before the next holder: one line out of order
    would read as two holders at once.
    """
    held = r"\[([\w-]+)\] (?:lock state Held with|holds the lock with) (?:fencing token|revision) (\d+)"
    released = r"\[([\w-]+)\] (?:lock state Released|released the lock)()"
    turns = []
    for line in stdout.splitlines():
        if (match := re.search(held, line)) and "(in locks-etcd)" not in line:
            turns.append((match[1], "held", match[2]))
        elif match := re.search(released, line):
            turns.append((match[1], "released", ""))
    return turns


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
