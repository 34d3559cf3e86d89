"""Issue 8 on real detector and recorder processes (SQLite and PostgreSQL), with the recorder made to
lag deterministically (SIGSTOP: it receives and writes nothing while stopped):

1. the detector is SIGKILLed and restarted while the recorder has not written a setup's newest
   transition: it restores the setup from its own outbox at that newest state and publishes nothing
   again (before the fix it came back one state behind and re-published ``triggered``);
2. the detector and the (stopped) recorder are SIGKILLed together and both restarted: what the
   recorder never wrote is recorded from the detector's reloaded outbox, each transition exactly
   once, and the setup carries on to its next state, published once;
3. the bar that formed the setup is evaluated again after it resolved (a restarted aggregator can
   re-publish a closed bar): the same candidate (same id) is refused, not formed again.

Accounting is what a subscriber saw on the bus vs the store.
"""

from __future__ import annotations

import signal

import sqlalchemy as sa

from services.detector.core import newest_of
from spx_common.models import MicroBar, SetupTransition
from spx_common.store import open_store
from spx_common.store import tables as t
from tests.conftest import eventually
from tests.detector.rig import T0, DetectorRig

S = 1_000_000_000


def test_restore_while_the_recorder_lags_and_both_killed_together_lose_and_repeat_nothing(db_url, run_dir):
    with DetectorRig(run_dir, db_url, topics=("setup.transition", "block.detector")) as rig:
        agg, det, rec, ps, seen, drain, ticks = (rig.pubs["aggregator"], rig.det, rig.rec, rig.ps, rig.seen, rig.drain,
                                                 rig.ticks)
        rig.start("recorder")
        rig.start("detector")
        store = open_store(db_url, migrate=False)

        def stored():
            with store.engine.connect() as c:
                return sorted((r.setup_id, r.to_state) for r in c.execute(
                    sa.select(t.setup_transitions.c.setup_id, t.setup_transitions.c.to_state)))

        try:
            rig.detector_up()
            ps["recorder"].wait_ready(lambda: rec.call("ping"), 20, what="recorder up")
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9,
                                                     low=100.4, close=100.8, volume=10, buy_volume=8, sell_volume=2,
                                                     closed=True), T0)
            ticks([100.8], T0 + S)  # in the entry zone: ready
            eventually(lambda: [x.to_state for x in drain()] == ["forming", "ready"], 10, what="forming, ready")
            sid = seen[0].setup_id
            eventually(lambda: stored() == [(sid, "forming"), (sid, "ready")], 20, what="the recorder stored both")

            # the recorder lags: it takes and writes nothing from here on
            ps["recorder"].send_signal(signal.SIGSTOP)
            ticks([101.2, 101.3, 101.4], T0 + 2 * S)  # beyond the trigger 3 ticks: triggered
            eventually(lambda: [x.to_state for x in drain()][-1] == "triggered", 10, what="triggered published")

            # 1. detector SIGKILLed while the store is one state behind: restored at 'triggered'
            ps["detector"].kill()
            rig.start("detector")
            rig.detector_up()
            assert [(a["setup_id"], a["state"]) for a in det.call("active")] == [(sid, "triggered")]
            assert stored() == [(sid, "forming"), (sid, "ready")]  # the store really was behind
            ticks([101.5, 101.6, 101.7], T0 + 3 * S)  # beyond the trigger again: a 'ready' setup would re-trigger
            ticks([102.1], T0 + 4 * S)  # target 1
            eventually(lambda: [x.to_state for x in drain()][-1] == "target1_hit", 10, what="target1_hit published")

            # 2. detector and recorder die together; the recorder never wrote triggered nor target1_hit
            ps["detector"].kill()
            ps["recorder"].kill()
            assert stored() == [(sid, "forming"), (sid, "ready")]
            rig.start("recorder")
            rig.start("detector")
            rig.detector_up()
            assert [(a["setup_id"], a["state"]) for a in det.call("active")] == [(sid, "target1_hit")]
            want = sorted((sid, s) for s in ("forming", "ready", "triggered", "target1_hit"))
            eventually(lambda: stored() == want, 20, what="the recorder caught up from the detector's outbox")
            ticks([103.1], T0 + 5 * S)  # target 2: terminal
            eventually(lambda: [x.to_state for x in drain()][-1] == "target2_hit", 10, what="target2_hit published")
            eventually(lambda: stored() == sorted(want + [(sid, "target2_hit")]), 20, what="target2_hit stored")
            # 3. the first bar evaluated again (as a restarted aggregator or the warm-up can deliver it): the
            #    plugin proposes the same candidate, same id; the setup resolved and left the lifecycle, but it
            #    was published, so it is refused, not formed again
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9,
                                                     low=100.4, close=100.8, volume=10, buy_volume=8, sell_volume=2,
                                                     closed=True), T0 + 6 * S)
            eventually(lambda: (drain(), [b for tp, b in rig.other if tp == "block.detector" and b.reason == "duplicate"])[1], 10,
                       what="the re-evaluated candidate refused as a duplicate")

            drain()
            assert [(x.setup_id, x.to_state) for x in seen] == [
                (sid, s) for s in ("forming", "ready", "triggered", "target1_hit", "target2_hit")], \
                "a subscriber saw a transition twice (or missed one)"
            inst = store.setup_instance(sid)
            assert inst["state"] == "target2_hit" and inst["entry_price"] == 101.4 and inst["t2_hit"]
            assert det.call("active") == []
        finally:
            store.close()


