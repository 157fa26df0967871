"""The client certificates the operator presents to EtcdClusters that serve TLS, as files.

The engine (and gRPC under it) reads a client's CA, certificate and key from files when it opens a
connection, so the PEM data of a cluster's client Secret is written into a private folder of this process
(mode 0700, removed by :meth:`ClientCredentials.close`), one folder per content: a renewed certificate is
another folder, hence another :class:`~etcdlock.etcd.EtcdConfig`, and every client compared by its config
(the controller's, the members' status clients) is opened again with it. The folder of the content before
stays (a client opened with it may still open connections), older ones go, and so does a cluster's
whole folder when the cluster is forgotten. A DistributedLock on an etcd the user runs (see
:mod:`etcdlock.operator.outside`) has its Secret's files written the same way, any subset of the three.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from etcdlock.etcd import EtcdConfig
from etcdlock.operator.errors import ClusterNotReady, OperatorError
from etcdlock.operator.kube import Kube

CA, CERT, KEY = "ca.crt", "tls.crt", "tls.key"
PEM_KEYS = (CA, CERT, KEY)


@dataclass(frozen=True)
class TlsFiles:
    """Where a client's CA bundle, certificate and key are (None: not given, for an etcd the user runs)."""

    ca_file: str | None
    cert_file: str | None
    key_file: str | None

    def config(self, endpoints: str | Sequence[str], request_timeout: float | None = None) -> EtcdConfig:
        if request_timeout is None:
            return EtcdConfig.parse(
                endpoints, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
            )
        return EtcdConfig.parse(
            endpoints,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            request_timeout=request_timeout,
        )


def secret_pems(secret: Mapping[str, object]) -> dict[str, bytes]:
    """``ca.crt``, ``tls.crt`` and ``tls.key`` of a Secret (cert-manager's layout), decoded; those it lacks
    are left out."""
    data = secret.get("data") or {}
    assert isinstance(data, Mapping)
    return {key: base64.b64decode(str(data[key])) for key in PEM_KEYS if data.get(key)}


class ClientCredentials:
    """The folders of the client certificates this process uses (see the module docstring)."""

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="etcdlock-clients-"))

    def files(
        self, namespace: str, name: str, pems: Mapping[str, bytes], required: Sequence[str] = PEM_KEYS
    ) -> TlsFiles:
        """The files of ``pems`` (``ca.crt``, ``tls.crt``, ``tls.key``; those ``required`` at least),
        written once. ``name`` is the folder's: an EtcdCluster's name, or another that no cluster can have
        (one with a colon)."""
        missing = [key for key in required if not pems.get(key)]
        if missing:
            raise ClusterNotReady(f"the client certificate of EtcdCluster {name} lacks {', '.join(missing)}")
        given = [key for key in PEM_KEYS if pems.get(key)]
        digest = hashlib.sha256(b"".join(key.encode() + b"\0" + pems[key] for key in given)).hexdigest()[:16]
        folder = self._root / namespace / name / digest
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
            for key in given:
                path = partial / key
                path.write_bytes(pems[key])
                os.chmod(path, 0o600)
            os.replace(partial, folder)
            kept = sorted(
                (f for f in folder.parent.iterdir() if not f.name.startswith(".")),
                key=lambda f: f.stat().st_mtime,
            )
            for old in kept[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        paths = {key: str(folder / key) if key in given else None for key in PEM_KEYS}
        return TlsFiles(paths[CA], paths[CERT], paths[KEY])

    def forget(self, namespace: str, name: str) -> None:
        """The cluster is gone (or no longer this process's): its files go."""
        shutil.rmtree(self._root / namespace / name, ignore_errors=True)

    async def read(self, kube: Kube, namespace: str, name: str, secret: str) -> TlsFiles:
        """The files of the client Secret ``secret`` of EtcdCluster ``name``; :class:`ClusterNotReady`
        while it cannot be read or is incomplete."""
        try:
            found = await kube.call(kube.core.read_namespaced_secret, secret, namespace)
        except OperatorError as exc:
            raise ClusterNotReady(
                f"the client Secret {secret} of EtcdCluster {name} cannot be read: {exc}"
            ) from None
        if found is None:
            raise ClusterNotReady(f"the client Secret {secret} of EtcdCluster {name} does not exist yet")
        return self.files(namespace, name, secret_pems(found))

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
