"""`etcdlock status NAME` of a name with no keys: stdout and exit 0 as for a free lock, plus a hint on stderr
that NAME may be a DistributedLock's name rather than its key."""

from __future__ import annotations

import json
import signal

import pytest
from cli_support import Cli


def hint(name: str) -> str:
    return (
        f"etcdlock: nothing is under {name}/ in etcd: if {name} is a DistributedLock's name, its key is "
        f"/etcdlock/locks/<namespace>/{name} unless its spec.key says otherwise (see kubectl get dlock -A)"
    )


@pytest.mark.parametrize("output", ["table", "json"])
def test_status_of_a_name_with_no_keys_hints_at_the_distributed_lock_key(
    cli: Cli, name: str, output: str
) -> None:
    proc = cli.run("status", name, "-o", output)
    assert proc.popen.returncode == 0, proc.describe()
    assert proc.stderr.splitlines() == [hint(name)]
    if output == "json":
        doc = json.loads(proc.stdout)
        assert doc["holders"] == [] and doc["waiters"] == [] and doc["permits"] == 1
    else:
        assert proc.stdout.splitlines()[0].startswith(f"{name}: 0/1 held, 0 waiting (revision ")


@pytest.mark.parametrize("output", ["table", "json"])
def test_status_of_a_held_lock_gives_no_hint(cli: Cli, name: str, output: str) -> None:
    etcdlock_name, etcdctl_name = f"{name}/ours", f"{name}/etcdctl"
    ours = cli.etcdlock("lock", etcdlock_name, "--permits", "2")
    ours.readlines(2)
    etcdctl = cli.etcdctl("lock", etcdctl_name)
    etcdctl.readline()
    for held in (etcdlock_name, etcdctl_name):
        proc = cli.run("status", held, "-o", output)
        assert proc.popen.returncode == 0 and proc.stderr == "", proc.describe()

    # Once the last key is gone, the name has nothing under it again.
    etcdctl.signal(signal.SIGINT)
    assert etcdctl.wait() == 0, etcdctl.describe()
    proc = cli.run("status", etcdctl_name, "-o", output)
    assert proc.popen.returncode == 0 and proc.stderr.splitlines() == [hint(etcdctl_name)], proc.describe()
