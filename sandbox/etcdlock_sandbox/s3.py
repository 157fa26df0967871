"""A local S3-compatible object store on loopback: moto's server mode, for the backup tests and the demo.

moto cannot live in the project's venv (botocore requires python-dateutil<3, kubernetes >=3), so the
Makefile builds ``.venv-moto`` and points ``ETCDLOCK_SANDBOX_MOTO_SERVER`` at its ``moto_server``; without
that variable, ``moto_server`` on PATH is used. moto accepts any credentials and region, and requests signed
or not. Every process started here is stopped by :meth:`S3Server.close` (also on ``with`` exit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from etcdlock_sandbox.etcd import free_port

MOTO_SERVER_VARIABLE = "ETCDLOCK_SANDBOX_MOTO_SERVER"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


class MotoNotFound(FileNotFoundError):
    """No moto_server to run: the message says how to get one."""


def moto_server() -> str:
    """The moto_server executable: ``$ETCDLOCK_SANDBOX_MOTO_SERVER``, else the one on PATH."""
    configured = os.environ.get(MOTO_SERVER_VARIABLE)
    if configured:
        if not os.access(configured, os.X_OK):
            raise MotoNotFound(f"{MOTO_SERVER_VARIABLE}={configured} is not an executable: run `make test`")
        return configured
    found = shutil.which("moto_server")
    if found is None:
        raise MotoNotFound(
            f"moto_server not found: run `make test` (it builds .venv-moto and sets {MOTO_SERVER_VARIABLE}), "
            f"or set {MOTO_SERVER_VARIABLE} to a moto_server of moto[server]>=5.2.6"
        )
    return found


class S3Server:
    """moto's S3 on a free loopback port: ``endpoint`` is its URL, :meth:`create_bucket` makes a bucket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        """Start moto and return once it answers (at most ``START_TIMEOUT`` seconds)."""
        command = [moto_server(), "-H", "127.0.0.1", "-p", str(self.port)]
        self._folder = Path(tempfile.mkdtemp(prefix="etcdlock-s3-"))
        with (self._folder / "moto.log").open("ab") as output:
            self._process = subprocess.Popen(command, stdout=output, stderr=output, stdin=subprocess.DEVNULL)
        try:
            self._wait_answering()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_answering(self) -> None:
        assert self._process is not None and self._folder is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                tail = (self._folder / "moto.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"moto_server exited with {self._process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto_server did not answer at {self.endpoint} in {START_TIMEOUT}s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def create_bucket(self, name: str) -> None:
        """Create a bucket (an unsigned PUT, which moto accepts); creating one that exists is fine."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", data=b"", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    @property
    def pid(self) -> int | None:
        """moto's process id while it runs."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Stop moto (SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds) and delete its log."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
