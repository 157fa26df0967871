"""The plugin's way to the cluster: ``kubectl`` itself, run with the flags the user gave the plugin
(``--kubeconfig``, ``--context``, ``--namespace`` / ``--all-namespaces``), answering JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from etcdlock.kubectl.errors import KubectlFailed

RESOURCE = "distributedlocks.etcdlock.io"
# Bounds every kubectl run (kubectl's own --request-timeout is per request; discovery makes several).
RUN_TIMEOUT = 60.0


def kubectl_binary() -> str:
    """``ETCDLOCK_KUBECTL`` if set, else the ``kubectl`` on PATH."""
    chosen = os.environ.get("ETCDLOCK_KUBECTL") or shutil.which("kubectl")
    if not chosen:
        raise KubectlFailed("kubectl is not on PATH (or set ETCDLOCK_KUBECTL to its path)")
    return chosen


@dataclass(frozen=True)
class Target:
    """Which cluster, as the user's flags say (None: kubectl's own default, the current context's)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False

    def connection(self) -> list[str]:
        flags = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        return flags + ([f"--context={self.context}"] if self.context else [])

    def scope(self) -> list[str]:
        if self.all_namespaces:
            return ["--all-namespaces"]
        return [f"--namespace={self.namespace}"] if self.namespace else []


class Kubectl:
    """kubectl, run once per call with the target's flags."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._binary = kubectl_binary()

    def run(self, args: Sequence[str], *, scoped: bool = True) -> str:
        """kubectl's stdout; :class:`KubectlFailed` with kubectl's last error line if it fails. The flags go
        after the command: kubectl takes a command's flag placed before it for a plugin's name."""
        flags = self.target.connection() + (self.target.scope() if scoped else [])
        try:
            done = subprocess.run(
                [self._binary, *args, *flags],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        except OSError as exc:
            raise KubectlFailed(f"cannot run {self._binary}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise KubectlFailed(f"kubectl {args[0]} did not answer within {RUN_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise KubectlFailed(lines[-1] if lines else f"kubectl {args[0]} exited {done.returncode}")
        return done.stdout

    def json(self, args: Sequence[str], *, scoped: bool = True) -> Any:
        output = self.run([*args, "--output=json"], scoped=scoped)
        try:
            return json.loads(output)
        except ValueError:
            raise KubectlFailed(f"kubectl {args[0]} did not answer JSON") from None

    def locks(self) -> list[dict[str, Any]]:
        """Every DistributedLock in scope."""
        return list(self.json(["get", RESOURCE]).get("items") or [])

    def lock(self, name: str) -> dict[str, Any]:
        lock: dict[str, Any] = self.json(["get", RESOURCE, name])
        return lock

    def merge_patch(self, name: str, patch: dict[str, Any]) -> None:
        self.run(["patch", RESOURCE, name, "--type=merge", f"--patch={json.dumps(patch)}"])

    def user(self) -> str:
        """Who kubectl authenticates as: the API server's answer (``kubectl auth whoami``) where it gives
        one, else the user the kubeconfig's context names."""
        try:
            review = self.json(["auth", "whoami"], scoped=False)
            name = str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "")
        except KubectlFailed:
            name = ""
        if name:
            return name
        jsonpath = "--output=jsonpath={.contexts[0].context.user}"
        try:
            return self.run(["config", "view", "--minify", jsonpath], scoped=False).strip() or "unknown"
        except KubectlFailed:
            return "unknown"
