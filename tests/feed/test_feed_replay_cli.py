"""``spx replay``: journal replay through the CLI entry point onto real sockets; progress bar; pacing."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import zmq

from spx_common.bus import Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.journal import JournalWriter
from spx_common.models import Trade

from services.cli.commands.replay import Progress
from services.cli.main import main as spx_main
from services.feed.replay import pace
from services.feed.synthetic import SyntheticSession

DAY1 = 1_795_185_000_000_000_000


def test_spx_replay_journal_publishes_every_event(run_dir, monkeypatch):
    w = JournalWriter(run_dir / "rec", flush_interval_s=0.05)
    evs = [Trade(sym="SPY" if i % 2 else "QQQ", price=500 + i, size=1, ts=DAY1 + i * 10**6, seq=i + 1)
           for i in range(200)]
    for i in range(0, 200, 20):
        w.append(evs[i:i + 20])
    w.close()
    monkeypatch.setenv("SPX_FEED_REPLAY_START_DELAY_S", "0.5")
    runtime = RuntimeConfig(run_dir=run_dir)
    ctx = zmq.Context()
    sub = Subscriber(ctx, [BusConfig().pub_endpoint("feed", runtime)], ["tick."])
    got: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            f = sub.recv(0.1)
            if f is not None:
                got.extend(f.body())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        code = spx_main(["replay", "journal", str(run_dir / "rec"), "--speed", "max", "--no-progress",
                         "--symbols", "SPY"])
        deadline = time.monotonic() + 5
        while len(got) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(2)
        sub.close()
        ctx.destroy(linger=0)
    assert code == 0
    assert got == [e for e in evs if e.sym == "SPY"]


def test_spx_replay_refuses_bad_input(run_dir, capsys):
    assert spx_main(["replay", "journal", str(run_dir / "missing"), "--no-progress"]) == 2
    assert "no journal" in capsys.readouterr().err
    assert spx_main(["replay", "journal", "--no-progress"]) == 2
    assert spx_main(["replay", "synthetic", "--speed", "fast", "--no-progress"]) == 2


def test_progress_bar_draws_fraction_and_rate():
    out = io.StringIO()
    p = Progress(DAY1, DAY1 + 100 * 10**9, True, out)
    p(DAY1 + 50 * 10**9, 1234, force=True)
    p.done()
    text = out.getvalue()
    assert "50.0%" in text and "1,234 events" in text and "2026-11-20 09:30:50 ET" in text


def test_pacer_holds_speed_and_skips_long_gaps():
    s = SyntheticSession(seed=1, duration_s=4, compress=1)
    evs = list(s.events())
    # a 2-hour hole in the middle must not be waited for
    late = [e for e in SyntheticSession(seed=2, duration_s=1).events()]
    for e in late:
        e.ts += 2 * 3600 * 10**9
    batches: list = []
    t0 = time.monotonic()
    n = asyncio.run(pace(evs + late, batches.append, speed=4.0, batch_ns=50_000_000))
    took = time.monotonic() - t0
    assert n == len(evs) + len(late) == sum(map(len, batches))
    assert 0.8 <= took <= 2.5  # ~4 s of events at x4 (+ <=1 s after the gap), not hours
    assert all(b[-1].ts - b[0].ts <= 50_000_000 for b in batches)


def test_spx_feed_journal_and_status(run_dir, capsys):
    w = JournalWriter(run_dir / "journal", flush_interval_s=0.05)
    w.append([Trade(sym="SPY", price=500, size=1, ts=DAY1 + i, seq=i + 1) for i in range(7)])
    w.close()
    assert spx_main(["feed", "journal"]) == 0
    out = capsys.readouterr().out
    assert "2026-11-20.ticks" in out and "7 events" in out and "09:30:00-09:30:00 ET" in out
    assert spx_main(["feed", "status"]) == 1  # no feed running: a clear refusal, not a hang
    assert "feed not answering" in capsys.readouterr().err


def test_spx_feed_status_asks_the_running_feed(run_dir, capsys):
    from services.feed.replay import SyntheticSource
    from tests.feed.helpers import RunningFeed

    with RunningFeed(run_dir, replay_source=SyntheticSource(SyntheticSession(seed=1, duration_s=5)),
                     replay_speed="max", replay_start_delay_s=0):
        assert spx_main(["feed", "status"]) == 0
    out = capsys.readouterr().out
    assert "mode replay" in out or "mode down" in out
    assert "source synthetic" in out
    assert "availability " in out and "(SLO > 99.5%)" in out


def test_docs_name_every_feed_metric_and_config_key(run_dir):
    from pathlib import Path

    from services.feed.config import FeedConfig
    from services.feed.live import LiveIngest
    from services.feed.service import FeedService

    svc = FeedService(RuntimeConfig(run_dir=run_dir), BusConfig(), config=FeedConfig(api_key="k"))
    try:
        LiveIngest(svc)
        names = {n for n in svc.metrics._metrics if n.startswith(("tick_", "feed_", "rest_", "journal_", "chain_"))}
    finally:
        svc.ctx.destroy(linger=0)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "feed.md").read_text()
    missing = sorted(n for n in names if f"`{n}" not in doc)
    assert not missing, f"docs/feed.md does not document metrics {missing}"
    assert len(names) >= 15
    keys_in_doc = {k for k in FeedConfig.model_fields if f"`{k}`" in doc}
    assert {"poll_after_s", "journal_flush_s", "backoff_stable_s", "reorder_tolerance_ms", "dedupe_keys",
            "max_connects_per_minute", "replay_speed"} <= keys_in_doc


def _capture(run_dir, argv: list[str], want: int) -> tuple[int, list]:
    """Run ``spx`` in-process while a subscriber collects tick frames from the feed socket."""
    runtime = RuntimeConfig(run_dir=run_dir)
    ctx = zmq.Context()
    sub = Subscriber(ctx, [BusConfig().pub_endpoint("feed", runtime)], ["tick."])
    got: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            f = sub.recv(0.1)
            if f is not None:
                got.extend(f.body())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        code = spx_main(argv)
        deadline = time.monotonic() + 5
        while len(got) < want and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(2)
        sub.close()
        ctx.destroy(linger=0)
    return code, got


def test_spx_replay_flat_files_merges_trades_and_quotes(run_dir, monkeypatch, capsys):
    import gzip

    from spx_common.models import Quote

    monkeypatch.setenv("SPX_FEED_REPLAY_START_DELAY_S", "0.5")
    trades = run_dir / "2026-11-20-trades.csv.gz"
    with gzip.open(trades, "wt") as fh:  # the vendor's layout and sample rows, plus SPY and one bad row
        fh.write("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
                 "sip_timestamp,size,tape,trf_id,trf_timestamp\n")
        fh.write('A,"12,37",0,11,52983525035312,1712306654208705342,142.99,3807,1712306654208740096,5,1,0,0\n')
        fh.write("SPY,12,0,11,52983525035314,1712306654429439337,520.5,3809,1712306654429468160,187,1,0,0\n")
        fh.write("SPY,,0,11,x,1712306654429439338,not-a-price,3810,1712306654429468161,1,1,0,0\n")
    quotes = run_dir / "2026-11-20-quotes.csv"
    quotes.write_text("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                      "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n"
                      "SPY,12,520.51,300,11,520.49,200,1,,1712306654429439000,77,1712306654429468160,1,0\n")
    code, got = _capture(run_dir, ["replay", "flatfile", str(trades), str(quotes), "--speed", "max",
                                   "--no-progress"], 3)
    assert code == 0
    assert sorted((e.ts, e.sym, type(e).__name__, e.seq) for e in got) == [
        (1712306654208740096, "A", "Trade", 3807), (1712306654429468160, "SPY", "Quote", 77),
        (1712306654429468160, "SPY", "Trade", 3809)]  # the bad row is skipped, the good ones kept
    spy = [e for e in got if e.sym == "SPY"]
    assert isinstance(spy[0], Quote) and spy[1].cond == [12]  # a quote before a trade with the same time
    assert {e.source for e in got} == {"replay"}
    err = capsys.readouterr().err
    assert "skipped 1 bad rows" in err
    assert spx_main(["replay", "flatfile", str(run_dir / "nope.csv"), "--no-progress"]) == 2


def test_supervised_feed_replays_a_flat_file_directory(run_dir):
    from services.feed.config import FeedConfig
    from services.feed.service import FeedService

    d = run_dir / "flat"
    d.mkdir()
    (d / "q.csv").write_text("ticker,ask_price,ask_size,bid_price,bid_size,sip_timestamp,sequence_number\n"
                             f"SPY,1.01,100,1.00,200,{DAY1},1\nSPY,1.02,100,1.01,200,{DAY1 + 5},2\n")
    svc = FeedService(RuntimeConfig(run_dir=run_dir), BusConfig(),
                      config=FeedConfig(source="flatfile", replay_path=d))
    try:
        src = svc.build_source("flatfile")
        assert [e.seq for e in src.events()] == [1, 2]
    finally:
        svc.ctx.destroy(linger=0)
