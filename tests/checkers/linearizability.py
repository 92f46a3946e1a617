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

Puts of unknown outcome make the search branch at every step (each may or may
not have happened yet), so two exact reductions come first. A put whose value
no read returned is dropped: had it taken effect, no read saw it before the
next put, so "never happened" explains the history as well. A put whose value
was read, when no other put wrote that value, did happen, before the first of
those reads returned: it gets that return as its own. Real histories (a paused
leader leaves dozens of puts unanswered) stay cheap to check.
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
    ops = sorted(_settle_unknown_puts(ops), key=lambda o: o.call)
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
        first = (~done & (done + 1)).bit_length() - 1  # the lowest op not yet placed
        # The earliest return among pending ops bounds which op may go next.
        horizon = min((ret[i] for i in range(first, n) if not done >> i & 1), default=math.inf)
        for i in range(first, n):
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


def _settle_unknown_puts(ops: list[Op]) -> list[Op]:
    """The reductions of the module's docstring: unread unknown puts go, read ones return."""
    first_read: dict[str | None, int] = {}
    for o in ops:
        if o.kind == "get" and o.ret is not None:
            first_read[o.value] = min(first_read.get(o.value, o.ret), o.ret)
    writers: dict[str | None, int] = defaultdict(int)
    for o in ops:
        if o.kind == "put":
            writers[o.value] += 1
    out = []
    for o in ops:
        if o.kind == "put" and o.ret is None:
            if o.value not in first_read:
                continue
            if writers[o.value] == 1:
                o = Op(o.call, first_read[o.value], o.kind, o.key, o.value)
        out.append(o)
    return out
