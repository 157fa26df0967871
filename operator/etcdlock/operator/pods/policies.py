"""A pod's policies, read from its annotations by pure functions.

- ``etcdlock.io/max-wait``: how long the pod may wait for its lock, a Go duration (``90s``, ``10m``,
  ``1h30m``, ``1.5h``; units ``h``, ``m``, ``s``, ``ms``), counted from the pod's creationTimestamp: a time
  the API server keeps, so an operator restart or failover neither restarts nor loses the count. At most
  :data:`MAX_DURATION` (10 years): a longer wait is no bound a user means, and an unbounded number would
  overflow the dates it is added to.
- ``etcdlock.io/on-lost``: what the operator does when the pod's hold is lost: ``keep`` (the default, the
  behaviour of releases without this annotation: the pod is told, and runs on) or ``evict`` (the pod is
  evicted through the Eviction API, so its work stops, as ``etcdlock lock -- CMD`` stops CMD).
- ``etcdlock.io/annotated-after-creation``: set by the webhook on the update that adds the lock annotation
  to a pod that exists (such a pod cannot be gated any more).

An invalid value is a :class:`PolicyError` whose message names the annotation and the value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from etcdlock.operator.errors import OperatorError
from etcdlock.operator.names import ANNOTATED_LATE_ANNOTATION, MAX_WAIT_ANNOTATION, ON_LOST_ANNOTATION
from etcdlock.operator.pods.api import annotations_of

_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")
MAX_DURATION = timedelta(days=3650)


class PolicyError(OperatorError):
    """A policy annotation of a pod has a value the operator cannot use."""

    reason = "InvalidAnnotation"


class OnLost(enum.Enum):
    """What happens to a pod whose hold is lost."""

    KEEP = "keep"
    EVICT = "evict"


def parse_duration(text: str) -> timedelta:
    """A positive Go duration (``1h30m``) of at most :data:`MAX_DURATION`; :class:`ValueError` for anything
    else (a number too long for a float is infinite, and refused as too long)."""
    if not _DURATION.fullmatch(text):
        raise ValueError(text)
    seconds = sum(float(number) * _UNIT[unit] for number, unit in _PART.findall(text))
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        raise ValueError(text)
    return timedelta(seconds=seconds)


def max_wait(pod: Mapping[str, Any]) -> timedelta | None:
    """The pod's max-wait; None if it has none; :class:`PolicyError` if it is not a positive duration."""
    value = annotations_of(pod).get(MAX_WAIT_ANNOTATION)
    if value is None:
        return None
    try:
        return parse_duration(value.strip())
    except ValueError:
        raise PolicyError(
            f'{MAX_WAIT_ANNOTATION}: "{value}" is not a duration of 10 years at most '
            "(write it as 90s, 10m or 1h30m)"
        ) from None


def deadline(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod's max-wait runs out (from its creation); None without a max-wait (or a creation
    time, which the API server always sets)."""
    wait = max_wait(pod)
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    if wait is None or not created:
        return None
    return datetime.fromisoformat(str(created)) + wait


def on_lost(pod: Mapping[str, Any]) -> OnLost:
    """The pod's on-lost policy (``keep`` without the annotation); :class:`PolicyError` if unknown."""
    value = annotations_of(pod).get(ON_LOST_ANNOTATION)
    if value is None:
        return OnLost.KEEP
    try:
        return OnLost(value.strip())
    except ValueError:
        raise PolicyError(f'{ON_LOST_ANNOTATION}: "{value}" is neither keep nor evict') from None


def policy_error(pod: Mapping[str, Any]) -> str:
    """Why the pod's policies cannot be used ("" if they can)."""
    try:
        max_wait(pod)
        on_lost(pod)
    except PolicyError as exc:
        return str(exc)
    return ""


def annotated_late(pod: Mapping[str, Any]) -> bool:
    """Whether the webhook saw the lock annotation added to the pod after its creation."""
    return ANNOTATED_LATE_ANNOTATION in annotations_of(pod)
