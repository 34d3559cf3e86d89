"""The coach's pure event-time core."""

import pytest

from services.coach.core import CoachCore
from spx_common.models import ExitAdvice, MicroBar, SetupTransition

S = 1_000_000_000
T0 = 1_771_599_600 * S


def tr(to, ts, from_state=None, sid="s1", direction="long", **kw):
    base = dict(entry_low=6000.0, entry_high=6002.0, stop=5996.0, targets=[6010.0, 6020.0])
    base.update(kw)
    return SetupTransition(setup_id=sid, detector="vwap", family="reclaim", sym="I:SPX", direction=direction,
                           from_state=from_state, to_state=to, reason="t", ts=ts, **base)


def bar(i, o, c, delta=None, high=None, low=None, closed=True):
    return MicroBar(sym="I:SPX", interval="1s", start_ns=T0 + i * S, open=o, high=high or max(o, c), low=low or min(o, c),
                    close=c, delta_volume=delta, closed=closed)


@pytest.fixture
def core():
    return CoachCore(["alice", "bob"], cooldown_s=60)


def test_entry_window_once_per_window_and_per_user(core):
    assert core.on_transition(tr("forming", T0)) == []
    evs = core.on_transition(tr("ready", T0 + S, "forming"))
    assert [(e.user, e.kind) for e in evs] == [("alice", "entry_window_opened"), ("bob", "entry_window_opened")]
    assert evs[0].setup_id == "s1" and evs[0].data["entry_low"] == 6000.0
    assert core.on_transition(tr("triggered", T0 + 2 * S, "ready")) == []  # same window
    core.on_transition(tr("ready", T0 + 3 * S, "triggered"))  # flapping inside the cooldown: coalesced
    assert core.suppressed == {"entry_window_opened": 2}
    assert len(core.on_transition(tr("ready", T0 + 70 * S, "forming"))) == 2  # a new window after the cooldown


def test_direct_trigger_opens_the_window(core):
    assert [e.kind for e in core.on_transition(tr("triggered", T0, "forming"))] == ["entry_window_opened"] * 2


def test_stop_threat_follows_moved_stop_and_coalesces(core):
    core.on_transition(tr("triggered", T0, "ready"))
    assert core.on_bar(bar(1, 6001, 6000.5)) == []  # 4.5 of 5 risk left
    evs = core.on_bar(bar(2, 6000.5, 5997.0))  # 1.0 left <= 25% of 5
    assert {e.kind for e in evs} == {"stop_threat"} and evs[0].severity == "warning"
    assert core.on_bar(bar(3, 5997, 5996.5)) == []  # coalesced within the cooldown
    core.on_exit(ExitAdvice(setup_id="s1", action="move_stop", reason="t", ts=T0 + 4 * S, stop=5999.0))
    assert core.setups["s1"].stop == 5999.0


def test_target1_from_bar_or_detector_is_one_alert(core):
    core.on_transition(tr("triggered", T0, "ready"))
    evs = core.on_bar(bar(1, 6008, 6009, high=6010.5))
    assert [e.kind for e in evs] == ["target1_touched"] * 2
    assert core.on_transition(tr("target1_hit", T0 + 2 * S, "triggered")) == []  # same event, coalesced


def test_flow_divergence_needs_opposed_delta_while_price_holds(core):
    core.on_transition(tr("ready", T0, "forming"))
    assert core.on_bar(bar(1, 6000, 6001, delta=-50)) == []
    assert core.on_bar(bar(2, 6001, 6001.5, delta=-40)) == []
    evs = core.on_bar(bar(3, 6001.5, 6002, delta=-30))
    assert [e.kind for e in evs] == ["flow_divergence_detected"] * 2 and evs[0].data["delta_sum"] == -120
    short = CoachCore(["alice"], cooldown_s=60)
    short.on_transition(tr("ready", T0, "forming", direction="short", stop=6010.0))
    for i, (o, c, d) in enumerate([(6000, 6001, -50), (6001, 6002, -40), (6002, 6003, -30)]):
        assert short.on_bar(bar(i, o, c, delta=d)) == []  # selling agrees with a short: no divergence


def test_terminal_states_stop_watching_and_partial_bars_ignored(core):
    core.on_transition(tr("triggered", T0, "ready"))
    assert core.on_bar(bar(1, 6000, 5996.5, closed=False)) == []
    core.on_transition(tr("stopped", T0 + S, "triggered"))
    assert "s1" not in core.setups and core.on_bar(bar(2, 6000, 5990)) == []


def test_broker_alerts_become_behavioural_alerts_for_that_user_only(core):
    evs = core.on_alert("carol", {"kind": "pdt_day_trades", "severity": "warning", "message": "3 day trades", "ts": T0})
    assert [(e.user, e.kind, e.data["alert"]) for e in evs] == [("carol", "pdt_alert", "pdt_day_trades")]
    assert "carol" in core.users
    assert core.on_alert("carol", {"kind": "pdt_day_trades", "message": "again", "ts": T0 + S}) == []
    evs = core.on_alert("alice", {"kind": "flatten", "severity": "critical", "message": "flattening", "ts": T0})
    assert evs[0].kind == "portfolio_alert" and evs[0].severity == "critical"
    for bad in ({"kind": 3, "message": "x", "ts": 1}, {"kind": "x", "ts": 1}, {"kind": "x", "message": "m", "ts": -1}):
        with pytest.raises(ValueError):
            core.on_alert("alice", bad)


def test_bounded_setups():
    core = CoachCore(["a"], max_setups=10)
    for i in range(50):
        core.on_transition(tr("forming", T0 + i, sid=f"s{i}"))
    assert len(core.setups) == 10 and "s49" in core.setups
