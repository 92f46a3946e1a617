"""Prometheus metrics: API latency histograms plus every component's ``get_stats``.

Component figures are read at scrape time (no background polling, never
stale); names are ``continuum_<component>_<stat>``. Counters and gauges the
dashboards rely on have fixed names, listed in docs/metrics.md.

The text exposition format (version 0.0.4) is written here: a node needs two
histograms and a page of gauges, and the client library's import, registry
locks and per-observation label lookups cost more than that, on every request.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SAFE = re.compile(r"[^a-zA-Z0-9_]")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Named = tuple[str, str, dict[str, str], float]  # name, help, labels, value


class Histogram:
    """Cumulative buckets per label set, as a Prometheus histogram (one thread: no lock)."""

    def __init__(self, name: str, doc: str, label_names: tuple[str, ...],
                 buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name, self.doc, self.label_names = name, doc, label_names
        self.bounds = tuple(buckets)
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self.bounds))
        series.counts[bisect.bisect_left(self.bounds, value)] += 1
        series.total += value

    def render(self) -> Iterator[str]:
        yield from _header(self.name, self.doc, "histogram")
        for labels, series in sorted(self._series.items()):
            named = dict(zip(self.label_names, labels, strict=True))
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), series.counts, strict=True):
                cumulative += count
                yield _sample(f"{self.name}_bucket", {**named, "le": _number(bound)},
                              cumulative)
            yield _sample(f"{self.name}_count", named, cumulative)
            yield _sample(f"{self.name}_sum", named, series.total)


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.total = 0.0


class NodeMetrics:
    """One set per node (several nodes may share a process in tests)."""

    def __init__(self, sources: Callable[[], dict[str, dict[str, Any]]],
                 named: Callable[[], list[Named]]) -> None:
        self.requests = Histogram(
            "continuum_api_request_seconds", "Latency of the HTTP API by route and status class",
            ("route", "code"))
        self.writes = Histogram(
            "continuum_write_seconds", "Time to acknowledge a concept write, by consistency",
            ("consistency",))
        self._sources = sources
        self._named = named

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.observe((route, f"{status // 100}xx"), seconds)

    def observe_write(self, consistency: str, seconds: float) -> None:
        self.writes.observe((consistency,), seconds)

    def render(self) -> bytes:
        lines = [*self.requests.render(), *self.writes.render(), *self._gauges()]
        return ("\n".join(lines) + "\n").encode()

    def _gauges(self) -> Iterator[str]:
        """The named gauges, then every component's numeric stats (a name at most once)."""
        families: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}
        for name, doc, labels, value in self._named():
            families.setdefault(name, (doc, []))[1].append((labels, value))
        named = set(families)
        for component, stats in self._sources().items():
            for name, labels, value in flatten(f"continuum_{component}", stats):
                if name not in named:  # a named gauge already carries it
                    families.setdefault(name, (f"{component} statistic", []))[1].append(
                        (labels, value))
        for name, (doc, samples) in families.items():
            yield from _header(name, doc, "gauge")
            for labels, value in samples:
                yield _sample(name, labels, value)


def flatten(prefix: str, stats: dict[str, Any]) -> Iterator[tuple[str, dict[str, str], float]]:
    """Numeric leaves of a stats dict as (name, labels, value); nested dicts become labels."""
    for key, value in stats.items():
        name = f"{prefix}_{_SAFE.sub('_', str(key))}".lower()
        if isinstance(value, int | float):  # bools included: they export as 0/1
            yield name, {}, float(value)
        elif isinstance(value, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                             for v in value.values()):
            for sub, v in value.items():
                yield name, {"key": str(sub)}, float(v)


def _header(name: str, doc: str, kind: str) -> Iterator[str]:
    yield f"# HELP {name} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
    yield f"# TYPE {name} {kind}"


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
