"""Prometheus metrics: API latency histograms plus every component's ``get_stats``.

Component figures are read at scrape time by a collector (no background
polling, never stale); names are ``continuum_<component>_<stat>``. Counters
and gauges the dashboards rely on have fixed names, listed in docs/metrics.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_SAFE = re.compile(r"[^a-zA-Z0-9_]")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    """One registry per node (several nodes may share a process in tests)."""

    def __init__(self, sources: Callable[[], dict[str, dict[str, Any]]],
                 named: Callable[[], list[tuple[str, str, dict[str, str], float]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "continuum_api_request_seconds", "Latency of the HTTP API by route and status class",
            ["route", "code"], registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.writes = Histogram(
            "continuum_write_seconds", "Time to acknowledge a concept write, by consistency",
            ["consistency"], registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.registry.register(StatsCollector(sources, named))
        self._series: dict[object, Histogram] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        # One labelled series per (route, status class), looked up once: labels() builds
        # and checks a key and takes a lock on every call, and this runs on every request.
        key = (route, status // 100)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self.requests.labels(route, f"{status // 100}xx")
        series.observe(seconds)

    def observe_write(self, consistency: str, seconds: float) -> None:
        series = self._series.get(consistency)
        if series is None:
            series = self._series[consistency] = self.writes.labels(consistency)
        series.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


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


class StatsCollector(Collector):
    """Exports ``get_stats()`` of each component, plus named gauges for the dashboards."""

    def __init__(self, sources: Callable[[], dict[str, dict[str, Any]]],
                 named: Callable[[], list[tuple[str, str, dict[str, str], float]]]) -> None:
        self._sources = sources
        self._named = named

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}

        def family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(name, doc, labels=labels)
            return fam

        for name, doc, labels, value in self._named():
            family(name, doc, sorted(labels)).add_metric(
                [labels[k] for k in sorted(labels)], value)
        for component, stats in self._sources().items():
            for name, labels, value in flatten(f"continuum_{component}", stats):
                if name in families:
                    continue  # a named gauge already carries it
                family(name, f"{component} statistic", sorted(labels)).add_metric(
                    [labels[k] for k in sorted(labels)], value)
        yield from families.values()
