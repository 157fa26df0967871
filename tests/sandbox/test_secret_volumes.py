"""Secret volumes of the process kubelet: the kubelet's atomic layout, a new version switched in one rename,
``items`` and ``defaultMode`` honoured."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from etcdlock_sandbox.secretvolumes import DATA, secret_files, write_volume


def encoded(**values: bytes) -> dict[str, object]:
    return {"data": {key.replace("_", "."): base64.b64encode(v).decode() for key, v in values.items()}}


def test_a_secret_becomes_files_through_the_data_link(tmp_path: Path) -> None:
    files = secret_files(encoded(tls_crt=b"cert-1", tls_key=b"key-1"), {"secretName": "s"})
    assert files == {"tls.crt": b"cert-1", "tls.key": b"key-1"}
    assert write_volume(tmp_path, files, 0o440)
    assert (tmp_path / "tls.crt").read_bytes() == b"cert-1"
    assert os.readlink(tmp_path / "tls.crt") == f"{DATA}/tls.crt"
    assert stat.S_IMODE((tmp_path / "tls.key").resolve().stat().st_mode) == 0o440
    assert not write_volume(tmp_path, files, 0o440)  # nothing changed, nothing written


def test_a_changed_secret_switches_every_file_at_once_and_drops_removed_keys(tmp_path: Path) -> None:
    write_volume(tmp_path, {"tls.crt": b"cert-1", "tls.key": b"key-1", "old": b"x"})
    first = os.readlink(tmp_path / DATA)
    assert write_volume(tmp_path, {"tls.crt": b"cert-2", "tls.key": b"key-2"})
    assert os.readlink(tmp_path / DATA) != first
    assert not (tmp_path / first).exists()  # the old version is gone
    assert (tmp_path / "tls.crt").read_bytes() == b"cert-2" and (
        tmp_path / "tls.key"
    ).read_bytes() == b"key-2"
    assert not (tmp_path / "old").exists()


def test_items_pick_keys_and_name_their_files(tmp_path: Path) -> None:
    volume = {
        "secretName": "s",
        "items": [{"key": "tls.crt", "path": "server.pem"}, {"key": "absent", "path": "x"}],
    }
    files = secret_files(encoded(tls_crt=b"cert", tls_key=b"key"), volume)
    assert files == {"server.pem": b"cert"}
