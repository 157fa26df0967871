"""`etcdlock lock` while etcd cannot serve: no quorum, an election, a hung member. Real three-member etcd.

The CLI contract: within ``--timeout`` (or for ever without one) an acquire rides out etcd being
unavailable and exits 2 at the timeout; SIGINT acts at once; an etcd that cannot be reached at all is one
line and exit 1; never a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli, assert_one_line_error

from etcdlock_sandbox.etcd import LocalEtcd


@pytest.fixture
def cluster() -> Iterator[LocalEtcd]:
    with LocalEtcd(size=3) as three:
        yield three


@pytest.fixture
def cli3(cluster: LocalEtcd, tmp_path: Path) -> Iterator[Cli]:
    starter = Cli(cluster.endpoint_list, tmp_path)
    try:
        yield starter
    finally:
        starter.close()


def lose_quorum(cluster: LocalEtcd) -> None:
    for member in cluster.members[:2]:
        cluster.kill(member)


def test_the_timeout_is_honoured_while_etcd_has_no_quorum(cluster: LocalEtcd, cli3: Cli, name: str) -> None:
    lose_quorum(cluster)
    proc = cli3.etcdlock("lock", name, "--timeout", "2", "--", "true")
    code = proc.wait()
    assert code == 2, proc.describe()
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"etcdlock: {name} not acquired within 2s; etcd is unavailable"), line


def test_an_acquire_without_a_timeout_waits_out_a_quorum_loss_longer_than_its_session(
    cluster: LocalEtcd, cli3: Cli, name: str
) -> None:
    lose_quorum(cluster)
    proc = cli3.etcdlock("lock", name, "--ttl", "5", "--", "echo", "acquired")
    # Longer than the session's TTL: its first session is lost (locally) and replaced.
    with pytest.raises(AssertionError, match="no output line"):
        proc.readline(timeout=7)
    proc.assert_waiting()
    first = cluster.members[0]
    cluster.start_member(first)
    assert proc.readline() == "acquired"
    assert proc.wait() == 0, proc.describe()


def test_sigint_while_etcd_has_no_quorum_interrupts_at_once(cluster: LocalEtcd, cli3: Cli, name: str) -> None:
    lose_quorum(cluster)
    proc = cli3.etcdlock("lock", name)
    # The lease cannot be granted without quorum: SIGINT must not wait for that request to time out.
    with pytest.raises(AssertionError, match="no output line"):
        proc.readline(timeout=1)
    proc.signal(signal.SIGINT)
    line = assert_one_line_error(proc)
    # Waiting for the lease; on a busy machine the second can pass while the command still loads, which a
    # Ctrl-C ends the same way, in one line.
    assert line in (f"etcdlock: interrupted while waiting for {name}", "etcdlock: interrupted"), line


def test_an_acquire_started_during_an_etcd_election_waits_for_it(
    cluster: LocalEtcd, cli3: Cli, name: str
) -> None:
    """Every member killed but one restarted: the first requests meet a cluster electing a leader."""
    lose_quorum(cluster)
    proc = cli3.etcdlock("lock", name, "--timeout", "60", "--", "echo", "acquired")
    cluster.start_member(cluster.members[1], wait=False)
    assert proc.readline(timeout=60) == "acquired"
    assert proc.wait() == 0, proc.describe()


def test_an_unreachable_etcd_is_still_one_line_at_once(tmp_path: Path, name: str) -> None:
    cli = Cli("http://127.0.0.1:1", tmp_path)
    try:
        line = assert_one_line_error(cli.etcdlock("lock", name, "--timeout", "60"))
    finally:
        cli.close()
    assert line.startswith("etcdlock: cannot reach etcd at http://127.0.0.1:1")


def test_a_single_ipv6_endpoint_is_dialled_with_its_brackets(tmp_path: Path, name: str) -> None:
    ipv6 = LocalEtcd(size=1)
    port = ipv6.members[0].client_port
    # Also listening on ::1 (the later flag wins); its health is still checked on 127.0.0.1.
    ipv6.extra_args = [f"--listen-client-urls=http://127.0.0.1:{port},http://[::1]:{port}"]
    with ipv6:
        cli = Cli(f"http://[::1]:{port}", tmp_path)
        try:
            proc = cli.run("lock", name, "--timeout", "0", "--", "sh", "-c", 'echo "$ETCDLOCK_KEY"')
        finally:
            cli.close()
    assert proc.popen.returncode == 0, proc.describe()
    assert proc.stdout.startswith(f"{name}/")
