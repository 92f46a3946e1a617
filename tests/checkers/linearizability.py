"""A linearizability checker for a key-value history (Wing & Gong / Lowe, as in Porcupine).

Each key is an independent register, so the history is partitioned by key and
each part is searched on its own (Porcupine's P-compositionality). An operation
is ``Op(call, ret, kind, key, value)``: ``kind`` is "put" (value written) or
"get" (value read, None if absent). A put whose outcome the client never
learned has ``ret=None``: it may have taken effect at any point after its call,
or never. Times are distinct integers from one counter.

The search linearizes, one at a time, an operation that no other pending
operation must precede (none returned before it was called), keeping the
register's value; states (set of linearized ops, value) already explored are
memoized. A history is linearizable iff every completed op can be placed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Op:
    call: int
    ret: int | None  # None: outcome unknown (a put that may or may not have happened)
    kind: str  # "put" | "get"
    key: str
    value: str | None


def check(history: Iterable[Op]) -> tuple[bool, str | None]:
    """(True, None) if linearizable, else (False, the first key that is not)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        if op.kind == "get" and op.ret is None:
            continue  # a read with no answer constrains nothing
        by_key[op.key].append(op)
    for key in sorted(by_key):
        if not check_register(by_key[key]):
            return False, key
    return True, None


def check_register(ops: list[Op]) -> bool:
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    ret = [math.inf if o.ret is None else o.ret for o in ops]
    required = 0
    for i, o in enumerate(ops):
        if o.ret is not None:
            required |= 1 << i
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = [(0, None)]
    while stack:
        done, value = stack.pop()
        if done & required == required:
            return True
        if (done, value) in seen:
            continue
        seen.add((done, value))
        # The earliest return among pending ops bounds which op may go next.
        horizon = min((ret[i] for i in range(n) if not done >> i & 1), default=math.inf)
        for i in range(n):
            if done >> i & 1:
                continue
            o = ops[i]
            if o.call > horizon:
                break  # sorted by call: no later op is eligible either
            if o.kind == "get":
                if o.value == value:
                    stack.append((done | 1 << i, value))
            else:
                stack.append((done | 1 << i, o.value))
    return False
