"""The aggregator process: ``tick.<sym>`` in; ``bar.<interval>.<sym>`` out; tick/bar queries answered.

Requests (REQ/REP on the aggregator's request socket; shapes are plain maps):

``last {sym}``
    ``{sym, seq, trade, quote, value}``: last trade, quote and index value, and the cache's
    per-symbol sequence number.
``ticks_since {sym, seq?, since_ns?, limit?}``
    ``{sym, seq, events: [{seq, event}], truncated}``: cached events after a cache sequence or
    at/after an event time (``truncated`` when older events were already evicted).
``bars_since {sym, interval, since_ns?, limit?}``
    ``{sym, interval, bars: [...closed bars...], current: in-progress bar | null, topic_seq}``.
    ``topic_seq`` is the sequence number of the last frame published on ``bar.<interval>.<sym>``
    when the snapshot was taken: a client applies live frames with a larger seq and drops the
    rest, which stitches snapshot and stream with no gap and no duplicate.
``symbols {}``
    tracked symbols with cache sizes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import msgspec

from services.aggregator.bars import COMPILED, NOT_COMPILED_WHY, BarAggregator
from services.aggregator.cache import BarRing, TickCache
from services.aggregator.config import AggregatorConfig
from spx_common import journal
from spx_common.align import FINAL_NS
from spx_common.bus import RpcError
from spx_common.codec import Frame, FrameError
from spx_common.config import load
from spx_common.marketrules import TradeRules
from spx_common.calendar import ET
from spx_common.models import MicroBar
from spx_common.service import BusService
from spx_common.topics import TICK, WATERMARK, bar_topic

_ENCODER = msgspec.msgpack.Encoder()


class Aggregator(BusService):
    """Cache/aggregator: bounded tick cache and 1s/5s microbars with quote microstructure.

    The live path reads ``ticks`` bodies as bytes: frames are accepted on their header (``lazy_ticks``) and
    the bar core (:data:`~services.aggregator.bars.BarAggregator`) parses the body itself, aggregates it and
    holds each event's bytes for the tick cache, with no Python object per event. A body the core does not
    take is decoded and validated as every frame is (a bad one is refused and counted), re-encoded and fed.
    """

    name = "aggregator"
    watermarks = True
    subscriptions = {"feed": [TICK, WATERMARK]}
    lazy_ticks = True

    def __init__(self, *args, config: AggregatorConfig | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.cfg = config or load(AggregatorConfig)
        self.cache = TickCache(self.cfg.cache_window_s * 1_000_000_000, self.cfg.cache_max_events,
                               max_bytes=self.cfg.cache_max_mb << 20)
        self.agg = self._new_aggregator(self.cfg.l2_microstructure and self.flag_store.get("l2_microstructure"))
        self.cache.core = self.agg
        self.bars: dict[tuple[str, str], BarRing] = {}  # closed bars per (symbol, interval), encoded
        #: what the start-up warm-up read (``status`` RPC ``warm_up``; :meth:`warm_up`)
        self.warmup: dict[str, Any] = {"state": "off"}
        m = self.metrics
        self.events_in = m.counter("aggregator_events_total", "Market events aggregated.")
        self.bars_out = m.counter("aggregator_bars_closed_total", "Closed bars published.", ["interval"])
        self.late = m.gauge("aggregator_late_events", "Events for an already closed bar (counted, dropped).")
        self.gaps_unfilled = m.gauge("aggregator_gaps_unfilled", "Gaps longer than max_gap_bars buckets that "
                                     "fill_gaps left unfilled (a session break).")
        self.fallback_frames = m.counter(
            "aggregator_fallback_frames_total", "ticks frames whose body the bar core did not take as bytes, decoded "
            "and validated with msgspec instead (several times slower per event); 0 in a healthy mesh: a publisher "
            "that encodes ticks otherwise than msgspec, or a bar core whose tick reader lags models.py")
        self.progress_out = m.counter("aggregator_bar_updates_total", "In-progress bar updates published.")
        self.cache_size = m.gauge("aggregator_cache_events", "Events held by the tick cache.")
        self.cache_bytes = m.gauge("aggregator_cache_bytes", "Bytes of msgpack batches held by the tick cache "
                                   "(bound: cache_max_mb).")

    def _new_aggregator(self, l2: bool) -> BarAggregator:
        return BarAggregator(self.cfg.intervals, l2=l2, fill_gaps=self.cfg.fill_gaps,
                             allowed_lateness_ns=self.cfg.allowed_lateness_ms * 1_000_000,
                             max_symbols=self.cfg.max_symbols, max_gap_bars=self.cfg.max_gap_bars,
                             on_hold=self.cache.add_body)

    def setup(self) -> None:
        if not COMPILED:
            self.log.warning("bar core: pure Python (%s)", NOT_COMPILED_WHY)
        if self.cfg.warmup_from_journal:
            self.warm_up()
        self.on(TICK, self.on_ticks, raw=True)
        self.on(WATERMARK, self.on_watermark)
        self.rpc("last", lambda p: self.cache.last(_sym(p)))
        self.rpc("ticks_since", self.rpc_ticks_since)
        self.rpc("bars_since", self.rpc_bars_since)
        self.rpc("symbols", lambda p: self.cache.symbols())

    # ------------------------------------------------------------------ data path

    def on_ticks(self, frame: Frame, body: None) -> None:
        """Raw handler of ``tick.`` frames (the body is not decoded by the dispatcher)."""
        agg = self.agg
        at = frame.body_at
        n = agg.feed(frame.payload, at) if at >= 0 else -1
        if n < 0:  # not a body the core takes as it is (or not a lazily decoded frame): validate, re-encode
            try:
                events = frame.body()
            except FrameError as exc:
                self.refuse(frame, exc)
                return
            self.fallback_frames.inc()
            self._rate_log.warning("fallback", f"the bar core did not take a valid {frame.type} body as bytes, on "
                                   f"{frame.topic} from {frame.src}: decoded with msgspec "
                                   "(aggregator_fallback_frames_total)", topic=frame.topic)
            n = agg.feed(_ENCODER.encode(events))
            if n < 0:  # a body that validated, refused by the core even in msgspec's encoding: count, go on
                self.handler_errors.inc(topic=TICK)
                self._rate_log.warning("unfed", f"the bar core did not take a {frame.type} body that validated, "
                                       f"on {frame.topic} from {frame.src}", topic=frame.topic)
                return
        self.events_in.inc(n)
        if agg.watermark >= agg.next_due:
            agg.advance(agg.watermark)
        if agg.closed:
            self._publish_closed()

    def on_watermark(self, frame: Frame, wm) -> None:
        """The feed's watermark ``F``: no event before ``F`` will come, so every bar ending at or before ``F`` is
        complete: close and publish them now (not ``allowed_lateness`` after the newest event), then pass the
        promise on: every bar this process publishes later ends after ``F`` (``wm.aggregator``; docs/protocol.md)."""
        agg = self.agg
        f = wm.ns
        lateness = agg.allowed_lateness_ns
        if f + lateness >= agg.next_due:
            newest = agg.watermark
            agg.advance(f + lateness)  # closes bars whose end + lateness <= f + lateness
            # the core's watermark is the newest event time seen (bar frames carry it): not the promise
            agg.watermark = newest if f >= FINAL_NS else max(newest, f)
        if agg.closed:
            self._publish_closed()
        self.publish_watermark(f)

    def _keep(self, bar: MicroBar) -> None:
        """Add a closed bar to its series' history (``bars_since``)."""
        ring = self.bars.get((bar.sym, bar.interval))
        if ring is None:
            ring = self.bars[(bar.sym, bar.interval)] = BarRing(self.cfg.bars_kept)
        ring.append(bar)

    def _publish_closed(self) -> None:
        counts: dict[str, int] = {}
        keep, publish, wm = self._keep, self.publish, self.agg.watermark
        for bar in self.agg.drain():
            keep(bar)
            publish(bar_topic(bar.interval, bar.sym), "bar", bar, wm)
            counts[bar.interval] = counts.get(bar.interval, 0) + 1
        for interval, n in counts.items():
            self.bars_out.inc(n, interval=interval)

    async def main(self) -> None:
        period = self.cfg.progress_ms / 1000
        while not self.stop_event.is_set():
            await asyncio.sleep(period)
            for sym in self.agg.take_dirty():
                for interval, _ in self.agg.intervals:
                    bar = self.agg.current(sym, interval)
                    if bar is not None:
                        self.publish(bar_topic(interval, sym), "bar", bar, self.agg.watermark)
                        self.progress_out.inc()

    def periodic(self) -> None:
        self.late.set(self.agg.late)
        self.gaps_unfilled.set(self.agg.gaps_unfilled)
        self.cache_size.set(self.cache.size())
        self.cache_bytes.set(self.cache.bytes)
        self.detail = (f"{self.agg.symbol_count()} symbols, watermark {watermark_text(self.agg.watermark)}, "
                       f"bars {'compiled' if COMPILED else 'pure Python'}"
                       f"{'' if COMPILED or NOT_COMPILED_WHY == 'not built' else ': compiled core out of date'}")

    def on_flags(self, changed: dict) -> None:
        if "l2_microstructure" in changed:
            # takes effect from the next bar: bars already open keep their accumulators
            self.agg.l2 = bool(changed["l2_microstructure"]) and self.cfg.l2_microstructure

    async def drain(self) -> None:
        self._publish_closed()

    # ------------------------------------------------------------------ warm-up and queries

    def warm_up(self) -> int:
        """Rebuild the tick cache and recent bars from the end of the newest journal day (nothing is
        republished); returns the events read.

        Reads at most ``warmup_max_mb`` (default 64 MiB; unset: ``cache_max_mb``) from the end of
        the day (:func:`spx_common.journal.iter_tail`), batch by batch, so a restart costs the same on a
        day of gigabytes as on a small one. What was read is logged and kept in :attr:`warmup` (the
        ``status`` RPC's ``warm_up``).

        Bars: those rebuilt are exactly the bars of the events read (``bars_from_events`` of that slice).
        When the day is longer than the bound, a bar also equals the one a whole-day read (and ``spx bars
        --journal``) makes when its bucket starts after ``first_ns`` + D (``first_ns``: the oldest event
        time of the first record read; D: how much newer an event journaled before another can be, the
        feed's ``reorder_tolerance_ms`` outside backfills) and, for a symbol with quotes, after its first
        quote read (the quote in force at a bar's start). Earlier bars of the tail may miss events or
        quote context; they are served as they are (docs/reliability.md, failure modes).
        """
        directory = self.runtime.path("journal")
        files = journal.journal_files(directory) if directory.is_dir() else []
        if not files:
            self.warmup = {"state": "empty", "day": None}
            return 0
        day = dt.date.fromisoformat(files[-1].name.split(".")[0])
        stats = journal.TailStats()
        t0 = time.monotonic()
        agg, encode = self.agg, _ENCODER.encode
        # A journal record holds every symbol of one vendor batch: the core takes it as a live body (bars, and
        # each symbol's events held and handed to the cache in runs, as a live option root's batch)
        unfed = 0
        rules = TradeRules()  # a journal written before the trade rules carries no flags: the feed's rule, applied
        for batch in journal.iter_tail(directory, day, self.cfg.warmup_max_bytes, stats):
            rules.apply(batch)
            if agg.feed(encode(batch)) < 0:  # msgspec's own encoding of decoded events: never, unless a core bug
                unfed += len(batch)
        if unfed:
            self.log.warning("warm-up: the bar core refused %d journal events", unfed)
        agg.hold_flush()
        agg.take_dirty()  # nothing is republished: the warmed symbols are not "updated since the last tick"
        for bar in agg.drain():
            self._keep(bar)
        seconds = round(time.monotonic() - t0, 3)
        self.warmup = {
            "state": "partial" if stats.partial else "whole_day", "day": day.isoformat(),
            "max_bytes": self.cfg.warmup_max_bytes, "bytes": stats.bytes_read, "records": stats.records,
            "events": stats.event_count, "first_ns": stats.first_ns, "oldest_ns": stats.oldest_ns,
            "newest_ns": stats.newest_ns, "span_s": round((stats.newest_ns - stats.oldest_ns) / 1e9, 3),
            "resynced": stats.resynced, "skipped_bytes": stats.skipped_bytes, "torn": stats.torn,
            "corrupt": stats.corrupt, "parts": stats.parts, "seconds": seconds,
        }
        self.log.info("warm-up from journal %s: %.1f MiB of %s (%s), %d events over %.1f s of event time, "
                      "%.2f s%s%s", day, stats.bytes_read / (1 << 20), "its tail" if stats.partial else "the day",
                      ", ".join(stats.parts) or "no part", stats.event_count, self.warmup["span_s"], seconds,
                      f", resynchronised after {stats.skipped_bytes} bytes" if stats.resynced else "",
                      f", {stats.torn} torn and {stats.corrupt} corrupt records skipped"
                      if stats.torn or stats.corrupt else "", extra=self.warmup)
        return stats.event_count

    def status(self) -> dict[str, Any]:
        return {**super().status(), "warm_up": self.warmup, "watermark_ns": self.agg.watermark}

    def rpc_ticks_since(self, p: dict) -> dict:
        limit = _int(p, "limit", 10_000, 1, 100_000)
        return self.cache.since(_sym(p), seq=_opt_int(p, "seq"), ts_ns=_opt_int(p, "since_ns"), limit=limit)

    def rpc_bars_since(self, p: dict) -> dict:
        sym = _sym(p)
        interval = p.get("interval", "1s")
        if interval not in dict(self.agg.intervals):
            raise RpcError("bad_request", f"interval {interval!r} not aggregated; have {self.cfg.intervals}")
        since = _opt_int(p, "since_ns") or 0
        limit = _int(p, "limit", 1000, 1, 100_000)
        ring = self.bars.get((sym, interval))
        bars = ring.since(since, limit) if ring is not None else []
        return {"sym": sym, "interval": interval, "bars": bars, "current": self.agg.current(sym, interval),
                "topic_seq": self.pub.last_seq(bar_topic(interval, sym)) if self.pub else 0}


def _sym(p: dict) -> str:
    sym = p.get("sym")
    if not isinstance(sym, str) or not sym:
        raise RpcError("bad_request", "'sym' (a symbol such as SPY or I:SPX) is required")
    return sym


def _opt_int(p: dict, key: str) -> int | None:
    v = p.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise RpcError("bad_request", f"{key!r} must be an integer")
    return v


def _int(p: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = _opt_int(p, key)
    if v is None:
        return default
    if not lo <= v <= hi:
        raise RpcError("bad_request", f"{key!r} must be in [{lo}, {hi}]")
    return v


def watermark_text(ns: int) -> str:
    """The event-time watermark as an operator reads it in ``spx status``: ``09:30:03.358 ET 2026-11-20``
    (``-`` before the first event, ``final`` once the input has ended)."""
    if not ns:
        return "-"
    if ns >= FINAL_NS:
        return "final"
    t = dt.datetime.fromtimestamp(ns / 1e9, ET)
    return f"{t:%H:%M:%S}.{t.microsecond // 1000:03d} ET {t:%Y-%m-%d}"
