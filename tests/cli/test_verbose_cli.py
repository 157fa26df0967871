"""`-v` logs etcdlock's own steps (lease, key, queue, fencing token, keepalive, release) and nothing of
asyncio's or gRPC's; `-vv` adds those. An expected error stays one line of its own, with no traceback."""

from __future__ import annotations

import re
import signal

from cli_support import Cli

DEBUG = "etcdlock: DEBUG "


def library_lines(stderr: str) -> list[str]:
    """Log lines of other libraries than etcdlock (asyncio, grpc, aetcd, urllib3...)."""
    return [
        line
        for line in stderr.splitlines()
        if re.match(r"etcdlock: (DEBUG|INFO|WARNING|ERROR) ", line) and " etcdlock." not in line
    ]


def test_verbose_logs_the_engines_steps_of_a_wait_and_a_hold(cli: Cli, name: str) -> None:
    holder = cli.etcdlock("lock", name)
    holder.readlines(2)
    waiter = cli.etcdlock("-v", "lock", name, "--quiet")
    cli.wait_queue(name, 1, 1)
    holder.signal(signal.SIGINT)
    assert holder.wait() == 0, holder.describe()
    key, token = waiter.readlines(2)
    lease = key.rsplit("/", 1)[1]
    waiter.signal(signal.SIGINT)
    assert waiter.wait() == 0, waiter.describe()

    steps = [
        rf"etcdlock\.etcd\.session: session: lease {lease} granted, TTL 10s",
        rf"etcdlock\.etcd\.waiter: {re.escape(key)}: key written, create revision {token}, queued",
        rf"etcdlock\.etcd\.waiter: {re.escape(key)}: waiting for a permit of 1",
        rf"etcdlock\.etcd\._ranks: queue {re.escape(name)}/: key \S+ \(#1\) deleted",
        rf"etcdlock\.etcd\.semaphore: {re.escape(key)}: acquired {re.escape(name)}, fencing token {token}",
        rf"etcdlock\.etcd\.waiter: {re.escape(key)}: fenced delete \(create revision {token}\): deleted",
        rf"etcdlock\.etcd\.semaphore: {re.escape(key)}: released {re.escape(name)}",
        rf"etcdlock\.etcd\.session: session: lease {lease} revoked",
    ]
    lines = [line.removeprefix(DEBUG) for line in waiter.stderr.splitlines()]
    found = [next((i for i, line in enumerate(lines) if re.fullmatch(step, line)), None) for step in steps]
    assert None not in found and found == sorted(found), waiter.stderr
    assert library_lines(waiter.stderr) == [], waiter.stderr
    # The holder, without -v, logged nothing.
    assert holder.stderr == ""


def test_double_verbose_adds_the_libraries_debug_lines(cli: Cli, name: str) -> None:
    proc = cli.run("-vv", "status", name)
    assert proc.popen.returncode == 0, proc.describe()
    assert any(line.startswith(f"{DEBUG}asyncio: ") for line in proc.stderr.splitlines()), proc.stderr


def test_an_expected_error_with_verbose_is_one_line_without_a_traceback(cli: Cli, name: str) -> None:
    """Giving up on a held lock (the gRPC streams it had open are cancelled) with -v."""
    holder = cli.etcdlock("lock", name, "--holder", "verbose-test")
    key, _ = holder.readlines(2)
    waiter = cli.run("-v", "lock", name, "--timeout", "1", "--quiet")
    assert waiter.popen.returncode == 2, waiter.describe()
    assert "Traceback" not in waiter.stderr
    assert library_lines(waiter.stderr) == [], waiter.stderr
    errors = [line for line in waiter.stderr.splitlines() if not line.startswith(DEBUG)]
    assert errors == [f"etcdlock: {name} not acquired within 1s; held by verbose-test ({key})"], waiter.stderr
