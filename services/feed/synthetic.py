"""A deterministic synthetic SPX trading day: index, SPY trades/quotes and an SPXW 0DTE chain.

``SyntheticSession(seed, date)`` is the feed's source when no vendor key is configured and the
offline fixture of every other service: the same seed and date always give the same events.

What the day looks like (all of it drawn from ``random.Random(seed)`` before the first event):

* **Index** ``I:SPX``: one value per simulated second, 09:30-16:00 America/New_York.  The path is a
  sequence of *regimes* (opening-range chop, trend up/down, reversal, range, late-day drift), each a
  drift in points/minute plus Gaussian noise of ~0.35 pt/s (about 15 % annualised volatility), so
  opening ranges, trends, reversals and VWAP reclaims are all present for the detectors.
* **SPY** = SPX / 10 x (1 - basis) with a slowly wandering basis; trades in shares (round and odd
  lots) printed at the ask on up-ticks and at the bid on down-ticks (so delta volume follows the
  trend), quotes with one- or two-cent spreads and share sizes (the vendor's unit since 2025-11-03).
  Activity follows the intraday U-shape and has *volume bursts* at regime changes.
* **SPXW 0DTE**: for strikes within ``strikes_each_side`` x ``strike_step`` of the at-the-money
  strike (the set moves with the index), quotes from Black-Scholes on the index with a put-skewed
  smile, SPX tick rules (0.05 below 3.00, 0.10 above) and spread widths that grow with price; some
  trades, sized in contracts.  :meth:`SyntheticSession.chain` returns the chain at any event time,
  with open interest and the volume traded so far.

``compress`` squeezes the event clock: with ``compress=60`` the whole structured day (still
starting at 09:30) plays out in 390 event seconds.  :meth:`SyntheticSession.next_session` is the
following weekday with the next seed, so a replay can loop.

All events carry ``source="replay"``; times are integer ns since the epoch (UTC).
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import math
import random
from dataclasses import dataclass
from collections.abc import Iterator

from spx_common.calendar import ET
from spx_common.clock import NS_PER_S
from spx_common.models import IndexValue, MarketEvent, Quote, Trade

DEFAULT_DATE = dt.date(2026, 11, 20)
SESSION_SECONDS = 6 * 3600 + 30 * 60
_SQRT2 = math.sqrt(2.0)
_YEAR_S = 365.0 * 24 * 3600


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def black_scholes(spot: float, strike: float, t_years: float, vol: float, call: bool,
                  rate: float = 0.04, div: float = 0.013) -> float:
    """European option value (the SPX options are European). ``t_years`` is floored at one minute."""
    t = max(t_years, 60.0 / _YEAR_S)
    sd = vol * math.sqrt(t)
    d1 = (math.log(spot / strike) + (rate - div + 0.5 * vol * vol) * t) / sd
    d2 = d1 - sd
    df_s, df_k = spot * math.exp(-div * t), strike * math.exp(-rate * t)
    if call:
        return df_s * _ncdf(d1) - df_k * _ncdf(d2)
    return df_k * _ncdf(-d2) - df_s * _ncdf(-d1)


def smile_iv(atm_iv: float, spot: float, strike: float) -> float:
    """A put-skewed smile: higher IV below the money, a gentle smile above."""
    m = math.log(strike / spot)
    return min(2.0, max(0.04, atm_iv * (1.0 - 6.0 * m + 120.0 * m * m)))


def spx_tick(price: float) -> float:
    """SPX option minimum increment: 0.05 below 3.00, 0.10 at or above."""
    return 0.05 if price < 3.0 else 0.10


def option_symbol(date: dt.date, call: bool, strike: float, root: str = "SPXW") -> str:
    """Massive form, e.g. ``O:SPXW261120C05900000``."""
    return f"O:{root}{date:%y%m%d}{'C' if call else 'P'}{int(round(strike * 1000)):08d}"


@dataclass(frozen=True, slots=True)
class Regime:
    """One stretch of the day: start second, drift in points per minute, noise and activity multipliers."""

    start_s: int
    kind: str
    drift_pts_min: float
    noise: float
    activity: float


class SyntheticSession:
    """One synthetic trading day (see module docstring). Cheap to build; events are generated lazily."""

    def __init__(
        self,
        seed: int = 7,
        date: dt.date | str = DEFAULT_DATE,
        *,
        open_price: float = 5900.0,
        compress: float = 1.0,
        duration_s: int = SESSION_SECONDS,
        strikes_each_side: int = 20,
        strike_step: float = 5.0,
        option_quote_every_s: float = 5.0,
        atm_iv: float = 0.16,
        spy_trades_per_s: float = 4.0,
        spy_quotes_per_s: float = 6.0,
        option_trades_per_s: float = 1.0,
        root: str = "SPXW",
    ) -> None:
        if isinstance(date, str):
            date = dt.date.fromisoformat(date)
        if compress <= 0:
            raise ValueError("compress must be > 0")
        if not 1 <= duration_s <= SESSION_SECONDS:
            raise ValueError(f"duration_s must be within 1..{SESSION_SECONDS}")
        self.seed = seed
        self.date = date
        self.compress = float(compress)
        self.duration_s = int(duration_s)
        self.strikes_each_side = strikes_each_side
        self.strike_step = strike_step
        self.option_quote_every_s = option_quote_every_s
        self.atm_iv = atm_iv
        self.spy_trades_per_s = spy_trades_per_s
        self.spy_quotes_per_s = spy_quotes_per_s
        self.option_trades_per_s = option_trades_per_s
        self.root = root
        self.open_ns = int(dt.datetime.combine(date, dt.time(9, 30), ET).timestamp()) * NS_PER_S
        self.close_ns = int(dt.datetime.combine(date, dt.time(16, 0), ET).timestamp()) * NS_PER_S
        self._rng = random.Random(f"{seed}:{date.isoformat()}")
        self.open_price = open_price * (1 + self._rng.uniform(-0.004, 0.004))
        self.regimes = self._draw_regimes()
        self.path, self.activity = self._draw_path()
        self.basis = self._draw_basis()
        self._option_trades = self._draw_option_trades()

    # ------------------------------------------------------------------ time

    def ts(self, sim_s: float) -> int:
        """Event time (ns) of a simulated second offset from the open."""
        return self.open_ns + int(sim_s * NS_PER_S / self.compress)

    def sim_seconds(self, ts_ns: int) -> float:
        """Inverse of :meth:`ts`: simulated seconds since the open (clamped to the session)."""
        return min(max((ts_ns - self.open_ns) * self.compress / NS_PER_S, 0.0), float(self.duration_s))

    @property
    def end_ns(self) -> int:
        return self.ts(self.duration_s)

    def next_session(self) -> SyntheticSession:
        """The following weekday, next seed, same parameters (for looping replays)."""
        d = self.date + dt.timedelta(days=1)
        while d.weekday() >= 5:
            d += dt.timedelta(days=1)
        return SyntheticSession(
            self.seed + 1, d, open_price=self.spot(self.duration_s), compress=self.compress,
            duration_s=self.duration_s, strikes_each_side=self.strikes_each_side, strike_step=self.strike_step,
            option_quote_every_s=self.option_quote_every_s, atm_iv=self.atm_iv,
            spy_trades_per_s=self.spy_trades_per_s, spy_quotes_per_s=self.spy_quotes_per_s,
            option_trades_per_s=self.option_trades_per_s, root=self.root,
        )

    # ------------------------------------------------------------------ the day's script

    def _draw_regimes(self) -> list[Regime]:
        """A fixed skeleton that guarantees the classic 0DTE shapes, then a random afternoon.

        opening range -> trend -> reversal through VWAP -> range -> reversal back (a VWAP reclaim or
        loss, with a volume burst) -> random trends, ranges, reversals and bursts until the close.
        """
        rng = self._rng
        d = rng.choice((-1.0, 1.0))
        out = [Regime(0, "opening_range", 0.0, 1.3, 2.2)]
        t = rng.randint(15, 30) * 60
        for kind, sign, lo, hi, dur, noise, act in (
            ("trend", d, 0.5, 1.0, (30, 60), 1.0, 1.3),
            ("reversal", -d, 1.2, 1.8, (30, 50), 1.2, 2.0),
            ("range", 0.0, 0.0, 0.0, (15, 30), 0.8, 0.8),
            ("reversal", d, 1.2, 1.8, (25, 40), 1.3, 3.0),
        ):
            out.append(Regime(t, kind, sign * rng.uniform(lo, hi), noise, act))
            t += rng.randint(*dur) * 60
        direction = d
        while t < SESSION_SECONDS:
            kind = rng.choices(("trend", "reversal", "range", "burst"), (4, 2, 3, 1))[0]
            if kind == "trend":
                out.append(Regime(t, "trend", direction * rng.uniform(0.4, 1.2), 1.0, 1.2))
                t += rng.randint(25, 70) * 60
            elif kind == "reversal":
                direction = -direction
                out.append(Regime(t, "reversal", direction * rng.uniform(0.8, 1.8), 1.2, 2.5))
                t += rng.randint(10, 30) * 60
            elif kind == "range":
                out.append(Regime(t, "range", 0.0, 0.8, 0.8))
                t += rng.randint(20, 50) * 60
            else:
                out.append(Regime(t, "burst", direction * rng.uniform(2.0, 4.0), 1.6, 4.0))
                t += rng.randint(3, 8) * 60
        return out

    def _draw_path(self) -> tuple[list[float], list[float]]:
        """Index value and activity multiplier for every simulated second (inclusive of the close)."""
        rng = self._rng
        n = SESSION_SECONDS + 1
        starts = [r.start_s for r in self.regimes]
        path, act = [0.0] * n, [0.0] * n
        x = self.open_price
        or_center = x
        for s in range(n):
            r = self.regimes[bisect.bisect_right(starts, s) - 1]
            drift = r.drift_pts_min / 60.0
            if r.kind in ("opening_range", "range"):
                # mean-revert towards the level where the range started: a range, not a random walk
                if s == r.start_s:
                    or_center = x
                drift += (or_center - x) * 0.004
            x += drift + rng.gauss(0.0, 0.35 * r.noise)
            path[s] = round(x, 2)
            frac = s / SESSION_SECONDS
            u_shape = 0.6 + 1.6 * (frac - 0.5) ** 2 * 4  # busy at the open and the close
            since = s - r.start_s
            burst = 1.0 + (r.activity - 1.0) * math.exp(-since / 300.0) if r.activity > 1 else r.activity
            act[s] = u_shape * burst
        return path, act

    def _draw_basis(self) -> list[float]:
        """SPY/SPX basis (fraction) per minute, a slow random walk around 4.5 bp."""
        rng = self._rng
        b, out = 0.00045, []
        for _ in range(SESSION_SECONDS // 60 + 2):
            b = min(0.0008, max(0.0001, b + rng.gauss(0.0, 0.00002)))
            out.append(b)
        return out

    def _draw_option_trades(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per contract: trade event times (ns) and cumulative sizes, for ``chain()`` volume."""
        rng = self._rng
        trades: dict[str, tuple[list[int], list[int]]] = {}
        self._option_trade_list: list[tuple[float, str, bool, float, int, bool]] = []
        s = 0.0
        while True:
            s += rng.expovariate(self.option_trades_per_s * max(self.activity[int(s)], 0.2))
            if s >= self.duration_s:
                break
            atm = self.atm_strike(int(s))
            k = atm + self.strike_step * round(rng.gauss(0.0, 4.0))
            call = rng.random() < (0.55 if self.path[int(s)] >= self.open_price else 0.45)
            size = max(1, int(rng.paretovariate(1.6)))
            buy = rng.random() < 0.55
            sym = option_symbol(self.date, call, k, self.root)
            times, cum = trades.setdefault(sym, ([], []))
            times.append(self.ts(s))
            cum.append((cum[-1] if cum else 0) + size)
            self._option_trade_list.append((s, sym, call, k, size, buy))
        return trades

    # ------------------------------------------------------------------ market state at a time

    def spot(self, sim_s: float) -> float:
        """Index value at a simulated second (linear between the per-second values)."""
        i = int(sim_s)
        if i >= SESSION_SECONDS:
            return self.path[SESSION_SECONDS]
        f = sim_s - i
        return self.path[i] + (self.path[i + 1] - self.path[i]) * f

    def atm_strike(self, sim_s: float) -> float:
        return round(self.spot(sim_s) / self.strike_step) * self.strike_step

    def strikes(self, sim_s: float) -> list[float]:
        atm = self.atm_strike(sim_s)
        n = self.strikes_each_side
        return [atm + i * self.strike_step for i in range(-n, n + 1)]

    def _t_years(self, sim_s: float) -> float:
        return (SESSION_SECONDS - sim_s) / _YEAR_S

    def option_quote(self, sim_s: float, call: bool, strike: float) -> tuple[float, float, float]:
        """(bid, ask, iv) of one contract at a simulated second."""
        spot = self.spot(sim_s)
        iv = smile_iv(self.atm_iv, spot, strike)
        theo = black_scholes(spot, strike, self._t_years(sim_s), iv, call)
        tick = spx_tick(theo)
        half = max(tick, round(theo * 0.01 / tick) * tick) if theo >= 0.05 else tick
        bid = max(0.0, math.floor((theo - half / 2) / tick + 1e-9) * tick)
        ask = max(tick, math.ceil((theo + half / 2) / tick - 1e-9) * tick)
        if ask <= bid:
            ask = bid + tick
        return round(bid, 2), round(ask, 2), iv

    def open_interest(self, call: bool, strike: float) -> int:
        """Deterministic OI: concentrated near the open and on round strikes, calls above, puts below."""
        dist = (strike - self.open_price) / 50.0
        side = 1.2 if (strike >= self.open_price) == call else 0.7
        round_bonus = 3.0 if strike % 100 == 0 else 1.8 if strike % 25 == 0 else 1.0
        h = ((int(strike * 1000) * 2654435761 + self.seed * 97 + (7 if call else 3)) % 1000) / 1000
        return int(200 + 4000 * side * round_bonus * math.exp(-dist * dist) * (0.7 + 0.6 * h))

    def chain(self, t_ns: int) -> list[dict]:
        """The 0DTE chain at event time ``t_ns``: one dict per contract around the money.

        Keys: symbol, strike, type ("call"/"put"), expiration (ISO date), bid, ask, mid, open_interest,
        volume (contracts traded so far today), iv, delta, gamma (per index point, for GEX).
        """
        s = self.sim_seconds(t_ns)
        spot = self.spot(s)
        out = []
        for k in self.strikes(s):
            for call in (True, False):
                sym = option_symbol(self.date, call, k, self.root)
                bid, ask, iv = self.option_quote(s, call, k)
                times, cum = self._option_trades.get(sym, ((), ()))
                i = bisect.bisect_right(times, t_ns)
                out.append({
                    "symbol": sym,
                    "strike": k,
                    "type": "call" if call else "put",
                    "expiration": self.date.isoformat(),
                    "bid": bid,
                    "ask": ask,
                    "mid": round((bid + ask) / 2, 3),
                    "open_interest": self.open_interest(call, k),
                    "volume": cum[i - 1] if i else 0,
                    "iv": round(iv, 5),
                    "delta": round(_delta(spot, k, self._t_years(s), iv, call), 4),
                    "gamma": round(_gamma(spot, k, self._t_years(s), iv), 6),
                })
        return out

    # ------------------------------------------------------------------ the event stream

    def events(self) -> Iterator[MarketEvent]:
        """Every event of the session in event-time order (ties keep generation order)."""
        heap: list[tuple[int, int, MarketEvent]] = []
        n = 0
        for ev in self._gen():
            heapq.heappush(heap, (ev.ts, n, ev))
            n += 1
            # events of one simulated second are generated with offsets < 1 s: anything older
            # than the current second's start is final and can be released in order
            floor = self.ts(self._cur_s)
            while heap and heap[0][0] < floor:
                yield heapq.heappop(heap)[2]
        while heap:
            yield heapq.heappop(heap)[2]

    _cur_s = 0

    def _gen(self) -> Iterator[MarketEvent]:
        rng = random.Random(f"{self.seed}:{self.date.isoformat()}:events")
        ts = self.ts
        otrades = self._option_trade_list
        oi = 0
        every = max(self.option_quote_every_s, 0.1)
        next_opt_quote: dict[tuple[bool, float], float] = {}
        spy_last = None
        for s in range(self.duration_s):
            self._cur_s = s
            spot0, spot1 = self.path[s], self.path[s + 1]
            up = spot1 >= spot0
            yield IndexValue(sym="I:SPX", value=spot0, ts=ts(s), source="replay")
            basis = self.basis[s // 60]
            act = self.activity[s]
            # SPY quotes and trades in this second, interleaved by offset
            nq = _poisson(rng, self.spy_quotes_per_s * act)
            nt = _poisson(rng, self.spy_trades_per_s * act)
            offs = sorted([(rng.random(), 0) for _ in range(nq)] + [(rng.random(), 1) for _ in range(nt)])
            for off, kind in offs:
                spy = (spot0 + (spot1 - spot0) * off) / 10.0 * (1.0 - basis)
                wide = rng.random() < 0.12
                bid = math.floor(spy * 100) / 100
                ask = round(bid + (0.02 if wide else 0.01), 2)
                if kind == 0 or spy_last is None:
                    spy_last = (bid, ask)
                    yield Quote(sym="SPY", bid=bid, ask=ask, bid_size=float(100 * rng.randint(1, 30)),
                                ask_size=float(100 * rng.randint(1, 30)), ts=ts(s + off), bid_exch=rng.choice((11, 12, 4)),
                                ask_exch=rng.choice((11, 12, 4)), source="replay")
                    if kind == 0:
                        continue
                at_ask = rng.random() < (0.62 if up else 0.38)
                price = spy_last[1] if at_ask else spy_last[0]
                size = float(100 * rng.randint(1, 10)) if rng.random() < 0.7 else float(rng.randint(1, 99))
                if rng.random() < act * 0.01:
                    size *= rng.randint(20, 100)  # block prints inside bursts
                yield Trade(sym="SPY", price=price, size=size, ts=ts(s + off), exch=rng.choice((4, 11, 12, 19)),
                            source="replay")
            # option quotes: each contract around the money refreshed every `every` seconds, staggered
            for k in self.strikes(s):
                for call in (True, False):
                    due = next_opt_quote.get((call, k))
                    if due is None:
                        due = s + rng.random() * every
                    if due >= s + 1:
                        next_opt_quote[(call, k)] = due
                        continue
                    bid, ask, _ = self.option_quote(max(due, s), call, k)
                    yield Quote(sym=option_symbol(self.date, call, k, self.root), bid=bid, ask=ask,
                                bid_size=float(rng.randint(1, 150)), ask_size=float(rng.randint(1, 150)),
                                ts=ts(max(due, s)), bid_exch=302, ask_exch=302, source="replay")
                    next_opt_quote[(call, k)] = max(due, s) + every * rng.uniform(0.6, 1.4)
            while oi < len(otrades) and otrades[oi][0] < s + 1:
                at, sym, call, k, size, buy = otrades[oi]
                oi += 1
                bid, ask, _ = self.option_quote(at, call, k)
                yield Trade(sym=sym, price=ask if buy else max(bid, 0.05), size=float(size), ts=ts(at), exch=302,
                            cond=[209], source="replay")
        self._cur_s = self.duration_s + 1


def _delta(spot: float, strike: float, t_years: float, vol: float, call: bool) -> float:
    t = max(t_years, 60.0 / _YEAR_S)
    d1 = (math.log(spot / strike) + (0.04 - 0.013 + 0.5 * vol * vol) * t) / (vol * math.sqrt(t))
    return _ncdf(d1) if call else _ncdf(d1) - 1.0


def _gamma(spot: float, strike: float, t_years: float, vol: float) -> float:
    t = max(t_years, 60.0 / _YEAR_S)
    sd = vol * math.sqrt(t)
    d1 = (math.log(spot / strike) + (0.04 - 0.013 + 0.5 * vol * vol) * t) / sd
    return math.exp(-0.013 * t) * math.exp(-0.5 * d1 * d1) / (math.sqrt(2 * math.pi) * spot * sd)


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; lam is small (a few per second)."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
