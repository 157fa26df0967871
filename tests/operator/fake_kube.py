"""An in-memory Kubernetes for unit tests of the controllers: the calls of
:class:`etcdlock.operator.kube.Kube` they make, answered as the adapter answers (dicts, None for 404,
:class:`~etcdlock.operator.kube.Conflict` for 409). Never a stand-in for etcd: etcd is always real."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from etcdlock.operator.kube import Conflict

Obj = dict[str, Any]

KINDS = {
    "service": "Service",
    "stateful_set": "StatefulSet",
    "pod_disruption_budget": "PodDisruptionBudget",
    "pod": "Pod",
    "persistent_volume_claim": "PersistentVolumeClaim",
}


class Method:
    """A method of an API group (``read_namespaced_service``...): :meth:`FakeKube.call` goes by its name."""

    def __init__(self, name: str) -> None:
        self.__name__ = name


class Group:
    """``kube.core``, ``kube.apps``, ``kube.policy``: every method name is there."""

    def __getattr__(self, name: str) -> Method:
        return Method(name)


class FakeKube:
    """Objects by (kind, namespace, name). ``before[method name]`` runs once just before that call is
    answered: what happens meanwhile (someone else's write) or instead (raise an outage)."""

    def __init__(self) -> None:
        self.core = self.apps = self.policy = Group()
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[str] = []
        self.before: dict[str, Callable[[], object]] = {}

    def add(self, kind: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        self.objects[(kind, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get((kind, namespace, name))

    async def call(self, method: Method, *args: Any, **kwargs: Any) -> Obj | None:
        name = method.__name__
        self.calls.append(name)
        hook = self.before.pop(name, None)
        if hook is not None:
            hook()
        verb, _, kind_name = name.partition("_namespaced_")
        kind = KINDS[kind_name]
        if verb == "create":
            namespace, body = args
            if self.get(kind, namespace, body["metadata"]["name"]) is not None:
                raise Conflict(f"conflict: {kind} {body['metadata']['name']} already exists")
            return self.add(kind, copy.deepcopy(body))
        if verb == "list":
            return {"items": self._list(kind, args[0], kwargs.get("label_selector"))}
        obj = self.get(kind, args[1], args[0])
        if obj is None:
            return None
        if verb == "patch":
            _apply(obj, args[2])
        elif verb == "delete":
            uid = ((kwargs.get("body") or {}).get("preconditions") or {}).get("uid")
            if uid is not None and uid != obj["metadata"]["uid"]:
                raise Conflict("conflict: the precondition on the uid failed")
            del self.objects[(kind, args[1], args[0])]
        return copy.deepcopy(obj)

    async def pods(self, namespaces: Sequence[str], label_selector: str | None = None) -> list[Obj]:
        found: list[Obj] = []
        for namespace in namespaces:
            listed = await self.call(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
            found.extend((listed or {}).get("items") or [])
        return found

    def _list(self, kind: str, namespace: str, selector: str | None) -> list[Obj]:
        wanted = dict(term.split("=", 1) for term in selector.split(",")) if selector else {}
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind
            and ns == namespace
            and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
        ]


def _apply(obj: Obj, patch: Obj | list[Obj]) -> None:
    """A JSON patch (add and replace) or a merge patch."""
    if isinstance(patch, dict):
        _merge(obj, patch)
        return
    for op in patch:
        *parents, last = op["path"].strip("/").split("/")
        target = obj
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = copy.deepcopy(op["value"])


def _merge(obj: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if value is None:
            obj.pop(key, None)
        elif isinstance(value, dict) and isinstance(obj.get(key), dict):
            _merge(obj[key], value)
        else:
            obj[key] = copy.deepcopy(value)
