"""Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``), so ``kubectl get`` prints
the columns the server chooses: a CRD's ``additionalPrinterColumns``, and kube-apiserver's own ones for
pods, namespaces, configmaps, secrets, events, services, persistentvolumeclaims, statefulsets and
deployments (other built-in kinds get Name and Age).

Each row carries its object as ``includeObject`` asks (kubectl's ``--sort-by`` asks for ``Object``): the
object's metadata (``Metadata``, the default), the whole object (``Object``) or nothing (``None``). A watch
sends one table per event, with the column definitions in the first only (``headers=False`` after it), as
kube-apiserver does to save bandwidth.

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
_SERVICE_COLUMNS = (
    {"name": "Type", "type": "string"},
    {"name": "Cluster-IP", "type": "string"},
    {"name": "External-IP", "type": "string"},
    {"name": "Port(s)", "type": "string"},
    _AGE,
    {"name": "Selector", "type": "string", "priority": 1},
)
_CLAIM_COLUMNS = (
    {"name": "Status", "type": "string"},
    {"name": "Volume", "type": "string"},
    {"name": "Capacity", "type": "string"},
    {"name": "Access Modes", "type": "string"},
    {"name": "StorageClass", "type": "string"},
    {"name": "VolumeAttributesClass", "type": "string"},
    _AGE,
    {"name": "VolumeMode", "type": "string", "priority": 1},
)
_TEMPLATE_COLUMNS = (
    {"name": "Containers", "type": "string", "priority": 1},
    {"name": "Images", "type": "string", "priority": 1},
)
_STATEFULSET_COLUMNS = ({"name": "Ready", "type": "string"}, _AGE, *_TEMPLATE_COLUMNS)
_DEPLOYMENT_COLUMNS = (
    {"name": "Ready", "type": "string"},
    {"name": "Up-to-date", "type": "string"},
    {"name": "Available", "type": "string"},
    _AGE,
    *_TEMPLATE_COLUMNS,
    {"name": "Selector", "type": "string", "priority": 1},
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
    ("", "services"): (_NAME, *_SERVICE_COLUMNS),
    ("", "persistentvolumeclaims"): (_NAME, *_CLAIM_COLUMNS),
    ("apps", "statefulsets"): (_NAME, *_STATEFULSET_COLUMNS),
    ("apps", "deployments"): (_NAME, *_DEPLOYMENT_COLUMNS),
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


def _service_cells(service: Obj) -> list[Any]:
    """As kube-apiserver's service printer (always wide): headless services show ``None`` as their IP."""
    spec = service.get("spec") or {}
    addresses = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = ",".join(_port(port) for port in spec.get("ports") or [])
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        _name(service),
        spec.get("type") or "ClusterIP",
        addresses[0] if addresses else "<none>",
        _external_ip(service),
        ports or "<none>",
        _age_of(service),
        selector or "<none>",
    ]


def _port(port: Obj) -> str:
    protocol = port.get("protocol") or "TCP"
    if port.get("nodePort"):
        return f"{port.get('port')}:{port['nodePort']}/{protocol}"
    return f"{port.get('port')}/{protocol}"


def _external_ip(service: Obj) -> str:
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    if kind != "LoadBalancer":
        return "<unknown>"
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    balancers = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
    return ",".join([*balancers, *external]) or "<pending>"


_ACCESS_MODES = (
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
)


def _claim_cells(claim: Obj) -> list[Any]:
    """As kube-apiserver's claim printer: capacity and access modes are shown once a volume is bound."""
    meta, spec, status = claim["metadata"], claim.get("spec") or {}, claim.get("status") or {}
    phase = "Terminating" if meta.get("deletionTimestamp") else status.get("phase", "")
    volume = spec.get("volumeName") or ""
    modes = status.get("accessModes") or []
    storage_class = (meta.get("annotations") or {}).get("volume.beta.kubernetes.io/storage-class")
    return [
        _name(claim),
        phase,
        volume,
        str((status.get("capacity") or {}).get("storage", "")) if volume else "",
        ",".join(short for mode, short in _ACCESS_MODES if mode in modes) if volume else "",
        storage_class if storage_class is not None else spec.get("storageClassName") or "",
        spec.get("volumeAttributesClassName") or "<unset>",
        _age_of(claim),
        spec.get("volumeMode") or "<unset>",
    ]


def _template_cells(obj: Obj) -> list[str]:
    """The wide Containers and Images cells of a workload: its pod template's."""
    containers = ((((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)]


def _replicas(obj: Obj) -> int:
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def _statefulset_cells(sts: Obj) -> list[Any]:
    ready = int((sts.get("status") or {}).get("readyReplicas") or 0)
    return [_name(sts), f"{ready}/{_replicas(sts)}", _age_of(sts), *_template_cells(sts)]


def _deployment_cells(deployment: Obj) -> list[Any]:
    status = deployment.get("status") or {}
    return [
        _name(deployment),
        f"{int(status.get('readyReplicas') or 0)}/{_replicas(deployment)}",
        int(status.get("updatedReplicas") or 0),
        int(status.get("availableReplicas") or 0),
        _age_of(deployment),
        *_template_cells(deployment),
        _selector((deployment.get("spec") or {}).get("selector") or {}),
    ]


def _selector(selector: Obj) -> str:
    """A label selector as kubectl writes one: ``a=b,c in (d,e),!f``."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = ",".join(sorted(expression.get("values") or []))
        terms.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "DoesNotExist": f"!{key}"}.get(
                operator, key
            )
        )
    return ",".join(terms) or "<none>"


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
    ("", "services"): _service_cells,
    ("", "persistentvolumeclaims"): _claim_cells,
    ("apps", "statefulsets"): _statefulset_cells,
    ("apps", "deployments"): _deployment_cells,
}


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _age_of(obj: Obj) -> str:
    return age(obj.get("metadata", {}).get("creationTimestamp"))


def columns_of(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.printer_columns:
        return [_NAME, *rtype.printer_columns]
    return list(_BUILTIN_COLUMNS.get((rtype.group, rtype.plural), (_NAME, _AGE)))


INCLUDE_OBJECT = ("Metadata", "Object", "None")


def table(
    rtype: ResourceType,
    objects: list[Obj],
    resource_version: str,
    include_object: str = "Metadata",
    headers: bool = True,
) -> Obj:
    """The Table of ``objects``; ``include_object`` is one of INCLUDE_OBJECT, ``headers`` False leaves
    the column definitions out (null, as kube-apiserver's ``NoHeaders``)."""
    columns = columns_of(rtype)
    rows = [
        {"cells": _cells(rtype, columns, obj), "object": _row_object(obj, include_object)} for obj in objects
    ]
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
        "columnDefinitions": definitions if headers else None,
        "rows": rows,
    }


def _cells(rtype: ResourceType, columns: list[dict[str, Any]], obj: Obj) -> list[Any]:
    cells_of = None if rtype.printer_columns else _CELLS.get((rtype.group, rtype.plural))
    if cells_of is not None:
        return list(cells_of(obj))
    return [obj["metadata"]["name"], *(_cell(c, obj) for c in columns[1:])]


def _row_object(obj: Obj, include_object: str) -> Obj | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    metadata = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
