"""Load generator: the real mesh under supervisord, fed by the fake Massive WebSocket at a chosen rate.

    python benchmarks/load.py --rate 10000 --duration 30
    python benchmarks/load.py --rate 50000 --duration 60 --json /tmp/load50k.json
    python benchmarks/load.py --rate 10000 --duration 600 --rss-every 5      # the flat-memory run

Every process runs from ``supervisord.conf`` (as ``spx up`` starts them) in a private run directory,
with ``[feed] source=live`` pointed at the fake Massive server (``spx_testing/fakes/massive.py``) on loopback.
The fake sends a realistic mix as vendor JSON arrays every 5 ms, paced to ``--rate`` events/s:

* ``stocks``: SPY trades (10 %) and quotes (30 %); the price walks a sawtooth so setups trigger;
* ``indices``: I:SPX values (1 %), tracking SPY x 10 (the feed picks the at-the-money strike from it);
* ``options``: SPXW 0DTE quotes (50 %) and trades (9 %) over the contracts the feed subscribed.

Every event's vendor time ``t`` is the wall-clock millisecond it is sent, so a latency is the receipt
time minus ``t`` (it over-states by at most 1 ms: ``t`` is truncated). Measured:

* per-stage throughput from each process's metrics (scraped over the control socket before and after
  the measured window): fake sent, feed published, aggregator events in, bars out, detector
  transitions, gateway price broadcasts and websocket messages out;
* drops by reason: ``tick_drop_count{reason}``, vendor parse errors, bus frames lost (sequence gaps)
  and refused, gateway conflation, events the fake could not send;
* latency percentiles: tick ingest -> closed 1s bar received on the bus, -> setup transition received
  on the bus (a probe detector plugin, ``benchmarks/lifecycle_plugin.py``, opens setups on every bar),
  -> ``price:SPY`` update received by a websocket client of the gateway, -> ``setups`` update received;
* each process's RSS sampled every ``--rss-every`` seconds (first, peak, last; growth over the second
  half of the run is the flat-memory check).

Prints a table, then the whole result as JSON (``--json PATH`` also writes it). Every wait is bounded;
the mesh is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from services.cli import supervise  # noqa: E402
from spx_common.bus import RpcClient, RpcError, Subscriber  # noqa: E402
from spx_common.config import BusConfig, RuntimeConfig  # noqa: E402
from spx_testing.fakes.massive import MIX, FakeMassive, MarketMix as Mix, prime_options  # noqa: E402

SERVICES = ["feed", "aggregator", "detector", "selector", "broker", "coach", "gateway", "recorder"]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def summary(samples: list[tuple[int, float]], t0_ns: int) -> dict:
    """Percentiles of (receipt wall ns, latency ms) samples, and the five worst with their receipt time
    in seconds into the measured window (a spike that recurs at a period points at periodic work)."""
    xs = [ms for _, ms in samples]
    worst = sorted(samples, key=lambda s: -s[1])[:5]
    return {"n": len(xs), "p50": pct(xs, 0.5), "p90": pct(xs, 0.9), "p99": pct(xs, 0.99),
            "max": round(max(xs), 2) if xs else None,
            "worst": [[round((t - t0_ns) / 1e9, 2), round(ms, 1)] for t, ms in worst],
            **({"series": [[round((t - t0_ns) / 1e9, 3), round(ms, 2)] for t, ms in samples]} if KEEP_SERIES else {})}


KEEP_SERIES = False  # --series: every sample in the JSON


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(ctx: zmq.Context, bus: BusConfig, rt: RuntimeConfig, service: str) -> dict[str, float]:
    """One process's Prometheus text over its control socket -> {'name{labels}': value}."""
    rpc = RpcClient(ctx, bus.rep_endpoint(service, rt), timeout_s=3.0, retries=1)
    try:
        text = rpc.call("metrics")
    except RpcError:
        return {}
    finally:
        rpc.close()
    out = {}
    for line in str(text).splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def total(metrics: dict[str, float], name: str, label: str | None = None) -> float:
    """Sum of a metric's series (optionally only those whose labels contain ``label``)."""
    return sum(v for k, v in metrics.items()
               if (k == name or k.startswith(name + "{")) and (label is None or label in k))


