"""``make run`` works on a fresh machine: the demo takes one lock with etcdlock and etcdctl in turn."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_every_worker_once_in_increasing_token_order() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "etcdlock.sandbox.demo"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    turns = re.findall(r"\[(worker-\d|etcdctl)\] holds \S+ with fencing token (\d+)", done.stdout)
    assert sorted(name for name, _ in turns) == ["etcdctl", "worker-1", "worker-2", "worker-3"]
    tokens = [int(token) for _, token in turns]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert "exit status 2" in done.stdout
    assert "Traceback" not in done.stderr
