"""``continuum-federation``: run nodes, a local cluster, talk to a cluster, make certificates.

Errors are one clear line on stderr and a non-zero exit, never a traceback
(set ``CONTINUUM_DEBUG=1`` for one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import config
from .transport import tls

if TYPE_CHECKING:
    from . import local

# A node (``node run``) imports only what it runs: the client, the local cluster and the
# certificate tools (cryptography) are imported by the commands that use them.

DEFAULT_LOCAL_DIR = ".data/local"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="continuum-federation",
                                description="Continuum federation: nodes, local clusters, certs.")
    sub = p.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run one federation node")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    run = node_sub.add_parser("run", help="run a node (settings from CONTINUUM_* env and flags)")
    run.add_argument("--node-id")
    run.add_argument("--bind-address")
    run.add_argument("--health-address")
    run.add_argument("--data-dir")
    run.add_argument("--tls-dir")
    run.add_argument("--log-level", default=os.environ.get("CONTINUUM_LOG_LEVEL", "INFO"))

    rec = node_sub.add_parser(
        "recover", help="offline disaster recovery on a STOPPED node's data directory")
    rec.add_argument("--force-new-cluster", action="store_true", required=True,
                     help="make this node the sole voter of a new cluster (quorum lost for good)")
    rec.add_argument("--data-dir", required=True, help="the node's data directory")
    rec.add_argument("--node-id", required=True, help="the node's id (as in its certificate)")
    rec.add_argument("--address", help="its peer address host:port (default: as recorded)")

    rc = sub.add_parser("recover", help="disaster recovery on a running node (quorum lost)")
    rc.add_argument("--force-new-cluster", action="store_true", required=True,
                    help="make the node the sole voter of a new cluster, keeping what it "
                    "knew committed; writes acknowledged only by lost members are gone")
    rc.add_argument("--node", required=True,
                    help="the surviving node: its API URL or (local cluster) its id")
    rc.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR,
                    help="a local cluster's directory (nodes.json, pki/)")
    rc.add_argument("--tls-dir", help="client tls.crt/tls.key/ca.crt (default: the local pki)")

    # Backup hook: backup create|list|verify and restore (backup/commands.py).
    from .backup import commands as backup_commands

    backup_commands.add_parsers(sub)

    loc = sub.add_parser("local", help="a local cluster of node processes on 127.0.0.x")
    loc_sub = loc.add_subparsers(dest="local_command", required=True)
    up = loc_sub.add_parser("up", help="start N nodes and show their status until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR)
    up.add_argument("--first-ip", default="127.0.0.11")
    up.add_argument("--port", type=int, default=7000)
    up.add_argument("--health-port", type=int, default=8080)
    up.add_argument("--ready-timeout", type=float, default=60.0)
    up.add_argument("--exit-when-ready", action="store_true",
                    help="stop the cluster once every node is ready (for scripts)")

    for name, helptext in (("status", "show every node's status"),
                           ("put", "write a concept"), ("get", "read a concept"),
                           ("delete", "delete a concept")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--data-dir", default=DEFAULT_LOCAL_DIR,
                       help="a local cluster's directory (nodes.json, pki/)")
        c.add_argument("--api", help="a node's API URL (default: the local cluster's first node)")
        c.add_argument("--tls-dir", help="client tls.crt/tls.key/ca.crt (default: the local pki)")
        if name in ("put", "get", "delete"):
            c.add_argument("concept_id")
            c.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                           help="how long to keep trying while no node can take the call, "
                           "e.g. during a leader election (default: 5)")
        if name == "put":
            c.add_argument("value", help="the concept as JSON, e.g. '{\"name\": \"Raft\"}'")
            c.add_argument("--strong", action="store_true", help="commit through Raft")
        if name == "status":
            c.add_argument("--json", action="store_true")

    certs = sub.add_parser("certs", help="a cluster CA and certificates (cert-manager layout)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create a CA in DIR (ca.crt, ca.key)")
    init.add_argument("--dir", required=True)
    init.add_argument("--days", type=int, default=None, help="default: 10 years")
    init.add_argument("--name", default="continuum-federation-ca")
    nodec = certs_sub.add_parser("node", help="issue a node certificate into OUT")
    nodec.add_argument("--dir", required=True, help="the CA directory")
    nodec.add_argument("--id", required=True)
    nodec.add_argument("--dns", action="append", default=[])
    nodec.add_argument("--ip", action="append", default=[])
    nodec.add_argument("--days", type=int, default=None, help="default: 1 year")
    nodec.add_argument("--out", required=True)
    cl = certs_sub.add_parser("client", help="issue a client certificate into OUT")
    cl.add_argument("--dir", required=True, help="the CA directory")
    cl.add_argument("--name", required=True, help="who holds it (the common name, for logs)")
    cl.add_argument("--role", required=True, choices=tls.API_ROLES,
                    help="read: status and reads; write: also concept writes and deletes; "
                    "admin: also member changes, leadership transfer, force-new-cluster, "
                    "backups and revocations")
    cl.add_argument("--days", type=int, default=None, help="default: 1 year")
    cl.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("CONTINUUM_DEBUG"):
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in errs)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "node":
        if args.node_command == "recover":
            return _node_recover(args)
        return _node_run(args)
    if args.command == "recover":
        return asyncio.run(_recover(args))
    if args.command == "local":
        return _local_up(args)
    if args.command in ("backup", "restore"):
        from .backup import commands as backup_commands

        return backup_commands.run(args)
    if args.command == "certs":
        return _certs(args)
    return asyncio.run(_client_command(args))


def _node_run(args: argparse.Namespace) -> int:
    from . import node as node_mod  # imported late: the client commands need none of it

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {k: v for k, v in {
        "node_id": args.node_id, "bind_address": args.bind_address,
        "health_address": args.health_address, "data_dir": args.data_dir,
        "tls_dir": args.tls_dir}.items() if v is not None}
    settings = config.NodeSettings(**overrides)
    os.umask(0o077)  # every file the node writes is its own alone (data, logs, backups)
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(node_mod.FederationNode(settings).run_until_signal())
    return 0


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """For ``asyncio.Runner``: ``"uvloop"`` (the node's default) or ``"asyncio"`` (None)."""
    if kind == "uvloop":
        import uvloop  # imported only by a node that runs on it

        return uvloop.new_event_loop
    return None


def _node_recover(args: argparse.Namespace) -> int:
    from . import raft_storage  # imported late, like the node

    r = raft_storage.force_new_cluster_offline(Path(args.data_dir) / "raft", args.node_id,
                                            args.address)
    _print_recovered(args.node_id, r.truncated_after, r.discarded,
                     sorted(r.old_config.members - {args.node_id}))
    return 0


async def _recover(args: argparse.Namespace) -> int:
    from . import client, local

    node_id, url = None, args.node
    if "://" not in args.node:  # a node id of the local cluster
        nodes, files = client.local_cluster(args.data_dir)
        found = next((n for n in nodes if n["id"] == args.node), None)
        if found is None:
            raise ValueError(f"no node {args.node!r} in {args.data_dir}/nodes.json "
                             f"(nodes: {', '.join(n['id'] for n in nodes)})")
        node_id, url = found["id"], found["api"]
    if args.tls_dir:
        files = tls.TLSFiles.from_dir(args.tls_dir)
    elif node_id is None:
        _, files = client.local_cluster(args.data_dir)
    async with client.ApiClient(url, files, timeout=60.0) as c:
        if node_id is None:  # the confirmation names the node we reached, not the URL
            node_id = str((await c.status())["node_id"])
        try:
            result = await c.force_new_cluster(node_id)
        except client.ApiError as exc:
            if exc.code == "has_leader":
                raise ValueError(f"{node_id} sees a leader ({exc.body.get('leader_id')}): "
                                 "quorum is not lost, nothing was changed") from None
            raise
    if "://" not in args.node:
        local.record_sole_member(Path(args.data_dir), node_id)
    _print_recovered(node_id, int(result.get("kept_through_index", 0)),
                     int(result.get("discarded_entries", 0)),
                     list(result.get("former_members", [])))
    return 0


def _print_recovered(node_id: str, kept: int, discarded: int, former: list[str]) -> None:
    print(f"{node_id} is now the sole voter of a new cluster: kept the log through index "
          f"{kept}, discarded {discarded} uncommitted entries")
    if former:
        print(f"former members ({', '.join(former)}) must not come back with their old data: "
              "they discard it and join as new members (a local cluster: 'local up' adds "
              "them back)")


def _local_up(args: argparse.Namespace) -> int:
    from . import local

    data_dir = Path(args.data_dir).resolve()
    nodes = local.plan(args.nodes, args.first_ip, args.port, args.health_port)
    return asyncio.run(_local_up_async(args, local.LocalCluster(data_dir, nodes)))


async def _local_up_async(args: argparse.Namespace, cluster: local.LocalCluster) -> int:
    from . import local

    data_dir, nodes = cluster.data_dir, cluster.nodes
    # Installed before any node starts: Ctrl-C or SIGTERM stops the cluster at any point.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: the nodes run in sessions of their own, so a closed terminal reaches only us.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting {len(nodes)} nodes (data and logs in {data_dir})", flush=True)
    for n in nodes:
        print(f"  {n.node_id}: api+peers {n.api_url} (mTLS), health {n.health_url}")
    try:
        progress = sys.stdout if sys.stdout.isatty() else None
        took = await cluster.up(args.ready_timeout, progress, stop, notes=sys.stdout)
        print(f"cluster ready in {took:.2f}s")
        print(f"client certificate: {data_dir}/pki/client.crt (key client.key, CA ca.crt)")
        put = _client_hint(data_dir, "put", "demo", '{"name": "Raft"}')
        print(f"try: {put} && {_client_hint(data_dir, 'get', 'demo')}", flush=True)
        if args.exit_when_ready:
            print(local.render_table(await local.poll_status(data_dir)))
            return 0
        return await _watch(cluster, data_dir, stop)
    except local.Interrupted:
        print("\ninterrupted before the cluster was ready", file=sys.stderr)
        return 130
    finally:
        if cluster.procs:
            # The nodes are stopped even when our stdout is gone (a closed pipe or terminal):
            # a print that fails must not leave them running without us.
            _say("\nstopping the cluster ...")
            cluster.stop()
            _say("stopped")


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, flush=True)