def by_label(before: dict, after: dict, name: str) -> dict[str, float]:
    out = {}
    for k, v in after.items():
        if k.startswith(name + "{"):
            d = v - before.get(k, 0.0)
            if d:
                out[k[len(name):]] = d
    return out


def hist_stats(before: dict, after: dict, name: str, label: str = "") -> dict:
    """Observations of a histogram during the window: count, sum and the bucket bound the largest fell under."""
    def series(m: dict, suffix: str) -> dict[str, float]:
        return {k: v for k, v in m.items() if k.startswith(f"{name}_{suffix}") and label in k}

    n = sum(series(after, "count").values()) - sum(series(before, "count").values())
    total_ms = sum(series(after, "sum").values()) - sum(series(before, "sum").values())
    top = None
    if n:
        by_le: dict[float, float] = {}
        for k, v in series(after, "bucket").items():
            le = float(re.search(r'le="([^"]+)"', k).group(1))
            by_le[le] = by_le.get(le, 0.0) + v - before.get(k, 0.0)
        top = next((le for le in sorted(by_le) if by_le[le] >= n), None)
    return {"n": int(n), "sum_ms": round(total_ms, 1), "max_le_ms": top}


def hist_quantiles(before: dict, after: dict, name: str, qs=(0.5, 0.9, 0.99)) -> dict:
    """Observations of a histogram during the window: count, mean, and for each quantile the bucket bound
    at or under which that share of them fell (``p99_le_ms``)."""
    n = total(after, f"{name}_count") - total(before, f"{name}_count")
    out: dict = {"n": int(n), "mean_ms": round((total(after, f"{name}_sum") - total(before, f"{name}_sum"))
                                               / n, 3) if n else None}
    by_le: dict[float, float] = {}
    for k, v in after.items():
        if k.startswith(f"{name}_bucket"):
            le = float(re.search(r'le="([^"]+)"', k).group(1))
            by_le[le] = by_le.get(le, 0.0) + v - before.get(k, 0.0)
    for q in qs:
        out[f"p{round(q * 100)}_le_ms"] = next((le for le in sorted(by_le) if n and by_le[le] >= q * n), None)
    return out


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def ws_client(port: int, out: dict, stop) -> None:
    """A dashboard-like websocket client: price and bars of SPY, setups; latency receipt - ts."""
    from websockets.sync.client import connect

    deadline = time.monotonic() + 30
    ws = None
    while ws is None and time.monotonic() < deadline and not stop.is_set():
        try:
            ws = connect(f"ws://127.0.0.1:{port}/ws", open_timeout=3, max_size=2**24)
        except OSError:
            time.sleep(0.3)
    if ws is None:
        return
    with ws:
        ws.send(json.dumps({"op": "subscribe", "channels": ["price:SPY", "microbar:SPY:1s", "setups"]}))
        while not stop.is_set():
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - the gateway went away; the count shows it
                out["errors"] += 1
                return
            now = time.time_ns()
            msg = json.loads(raw)
            if msg.get("type") != "update" or not out["measuring"].is_set():
                continue
            ch = msg.get("channel", "")
            if ch == "price:SPY" and msg.get("ts"):
                out["price"].append((now, (now - msg["ts"]) / 1e6))
            elif ch == "setups" and isinstance(msg.get("data"), dict):
                d = msg["data"]
                if d.get("to_state") != "forming" and d.get("ts"):
                    out["setups"].append((now, (now - d["ts"]) / 1e6))
            elif ch.startswith("microbar:"):
                out["bars"] += 1


