"""Events about Kubernetes objects, through kopf's event poster (one place, so the domain modules name
what happened and not how it is posted)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf


def info(obj: Mapping[str, Any], reason: str, message: str) -> None:
    """A Normal Event on ``obj`` (a pod or a custom object, as a dict with apiVersion, kind, metadata)."""
    kopf.info(cast(kopf.Body, obj), reason=reason, message=message)


def warn(obj: Mapping[str, Any], reason: str, message: str) -> None:
    """A Warning Event on ``obj``."""
    kopf.warn(cast(kopf.Body, obj), reason=reason, message=message)
