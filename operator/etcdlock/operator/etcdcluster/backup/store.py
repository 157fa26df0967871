"""A backup store: one of obstore's object stores (S3 and S3-compatible, GCS, Azure Blob, a local or
mounted folder), opened from a :class:`~.settings.StoreSpec` and the settings in its Secret.

Every failure is a :class:`~.errors.BackupError` (the store's own words in the message): the callers never
see obstore's exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import Any

import obstore
from obstore.store import from_url

from etcdlock.etcd import EtcdError
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.settings import StoreSpec

# Upload parts of this size: a snapshot is streamed, never held whole in memory.
PART_SIZE = 8 * 1024 * 1024


class BackupStore:
    """Objects under the store URL's prefix."""

    def __init__(self, spec: StoreSpec, settings: Mapping[str, str]) -> None:
        """``settings``: the store's settings from its Secret (obstore also reads the process's own
        environment, as in a pod whose container has them)."""
        self.spec = spec
        config: Any = {k.lower(): v for k, v in settings.items() if _is_setting(spec.scheme, k)}
        options: Any = {}
        if spec.endpoint:
            config["endpoint"] = spec.endpoint
            options["allow_http"] = spec.endpoint.startswith("http://")
        try:
            if spec.scheme == "file":
                self._store: Any = from_url(spec.url, mkdir=True)
            else:
                self._store = from_url(spec.url, config=config or None, client_options=options or None)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # obstore panics (a BaseException) on some settings
            raise BackupError("StoreMisconfigured", f"cannot open {spec.url}: {_first_line(exc)}") from None

    def __str__(self) -> str:
        return self.spec.url

    async def put_stream(self, path: str, chunks: AsyncIterable[bytes]) -> None:
        """Upload ``chunks`` in parts; an error raised by ``chunks`` aborts the upload."""
        with self._errors(path):
            await obstore.put_async(self._store, path, chunks, chunk_size=PART_SIZE)

    async def put_json(self, path: str, document: Any) -> int:
        data = json.dumps(document, separators=(",", ":")).encode()
        with self._errors(path):
            await obstore.put_async(self._store, path, data)
        return len(data)

    async def read_json(self, path: str) -> Any:
        with self._errors(path):
            result = await obstore.get_async(self._store, path)
            data = await result.bytes_async()
        try:
            return json.loads(bytes(data))
        except ValueError:
            raise BackupError("BackupCorrupt", f"{self}/{path} is not the JSON it should be") from None

    async def stream(self, path: str) -> AsyncIterator[bytes]:
        """The object's bytes, chunk by chunk."""
        with self._errors(path):
            result = await obstore.get_async(self._store, path)
            async for chunk in result.stream():
                yield bytes(chunk)

    async def paths(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        with self._errors(prefix or "/"):
            async for page in obstore.list(self._store, prefix or None):
                found.extend(entry["path"] for entry in page)
        return found

    async def delete(self, paths: list[str]) -> None:
        for start in range(0, len(paths), 1000):
            with self._errors(paths[start]):
                await obstore.delete_async(self._store, paths[start : start + 1000])

    def _errors(self, path: str) -> contextlib.AbstractContextManager[None]:
        return _translated(f"{self}/{path}")


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """Turns obstore's errors into :class:`BackupError` (see the module docstring); the caller's own errors
    (a snapshot stream's, say) pass as they are."""
    try:
        yield
    except (BackupError, EtcdError):
        raise
    except Exception as exc:
        errors = obstore.exceptions
        if isinstance(exc, FileNotFoundError | errors.NotFoundError):
            reason = "BackupNotFound"
        elif isinstance(exc, PermissionError | errors.PermissionDeniedError | errors.UnauthenticatedError):
            reason = "StoreDenied"
        else:
            reason = "StoreUnavailable"
        raise BackupError(reason, f"{where}: {_first_line(exc)}") from None


def _is_setting(scheme: str, key: str) -> bool:
    """A Secret key the store takes: ``AWS_*`` for s3, ``GOOGLE_*`` for gs, ``AZURE_*`` for az; never
    ``*_ALLOW_HTTP`` (obstore takes it only as a client option: the endpoint's scheme says it)."""
    prefix = {"s3": "aws_", "gs": "google_", "az": "azure_"}.get(scheme)
    name = key.lower()
    return prefix is not None and name.startswith(prefix) and not name.endswith("allow_http")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
