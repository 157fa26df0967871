"""Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``), so ``kubectl get`` prints
the columns the server chooses: a CRD's ``additionalPrinterColumns``, and a few built-in ones for pods.

``jsonPath`` supports what printer columns use: ``.a.b``, ``[N]``, ``[*]`` and ``[?(@.k=="v")]``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from etcdlock.sandbox.apiserver.resources import ResourceType

Obj = dict[str, Any]

_TOKEN = re.compile(
    r"""\.([A-Za-z0-9_\-]+)|\[(\*|-?\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*["']([^"']*)["']\)\]|\['([^']+)'\]"""
)
_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name of the object",
    "priority": 0,
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_POD_COLUMNS = (
    {"name": "Ready", "type": "string", "jsonPath": ""},
    {"name": "Status", "type": "string", "jsonPath": ""},
    {"name": "Restarts", "type": "integer", "jsonPath": ""},
    _AGE,
)


def evaluate(path: str, obj: Any) -> list[Any]:
    """All values ``path`` selects in ``obj`` (an empty list if none)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values = [obj]
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if match is None:
            return []
        position = match.end()
        key, index, filter_key, filter_value, quoted = match.groups()
        found: list[Any] = []
        for value in values:
            if key is not None or quoted is not None:
                if isinstance(value, dict) and (key or quoted) in value:
                    found.append(value[key or quoted])
            elif index is not None and isinstance(value, list):
                if index == "*":
                    found.extend(value)
                elif -len(value) <= int(index) < len(value):
                    found.append(value[int(index)])
            elif filter_key is not None and isinstance(value, list):
                found.extend(
                    i for i in value if [str(v) for v in evaluate("." + filter_key, i)] == [filter_value]
                )
        values = found
    return values


def age(timestamp: str | None) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "<unknown>"
    seconds = max(
        0, int((datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    )
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(column: dict[str, Any], obj: Obj) -> Any:
    values = evaluate(column.get("jsonPath", ""), obj) if column.get("jsonPath") else []
    if not values:
        return None
    if column.get("type") == "date":
        return age(str(values[0]))
    if len(values) == 1:
        value = values[0]
        return value if isinstance(value, (str, int, float, bool)) else str(value)
    return ",".join(str(v) for v in values)


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = status.get("phase", "Pending")
    if spec.get("schedulingGates"):
        phase = "SchedulingGated"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        phase = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [f"{ready}/{len(containers)}", phase, restarts, age(pod["metadata"].get("creationTimestamp"))]


def columns_of(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.printer_columns:
        return [_NAME, *rtype.printer_columns]
    if rtype.group == "" and rtype.plural == "pods":
        return [_NAME, *_POD_COLUMNS]
    return [_NAME, _AGE]


def table(rtype: ResourceType, objects: list[Obj], resource_version: str) -> Obj:
    columns = columns_of(rtype)
    rows = []
    for obj in objects:
        if rtype.group == "" and rtype.plural == "pods" and not rtype.printer_columns:
            cells = [obj["metadata"]["name"], *_pod_cells(obj)]
        else:
            cells = [obj["metadata"]["name"], *(_cell(c, obj) for c in columns[1:])]
        metadata = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                },
            }
        )
    definitions = [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
