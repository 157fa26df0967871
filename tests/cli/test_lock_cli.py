"""`etcdlock lock`: hold mode, exec mode, exit codes, fencing tokens, and a lock lost under a running CMD."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from cli_support import ETCDLOCK, Cli, clean_env, pid_alive, queue_keys

from etcdlock_sandbox.etcd import LocalEtcd


def _lease_of(key: str) -> str:
    return key.rsplit("/", 1)[1]


def test_hold_mode_prints_key_and_token_and_releases_on_sigterm(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name, "--holder", "hold-test")
    key, token = holder.readlines(2)
    assert re.fullmatch(re.escape(name) + r"/[0-9a-f]+", key)
    doc = cli.status(name)
    assert [(h["key"], h["fencingToken"], h["holder"]) for h in doc["holders"]] == [
        (key, int(token), "hold-test")
    ]
    assert doc["holders"][0]["lease"] == _lease_of(key)

    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0, holder.describe()
    assert holder.stderr == ""
    assert queue_keys(cli.status(name)) == []


def test_hold_mode_releases_on_sigint(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name)
    holder.readlines(2)
    holder.signal(signal.SIGINT)
    assert holder.wait() == 0, holder.describe()
    assert queue_keys(cli.status(name)) == []


def test_cmd_runs_with_key_and_token_of_the_held_lock_and_its_status_is_passed_through(
    cli: Cli, name: str
) -> None:
    # CMD prints its environment, then the lock's status as seen while it runs, then exits 7.
    script = 'echo "$ETCDLOCK_KEY $ETCDLOCK_FENCING_TOKEN"; "$0" --endpoints "$1" status "$2" -o json; exit 7'
    run = cli.run("lock", name, "--", "sh", "-c", script, ETCDLOCK, cli.endpoints, name)
    assert run.popen.returncode == 7, run.describe()
    env_line, status_json = run.stdout.split("\n", 1)
    key, token = env_line.split()
    held = json.loads(status_json)["holders"]
    assert [(h["key"], h["fencingToken"]) for h in held] == [(key, int(token))]
    assert queue_keys(cli.status(name)) == []


def test_cmd_killed_by_a_signal_exits_128_plus_the_signal(cli: Cli, name: str) -> None:
    run = cli.run("lock", name, "--", "sh", "-c", "kill -KILL $$")
    assert run.popen.returncode == 128 + signal.SIGKILL, run.describe()
    assert queue_keys(cli.status(name)) == []


def test_endpoints_come_from_the_environment(cli: Cli, name: str) -> None:
    proc = cli.etcdlock_raw(
        "lock", name, "--", "sh", "-c", "exit 5", env=clean_env(ETCDLOCK_ENDPOINTS=cli.endpoints)
    )
    assert proc.wait() == 5, proc.describe()


def test_try_lock_on_a_held_lock_exits_2_naming_the_holder(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name, "--holder", "first-holder")
    key, _ = holder.readlines(2)

    attempt = cli.run("lock", name, "--timeout", "0", "--", "sh", "-c", "echo ran")
    assert attempt.popen.returncode == 2, attempt.describe()
    assert attempt.stdout == ""
    lines = attempt.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdlock:"), attempt.stderr
    assert key in lines[0] and "first-holder" in lines[0]
    assert queue_keys(cli.status(name)) == [key]


def test_timeout_exits_2_and_leaves_no_waiter_key(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name)
    key, _ = holder.readlines(2)

    attempt = cli.run("lock", name, "--timeout", "0.5")
    assert attempt.popen.returncode == 2, attempt.describe()
    assert attempt.stdout == ""
    assert "not acquired within 0.5s" in attempt.stderr and key in attempt.stderr
    doc = cli.status(name)
    assert queue_keys(doc) == [key] and doc["waiters"] == []


def test_try_lock_on_a_free_lock_acquires(cli: Cli, name: str) -> None:
    run = cli.run("lock", name, "--timeout", "0", "--", "sh", "-c", 'echo "$ETCDLOCK_FENCING_TOKEN"')
    assert run.popen.returncode == 0, run.describe()
    assert int(run.stdout) > 0


def test_fencing_tokens_increase_in_arrival_order(cli: Cli, name: str, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    holder = cli.etcdlock("lock", name)
    _, holder_token = holder.readlines(2)

    waiters = []
    for count in range(1, 4):
        waiters.append(
            cli.etcdlock("lock", name, "--", "sh", "-c", f'echo "$ETCDLOCK_FENCING_TOKEN" >> {tokens_file}')
        )
        queued = cli.wait_queue(name, holders=1, waiters=count)
    for waiter in waiters:
        waiter.assert_waiting()
    queued_tokens = [w["fencingToken"] for w in queued["waiters"]]
    assert queued_tokens == sorted(queued_tokens)

    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0, holder.describe()
    for waiter in waiters:
        assert waiter.wait() == 0, waiter.describe()

    written = [int(line) for line in tokens_file.read_text().split()]
    assert written == queued_tokens
    assert int(holder_token) < written[0] < written[1] < written[2]
    assert queue_keys(cli.status(name)) == []


def test_sigterm_while_running_cmd_is_passed_to_cmd(cli: Cli, name: str) -> None:
    script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    runner = cli.etcdlock("lock", name, "--", "sh", "-c", script)
    assert runner.readline() == "ready"
    runner.signal(signal.SIGTERM)
    assert runner.wait() == 42, runner.describe()
    assert queue_keys(cli.status(name)) == []


def test_lost_lock_stops_cmd_and_exits_3(cli: Cli, etcd: LocalEtcd, name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = f"trap 'echo term >> {marker}; exit 0' TERM; echo ready $$; while :; do sleep 0.05; done"
    runner = cli.etcdlock("lock", name, "--kill-grace", "5", "--", "sh", "-c", script)
    ready, pid = runner.readline().split()
    assert ready == "ready"
    (held,) = cli.status(name)["holders"]

    revoked = etcd.etcdctl("lease", "revoke", held["lease"])
    assert revoked.returncode == 0, revoked.stderr

    assert runner.wait(10) == 3, runner.describe()
    assert not pid_alive(int(pid))
    assert marker.read_text() == "term\n"
    lines = runner.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdlock: lock lost"), runner.stderr
    assert queue_keys(cli.status(name)) == []


def test_cmd_ignoring_sigterm_is_killed_after_the_grace(
    cli: Cli, etcd: LocalEtcd, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    # The trap records SIGTERM and carries on: only SIGKILL can end this command.
    script = f"trap 'echo term >> {marker}' TERM; echo ready $$; while :; do sleep 0.05; done"
    runner = cli.etcdlock("lock", name, "--kill-grace", "1", "--", "sh", "-c", script)
    _, pid = runner.readline().split()
    (held,) = cli.status(name)["holders"]

    assert etcd.etcdctl("lease", "revoke", held["lease"]).returncode == 0
    started = time.monotonic()
    assert runner.wait(10) == 3, runner.describe()
    assert time.monotonic() - started >= 0.9
    assert not pid_alive(int(pid))
    assert marker.read_text().startswith("term\n")
    assert "lock lost" in runner.stderr


def test_lost_lock_in_hold_mode_exits_3(cli: Cli, etcd: LocalEtcd, name: str) -> None:
    holder = cli.etcdlock("lock", name)
    key, _ = holder.readlines(2)
    assert etcd.etcdctl("lease", "revoke", _lease_of(key)).returncode == 0
    assert holder.wait(10) == 3, holder.describe()
    lines = holder.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcdlock: lock lost"), holder.stderr


def test_permits_let_that_many_hold_together(cli: Cli, name: str) -> None:
    first = cli.etcdlock("lock", name, "--permits", "2", "--holder", "one")
    first_key, _ = first.readlines(2)
    second = cli.etcdlock("lock", name, "--permits", "2", "--holder", "two")
    second_key, _ = second.readlines(2)
    third = cli.etcdlock("lock", name, "--permits", "2", "--holder", "three")

    doc = cli.wait_queue(name, holders=2, waiters=1)
    assert doc["permits"] == 2
    assert [h["key"] for h in doc["holders"]] == [first_key, second_key]
    assert [w["holder"] for w in doc["waiters"]] == ["three"]
    third.assert_waiting()

    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.describe()
    third_key, _ = third.readlines(2)
    doc = cli.status(name)
    assert [h["key"] for h in doc["holders"]] == [second_key, third_key] and doc["waiters"] == []
    for proc in (second, third):
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.describe()
