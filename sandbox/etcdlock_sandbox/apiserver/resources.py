"""The kinds the emulator serves: the built-in ones the project touches, and every established CRD.

A :class:`ResourceType` carries what discovery, routing, storage and validation need to know about a kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

FieldGetter = Callable[[dict[str, Any]], str | None]


def _path(*keys: str) -> FieldGetter:
    def get(obj: dict[str, Any]) -> str | None:
        value: Any = obj
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return None if value is None else str(value)

    return get


COMMON_FIELDS: Mapping[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}


@dataclass(frozen=True)
class ResourceType:
    """One served resource (group, version, plural) and what the server must know about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    scale: Mapping[str, Any] | None = None  # a CRD's subresources.scale (replicas and selector paths)
    schema: dict[str, Any] | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()
    categories: tuple[str, ...] = ()
    extra_fields: Mapping[str, FieldGetter] = field(default_factory=dict)
    # Other subresources served for this type (pods/log, pods/eviction), as discovery lists them.
    subresources: tuple[Mapping[str, Any], ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def fields(self) -> Mapping[str, FieldGetter]:
        """Fields a list or watch may select on (``fieldSelector``)."""
        return {**COMMON_FIELDS, **self.extra_fields}

    def discovery(self) -> list[dict[str, Any]]:
        """The APIResourceList entries of this type (the resource and its subresources)."""
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if self.scale is not None:
            # kubectl scale finds the Scale kind through these three fields.
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
        shared = {"singularName": "", "namespaced": self.namespaced}
        entries.extend({**shared, **sub} for sub in self.subresources)
        return entries


def _builtin(
    group: str, version: str, plural: str, kind: str, namespaced: bool = True, **options: Any
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, **options)


BUILTINS: tuple[ResourceType, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        status_subresource=True,
        categories=("all",),
        extra_fields={"status.phase": _path("status", "phase"), "spec.nodeName": _path("spec", "nodeName")},
        subresources=(
            {"name": "pods/log", "kind": "Pod", "verbs": ["get"]},
            {
                "name": "pods/eviction",
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            },
        ),
    ),
    _builtin(
        "", "v1", "services", "Service", short_names=("svc",), status_subresource=True, categories=("all",)
    ),
    _builtin("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    _builtin(
        "",
        "v1",
        "events",
        "Event",
        short_names=("ev",),
        extra_fields={
            "involvedObject.kind": _path("involvedObject", "kind"),
            "involvedObject.name": _path("involvedObject", "name"),
            "involvedObject.namespace": _path("involvedObject", "namespace"),
            "involvedObject.uid": _path("involvedObject", "uid"),
            "reason": _path("reason"),
            "type": _path("type"),
        },
    ),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        status_subresource=True,
    ),
    _builtin("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    _builtin("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), status_subresource=True),
    _builtin("apps", "v1", "deployments", "Deployment", short_names=("deploy",), status_subresource=True),
    _builtin("batch", "v1", "jobs", "Job", status_subresource=True, categories=("all",)),
    _builtin(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short_names=("pdb",),
        status_subresource=True,
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _builtin(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    _builtin(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        status_subresource=True,
    ),
)

CRD_TYPE = BUILTINS[-1]


def from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    types = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        subresources = version.get("subresources") or {}
        types.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames", ())),
                status_subresource="status" in subresources,
                scale=subresources.get("scale"),
                schema=schema,
                printer_columns=tuple(version.get("additionalPrinterColumns", ())),
                categories=tuple(names.get("categories", ())),
            )
        )
    return types


class Catalog:
    """Built-in kinds plus the kinds of the CRDs currently stored; looked up by (group, version, plural)."""

    def __init__(self) -> None:
        self._builtins = {(t.group, t.version, t.plural): t for t in BUILTINS}
        self._custom: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_names: dict[str, list[tuple[str, str, str]]] = {}

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        key = (group, version, plural)
        return self._builtins.get(key) or self._custom.get(key)

    def all(self) -> Iterable[ResourceType]:
        yield from self._builtins.values()
        yield from self._custom.values()

    def groups(self) -> dict[str, list[str]]:
        """Group name -> served versions (core group excluded)."""
        result: dict[str, list[str]] = {}
        for rtype in self.all():
            if rtype.group and rtype.version not in result.setdefault(rtype.group, []):
                result[rtype.group].append(rtype.version)
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self.all() if t.group == group and t.version == version]

    def set_crd(self, crd: dict[str, Any]) -> None:
        """Serve (or re-serve) the kinds of a stored CRD."""
        self.drop_crd(crd["metadata"]["name"])
        types = from_crd(crd)
        for rtype in types:
            self._custom[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._crd_names[crd["metadata"]["name"]] = [(t.group, t.version, t.plural) for t in types]

    def drop_crd(self, name: str) -> None:
        for key in self._crd_names.pop(name, []):
            self._custom.pop(key, None)
