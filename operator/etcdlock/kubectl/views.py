"""What the plugin shows, computed from DistributedLocks as kubectl returns them (plain functions: the
status fields are those the operator writes, see :mod:`etcdlock.operator.locks`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from etcdlock import clock
from etcdlock.operator.releaserequest import POD_HOLDER

Row = dict[str, Any]
# Holders named in the HOLDERS column before "+N more".
SHOWN_HOLDERS = 3


def duration(seconds: float) -> str:
    """``seconds`` as kubectl prints ages: 45s, 3m12s, 2h5m, 3d4h ("" if unknown)."""
    if math.isinf(seconds) or seconds < 0:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


def lock_row(lock: Mapping[str, Any]) -> Row:
    """One lock: who holds it, how many wait, whether the operator serves it."""
    meta, status = lock.get("metadata") or {}, lock.get("status") or {}
    holders = list(status.get("holders") or ())
    ready = _ready(status)
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "permits": (lock.get("spec") or {}).get("permits", 1),
        "holderCount": status.get("holderCount", len(holders)),
        "waiterCount": status.get("waiterCount", len(status.get("waiters") or ())),
        "holders": holders,
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", ""),
        "message": ready.get("message", ""),
    }


def locks_table(rows: Sequence[Row], with_namespace: bool) -> list[list[str]]:
    """The ``locks`` table: a header, then a line per lock."""
    header = ["NAME", "HELD", "WAITING", "HOLDERS", "TOKEN", "HELD FOR", "READY", "REASON"]
    lines = [["NAMESPACE", *header] if with_namespace else header]
    for row in rows:
        holders = row["holders"]
        names = [str(h.get("holder", "")) for h in holders[:SHOWN_HOLDERS]]
        more = row["holderCount"] - len(names)
        first = holders[0] if holders else {}
        cells = [
            row["name"],
            f"{row['holderCount']}/{row['permits']}",
            str(row["waiterCount"]),
            ",".join(names) + (f" +{more} more" if more > 0 else "") or "<none>",
            str(first.get("fencingToken", "")),
            duration(clock.age(first.get("since"))) if first else "",
            row["ready"],
            row["reason"],
        ]
        lines.append([row["namespace"], *cells] if with_namespace else cells)
    return lines


def pod_of(holder: str, namespace: str) -> str:
    """The pod a holder name stands for (``pod/NAMESPACE/NAME``, as the operator names pods' holds), if it
    is in the lock's namespace; "" for any other holder."""
    pod_namespace, _, name = holder.removeprefix(POD_HOLDER).partition("/")
    return name if holder.startswith(POD_HOLDER) and pod_namespace == namespace else ""


def queue_rows(lock: Mapping[str, Any]) -> list[Row]:
    """The lock's queue as its status lists it: holders first, then waiters in order."""
    namespace = str((lock.get("metadata") or {}).get("namespace") or "")
    status = lock.get("status") or {}
    listed = [("holding", h) for h in status.get("holders") or ()]
    listed += [("waiting", w) for w in status.get("waiters") or ()]
    rows = []
    for position, (state, entry) in enumerate(listed, start=1):
        holder = str(entry.get("holder", ""))
        rows.append(
            {
                "position": position,
                "state": state,
                "holder": holder,
                "key": entry.get("key", ""),
                "fencingToken": entry.get("fencingToken"),
                "leaseID": entry.get("leaseID", ""),
                "since": entry.get("since", ""),
                "pod": pod_of(holder, namespace),
            }
        )
    return rows


def queue_table(rows: Sequence[Row]) -> list[list[str]]:
    header = ["#", "STATE", "HOLDER", "KEY", "TOKEN", "LEASE", "HELD FOR", "POD"]
    lines = [header]
    for row in rows:
        since = row["since"]
        cells = [str(row["position"]), row["state"], row["holder"], row["key"], str(row["fencingToken"])]
        lines.append([*cells, row["leaseID"], duration(clock.age(since)) if since else "", row["pod"]])
    return lines


def unlisted(lock: Mapping[str, Any]) -> str:
    """A note when the status counts more holders or waiters than it lists ("" when it lists them all)."""
    status = lock.get("status") or {}
    held = int(status.get("holderCount") or 0) - len(status.get("holders") or ())
    waiting = int(status.get("waiterCount") or 0) - len(status.get("waiters") or ())
    if held <= 0 and waiting <= 0:
        return ""
    return (
        f"{max(held, 0)} more holders and {max(waiting, 0)} more waiters are counted but not listed in status"
    )


def render(lines: Sequence[Sequence[str]]) -> str:
    """Columns as kubectl prints them: left-aligned, three spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(out) + "\n"
