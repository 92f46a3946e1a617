"""Backup URLs: which target a URL names, and ``URL/NAME`` split into target and name.

``s3`` (and so aiobotocore) is imported only for an ``s3://`` URL.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from . import archive, targets


def open_target(url: str) -> targets.Target:
    """The target at ``url``; ``archive.BackupError`` for one this build cannot reach."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from . import s3  # aiobotocore: only for an S3 target

        return s3.S3Target.from_url(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise archive.BackupError(f"{url}: a file URL names a local path (file:///path)")
        return targets.DirectoryTarget(Path(unquote(parsed.path)))
    if parsed.scheme == "":
        return targets.DirectoryTarget(Path(url))
    raise archive.BackupError(f"{url}: unknown target; use a directory path, file:///path or "
                              "s3://bucket/prefix")


def split_backup_url(url: str) -> tuple[str, str]:
    """``URL/NAME`` as the target's URL and the backup's name."""
    base, sep, name = url.rstrip("/").rpartition("/")
    if not sep or not name or base in ("s3:/", "s3:", "file:/", "file:"):
        raise archive.BackupError(f"{url}: name a backup as TARGET/NAME, e.g. "
                                  "s3://bucket/prefix/NAME or /backups/NAME")
    return base or "/", archive.check_name(name)
