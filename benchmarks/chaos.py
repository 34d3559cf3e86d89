"""Chaos under load: SIGKILL every process of the real mesh in turn, then the whole group, and account.

    python benchmarks/chaos.py                       # 10,000 events/s, one round over all 8 processes
    python benchmarks/chaos.py --rate 20000 --rounds 2 --settle 8 --json /tmp/chaos.json

The mesh runs from ``supervisord.conf`` in a private run directory, in live mode on the fake Massive
WebSocket streaming a realistic mix at ``--rate`` (``benchmarks/load.py``'s mix), the tick journal on,
a probe detector plugin opening setups on every closed bar (so transitions, and through the selector
and the paper broker orders and fills, flow all the time). For each victim (recorder, aggregator,
feed, detector, selector, broker, coach, gateway, then all of them at once) the run records:

* restart time: SIGKILL -> supervisord started a new process -> it answers ``ping``;
* recovery time: SIGKILL -> the next closed SPY 1s bar on the bus (data flowing end to end again);
* for the aggregator, whether the new process serves bars from before the kill (journal warm-up);
  for the detector, how many active setups were restored from the store.

At the end, with the stream stopped, the accounting over the whole run: every setup transition,
order and fill seen on the bus must be in the store exactly once (lost = on the bus, not stored;
duplicated = published or stored twice). Vendor events sent while the feed was down are not
backfilled here (the fake's REST history is empty in this run) and are reported as ``fake_unsent``.
Prints a table and JSON. Every wait is bounded; the mesh is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from benchmarks.load import SERVICES, _free_port, scrape, total  # noqa: E402
from services.cli import supervise  # noqa: E402
from spx_common.bus import Subscriber, call_once  # noqa: E402
from spx_common.config import BusConfig, RuntimeConfig  # noqa: E402
from spx_common.store.repo import fill_key  # noqa: E402
from spx_testing.fakes.massive import MIX, FakeMassive, MarketMix, chain_rows, prime_options  # noqa: E402

VICTIMS = ["recorder", "aggregator", "feed", "detector", "selector", "broker", "coach", "gateway"]


class Bus:
    """Everything the accounting needs, received in its own thread."""

    def __init__(self, ctx: zmq.Context, bus: BusConfig, rt: RuntimeConfig) -> None:
        self.sub = Subscriber(ctx, [bus.pub_endpoint(s, rt) for s in ("aggregator", "detector", "broker")],
                              ["bar.1s.SPY", "setup.transition", "order.", "fill."])
        self.lock = threading.Lock()
        self.transitions: list[tuple] = []
        self.orders: set[str] = set()
        self.order_frames = 0
        self.fills: list[str] = []
        self.bar_times: list[float] = []  # monotonic receipt time of closed SPY bars
        self.bar_starts: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            f = self.sub.recv(0.1)
            if f is None:
                continue
            b = f.body()
            with self.lock:
                if f.topic.startswith("bar.") and b.closed:
                    self.bar_times.append(time.monotonic())
                    self.bar_starts.append(b.start_ns)
                elif f.topic == "setup.transition":
                    self.transitions.append((b.setup_id, b.to_state, b.ts))
                elif f.topic.startswith("order."):
                    self.orders.add(b.order_id)
                    self.order_frames += 1
                elif f.topic.startswith("fill."):
                    self.fills.append(fill_key(b))

    def bar_after(self, t: float) -> float | None:
        with self.lock:
            return next((x for x in self.bar_times if x > t), None)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sub.close()


def run(args) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="spx-chaos-", dir="/tmp"))
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    fake = FakeMassive(api_key="chaos-key")
    fake.start()
    env = {"SPX_FEED_SOURCE": "live", "MASSIVE_API_KEY": "chaos-key", "MASSIVE_WS_URL": fake.ws_url,
           "MASSIVE_REST_URL": fake.rest_url, "SPX_FEED_JOURNAL": "on", "SPX_FEED_BACKOFF_INITIAL_S": "0.1",
           "SPX_GATEWAY_PORT": str(args.gateway_port or _free_port()), "SPX_RUNTIME_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           "SPX_DETECTOR_PLUGINS": "benchmarks.lifecycle_plugin", "SPX_DETECTOR_FAMILY_CAP": "1000",
           "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1", "SPX_DETECTOR_CONFIRM_MS": "50",
           "SPX_DETECTOR_EXTENDED_HOURS": "bench_probe"}  # wall-clock vendor times: any time of day
    ctx = zmq.Context()
    listener = None
    handles = []
    result: dict = {"rate_target": args.rate, "rounds": args.rounds, "run_dir": str(run_dir), "kills": []}

    def call(service: str, method: str, params: dict | None = None, timeout_s: float = 1.0):
        return call_once(ctx, bus.rep_endpoint(service, rt), method, params, timeout_s=timeout_s)

    def pids() -> dict[str, int]:
        return {p["name"]: p["pid"] for p in supervise.processes(rt)}

    def wait(cond, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(0.05)
        return None

    try:
        supervise.start(rt, env)
        supervise.wait_running(rt, 60)
        fake.wait_subscribed("stocks", "T.SPY", 30)
        contracts = prime_options(fake, 30)
        fake.options_snapshot["I:SPX"] = chain_rows(contracts)  # the chain poller feeds the selector
        mix = MarketMix(contracts)
        listener = Bus(ctx, bus, rt)
        for market, share in (("stocks", MIX[("stocks", "T")] + MIX[("stocks", "Q")]),
                              ("indices", MIX[("indices", "V")]),
                              ("options", MIX[("options", "T")] + MIX[("options", "Q")])):
            handles.append(fake.stream(market, getattr(mix, market), args.rate * share, 3600))
        if not wait(lambda: len(listener.bar_times) >= 3 and listener.transitions, 30):
            raise RuntimeError("no bars/transitions before the chaos")
        time.sleep(args.settle)
        before_metrics = {s: scrape(ctx, bus, rt, s) for s in SERVICES}
        plan = [[v] for _ in range(args.rounds) for v in VICTIMS] + [list(VICTIMS)]
        for victims in plan:
            old = pids()
            extra: dict = {}
            if victims == ["detector"]:
                extra["active_before"] = len(call("detector", "active") or [])
            if victims == ["aggregator"]:
                with listener.lock:
                    extra["last_bar_start_before"] = max(listener.bar_starts)
            t_kill = time.monotonic()
            extra["wall_ns"] = time.time_ns()
            for v in victims:
                os.kill(old[v], signal.SIGKILL)
            answered: dict[str, float] = {}  # victim -> when its new process first answered

            def all_back(victims: list[str] = victims, answered: dict[str, float] = answered,
                         old: dict[str, int] = old) -> bool:
                # every victim probed on each pass with a short timeout: a 1 s ping to a process not yet
                # listening made the figure a whole second coarse
                now_pids = pids()
                for v in victims:
                    if v not in answered and now_pids.get(v) not in (0, old[v]) and call(v, "ping", timeout_s=0.1):
                        answered[v] = time.monotonic()
                return len(answered) == len(victims)

            back = wait(all_back, 60)
            t_back = max(answered.values()) if back else time.monotonic()
            since = max(t_back, t_kill)
            t_bar = wait(lambda since=since: listener.bar_after(since), 60)
            row = {"killed": "+".join(victims) if len(victims) < len(VICTIMS) else "whole group",
                   "restart_s": round(t_back - t_kill, 2) if back else None,
                   "recovered_s": round(t_bar - t_kill, 2) if t_bar else None, "at_ns": extra["wall_ns"]}
            if victims == ["aggregator"] and back:
                warm = call("aggregator", "bars_since", {"sym": "SPY", "interval": "1s", "since_ns": 0,
                                                         "limit": 100_000}) or {"bars": []}
                row["journal_warm_up"] = any(b["start_ns"] <= extra["last_bar_start_before"] for b in warm["bars"])
            if victims == ["detector"] and back:
                time.sleep(1.0)
                m = scrape(ctx, bus, rt, "detector")
                row["active_before"] = extra["active_before"]
                row["restored"] = int(total(m, "detector_setups_restored_total"))
            result["kills"].append(row)
            print(f"  {row}", file=sys.stderr)
            time.sleep(args.settle)
        for h in handles:
            h.cancel()
        time.sleep(3.0)
        after_metrics = {s: scrape(ctx, bus, rt, s) for s in SERVICES}
        with listener.lock:
            tr, orders, fills = list(listener.transitions), set(listener.orders), list(listener.fills)
        keys = [(s, st) for s, st, _ in tr]
        db = sqlite3.connect(rt.path("spx.sqlite3"))
        try:
            deadline = time.monotonic() + 30
            while True:
                stored_tr = {(r[0], r[1], r[2]) for r in db.execute("select setup_id, to_state, ts from setup_transitions")}
                stored_orders = {r[0] for r in db.execute("select order_id from orders")}
                stored_fills = [r[0] for r in db.execute("select fill_key from fills")]
                lost = (set(tr) - stored_tr, orders - stored_orders, set(fills) - set(stored_fills))
                if not any(lost) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            stored_twice = db.execute("select count(*) from (select setup_id, to_state from setup_transitions "
                                      "group by 1, 2 having count(*) > 1)").fetchone()[0]
        finally:
            db.close()
        result["accounting"] = {
            "transitions_on_bus": len(tr), "orders_on_bus": len(orders), "fills_on_bus": len(fills),
            "transitions_lost": len(lost[0]), "orders_lost": len(lost[1]), "fills_lost": len(lost[2]),
            "transitions_published_twice": len(keys) - len(set(keys)),
            "fills_published_twice": len(fills) - len(set(fills)),
            "transitions_stored_twice": stored_twice,
            "fills_stored_twice": len(stored_fills) - len(set(stored_fills)),
            "lost_transitions": sorted(lost[0])[:20],
            "transitions_published_twice_detail": sorted(
                [x for x in tr if keys.count((x[0], x[1])) > 1])[:20],
        }
        # records published in the last moments before the whole group died with the recorder: the
        # recorder had not written its batch yet (flush_s) and the publisher's replay ring died too
        group_at = result["kills"][-1]["at_ns"]
        in_window = [x for x in lost[0] if x[2] >= group_at - 2_000_000_000]
        result["accounting"]["transitions_lost_in_group_kill_window"] = len(in_window)
        # a restored setup whose newest transition was among those lost goes through that state again
        lost_keys = {(x[0], x[1]) for x in in_window}
        result["accounting"]["republished_after_group_kill_loss"] = sum(
            1 for k in set(keys) if keys.count(k) > 1 and k in lost_keys)
        result["fake_sent"] = sum(h.sent for h in handles)
        result["fake_unsent"] = sum(h.unsent for h in handles)
        drops = {}
        for s in SERVICES:
            for name in ("tick_drop_count", "bus_frames_lost_total", "bus_bad_frames_total"):
                v = total(after_metrics[s], name)  # restarted processes start from 0: totals, not deltas
                if v:
                    drops[f"{s}:{name}"] = int(v)
        result["drops_after_last_restart"] = drops
        result["restarts_seen_by_recorder"] = int(total(after_metrics["recorder"], "bus_peer_restarts_total"))
        del before_metrics
        return result
    finally:
        for h in handles:
            h.cancel()
        if listener is not None:
            listener.close()
        ctx.destroy(linger=0)
        supervise.stop(rt, 30)
        fake.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def print_table(r: dict) -> None:
    print(f"\nchaos at {r['rate_target']:,} events/s, {r['rounds']} round(s):")
    print(f"{'killed':<14} {'restart s':>10} {'recovered s':>12}  notes")
    for k in r["kills"]:
        notes = []
        if "journal_warm_up" in k:
            notes.append(f"journal warm-up {'yes' if k['journal_warm_up'] else 'NO'}")
        if "restored" in k:
            notes.append(f"{k['restored']} restored ({k['active_before']} active before)")
        rs = "-" if k["restart_s"] is None else k["restart_s"]
        rc = "-" if k["recovered_s"] is None else k["recovered_s"]
        print(f"{k['killed']:<14} {rs:>10} {rc:>12}  {', '.join(notes)}")
    a = r["accounting"]
    print(f"\non the bus: {a['transitions_on_bus']:,} transitions, {a['orders_on_bus']:,} orders, "
          f"{a['fills_on_bus']:,} fills")
    print(f"lost: transitions {a['transitions_lost']} ({a['transitions_lost_in_group_kill_window']} of them published "
          f"within 2 s before the whole group was killed), orders {a['orders_lost']}, fills {a['fills_lost']}; "
          f"duplicated: published {a['transitions_published_twice'] + a['fills_published_twice']} "
          f"({a['republished_after_group_kill_loss']} of them a restored setup re-entering a state lost in that "
          f"window), stored {a['transitions_stored_twice'] + a['fills_stored_twice']}")
    print(f"vendor events sent {r['fake_sent']:,}, not sent while the feed was down {r['fake_unsent']:,}")
    if r["drops_after_last_restart"]:
        print(f"drops counted by the current processes: {r['drops_after_last_restart']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="vendor events per second (default 10000)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over every process (default 1)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between kills (default 5)")
    ap.add_argument("--gateway-port", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    r = run(args)
    print_table(r)
    doc = json.dumps(r, indent=2)
    print("\n" + doc)
    if args.json:
        args.json.write_text(doc)
    a = r["accounting"]
    bad = (sum(v for k, v in a.items() if k.endswith(("_lost", "_twice"))) - a["transitions_lost_in_group_kill_window"]
           - a["republished_after_group_kill_loss"])
    return 1 if bad or any(k["recovered_s"] is None for k in r["kills"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
