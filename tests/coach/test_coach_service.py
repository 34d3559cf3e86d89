"""The real coach process (``python -m services.coach``) on real sockets: transitions and alerts in,
``coach.<user>`` out, bad input counted, metric exposed."""


import pytest

from spx_common.models import SetupTransition
from tests.conftest import eventually
from tests.harness import service_process

T0 = 1_771_599_600_000_000_000


@pytest.fixture
def coach(run_dir):
    with service_process(run_dir, "coach", peers=("detector", "broker"), topics=["coach."], heartbeat_ns=T0,
                         env={"SPX_COACH_USERS": "alice,bob"}) as handles:
        yield handles


def _collect(sub, n, timeout_s=5.0):
    got = []

    def drained():
        got.extend((f.topic, f.body()) for f in iter(lambda: sub.recv(0.05), None) if f.topic.startswith("coach."))
        return len(got) >= n

    eventually(drained, timeout_s)
    return got


def test_coach_process_publishes_user_scoped_tactical_alerts(coach):
    pubs, sub, rpc = coach
    t = SetupTransition(setup_id="s1", detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                        from_state="forming", to_state="ready", reason="t", ts=T0, entry_low=6000, entry_high=6002,
                        stop=5996)
    pubs["detector"].publish("setup.transition", "setup_transition", t, T0)
    pubs["broker"].publish("alert.carol", "doc", {"kind": "no-ts", "message": "bad"}, T0)  # refused, counted
    # after the transition in event time: the coach handles its inputs in event-time order (at one time,
    # by publisher name), and a user it sees first in an alert would get the transition's alert too
    pubs["broker"].publish("alert.carol", "doc", {"kind": "pdt_equity", "severity": "critical",
                                                  "message": "equity under 25k", "ts": T0 + 1, "user": "carol"},
                           T0 + 1)
    got = _collect(sub, 3)
    assert sorted((topic, ev.kind) for topic, ev in got) == [
        ("coach.alice", "entry_window_opened"), ("coach.bob", "entry_window_opened"), ("coach.carol", "pdt_alert")]
    assert all(topic == f"coach.{ev.user}" for topic, ev in got)
    metrics = eventually(lambda: (lambda t: "coach_tactical_alert_rate 2" in t and t)(rpc.call("metrics")), 5)
    assert 'coach_bad_input_total{topic="alert"} 1' in metrics
    assert rpc.call("status")["coach"]["emitted"] == {"entry_window_opened": 2, "pdt_alert": 1}


def test_coach_applies_each_users_stored_preferences(run_dir):
    """alice wants warnings and up, carol is quiet (critical only), bob has no record: everything."""
    from spx_common.store import open_store

    url = f"sqlite:///{run_dir}/spx.sqlite3"
    store = open_store(url)
    store.add_user("alice", coach={"min_severity": "warning"})
    store.add_user("carol", coach={"quiet": True})
    store.close()
    with service_process(run_dir, "coach", peers=("detector", "broker"), topics=["coach."], heartbeat_ns=T0,
                         env={"SPX_COACH_USERS": "alice,bob,carol", "DATABASE_URL": url}) as (pubs, sub, rpc):
        t = SetupTransition(setup_id="s1", detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                            from_state="forming", to_state="ready", reason="t", ts=T0, entry_low=6000,
                            entry_high=6002, stop=5996)
        pubs["detector"].publish("setup.transition", "setup_transition", t, T0)  # info: entry window
        pubs["broker"].publish("alert.carol", "doc", {"kind": "pdt_equity", "severity": "critical",
                                                      "message": "equity under 25k", "ts": T0, "user": "carol"}, T0)
        got = _collect(sub, 2)
        metrics = eventually(lambda: (lambda m: 'coach_alerts_filtered_total{reason="quiet"} 1' in m and m)(
            rpc.call("metrics")), 5)
        assert sorted((topic, ev.kind) for topic, ev in got) == [("coach.bob", "entry_window_opened"),
                                                                 ("coach.carol", "pdt_alert")]
        assert 'coach_alerts_filtered_total{reason="severity"} 1' in metrics
