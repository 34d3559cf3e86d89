"""A detector host SIGKILLed mid-setup comes back with its active setups restored from the store
(SQLite and PostgreSQL): the setup continues to its next states, and no transition is published or
stored twice. Real detector and recorder processes, real ZeroMQ, real databases."""

from __future__ import annotations


from spx_common.bus import RpcError
from spx_common.models import ExitAdvice, MicroBar
from spx_common.store import open_store
from tests.conftest import eventually
from tests.detector.rig import T0, DetectorRig

S = 1_000_000_000


def test_detector_restart_restores_active_setups_without_duplicates(db_url, run_dir):
    def stored_states(store, sid):
        import sqlalchemy as sa
        from spx_common.store import tables as t
        with store.engine.connect() as c:
            return sorted(r.to_state for r in c.execute(
                sa.select(t.setup_transitions.c.to_state).where(t.setup_transitions.c.setup_id == sid)))

    with DetectorRig(run_dir, db_url, extra=("selector",)) as rig:
        agg, selector, rpc, seen = rig.pubs["aggregator"], rig.pubs["selector"], rig.det, rig.seen

        def recorder_up():
            selector.heartbeat(T0)
            try:
                return {"detector", "selector"} <= set(rig.rec.call("status")["peers"])
            except RpcError:
                return False

        rig.start("recorder")
        rig.start("detector")
        store = open_store(db_url, migrate=False)
        try:
            rig.detector_up()
            rig.ps["recorder"].wait_ready(recorder_up, 45, "recorder up and subscribed")
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9,
                                                     low=100.4, close=100.8, volume=10, buy_volume=8, sell_volume=2,
                                                     bid_ask_imbalance=0.3, closed=True), T0)
            rig.ticks([100.8], T0 + S)  # in the entry zone: ready
            eventually(lambda: [t.to_state for t in rig.drain()] == ["forming", "ready"], 10,
                       what="forming and ready published")
            sid = seen[0].setup_id
            eventually(lambda: stored_states(store, sid) == ["forming", "ready"], 10, what="recorder stored both")

            rig.ps["detector"].kill()
            rig.start("detector")
            rig.detector_up()
            active = rpc.call("active")
            assert [(a["setup_id"], a["state"]) for a in active] == [(sid, "ready")]
            # the same bar again: the plugin fires again, the lifecycle refuses the duplicate
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0 + 2 * S, open=100.8,
                                                     high=100.9, low=100.7, close=100.85, volume=10, closed=True),
                        T0 + 2 * S)
            rig.ticks([101.2, 101.3, 101.4], T0 + 3 * S)  # beyond the trigger 3 ticks: triggered
            rig.ticks([102.1], T0 + 4 * S)  # target 1
            try:
                eventually(lambda: [t.to_state for t in rig.drain()][-2:] == ["triggered", "target1_hit"], 10)
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
