"""Real `etcdlock` and `etcdctl` processes for the CLI tests: bounded line reads, bounded waits, no leftovers.

Every process runs in its own process group, so the teardown can stop a command together with the CMD it
runs (``etcdlock lock NAME -- CMD``, ``etcdctl lock NAME CMD``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdlock_sandbox.etcd import etcd_binary

ETCDLOCK = str(Path(sys.executable).with_name("etcdlock"))
ETCDCTL = etcd_binary("etcdctl")

# Bounds for failing a test that hangs, never waited out by a passing one: a CLI process starts in about
# 0.2 s, but on a loaded machine (two busy loops beside both test workers) one took over 15 s to join a queue.
LINE_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0
POLL_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any ETCDLOCK_*/ETCDCTL_* setting that could leak into a command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDLOCK_", "ETCDCTL_", "ETCD_"))}
    env["ETCDCTL_API"] = "3"
    env.update(extra)
    return env


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` still exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class Proc:
    """One running command; stdout is read line by line by a thread, stderr is collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._stderr_grew = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._stdout.append(line)
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._stderr_grew:
                self._stderr.append(line)
                self._stderr_grew.notify_all()

    @property
    def stdout(self) -> str:
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def describe(self) -> str:
        return f"{' '.join(self.argv)!r} (pid {self.pid}, exit {self.popen.poll()}); stderr: {self.stderr!r}"

    def readline(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next stdout line; fails the test if none comes within ``timeout`` or stdout closes."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s from {self.describe()}") from None
        if line is None:
            self._lines.put(None)
            self.wait(EXIT_TIMEOUT)
            raise AssertionError(f"stdout closed before a line came from {self.describe()}")
        return line

    def stderr_lines(self, count: int, timeout: float = LINE_TIMEOUT) -> list[str]:
        """The first ``count`` stderr lines, once that many came; fails the test if they do not in time."""
        with self._stderr_grew:
            if not self._stderr_grew.wait_for(lambda: len(self._stderr) >= count, timeout):
                raise AssertionError(f"not {count} stderr lines within {timeout}s from {self.describe()}")
            return [line.rstrip("\n") for line in self._stderr[:count]]

    def readlines(self, count: int, timeout: float = LINE_TIMEOUT) -> list[str]:
        return [self.readline(timeout) for _ in range(count)]

    def has_output(self) -> bool:
        """Whether a stdout line is waiting to be read (does not wait)."""
        return not self._lines.empty()

    def assert_waiting(self) -> None:
        """Still running and has printed nothing more: it has not acquired (or been elected) yet."""
        assert self.popen.poll() is None, f"exited early: {self.describe()}"
        assert not self.has_output(), f"printed while it should wait: {self.describe()}"

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the exit (bounded) and for the output to be fully read; returns the exit status."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout}s: {self.describe()}") from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self) -> None:
        """Teardown: kill the whole process group if anything of it is left, and reap the process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for reader in self._readers:
            reader.join(1)


class Cli:
    """Starts `etcdlock` and `etcdctl` against one etcd and remembers every process for the teardown."""

    def __init__(self, endpoints: str, workdir: Path) -> None:
        self.endpoints = endpoints
        self.workdir = workdir
        self._procs: list[Proc] = []

    def _start(self, argv: list[str], env: dict[str, str] | None) -> Proc:
        proc = Proc(argv, clean_env() if env is None else env)
        self._procs.append(proc)
        return proc

    def etcdlock(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start ``etcdlock --endpoints E ARGS...``."""
        return self._start([ETCDLOCK, "--endpoints", self.endpoints, *args], env)

    def etcdlock_raw(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start ``etcdlock ARGS...`` with no endpoint added."""
        return self._start([ETCDLOCK, *args], env)

    def etcdctl(self, *args: str) -> Proc:
        """Start ``etcdctl --endpoints E ARGS...``."""
        return self._start([ETCDCTL, f"--endpoints={self.endpoints}", *args], None)

    def run(self, *args: str, timeout: float = EXIT_TIMEOUT) -> Proc:
        """Run ``etcdlock --endpoints E ARGS...`` to its end."""
        proc = self.etcdlock(*args)
        proc.wait(timeout)
        return proc

    def run_etcdctl(self, *args: str, timeout: float = EXIT_TIMEOUT) -> Proc:
        proc = self.etcdctl(*args)
        proc.wait(timeout)
        return proc

    def status(self, name: str) -> dict[str, Any]:
        """``etcdlock status NAME -o json``, parsed."""
        proc = self.run("status", name, "-o", "json")
        assert proc.popen.returncode == 0, proc.describe()
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def wait_status(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = POLL_TIMEOUT
    ) -> dict[str, Any]:
        """Poll ``etcdlock status NAME -o json`` until ``predicate`` holds (each poll is a real command)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.status(name)
            if predicate(doc):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"status of {name} never matched within {timeout}s; last: {doc}")
            time.sleep(0.05)

    def wait_queue(self, name: str, holders: int, waiters: int) -> dict[str, Any]:
        return self.wait_status(name, lambda d: len(d["holders"]) == holders and len(d["waiters"]) == waiters)

    def close(self) -> None:
        for proc in self._procs:
            proc.stop()


def assert_one_line_error(proc: Proc) -> str:
    """The command failed as the CLI promises: exit 1, one stderr line "etcdlock: ...", no traceback."""
    code = proc.wait()
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.describe()
    assert lines[0].startswith("etcdlock: "), proc.describe()
    assert code == 1, proc.describe()
    assert proc.stdout == ""
    return lines[0]


def queue_keys(doc: dict[str, Any]) -> list[str]:
    """Every key of a status document in queue order (holders first)."""
    return [row["key"] for row in doc["holders"] + doc["waiters"]]
