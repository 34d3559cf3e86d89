"""A detector host SIGKILLed mid-setup comes back with its active setups restored from the store
(SQLite and PostgreSQL): the setup continues to its next states, and no transition is published or
stored twice. Real detector and recorder processes, real ZeroMQ, real databases."""

from __future__ import annotations

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import ExitAdvice, MicroBar, Trade
from spx_common.store import open_store
from spx_testing import Processes
from tests.conftest import eventually
from tests.detector.rig import restore_env

S = 1_000_000_000
T0 = 1_795_185_000 * S


def test_detector_restart_restores_active_setups_without_duplicates(db_url, run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = restore_env(run_dir, db_url)
    ctx = zmq.Context()
    agg = Publisher(ctx, bus.pub_endpoint("aggregator", rt, bind=True), "aggregator", linger_ms=0)
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    selector = Publisher(ctx, bus.pub_endpoint("selector", rt, bind=True), "selector", linger_ms=0)
    watch = Subscriber(ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition"], heartbeats=True)
    rpc = RpcClient(ctx, bus.rep_endpoint("detector", rt), timeout_s=1.0, retries=0)
    rec_rpc = RpcClient(ctx, bus.rep_endpoint("recorder", rt), timeout_s=1.0, retries=0)
    open_store(db_url).close()  # migrated before either process touches it
    ps = Processes()
    ps.service("recorder", env=env)
    ps.service("detector", env=env)
    seen: list = []
    sessions: set = set()

    def drain():
        while (f := watch.recv(0.05)) is not None:
            sessions.add(f.session)
            if f.topic == "setup.transition":
                seen.append(f.body())

    def up(client, name):
        def ok():
            try:
                st = client.call("status")
            except RpcError:
                return False
            if name == "detector":
                agg.heartbeat(T0)
                feed.heartbeat(T0)
                return {"aggregator", "feed"} <= set(st["peers"])
            selector.heartbeat(T0)
            return {"detector", "selector"} <= set(st["peers"])
        ps[name].wait_ready(ok, 45, what=f"{name} up and subscribed")  # detector: plugin workers first

    def ticks(prices, t):
        for i, p in enumerate(prices):
            feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=p, size=1, ts=t + i * 1000)], t + i * 1000)

    def stored_states(store, sid):
        import sqlalchemy as sa
        from spx_common.store import tables as t
        with store.engine.connect() as c:
            return sorted(r.to_state for r in c.execute(
                sa.select(t.setup_transitions.c.to_state).where(t.setup_transitions.c.setup_id == sid)))

    store = open_store(db_url, migrate=False)
    try:
        with ps:
            up(rpc, "detector")
            up(rec_rpc, "recorder")
            eventually(lambda: (drain(), sessions)[1], 10, what="our SUB hears the detector")
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9,
                                                     low=100.4, close=100.8, volume=10, buy_volume=8, sell_volume=2,
                                                     bid_ask_imbalance=0.3, closed=True), T0)
            ticks([100.8], T0 + S)  # in the entry zone: ready
            eventually(lambda: (drain(), [t.to_state for t in seen])[1] == ["forming", "ready"], 10,
                       what="forming and ready published")
            sid = seen[0].setup_id
            eventually(lambda: stored_states(store, sid) == ["forming", "ready"], 10, what="recorder stored both")

            ps["detector"].kill()
            ps.service("detector", env=env)
            up(rpc, "detector")
            active = rpc.call("active")
            assert [(a["setup_id"], a["state"]) for a in active] == [(sid, "ready")]
            old = set(sessions)
            eventually(lambda: (drain(), sessions - old)[1], 10, what="our SUB hears the restarted detector")
            # the same bar again: the plugin fires again, the lifecycle refuses the duplicate
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0 + 2 * S, open=100.8,
                                                     high=100.9, low=100.7, close=100.85, volume=10, closed=True),
                        T0 + 2 * S)
            ticks([101.2, 101.3, 101.4], T0 + 3 * S)  # beyond the trigger 3 ticks: triggered
            ticks([102.1], T0 + 4 * S)  # target 1
            try:
                eventually(lambda: (drain(), [t.to_state for t in seen])[1][-2:] == ["triggered", "target1_hit"], 10)
            except AssertionError:
                raise AssertionError(f"after the restart expected triggered, target1_hit; seen {seen}") from None
            states = [t.to_state for t in seen if t.setup_id == sid]
            assert states == ["forming", "ready", "triggered", "target1_hit"], states
            assert [t.to_state for t in seen if t.setup_id != sid] == []  # nothing re-formed
            eventually(lambda: stored_states(store, sid) == ["forming", "ready", "target1_hit", "triggered"], 10,
                       what="each transition stored exactly once")
            # the restored setup carries its microstructure at trigger and macro score on, and the recorder
            # persists them with the selector's trailing stop path on the instance
            trig = next(t for t in seen if t.to_state == "triggered")
            assert trig.microstructure == seen[0].microstructure and trig.microstructure["bid_ask_imbalance"] == 0.3
            assert trig.macro_alignment_score == seen[0].macro_alignment_score is not None
            selector.publish(f"exit.{sid}", "exit_advice", ExitAdvice(
                setup_id=sid, action="trail_stop", reason="trail", ts=T0 + 5 * S, trailing_stop_path=[99.0, 100.9]),
                T0 + 5 * S)
            eventually(lambda: store.setup_instance(sid)["trailing_stop_path"] == [99.0, 100.9], 10,
                       what="trailing stop path recorded")
            inst = store.setup_instance(sid)
            assert inst["state"] == "target1_hit" and inst["t1_hit"] and inst["entry_price"] == 101.4
            assert inst["bid_ask_imbalance_at_trigger"] == 0.3
            assert abs(inst["aggressor_skew_at_trigger"] - 0.6) < 1e-9
            assert abs(inst["macro_alignment_score"] - seen[0].macro_alignment_score) < 1e-9
            metrics = rpc.call("metrics")
            assert "detector_setups_restored_total 1" in (metrics if isinstance(metrics, str) else str(metrics))
    finally:
        store.close()
        for s in (watch, rpc, rec_rpc, agg, feed, selector):
            s.close()
        ctx.destroy(linger=0)


def test_warm_rebuilds_the_same_market_state_as_live_bars_without_running_plugins():
    from services.detector.config import DetectorConfig
    from services.detector.core import DetectorEngine
    from services.detector.host import PluginHost
    from tests.detector import restore_plugin

    def engine():
        host = PluginHost()
        host.register(restore_plugin, "test")
        return DetectorEngine(DetectorConfig(symbols=["SPY"], opening_range_min=1), host)

    bars = [MicroBar(sym="SPY", interval="1s", start_ns=T0 + i * S, open=100.0, high=100.2 + i % 3 * 0.1,
                     low=99.9 - i % 2 * 0.1, close=100.1, volume=10 + i, closed=True) for i in range(90)]
    live, warmed = engine(), engine()
    for b in bars:
        live.on_bar(b)
        warmed.warm(b)
    assert warmed.state_for("SPY") == live.state_for("SPY")
    assert list(warmed.bars["SPY"]) == list(live.bars["SPY"])
    assert warmed.rolling["SPY"].baseline() == live.rolling["SPY"].baseline()
    assert warmed.lifecycle.count() == 0  # no plugin ran: nothing formed
