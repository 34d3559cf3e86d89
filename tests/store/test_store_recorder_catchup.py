"""The recorder catches up from the publishers' replay rings: transitions published while it was
down are recorded once it starts, exactly once (real detector and recorder processes, real
ZeroMQ, SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import MicroBar, Trade
from spx_common.store import open_store
from spx_common.store import tables as t
from spx_testing import Processes
from tests.conftest import eventually
from tests.detector.rig import restore_env

S = 1_000_000_000
T0 = 1_795_185_000 * S


def test_recorder_started_late_records_what_it_missed_exactly_once(db_url, run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = restore_env(run_dir, db_url)
    ctx = zmq.Context()
    agg = Publisher(ctx, bus.pub_endpoint("aggregator", rt, bind=True), "aggregator", linger_ms=0)
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    watch = Subscriber(ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition"], heartbeats=True)
    det = RpcClient(ctx, bus.rep_endpoint("detector", rt), timeout_s=1.0, retries=0)
    rec = RpcClient(ctx, bus.rep_endpoint("recorder", rt), timeout_s=1.0, retries=0)
    open_store(db_url).close()
    store = open_store(db_url, migrate=False)
    seen = []
    ps = Processes()
    try:
        with ps:
            detector = ps.service("detector", env=env)
            def det_up():
                try:
                    agg.heartbeat(T0)
                    feed.heartbeat(T0)
                    return {"aggregator", "feed"} <= set(det.call("status")["peers"])
                except RpcError:
                    return False
            detector.wait_ready(det_up, 20, what="detector up")
            eventually(lambda: watch.recv(0.1) is not None, 10, what="our SUB hears the detector")
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9,
                                                     low=100.4, close=100.8, volume=10, closed=True), T0)
            for i, p in enumerate([100.8, 101.2, 101.3, 101.4]):
                feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=p, size=1, ts=T0 + S + i)], T0 + S + i)

            def transitions():
                while (f := watch.recv(0.05)) is not None:
                    if f.topic == "setup.transition":
                        seen.append(f.body().to_state)
                return seen
            eventually(lambda: transitions() == ["forming", "ready", "triggered"], 10, what="three transitions")
            # only now does the recorder start: everything above was published while it was down
            ps.service("recorder", env=env)

            def rows():
                with store.engine.connect() as c:
                    return sorted(r.to_state for r in c.execute(sa.select(t.setup_transitions.c.to_state)))
            eventually(lambda: rows() == ["forming", "ready", "triggered"], 20, what="the recorder caught up")
            import re
            fetched = re.search(r'recorder_replayed_frames_total\{peer="detector"\} ([0-9.]+)', str(rec.call("metrics")))
            assert fetched and float(fetched.group(1)) >= 3  # fetched at least once (idempotent if more)
            inst = store.setup_instances()
            assert len(inst) == 1 and inst[0]["state"] == "triggered" and inst[0]["entry_price"] == 101.4
    finally:
        store.close()
        for s in (watch, det, rec, agg, feed):
            s.close()
        ctx.destroy(linger=0)
