"""``continuum-federation backup create|list|verify|delete`` and ``restore``.

``backup create`` asks a node for its archive (``POST /v1/backup``; by default a
caught-up follower, so the leader keeps its time for writes) and streams it to the
target while checking it; the manifest is written only once the archive is stored and
every checksum matched. The node never holds target credentials: whoever runs this
command does (a person, or a Kubernetes Job the operator starts).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from .. import client
from ..transport import tls
from . import archive, locations, restore, targets

DEFAULT_LOCAL_DIR = ".data/local"
# Refusals that another node may not give: try the next candidate.
RETRY_ELSEWHERE = ("not_caught_up", "no_leader", "busy", "not_a_member")
STREAM_CHUNK = 1024 * 1024


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("backup", help="take, list and verify backups of a running cluster")
    bs = b.add_subparsers(dest="backup_command", required=True)
    c = bs.add_parser("create", help="stream a consistent backup of the cluster to a target")
    c.add_argument("--to", required=True, metavar="URL",
                   help="a directory, file:///path, or s3://bucket/prefix")
    c.add_argument("--name", help="the backup's name (default: <cluster>-<UTC time>)")
    c.add_argument("--node", help="copy from this node of the local cluster (default: a "
                   "caught-up follower)")
    c.add_argument("--api", help="copy from the node at this API URL (with --tls-dir)")
    c.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR,
                   help="a local cluster's directory (nodes.json, pki/)")
    c.add_argument("--tls-dir", help="client tls.crt/tls.key/ca.crt (default: the local pki)")
    c.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                   help="how long a lagging node may take to catch up before it refuses")
    c.add_argument("--max-rate", type=float, metavar="MIB_PER_S",
                   help="pace the node's stream (default: as fast as it goes)")
    c.add_argument("--json", action="store_true", help="print the stored manifest")
    ls = bs.add_parser("list", help="the backups at a target (incomplete ones are reported)")
    ls.add_argument("url", metavar="URL")
    ls.add_argument("--json", action="store_true")
    v = bs.add_parser("verify", help="read a backup whole and check every checksum")
    v.add_argument("backup", metavar="URL/NAME")
    v.add_argument("--json", action="store_true")
    d = bs.add_parser("delete", help="delete backups (the manifest first, then the archive); "
                      "one that is not there counts as deleted")
    d.add_argument("backups", metavar="URL/NAME", nargs="+")

    r = sub.add_parser("restore", help="prepare a node's data directory from a backup: it "
                       "starts as a one-voter cluster that the other nodes join")
    r.add_argument("--from", dest="source", required=True, metavar="URL/NAME")
    r.add_argument("--data-dir", required=True, help="the node's (empty) data directory")
    r.add_argument("--node-id", required=True, help="the node's id (as in its certificate)")
    r.add_argument("--address", required=True,
                   help="its peer address host:port, as the other nodes will dial it")
    r.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.command == "restore":
        return asyncio.run(_restore(args))
    if args.backup_command == "create":
        return asyncio.run(_create(args))
    if args.backup_command == "list":
        return asyncio.run(_list(args))
    if args.backup_command == "delete":
        return asyncio.run(_delete(args))
    return asyncio.run(_verify(args))


# -- create -------------------------------------------------------------------------------------

async def _candidates(args: argparse.Namespace) -> tuple[list[str], tls.TLSFiles]:
    """API URLs to ask, best first: caught-up followers, then the leader."""
    if args.api:
        if not args.tls_dir:
            raise ValueError("--api needs --tls-dir (a client certificate)")
        return [args.api], tls.TLSFiles.from_dir(args.tls_dir)
    nodes, files = client.local_cluster(args.data_dir)
    if args.tls_dir:
        files = tls.TLSFiles.from_dir(args.tls_dir)
    urls = {n["id"]: n["api"] for n in nodes}
    if args.node:
        if args.node not in urls:
            raise ValueError(f"no node {args.node!r} in {args.data_dir}/nodes.json")
        return [urls[args.node]], files
    from .. import local

    rows = [r for r in await local.poll_status(Path(args.data_dir)) if "error" not in r]
    rows.sort(key=lambda r: (r.get("role") != "follower", -int(r.get("last_applied", 0))))
    return [urls[r["id"]] for r in rows if r["id"] in urls] or list(urls.values()), files


async def create(urls: list[str], files: tls.TLSFiles, target: targets.Target,
                 name: str | None = None, wait: float = 5.0,
                 max_rate: float | None = None) -> archive.Manifest:
    """Stream a backup from the first of ``urls`` that gives one into ``target``."""
    if not urls:
        raise ValueError("no node to back up from")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=120.0)
    connector = aiohttp.TCPConnector(ssl=tls.client_context(files))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        last: Exception | None = None
        for url in urls:
            try:
                params = {"wait": f"{wait:g}"}
                if max_rate is not None:
                    params["max_rate"] = f"{max_rate:g}"
                async with session.post(url.rstrip("/") + "/v1/backup", params=params) as resp:
                    if resp.status != 200:
                        raise await _api_error(resp)
                    return await _store(resp, target, name)
            except client.ApiError as exc:
                if exc.code not in RETRY_ELSEWHERE:
                    raise
                last = exc
            except client.NOT_REACHED as exc:
                last = ConnectionError(f"{url}: {exc}")
        assert last is not None
        raise last


async def _api_error(resp: aiohttp.ClientResponse) -> client.ApiError:
    raw = await resp.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return client.ApiError(resp.status, str(body.get("error", resp.status)),
                           str(body.get("message", raw[:200].decode("utf-8", "replace"))),
                           body)


def default_name(cluster: str, created_at: str) -> str:
    stamp = re.sub(r"[-:]", "", created_at.split(".")[0]) + "Z"
    prefix = re.sub(r"[^A-Za-z0-9._-]", "-", cluster) or "backup"
    return archive.check_name(f"{prefix}-{stamp}")


async def _store(resp: aiohttp.ClientResponse, target: targets.Target,
                 name: str | None) -> archive.Manifest:
    name = archive.check_name(name) if name else default_name(
        resp.headers.get("Continuum-Backup-Cluster", "backup"),
        resp.headers.get("Continuum-Backup-Created", dt.datetime.now(dt.UTC).isoformat()))
    for key in (targets.MANIFEST, targets.ARCHIVE):
        if await target.exists(f"{name}/{key}"):
            raise archive.BackupError(f"{target.url}/{name} exists already; choose another "
                                      "--name")
    reader = archive.ArchiveReader()

    async def checked() -> AsyncIterator[bytes]:
        async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
            for _ in reader.feed(chunk):
                pass
            yield chunk
        reader.finish()  # a stream cut short fails the write: no archive, no manifest

    stored = await target.write_stream(f"{name}/{targets.ARCHIVE}", checked())
    manifest = reader.finish().stored(name, stored.size, stored.sha256)
    await target.write_bytes(f"{name}/{targets.MANIFEST}", manifest.to_json())
    return manifest


async def _create(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise ValueError("--wait must be zero or more seconds")
    urls, files = await _candidates(args)
    target = locations.open_target(args.to)
    try:
        m = await create(urls, files, target, args.name, args.wait, args.max_rate)
    finally:
        await target.close()
    if args.json:
        print(m.to_json().decode(), end="")
    else:
        print(f"backup {target.url}/{m.name}: cluster {m.cluster_name}, raft index "
              f"{m.raft_index}, from {m.node_id}, {_size(m.size)}")
    return 0


# -- list and verify ---------------------------------------------------------------------------

async def list_backups(target: targets.Target) -> tuple[list[archive.Manifest],
                                                         list[tuple[str, str]]]:
    """The complete backups at ``target``, oldest first, and (name, why) for the others."""
    good: list[archive.Manifest] = []
    ignored: list[tuple[str, str]] = []
    for name in await target.names():
        try:
            good.append(await restore.load_manifest(target, name))
        except archive.BackupError as exc:
            ignored.append((name, str(exc).removeprefix(f"{target.url}/{name}: ")))
    good.sort(key=lambda m: (m.created_at, m.name or ""))
    return good, ignored


async def _list(args: argparse.Namespace) -> int:
    target = locations.open_target(args.url)
    try:
        good, ignored = await list_backups(target)
    finally:
        await target.close()
    if args.json:
        print(json.dumps({"backups": [m.to_dict() for m in good],
                          "ignored": [{"name": n, "reason": r} for n, r in ignored]}, indent=2))
        return 0
    print(f"{'NAME':<40} {'CREATED (UTC)':<20} {'CLUSTER':<14} {'RAFT INDEX':>10} "
          f"{'SIZE':>10}  NODE")
    for m in good:
        print(f"{m.name or '':<40} {m.created_at[:19].replace('T', ' '):<20} "
              f"{m.cluster_name:<14} {m.raft_index:>10} {_size(m.size):>10}  {m.node_id}")
    for name, why in ignored:
        print(f"ignored {name}: {why}", file=sys.stderr)
    return 0


async def _verify(args: argparse.Namespace) -> int:
    url, name = locations.split_backup_url(args.backup)
    target = locations.open_target(url)
    try:
        c = await restore.verify(target, name)
    finally:
        await target.close()
    m = c.manifest
    if args.json:
        print(json.dumps({"ok": True, "manifest": m.to_dict(), "strong_concepts":
                          c.strong_concepts, "multimaster_keys": c.multimaster_keys}, indent=2))
    else:
        print(f"{url}/{name}: ok, every checksum matches ({_size(m.size)} in "
              f"{c.seconds:.2f} s): raft index {m.raft_index}, {c.strong_concepts} strong "
              f"concepts, {c.multimaster_keys} multi-master keys")
    return 0


async def delete(target: targets.Target, name: str) -> bool:
    """Delete backup ``name``: its manifest first (from then on it is no backup: never
    listed or restored), then its archive. False when nothing of it was there."""
    archive.check_name(name)
    found = False
    for key in (targets.MANIFEST, targets.ARCHIVE):
        if await target.exists(f"{name}/{key}"):
            found = True
            await target.delete(f"{name}/{key}")
    return found


async def _delete(args: argparse.Namespace) -> int:
    for backup in args.backups:
        url, name = locations.split_backup_url(backup)
        target = locations.open_target(url)
        try:
            found = await delete(target, name)
        finally:
            await target.close()
        print(f"{url}/{name}: {'deleted' if found else 'not there (nothing to delete)'}")
    return 0


# -- restore ------------------------------------------------------------------------------------

async def _restore(args: argparse.Namespace) -> int:
    url, name = locations.split_backup_url(args.source)
    from ..transport import peer

    peer.split_address(args.address)
    target = locations.open_target(url)
    try:
        r = await restore.restore(target, name, Path(args.data_dir), args.node_id,
                                  args.address)
    finally:
        await target.close()
    m = r.contents.manifest
    if args.json:
        print(json.dumps({"restored": not r.already, "data_dir": str(r.data_dir),
                          "node_id": r.node_id, "manifest": m.to_dict()}, indent=2))
    elif r.already:
        print(f"{r.data_dir} was restored from {name} already; nothing was changed")
    else:
        c = r.contents
        print(f"restored {name} (cluster {m.cluster_name}, raft index {m.raft_index}: "
              f"{c.strong_concepts} strong concepts, {c.multimaster_keys} multi-master keys) "
              f"into {r.data_dir} in {c.seconds:.2f} s")
        print(f"start {r.node_id} there: it is the sole voter of a new cluster; the other "
              "nodes join it as new members, each with an empty data directory")
    return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