def _tr(sid: str, to: str, ts: int, frm: str | None = None, **kw) -> SetupTransition:
    return SetupTransition(setup_id=sid, detector="probe", family="probe", sym="SPY", direction="long",
                           from_state=frm, to_state=to, reason="t", ts=ts, price=None, entry_low=100.5,
                           entry_high=101.0, stop=99.0, targets=[102.0, 103.0], confidence=0.7,
                           microstructure=kw.get("micro", {}), macro_alignment_score=0.5)


def _row(sid: str, state: str, first: int, last: int) -> dict:
    return {"setup_id": sid, "detector": "probe", "family": "probe", "sym": "SPY", "direction": "long",
            "state": state, "first_ns": first, "last_ns": last, "entry_low": 100.5, "entry_high": 101.0,
            "stop": 99.0, "targets": [102.0, 103.0], "confidence": 0.7, "microstructure_at_trigger": None,
            "macro_alignment_score": 0.5}


def test_newest_of_takes_the_most_advanced_of_store_and_outbox():
    rows = [_row("behind", "ready", T0, T0 + S), _row("ahead", "triggered", T0, T0 + 3 * S),
            _row("resolved_later", "ready", T0, T0 + S)]
    published = [
        _tr("behind", "forming", T0), _tr("behind", "ready", T0 + S, "forming"),
        _tr("behind", "triggered", T0 + 2 * S, "ready", micro={"bid_ask_imbalance": 0.3}),
        _tr("resolved_later", "ready", T0 + S, "forming"), _tr("resolved_later", "stopped", T0 + 2 * S, "ready"),
        _tr("only_published", "forming", T0 + 4 * S), _tr("only_published", "ready", T0 + 4 * S, "forming"),
        _tr("ahead", "ready", T0 + S, "forming"),  # the outbox lost the rest: the store wins
    ]
    out = {r["setup_id"]: r for r in newest_of(rows, published)}
    assert set(out) == {"behind", "ahead", "only_published"}  # stopped is terminal: not restored
    assert out["behind"]["state"] == "triggered" and out["behind"]["last_ns"] == T0 + 2 * S
    assert out["behind"]["microstructure_at_trigger"] == {"bid_ask_imbalance": 0.3}
    assert out["ahead"]["state"] == "triggered" and out["ahead"]["last_ns"] == T0 + 3 * S
    op = out["only_published"]
    assert op["state"] == "ready" and op["first_ns"] == T0 + 4 * S and op["targets"] == [102.0, 103.0]
    assert [r["setup_id"] for r in newest_of(rows, published, limit=1)] == ["only_published"]
    # the same ts for two states (one tick): the higher-ranked one wins whatever the order
    same = newest_of([], [_tr("x", "target1_hit", T0, "triggered"), _tr("x", "triggered", T0, "ready")])
    assert same[0]["state"] == "target1_hit"
