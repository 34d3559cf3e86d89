"""Feed-side chaos against the fake Massive server while the vendor keeps trading.

A vendor thread trades SPY every 20 ms: each trade goes to the REST history at once and to the
stream when a connection is open (as at the real vendor, a trade made while we are disconnected is
only in REST). Against that stream: a disconnect storm, a stall (no pongs), REST 429/500 bursts
while the gap is backfilled, a silent stream with failing polls, and finally an auth failure.

What must hold: the feed reconnects by itself after every fault, the gap is backfilled so every
trade the vendor made is published exactly once (nothing lost, nothing twice), every fault is
counted, the status frames report it, and an auth failure stops retrying and reports why.
"""

from __future__ import annotations

import threading
import time


from spx_common.models import Trade
from tests.conftest import eventually
from spx_testing.fakes.massive import FakeMassive
from tests.feed.helpers import RunningFeed


class Vendor(threading.Thread):
    """Trades SPY every ``every_s``: always into REST history, onto the stream when connected."""

    def __init__(self, fake: FakeMassive, every_s: float = 0.02, per_batch: int = 3) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.every_s = every_s
        self.per_batch = per_batch
        self.seq = 0
        self.streamed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        self.fake.trades.setdefault("SPY", [])
        while not self.halt.is_set():
            t = time.time_ns()
            batch = []
            for _ in range(self.per_batch):
                self.seq += 1
                batch.append(Trade(sym="SPY", price=590 + (self.seq % 50) / 100, size=1, ts=t, seq=self.seq,
                                   exch=4))
            with self.fake._lock:
                self.fake.trades["SPY"].extend(batch)
            try:
                if self.fake.push("stocks", batch):
                    self.streamed += len(batch)
            except Exception:  # noqa: BLE001 - the fake's loop is busy aborting a connection
                pass
            time.sleep(self.every_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def _metric(feed: RunningFeed, name: str, **labels) -> float:
    return feed.service.metrics.counter(name, "", list(labels)).value(**labels)


def test_disconnect_storm_stall_rest_bursts_and_auth_failure(run_dir, fake):
    opts = dict(source="live", api_key="k", ws_url=fake.ws_url, rest_url=fake.rest_url, backoff_initial_s=0.05,
                backoff_max_s=0.3, backoff_stable_s=0.5, max_connects_per_minute=30, poll_after_s=1.0,
                poll_interval_s=0.2, poll_market_hours_only=False, chain_every_s=60, ping_interval_s=0.5,
                ping_timeout_s=0.5, connect_timeout_s=2, rest_retries=4, rest_timeout_s=2, journal="off")
    vendor = Vendor(fake)
    with RunningFeed(run_dir, **opts) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        vendor.start()
        try:
            spy = lambda: [e for e in feed.events("tick.SPY") if isinstance(e, Trade)]  # noqa: E731
            eventually(lambda: len(spy()) > 20, 5, what="streamed SPY trades")

            marks = {"start": time.time_ns()}
            # 1. disconnect storm: the connection is cut six times in a row
            for k in range(6):
                before = fake.connects["stocks"]
                fake.drop("stocks")
                eventually(lambda before=before: fake.connects["stocks"] > before and fake.connected("stocks"), 5,
                           what=f"reconnect {k + 1} of the storm")
                fake.wait_subscribed("stocks", "T.SPY", 5)

            marks["storm_done"] = time.time_ns()
            # 2. stall: the server stops reading (no pongs); the ping timeout leaves it
            before = fake.connects["stocks"]
            fake.stall("stocks", 3.0)
            eventually(lambda: fake.connects["stocks"] > before and fake.connected("stocks"), 8,
                       what="reconnect after the stall")

            marks["stall_done"] = time.time_ns()
            # 3. REST 429/500 burst while the next gap is backfilled: retried, then the gap is filled
            retries0 = _metric(feed, "rest_retries_total")
            fake.fail_next("/v3/trades", 429, 500, 429)
            before = fake.connects["stocks"]
            fake.drop("stocks")
            eventually(lambda: fake.connects["stocks"] > before and fake.connected("stocks"), 15, what="reconnect")
            eventually(lambda: _metric(feed, "rest_retries_total") >= retries0 + 3, 10,
                       what="the 429/500 burst retried")

            # nothing lost, nothing twice: every trade the vendor made is published exactly once
            vendor.stop()
            made = set(range(1, vendor.seq + 1))
            try:
                eventually(lambda: {e.seq for e in spy()} >= made, 15, what="every vendor trade published")
            except AssertionError:
                missing = sorted(made - {e.seq for e in spy()})
                ts = {e.seq: e.ts for e in fake.trades["SPY"]}
                rel = {k: round((v - marks["start"]) / 1e9, 2) for k, v in marks.items()}
                raise AssertionError(f"lost {len(missing)} of {len(made)} trades: {missing[:5]}..{missing[-5:]} "
                                     f"at {(ts[missing[0]] - marks['start']) / 1e9:.2f}.."
                                     f"{(ts[missing[-1]] - marks['start']) / 1e9:.2f} s; marks {rel}") from None
            seqs = [e.seq for e in spy()]
            assert len(seqs) == len(set(seqs)), "a trade was published twice"
            assert set(seqs) == made
            assert any(e.backfilled for e in spy()), "the gaps were filled from REST"

            # every fault counted and reported
            reconnects = _metric(feed, "feed_reconnects_total", market="stocks")
            assert reconnects >= 8
            assert _metric(feed, "feed_disconnects_total", market="stocks") >= 8
            assert _metric(feed, "rest_requests_total", outcome="retryable") >= 3 or \
                _metric(feed, "rest_retries_total") >= 3
            eventually(lambda: any(s.reconnects >= 8 and s.mode == "tick" and s.connected
                                   for s in feed.bodies("status.feed")), 5, what="status reports the reconnects")

            # 4. silent stream with failing polls: poll mode, the poll errors are retried, the stream returns
            fake.quotes["SPY"] = []
            fake.fail_next("/v2/last/trade", 500, 429)
            eventually(lambda: any(s.mode == "poll" for s in feed.bodies("status.feed")), 8, what="poll mode")
            eventually(lambda: any(e.source == "poll" for e in feed.events("tick.SPY")), 8, what="polled trade")
            n = len(feed.bodies("status.feed"))
            fake.push("stocks", [Trade(sym="SPY", price=591, size=1, ts=time.time_ns(), seq=10**6)])
            eventually(lambda: any(s.mode == "tick" for s in feed.bodies("status.feed")[n:]), 5,
                       what="back to tick mode on the first stream event")

            # 5. auth failure on reconnect: reported, counted, and no retry loop
            fake.reject_auth = True
            before = fake.connects["stocks"]
            fake.drop("stocks")
            eventually(lambda: feed.service.live.fatal, 5, what="auth failure seen")
            eventually(lambda: any(s.mode == "down" and "auth_failed" in s.detail
                                   for s in feed.bodies("status.feed")), 5, what="status reports auth_failed")
            assert _metric(feed, "feed_vendor_status_total", status="auth_failed") >= 1
            attempts = fake.connects["stocks"]
            time.sleep(1.0)  # several backoff periods: no further attempt
            assert fake.connects["stocks"] == attempts == before + 1
        finally:
            vendor.stop()
