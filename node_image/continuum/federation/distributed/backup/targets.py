"""Where backups live: a directory (a PVC in Kubernetes), or S3-compatible object storage.

A target is addressed by a URL (``locations.open_target``): a path or ``file:///path``
for a directory, and ``s3://bucket/prefix`` for object storage (``s3``). A backup named
NAME is the objects ``NAME/archive`` and ``NAME/manifest.json`` under it; ``URL/NAME``
addresses one backup. Every write is whole or absent: a directory target writes a
temporary file, fsyncs it and renames it into place; S3 makes an object visible only
once its upload completed (and ``s3`` checks the server's checksum of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from . import archive

ARCHIVE = "archive"
MANIFEST = "manifest.json"
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stored:
    """What a target holds once a write returned: its size and SHA-256 (hex)."""

    size: int
    sha256: str


class Target(Protocol):
    url: str

    async def exists(self, key: str) -> bool: ...

    async def write_stream(self, key: str, chunks: AsyncIterator[bytes]) -> Stored:
        """Store ``chunks`` under ``key``, whole or not at all (an error in ``chunks``
        leaves nothing); never overwrites (``archive.BackupError`` if ``key`` exists)."""
        ...

    async def write_bytes(self, key: str, data: bytes) -> Stored: ...

    def read_stream(self, key: str) -> AsyncIterator[bytes]: ...

    async def read_bytes(self, key: str, limit: int) -> bytes: ...

    async def names(self) -> list[str]:
        """The names directly under the target (backups, complete or not)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class DirectoryTarget:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise archive.BackupError(f"invalid key {key!r}")
        return self.root.joinpath(*parts)

    async def exists(self, key: str) -> bool:
        return self._path(key).exists()

    async def write_stream(self, key: str, chunks: AsyncIterator[bytes]) -> Stored:
        path = self._path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        if path.exists():
            raise archive.BackupError(f"{path} exists already; a backup is never overwritten")
        tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
        digest, size = hashlib.sha256(), 0
        f = await asyncio.to_thread(tmp.open, "xb")
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(_sync_close, f)
            if path.exists():
                raise archive.BackupError(f"{path} appeared while it was written")
            await asyncio.to_thread(_publish, tmp, path)
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return Stored(size, digest.hexdigest())

    async def write_bytes(self, key: str, data: bytes) -> Stored:
        async def one() -> AsyncIterator[bytes]:
            yield data
        return await self.write_stream(key, one())

    async def read_stream(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise archive.BackupError(f"{path} does not exist") from None
        try:
            while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                yield chunk
        finally:
            f.close()

    async def read_bytes(self, key: str, limit: int) -> bytes:
        path = self._path(key)
        try:
            size = path.stat().st_size
            if size > limit:
                raise archive.BackupError(f"{path} is {size} bytes, more than {limit}")
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise archive.BackupError(f"{path} does not exist") from None

    async def names(self) -> list[str]:
        if not self.root.is_dir():
            raise archive.BackupError(f"{self.root} is not a directory")
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if path.parent != self.root:  # a backup's folder goes with its last file
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    async def close(self) -> None:
        return None


def _sync_close(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _publish(tmp: Path, path: Path) -> None:
    """Rename into place, then fsync the directory so the name survives a crash."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
