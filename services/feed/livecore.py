"""The live feed's policy as a sans-I/O core: events in, actions out.

:class:`LiveCore` decides; :class:`~services.feed.live.LiveIngest` (the I/O shell) owns the sockets,
the REST client, the tasks and the clock, tells the core what happened and carries out what it
answers. The core never reads a clock, awaits or touches the service, so every rule below is tested
with plain calls (``tests/feed/test_feed_livecore.py``):

* **poll watchdog**: stream silent for ``poll_after_s`` while the market is open (the regular session
  by the exchange calendar at the market's "now": the last stream event's time plus the silence,
  unless ``poll_market_hours_only`` is off) -> :class:`SetMode` ``poll`` and :class:`Poll` every
  ``poll_interval_s``; the first stream event -> ``tick`` ("stream recovered"); the session's close
  while polling -> ``tick`` (or ``down``) "market closed". A fatal stream error stops all of it.
* **poll answers**: a REST last trade / NBBO / index value unchanged since the previous poll is not
  a new event (:meth:`LiveCore.fresh_poll`).
* **ATM hysteresis**: the option subscription is re-centred (:class:`Resubscribe`) only when the
  underlying's at-the-money strike moved ``resubscribe_strikes`` strikes from the current centre.
* **gaps**: a reconnect, a raw-queue overflow or a feed restart opens a gap; the core plans it (which
  symbols, trades and/or quotes, each symbol's window start) and either asks for a
  :class:`Backfill` or widens the gap already waiting behind the market's running backfill
  (:class:`GapMerged`): at most one running and one waiting gap per market.
* **restart window**: where the gap a feed restart left starts, from the tick journal read back
  (:meth:`LiveCore.restart_window`), or why there is none.
* **option backfill plan**: the subscribed contracts nearest the money, trades of
  ``backfill_option_contracts`` and quotes of ``backfill_option_quote_contracts`` of them (no
  quotes once the vendor refused them).
* **what one symbol's gap fetches** (:func:`fetch_kinds`), what a failed fetch means (the vendor
  refusing option quote history turns it off: :meth:`LiveCore.fetch_failed`) and the gap's summary
  on ``status.backfill`` (:func:`gap_summary`).
* **restart gap**: whether to look for one at all (:meth:`LiveCore.restart_skip`) and when a market's
  part of it is due (:meth:`LiveCore.restart_gap_due`: its first stream event, or connected and quiet
  for ``poll_after_s``).
* **queue overflow**: where the gap of dropped frames starts (:meth:`LiveCore.overflow_start`).
* **chain snapshot**: whether one is due and its request window (:meth:`LiveCore.chain_request`).
* **vendor statuses** worth a warning (:data:`WARN_STATUSES`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

from spx_common import calendar as mcal
from spx_common.calendar import ET
from spx_common.models import IndexValue, MarketEvent

from services.feed.synthetic import option_symbol


#: vendor status messages logged as warnings (the others are routine: connected, auth_success, success)
WARN_STATUSES = frozenset({"max_connections", "slow_consumer", "force_disconnect", "error"})
#: vendor HTTP statuses that mean "your plan has no option quote history": stop asking until a restart
REFUSED_HTTP = frozenset({401, 403})


# --------------------------------------------------------------------------- actions (what the shell does)


@dataclass(frozen=True)
class SetMode:
    """Switch the feed mode (``tick``, ``poll``, ``down``) and publish its status at once."""

    mode: str
    detail: str = ""


@dataclass(frozen=True)
class Poll:
    """Poll REST once (last trade and NBBO of each stock, the index values) and hand the answer to
    :meth:`LiveCore.fresh_poll`."""


@dataclass(frozen=True)
class Resubscribe:
    """Subscribe the options stream to ``topics`` (the contracts around ``center``)."""

    topics: frozenset[str]
    center: float
    contracts: int


@dataclass
class Gap:
    """One gap of a market to fetch from REST: symbol -> (trades, quotes), each symbol's window start
    (ns) and the window's end (ns). Widened in place while it waits behind a running one."""

    market: str
    plan: dict[str, tuple[bool, bool]]
    starts: dict[str, int]
    end_ns: int
    merged: int = 0


