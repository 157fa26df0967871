"""Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``), so ``kubectl get`` prints
the columns the server chooses: a CRD's ``additionalPrinterColumns``, and kube-apiserver's own ones for
pods, namespaces, configmaps, secrets and events (other built-in kinds get Name and Age).

``jsonPath`` supports what printer columns use: ``.a.b``, ``[N]``, ``[*]`` and ``[?(@.k=="v")]``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from etcdlock_sandbox.apiserver.resources import ResourceType

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
    {"name": "IP", "type": "string", "jsonPath": "", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": "", "priority": 1},
    {"name": "Nominated Node", "type": "string", "jsonPath": "", "priority": 1},
    {"name": "Readiness Gates", "type": "string", "jsonPath": "", "priority": 1},
)
_EVENT_COLUMNS = (
    {"name": "Last Seen", "type": "string"},
    {"name": "Type", "type": "string"},
    {"name": "Reason", "type": "string"},
    {"name": "Object", "type": "string"},
    {"name": "Subobject", "type": "string", "priority": 1},
    {"name": "Source", "type": "string", "priority": 1},
    {"name": "Message", "type": "string"},
    {"name": "First Seen", "type": "string", "priority": 1},
    {"name": "Count", "type": "integer", "priority": 1},
    {"name": "Name", "type": "string", "format": "name", "priority": 1},
)
# Built-in kinds whose columns kube-apiserver's printers define (it always sends the wide columns, with
# priority 1; kubectl shows those only for ``-o wide``). The cells come from the functions in _CELLS.
_BUILTIN_COLUMNS: dict[tuple[str, str], tuple[dict[str, Any], ...]] = {
    ("", "pods"): (_NAME, *_POD_COLUMNS),
    ("", "namespaces"): (_NAME, {"name": "Status", "type": "string"}, _AGE),
    ("", "configmaps"): (_NAME, {"name": "Data", "type": "integer"}, _AGE),
    ("", "secrets"): (_NAME, {"name": "Type", "type": "string"}, {"name": "Data", "type": "integer"}, _AGE),
    ("", "events"): _EVENT_COLUMNS,
    ("events.k8s.io", "events"): _EVENT_COLUMNS,
}


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
    """The first value the column's jsonPath selects, as kube-apiserver's CRD table convertor shows it."""
    values = evaluate(column.get("jsonPath", ""), obj) if column.get("jsonPath") else []
    if not values:
        return None
    value = values[0]
    if column.get("type") == "date":
        return age(str(value))
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _initializing(spec: Obj, status: Obj) -> str | None:
    """kubectl's STATUS for a pod whose init containers have not all completed (``Init:1/2``,
    ``Init:CrashLoopBackOff``, ``Init:Error``); None once they have."""
    for index, container in enumerate(status.get("initContainerStatuses") or []):
        state = container.get("state") or {}
        ended, waiting = state.get("terminated"), (state.get("waiting") or {}).get("reason")
        if ended and ended.get("exitCode") == 0:
            continue
        if ended:
            return f"Init:{ended.get('reason') or 'ExitCode:' + str(ended.get('exitCode'))}"
        if waiting and waiting != "PodInitializing":
            return f"Init:{waiting}"
        return f"Init:{index}/{len(spec.get('initContainers') or [])}"
    return None


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = status.get("phase", "Pending")
    initializing = _initializing(spec, status)
    if initializing is not None:  # as kubectl's printer: the init containers' state and restarts until done
        phase = initializing
        restarts = sum(int(s.get("restartCount", 0)) for s in status.get("initContainerStatuses") or [])
    else:
        for container in statuses:  # a container's waiting or terminated reason wins
            state = container.get("state") or {}
            reason = (state.get("terminated") or state.get("waiting") or {}).get("reason")
            if reason:
                phase = reason
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    if spec.get("schedulingGates"):
        phase = "SchedulingGated"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        phase = "Terminating"
    gates = spec.get("readinessGates") or []
    gates_ready = sum(
        1
        for gate in gates
        for condition in status.get("conditions") or ()
        if condition.get("type") == gate.get("conditionType") and condition.get("status") == "True"
    )
    return [
        f"{ready}/{len(containers)}",
        phase,
        restarts,
        age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{gates_ready}/{len(gates)}" if gates else "<none>",
    ]


def _event_cells(event: Obj) -> list[Any]:
    """As kube-apiserver's event printer; events.k8s.io/v1 names its fields differently."""
    involved = event.get("involvedObject") or event.get("regarding") or {}
    kind, name = str(involved.get("kind", "")).lower(), involved.get("name")
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingController") or ""
    host = source.get("host") or event.get("reportingInstance") or ""
    first = event.get("firstTimestamp") or event.get("deprecatedFirstTimestamp") or event.get("eventTime")
    last = event.get("lastTimestamp") or event.get("deprecatedLastTimestamp") or first
    series = event.get("series") or {}
    count = series.get("count") or event.get("count") or event.get("deprecatedCount") or 1
    if series.get("lastObservedTime"):
        last = series["lastObservedTime"]
    return [
        age(last),
        event.get("type", ""),
        event.get("reason", ""),
        f"{kind}/{name}" if name else kind,
        involved.get("fieldPath", ""),
        f"{component}, {host}" if host else component,
        str(event.get("message") or event.get("note") or "").strip(),
        age(first),
        int(count),
        event["metadata"]["name"],
    ]


def _data_count(obj: Obj) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


# The whole row of each kind in _BUILTIN_COLUMNS, in its columns' order.
_CELLS: dict[tuple[str, str], Any] = {
    ("", "pods"): lambda pod: [_name(pod), *_pod_cells(pod)],
    ("", "namespaces"): lambda ns: [_name(ns), (ns.get("status") or {}).get("phase", ""), _age_of(ns)],
    ("", "configmaps"): lambda cm: [_name(cm), _data_count(cm), _age_of(cm)],
    ("", "secrets"): lambda s: [_name(s), s.get("type", ""), _data_count(s), _age_of(s)],
    ("", "events"): _event_cells,
    ("events.k8s.io", "events"): _event_cells,
}


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _age_of(obj: Obj) -> str:
    return age(obj.get("metadata", {}).get("creationTimestamp"))


def columns_of(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.printer_columns:
        return [_NAME, *rtype.printer_columns]
    return list(_BUILTIN_COLUMNS.get((rtype.group, rtype.plural), (_NAME, _AGE)))


def table(rtype: ResourceType, objects: list[Obj], resource_version: str) -> Obj:
    columns = columns_of(rtype)
    rows = []
    for obj in objects:
        cells_of = None if rtype.printer_columns else _CELLS.get((rtype.group, rtype.plural))
        if cells_of is not None:
            cells = cells_of(obj)
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
