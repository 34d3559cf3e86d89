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
