"""tactical_alerts on a real coach process: off withholds tactical alerts from users (computed, counted
and listed) while behavioural alerts still go out; on again publishes them, and the coach's history
(tracked setups, cooldowns) carried on through the switch."""

from __future__ import annotations

import time

from spx_common.models import MicroBar, SetupTransition
from tests.conftest import eventually
from tests.harness import service_process
from tests.rollout.helpers import reload_set, spx_flags_set

T0 = 1_771_599_600_000_000_000
S = 1_000_000_000


def _transition(sid: str, to: str, ts: int, frm: str = "forming") -> SetupTransition:
    return SetupTransition(setup_id=sid, detector="vwap", family="reclaim", sym="SPY", direction="long",
                           from_state=frm, to_state=to, reason="t", ts=ts, entry_low=600.0, entry_high=602.0,
                           stop=596.0, targets=[610.0])


def _drain(sub, into: list) -> list:
    while (f := sub.recv(0.02)) is not None:
        if f.topic.startswith("coach."):
            into.append(f.body())
    return into


def test_tactical_alerts_off_withholds_counts_and_keeps_history_then_on_publishes(run_dir):
    with service_process(run_dir, "coach", peers=("detector", "aggregator", "broker"), topics=["coach."],
                         heartbeat_ns=T0, env={"SPX_COACH_USERS": "alice", "SPX_COACH_COOLDOWN_S": "60"}) as (
            pubs, sub, rpc):
        got: list = []
        pid = rpc.call("status")["pid"]
        pubs["detector"].publish("setup.transition", "setup_transition", _transition("s1", "ready", T0), T0)
        eventually(lambda: [e for e in _drain(sub, got) if e.setup_id == "s1"], 5, what="s1 alert while on")

        assert reload_set(run_dir, rpc, "tactical_alerts", False)["changed"] == {"tactical_alerts": False}
        pubs["detector"].publish("setup.transition", "setup_transition", _transition("s2", "ready", T0 + S), T0 + S)
        pubs["detector"].publish("setup.transition", "setup_transition",
                                 _transition("s2", "triggered", T0 + 2 * S, "ready"), T0 + 2 * S)
        pubs["broker"].publish("alert.alice", "doc", {"kind": "pdt_day_trades", "severity": "warning",
                                                     "message": "3 day trades in 5 days", "ts": T0 + 2 * S}, T0 + 2 * S)
        # the behavioural alert arrives; the tactical one was computed and withheld
        eventually(lambda: [e for e in _drain(sub, got) if e.kind == "pdt_alert"], 5, what="behavioural alert")
        st = eventually(lambda: (lambda c: c["withheld"]["entry_window_opened"] == 1 and c)(rpc.call("status")["coach"]),
                        5, what="withheld alert counted")
        assert st["tactical_alerts"] is False and st["emitted"]["entry_window_opened"] == 2
        assert st["recent_withheld"][-1]["setup_id"] == "s2" and st["active_setups"] == 2
        assert 'coach_alerts_withheld_total{kind="entry_window_opened"} 1' in rpc.call("metrics")
        time.sleep(0.3)
        assert not [e for e in _drain(sub, got) if e.setup_id == "s2"]

        # on again (operator path): s2's state survived the switch, so a bar near its stop is a threat
        out = spx_flags_set(run_dir, "tactical_alerts", "true")
        assert "coach" in out and rpc.call("status")["coach"]["tactical_alerts"] is True
        bar = MicroBar(sym="SPY", interval="1s", start_ns=T0 + 3 * S, open=597.5, high=597.6, low=596.6,
                       close=596.8, volume=100, trades=5, closed=True)
        pubs["aggregator"].publish("bar.1s.SPY", "bar", bar, T0 + 3 * S)
        threat = eventually(lambda: [e for e in _drain(sub, got) if e.kind == "stop_threat"], 5, what="stop threat")
        assert threat[0].setup_id == "s2" and threat[0].user == "alice"
        # the withheld entry alert is not replayed late, and s1's cooldown still holds
        pubs["detector"].publish("setup.transition", "setup_transition",
                                 _transition("s1", "ready", T0 + 4 * S, "forming"), T0 + 4 * S)
        pubs["detector"].publish("setup.transition", "setup_transition", _transition("s3", "ready", T0 + 5 * S),
                                 T0 + 5 * S)
        eventually(lambda: [e for e in _drain(sub, got) if e.setup_id == "s3"], 5, what="s3 alert after on")
        entries = [e.setup_id for e in got if e.kind == "entry_window_opened"]
        assert entries == ["s1", "s3"]
        assert rpc.call("status")["pid"] == pid