def bus_listener(sub: Subscriber, out: dict, stop) -> None:
    while not stop.is_set():
        f = sub.recv(0.1)
        if f is None or not out["measuring"].is_set():
            continue
        now = time.time_ns()
        if f.topic == "tick.SPY":
            # the first event of the frame: its vendor time to the feed's publish, and to this receipt
            first = f.body()[0].ts
            out["feed_publish"].append((now, (f.pub_ns - first) / 1e6))
            out["feed_bus"].append((now, (now - first) / 1e6))
        elif f.topic.startswith("bar.1s."):
            b = f.body()
            if b.closed:
                # event_ns of a closed bar = the event time of the tick whose arrival closed it
                out["bar"].append((now, (now - f.event_ns) / 1e6))
        elif f.topic == "setup.transition":
            tr = f.body()
            if tr.to_state != "forming":  # forming is caused by a closed bar, not a tick
                out["transition"].append((now, (now - tr.ts) / 1e6))


def probe_process(endpoints: list[str], gw_port: int, measuring, stop, results) -> None:
    """The measuring clients, in their own process: sharing the load generator's interpreter (the fake vendor
    encodes ~50k events/s of JSON there) would add its GIL waits to every latency they record."""
    ctx = zmq.Context()
    sub = Subscriber(ctx, endpoints, ["bar.1s.SPY", "setup.transition", "tick.SPY"])
    lat: dict = {"measuring": measuring, "bar": [], "transition": [], "feed_publish": [], "feed_bus": []}
    ws_out: dict = {"measuring": measuring, "price": [], "setups": [], "bars": 0, "errors": 0}
    threads = [threading.Thread(target=bus_listener, args=(sub, lat, stop), daemon=True),
               threading.Thread(target=ws_client, args=(gw_port, ws_out, stop), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sub.close()
    ctx.destroy(linger=0)
    results.put({k: v for k, v in {**lat, **ws_out}.items() if k != "measuring"})


def run(args) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="spx-load-", dir="/tmp"))
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    fake = FakeMassive(api_key="load-key")
    fake.start()
    gw_port = args.gateway_port or _free_port()
    env = {
        "SPX_FEED_SOURCE": "live", "MASSIVE_API_KEY": "load-key", "MASSIVE_WS_URL": fake.ws_url,
        "MASSIVE_REST_URL": fake.rest_url, "SPX_FEED_JOURNAL": "on", "SPX_GATEWAY_PORT": str(gw_port),
        "SPX_RUNTIME_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
        "SPX_DETECTOR_PLUGINS": "benchmarks.lifecycle_plugin", "SPX_DETECTOR_FAMILY_CAP": "1000",
        "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1", "SPX_DETECTOR_CONFIRM_MS": "50",
        # vendor times are the wall clock: outside 09:30-16:00 New York the probe must be allowed to form
        # setups off-session (the regular-session rule, docs/plugins.md), or nothing is measured
        "SPX_DETECTOR_EXTENDED_HOURS": "bench_probe",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    result: dict = {"rate_target": args.rate, "duration_s": args.duration, "run_dir": str(run_dir),
                    "env": args.env}
    ctx = zmq.Context()
    mp = multiprocessing.get_context("spawn")
    stop, measuring, results = mp.Event(), mp.Event(), mp.Queue()
    probe = None
    try:
        supervise.start(rt, env)
        supervise.wait_running(rt, 60)
        fake.wait_subscribed("stocks", "T.SPY", 30)
        fake.wait_subscribed("indices", "V.I:SPX", 30)
        # the feed picks the at-the-money strike from the first I:SPX value and subscribes options
        contracts = prime_options(fake, 30)
        mix = Mix(contracts)
        probe = mp.Process(target=probe_process, daemon=True, args=(
            [bus.pub_endpoint(s, rt) for s in ("feed", "aggregator", "detector")], gw_port, measuring, stop, results))
        probe.start()
        pids = {p["name"]: p["pid"] for p in supervise.processes(rt)}
        rss: dict[str, list[tuple[float, int]]] = {s: [] for s in SERVICES}
        markets = {"stocks": (mix.stocks, MIX[("stocks", "T")] + MIX[("stocks", "Q")]),
                   "indices": (mix.indices, MIX[("indices", "V")]),
                   "options": (mix.options, MIX[("options", "T")] + MIX[("options", "Q")])}
        total_s = args.warmup + args.duration
        print(f"mesh up ({len(contracts)} option contracts subscribed); streaming {args.rate:,} events/s for "
              f"{args.warmup:.0f} s warm-up + {args.duration:.0f} s measured ...", file=sys.stderr)
        handles = {m: fake.stream(m, fn, args.rate * share, total_s + 2) for m, (fn, share) in markets.items()}
        time.sleep(args.warmup)
        before = {s: scrape(ctx, bus, rt, s) for s in SERVICES}
        sent0 = {m: h.sent for m, h in handles.items()}
        cpu0 = {s: cpu_s(pids.get(s, 0)) for s in SERVICES}
        own0 = sum(os.times()[:2])
        probe_cpu0 = cpu_s(probe.pid)
        t0 = time.monotonic()
        t0_ns = time.time_ns()
        measuring.set()
        next_rss = t0
        while time.monotonic() - t0 < args.duration:
            now = time.monotonic()
            if now >= next_rss:
                for s in SERVICES:
                    v = rss_kib(pids.get(s, 0))
                    if v is not None:
                        rss[s].append((round(now - t0, 1), v))
                next_rss += args.rss_every
            time.sleep(min(0.2, max(0.0, next_rss - time.monotonic())))
        sent1 = {m: h.sent for m, h in handles.items()}
        elapsed = time.monotonic() - t0
        cpu1 = {s: cpu_s(pids.get(s, 0)) for s in SERVICES}
        cpu = {s: round((cpu1[s] - cpu0[s]) / elapsed * 100, 1) for s in SERVICES
               if cpu0[s] is not None and cpu1[s] is not None}
        cpu["load.py (fake vendor)"] = round((sum(os.times()[:2]) - own0) / elapsed * 100, 1)
        probe_cpu1 = cpu_s(probe.pid)
        if probe_cpu0 is not None and probe_cpu1 is not None:
            cpu["probe (clients)"] = round((probe_cpu1 - probe_cpu0) / elapsed * 100, 1)
        load_avg = os.getloadavg()[0]
        measuring.clear()
        for h in handles.values():
            h.cancel()
        for h in handles.values():
            h.done.wait(10)
        time.sleep(2.0)  # let the queues drain before the final scrape
        stop.set()
        got = results.get(timeout=15)
        lat, ws_out = got, got
        after = {s: scrape(ctx, bus, rt, s) for s in SERVICES}
        restarts = {p["name"]: p["pid"] for p in supervise.processes(rt) if p["pid"] != pids.get(p["name"])}

        def d(svc: str, name: str, label: str | None = None) -> float:
            return total(after[svc], name, label) - total(before[svc], name, label)

        sent = sum(sent1[m] - sent0[m] for m in handles)
        fed = d("feed", "tick_events_total")
        stages = {
            "fake_sent": sent,
            "feed_published": fed,
            "aggregator_events_in": d("aggregator", "aggregator_events_total"),
            "aggregator_bars_closed": d("aggregator", "aggregator_bars_closed_total"),
            "detector_frames_in": d("detector", "bus_frames_in_total"),
            "detector_transitions": d("detector", "setup_transitions_total"),
            "gateway_frames_in": d("gateway", "bus_frames_in_total"),
            "gateway_price_broadcasts": d("gateway", "ws_price_broadcasts_total"),
            "gateway_ws_messages_out": d("gateway", "ws_messages_out_total"),
            "recorder_rows_written": d("recorder", "recorder_rows_written_total"),
        }
        drops = {"fake_unsent": sum(h.unsent for h in handles.values())}
        for reason, v in by_label(before["feed"], after["feed"], "tick_drop_count").items():
            drops[f"feed_tick_drop_count{reason}"] = v
        for reason, v in by_label(before["feed"], after["feed"], "feed_parse_errors_total").items():
            drops[f"feed_parse_errors{reason}"] = v
        for s in SERVICES:
            for name in ("bus_frames_lost_total", "bus_bad_frames_total"):
                v = d(s, name)
                if v:
                    drops[f"{s}:{name}"] = v
        conflated = d("gateway", "ws_conflated_total")
        slow = {s: d(s, "handler_slow_total") for s in SERVICES if d(s, "handler_slow_total")}
        # what stops a process (every frame queued behind it waits): collector pauses, slow handlers
        stalls = {s: {"gc_gen2": hist_stats(before[s], after[s], "gc_pause_ms", 'generation="2"'),
                      "gc_all": hist_stats(before[s], after[s], "gc_pause_ms"),
                      "handler": hist_stats(before[s], after[s], "handler_latency_ms")} for s in SERVICES}
        rss_doc = {}
        for s, samples in rss.items():
            if not samples:
                continue
            vals = [v for _, v in samples]
            half = vals[len(vals) // 2:]
            rss_doc[s] = {"first_mib": round(vals[0] / 1024, 1), "peak_mib": round(max(vals) / 1024, 1),
                          "last_mib": round(vals[-1] / 1024, 1),
                          "second_half_growth_mib": round((half[-1] - min(half)) / 1024, 1), "samples": len(vals),
                          "series_mib": [[t, round(v / 1024, 1)] for t, v in samples[::max(1, len(samples) // 60)]]}
        result.update({
            "measured_s": round(elapsed, 1),
            "rate_achieved": round(sent / elapsed),
            "feed_rate": round(fed / elapsed),
            "fake_max_lag_ms": round(max(h.behind_ms for h in handles.values()), 1),
            "option_contracts": len(contracts),
            "stages": {k: int(v) for k, v in stages.items()},
            "stage_rates_per_s": {k: round(v / elapsed) for k, v in stages.items()},
            "drops": {k: int(v) for k, v in drops.items()},
            "drops_total": int(sum(drops.values())),
            "gateway_conflated": int(conflated),
            "handler_slow": {k: int(v) for k, v in slow.items()},
            "stalls": stalls,
            "latency_ms": {
                "tick_to_feed_publish": summary(lat["feed_publish"], t0_ns),
                "tick_to_feed_on_bus": summary(lat["feed_bus"], t0_ns),
                "tick_to_bar": summary(lat["bar"], t0_ns),
                "tick_to_transition": summary(lat["transition"], t0_ns),
                "tick_to_ws_price": summary(ws_out["price"], t0_ns),
                "tick_to_ws_setup": summary(ws_out["setups"], t0_ns),
            },
            # event-time alignment (docs/protocol.md): how long the detector held ticks and bars for the
            # watermarks of the feed and the aggregator, and what it counted
            "detector_alignment": {
                **hist_quantiles(before["detector"], after["detector"], "align_wait_ms"),
                "late": int(d("detector", "align_late_total")), "forced": int(d("detector", "align_forced_total")),
                "held_at_end": int(total(after["detector"], "align_held_items"))},
            "detector_latency_histogram": {
                "count": int(d("detector", "setup_transition_latency_ms_count")),
                "mean_ms": round(d("detector", "setup_transition_latency_ms_sum")
                                 / max(1.0, d("detector", "setup_transition_latency_ms_count")), 3),
            },
            "ws_client_errors": ws_out["errors"],
            "probe": "bus listener and websocket client in their own process",
            "rss": rss_doc,
            "cpu_pct_of_one_core": cpu,
            "load_average_1m": round(load_avg, 2),
            "restarted_during_run": sorted(restarts),
        })
        return result
    finally:
        stop.set()
        if probe is not None:
            probe.join(10)
            if probe.is_alive():
                probe.kill()
        ctx.destroy(linger=0)
        supervise.stop(rt, 30)
        fake.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(r: dict) -> None:
    print(f"\nload: target {r['rate_target']:,} events/s, measured {r['measured_s']} s: fake sent "
          f"{r['rate_achieved']:,}/s, feed published {r['feed_rate']:,}/s, fake max lag {r['fake_max_lag_ms']} ms")
    print(f"\n{'stage':<28} {'count':>12} {'per s':>10}")
    for k, v in r["stages"].items():
        print(f"{k:<28} {v:>12,} {r['stage_rates_per_s'][k]:>10,}")
    print(f"\ndrops (total {r['drops_total']:,}; gateway conflated {r['gateway_conflated']:,} "
          "price/bar updates for slow clients, by design):")
    for k, v in r["drops"].items():
        print(f"  {k:<50} {v:>10,}")
    if r["handler_slow"]:
        print(f"  handlers over budget: {r['handler_slow']}")
    print(f"\n{'latency (ms)':<22} {'n':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for k, v in r["latency_ms"].items():
        cells = [f"{x:>8}" if x is not None else f"{'-':>8}" for x in (v["p50"], v["p90"], v["p99"], v["max"])]
        print(f"{k:<22} {v['n']:>7} {' '.join(cells)}   worst (s into run, ms): {v['worst']}")
    al = r.get("detector_alignment")
    if al and al["n"]:
        print(f"\ndetector alignment: {al['n']:,} items held, mean {al['mean_ms']} ms, p50 <= {al['p50_le_ms']} ms, "
              f"p90 <= {al['p90_le_ms']} ms, p99 <= {al['p99_le_ms']} ms (bucket bounds); late {al['late']}, "
              f"forced {al['forced']}, held at the end {al['held_at_end']}")
    print(f"\n{'stalls':<12} {'gc n':>7} {'gc ms':>8} {'gc max<=':>9} {'gen2 n':>7} {'gen2 max<=':>10} "
          f"{'handler n':>10} {'handler max<=':>14}")
    for s, v in r["stalls"].items():
        g, g2, h = v["gc_all"], v["gc_gen2"], v["handler"]
        print(f"{s:<12} {g['n']:>7} {g['sum_ms']:>8} {str(g['max_le_ms']):>9} {g2['n']:>7} {str(g2['max_le_ms']):>10} "
              f"{h['n']:>10} {str(h['max_le_ms']):>14}")
    print(f"\n{'RSS (MiB)':<12} {'first':>7} {'peak':>7} {'last':>7} {'2nd-half growth':>16}")
    for s, v in r["rss"].items():
        print(f"{s:<12} {v['first_mib']:>7} {v['peak_mib']:>7} {v['last_mib']:>7} {v['second_half_growth_mib']:>16}")
    print(f"\nCPU % of one core over the window (machine load average {r['load_average_1m']}, 2 cores):")
    print("  " + ", ".join(f"{k} {v}" for k, v in r["cpu_pct_of_one_core"].items()))
    if r["restarted_during_run"]:
        print(f"\nRESTARTED during the run: {r['restarted_during_run']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second (default 10000)")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds streamed before measuring (default 5)")
    ap.add_argument("--rss-every", type=float, default=1.0, help="RSS sample period in seconds (default 1)")
    ap.add_argument("--gateway-port", type=int, default=0, help="gateway port (default: a free one)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, journal, database)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra mesh configuration, e.g. SPX_AGGREGATOR_CACHE_WINDOW_S=120 (repeatable)")
    ap.add_argument("--series", action="store_true", help="keep every latency sample in the JSON (time, ms)")
    args = ap.parse_args()
    global KEEP_SERIES
    KEEP_SERIES = args.series
    r = run(args)
    print_table(r)
    doc = json.dumps(r, indent=2)
    print("\n" + doc)
    if args.json:
        args.json.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
