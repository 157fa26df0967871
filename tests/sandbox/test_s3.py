"""The local S3 (moto's server on loopback): it serves buckets to a real, signing S3 client, and stops."""

from __future__ import annotations

import os
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest

from etcdlock_sandbox.s3 import MOTO_SERVER_VARIABLE, MotoNotFound, S3Server, moto_server

MULTIPART = 12 * 1024 * 1024  # more than two 5 MiB parts: the client uploads it in parts


def test_a_server_serves_its_buckets_and_leaves_no_process_behind() -> None:
    with S3Server() as server:
        pid = server.pid
        assert pid is not None
        assert server.endpoint == f"http://127.0.0.1:{server.port}"
        server.create_bucket("first-bucket")
        server.create_bucket("first-bucket")  # again: already there, as AWS answers in us-east-1
        with urllib.request.urlopen(f"{server.endpoint}/", timeout=10) as response:
            assert b"<Name>first-bucket</Name>" in response.read()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def test_without_moto_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MOTO_SERVER_VARIABLE, "")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MotoNotFound, match="make test"):
        moto_server()


async def test_a_signing_client_writes_reads_lists_and_deletes_objects(s3_server: S3Server) -> None:
    """With obstore, the client the product uses: a multipart upload from an async iterator too."""
    obstore = pytest.importorskip("obstore")
    from obstore.store import S3Store

    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    store = S3Store(
        bucket,
        prefix="backups",
        endpoint=s3_server.endpoint,
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
        client_options={"allow_http": True},
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(MULTIPART // (1024 * 1024)):
            yield bytes([i]) * (1024 * 1024)

    await obstore.put_async(store, "small", b"hello")
    uploaded = await obstore.put_async(store, "large", chunks())
    assert str(uploaded["e_tag"]).endswith('-3"')  # three parts
    assert bytes(await (await obstore.get_async(store, "small")).bytes_async()) == b"hello"
    large = bytes(await (await obstore.get_async(store, "large")).bytes_async())
    assert (len(large), large[-1]) == (MULTIPART, 11)
    listed = await obstore.list(store).collect_async()
    assert sorted(entry["path"] for entry in listed) == ["large", "small"]
    await obstore.delete_async(store, ["small", "large"])
    assert await obstore.list(store).collect_async() == []