def _client_hint(data_dir: Path, command: str, *args: str) -> str:
    """A client command as the user can type it: this very program (the venv's, when it
    was started by path), with --data-dir unless it is the default."""
    words = [sys.argv[0] if os.sep in sys.argv[0] else "continuum-federation", command]
    if data_dir != Path(DEFAULT_LOCAL_DIR).resolve():
        words += ["--data-dir", str(data_dir)]
    return shlex.join([*words, *args])


async def _watch(cluster: local.LocalCluster, data_dir: Path, stop: asyncio.Event) -> int:
    from . import local

    """The live status table, until a signal (0) or until every node has exited (1)."""
    interactive = sys.stdout.isatty()
    last = ""
    while not stop.is_set():
        dead = cluster.exited()
        if dead and len(dead) == len(cluster.procs):
            print(f"every node exited: {dead}; see {cluster.log_dir}", file=sys.stderr)
            return 1
        table = local.render_table(await local.poll_status(data_dir))
        if interactive:
            sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ")
                             + "Ctrl-C stops the cluster\n" + table + "\n")
            sys.stdout.flush()
        elif table != last:
            print(table, flush=True)
        last = table
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return 0


def _certs(args: argparse.Namespace) -> int:
    from . import pki

    if args.certs_command == "init":
        pki.init_ca(args.dir, args.name, args.days or pki.DEFAULT_CA_DAYS)
        print(f"CA in {args.dir} (ca.crt, ca.key: keep ca.key secret)")
        return 0
    ca = pki.load_ca(args.dir)
    if args.certs_command == "node":
        pair = pki.issue_node(ca, args.id, dns_names=args.dns, ip_addresses=args.ip,
                              days=args.days or pki.DEFAULT_CERT_DAYS)
    else:
        pair = pki.issue_client(ca, args.name, role=args.role,
                                days=args.days or pki.DEFAULT_CERT_DAYS)
    out = pki.write_secret_dir(args.out, pair, ca.cert_pem)
    until = pki.not_after(pair.cert_pem)
    print(f"wrote {out}/tls.crt, tls.key, ca.crt (valid until {until:%Y-%m-%d})")
    return 0


