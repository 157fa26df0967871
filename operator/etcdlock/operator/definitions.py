"""The CustomResourceDefinitions this release ships, as package data (``etcdlock/crds/``; the checkout's
top-level ``crds/`` is the same folder): the operator checks the cluster against them at start, the
sandbox installs them, and ``kubectl apply -f`` takes them from either place."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml


def crd_folder() -> Traversable:
    """The folder of the CRD files (a plain directory when the package is installed from a wheel)."""
    return resources.files("etcdlock").joinpath("crds")


def crd_files() -> list[Traversable]:
    """The CRD YAML files, one per kind, in name order."""
    return sorted((f for f in crd_folder().iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


def crds() -> list[dict[str, Any]]:
    """Every shipped CRD, parsed."""
    return [yaml.safe_load(f.read_text(encoding="utf-8")) for f in crd_files()]


def served_versions(crd: dict[str, Any]) -> set[str]:
    """The versions a CRD (shipped or installed) serves."""
    return {v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("served")}
