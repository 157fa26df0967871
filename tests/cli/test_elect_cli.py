"""`etcdlock elect` and `etcdctl elect` take part in the same election and see the same leader."""

from __future__ import annotations

import signal

from cli_support import Cli, queue_keys

from etcdlock_sandbox.etcd import LocalEtcd


def test_etcdctl_listener_sees_the_etcdlock_leader(cli: Cli, name: str) -> None:
    leader = cli.etcdlock("elect", name, "proposal-a")
    key, proposal = leader.readlines(2)
    assert key.startswith(name + "/") and proposal == "proposal-a"

    listener = cli.etcdctl("elect", "-l", name)
    assert listener.readlines(2) == [key, "proposal-a"]

    leader.signal(signal.SIGTERM)
    assert leader.wait() == 0, leader.describe()
    assert queue_keys(cli.status(name)) == []


def test_etcdlock_candidate_leads_only_after_the_etcdctl_leader_resigns(cli: Cli, name: str) -> None:
    etcdctl_leader = cli.etcdctl("elect", name, "from-etcdctl")
    etcdctl_key, value = etcdctl_leader.readlines(2)
    assert value == "from-etcdctl"

    listener = cli.etcdlock("elect", name, "--listen")
    assert listener.readlines(2) == [etcdctl_key, "from-etcdctl"]

    candidate = cli.etcdlock("elect", name, "from-etcdlock")
    doc = cli.wait_queue(name, holders=1, waiters=1)
    candidate_key = doc["waiters"][0]["key"]
    assert doc["holders"][0]["key"] == etcdctl_key
    candidate.assert_waiting()

    etcdctl_leader.signal(signal.SIGINT)  # etcdctl resigns on SIGINT
    assert etcdctl_leader.wait() == 0, etcdctl_leader.describe()
    assert candidate.readlines(2) == [candidate_key, "from-etcdlock"]
    assert listener.readlines(2) == [candidate_key, "from-etcdlock"]

    candidate.signal(signal.SIGTERM)
    assert candidate.wait() == 0, candidate.describe()
    assert queue_keys(cli.status(name)) == []
    listener.signal(signal.SIGTERM)
    assert listener.wait() == 0, listener.describe()
    assert listener.stderr == ""


def test_etcdctl_candidate_leads_after_the_etcdlock_leader_resigns(cli: Cli, name: str) -> None:
    leader = cli.etcdlock("elect", name, "first")
    leader.readlines(2)
    etcdctl_candidate = cli.etcdctl("elect", name, "second")
    doc = cli.wait_queue(name, holders=1, waiters=1)
    etcdctl_candidate.assert_waiting()

    leader.signal(signal.SIGTERM)
    assert leader.wait() == 0, leader.describe()
    assert etcdctl_candidate.readlines(2) == [doc["waiters"][0]["key"], "second"]
    etcdctl_candidate.signal(signal.SIGINT)
    assert etcdctl_candidate.wait() == 0, etcdctl_candidate.describe()


def test_etcdlock_candidate_leads_once_a_killed_etcdctl_leaders_lease_is_gone(
    cli: Cli, etcd: LocalEtcd, name: str
) -> None:
    etcdctl_leader = cli.etcdctl("elect", name, "doomed")
    etcdctl_key, _ = etcdctl_leader.readlines(2)
    candidate = cli.etcdlock("elect", name, "survivor")
    doc = cli.wait_queue(name, holders=1, waiters=1)

    etcdctl_leader.signal(signal.SIGKILL)
    etcdctl_leader.wait()
    candidate.assert_waiting()  # the dead leader's key lives on with its lease
    assert queue_keys(cli.status(name))[0] == etcdctl_key

    assert etcd.etcdctl("lease", "revoke", doc["holders"][0]["lease"]).returncode == 0
    assert candidate.readlines(2) == [doc["waiters"][0]["key"], "survivor"]
    candidate.signal(signal.SIGTERM)
    assert candidate.wait() == 0, candidate.describe()
