"""Backups in S3-compatible object storage: a real S3-protocol server (moto's standalone
server, a separate process on loopback) and the production client, unchanged. A node's
backup of more than 64 MiB goes up as a multipart upload whose checksum the server
confirms; it lists, verifies and restores from there; a backup without a manifest is
ignored and reported; damage is refused; a failed upload leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import waiting
from continuum.federation.distributed import cli, replication
from continuum.federation.distributed.backup import archive, locations, s3
from e2e.cluster import Cluster

HOST = "127.0.58.250"
BUCKET = "continuum-backups"
BLOB = 2 * 1024 * 1024  # per concept: 34 of them make a backup of more than 64 MiB


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        def accepts() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"moto exited with {proc.returncode}; see {log.name}")
            socket.create_connection((HOST, port), timeout=1).close()
            return True

        waiting.until_sync(accepts, timeout=30, what=f"moto to accept connections ({log.name})",
                           errors=(OSError,))
        url = f"http://{HOST}:{port}"
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(k, raising=False)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextlib.asynccontextmanager
async def _s3_client() -> AsyncIterator[Any]:
    """A plain client for what the test itself looks at (the code under test has its own)."""
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                                           region_name="us-east-1") as c:
        yield c


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "src", 1, "127.0.58.31")
    c.start()
    yield c
    c.stop()


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = await asyncio.get_running_loop().run_in_executor(None, cli.main, list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


async def test_a_large_backup_goes_to_s3_in_parts_and_comes_back(
        s3_server: str, one_node: Cluster, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    c = one_node
    async with _s3_client() as s3c:
        await s3c.create_bucket(Bucket=BUCKET)
    await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    for i in range(34):
        blob = os.urandom(BLOB // 2).hex()
        await c.call("node-1", lambda cl, i=i, blob=blob: cl.put(f"blob-{i:02d}", {"b": blob}))
    await c.call("node-1", lambda cl: cl.put("ledger", {"n": 1}, strong=True))
    where = f"s3://{BUCKET}/prod/nightly"

    rc, out, err = await _cli(capsys, "backup", "create", "--data-dir", str(c.data_dir),
                              "--to", where, "--name", "big", "--json")
    assert rc == 0, err
    manifest = json.loads(out)
    assert manifest["archive"]["size"] > 64 * 1024 * 1024
    async with _s3_client() as s3c:
        head = await s3c.head_object(Bucket=BUCKET, Key="prod/nightly/big/archive",
                                     ChecksumMode="ENABLED")
        # A multipart object's ETag ends with its number of parts.
        parts = int(head["ETag"].strip('"').split("-")[1])
        assert parts >= 64 // 8  # a multipart upload, in parts of the default size
        uploads = await s3c.list_multipart_uploads(Bucket=BUCKET)
        assert uploads.get("Uploads", []) == []

        # A backup whose manifest never arrived: its archive alone does not count.
        await s3c.copy_object(Bucket=BUCKET, Key="prod/nightly/partial/archive",
                              CopySource={"Bucket": BUCKET, "Key": "prod/nightly/big/archive"})
    rc, out, err = await _cli(capsys, "backup", "list", where)
    assert rc == 0 and "big" in out and "partial" not in out
    assert "ignored partial: an incomplete or failed backup" in err
    rc, out, err = await _cli(capsys, "backup", "verify", f"{where}/big")
    assert rc == 0 and "1 strong concepts, 34 multi-master keys" in out, err
    rc, _, err = await _cli(capsys, "restore", "--from", f"{where}/partial", "--data-dir",
                            str(tmp_path / "nope"), "--node-id", "n", "--address", "h:1")
    assert rc == 1 and "no manifest" in err and not (tmp_path / "nope").exists()

    data = tmp_path / "restored"
    rc, out, err = await _cli(capsys, "restore", "--from", f"{where}/big", "--data-dir",
                              str(data), "--node-id", "node-1", "--address", "127.0.0.1:7000")
    assert rc == 0, err
    repl = replication.MultiMasterReplicator("node-1", storage_path=data / "replication")
    try:
        assert len(repl.keys(limit=100)) == 34
        original = await c.call("node-1", lambda cl: cl.get("blob-07"))
        assert await repl.read("blob-07") == original["value"]
    finally:
        await repl.stop()


async def test_damage_in_s3_is_refused_and_a_failed_upload_leaves_nothing(
        s3_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from unit.backup import archives

    async with _s3_client() as s3c:
        await s3c.create_bucket(Bucket=BUCKET)
    data, embedded = archives.build({"s": 1}, {f"k{i}": i for i in range(100)})
    target = s3.S3Target.from_url(f"s3://{BUCKET}/p")
    try:
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x01
        stored = await target.write_bytes("bad/archive", bytes(bad))
        assert stored.size == len(data)
        m = embedded.stored("bad", len(data), archives_sha256(data))
        await target.write_bytes("bad/manifest.json", m.to_json())

        async def failing() -> AsyncIterator[bytes]:
            for _ in range(3):  # past the first part: a multipart upload is under way
                yield os.urandom(4 * 1024 * 1024)
            raise archive.CorruptArchive("the node's stream broke off")

        with pytest.raises(archive.CorruptArchive, match="broke off"):
            await target.write_stream("failed/archive", failing())
        with pytest.raises(archive.BackupError, match="never overwritten"):
            await target.write_bytes("bad/archive", b"again")

        # What the server says it stored must be what we sent, or the object goes.
        complete = s3._Upload.complete

        async def expect_other_bytes(self: s3._Upload) -> str:
            await complete(self)
            return "A" * 43 + "="
        with monkeypatch.context() as mp:
            mp.setattr(s3._Upload, "complete", expect_other_bytes)
            with pytest.raises(archive.BackupError, match="the server stored 100 bytes"):
                await target.write_bytes("lied/archive", b"x" * 100)
    finally:
        await target.close()
    async with _s3_client() as s3c:
        keys = [o["Key"] for o in (await s3c.list_objects_v2(Bucket=BUCKET))["Contents"]]
        assert keys == ["p/bad/archive", "p/bad/manifest.json"]
        assert (await s3c.list_multipart_uploads(Bucket=BUCKET)).get("Uploads", []) == []
    rc, _, err = await _cli(capsys, "backup", "verify", f"s3://{BUCKET}/p/bad")
    assert rc == 1 and "corrupt" in err


def archives_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_s3_urls_name_a_bucket_and_a_prefix() -> None:
    t = locations.open_target("s3://b/x/y/")
    assert isinstance(t, s3.S3Target) and (t.bucket, t.prefix) == ("b", "x/y")
    assert locations.split_backup_url("s3://b/x/y/name") == ("s3://b/x/y", "name")
    with pytest.raises(archive.BackupError):
        locations.open_target("s3:///nobucket")
    with pytest.raises(archive.BackupError):
        locations.split_backup_url("s3://b")
