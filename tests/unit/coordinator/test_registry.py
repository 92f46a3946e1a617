"""The registry state machine: commands, fencing, determinism, snapshots (pure)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from continuum.federation.distributed.core import registry
from continuum.federation.distributed.core.health_checks import NodeStatus as S
from continuum.federation.distributed.core.registry import Registry


def reg(nid: str, address: str = "127.0.0.1:7000", **meta: Any) -> dict[str, Any]:
    return registry.register_command(nid, address, meta, at=100.0)


def status(reg_: Registry, nid: str, st: S, gen: int | None = None) -> dict[str, Any]:
    rec = reg_.get(nid)
    g = gen if gen is not None else (rec.generation if rec else 0)
    return registry.status_command({nid: (g, st)}, at=200.0)


def test_register_deregister_and_status() -> None:
    r = Registry()
    assert r.apply(reg("n1", region="eu")) == registry.Applied(True, ("n1",))
    rec = r.get("n1")
    assert rec is not None and rec.status is S.UNKNOWN and rec.metadata == {"region": "eu"}
    assert r.apply(status(r, "n1", S.HEALTHY)).changed == ("n1",)
    assert r.get("n1").status is S.HEALTHY  # type: ignore[union-attr]
    assert r.get("n1").status_changed_at == 200.0  # type: ignore[union-attr]
    assert r.apply(registry.deregister_command("n1", 300.0)).ok
    assert r.get("n1") is None
    again = r.apply(registry.deregister_command("n1", 300.0))
    assert not again.ok and "not registered" in (again.error or "")


def test_retried_register_is_a_no_op_and_keeps_health() -> None:
    r = Registry()
    r.apply(reg("n1"))
    r.apply(status(r, "n1", S.HEALTHY))
    assert r.apply(reg("n1")) == registry.Applied(True, ())
    assert r.get("n1").status is S.HEALTHY  # type: ignore[union-attr]
    # new metadata, same address: updated, health kept
    assert r.apply(reg("n1", zone="b")).changed == ("n1",)
    assert r.get("n1").status is S.HEALTHY  # type: ignore[union-attr]


def test_moving_a_node_resets_health_and_fences_old_verdicts() -> None:
    r = Registry()
    r.apply(reg("n1", "10.0.0.1:7000"))
    old_gen = r.get("n1").generation  # type: ignore[union-attr]
    stale = status(r, "n1", S.UNHEALTHY)  # proposed about the old address...
    r.apply(status(r, "n1", S.HEALTHY))
    r.apply(reg("n1", "10.0.0.2:7000"))  # ...the node moved before it committed
    rec = r.get("n1")
    assert rec is not None and rec.status is S.UNKNOWN and rec.generation != old_gen
    assert r.apply(stale).changed == ()
    assert r.get("n1").status is S.UNKNOWN  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("register n1", "is a dict"),
        ({"type": "coord.explode"}, "unknown registry command"),
        ({"type": "coord.register", "node_id": "", "address": "h:1"}, "node id"),
        ({"type": "coord.register", "node_id": "a b", "address": "h:1"}, "whitespace"),
        ({"type": "coord.register", "node_id": "n", "address": "nohost"}, "host:port"),
        ({"type": "coord.register", "node_id": "n", "address": "h:99999"}, "1..65535"),
        ({"type": "coord.register", "node_id": "n", "address": "h:1", "metadata": [1]},
         "metadata must be a dict"),
        ({"type": "coord.register", "node_id": "n", "address": "h:1",
          "metadata": {"x": object()}}, "plain data"),
        ({"type": "coord.register", "node_id": "n", "address": "h:1", "at": "now"}, "'at'"),
        ({"type": "coord.status", "changes": []}, "non-empty"),
        ({"type": "coord.status", "changes": [["n", 1, "sleepy"]]}, "unknown status"),
        ({"type": "coord.status", "changes": [["n", "1", "healthy"]]}, "generation"),
    ],
)
def test_bad_commands_change_nothing(command: Any, message: str) -> None:
    r = Registry()
    r.apply(reg("n1"))
    before = r.snapshot()["nodes"]
    with pytest.raises(ValueError, match=message):
        registry.validate(command)
    applied = r.apply(command)
    assert not applied.ok and applied.error
    assert r.snapshot()["nodes"] == before


def test_metadata_limits() -> None:
    deep: Any = "x"
    for _ in range(10):
        deep = {"d": deep}
    with pytest.raises(ValueError, match="deeper"):
        registry.check_metadata(deep)
    with pytest.raises(ValueError, match="items"):
        registry.check_metadata({str(i): i for i in range(1000)})
    assert registry.check_metadata({"t": (1, 2)}) == {"t": [1, 2]}  # as msgpack would give


def _random_commands(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        nid = f"n{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.35:
            out.append(registry.register_command(nid, f"10.0.0.{rng.randrange(3)}:7000",
                                                 {"i": rng.randrange(3)}, float(i)))
        elif roll < 0.5:
            out.append(registry.deregister_command(nid, float(i)))
        else:
            out.append(registry.status_command(
                {nid: (rng.randrange(i + 1), rng.choice(list(S)))}, float(i)))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_replicas_applying_the_same_log_are_identical(seed: int) -> None:
    commands = _random_commands(random.Random(seed), 300)
    a, b = Registry(), Registry()
    for c in commands:
        a.apply(c)
        # the other replica gets the command as Raft delivers it: through msgpack
        b.apply(msgpack.unpackb(msgpack.packb(c, use_bin_type=True), raw=False))
    assert a.snapshot() == b.snapshot()
    restored = Registry.from_snapshot(msgpack.unpackb(msgpack.packb(a.snapshot()), raw=False))
    assert restored.snapshot() == a.snapshot()
