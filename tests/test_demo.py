"""``make run`` works on a fresh clone: the sandbox with the operator, five contenders for one lock
(etcdctl, pods, the CLI) served one after another in arrival order, an EtcdCluster brought up with a pod
holding a lock kept in it, and nothing left running with --down.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from etcdlock.sandbox import daemon

ROOT = Path(__file__).resolve().parents[1]


def test_demo_serves_pods_etcdctl_and_the_cli_in_turn(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    done = subprocess.run(
        [sys.executable, "-m", "etcdlock.sandbox.demo", "--dir", str(directory), "--down"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    held = r"\[([\w-]+)\] (?:lock state Held with|holds the lock with) (?:fencing token|revision) (\d+)"
    turns = list(dict.fromkeys(re.findall(held, done.stdout)))
    order = ["etcdctl", "report-1", "report-2", "laptop", "report-3", "migrate"]
    assert [name for name, _ in turns] == order, done.stdout
    tokens = [int(token) for _, token in turns[:5]]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    assert done.stdout.count("lock state Released, pod Succeeded") == 3
    assert "[locks-etcd] phase Running, ready 3/3" in done.stdout
    assert done.stdout.count("healthy") == 3
    assert "(in locks-etcd)" in done.stdout
    assert daemon.running_pid(directory) is None, "--down stopped the sandbox"
    assert processes_under(directory) == [], "no etcd member of the sandbox is left running"


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
