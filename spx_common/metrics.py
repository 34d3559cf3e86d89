"""A small metrics registry rendered in the Prometheus text exposition format (0.0.4).

Counters, gauges and histograms, with labels. Each process owns one :class:`Registry`
(``service.metrics``); it is served on the service's control socket (``spx metrics``),
over HTTP when ``[metrics] http_port`` is set, and summarized in heartbeats.

Label sets are bounded: a metric refuses more than ``max_series`` distinct label sets and
counts the refusals in ``metrics_series_dropped_total`` (an unbounded label such as a
client id must never grow memory).
"""

from __future__ import annotations

import abc
import bisect
import math
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

DEFAULT_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


def _fmt_labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


V = TypeVar("V")


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


class _Metric(abc.ABC, Generic[V]):
    """One metric: its label names and, per label set, a value of type ``V``."""

    kind = "untyped"

    def __init__(self, registry: Registry, name: str, doc: str, labels: Iterable[str], max_series: int) -> None:
        self.registry = registry
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labels)
        self.max_series = max_series
        self._series: dict[tuple[str, ...], V] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...] | None:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in self._series and len(self._series) >= self.max_series:
            self.registry.series_dropped += 1
            return None
        return key

    @abc.abstractmethod
    def samples(self) -> list[str]:
        """The exposition lines of this metric's series (each kind writes its own)."""


class Counter(_Metric[float]):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels) if labels or self.labelnames else ()
        if key is None:
            return
        self._series[key] = self._series.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return float(self._series.get(tuple(str(labels[n]) for n in self.labelnames), 0.0))

    def total(self) -> float:
        return float(sum(self._series.values()))

    def samples(self) -> list[str]:
        return [f"{self.name}{_fmt_labels(self.labelnames, k)} {_num(v)}" for k, v in self._series.items()]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels) if labels or self.labelnames else ()
        if key is not None:
            self._series[key] = float(value)


class _Buckets:
    """One label set of a histogram: per-bucket counts (the last is +Inf), sum and count."""

    __slots__ = ("counts", "n", "total")

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.total = 0.0
        self.n = 0


class Histogram(_Metric[_Buckets]):
    kind = "histogram"

    def __init__(self, registry: Registry, name: str, doc: str, labels: Iterable[str], max_series: int,
                 buckets: tuple[float, ...] = DEFAULT_BUCKETS_MS) -> None:
        super().__init__(registry, name, doc, labels, max_series)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels) if labels or self.labelnames else ()
        if key is None:
            return
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Buckets(len(self.buckets))
        s.counts[bisect.bisect_left(self.buckets, value)] += 1
        s.total += value
        s.n += 1

    def count(self, **labels: str) -> int:
        s = self._series.get(tuple(str(labels[n]) for n in self.labelnames))
        return 0 if s is None else s.n

    def quantile(self, q: float, **labels: str) -> float | None:
        """Upper bucket bound below which a fraction ``q`` of observations fall (coarse)."""
        s = self._series.get(tuple(str(labels[n]) for n in self.labelnames))
        if s is None or not s.n:
            return None
        target, acc = q * s.n, 0
        for bound, n in zip(self.buckets + (math.inf,), s.counts, strict=True):
            acc += n
            if acc >= target:
                return bound
        return math.inf

    def samples(self) -> list[str]:
        out = []
        for key, s in self._series.items():
            acc = 0
            for bound, c in zip(self.buckets + (math.inf,), s.counts, strict=True):
                acc += c
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_fmt_labels(self.labelnames, key, le)} {acc}")
            out.append(f"{self.name}_sum{_fmt_labels(self.labelnames, key)} {_num(s.total)}")
            out.append(f"{self.name}_count{_fmt_labels(self.labelnames, key)} {s.n}")
        return out


M = TypeVar("M", bound=_Metric[Any])


class Registry:
    """All metrics of one process. Thread-safe for registration; updates are GIL-atomic enough."""

    def __init__(self, const_labels: dict[str, str] | None = None) -> None:
        self._metrics: dict[str, _Metric[Any]] = {}
        self._lock = threading.Lock()
        self.series_dropped = 0
        self.const_labels = const_labels or {}

    def _get(self, cls: type[M], name: str, doc: str, labels: Iterable[str], max_series: int, **kw: Any) -> M:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if not isinstance(existing, cls):
                    raise ValueError(f"metric {name} already registered as {existing.kind}")
                return existing
            metric = cls(self, name, doc, labels, max_series, **kw)
            self._metrics[name] = metric
            return metric

    def counter(self, name: str, doc: str, labels: Iterable[str] = (), max_series: int = 256) -> Counter:
        return self._get(Counter, name, doc, labels, max_series)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = (), max_series: int = 256) -> Gauge:
        return self._get(Gauge, name, doc, labels, max_series)

    def histogram(
        self, name: str, doc: str, labels: Iterable[str] = (), buckets: tuple[float, ...] = DEFAULT_BUCKETS_MS,
        max_series: int = 64,
    ) -> Histogram:
        return self._get(Histogram, name, doc, labels, max_series, buckets=buckets)

    def get(self, name: str) -> _Metric[Any] | None:
        return self._metrics.get(name)

    def render(self) -> str:
        lines: list[str] = []
        for metric in list(self._metrics.values()):
            lines.append(f"# HELP {metric.name} {metric.doc}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        lines.append("# HELP metrics_series_dropped_total Label sets refused because a metric reached max_series.")
        lines.append("# TYPE metrics_series_dropped_total counter")
        lines.append(f"metrics_series_dropped_total {self.series_dropped}")
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, float]:
        """Flat name -> value of counters and gauges (label sets summed), for heartbeats."""
        out: dict[str, float] = {}
        for metric in list(self._metrics.values()):
            if isinstance(metric, Counter):
                out[metric.name] = metric.total()
        return out


def serve_http(registry: Registry, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` over HTTP on a daemon thread; returns the server (call ``shutdown()``)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
