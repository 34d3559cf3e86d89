"""Chaos on the real mesh in live mode: supervisord from supervisord.conf, the feed on the fake Massive
WebSocket streaming a realistic mix (``FakeMassive.stream``, 3,000 events/s), a probe detector plugin
opening setups on every closed bar, the tick journal on, Prometheus ``/metrics`` over HTTP on every
process.

First the observability contract: every process serves its metrics over HTTP with the names and
types the SLOs are measured with, and ``spx status --json`` shows health, rates and last-event ages
from the heartbeats. Then, while the vendor keeps streaming, SIGKILL in turn:

* the aggregator: supervisord restarts it and it warms up from the tick journal (bars from before
  the kill are served again by ``bars_since`` right after the restart);
* the detector, with active setups: they are restored from the store and its outbox (counted) and no
  transition is published twice, even when the recorder had not yet written a setup's newest state;
* the gateway: a new websocket client is served prices again;
* the feed: it reconnects to the vendor and ticks flow again (live mode: no replayed day);
* the recorder: it catches up from the publishers' replay rings.

Accounting over the whole run: every setup transition seen on the bus is in the store exactly once,
and none was published twice. The SIGKILL-each-in-turn accounting on the replayed day, with orders
and fills and the whole group killed at once, is tests/mesh/test_mesh_sigkill_accounting.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import zmq

from services.cli import supervise
from spx_common.bus import Subscriber, call_once
from spx_common.config import PROJECT_DIR, SERVICES, BusConfig, RuntimeConfig
from tests.conftest import free_port
from spx_testing.fakes.massive import MIX, FakeMassive, MarketMix, prime_options

pytestmark = pytest.mark.mesh

RATE = 3_000
#: metric -> type, per process: what docs/reliability.md's SLOs are measured with
REQUIRED = {
    "feed": {"tick_ingest_rate": "gauge", "tick_drop_count": "counter"},
    "gateway": {"ws_price_broadcast_rate": "gauge"},
    "detector": {"setup_transition_latency_ms": "histogram"},
    "coach": {"coach_tactical_alert_rate": "gauge"},
}
#: every process (BusService) has these
COMMON = {"bus_frames_in_total": "counter", "bus_frames_lost_total": "counter", "bus_bad_frames_total": "counter",
          "handler_latency_ms": "histogram", "rpc_requests_total": "counter"}


def _scrape(port: int) -> tuple[dict[str, str], dict[str, float]]:
    """GET /metrics -> ({name: type}, {sample: value})."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return types, samples


