"""Wall-clock time as Kubernetes and etcdlock's key values write it: RFC 3339, UTC, whole seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> str:
    """The current time, e.g. ``2026-12-05T21:35:40Z`` (every acquire writes one: strftime, not datetime,
    costs a third)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def age(timestamp: str | None) -> float:
    """Seconds since ``timestamp`` (RFC 3339); infinite when there is none."""
    if not timestamp:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()
