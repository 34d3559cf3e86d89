"""Parameter sweeps: many ``[detector]`` parameter sets x many trading days on a Dask cluster.

    spx backtest 2026-11-16 2026-11-20 --sweep params.toml                 # all local cores
    spx backtest 2026-11-16 2026-11-20 --sweep params.toml --cluster tcp://10.0.0.5:8786

Every (set, day) pair is one :func:`services.backtest.run.run_day` job: days are independent (each
warmed up on the day before), so a sweep's result for a set is exactly the single backtest of that
set, wherever the jobs ran. The engine is Dask distributed (``distributed.LocalCluster`` on all
local cores by default; ``--cluster`` names a running scheduler): an established scheduler with
work stealing, worker restarts, a dashboard and the same ``concurrent.futures`` interface as a local
process pool, which is all the sweep needs from it.

A sweep file (TOML) lists parameter sets, named ``[[set]]`` tables and/or a ``[grid]`` whose
lists multiply out; keys are ``[detector]`` fields, dotted into maps::

    [[set]]
    name = "baseline"                       # no overrides: the configured detector

    [[set]]
    name = "short opening range"
    opening_range_min = 5
    "plugin_config.orb.min_skew" = 0.2

    [grid]
    opening_range_min = [10, 20]
    family_cap = [1, 2]

The first set is the baseline every other set is compared with (the promotion rule of
``spx backtest --baseline``).
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from pydantic import ValidationError
import json
import html
import base64

from services.backtest import report as rpt
from services.backtest import run as bt
from services.backtest import stats as st
from services.detector.config import DetectorConfig
from spx_common.errors import Refused

SWEEP_VERSION = 1
MAX_SETS = 256


class SweepError(Refused, ValueError):
    """A sweep file that cannot be run (the message names the set and the key)."""


@dataclass(frozen=True)
class ParamSet:
    name: str
    overrides: dict[str, Any]


def load_sweep(path: Path) -> list[ParamSet]:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SweepError(f"{path}: {exc}") from exc
    return parse_sweep(doc, str(path))


def parse_sweep(doc: dict, where: str = "sweep") -> list[ParamSet]:
    unknown = set(doc) - {"set", "grid"}
    if unknown:
        raise SweepError(f"{where}: unknown table(s) {sorted(unknown)}; use [[set]] and [grid]")
    sets = []
    for i, item in enumerate(doc.get("set", [])):
        if not isinstance(item, dict):
            raise SweepError(f"{where}: set {i + 1} is not a table")
        item = dict(item)
        name = str(item.pop("name", f"set {i + 1}"))
        sets.append(ParamSet(name, _flatten(item)))
    grid = doc.get("grid") or {}
    if grid:
        keys = sorted(_flatten(grid))
        flat = _flatten(grid)
        for k in keys:
            if not isinstance(flat[k], list) or not flat[k]:
                raise SweepError(f"{where}: [grid] {k} must be a non-empty list of values")
        for combo in itertools.product(*(flat[k] for k in keys)):
            over = dict(zip(keys, combo, strict=True))
            sets.append(ParamSet(", ".join(f"{k}={v}" for k, v in over.items()), over))
    if not sets:
        raise SweepError(f"{where}: no parameter sets ([[set]] tables or a [grid])")
    if len(sets) > MAX_SETS:
        raise SweepError(f"{where}: {len(sets)} parameter sets; at most {MAX_SETS}")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise SweepError(f"{where}: set names must be unique ({names})")
    return sets


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply(cfg: DetectorConfig, ps: ParamSet) -> DetectorConfig:
    """``cfg`` with the set's overrides (dotted keys into maps), validated like the config file."""
    doc = copy.deepcopy(cfg.model_dump())
    for key, value in ps.overrides.items():
        head, *rest = key.split(".")
        if head not in DetectorConfig.model_fields:
            raise SweepError(f"set {ps.name!r}: {head!r} is not a [detector] setting")
        if rest:
            node = doc.setdefault(head, {})
            for part in rest[:-1]:
                if not isinstance(node, dict):
                    raise SweepError(f"set {ps.name!r}: {key!r} goes into a value that is not a map")
                node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SweepError(f"set {ps.name!r}: {key!r} goes into a value that is not a map")
            node[rest[-1]] = value
        else:
            doc[head] = value
    try:
        return DetectorConfig(**doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SweepError(f"set {ps.name!r}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def local_cluster(workers: int):
    """A Dask cluster of ``workers`` single-threaded processes on this machine, and a client on it."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def run_sweep(store, opts: bt.Options, cfg: DetectorConfig, sets: list[ParamSet], *, cluster: str | None = None,
              workers: int | None = None, progress: Callable[[int, int, str], None] | None = None,
              client=None) -> dict:
    """Run every set over every day on Dask; the sweep document (per set: its backtest result and its
    comparison with the first set)."""
    base_cfg = cfg.model_copy(update={"symbols": list(opts.symbols)})
    prepared = []
    for ps in sets:
        c = apply(base_cfg, ps)
        host = bt.make_host(c, opts.families)
        plugins = [{"name": p["name"], "family": p["family"], "version": p["version"]} for p in host.describe()]
        chash = bt.config_hash(c, opts, plugins)
        prepared.append((ps, plugins, chash, bt.plan(store, opts, c, f"bt-{chash}")))  # a set = its single run
    jobs = [(i, job) for i, (_, _, _, js) in enumerate(prepared) for job in js]
    own = None
    engine = f"dask cluster {cluster}" if cluster else ""
    if client is None:
        if cluster:
            from distributed import Client

            client = own = Client(cluster)
        else:
            n = workers or bt.default_workers()
            client, lc = local_cluster(n)
            own = (client, lc)
            engine = f"dask LocalCluster, {n} worker processes"
    else:
        engine = engine or f"dask {client.scheduler.address}"
    try:
        days = bt.execute(bt.run_day, [j for _, j in jobs], executor=client.get_executor(), progress=progress,
                          label=lambda j: j.day.isoformat())
    finally:
        if isinstance(own, tuple):
            own[0].close()
            own[1].close()
        elif own is not None:
            own.close()
    per_set: list[list[bt.DayResult]] = [[] for _ in sets]
    for (i, _), res in zip(jobs, days, strict=True):
        per_set[i].append(res)
    quiet = bt.Options(**{**opts.__dict__, "record": False, "baseline": None})
    results = [bt.assemble(None, quiet, per_set[i], plugins, chash, job_list[0].profile if job_list else
                           store.get_active_profile())
               for i, (_, plugins, chash, job_list) in enumerate(prepared)]
    base = results[0]
    out_sets = []
    for (ps, _, chash, _), res in zip(prepared, results, strict=True):
        cmp = None if res is base else st.compare(res["trades"], base["trades"], opts.criteria,
                                                   fallback=res["evidence"]["fallback_to_minute_bars"],
                                                   days=res["range"]["trading_days"],
                                                   baseline_days=base["range"]["trading_days"])
        out_sets.append({"name": ps.name, "overrides": ps.overrides, "config_hash": chash, "result": res,
                         "versus_first": cmp})
    return {"sweep_version": SWEEP_VERSION, "engine": engine,
            "range": {"from": opts.start.isoformat(), "to": opts.end.isoformat(),
                      "trading_days": len(per_set[0]) if per_set else 0},
            "jobs": len(jobs), "sets": out_sets}


def write(doc: dict, out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.png (equity curve per set, hit rates, decisions) and sweep.html."""

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sweep.json", "png": out_dir / "sweep.png", "html": out_dir / "sweep.html"}
    paths["json"].write_text(json.dumps(doc, sort_keys=True, indent=1, default=str) + "\n")
    rpt.sweep_picture(doc, paths["png"])
    img = base64.b64encode(paths["png"].read_bytes()).decode()
    rows = []
    for s in doc["sets"]:
        o = s["result"]["overall"]
        v = s["versus_first"]
        decision = "baseline" if v is None else ("PROMOTE" if v["promote"] else "refused: " + "; ".join(v["refusals"]))
        rows.append(f"<tr><td>{html.escape(s['name'])}</td><td>{o['trades']}</td><td>{o['t1_rate']:.1%}</td>"
                    f"<td>{o['t2_rate']:.1%}</td><td>{o['expectancy_r']:+.3f}</td><td>{o['max_drawdown_r']:.2f}</td>"
                    f"<td>{html.escape(decision)}</td></tr>")
    paths["html"].write_text(
        "<!doctype html><meta charset=utf-8><title>Sweep report</title>"
        "<style>body{font:14px system-ui;margin:24px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
        f"<h1>Sweep {html.escape(doc['range']['from'])} .. {html.escape(doc['range']['to'])}</h1>"
        f"<p>{len(doc['sets'])} parameter sets x {doc['range']['trading_days']} trading days = {doc['jobs']} "
        f"jobs on {html.escape(doc['engine'])}. The first set is the baseline.</p>"
        "<table><tr><th>set</th><th>trades</th><th>T1</th><th>T2</th><th>expectancy R</th><th>max DD R</th>"
        "<th>decision vs first</th></tr>" + "".join(rows) + "</table>"
        f"<p><img alt='equity curves and hit rates' src='data:image/png;base64,{img}'></p>\n")
    return paths