@dataclass(frozen=True)
class Backfill:
    """Fetch ``gap`` once the market's running backfill is done (call :meth:`LiveCore.gap_started`
    when it starts)."""

    gap: Gap


@dataclass(frozen=True)
class GapMerged:
    """A new gap was merged into the one already waiting for ``market`` (count it)."""

    market: str


Action = SetMode | Poll | Resubscribe | Backfill | GapMerged


# --------------------------------------------------------------------------- pure helpers


def in_market_hours(now_ns: int) -> bool:
    """Inside the regular session: 09:30-16:00 New York (13:00 on early closes), trading days only
    (exchange holidays by rule, :mod:`spx_common.calendar`)."""
    return mcal.is_open(now_ns)


def option_topics(root: str, date: dt.date, atm: float, step: float, each_side: int, max_contracts: int,
                  quotes: bool) -> set[str]:
    """``T.``/``Q.`` topics for calls and puts around ``atm``, nearest strikes first, within the contract limit."""
    strikes = [atm]
    for i in range(1, each_side + 1):
        strikes += [atm + i * step, atm - i * step]
    topics: set[str] = set()
    n = 0
    for k in strikes:
        for call in (True, False):
            if n >= max_contracts:
                return topics
            sym = option_symbol(date, call, k, root)
            topics.add(f"T.{sym}")
            if quotes:
                topics.add(f"Q.{sym}")
            n += 1
    return topics


def option_plan(topics: Iterable[str], atm: float, trades_n: int, quotes_n: int) -> dict[str, tuple[bool, bool]]:
    """Contract -> (trades, quotes) to backfill: of the subscribed contracts nearest ``atm``, trades of
    ``trades_n`` and quotes of ``quotes_n`` (nearest first)."""
    topics = list(topics)

    def near(syms: set[str]) -> list[str]:
        return sorted(syms, key=lambda s: (abs(float(s[-8:]) / 1000 - atm), s))

    trades = set(near({t[2:] for t in topics if t.startswith("T.")})[:trades_n])
    quotes = set(near({t[2:] for t in topics if t.startswith("Q.")})[:quotes_n]) if quotes_n else set()
    return {s: (s in trades, s in quotes) for s in near(trades | quotes)}


def fetch_kinds(market: str, want_trades: bool, want_quotes: bool, quotes_refused: bool) -> list[str]:
    """What one symbol's gap fetches from REST, in order (counted and reported under these names):
    1-second index values; stock trades and quotes; option trades and quotes (none once refused)."""
    if market == "indices":
        return ["index"]
    prefix = "option_" if market == "options" else ""
    out = [prefix + "trade"] if want_trades else []
    if want_quotes and not (market == "options" and quotes_refused):
        out.append(prefix + "quote")
    return out


