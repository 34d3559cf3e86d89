"""The gap a feed restart leaves (issue 8): a live feed process SIGKILLed while the vendor keeps
streaming is restarted and backfills, from REST, what the vendor sent while it was down, each event
once on the bus and in the aggregator, with no bar volume counted twice."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter, defaultdict

import zmq

from spx_common.bus import Subscriber, call_once
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.journal import TAIL_SYNC_BYTES, JournalWriter, iter_events, read_journal_tail
from spx_common.models import Quote, Trade
from spx_testing import Processes
from tests.conftest import eventually
from spx_testing.fakes.massive import MarketMix

from tests.feed.helpers import LIVE_TEST_CONFIG, live_feed

DAY = 1_795_185_000_000_000_000  # 2026-11-20 09:30 New York


def _key(ev) -> tuple:
    return ev.sym, type(ev).__name__, ev.seq


def _env(run_dir, fake) -> dict[str, str]:
    cfg = {f"SPX_FEED_{k.upper()}": str(v) for k, v in LIVE_TEST_CONFIG.items()}
    return {**os.environ, **cfg, "SPX_RUNTIME_RUN_DIR": str(run_dir), "MASSIVE_API_KEY": "k",
            "MASSIVE_WS_URL": fake.ws_url, "MASSIVE_REST_URL": fake.rest_url,
            # a long flush interval: when the feed is killed, the journal lacks up to 3 s of what it
            # published, which only the aggregator's tick cache still holds (the dedupe must use it)
            "SPX_FEED_JOURNAL_FLUSH_S": "3", "SPX_FEED_INDICES": "[]",
            # the test holds the restarted feed off the vendor for a while (refused): no connect throttle
            "SPX_FEED_MAX_CONNECTS_PER_MINUTE": "1000"}


def test_sigkilled_feed_backfills_the_vendors_events_of_its_downtime_once(run_dir, fake):
    runtime, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = _env(run_dir, fake)
    ctx = zmq.Context()
    ps = Processes()
    lock = threading.Lock()
    ticks: list = []  # (session, event) of every tick.SPY event on the bus
    summaries: list = []  # (session, status.backfill body)
    sessions: list[str] = []  # feed sessions seen on status.feed, in order
    stop = threading.Event()
    sub = Subscriber(ctx, [bus.pub_endpoint("feed", runtime)], ["tick.SPY", "status.backfill", "status.feed"])

    def listen() -> None:
        while not stop.is_set():
            f = sub.recv(0.1)
            if f is None:
                continue
            with lock:
                if f.topic == "tick.SPY":
                    ticks.extend((f.env.session, ev) for ev in f.body())
                elif f.topic == "status.backfill":
                    summaries.append((f.env.session, f.body()))
                elif f.env.session not in sessions:
                    sessions.append(f.env.session)

    def call(service: str, method: str, params: dict | None = None, timeout_s: float = 2.0):
        return call_once(ctx, bus.rep_endpoint(service, runtime), method, params, timeout_s=timeout_s)

    def on_bus() -> list:
        with lock:
            return list(ticks)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    stream = None
    try:
        with ps:
            ps.service("aggregator", env=env).wait_ready(lambda: call("aggregator", "ping"), 30, "aggregator answering", 0.2)
            ps.service("feed", env=env).wait_ready(lambda: fake.subscribed("stocks", "T.SPY"), 30, "feed subscribed T.SPY")
            eventually(lambda: sessions, 10, what="first feed status on the bus (listener connected)")
            # the aggregator's subscriber connects to the new feed on its own schedule: a frame sent before that
            # is lost to it (slow joiner), so wait until it has the feed's heartbeat
            eventually(lambda: ((call("aggregator", "status") or {}).get("peers") or {}).get("feed"), 15, 0.1,
                       what="the aggregator hears the feed")
            # a probe proves the aggregator receives the feed before the measured stream starts
            probe = Trade(sym="SPY", price=590.0, size=1, ts=time.time_ns() // 10**6 * 10**6, seq=10**9, exch=4)
            fake.trades["SPY"] = [probe]
            fake.push("stocks", [probe])
            eventually(lambda: (call("aggregator", "last", {"sym": "SPY"}) or {}).get("trade"), 10,
                       what="the aggregator holds the probe trade")
            stream = fake.stream("stocks", MarketMix([]).stocks, rate=300, duration_s=120, history=True)
            journal_dir = run_dir / "journal"

            def journaled() -> set:
                return {_key(ev) for ev in iter_events(journal_dir)} if journal_dir.is_dir() else set()

            eventually(lambda: len(journaled()) >= 50, 15, 0.1, what="the first journal flush")
            # kill while a good part of what was published is not journaled yet (flush every 3 s)
            eventually(lambda: len({_key(ev) for _, ev in on_bus()} - journaled()) >= 60, 10, 0.05,
                       what="events published but not yet journaled")
            ps["feed"].kill()
            before_kill = {_key(ev) for _, ev in on_bus()}
            unjournaled = before_kill - journaled()
            assert unjournaled, "the kill must leave published events the journal lacks"
            # keep the new feed off the vendor until both subscribers are connected to it (slow joiners)
            fake.refuse_connections = True
            eventually(lambda: len(stream.missed) >= 150, 10, 0.05, what="vendor events made while the feed is down")
            ps.service("feed", env=env)
            eventually(lambda: len(sessions) >= 2, 30, 0.1, what="the restarted feed's status on the bus")

            def aggregator_saw_restart() -> bool:
                m = re.search(r'^bus_peer_restarts_total\{src="feed"\} (\S+)$', call("aggregator", "metrics") or "", re.M)
                return m is not None and float(m.group(1)) >= 1

            eventually(aggregator_saw_restart, 10, 0.1, what="the aggregator connected to the restarted feed")
            fake.refuse_connections = False
            new_session = sessions[1]
            eventually(lambda: any(s == new_session and ev.backfilled for s, ev in on_bus()), 20, 0.1,
                       what="backfilled events from the restarted feed")
            missed = set(stream.missed)
            eventually(lambda: fake.connected("stocks"), 10, what="stream connected again")
            stream.cancel()
            assert stream.done.wait(5)
            history = {(e.sym, type(e).__name__, e.seq) for e in fake.trades["SPY"] + fake.quotes["SPY"]}
            def cached_keys() -> Counter:
                cached = call("aggregator", "ticks_since", {"sym": "SPY", "since_ns": 0, "limit": 100_000}) or {}
                return Counter((e["event"]["sym"], "Trade" if e["event"]["k"] == "t" else "Quote", e["event"]["seq"])
                               for e in cached.get("events", []))

            # Every event reaches the aggregator. A SIGKILL can cut a frame's delivery half way: the old feed's
            # socket had written it to the aggregator's connection but not yet to this listener's (ZeroMQ sends
            # to each subscriber on its own). Such an event is in the aggregator's cache, so the restarted feed
            # rightly does not publish it again (seeded dedupe), and this listener never sees it.
            eventually(lambda: history <= {_key(ev) for _, ev in on_bus()} | set(cached_keys()), 20, 0.1,
                       what="every event the vendor made on the bus or in the aggregator")
            got = on_bus()
            counts = Counter(_key(ev) for _, ev in got)
            assert [k for k, n in counts.items() if n > 1] == []  # nothing published twice, across both runs
            assert set(counts) <= history
            cut_at_kill = history - set(counts)  # delivered to the aggregator only, as the old feed died (above)
            made_at = {(e.sym, type(e).__name__, e.seq): e.ts for e in fake.trades["SPY"] + fake.quotes["SPY"]}
            old_newest = max(ev.ts for s, ev in got if s != new_session)
            assert len(cut_at_kill) <= 20 and all(made_at[k] <= old_newest + 10**9 for k in cut_at_kill), cut_at_kill
            by_key = {_key(ev): (s, ev) for s, ev in got}
            missed_keys = {k for k in history if (k[0], k[2]) in missed}
            assert not cut_at_kill & missed_keys
            assert len(missed_keys) >= 150
            for k in missed_keys:  # made while no connection was open: only the restart backfill has them
                s, ev = by_key[k]
                assert s == new_session and ev.backfilled and ev.source == "backfill", (k, ev)
            assert all(by_key[k][0] != new_session for k in unjournaled)  # not published again

            st = call("feed", "status")
            restart = st["live"]["backfill"]["restart"]
            assert restart["state"] == "armed" and restart["seeded_aggregator"] >= len(unjournaled)
            assert restart["gaps"]["stocks"]["symbols"] == 1
            assert restart["gaps"]["stocks"]["start_ns"] <= min(ev.ts for k, (s, ev) in by_key.items() if k in unjournaled)
            with lock:
                mine = [b for s, b in summaries if s == new_session and b["market"] == "stocks"]
            assert mine and sum(b["published"] for b in mine) >= len(missed_keys)
            assert sum(b["overlap"] for b in mine) >= len(unjournaled)  # what the mesh had was fetched, not republished
            metrics = call("feed", "metrics")
            assert "feed_backfilled_events_total" in metrics

            # downstream: the aggregator's cache holds every event once; no 1 s bar has more volume than the
            # vendor traded in that second (a republished trade would add its size again)
            keys = cached_keys()
            assert [k for k, n in keys.items() if n > 1] == [] and set(keys) == history
            volume: dict[int, float] = defaultdict(float)
            for t in fake.trades["SPY"]:
                volume[t.ts // 10**9 * 10**9] += t.size
            bars = call("aggregator", "bars_since", {"sym": "SPY", "interval": "1s", "limit": 10_000})
            assert bars["bars"], "closed bars"
            for b in bars["bars"]:
                assert b["volume"] <= volume[b["start_ns"]] + 1e-9, b
    finally:
        if stream is not None:
            stream.cancel()
        stop.set()
        listener.join(2)
        sub.close()
        ctx.destroy(linger=0)


def _trades(ts: int, n: int, seq0: int = 1) -> list:
    return [Trade(sym="SPY", price=590, size=1, ts=ts + i * 1000, seq=seq0 + i) for i in range(n)]


def test_journal_tail_is_bounded_and_resynchronises_mid_file(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=10)
    for i in range(400):
        w.append(_trades(DAY + i * 10**6, 5, seq0=i * 5 + 1)
                 + [Quote(sym="O:SPXW261120C05900000", bid=1, ask=1.1, ts=DAY + i * 10**6 + 7, seq=i + 1)])
    w.close()
    f = tmp_path / "2026-11-20.ticks"
    with open(f, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x91")  # a torn last record (a crash during the write)
    import datetime as dt

    whole = read_journal_tail(tmp_path, dt.date(2026, 11, 20))
    assert not whole.partial and whole.torn == 1 and len(whole.events) == 2400
    assert whole.newest == {"SPY": DAY + 399 * 10**6 + 4000, "O:SPXW261120C05900000": DAY + 399 * 10**6 + 7}
    size = f.stat().st_size
    part = read_journal_tail(tmp_path, dt.date(2026, 11, 20), max_bytes=size // 3)
    assert part.partial and part.bytes_read == size // 3 and part.torn == 1
    assert 0 < len(part.events) < 2400 and part.events == whole.events[-len(part.events):]  # whole records only
    assert part.newest == whole.newest and part.oldest_ns > whole.oldest_ns
    assert read_journal_tail(tmp_path, dt.date(2026, 11, 21)).events == []  # another day: nothing
    assert TAIL_SYNC_BYTES >= 1 << 20


def test_restart_backfill_skipped_for_an_old_previous_run_and_seeded_from_the_journal(run_dir, tmp_path, fake):
    now = time.time_ns()
    # a previous run whose newest event is 20 minutes old: beyond restart_backfill_max_s (600 s)
    w = JournalWriter(run_dir / "journal", flush_interval_s=10)
    w.append(_trades(now - 1200 * 10**9, 3))
    w.close()
    with live_feed(run_dir, fake, prefixes=["tick.", "status.feed"]) as feed:
        eventually(lambda: feed.service.live is not None and feed.service.live.restart["state"] != "off", 5)
        restart = feed.service.live.restart
        assert restart["state"] == "skipped" and "restart_backfill_max_s" in restart["reason"]
        assert feed.service.live._first_pending == set()

    # a previous run 3 s ago: its journaled events are in the dedupe; the REST window starts at its
    # newest event (minus the reorder tolerance, here clamped to the oldest event read back) and only
    # what it never published goes out
    run2 = tmp_path / "r2"
    run2.mkdir()
    t0 = (time.time_ns() - 3 * 10**9) // 10**6 * 10**6
    old = _trades(t0, 10)
    w = JournalWriter(run2 / "journal", flush_interval_s=10)
    w.append(old)
    w.close()
    gap = [Trade(sym="SPY", price=591, size=2, ts=t0 + 10**9 + i * 10**6, seq=100 + i) for i in range(5)]
    fake.trades["SPY"] = old + gap
    with live_feed(run2, fake, prefixes=["tick.", "status.backfill"], indices=[], poll_after_s=2) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        eventually(lambda: feed.service.live.restart.get("state") == "armed", 5)
        assert feed.service.live.restart["seeded_journal"] == 10
        assert feed.service.live.restart["seeded_aggregator"] == 0  # no aggregator: the journal alone (1 s bound)
        first = Trade(sym="SPY", price=592, size=3, ts=time.time_ns() // 10**6 * 10**6, seq=500)
        fake.trades["SPY"].append(first)
        fake.push("stocks", [first])
        eventually(lambda: feed.bodies("status.backfill"), 10, what="the restart gap's summary")
        summary = feed.bodies("status.backfill")[0]
        # newest journaled minus the reorder tolerance (2 s), but not before the oldest event read back
        assert summary["gap_start_ns"] == t0 == feed.service.live.restart["starts"]["SPY"]
        assert summary["published"] == 5 and summary["overlap"] == 11  # 10 journaled + the streamed first
        evs = feed.events("tick.SPY")
        assert sorted(e.seq for e in evs) == [100, 101, 102, 103, 104, 500]
        assert all(e.backfilled and e.source == "backfill" for e in evs if e.seq < 500)
        assert feed.service.live.restart["gaps"]["stocks"]["symbols"] == 1
