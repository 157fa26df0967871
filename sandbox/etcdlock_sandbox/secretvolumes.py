"""Secret volumes of the process kubelet's pods: a Secret's keys as files, kept current as a kubelet keeps
them (:mod:`.containers`).

The layout is the kubelet's atomic writer's: the files live in a hidden folder per version, ``..data`` is a
symbolic link to the current one, and each key is a link through ``..data``. A new version is written
whole, then ``..data`` is switched in one rename, so a program never reads a certificate of one version
with the key of another.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATA = "..data"


def secret_files(secret: Mapping[str, Any], volume: Mapping[str, Any]) -> dict[str, bytes]:
    """File name -> content of a Secret volume: every key, or the ``items`` it lists (at their paths)."""
    data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    items = volume.get("items")
    if not items:
        return data
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def write_volume(folder: Path, files: Mapping[str, bytes], mode: int = 0o644) -> bool:
    """Make ``folder`` hold ``files`` (see the module docstring); False if it held them already."""
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / DATA
    if current.is_symlink() and _contents(current) == dict(files):
        return False
    version = Path(tempfile.mkdtemp(dir=folder, prefix="..version-"))
    for name, content in files.items():
        path = version / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    old = os.readlink(current) if current.is_symlink() else None
    link = folder / "..data_tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    os.replace(link, current)
    for name in files:
        top = name.split("/", 1)[0]
        entry = folder / top
        if not entry.is_symlink():
            entry.symlink_to(f"{DATA}/{top}")
    for entry in folder.iterdir():
        if (
            not entry.name.startswith("..")
            and entry.is_symlink()
            and entry.name not in {n.split("/", 1)[0] for n in files}
        ):
            entry.unlink()
    if old is not None:
        shutil.rmtree(folder / old, ignore_errors=True)
    return True


def _contents(current: Path) -> dict[str, bytes]:
    root = current.resolve()
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}
