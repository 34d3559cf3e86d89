"""evaluator_logging_only on a real detector process: while on, transitions are computed and published
on ``setup.shadow`` (recorded, not shown to users) instead of ``setup.transition``; the active setup
keeps moving through its lifecycle, and when the switch goes off its next transition is user-visible."""

from __future__ import annotations

from spx_common.models import MicroBar, Trade
from tests.conftest import eventually
from tests.harness import service_process
from tests.rollout.helpers import reload_set, spx_flags_set

S = 1_000_000_000
T0 = 1_795_185_000 * S


def test_logging_only_shadows_transitions_without_losing_the_active_setup(run_dir):
    env = {"SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.detector.restore_plugin",
           "SPX_DETECTOR_SYMBOLS": "SPY", "SPX_DETECTOR_CONFIRM_MS": "0", "SPX_DETECTOR_WARMUP": "false",
           "SPX_DETECTOR_RESTORE_SETUPS": "false", "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1",
           "DATABASE_URL": f"sqlite:///{run_dir}/store.db"}
    with service_process(run_dir, "detector", peers=("aggregator", "feed"), topics=["setup."], heartbeat_ns=T0,
                         env=env) as (pubs, sub, rpc):
        seen: list[tuple[str, str]] = []

        def drain():
            while (f := sub.recv(0.02)) is not None:
                if f.topic in ("setup.transition", "setup.shadow"):
                    seen.append((f.topic, f.body().to_state))
            return seen

        def ticks(prices, t):
            for i, p in enumerate(prices):
                pubs["feed"].publish("tick.SPY", "ticks", [Trade(sym="SPY", price=p, size=1, ts=t + i * 1000)],
                                     t + i * 1000)

        pid = rpc.call("status")["pid"]
        pubs["aggregator"].publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4,
                                   high=100.9, low=100.4, close=100.8, volume=10, closed=True), T0)
        ticks([100.8], T0 + S)
        eventually(lambda: drain() == [("setup.transition", "forming"), ("setup.transition", "ready")], 10,
                   what="forming and ready shown")

        assert reload_set(run_dir, rpc, "evaluator_logging_only", True)["changed"] == {"evaluator_logging_only": True}
        ticks([101.2, 101.3, 101.4], T0 + 2 * S)  # beyond the trigger: triggered, in the shadow only
        eventually(lambda: drain()[-1] == ("setup.shadow", "triggered"), 10, what="triggered on setup.shadow")
        [active] = rpc.call("active")
        assert active["state"] == "triggered"
        assert 'setup_transitions_total{to_state="triggered"} 1' in rpc.call("metrics")  # computed and counted

        assert "detector" in spx_flags_set(run_dir, "evaluator_logging_only", "false")
        ticks([102.1], T0 + 3 * S)  # target 1: the same setup, visible again
        eventually(lambda: drain()[-1] == ("setup.transition", "target1_hit"), 10, what="target1_hit shown")
        assert seen == [("setup.transition", "forming"), ("setup.transition", "ready"),
                        ("setup.shadow", "triggered"), ("setup.transition", "target1_hit")]
        assert rpc.call("active")[0]["setup_id"] == active["setup_id"]
        assert rpc.call("status")["pid"] == pid