def gap_summary(market: str, plan: dict[str, tuple[bool, bool]], starts: dict[str, int], end_ns: int,
                results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``status.backfill`` document of one filled gap from its symbols' results (``sym``, ``fetched``
    by kind, ``published``, ``truncated_from_ns``, ``error``): totals, what the stream had already
    delivered (``overlap``: fetched minus published), truncated and failed symbols."""
    fetched: dict[str, int] = {}
    for r in results:
        for kind, n in r["fetched"].items():
            fetched[kind] = fetched.get(kind, 0) + n
    published = sum(r["published"] for r in results)
    return {
        "ts": end_ns, "market": market, "gap_start_ns": min(starts.values()), "gap_end_ns": end_ns,
        "symbols": len(plan), "fetched": fetched, "published": published,
        "overlap": sum(sum(r["fetched"].values()) - r["published"] for r in results),
        # option quotes older than from_ns in the gap were left unfetched (backfill_option_quote_max)
        "truncated": [{"sym": r["sym"], "from_ns": r["truncated_from_ns"]} for r in results
                      if r["truncated_from_ns"] is not None],
        "failed": {r["sym"]: r["error"] for r in results if r["error"]},
    }


# --------------------------------------------------------------------------- the core


@dataclass
class LiveCore:
    """The live ingest's decisions. ``cfg`` is the ``[feed]`` section (read only)."""

    cfg: Any
    #: polling REST because the stream went silent in market hours
    polling: bool = False
    #: why the feed stays down for good ("" while it runs): the vendor refused the key
    fatal: str = ""
    #: centre strike of the option subscription (None until the underlying's first value)
    atm_center: float | None = None
    #: why option quote backfill is off ("": on); set when the vendor refuses it (401/403)
    option_quotes_refused: str = ""
    #: wall time (monotonic s) and event time (ns) of the newest stream event
    last_stream_wall: float = 0.0
    last_stream_ns: int = 0
    _poll_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    #: market -> the gap waiting for the running one (new gaps merge into it)
    _waiting: dict[str, Gap] = field(default_factory=dict)

    # ------------------------------------------------------------------ stream
    def connected(self) -> list[Action]:
        """A stream (re)connected."""
        return [] if self.polling or self.fatal else [SetMode("tick")]

    def failed(self, reason: str, detail: str = "") -> list[Action]:
        """A stream failed for good (the vendor refused the key): the feed stays down, no polling."""
        self.fatal = reason
        self.polling = False
        return [SetMode("down", detail or reason)]

    def stream_events(self, events: list[MarketEvent], wall_s: float) -> list[Action]:
        """The stream delivered ``events`` (in arrival order) at ``wall_s``."""
        out: list[Action] = []
        if not events:
            return out
        self.last_stream_wall = wall_s
        if events[-1].ts > self.last_stream_ns:
            self.last_stream_ns = events[-1].ts
        if self.polling:
            self.polling = False
            out.append(SetMode("tick", "stream recovered"))
        return out

    def periodic(self, connected: bool, errors: str) -> list[Action]:
        """Once a second: the mode follows the streams' connection while not polling."""
        if self.fatal or self.polling:
            return []
        return [SetMode("tick" if connected else "down", "" if connected else errors)]

    # ------------------------------------------------------------------ poll watchdog
    def market_now_ns(self, wall_s: float, wall_ns: int) -> int:
        """The market's time while the stream is silent: the last stream event's time plus the time
        elapsed since it arrived (the wall clock ``wall_ns`` only before the first event)."""
        if not self.last_stream_ns:
            return wall_ns
        return self.last_stream_ns + int((wall_s - self.last_stream_wall) * 1e9)

    def watchdog(self, wall_s: float, wall_ns: int, connected: bool) -> tuple[list[Action], float]:
        """One watchdog step at ``wall_s`` (monotonic) / ``wall_ns`` (epoch): the actions and the wait
        before the next step."""
        cfg = self.cfg
        silent = wall_s - self.last_stream_wall
        market_open = not cfg.poll_market_hours_only or in_market_hours(self.market_now_ns(wall_s, wall_ns))
        out: list[Action] = []
        if not self.fatal and silent >= cfg.poll_after_s and market_open:
            if not self.polling:
                self.polling = True
                out.append(SetMode("poll", f"stream silent {silent:.1f}s"))
            out.append(Poll())
            return out, cfg.poll_interval_s
        if self.polling and not market_open and not self.fatal:
            # the session closed (16:00, 13:00 on an early close): a quiet stream is expected now
            self.polling = False
            out.append(SetMode("tick" if connected else "down", "market closed"))
        return out, min(0.25, cfg.poll_after_s / 4)

    def fresh_poll(self, events: list[MarketEvent]) -> list[MarketEvent]:
        """The poll answer's new events in event-time order (an event unchanged since the previous
        poll is not new); none once the stream came back meanwhile."""
        fresh = []
        for ev in events:
            key = (ev.sym, type(ev).__name__)
            if self._poll_seen.get(key) == ev.ts:
                continue
            self._poll_seen[key] = ev.ts
            fresh.append(ev)
        if not self.polling:
            return []
        fresh.sort(key=lambda e: e.ts)
        return fresh

    # ------------------------------------------------------------------ ATM hysteresis
    def index_value(self, ev: IndexValue) -> list[Action]:
        """An underlying value: re-centre the option subscription when the at-the-money strike moved
        ``resubscribe_strikes`` strikes from the centre (hysteresis: a price hovering on a boundary
        does not churn)."""
        cfg = self.cfg
        if ev.sym != cfg.option_underlying:
            return []
        step = cfg.strike_step
        atm = round(ev.value / step) * step
        if self.atm_center is not None and abs(atm - self.atm_center) < cfg.resubscribe_strikes * step:
            return []
        self.atm_center = atm
        date = dt.datetime.fromtimestamp(ev.ts // 1_000_000_000, ET).date()
        topics = option_topics(cfg.option_root, date, atm, step, cfg.strikes_each_side, cfg.max_option_contracts,
                               cfg.option_quotes)
        return [Resubscribe(frozenset(topics), atm, len({t[2:] for t in topics}))]

    # ------------------------------------------------------------------ gaps
    def gap_plan(self, market: str, topics: Iterable[str]) -> dict[str, tuple[bool, bool]]:
        """What a gap of ``market`` fetches: symbol -> (trades, quotes)."""
        cfg = self.cfg
        if market == "options":
            return option_plan(topics, self.atm_center or 0.0, cfg.backfill_option_contracts,
                               0 if self.option_quotes_refused else cfg.backfill_option_quote_contracts)
        if market == "stocks":
            return {s: (True, True) for s in cfg.stocks}
        return {s: (True, False) for s in cfg.indices}

    def gap(self, market: str, topics: Iterable[str], down_since_ns: int, now_ns: int, published: dict[str, int],
            last_ts: dict[str, int] | None = None) -> tuple[dict[str, int] | None, list[Action]]:
        """A gap of ``market`` that began at ``down_since_ns`` (epoch ns) and ends ``now_ns``.

        ``last_ts`` (queue overflow, feed restart) is the exact per-symbol end of what was published
        before the gap (``down_since_ns`` for symbols it lacks); after a reconnect (``last_ts`` None)
        a symbol's window starts at its newest published event (``published``), at most one ping
        period before the loss was seen. Every start is at most ``backfill_max_s`` before now.
        Returns the window start per symbol (None: nothing to backfill) and the actions.
        """
        cfg = self.cfg
        if not cfg.backfill:
            return None, []
        plan = self.gap_plan(market, topics)
        if not plan:
            return None, []
        floor = now_ns - int(cfg.backfill_max_s * 1e9)
        blind_ns = int((cfg.ping_interval_s + cfg.ping_timeout_s) * 1e9)
        starts: dict[str, int] = {}
        for sym in plan:
            if last_ts is not None:
                starts[sym] = max(last_ts.get(sym, down_since_ns), floor)
            else:
                # data may have stopped before the loss was noticed (at most one ping period), never
                # earlier than the symbol's last event; an idle contract does not stretch the window
                starts[sym] = max(min(published.get(sym, down_since_ns), down_since_ns), down_since_ns - blind_ns,
                                  floor)
        waiting = self._waiting.get(market)
        if waiting is not None:
            # widen the waiting gap instead of queueing another (the stretch between them was
            # streamed and is deduplicated)
            for sym, (t, q) in plan.items():
                wt, wq = waiting.plan.get(sym, (False, False))
                waiting.plan[sym] = (t or wt, q or wq)
                waiting.starts[sym] = max(min(waiting.starts.get(sym, starts[sym]), starts[sym]), floor)
            waiting.end_ns = now_ns
            waiting.merged += 1
            return starts, [GapMerged(market)]
        gap = self._waiting[market] = Gap(market, plan, starts, now_ns)
        return starts, [Backfill(gap)]

    def gap_started(self, gap: Gap) -> None:
        """``gap``'s backfill starts (or was dropped): the next gap of its market waits anew."""
        if self._waiting.get(gap.market) is gap:
            del self._waiting[gap.market]

    def restart_window(self, newest: dict[str, int], oldest_ns: int, newest_ns: int, now_ns: int,
                       day: str) -> tuple[dict[str, int], int] | str:
        """Where the gap a feed restart left starts, from the tick journal read back at a live start
        (``newest``: symbol -> its newest journaled event; ``oldest_ns``/``newest_ns``: the oldest and
        newest event read; none read: ``newest`` empty): each symbol's start (its newest journaled event
        minus ``reorder_tolerance_ms``, never before what was read back, so every journaled event REST
        returns is in the dedupe) and the start of a symbol absent from the journal; or, as a string,
        why there is nothing to backfill (nothing of ``day`` journaled, or the previous run is older than
        ``restart_backfill_max_s`` or ahead of the clock)."""
        cfg = self.cfg
        if not newest:
            return f"no journaled event of {day}"
        age_s = (now_ns - newest_ns) / 1e9
        if age_s > cfg.restart_backfill_max_s or age_s < -60:
            return (f"the previous run's newest event is {age_s:.1f}s old "
                    f"(restart_backfill_max_s {cfg.restart_backfill_max_s:g})")
        tol = cfg.reorder_tolerance_ms * 1_000_000
        return {sym: max(ts - tol, oldest_ns) for sym, ts in newest.items()}, oldest_ns

    def quotes_refused(self, reason: str) -> None:
        """The vendor refused option quote history (401/403): stop asking until a restart."""
        self.option_quotes_refused = reason

    def fetch_failed(self, kind: str, status: int | None, message: str) -> bool:
        """A gap's REST fetch of ``kind`` failed after the client's retries with HTTP ``status``: True when
        it means the plan has no option quote history (then none is asked for again until a restart)."""
        if kind == "option_quote" and status in REFUSED_HTTP:
            self.quotes_refused(message or f"HTTP {status}")
            return True
        return False

    def restart_skip(self, journal_on: bool) -> str | None:
        """Why a live start looks for no restart gap ("off" when backfill or the restart window is off),
        or None: look in the journal (:meth:`restart_window` says what it found)."""
        cfg = self.cfg
        if not cfg.backfill or cfg.restart_backfill_max_s <= 0:
            return "off"
        if not journal_on:
            return "journal off: the previous run's end is unknown"
        return None

    def restart_gap_due(self, first_event: bool, connected_for_s: float | None) -> bool:
        """A market's part of the restart gap is fetched once its stream delivered its first event (the gap
        ends there), or, for a quiet market, once connected for ``poll_after_s`` without one."""
        return first_event or (connected_for_s is not None and connected_for_s >= self.cfg.poll_after_s)

    def overflow_start(self, recv_ns: int) -> int:
        """Where a raw-queue overflow's gap starts for a symbol with nothing published yet: one ping period
        (interval plus timeout) before the first dropped frame arrived (wall ns)."""
        cfg = self.cfg
        return recv_ns - int((cfg.ping_interval_s + cfg.ping_timeout_s) * 1e9)

    def chain_request(self, now_ns: int) -> tuple[str, float, float] | None:
        """A chain snapshot is due (the ATM centre is known and the feed is not down for good): the 0DTE
        expiration (the New York date of ``now_ns``) and the strike window around the centre."""
        if self.atm_center is None or self.fatal:
            return None
        width = self.cfg.strikes_each_side * self.cfg.strike_step
        day = dt.datetime.fromtimestamp(now_ns / 1e9, ET).date().isoformat()
        return day, self.atm_center - width, self.atm_center + width


__all__ = ["Action", "Backfill", "Gap", "GapMerged", "LiveCore", "Poll", "REFUSED_HTTP", "Resubscribe", "SetMode",
           "WARN_STATUSES", "fetch_kinds", "gap_summary", "in_market_hours", "option_plan", "option_topics"]
