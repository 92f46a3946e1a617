"""Network partitions between node processes on one loopback, with iptables.

The run lives in a private network namespace (its own loopback, its own
iptables), so no rule here can touch the host or another test. Every node binds
its own 127.0.60.x address but dials its peers from 127.0.0.1, so addresses
alone cannot tell whose packet is whose; the sending process's group can
(``-m owner --gid-owner``; ``cluster.Cluster`` runs each node under its own
gid). Each connection is marked with the group of the node that opened it
(``CONNMARK``, in the mangle table), so the answering side's packets are known
too. Cutting node A from node B drops, in OUTPUT:

- A's packets to B's address (A's own connections to B, and their handshakes);
- A's packets on connections that B opened (A answering B);
- and the same two with A and B swapped.

Why one namespace with an owner match, not a namespace per node joined by veth
pairs: the nodes keep the loopback addresses and certificates of the local
cluster, nothing needs a routable address, a bridge or a named namespace, and the
kernel removes the run's only namespace with its last process, so a crashed run
cannot leave an interface or a rule behind.

Packets are dropped, not rejected: a cut peer looks like a silent network, as
in a real partition, and TCP connections stall until the cut heals. Clients
(the harness, gid 0) are never cut. A whole partition is applied in one
``iptables-restore`` transaction, so no half-cut state is ever visible.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterable, Sequence

CHAIN = "CHAOS"


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Network:
    def __init__(self, nodes: dict[str, tuple[str, int]]) -> None:
        """``nodes``: node id -> (its IP address, its gid)."""
        self.nodes = nodes
        self.cut: list[tuple[str, str]] = []

    def setup(self) -> None:
        """Bring up the namespace's loopback and install the marks and the empty chain."""
        _run(["ip", "link", "set", "lo", "up"])
        lines = ["*mangle"]
        for _, gid in self.nodes.values():
            lines.append(f"-A OUTPUT -m conntrack --ctstate NEW -m owner --gid-owner {gid} "
                         f"-j CONNMARK --set-mark {gid}")
        lines += ["COMMIT", "*filter", f":{CHAIN} - [0:0]", f"-A OUTPUT -j {CHAIN}", "COMMIT", ""]
        _run(["iptables-restore"], "\n".join(lines))

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Cut every link between nodes of different groups (nodes in no group keep all
        their links); replaces any earlier partition."""
        member = {n: g for g, nodes in enumerate(groups) for n in nodes}
        pairs = [(a, b) for a, b in itertools.combinations(sorted(member), 2)
                 if member[a] != member[b]]
        self._apply(pairs)

    def isolate(self, node_id: str) -> None:
        self._apply([(node_id, other) for other in self.nodes if other != node_id])

    def heal(self) -> None:
        self._apply([])

    def dropped(self) -> int:
        """Packets the cut has dropped since the chain was last written."""
        out = _run(["iptables", "-L", CHAIN, "-n", "-v", "-x"])
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())

    def _apply(self, pairs: list[tuple[str, str]]) -> None:
        lines = ["*filter", f":{CHAIN} - [0:0]"]  # --noflush: only this chain is rewritten
        for a, b in pairs:
            for one, other in ((a, b), (b, a)):
                _, gid = self.nodes[one]
                ip, other_gid = self.nodes[other]
                lines.append(f"-A {CHAIN} -m owner --gid-owner {gid} -d {ip}/32 -j DROP")
                lines.append(f"-A {CHAIN} -m owner --gid-owner {gid} "
                             f"-m connmark --mark {other_gid} -j DROP")
        lines += ["COMMIT", ""]
        _run(["iptables-restore", "--noflush"], "\n".join(lines))
        self.cut = pairs
