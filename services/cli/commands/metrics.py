"""``spx metrics SERVICE``: a running service's metrics, summarised (``--raw``: the Prometheus text)."""

from __future__ import annotations

import math
import re

from services.cli.common import RpcError, call, fail, table
from spx_common.config import SERVICES

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$')


def register(sub) -> None:
    p = sub.add_parser("metrics", help="a service's metrics: counters, gauges and latency percentiles",
                       description="Asks a running service for its metrics and prints a summary: counters and "
                       "gauges with their values, histograms as count, mean and p50/p90/p99 (upper bucket bounds). "
                       "--raw prints the Prometheus text as served.")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--raw", action="store_true", help="the Prometheus text format, every bucket")
    p.add_argument("--grep", help="only metrics (or raw lines) containing this text")
    p.set_defaults(func=cmd_metrics)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[str, list[tuple[str, str, float]]]]:
    """Prometheus text -> ({family: (type, help)}, {family: [(sample name, labels, value)]})."""
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[tuple[str, str, float]]] = {}
    family = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            meta.setdefault(name, ["untyped", ""])[1] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            meta.setdefault(name, ["untyped", ""])[0] = kind.strip()
            family = name
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", m.group(3)
            fam = family if name.startswith(family) and family else name
            try:
                samples.setdefault(fam, []).append((name, labels, float(value)))
            except ValueError:
                continue
    return {k: (v[0], v[1]) for k, v in meta.items()}, samples


def _num(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.3f}" if abs(x) < 1000 else f"{x:,.1f}"


def _strip_le(labels: str) -> tuple[str, float | None]:
    m = re.search(r'(,?)le="([^"]*)"', labels)
    if not m:
        return labels, None
    rest = (labels[:m.start()] + labels[m.end():]).replace("{,", "{").replace(",}", "}")
    le = m.group(2)
    return ("" if rest == "{}" else rest), (math.inf if le == "+Inf" else float(le))


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> str:
    want = q * count
    for le, c in sorted(buckets):
        if c >= want:
            return f"<= {_num(le)}" if le != math.inf else "> last bucket"
    return "-"


def summary(text: str, grep: str | None = None) -> str:
    meta, samples = parse(text)
    scalars, hists = [], []
    for fam, rows in samples.items():
        if grep and grep not in fam:
            continue
        kind, help_ = meta.get(fam, ("untyped", ""))
        if kind == "histogram":
            series: dict[str, dict] = {}
            for name, labels, value in rows:
                if name.endswith("_bucket"):
                    key, le = _strip_le(labels)
                    series.setdefault(key, {"b": [], "sum": 0.0, "count": 0.0})["b"].append((le, value))
                elif name.endswith("_sum"):
                    series.setdefault(labels, {"b": [], "sum": 0.0, "count": 0.0})["sum"] = value
                elif name.endswith("_count"):
                    series.setdefault(labels, {"b": [], "sum": 0.0, "count": 0.0})["count"] = value
            for labels, s in series.items():
                n = s["count"]
                hists.append([fam + labels, _num(n), _num(s["sum"] / n) if n else "-",
                              *(_quantile(s["b"], n, q) if n else "-" for q in (0.5, 0.9, 0.99))])
        else:
            for name, labels, value in rows:
                scalars.append([name + labels, _num(value), kind, help_])
    out = []
    if scalars:
        out.append(table(["metric", "value", "type", "help"], scalars, right={1}))
    if hists:
        out.append("\nhistograms (percentiles are the upper bound of the bucket they fall in):")
        out.append(table(["histogram", "count", "mean", "p50", "p90", "p99"], hists, right={1, 2, 3, 4, 5}))
    return "\n".join(out) if out else "no metrics" + (f" matching {grep!r}" if grep else "")


def cmd_metrics(args) -> int:
    try:
        text = call(args.service, "metrics")
    except RpcError as exc:
        return fail(f"{args.service}: {exc} (is the mesh up? 'spx status')")
    if args.raw:
        for line in text.splitlines():
            if not args.grep or args.grep in line:
                print(line)
        return 0
    print(summary(text, args.grep))
    print(f"\n('spx metrics {args.service} --raw' for the Prometheus text)")
    return 0
