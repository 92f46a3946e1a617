"""S3-compatible object storage as a backup target, through aiobotocore.

``s3://bucket/prefix``. Credentials and the region come from the environment as every
AWS SDK reads them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, a web
identity token for IRSA, the instance metadata service; ``AWS_REGION``); another S3
implementation (MinIO, Ceph, a test server) is named by ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, and is then addressed path-style.

Uploads stream: parts of ``part_size`` bytes (8 MiB, doubled every 1,000 parts, so the
10,000-part limit is never met) go up while the next fills, at most ``concurrency`` at
once, so memory holds a few parts and never the backup. Every part carries its SHA-256
and the server checks it; once the upload completed, the object's checksum as the server
computed it (``HeadObject`` with checksum mode) must equal ours, else the object is
deleted and the write fails. A stream that fails aborts its upload: nothing is left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

from . import archive, targets

PART_SIZE = 8 * 1024 * 1024
PARTS_PER_SIZE = 1000  # the part size doubles after this many parts
CONCURRENCY = 4


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Target:
    def __init__(self, bucket: str, prefix: str, *, part_size: int = PART_SIZE,
                 concurrency: int = CONCURRENCY) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts are at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_size = part_size
        self.concurrency = concurrency
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_url(cls, url: str) -> S3Target:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise archive.BackupError(f"{url}: name a bucket, s3://bucket/prefix")
        return cls(parsed.netloc, parsed.path)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _s3(self) -> Any:
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
                "AWS_ENDPOINT_URL")
            config = AioConfig(
                s3={"addressing_style": "path" if endpoint else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
                # Our own checksums, sent and checked explicitly, not the SDK's defaults.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._client = await self._stack.enter_async_context(get_session().create_client(
                "s3", region_name=region or "us-east-1", endpoint_url=endpoint, config=config))
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    # -- reads -------------------------------------------------------------------------------

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise _error(exc, f"{self.url}/{key}") from None
        return True

    async def read_stream(self, key: str) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise _error(exc, f"{self.url}/{key}") from None
        async with resp["Body"] as body:
            while chunk := await body.read(targets.READ_CHUNK):
                yield chunk

    async def read_bytes(self, key: str, limit: int) -> bytes:
        out = bytearray()
        async for chunk in self.read_stream(key):
            out += chunk
            if len(out) > limit:
                raise archive.BackupError(f"{self.url}/{key} is more than {limit} bytes")
        return bytes(out)

    async def names(self) -> list[str]:
        s3 = await self._s3()
        prefix = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        try:
            async for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    found.append(cp["Prefix"][len(prefix):].rstrip("/"))
        except Exception as exc:
            raise _error(exc, self.url) from None
        return sorted(found)

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    # -- writes ------------------------------------------------------------------------------

    async def write_bytes(self, key: str, data: bytes) -> targets.Stored:
        async def one() -> AsyncIterator[bytes]:
            yield data
        return await self.write_stream(key, one())

    async def write_stream(self, key: str, chunks: AsyncIterator[bytes]) -> targets.Stored:
        if await self.exists(key):
            raise archive.BackupError(f"{self.url}/{key} exists already; a backup is never "
                                      "overwritten")
        upload = _Upload(await self._s3(), self.bucket, self._key(key), self.part_size,
                         self.concurrency)
        try:
            async for chunk in chunks:
                await upload.add(chunk)
            expected = await upload.complete()
            await self._confirm(key, upload.size, expected)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await upload.abort()
            if isinstance(exc, Exception) and _status(exc) is not None:
                raise _error(exc, f"{self.url}/{key}") from None
            raise
        return targets.Stored(upload.size, upload.digest.hexdigest())

    async def _confirm(self, key: str, size: int, expected: str) -> None:
        """The server's own checksum of what it stored must be ours."""
        s3 = await self._s3()
        head = await s3.head_object(Bucket=self.bucket, Key=self._key(key),
                                    ChecksumMode="ENABLED")
        theirs = str(head.get("ChecksumSHA256") or "").split("-")[0]
        if head.get("ContentLength") != size or theirs != expected:
            with contextlib.suppress(Exception):
                await s3.delete_object(Bucket=self.bucket, Key=self._key(key))
            raise archive.BackupError(
                f"{self.url}/{key}: the server stored {head.get('ContentLength')} bytes with "
                f"SHA-256 {theirs or '(none reported)'}, we sent {size} bytes with {expected}; "
                "the object was deleted")


class _Upload:
    """One object's upload: a single PUT if it fits in one part, else a multipart upload."""

    def __init__(self, s3: Any, bucket: str, key: str, part_size: int, concurrency: int) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.part_size = part_size
        self.digest = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, Any]] = {}
        self._part_digests: dict[int, bytes] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._key_done = False

    async def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self._buf += chunk
        while len(self._buf) >= self._current_part_size():
            size = self._current_part_size()
            body = bytes(self._buf[:size])
            del self._buf[:size]
            await self._send_part(body)

    def _current_part_size(self) -> int:
        doublings: int = len(self._part_digests) // PARTS_PER_SIZE
        return self.part_size << doublings

    async def _send_part(self, body: bytes) -> None:
        if self._upload_id is None:
            resp = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                         ChecksumAlgorithm="SHA256")
            self._upload_id = resp["UploadId"]
        number = len(self._part_digests) + 1
        digest = hashlib.sha256(body).digest()
        self._part_digests[number] = digest
        await self._slots.acquire()  # backpressure: at most `concurrency` parts in memory
        for t in self._tasks:
            if t.done():
                t.result()  # a failed part fails the upload now
        self._tasks.append(asyncio.create_task(self._put_part(number, body, digest)))

    async def _put_part(self, number: int, body: bytes, digest: bytes) -> None:
        try:
            resp = await self.s3.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
                Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest))
            self._parts[number] = {"PartNumber": number, "ETag": resp["ETag"],
                                   "ChecksumSHA256": _b64(digest)}
        finally:
            self._slots.release()

    async def complete(self) -> str:
        """Finish; returns the checksum the server must report for the object."""
        if self._upload_id is None:
            body = bytes(self._buf)
            digest = hashlib.sha256(body).digest()
            await self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body,
                                     ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest))
            self._key_done = True
            return _b64(digest)
        if self._buf:
            await self._send_part(bytes(self._buf))
            self._buf.clear()
        await asyncio.gather(*self._tasks)
        parts = [self._parts[n] for n in sorted(self._parts)]
        await self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": parts})
        self._key_done = True
        # S3's checksum of a multipart object: the SHA-256 of its parts' SHA-256s.
        joined = b"".join(self._part_digests[n] for n in sorted(self._part_digests))
        return _b64(hashlib.sha256(joined).digest())

    async def abort(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._key_done:
            await self.s3.delete_object(Bucket=self.bucket, Key=self.key)
        elif self._upload_id is not None:
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                 UploadId=self._upload_id)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if isinstance(status, int) else None
    return None


def _error(exc: BaseException, where: str) -> archive.BackupError:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return archive.BackupError(f"{where}: {err.get('Code', 'error')}: "
                                   f"{err.get('Message', '')}".rstrip(": "))
    return archive.BackupError(f"{where}: {type(exc).__name__}: {exc}")
