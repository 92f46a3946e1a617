"""Kubernetes quantities compared by value, not by spelling.

The API server stores quantities in a canonical form (``cpu: 1`` stays ``"1"``, ``0.5``
becomes ``"500m"``, ``0.5Gi`` becomes ``"512Mi"``, ``1000m`` becomes ``"1"``), so a
desired object written the user's way never equals the live one by text. The builders mark
each quantity they emit with ``Quantity``; ``cluster.is_subset`` compares marked values
numerically (``kubernetes.utils.parse_quantity``, the client library's own parser), so a
reconcile of an unchanged cluster writes nothing whatever the spelling.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity


class Quantity(str):
    """A string the API server may rewrite into another spelling of the same amount."""

    __slots__ = ()


def mark(value: int | str) -> Quantity:
    return Quantity(str(value))


def parse(value: Any) -> Decimal | None:
    """The amount, or None when ``value`` is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        return None
    try:
        amount: Decimal = parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        return None
    return amount


def same(desired: Any, live: Any) -> bool:
    """True when both are the same amount (or, if either is no quantity, the same text)."""
    a, b = parse(desired), parse(live)
    if a is None or b is None:
        return bool(desired == live)
    return a == b
