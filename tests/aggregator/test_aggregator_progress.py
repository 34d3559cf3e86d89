"""In-progress bar updates leave the live service at a bounded rate; the closed bar leaves once."""

import time

from spx_common.models import Trade
from tests.aggregator.rig import aggregator_process

S = 1_000_000_000
T0 = 1_795_185_000 * S


def test_in_progress_updates_are_rate_bounded_and_close_once(run_dir):
    env = {"SPX_AGGREGATOR_PROGRESS_MS": "200", "SPX_AGGREGATOR_INTERVALS": '["5s"]'}
    with aggregator_process(run_dir, ["bar.5s.SPY"], env) as (feed, _, sub):
        # 1.2 s of wall time, 600 frames, all inside one 5 s event-time bucket
        t_start = time.monotonic()
        for i in range(600):
            ts = T0 + i * 1_000_000
            feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=590.0 + i % 5 * 0.01, size=1, ts=ts)], ts)
            time.sleep(0.002)
        wall = time.monotonic() - t_start
        time.sleep(0.5)
        feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=591.0, size=1, ts=T0 + 6 * S)], T0 + 6 * S)
        progress, closed = [], []
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:
            frame = sub.recv(1)
            if frame is not None:
                bar = frame.body()
                (closed if bar.closed else progress).append(bar)
        assert len(closed) == 1 and closed[0].trades == 600 and closed[0].start_ns == T0
        # at most one update per 200 ms (plus the edges), far fewer than the 600 frames
        assert 1 <= len(progress) <= wall / 0.2 + 4
        assert [b.trades for b in progress] == sorted(b.trades for b in progress)
        later = []
        while (frame := sub.recv(0.3)) is not None:
            later.append(frame.body())
        assert not any(b.closed and b.start_ns == T0 for b in later)  # closed exactly once
