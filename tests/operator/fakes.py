"""Fakes for unit tests of the controllers (never of etcd: etcd is always real)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from etcdlock.operator.kube import Kube


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str
    kind: str
    name: str


@dataclass
class RecordedEvents:
    """An :class:`~etcdlock.operator.events.EventRecorder` that keeps what it is told, in order."""

    events: list[Event] = field(default_factory=list)

    def info(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self._record("Normal", obj, reason, message)

    def warn(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self._record("Warning", obj, reason, message)

    def reasons(self, kind: str | None = None) -> list[str]:
        return [e.reason for e in self.events if kind is None or e.type == kind]

    def _record(self, kind: str, obj: Mapping[str, Any], reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        self.events.append(
            Event(kind, reason, message, str(obj.get("kind") or ""), str(meta.get("name") or ""))
        )


def unreachable_kube() -> Kube:
    """The real adapter, pointed at a loopback port where no API server listens (no retries of its own)."""
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    configuration.retries = False
    return Kube(kubernetes.client.ApiClient(configuration))