def test_live_mesh_under_load_survives_sigkill_with_warm_up_restore_and_nothing_lost(run_dir):
    runtime, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    fake = FakeMassive(api_key="chaos-key")
    fake.start()
    gw_port = free_port()
    metrics_ports = {s: free_port() for s in SERVICES}
    env = {"SPX_FEED_SOURCE": "live", "MASSIVE_API_KEY": "chaos-key", "MASSIVE_WS_URL": fake.ws_url,
           "MASSIVE_REST_URL": fake.rest_url, "SPX_FEED_JOURNAL": "on", "SPX_FEED_BACKOFF_INITIAL_S": "0.1",
           "SPX_GATEWAY_PORT": str(gw_port), "PYTHONPATH": str(PROJECT_DIR),
           "SPX_DETECTOR_PLUGINS": "benchmarks.lifecycle_plugin", "SPX_DETECTOR_FAMILY_CAP": "1000",
           "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1", "SPX_DETECTOR_CONFIRM_MS": "50",
           # vendor times are the wall clock: the probe forms setups whatever the time of day
           "SPX_DETECTOR_EXTENDED_HOURS": "bench_probe",
           **{f"SPX_METRICS_PORT_{s.upper()}": str(p) for s, p in metrics_ports.items()}}
    ctx = zmq.Context()
    stop = threading.Event()
    lock = threading.Lock()
    seen: dict = {"transitions": [], "bars": [], "ticks": 0}
    sub = Subscriber(ctx, [bus.pub_endpoint(s, runtime) for s in ("detector", "aggregator", "feed")],
                     ["setup.transition", "bar.1s.SPY", "tick.SPY"])

    def listen() -> None:
        while not stop.is_set():
            f = sub.recv(0.1)
            if f is None:
                continue
            b = f.body()
            with lock:
                if f.topic == "setup.transition":
                    seen["transitions"].append((b.setup_id, b.to_state, b.ts))
                elif f.topic.startswith("bar.") and b.closed:
                    seen["bars"].append(b.start_ns)
                elif f.topic == "tick.SPY":
                    seen["ticks"] += len(b)

    def count(key: str) -> int:
        with lock:
            return len(seen[key]) if key != "ticks" else seen["ticks"]

    def wait_for(cond, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(0.2)
        raise AssertionError(f"not within {timeout_s}s: {what}; logs in {runtime.path('logs')}")

    def call(service: str, method: str, params: dict | None = None):
        return call_once(ctx, bus.rep_endpoint(service, runtime), method, params, timeout_s=1.0)

    def pid_of(name: str) -> int:
        return next(p["pid"] for p in supervise.processes(runtime) if p["name"] == name)

    def kill_and_wait(name: str) -> None:
        old = pid_of(name)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: pid_of(name) not in (0, old) and call(name, "ping"), 30, f"{name} restarted and answering")
        bars = count("bars")
        wait_for(lambda: count("bars") > bars, 20, f"bars flowing after {name} was killed")

    listener = threading.Thread(target=listen, daemon=True)
    handles = []
    try:
        supervise.start(runtime, env)
        supervise.wait_running(runtime, 60)
        fake.wait_subscribed("stocks", "T.SPY", 30)
        mix = MarketMix(prime_options(fake, 30))
        listener.start()
        for market, share in (("stocks", MIX[("stocks", "T")] + MIX[("stocks", "Q")]),
                              ("indices", MIX[("indices", "V")]),
                              ("options", MIX[("options", "T")] + MIX[("options", "Q")])):
            handles.append(fake.stream(market, getattr(mix, market), RATE * share, 600))
        wait_for(lambda: count("bars") >= 3 and count("transitions") >= 4, 30, "bars and setup transitions")

        # observability: metrics names and types over HTTP on every process
        for service, port in metrics_ports.items():
            types, _ = wait_for(lambda port=port: _scrape(port), 10, f"{service} /metrics")
            want = {**COMMON, **REQUIRED.get(service, {})}
            assert {k: types.get(k) for k in want} == want, f"{service}: {types}"
        _, feed_samples = _scrape(metrics_ports["feed"])
        assert feed_samples["tick_ingest_rate"] > 0
        # spx status: health, rates and last-event ages from the heartbeats
        out = subprocess.run([sys.executable, "-m", "services.cli.main", "status", "--json", "--listen", "2.5"],
                             env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir)}, capture_output=True,
                             text=True, timeout=30)
        doc = json.loads(out.stdout)
        rows = {r["service"]: r for r in doc["services"]}
        for service in SERVICES:
            r = rows[service]
            assert r["state"] == "RUNNING" and r["health"] == "running", r
            assert r["heartbeat_age_s"] is not None and r["heartbeat_age_s"] < 5, r
            assert any(k.endswith(":rate") for k in r["stats"]), r
        for service in ("aggregator", "detector", "gateway", "recorder"):
            assert rows[service]["stats"]["last_input_age_s"] < 5, rows[service]
        assert rows["aggregator"]["stats"]["bus_frames_in_total:rate"] > 0
        assert 0 <= rows["aggregator"]["event_lag_s"] < 5, rows["aggregator"]  # live: event time ~ wall time
        table = subprocess.run([sys.executable, "-m", "services.cli.main", "status", "--listen", "1.5"],
                               env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir)}, capture_output=True,
                               text=True, timeout=30).stdout
        assert "event lag" in table and "input age" in table and "feed: mode=tick" in table, table
        assert doc["feed"]["mode"] == "tick" and doc["feed"]["connected"] and doc["feed"]["events_per_s"] > 0
        assert doc["feed"]["last_event_age_ms"] is not None and doc["feed"]["last_event_age_ms"] < 5000

        # aggregator: restarted, warmed up from the tick journal
        with lock:
            before_kill = max(seen["bars"])
        kill_and_wait("aggregator")
        warm = call("aggregator", "bars_since", {"sym": "SPY", "interval": "1s", "since_ns": 0, "limit": 100_000})
        assert warm and any(b["start_ns"] <= before_kill for b in warm["bars"]), \
            "the restarted aggregator did not serve bars from before the kill (journal warm-up)"

        # detector: active setups restored from the store
        active = wait_for(lambda: call("detector", "active"), 20, "active setups before the detector kill")
        kill_and_wait("detector")
        restored = wait_for(lambda: _scrape(metrics_ports["detector"])[1].get("detector_setups_restored_total"),
                            10, "restored setups counted")
        assert restored >= 1, f"{len(active)} setups were active at the kill, none restored"

        # gateway: a new websocket client is served again
        kill_and_wait("gateway")
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{gw_port}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"op": "subscribe", "channels": ["price:SPY"]}))
            deadline = time.monotonic() + 15
            got = None
            while time.monotonic() < deadline and got is None:
                try:
                    msg = json.loads(ws.recv(timeout=1))
                except TimeoutError:
                    continue
                if msg.get("channel") == "price:SPY" and msg.get("type") == "update":
                    got = msg
            assert got is not None, "no price update from the restarted gateway"

        # feed: reconnects to the vendor; ticks flow again
        connects = fake.connects["stocks"]
        kill_and_wait("feed")
        wait_for(lambda: fake.connects["stocks"] > connects, 20, "the new feed connected to the vendor")
        ticks = count("ticks")
        wait_for(lambda: count("ticks") > ticks, 20, "ticks after the feed restart")

        # recorder last: it catches up what was published while it was down
        kill_and_wait("recorder")
        wait_for(lambda: count("transitions") > 0, 1, "transitions")
        for h in handles:
            h.cancel()
        time.sleep(2.0)  # the last transitions reach the bus and the recorder's queue
        with lock:
            published = list(seen["transitions"])
        keys = [(sid, st) for sid, st, _ in published]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        # the restarted detector restores from the store *and its outbox*: even when the recorder had
        # not written a setup's newest transition yet, nothing is published again (issue 8)
        assert not dup, f"published twice: {dup[:5]}"
        db = sqlite3.connect(runtime.path("spx.sqlite3"))
        try:
            def missing():
                stored = {(r[0], r[1], r[2]) for r in db.execute("select setup_id, to_state, ts from setup_transitions")}
                return set(published) - stored

            deadline = time.monotonic() + 20
            while missing() and time.monotonic() < deadline:
                time.sleep(0.5)
            lost = missing()
            assert not lost, f"{len(lost)} of {len(published)} transitions not stored: {sorted(lost)[:5]}"
            twice = db.execute("select setup_id, to_state, count(*) from setup_transitions group by 1, 2 "
                               "having count(*) > 1").fetchall()
            assert twice == [], f"stored twice: {twice[:5]}"
        finally:
            db.close()
        assert len(published) >= 20, f"too few transitions to account for: {len(published)}"
    finally:
        for h in handles:
            h.cancel()
        stop.set()
        if listener.is_alive():
            listener.join(5)
        sub.close()
        ctx.destroy(linger=0)
        supervise.stop(runtime, 30)
        fake.stop()
