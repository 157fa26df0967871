"""``etcdlock sandbox up`` / ``down``: the sandbox as a background process with its state under a folder.

``up`` starts ``python -m etcdlock_sandbox.daemon DIR PORT [--operator CRDS]`` in a new session, waits
until it answers and has written ``DIR/kubeconfig`` (and ``DIR/cluster-dns``, the path of the hosts file
that gives a process the sandbox's cluster DNS; with the operator, until that is ready too),
and returns; on a sandbox already running it returns at once, or refuses ``--operator`` if that sandbox
runs no operator. ``down`` stops it (SIGTERM, SIGKILL after a grace period);
the process then stops the API and etcd and deletes etcd's data: the sandbox starts empty every time.
``down`` then removes every file the sandbox, its operator and the demo wrote in the folder (:data:`STATE`),
and the folder itself once empty, so a folder ``up`` created goes, and logs start afresh at each ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from etcdlock_sandbox.cluster import Sandbox
from etcdlock_sandbox.operator import InstalledOperator, OperatorError

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


STATE = (
    "sandbox.pid",
    "sandbox.log",
    "kubeconfig",
    "etcd-endpoints",
    "cluster-dns",
    "etcd",
    "operator.pid",
    "operator.log",
    "metrics-url",
    "webhook",
    "work",
)
"""Everything a sandbox writes in its folder: its own files, etcd's data (and the pods' folders) in
``etcd``, its operator's files (see InstalledOperator), and ``work``, the folder of the sandbox's users
(the demo's client certificates and backups)."""


class SandboxError(Exception):
    """The sandbox could not be started or stopped; the message says why."""


def _pid_file(directory: Path) -> Path:
    return directory / "sandbox.pid"


def work_folder(directory: Path) -> Path:
    """Where a user of the sandbox (the demo) keeps files that go with it: ``down`` removes them."""
    folder = directory / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def running_pid(directory: Path) -> int | None:
    """The pid of the sandbox serving ``directory``, if it is alive."""
    try:
        pid = int(_pid_file(directory).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _exited(pid: int) -> bool:
    """The process is gone, or a zombie: it has exited, but whoever adopted it has not reaped it yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def _answers(kubeconfig: Path) -> bool:
    """The kubeconfig exists and the API server it names answers /readyz."""
    try:
        server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        with urllib.request.urlopen(f"{server}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, LookupError, urllib.error.URLError):
        return False


def _operator_pid_file(directory: Path) -> Path:
    """Written by the sandbox's operator as it starts (see InstalledOperator), removed as it stops."""
    return directory / "operator.pid"


def runs_operator(directory: Path) -> bool:
    """The sandbox serving ``directory`` was started with the operator, and its process is alive."""
    try:
        return not _exited(int(_operator_pid_file(directory).read_text()))
    except (OSError, ValueError):
        return False


def _no_operator(directory: Path) -> str:
    """Why ``up --operator`` cannot use the sandbox running in ``directory``, and what to run instead.

    A running sandbox keeps what it was started with: the operator cannot join it later, and stopping
    the sandbox silently would drop every object in it.
    """
    why = (
        f"its operator exited: see {directory / 'operator.log'}"
        if _operator_pid_file(directory).exists()
        else "it was started without --operator"
    )
    return (
        f"a sandbox already runs in {directory} and the operator does not run in it ({why}); "
        f"run `etcdlock sandbox down --dir {directory}` first (its objects go), then `up --operator` again"
    )


def up(directory: Path, port: int = 0, crds: Path | None = None) -> Path:
    """Start the sandbox in the background (unless it runs already); returns the kubeconfig path.

    With ``crds`` (a folder of CRD YAML files) the CRDs are installed and the etcdlock operator runs in the
    sandbox too, with its webhook registered. A sandbox already running without a working operator is
    refused (SandboxError), not reported as running one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = directory / "kubeconfig"
    if running_pid(directory) is not None and _answers(kubeconfig):
        if crds is not None and not runs_operator(directory):
            raise SandboxError(_no_operator(directory))
        return kubeconfig
    if crds is not None and not sorted(crds.glob("*.yaml")):
        raise SandboxError(f"no CRD files (*.yaml) in {crds}: pass --crds with a folder of CRD YAML files")
    kubeconfig.unlink(missing_ok=True)
    _operator_pid_file(directory).unlink(missing_ok=True)
    log = (directory / "sandbox.log").open("wb")
    operator = ["--operator", str(crds.resolve())] if crds is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "etcdlock_sandbox.daemon", str(directory), str(port), *operator],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not (_answers(kubeconfig) and running_pid(directory) is not None):
        if process.poll() is not None:
            raise SandboxError(f"the sandbox exited during start-up: see {directory / 'sandbox.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise SandboxError(
                f"the sandbox did not start within {START_TIMEOUT:.0f}s: see {directory / 'sandbox.log'}"
            )
        time.sleep(0.1)
    return kubeconfig


def down(directory: Path) -> bool:
    """Stop the sandbox serving ``directory`` and remove its files; False if none was running."""
    stopped = _stop(directory)
    _remove_state(directory)
    return stopped


def _remove_state(directory: Path) -> None:
    """Remove what the sandbox wrote in ``directory`` (only that), then the folder if nothing else is left."""
    for name in STATE:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def _stop(directory: Path) -> bool:
    """SIGTERM the sandbox serving ``directory`` and wait for it (SIGKILL to its process group after
    STOP_TIMEOUT); False if none was running."""
    pid = running_pid(directory)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    # Wait for the process itself, not its pid file: it removes the file a moment before it exits.
    while not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _exited(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


async def serve(directory: Path, port: int, crds: Path | None = None) -> None:
    """Run the sandbox until SIGTERM/SIGINT, then stop everything and delete etcd's data."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    data = directory / "etcd"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    try:
        async with Sandbox(workdir=data, port=port) as sandbox:
            assert sandbox.etcd is not None
            kubeconfig = sandbox.write_kubeconfig(directory / "kubeconfig")
            etcd = sandbox.etcd.endpoint_list
            (directory / "etcd-endpoints").write_text(etcd)
            (directory / "cluster-dns").write_text(str(sandbox.hosts))
            print(f"sandbox API at {sandbox.url}, etcd at {etcd}", flush=True)
            async with contextlib.AsyncExitStack() as stack:
                if crds is not None:
                    await stack.enter_async_context(
                        InstalledOperator(directory, kubeconfig, etcd, crds, sandbox.hosts)
                    )
                _pid_file(directory).write_text(str(os.getpid()))
                await stop.wait()
    finally:
        (directory / "etcd-endpoints").unlink(missing_ok=True)
        (directory / "cluster-dns").unlink(missing_ok=True)
        (directory / "kubeconfig").unlink(missing_ok=True)
        _pid_file(directory).unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    crds_dir = Path(sys.argv[4]) if sys.argv[3:4] == ["--operator"] else None
    try:
        asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), crds_dir))
    except OperatorError as exc:
        sys.exit(f"sandbox: {exc}")
