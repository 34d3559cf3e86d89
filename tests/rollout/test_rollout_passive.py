"""tick_ingest_passive on real feed, aggregator and gateway processes: while passive the feed still
ingests and journals every event but publishes only one poll-source frame per symbol per cadence;
the aggregator keeps its bars and goes on closing them, the gateway keeps serving prices (at poll
cadence, marked poll); turning it off restores tick fan-out. No process restarts."""

from __future__ import annotations

import contextlib
import time

import pytest

from spx_common import journal
from spx_common.topics import group_by_symbol, tick_topic
from tests.conftest import eventually, free_port
from tests.harness import service_process
from tests.rollout.helpers import WsRecorder, spx_flags_set

CADENCE_S = 1.0


class Frames:
    """Drains the harness subscriber on the feed and keeps ``(monotonic time, frame, body)``."""

    def __init__(self, sub) -> None:
        self.sub = sub
        self.got: list = []

    def pump(self) -> list:
        while (f := self.sub.recv(0.01)) is not None:
            if f.topic.startswith("tick."):
                self.got.append((time.monotonic(), f, f.body()))
        return self.got

    def since(self, t: float, topic: str | None = None) -> list:
        self.pump()
        return [(at, f, b) for at, f, b in self.got if at >= t and (topic is None or f.topic == topic)]


@pytest.fixture
def mesh(run_dir):
    port = free_port()
    env = {"SPX_FEED_JOURNAL": "on", "SPX_FEED_REPLAY_START_DELAY_S": "0", "SPX_FEED_PASSIVE_CADENCE_S": str(CADENCE_S),
           "SPX_GATEWAY_PORT": str(port), "SPX_GATEWAY_PRICE_THROTTLE_MS": "0"}
    with contextlib.ExitStack() as stack:
        _, feed_sub, feed = stack.enter_context(service_process(run_dir, "feed", topics=["tick."], env=env))
        _, _, agg = stack.enter_context(service_process(run_dir, "aggregator", env=env))
        _, _, gw = stack.enter_context(service_process(run_dir, "gateway", env=env))
        yield Frames(feed_sub), feed, agg, gw, f"ws://127.0.0.1:{port}/ws"


def _metric(rpc, name: str) -> float:
    for line in rpc.call("metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _bar_starts(agg) -> list[int]:
    return [b["start_ns"] for b in agg.call("bars_since", {"sym": "SPY", "interval": "1s", "limit": 10_000})["bars"]]


def test_passive_ingest_journals_feeds_poll_cadence_and_restores_tick_fanout(run_dir, mesh):
    frames, feed, agg, gw, url = mesh
    pids = {name: rpc.call("status")["pid"] for name, rpc in (("feed", feed), ("aggregator", agg), ("gateway", gw))}
    client = WsRecorder(url, ["price:SPY"])
    try:
        eventually(lambda: len([m for _, m in client.on("price:SPY") if m["source"] == "tick"]) >= 10, 20,
                   what="tick-cadence prices through the gateway")
        eventually(lambda: len(_bar_starts(agg)) >= 3, 20, what="bars from ticks")
        bars_before = _bar_starts(agg)

        out = spx_flags_set(run_dir, "tick_ingest_passive", "true")
        assert "feed" in out and "aggregator" in out and "gateway" in out
        assert feed.call("status")["passive"] is True
        frames.pump()
        time.sleep(0.2)  # frames published before the switch and still in flight
        frames.pump()
        on = time.monotonic()
        event_on = feed.call("status")["event_ns"]
        written0 = feed.call("status")["journal"]["written"]
        ingested0 = _metric(feed, "tick_passive_events_total")
        time.sleep(4 * CADENCE_S)
        window = frames.since(on)
        assert window, "no frames at all while passive"
        for _, f, body in window:  # only the latest trade / quote / value of a symbol, marked poll
            assert all(ev.source == "poll" for ev in body), f.topic
            for sym, evs in group_by_symbol(body).items():  # options: one frame per root, several contracts
                assert tick_topic(sym) == f.topic
                kinds = [type(ev).__name__ for ev in evs]
                assert len(kinds) == len(set(kinds)) <= 3
        spy = [at for at, f, _ in window if f.topic == "tick.SPY"]
        assert 2 <= len(spy) <= 4 / CADENCE_S + 2, len(spy)
        # ... while every event is still ingested and journaled
        status = feed.call("status")
        ingested = _metric(feed, "tick_passive_events_total") - ingested0
        sent = sum(len(b) for _, _, b in window)
        assert ingested > 1.5 * sent, (ingested, sent)  # conflated: fewer events leave than came in
        eventually(lambda: feed.call("status")["journal"]["written"] - written0 >= ingested, 5,
                   what="passive events journaled")
        assert status["journal"]["errors"] == 0 and status["journal"]["dropped"] == 0
        event_mid = status["event_ns"]
        journaled = [ev for f in journal.journal_files(run_dir / "journal") for batch in journal.iter_batches(f)
                     for ev in batch if event_on < ev.ts <= event_mid]
        assert len(journaled) > 1.5 * sent and all(ev.source == "replay" for ev in journaled)  # as ingested
        # the gateway still serves prices, at poll cadence and marked poll
        poll_prices = [m for at, m in client.on("price:SPY", on + 0.5)]
        assert poll_prices and all(m["source"] == "poll" for m in poll_prices)
        assert len(poll_prices) <= 4 / CADENCE_S + 2
        # the aggregator kept its bars and goes on closing them from the poll-cadence frames
        bars_mid = _bar_starts(agg)
        assert set(bars_before) <= set(bars_mid) and len(bars_mid) > len(bars_before)

        spx_flags_set(run_dir, "tick_ingest_passive", "false")  # synthetic replay events are marked "replay"
        assert feed.call("status")["passive"] is False
        off = time.monotonic()
        eventually(lambda: len([1 for _, _, b in frames.since(off) if b[0].source != "poll"]) >= 20, 10,
                   what="tick fan-out restored")
        eventually(lambda: len([m for _, m in client.on("price:SPY", off) if m["source"] == "tick"]) >= 10, 10,
                   what="tick-cadence prices at the gateway again")
        assert set(bars_mid) <= set(_bar_starts(agg))
        assert {name: rpc.call("status")["pid"] for name, rpc in
                (("feed", feed), ("aggregator", agg), ("gateway", gw))} == pids
    finally:
        client.close()
