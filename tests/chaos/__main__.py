"""python -m chaos: real faults against real node processes, every history checked.

    python -m chaos run [--seed N] [--time S] [--faults kill,pause,...]  a run
    python -m chaos check DIR                       the checkers again on a saved run
    python -m chaos paused-leader [--seed N]        the focused scenario
    python -m chaos report [--time S] [--seed N]    a run, then docs/reliability.md

Runs need root, iptables, setpriv, unshare and a C compiler (scripts/chaos installs
what is missing). A run re-executes itself in a private network and PID namespace
(``unshare --net --pid --fork --kill-child``): its iptables rules never reach the
host, and every process it started dies with it, however it ends. Exit status: 0
when every check passed, 1 on a violation, 2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
import traceback
from pathlib import Path

from . import paused_leader, report, runner
from .nemesis import KINDS
from .workload import WorkloadConfig

NEEDED = ("unshare", "setpriv", "iptables", "iptables-restore", "ip")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("chaos: interrupted; every process of the run was stopped", file=sys.stderr)
        return 2
    except Exception:  # the harness broke, not the cluster: say so apart from a violation
        traceback.print_exc()
        print("chaos: the harness itself failed (exit 2)", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    if args.command == "check":
        summary = {"seed": None, **runner.check_saved(args.dir), "history": str(args.dir)}
        print(runner.render(summary))
        return 0 if summary["ok"] else 1
    if not runner.in_namespace():
        return _reexec_in_namespace(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    out = args.out or Path(".data/chaos") / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.seed}"
    out = out.resolve()
    print(f"chaos: seed {args.seed}, output in {out}", flush=True)
    if args.command == "paused-leader":
        summary = asyncio.run(paused_leader.run(out, args.seed, args.hold))
    else:
        kinds = tuple(k for k in args.faults.split(",") if k)
        config = runner.RunConfig(seed=args.seed, out=out, nodes=args.nodes, kinds=kinds,
                                  total=args.time,
                                  workload=WorkloadConfig(clients=args.clients))
        summary = asyncio.run(runner.run(config))
        if args.command == "report":
            report.write(summary, args.doc, _command(args))
            print(f"wrote {args.doc}")
    print(runner.render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if not summary["ok"]:
        print(f"chaos: FAILED with seed {args.seed}; run again with: scripts/chaos "
              f"{_command(args)}; check the saved history again with: scripts/chaos check "
              f"{out}", flush=True)
    return 0 if summary["ok"] else 1


def _command(args: argparse.Namespace) -> str:
    parts = [args.command, f"--seed {args.seed}"]
    if args.command != "paused-leader":
        if args.time is not None:
            parts.append(f"--time {args.time:g}")
        if args.faults != ",".join(KINDS):
            parts.append(f"--faults {args.faults}")
        if args.nodes != 5:
            parts.append(f"--nodes {args.nodes}")
        if args.clients != WorkloadConfig().clients:
            parts.append(f"--clients {args.clients}")
    return " ".join(parts)


def _reexec_in_namespace(argv: list[str]) -> int:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = "it must run as root" if os.geteuid() != 0 else f"missing {', '.join(missing)}"
        print(f"chaos: cannot run: {why} (scripts/chaos installs iptables with apt)",
              file=sys.stderr)
        return 2
    env = dict(os.environ, CHAOS_NETNS="1")
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
           sys.executable, "-m", "chaos", *argv]
    os.execvpe(cmd[0], cmd, env)
    return 2  # not reached


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "paused-leader", "report"):
        s = sub.add_parser(name)
        s.add_argument("--seed", type=int, default=None, help="default: a random one")
        s.add_argument("--out", type=Path, default=None,
                       help="run directory (default .data/chaos/<time>-<seed>)")
        s.add_argument("--json", type=Path, default=None, help="also write the summary here")
        if name == "paused-leader":
            s.add_argument("--hold", type=float, default=paused_leader.HOLD,
                           help="seconds the old leader stays stopped once another leads")
            continue
        s.add_argument("--time", type=float, default=None,
                       help="seconds of random faults (default: each kind once)")
        s.add_argument("--faults", default=",".join(KINDS), help="fault kinds to draw from")
        s.add_argument("--nodes", type=int, default=5)
        s.add_argument("--clients", type=int, default=WorkloadConfig().clients)
        if name == "report":
            s.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    c = sub.add_parser("check", help="run the checkers again on a saved run directory")
    c.add_argument("dir", type=Path)
    return p


if __name__ == "__main__":
    sys.exit(main())