async def _client_command(args: argparse.Namespace) -> int:
    from . import client, local

    if args.tls_dir:
        files = tls.TLSFiles.from_dir(args.tls_dir)
        nodes = [{"id": "?", "api": args.api}] if args.api else []
    else:
        nodes, files = client.local_cluster(args.data_dir)
    if args.api:
        nodes = [{"id": "?", "api": args.api}]
    if not nodes:
        raise ValueError("give --api URL with --tls-dir, or --data-dir of a local cluster")
    if args.command == "status":
        if args.api is None and not args.tls_dir:
            rows = await local.poll_status(Path(args.data_dir))
        else:
            async with client.ApiClient(nodes[0]["api"], files) as c:
                rows = [{"id": nodes[0]["id"], **(await c.status())}]
        print(json.dumps(rows, indent=2) if args.json else local.render_table(rows))
        return 0
    idempotent = args.command != "put" or args.strong
    if args.command == "put":
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"value is not JSON: {exc}") from None
        # One key for every node tried: a strong write is applied at most once.
        key = uuid.uuid4().hex if args.strong else None

        def call(c: client.ApiClient) -> Awaitable[dict[str, Any]]:
            return c.put(args.concept_id, value, strong=args.strong, idempotency_key=key)
    elif args.command == "get":
        def call(c: client.ApiClient) -> Awaitable[dict[str, Any]]:
            return c.get(args.concept_id)
    else:
        def call(c: client.ApiClient) -> Awaitable[dict[str, Any]]:
            return c.delete(args.concept_id)
    if args.wait < 0:
        raise ValueError("--wait must be zero or more seconds")
    result = await client.first_reachable([n["api"] for n in nodes], files, call,
                                          wait=args.wait, idempotent=idempotent)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
