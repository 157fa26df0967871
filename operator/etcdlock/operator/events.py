"""Events about Kubernetes objects. The controllers name what happened through an :class:`EventRecorder`
passed in, never through kopf, so they run (and are tested) without a live operator; the kopf layer
(:mod:`etcdlock.operator.handlers`) passes one that posts through kopf."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class EventRecorder(Protocol):
    """Records Events on ``obj`` (a pod or a custom object, as a dict with apiVersion, kind, metadata)."""

    def info(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """A Normal Event."""

    def warn(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event."""
