"""Live ingest: Massive streams -> parser -> pipeline, with poll fallback, gap backfill and ATM tracking.

This module is the I/O shell: sockets, REST calls, tasks and clocks. The policy (when to poll, when to
re-centre the option subscription, what a gap fetches and from when, merging gaps) is the sans-I/O
:class:`~services.feed.livecore.LiveCore`: the shell tells it what happened (stream events, a
reconnect, a watchdog tick, a poll answer, an index value) and carries out the actions it answers
(:class:`SetMode`, :class:`Poll`, :class:`Resubscribe`, :class:`Backfill`, :class:`GapMerged`).

Tasks (all owned by :class:`LiveIngest`, started by ``FeedService.main``):

* one :class:`~services.feed.ws.MassiveStream` per market: ``stocks`` (``T.``/``Q.`` of each
  stock), ``indices`` (``V.`` of each index), ``options`` (``T.``/``Q.`` of the 0DTE contracts
  within ``strikes_each_side`` of the at-the-money strike, at most ``max_option_contracts``);
* the consumer: drains the raw-frame queue, parses, handles status messages, feeds
  :meth:`FeedService.ingest`, tracks the ATM strike (re-subscribing when it moved
  ``resubscribe_strikes`` strikes: hysteresis, so a price hovering on a boundary does not churn);
* the watchdog: when no stream event arrived for ``poll_after_s`` (during the regular session of
  a trading day by the exchange calendar, :mod:`spx_common.calendar`, unless configured otherwise;
  "now" is the last stream event's time plus the silence) the feed switches to ``poll`` mode and
  polls REST last trade / NBBO / index snapshot every ``poll_interval_s`` (``source="poll"``); the
  first stream event, or the session's close, switches it back to ``tick``.  Each switch
  publishes a ``FeedStatus`` at once;
* backfill: after a reconnect (or a raw-queue overflow), the gap ``[last event, reconnect)`` (at
  most ``backfill_max_s``) is fetched from REST: trades and quotes of the stocks, 1-second index
  aggregates, trades of the ``backfill_option_contracts`` and quotes of the
  ``backfill_option_quote_contracts`` subscribed option contracts nearest the money (the newest
  ``backfill_option_quote_max`` quotes per contract: an older remainder is left and reported).
  Each symbol's events are published in event-time order with ``source="backfill",
  backfilled=True``; the pipeline's dedupe removes what the stream already delivered.  Every gap
  is counted (``feed_backfill_*``) and summarised on ``status.backfill``;
* the restart gap: at a live start, the gap the previous run left (from each symbol's newest event in
  the tick journal read back, :func:`spx_common.journal.read_journal_tail`, to the new stream's first
  event) is backfilled the same way when that run is recent (``restart_backfill_max_s``) and of the
  same trading day; the dedupe is first seeded with the journaled events and with what the
  aggregator's tick cache holds, so what the mesh already has is not published again
  (``_prepare_restart``, docs/feed.md);
* the chain poller: every ``chain_every_s`` the 0DTE chain snapshot around the money is published
  on ``chain.<root>`` like the synthetic source does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from typing import Any

import msgspec

from spx_common.calendar import ET
from spx_common import journal
from spx_common.bus import RpcError
from spx_common.journal import read_journal_tail
from spx_common.models import IndexValue, MarketEvent
from spx_common.topics import STATUS_BACKFILL

from services.feed.livecore import (WARN_STATUSES, Action, Backfill, Gap, GapMerged, LiveCore, Poll, Resubscribe,
                                    SetMode, fetch_kinds, gap_summary, in_market_hours, option_topics)
from services.feed.parsing import MassiveParser, chain_contracts
from services.feed.rest import MassiveRest, RestError
from services.feed.ws import AuthFailed, MassiveStream


#: journal bytes read back at a live start to find where the previous run's data ends (newest parts of
#: today, newest first; :func:`spx_common.journal.read_journal_tail`): ~3 s of events at 50,000/s (~100 bytes
#: an event), decoded in ~0.1 s
RESUME_TAIL_BYTES = 16 << 20
#: wall time a live start spends asking the aggregator which events of the previous run it holds
RESUME_AGGREGATOR_BUDGET_S = 1.0


class LiveIngest:
    """See module docstring."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        cfg = self.cfg = service.cfg
        m = service.metrics
        self.rest = MassiveRest(cfg.rest_url, cfg.api_key, timeout_s=cfg.rest_timeout_s, retries=cfg.rest_retries,
                                requests_per_s=cfg.rest_requests_per_s, registry=m)
        self.parser = MassiveParser("tick")
        self.raw: deque = deque(maxlen=cfg.raw_queue_max)
        self.wake = asyncio.Event()
        self._counters = {
            "feed_reconnects_total": (service.m_reconnects, "market"),
            "tick_drop_count": (service.m_drops, "reason"),
            "feed_vendor_status_total": (m.counter("feed_vendor_status_total", "Vendor status messages.",
                                                   ["status"], max_series=32), "status"),
            "feed_connect_throttled_total": (m.counter("feed_connect_throttled_total", "Connection attempts delayed "
                                                       "by the per-minute limit.", ["market"]), "market"),
            "feed_disconnects_total": (m.counter("feed_disconnects_total", "Connections lost.", ["market"]), "market"),
        }
        self.m_backfilled = m.counter("feed_backfilled_events_total", "Events published from REST after a gap "
                                      "(reconnect or queue overflow), after dedupe.")
        self.m_backfill_fetched = m.counter("feed_backfill_fetched_total", "Events fetched from REST for a gap, by "
                                            "kind (trade, quote, index, option_trade, option_quote).", ["kind"])
        self.m_overlap = m.counter("feed_backfill_overlap_total", "Backfilled events the stream had already "
                                   "delivered (removed by the dedupe).", ["market"])
        self.m_truncated = m.counter("feed_backfill_truncated_total", "Gaps of one contract whose option quotes "
                                     "exceeded backfill_option_quote_max (older ones left).", ["kind"])
        self.m_gaps_merged = m.counter("feed_backfill_gaps_merged_total", "Gaps merged into the gap already "
                                       "waiting behind a running backfill of the same market.", ["market"])
        self.m_backfill_failed = m.counter("feed_backfill_failed_total", "REST fetches of a gap that failed after "
                                           "the bounded retries, by kind.", ["kind"])
        #: market -> summary of its last backfilled gap (also published on status.backfill)
        self.last_backfill: dict[str, dict[str, Any]] = {}
        #: the policy (sans-I/O): polling, fatal, ATM centre, gaps, option quote refusal
        self.core = LiveCore(cfg, last_stream_wall=time.monotonic())
        self.m_poll = m.counter("feed_poll_events_total", "Events published from REST polling.")
        self.m_contracts = m.gauge("feed_option_contracts", "Option contracts subscribed.")
        self.streams: dict[str, MassiveStream] = {}
        for market in ("stocks", "indices", "options"):
            self.streams[market] = MassiveStream(market, cfg, self.raw, self.wake, on_connected=self._connected,
                                                 on_reconnect=self._reconnected, count=self._count)
        self.streams["stocks"].topics = {f"{ev}.{s}" for s in cfg.stocks for ev in ("T", "Q")}
        self.streams["indices"].topics = {f"V.{s}" for s in cfg.indices}
        self._parse_seen: dict[str, int] = {}
        self._unknown_seen: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._backfills: set[asyncio.Task] = set()
        self._backfill_slots = asyncio.Semaphore(4)
        self._gap_order: dict[str, asyncio.Lock] = {}  # market -> its gaps are filled one at a time, in order
        self._overflow_marks: dict[str, tuple[int, dict[str, int]]] = {}
        for s in self.streams.values():
            s.on_overflow = self._overflowed
        #: the restart gap (see ``_prepare_restart``): what was found and done, for the ``status`` RPC
        self.restart: dict[str, Any] = {"state": "off"}
        #: markets whose restart gap waits for their first stream event, and the events that wake them
        self._first_pending: set[str] = set()
        self._first_event: dict[str, asyncio.Event] = {m: asyncio.Event() for m in self.streams}

    # the core's state, read by the status RPC and the tests
    @property
    def polling(self) -> bool:
        return self.core.polling

    @property
    def fatal(self) -> str:
        return self.core.fatal

    @property
    def atm_center(self) -> float | None:
        return self.core.atm_center

    @property
    def option_quotes_refused(self) -> str:
        return self.core.option_quotes_refused

    def _act(self, actions: list[Action]) -> list:
        """Carry out the core's actions; returns the awaitables of those that do I/O (poll, resubscribe),
        which the caller awaits in order (callbacks that cannot await get none)."""
        pending = []
        for a in actions:
            if isinstance(a, SetMode):
                self.svc.set_mode(a.mode, a.detail)
            elif isinstance(a, Poll):
                pending.append(self._poll_once())
            elif isinstance(a, Resubscribe):
                self.m_contracts.set(a.contracts)
                pending.append(self.streams["options"].set_topics(set(a.topics)))
            elif isinstance(a, Backfill):
                self._start_backfill(a.gap)
            elif isinstance(a, GapMerged):
                self.m_gaps_merged.inc(market=a.market)
        return pending

    async def _apply(self, actions: list[Action]) -> None:
        for aw in self._act(actions):
            await aw

    @property
    def _last_ts(self) -> dict[str, int]:
        """Newest published event time per symbol (the pipeline tracks it): where a gap starts."""
        return self.svc.pipeline.newest

    def _count(self, name: str, label: str) -> None:
        c = self._counters.get(name)
        if c is not None:
            c[0].inc(**{c[1]: label})

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        stop = self.svc.stop_event
        # spawned through the service: an unexpected exception is logged and stops the process
        # (supervisord restarts it) instead of silently ending ingestion
        spawn = self.svc.spawn
        # before the streams start: the journal read back must hold only the previous run's events
        await self._prepare_restart()
        for market in sorted(self._first_pending):
            self._tasks.append(spawn(self._restart_gap(market), f"restart-gap-{market}"))
        for market, stream in self.streams.items():
            self._tasks.append(spawn(self._stream_task(stream, stop), f"ws-{market}"))
        self._tasks += [spawn(self._consume(stop), "consume"), spawn(self._watchdog(stop), "watchdog"),
                        spawn(self._chain_loop(stop), "chain")]
        await stop.wait()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._backfills, return_exceptions=True)

    async def _stream_task(self, stream: MassiveStream, stop: asyncio.Event) -> None:
        try:
            await stream.run(stop)
        except AuthFailed as exc:
            self.svc.log.error("%s - the feed stays down (no retry loop); fix the key and restart", exc)
            self.svc.connected = False
            self._act(self.core.failed(str(exc), f"auth_failed: {stream.last_error}"))
            # the other streams use the same key: they fail the same way, once each, and stop

    async def close(self) -> None:
        for s in self.streams.values():
            await s.close()
        await self.rest.aclose()

    def status(self) -> dict[str, Any]:
        return {
            "fatal": self.fatal,
            "polling": self.polling,
            "atm_center": self.atm_center,
            "raw_queue": len(self.raw),
            "backfill": {"last": self.last_backfill, "option_quotes_refused": self.option_quotes_refused,
                         "restart": self.restart},
            "streams": {m: {"connected": s.connected, "topics": len(s.topics), "acked": len(s.acked),
                            "reconnects": s.reconnects, "last_error": s.last_error,
                            "last_status": s.last_status, "evictions": s.evictions} for m, s in self.streams.items()},
        }

    def periodic(self) -> None:
        self.svc.reconnects = sum(s.reconnects for s in self.streams.values())
        self.svc.connected = any(s.connected for s in self.streams.values())
        for reason, n in self.parser.errors.items():
            d = n - self._parse_seen.get(reason, 0)
            if d:
                self.svc.m_parse.inc(d, reason=reason)
                self._parse_seen[reason] = n
        for ev, n in self.parser.unknown.items():
            d = n - self._unknown_seen.get(ev, 0)
            if d:
                self.svc.m_unknown.inc(d, ev=ev)
                self._unknown_seen[ev] = n
        self._act(self.core.periodic(self.svc.connected, self._errors()))

    def _errors(self) -> str:
        return "; ".join(f"{m}: {s.last_error}" for m, s in self.streams.items() if s.last_error)[:300]

    # ------------------------------------------------------------------ stream callbacks

    def _connected(self, stream: MassiveStream) -> None:
        self.svc.connected = True
        self._act(self.core.connected())

    def _overflowed(self, stream: MassiveStream, recv_ns: int) -> None:
        """First drop since the last catch-up: remember where each symbol's published data ends.

        A symbol with nothing published yet starts one ping period before the dropped frame arrived.
        """
        if stream.market not in self._overflow_marks:
            self._overflow_marks[stream.market] = (self.core.overflow_start(recv_ns), dict(self._last_ts))

    def _reconnected(self, stream: MassiveStream, down_since_ns: int,
                     last_ts: dict[str, int] | None = None) -> dict[str, int] | None:
        """Backfill a gap of ``stream`` that began at ``down_since_ns`` (wall ns).

        ``last_ts`` (queue overflow, feed restart) is the exact per-symbol end of what was published
        before the gap (``down_since_ns`` for symbols it lacks); after a reconnect the window starts at
        most one ping period before the loss was seen. Returns the window start per symbol (None: no
        backfill); the window ends now.
        """
        starts, actions = self.core.gap(stream.market, stream.topics, down_since_ns, time.time_ns(), self._last_ts,
                                        last_ts)
        self._act(actions)
        return starts

    def _start_backfill(self, gap: Gap) -> None:
        task = asyncio.ensure_future(self._backfill_gap(gap))
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)
        task.add_done_callback(lambda _t: self.core.gap_started(gap))  # cancelled before its turn: not waiting

    # ------------------------------------------------------------------ the gap a feed restart leaves

    async def _prepare_restart(self) -> None:
        """Live start: find where the previous run's published data ends; arm one backfill per market.

        Done when ``backfill`` is on, ``restart_backfill_max_s`` > 0, the journal is on and its newest
        event is of today's New York trading date and at most ``restart_backfill_max_s`` old. Each
        symbol's gap starts at its newest journaled event minus ``reorder_tolerance_ms`` (events within
        the tolerance may have been journaled out of order), but not before the oldest event read back;
        a symbol absent from the journal read back starts at the oldest event read. The dedupe is seeded with every journaled event from
        there on and with what the aggregator's tick cache holds from there on (that covers the last
        ``journal_flush_s`` the journal lost to a crash but subscribers received), so the REST window
        republishes nothing the mesh already has. Each market's gap ends at its first stream event
        (``_restart_gap``).
        """
        svc = self.svc
        info = self.restart
        skip = self.core.restart_skip(svc.journal is not None)
        if skip == "off":
            return
        if skip is not None:
            info.update(state="skipped", reason=skip)
            return
        now = time.time_ns()
        today = journal.trading_date(now)
        t0 = time.monotonic()
        tail = await asyncio.get_running_loop().run_in_executor(
            None, read_journal_tail, svc.journal.directory, today, RESUME_TAIL_BYTES)
        info.update(journal_bytes=tail.bytes_read, journal_events=len(tail.events), journal_torn=tail.torn,
                    journal_newest_ns=tail.newest_ns, journal_read_s=round(time.monotonic() - t0, 3))
        window = self.core.restart_window(tail.newest if tail.events else {}, tail.oldest_ns, tail.newest_ns, now,
                                          today.isoformat())
        if isinstance(window, str):
            info.update(state="skipped", reason=window)
            svc.log.info("feed start: no restart gap to backfill (%s)", window)
            return
        starts, default_ns = window
        age_s = (now - tail.newest_ns) / 1e9
        seeded = 0
        dedupe = svc.pipeline.dedupe
        if dedupe is not None:
            passes: dict[int, int] = {}  # one seeding pass (option prints without a sequence number)
            for ev in tail.events:
                if ev.ts >= starts[ev.sym]:
                    dedupe.seen(ev, passes)
                    seeded += 1
        from_cache = await self._seed_from_aggregator(starts, default_ns) if dedupe is not None else 0
        self._first_pending = {m for m in self.streams}
        info.update(state="armed", reason="", previous_newest_ns=tail.newest_ns, default_start_ns=default_ns,
                    starts=starts, seeded_journal=seeded, seeded_aggregator=from_cache, gaps={})
        svc.log.info("feed start: the previous run published until %s (%.1fs ago, %d symbols in the journal "
                     "read back); its gap is backfilled from REST once each market streams again; dedupe seeded "
                     "with %d journaled and %d aggregator-cached events",
                     _iso(tail.newest_ns), age_s, len(starts), seeded, from_cache)

    async def _seed_from_aggregator(self, starts: dict[str, int], default_ns: int) -> int:
        """Add to the dedupe what the aggregator's tick cache holds at or after each symbol's gap start
        (``ticks_since``). Bounded by ``RESUME_AGGREGATOR_BUDGET_S``; an aggregator that does not answer
        (down, restarting with the feed) costs that bound once. Returns events seeded."""
        dedupe = self.svc.pipeline.dedupe
        client = self.svc.client("aggregator")
        deadline = time.monotonic() + RESUME_AGGREGATOR_BUDGET_S
        syms = sorted(starts, key=lambda s: -starts[s])
        try:
            held = await client.call("symbols", {}, timeout_s=RESUME_AGGREGATOR_BUDGET_S, retries=0)
        except RpcError as exc:
            self.svc.log.info("feed start: the aggregator did not answer (%s); the dedupe is seeded from the "
                              "journal only", exc)
            return 0
        if isinstance(held, dict):
            syms += sorted(s for s in held if isinstance(s, str) and s not in starts)
        n = 0
        for sym in syms:
            left = deadline - time.monotonic()
            if left <= 0:
                self.svc.log.warning("feed start: aggregator cache read stopped after %.1fs (budget); the "
                                     "remaining symbols rely on the journal", RESUME_AGGREGATOR_BUDGET_S)
                break
            start = starts.get(sym, default_ns)
            try:
                r = await client.call("ticks_since", {"sym": sym, "since_ns": start, "limit": 100_000},
                                      timeout_s=left, retries=0)
            except RpcError as exc:
                self.svc.log.warning("feed start: aggregator ticks_since %s failed: %s", sym, exc)
                if exc.code == "timeout":
                    break
                continue
            passes: dict[int, int] = {}
            for item in r.get("events", ()) if isinstance(r, dict) else ():
                try:
                    ev = msgspec.convert(item["event"], MarketEvent)
                except (msgspec.ValidationError, KeyError, TypeError):
                    continue
                if ev.ts >= start:
                    dedupe.seen(ev, passes)
                    n += 1
        return n

    async def _restart_gap(self, market: str) -> None:
        """Backfill ``market``'s part of the restart gap once its stream delivered its first event (or,
        for a quiet market, once connected for ``poll_after_s``): the window is [each symbol's start
        from ``_prepare_restart``, now), through the reconnect machinery (``_reconnected``)."""
        stream, first, stop = self.streams[market], self._first_event[market], self.svc.stop_event
        connected_at: float | None = None
        while not stop.is_set():
            connected_at = (connected_at or time.monotonic()) if stream.connected else None
            if self.core.restart_gap_due(first.is_set(),
                                         None if connected_at is None else time.monotonic() - connected_at):
                break
            try:
                await asyncio.wait_for(first.wait(), 0.25)
            except TimeoutError:
                pass
        self._first_pending.discard(market)
        if stop.is_set():
            return
        info = self.restart
        starts = self._reconnected(stream, info["default_start_ns"], last_ts=info["starts"])
        end = time.time_ns()
        if not starts:
            info["gaps"][market] = {"symbols": 0}
            self.svc.log.info("feed restart: nothing of %s to backfill (no symbols)", market)
            return
        lo = min(starts.values())
        info["gaps"][market] = {"start_ns": lo, "end_ns": end, "symbols": len(starts)}
        self.svc.log.info("feed restart: backfilling the %s gap the previous run left, %s .. %s (%.1fs, %d symbols)",
                          market, _iso(lo), _iso(end), (end - lo) / 1e9, len(starts))

    async def _backfill_gap(self, gap: Gap) -> None:
        """Backfill ``gap`` (widened by later gaps while it waits) once the market's running gap is done:
        stacked gaps (repeated queue overflows in a burst) publish a symbol's backfilled events in
        event-time order across gaps too."""
        async with self._gap_order.setdefault(gap.market, asyncio.Lock()):
            self.core.gap_started(gap)  # running now: the next gap waits (and widens) anew
            await self._fill_gap(gap.market, gap.plan, gap.starts, gap.end_ns)

    async def _fill_gap(self, market: str, plan: dict[str, tuple[bool, bool]], starts: dict[str, int],
                        end_ns: int) -> None:
        """Backfill every symbol of one gap (at most 4 at a time, nearest the money first), then count
        it and publish a summary on ``status.backfill`` (type ``doc``)."""
        outcomes = await asyncio.gather(*(self._backfill_symbol(market, sym, t, q, starts[sym], end_ns)
                                          for sym, (t, q) in plan.items()), return_exceptions=True)
        results: list[dict[str, Any]] = []
        for sym, r in zip(plan, outcomes, strict=True):
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, BaseException):  # a bug must cost this symbol's backfill, never the summary
                self.m_backfill_failed.inc(kind="internal")
                self.svc.log.error("backfill of %s failed: %r", sym, r, exc_info=r)
                r = {"sym": sym, "fetched": {}, "published": 0, "truncated_from_ns": None,
                     "error": f"internal: {r!r}"[:200]}
            results.append(r)
        summary = gap_summary(market, plan, starts, end_ns, results)
        fetched, published, overlap = summary["fetched"], summary["published"], summary["overlap"]
        self.last_backfill[market] = summary
        if overlap:
            self.m_overlap.inc(overlap, market=market)
        if self.svc.pub is not None:
            self.svc.publish(STATUS_BACKFILL, "doc", summary, end_ns)
        self.svc.log.info("backfilled %s gap of %.1fs: %d symbols, fetched %s, published %d (%d already delivered)%s",
                          market, (end_ns - summary["gap_start_ns"]) / 1e9, len(plan), fetched, published, overlap,
                          f", {len(summary['truncated'])} truncated" if summary["truncated"] else "")

    async def _fetch(self, sym: str, kind: str, result: dict, coro) -> list[MarketEvent]:
        """Await one REST fetch of a symbol's gap; a failure (after the client's bounded retries) costs
        this kind only: it is counted, logged and noted in ``result``."""
        try:
            events = await coro
        except RestError as exc:
            self.m_backfill_failed.inc(kind=kind)
            result["error"] = f"{kind}: {exc}"[:200]
            if self.core.fetch_failed(kind, exc.status, exc.message):  # no option quote history: keep the trades
                self.svc.log.error("option quote backfill off: the vendor refused it (%s)", exc)
            else:
                self.svc.log.warning("backfill of %s %s failed: %s", kind, sym, exc)
            return []
        self.m_backfill_fetched.inc(len(events), kind=kind)
        result["fetched"][kind] = result["fetched"].get(kind, 0) + len(events)
        return events

    async def _backfill_symbol(self, market: str, sym: str, want_trades: bool, want_quotes: bool, start_ns: int,
                               end_ns: int) -> dict[str, Any]:
        """Fetch one symbol's gap from REST and publish it as backfilled events, in event-time order.

        Overlap with what the stream already delivered (the window starts at the symbol's last
        published event; the stream resumes before the window ends) is removed by the pipeline's
        dedupe: on the vendor sequence number and time, and for option trades (REST gives them no
        sequence number) on the print.
        """
        res: dict[str, Any] = {"sym": sym, "fetched": {}, "published": 0, "truncated_from_ns": None, "error": ""}
        rest = self.rest
        events: list[MarketEvent] = []
        async with self._backfill_slots:
            for kind in fetch_kinds(market, want_trades, want_quotes, bool(self.option_quotes_refused)):
                if kind == "index":
                    coro = self._index_values(sym, start_ns, end_ns)
                elif kind == "option_quote":
                    coro = self._option_quotes(sym, start_ns, end_ns, res)
                elif kind.endswith("trade"):
                    coro = _collect(rest.trades(sym, gte_ns=start_ns, lt_ns=end_ns))
                else:
                    coro = _collect(rest.quotes(sym, gte_ns=start_ns, lt_ns=end_ns))
                events += await self._fetch(sym, kind, res, coro)
        events.sort(key=lambda e: e.ts)  # stable: same-time events keep trades-then-quotes, vendor order
        passes: dict[int, int] = {}  # the answer's option prints counted across its chunks (pipeline.Dedupe)
        for i in range(0, len(events), 1000):
            n = self.svc.ingest(events[i:i + 1000], passes)
            res["published"] += n
            self.m_backfilled.inc(n)
            await asyncio.sleep(0)  # a large gap must not starve the stream consumer
        return res

    async def _option_quotes(self, sym: str, start_ns: int, end_ns: int, res: dict) -> list[MarketEvent]:
        quotes, truncated = await self.rest.recent_quotes(sym, gte_ns=start_ns, lt_ns=end_ns,
                                                          max_rows=self.cfg.backfill_option_quote_max)
        if truncated:
            res["truncated_from_ns"] = quotes[0].ts if quotes else end_ns
            self.m_truncated.inc(kind="option_quote")
        return list(quotes)

    async def _index_values(self, sym: str, start_ns: int, end_ns: int) -> list[MarketEvent]:
        return list(await self.rest.index_closes(sym, gte_ns=start_ns, lt_ns=end_ns))

    # ------------------------------------------------------------------ consumer

    async def _consume(self, stop: asyncio.Event) -> None:
        raw, wake, parser, svc = self.raw, self.wake, self.parser, self.svc
        underlying = self.cfg.option_underlying
        while not stop.is_set():
            if not raw:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), 0.5)
                except TimeoutError:
                    continue
            n = 0
            while raw and n < 500:
                stream, frame, _recv_ns = raw.popleft()
                n += 1
                try:
                    events, statuses = parser.parse(frame)
                except Exception as exc:  # a parser bug must cost one frame, never the feed
                    parser.errors["internal"] = parser.errors.get("internal", 0) + 1
                    svc.log.exception("parser failed on a %s frame: %r", stream.market, exc)
                    continue
                for st in statuses:
                    stream.on_status(st)
                    if st.status in WARN_STATUSES:
                        svc.log.warning("Massive %s on %s: %s", st.status, stream.market, st.message)
                if not events:
                    continue
                stream.got_data = True
                if self._first_pending and stream.market in self._first_pending:
                    self._first_event[stream.market].set()  # its restart gap ends here
                self._act(self.core.stream_events(events, time.monotonic()))
                svc.ingest(events, stream=stream.market)
                if stream.market == "indices":
                    for ev in events:
                        if isinstance(ev, IndexValue) and ev.sym == underlying:
                            await self._apply(self.core.index_value(ev))
            if not raw and self._overflow_marks:
                # caught up after dropping frames: fetch what was dropped, like a reconnect gap
                marks, self._overflow_marks = self._overflow_marks, {}
                for market, (since_ns, last_ts) in marks.items():
                    self._reconnected(self.streams[market], since_ns, last_ts)
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ poll fallback

    def market_now_ns(self) -> int:
        """The market's time while the stream is silent (:meth:`LiveCore.market_now_ns`)."""
        return self.core.market_now_ns(time.monotonic(), time.time_ns())

    async def _watchdog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            actions, wait = self.core.watchdog(time.monotonic(), time.time_ns(), self.svc.connected)
            await self._apply(actions)
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass

    async def _poll_once(self) -> None:
        cfg = self.cfg
        events: list[MarketEvent] = []
        try:
            for sym in cfg.stocks:
                for ev in (await self.rest.last_trade(sym), await self.rest.last_quote(sym)):
                    if ev is not None:
                        events.append(ev)
            if cfg.indices:
                events += await self.rest.index_values(list(cfg.indices))
        except RestError as exc:
            self.svc.log.warning("poll failed: %s", exc)
        fresh = self.core.fresh_poll(events)
        if fresh:
            self.m_poll.inc(self.svc.ingest(fresh))
            for ev in fresh:
                if isinstance(ev, IndexValue):
                    await self._apply(self.core.index_value(ev))

    # ------------------------------------------------------------------ chain snapshots

    async def _chain_loop(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        while not stop.is_set():
            req = self.core.chain_request(time.time_ns())
            if req is not None:
                try:
                    await self._publish_chain(*req)
                except RestError as exc:
                    self.svc.log.warning("chain snapshot failed: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), cfg.chain_every_s)
            except TimeoutError:
                pass

    async def _publish_chain(self, expiration: str, strike_gte: float, strike_lte: float) -> None:
        cfg = self.cfg
        rows = await self.rest.option_chain(cfg.option_underlying, expiration=expiration,
                                            strike_gte=strike_gte, strike_lte=strike_lte)
        contracts, underlying = chain_contracts(rows, cfg.option_root)
        now = self.svc.clock.now_ns() or time.time_ns()
        self.svc.publish_chain({"ts": now, "root": cfg.option_root, "underlying": underlying,
                                "contracts": contracts})


def _iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, ET).isoformat(timespec="milliseconds")


async def _collect(it) -> list[MarketEvent]:
    return [e async for e in it]


__all__ = ["LiveIngest", "chain_contracts", "in_market_hours", "option_topics"]
