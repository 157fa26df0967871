"""The status the process kubelet (:mod:`etcdlock_sandbox.containers`) reports for a pod, as a kubelet does.

Tools read these fields as they read a real node's (``kubectl get pods`` shows ``Init:1/2``,
``Init:CrashLoopBackOff``, ``Init:CreateContainerConfigError``; the operator waits on Ready), so they follow
the kubelet's rules: the phase is Pending until the pod's container has run once; Initialized is False
until every init container has completed; a container that exits and will run again shows its exit in
``lastState`` and waits in CrashLoopBackOff with its restart count up.
"""

from __future__ import annotations

from typing import Any

from etcdlock_sandbox.apiserver.api import now

Obj = dict[str, Any]


def exit_code(returncode: int) -> int:
    """A process's return code as a container's exit code: killed by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def terminated(code: int, started: str, reason: str = "", message: str = "") -> Obj:
    """A ``terminated`` state: Completed for exit code 0, Error otherwise, unless ``reason`` says."""
    state: Obj = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "startedAt": started,
        "finishedAt": now(),
    }
    if message:
        state["message"] = message
    return state


class ContainerStatus:
    """One entry of ``containerStatuses`` or ``initContainerStatuses``."""

    def __init__(self, container: Obj, waiting_reason: str) -> None:
        self.name: str = container.get("name", "")
        self.image: str = container.get("image", "")
        self.state: Obj = {"waiting": {"reason": waiting_reason}}
        self.last_state: Obj = {}
        self.restarts = 0
        self.ready = False

    @property
    def completed(self) -> bool:
        return int((self.state.get("terminated") or {}).get("exitCode", -1)) == 0

    def waiting(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}
        self.ready = False

    def running(self, started: str) -> None:
        self.state = {"running": {"startedAt": started}}

    def complete(self, ended: Obj) -> None:
        """An init container that exited 0: done for the pod's life."""
        self.state = {"terminated": ended}
        self.ready = True

    def failed(self, ended: Obj, backoff: float) -> None:
        """The process ended (or never started) and will be started again after ``backoff`` seconds."""
        self.restarts += 1
        self.last_state = {"terminated": ended}
        self.waiting("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container={self.name}")

    def document(self) -> Obj:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodStatus:
    """The whole status of a pod of processes: its init containers, its one container, phase, conditions."""

    def __init__(self, pod: Obj, address: str) -> None:
        spec = pod.get("spec") or {}
        self.init = [ContainerStatus(c, "PodInitializing") for c in spec.get("initContainers") or []]
        self.main = ContainerStatus(
            spec["containers"][0], "PodInitializing" if self.init else "ContainerCreating"
        )
        self._address = address
        self._start_time = now()
        self._transitions: dict[str, tuple[bool, str]] = {}

    def document(self) -> Obj:
        """The ``status`` to write (every field this kubelet owns, lists whole, for a merge patch)."""
        incomplete = " ".join(s.name for s in self.init if not s.completed)
        unready = f"containers with unready status: [{self.main.name}]"
        ran = self.main.restarts > 0 or "running" in self.main.state
        status: Obj = {
            "phase": "Running" if ran else "Pending",
            "hostIP": "127.0.0.1",
            "podIP": self._address,
            "podIPs": [{"ip": self._address}],
            "startTime": self._start_time,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition(
                    "Initialized",
                    not incomplete,
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{incomplete}]",
                ),
                self._condition("ContainersReady", self.main.ready, "ContainersNotReady", unready),
                self._condition("Ready", self.main.ready, "ContainersNotReady", unready),
            ],
            "containerStatuses": [self.main.document()],
        }
        if self.init:
            status["initContainerStatuses"] = [s.document() for s in self.init]
        return status

    def _condition(self, kind: str, true: bool, reason: str = "", message: str = "") -> Obj:
        """A condition whose lastTransitionTime moves only when its status does (reason and message: while
        False)."""
        known = self._transitions.get(kind)
        if known is None or known[0] != true:
            self._transitions[kind] = known = (true, now())
        condition: Obj = {"type": kind, "status": "True" if true else "False", "lastTransitionTime": known[1]}
        if not true:
            condition.update(reason=reason, message=message)
        return condition
