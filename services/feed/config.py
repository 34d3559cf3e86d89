"""``[feed]`` configuration: source selection, vendor endpoints, health limits, replay, journal."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from spx_common.config import FeedSourceConfig, env_field


class FeedConfig(FeedSourceConfig):
    """The feed service: where market data enters the mesh (docs/feed.md)."""

    section: ClassVar[str] = "feed"

    ws_url: str = env_field("wss://socket.massive.com", "WebSocket cluster base URL; /stocks, /options, "
                            "/indices are appended (delayed: wss://delayed.massive.com).", "MASSIVE_WS_URL")
    rest_url: str = env_field("https://api.massive.com", "REST base URL.", "MASSIVE_REST_URL")
    stocks: list[str] = Field(["SPY"], description="Stock tickers: trades (T) and quotes (Q).")
    indices: list[str] = Field(["I:SPX"], description="Index tickers: values (V).")
    option_root: str = Field("SPXW", description="Option root of the 0DTE contracts streamed around the money.")
    option_underlying: str = Field("I:SPX", description="Index whose value picks the at-the-money strike.")
    strikes_each_side: int = Field(20, ge=0, le=200, description="Strikes streamed each side of the money.")
    strike_step: float = Field(5.0, gt=0, description="Strike spacing in index points.")
    option_quotes: bool = Field(True, description="Subscribe option quotes (Q) as well as trades (T).")
    max_option_contracts: int = Field(1000, ge=0, le=1000,
                                      description="Vendor limit: option contracts with quotes per connection.")
    resubscribe_strikes: int = Field(2, ge=1, description="Re-center the option set when the ATM strike moved "
                                     "this many strikes from the last center (hysteresis).")
    ping_interval_s: float = Field(20.0, gt=0, description="WebSocket ping period (the vendor has no heartbeat).")
    ping_timeout_s: float = Field(20.0, gt=0, description="Pong wait before the connection is declared dead.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP+TLS+auth handshake limit per attempt.")
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay cap (full jitter below it).")
    backoff_max_s: float = Field(30.0, gt=0, description="Largest reconnect delay cap.")
    backoff_stable_s: float = Field(60.0, gt=0, description="The backoff is reset only after a connection "
                                    "delivered data and stayed up this long (never on auth_success alone).")
    max_connects_per_minute: int = Field(6, ge=1, description="Connection attempts allowed per rolling minute "
                                         "and market; more are delayed and counted (no reconnect storm).")
    raw_queue_max: int = Field(20_000, ge=10, description="Raw frames queued between socket reader and parser; "
                               "when full the oldest are dropped and counted (reason queue_overflow).")
    dedupe_keys: int = Field(500_000, ge=1000, description="Vendor sequence numbers remembered for duplicate "
                             "detection (8 bytes each; when full, each symbol forgets its older half; events "
                             "without one: a tenth of this, in two generations).")
    reorder_tolerance_ms: int = Field(
        2000, ge=0, description="Out-of-order guard: an event older than the symbol's newest event by more than "
        "this is dropped (reason stale); within it, it is published in arrival order.")
    watermark_lag_ms: int = Field(
        0, ge=0, le=60_000, description="The feed's watermark (wm.feed, docs/protocol.md) is its newest event time "
        "minus this: events arriving up to this much behind the newest are still in event-time order for the "
        "aligned consumers (detector) and the bars; each ms is added to their latency live. 0 suits replays "
        "(sorted sources) and a vendor stream in order; a later event is handled as late (counted).")
    watermark_idle_ms: int = Field(
        1000, ge=50, le=60_000, description="Live: a vendor connection silent this long (wall clock) no longer holds "
        "the watermark back; when no event arrived at all for this long, the watermark advances to the wall clock "
        "minus this, on the heartbeat, so a silent stream never stalls the consumers.")
    backfill: bool = Field(True, description="After a reconnect, fetch the gap from REST trades/quotes "
                           "(events marked backfilled=true).")
    backfill_option_contracts: int = Field(82, ge=0, le=1000, description="After an options reconnect, backfill "
                                           "trades of this many contracts nearest the money.")
    backfill_option_quote_contracts: int = Field(
        20, ge=0, le=1000, description="After an options reconnect, backfill quotes of this many subscribed "
        "contracts nearest the money (0: no option quote backfill).")
    backfill_option_quote_max: int = Field(
        5000, ge=1, le=200_000, description="Option quotes fetched per contract and gap at most: the newest are "
        "kept, an older remainder is left and counted (feed_backfill_truncated_total).")
    backfill_max_s: float = Field(600.0, gt=0, description="Longest gap backfilled after a reconnect.")
    restart_backfill_max_s: float = Field(
        600.0, ge=0, description="Live start: when the tick journal's newest event is at most this old and of "
        "today's New York trading date, the gap the previous run left (from each symbol's last journaled event "
        "to the new stream's first event) is backfilled from REST; also capped by backfill_max_s. 0: off.")
    poll_after_s: float = Field(5.0, gt=0, description="Stream silent this long (market hours) -> poll mode.")
    poll_interval_s: float = Field(1.0, gt=0, description="REST poll period in poll mode.")
    poll_market_hours_only: bool = Field(True, description="Only switch to polling 09:30-16:00 New York.")
    passive_cadence_s: float = Field(1.0, gt=0, le=60, description="tick_ingest_passive switch (docs/rollout.md): "
                                     "ticks are journaled but only one conflated frame per symbol is published "
                                     "this often (event time), marked source=poll, like the REST poll fallback.")
    status_interval_s: float = Field(1.0, gt=0, description="FeedStatus period.")
    chain_every_s: float = Field(5.0, gt=0, description="Publish the option chain on chain.<root> this often "
                                 "(event seconds in replay, wall seconds live).")
    replay_speed: str = Field("1", description="Replay speed multiplier (e.g. 1, 10, 0.5) or 'max'.")
    replay_path: Path | None = Field(None, description="source=journal: a .ticks file or journal directory; "
                                       "source=flatfile: a trades/quotes CSV(.gz) file or a directory of them.")
    replay_start_delay_s: float = Field(1.0, ge=0, le=60, description="Wait before the first replayed event so "
                                        "subscribers started alongside the feed are connected (slow joiners).")
    replay_loop: bool = Field(True, description="Synthetic source: continue with the next session at the end.")
    synthetic_seed: int = Field(7, description="Seed of the synthetic session.")
    synthetic_date: str = Field("2026-11-20", description="Date of the (first) synthetic session.")
    synthetic_compress: float = Field(1.0, gt=0, description="Event-time compression of the synthetic day "
                                      "(60 = the whole day in 6.5 event minutes).")
    replay_batch_ms: int = Field(50, ge=0, description="Replay batches events within this much event time "
                                 "(per symbol), like a vendor array.")
    journal: Literal["auto", "on", "off"] = Field("auto", description="Journal published events (auto: live only).")
    journal_flush_s: float = Field(0.25, gt=0, description="Journal flush interval: a crash loses at most this.")
    journal_fsync: bool = Field(False, description="fsync each journal flush (survives machine crash).")
    outlier_guard_pct: float = Field(
        0.0, ge=0, le=100, description="Trade outlier guard (docs/microbars.md): a stock or option print with no "
        "condition priced more than this many percent outside the quote in force (bid and ask > 0) is excluded "
        "from bars and counted (feed_trades_excluded_total{condition=\"outlier\"}). 0: off.")
    flatfile_quote_sizes: Literal["vendor", "shares"] = Field(
        "vendor", description="source=flatfile: vendor - stock quote sizes are the vendor's unit for the file's "
        "date (round lots of 100 before 2025-11-03, multiplied to shares); shares - the files already hold shares "
        "(files converted from another source, e.g. ../shared/data/real).")
    rest_timeout_s: float = Field(10.0, gt=0, description="REST request timeout.")
    rest_retries: int = Field(4, ge=0, le=10, description="Retries of a retryable REST failure (429, 5xx, timeout).")
    rest_requests_per_s: float = Field(50.0, gt=0, description="REST client rate limit (paid plans: stay < 100/s).")
    availability_symbols: list[str] = Field(["I:SPX", "SPY"], description="A price (trade or index value, stream "
                                            "or poll) of any of these makes a regular-session second available "
                                            "(feed_availability_pct, docs/feed.md).")
    availability_stale_s: float = Field(5.0, gt=0, le=300, description="A session second is available when the "
                                        "newest such price is at most this old at its end.")

    @field_validator("replay_speed")
    @classmethod
    def _speed(cls, v: str) -> str:
        v = str(v).strip().lower()
        if v != "max":
            try:
                if float(v) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError("replay_speed must be a positive number or 'max'") from None
        return v

    def speed(self) -> float | None:
        """The multiplier, or None for as fast as possible."""
        return None if self.replay_speed == "max" else float(self.replay_speed)
