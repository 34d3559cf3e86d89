"""A relay (``BusService`` with ``aligned`` and ``watermarks``), without sockets: inputs of two publishers
handled in event-time order however they arrive, what it publishes stamped at or after the key of the item
it handles, its watermark its frontier; tick frames cut as runs; a relay whose inputs send no watermark
says it is idle. The publisher is a hand-written fake that records what would go on the bus."""

from __future__ import annotations

import time

from spx_common import codec
from spx_common.config import RuntimeConfig
from spx_common.models import Trade, Watermark
from spx_common.service import BusService, event_runs

S = 10**9


class FakePub:
    session = "relay-session"
    outbox = None

    def __init__(self) -> None:
        self.sent: list[tuple[str, object, int]] = []

    def publish(self, topic, type_name, body, event_ns):
        self.sent.append((topic, body, event_ns))
        return len(self.sent)


class Relay(BusService):
    name = "relay"
    aligned = ("tick.", "setup.")
    watermarks = True


def frame(topic: str, type_name: str, body, src: str, event_ns: int, seq: int):
    payload = codec.encode_payload(type_name, body, src=src, session=f"{src}-1", seq=seq, event_ns=event_ns)
    return codec.decode_frames([topic.encode(), payload])


def relay(tmp_path) -> tuple[Relay, FakePub, list]:
    svc = Relay(RuntimeConfig(run_dir=tmp_path))
    svc.pub = FakePub()
    handled: list = []

    def on_setup(f, doc):
        handled.append(("setup", doc["n"]))
        svc.publish("reco.x", "doc", {"n": doc["n"]}, doc["ts"])  # body time before the item's key

    svc.on("setup.", on_setup)
    svc.on("tick.", lambda f, evs: handled.extend(("tick", e.ts // S) for e in evs))
    for s in ("feed", "detector"):
        svc.aligner.add_stream(s)
        svc.aligner.watermark(s, 0)
    return svc, svc.pub, handled


def test_a_relay_handles_in_event_time_stamps_its_output_and_sends_its_frontier_on(tmp_path):
    svc, pub, handled = relay(tmp_path)
    ticks = [Trade(sym="SPY", price=1.0, size=1, ts=t * S) for t in (1, 2, 3, 4)]
    svc.dispatch(frame("tick.SPY", "ticks", ticks, "feed", 1 * S, 1))  # one run, arrives first
    svc.dispatch(frame("wm.feed", "watermark", Watermark(ns=5 * S), "feed", 5 * S, 2))
    assert svc.release_aligned() == 0 and handled == []  # the detector is at 0: nothing can go yet
    svc.dispatch(frame("setup.transition", "doc", {"n": 1, "ts": 1 * S}, "detector", 3 * S, 1))  # known at 3 s
    svc.dispatch(frame("wm.detector", "watermark", Watermark(ns=4 * S), "detector", 4 * S, 2))
    svc.release_aligned()
    # the run is cut before the setup (key 3 s; at one time, "detector" sorts before "feed") and at the frontier
    assert handled == [("tick", 1), ("tick", 2), ("setup", 1), ("tick", 3)]
    assert ("reco.x", {"n": 1}, 3 * S) in pub.sent  # stamped at the item's key, not the body's 1 s
    assert pub.sent[-1][0] == "wm.relay" and pub.sent[-1][1] == Watermark(ns=4 * S)
    svc.publish("state.x", "doc", {}, 0)  # outside a handler: at or after the watermark sent
    assert pub.sent[-1][2] == 4 * S
    svc.dispatch(frame("wm.detector", "watermark", Watermark(ns=9 * S), "detector", 9 * S, 3))
    svc.release_aligned()
    assert handled[-1] == ("tick", 4) and pub.sent[-1][1] == Watermark(ns=5 * S)
    assert svc.aligner.stats.late == 0 and svc.aligner.stats.forced == 0


def test_an_input_behind_the_watermark_is_counted_and_handled_at_once(tmp_path):
    svc, pub, handled = relay(tmp_path)
    for s in ("feed", "detector"):
        svc.dispatch(frame(f"wm.{s}", "watermark", Watermark(ns=10 * S), s, 10 * S, 1))
    svc.dispatch(frame("setup.transition", "doc", {"n": 1, "ts": 8 * S}, "detector", 8 * S, 2))
    svc.release_aligned()
    svc.dispatch(frame("setup.transition", "doc", {"n": 2, "ts": 5 * S}, "detector", 5 * S, 3))  # broke its promise
    svc.release_aligned()
    assert handled == [("setup", 1), ("setup", 2)]
    assert svc.aligner.stats.late == 1 and svc.align_late.value() == 1
    assert ("reco.x", {"n": 2}, 5 * S) in pub.sent  # its output is behind our watermark too: late downstream


def test_a_relay_whose_inputs_send_no_watermark_says_it_is_idle(tmp_path):
    svc = Relay(RuntimeConfig(run_dir=tmp_path))
    svc.pub = FakePub()
    svc.on("setup.", lambda f, doc: None)
    svc.dispatch(frame("setup.transition", "doc", {"n": 1, "ts": S}, "detector", S, 1))
    svc.release_aligned()
    assert svc.pub.sent == []  # heard for less than two heartbeats: nothing to say yet
    svc._stream_first["detector"] = time.monotonic() - 3 * svc.bus.heartbeat_s
    svc.release_aligned()
    assert svc.pub.sent[-1][0] == "wm.relay" and svc.pub.sent[-1][1].idle
    svc.dispatch(frame("wm.detector", "watermark", Watermark(ns=7 * S), "detector", 7 * S, 2))
    svc.release_aligned()  # its input has a watermark now: so has the relay, not idle
    assert svc.pub.sent[-1][1] == Watermark(ns=7 * S)


def test_event_runs_cut_where_time_goes_back():
    evs = [Trade(sym="SPY", price=1.0, size=1, ts=t) for t in (1, 2, 2, 1, 3)]
    assert [(first, times) for first, _, times in event_runs(evs)] == [(1, [1, 2, 2]), (1, [1, 3])]
    assert event_runs([]) == []
