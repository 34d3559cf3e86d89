"""One option-chain model, normalized from Massive snapshots, Tradier chains and the feed's ``chain.<root>`` docs.

Everything here is pure: parsers take decoded JSON and return a :class:`Chain` plus a list of
per-contract problems (a bad row is skipped and named, the good rows around it are kept).
:meth:`Chain.apply_quote` folds live ``tick.O:...`` quotes in; :meth:`Chain.refresh_greeks`
recomputes IV / delta / gamma from those quotes (vendor greeks can be an hour old);
:func:`health` reports stale or partial chains.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from spx_common import greeks, occ, sizing

MAX_CONTRACTS = 5000  # bound on one chain (a full SPXW day is ~1,000 listed strikes x 2)


@dataclass(slots=True)
class Contract:
    """One option in the chain. Prices per share (x100 for dollars); ``delta`` signed (puts negative)."""

    symbol: occ.OptionSymbol
    bid: float | None = None
    ask: float | None = None
    open_interest: int = 0
    volume: int = 0
    iv: float | None = None
    delta: float | None = None
    gamma: float | None = None
    quote_ts: int = 0
    greeks_source: str = "vendor"  # "vendor" or "computed"

    @property
    def call(self) -> bool:
        return self.symbol.right == "C"

    @property
    def strike(self) -> float:
        return float(self.symbol.strike)

    @property
    def quote_ok(self) -> bool:
        """Two-sided, finite, uncrossed quote with a positive ask."""
        b, a = self.bid, self.ask
        return b is not None and a is not None and math.isfinite(b) and math.isfinite(a) and 0 <= b < a

    @property
    def mid(self) -> float | None:
        return (self.bid + self.ask) / 2 if self.quote_ok else None

    @property
    def spread_pct(self) -> float | None:
        """Spread as a fraction of mid (``None`` for a bad quote)."""
        m = self.mid
        return (self.ask - self.bid) / m if m else None


@dataclass(slots=True)
class Chain:
    """Contracts by Tradier-form symbol, the underlying price and the event time of the snapshot."""

    root: str
    underlying: float | None
    ts: int
    source: str
    contracts: dict[str, Contract] = field(default_factory=dict)
    quotes_applied: int = 0
    last_quote_ts: int = 0

    def apply_quote(self, symbol: str, bid: float, ask: float, ts: int) -> bool:
        """Fold a live quote into a known contract (any symbol form); unknown symbols are ignored."""
        if symbol.startswith("O:"):  # Massive form = "O:" + the Tradier form: the key itself, no parse
            c = self.contracts.get(symbol[2:])
        else:
            try:
                c = self.contracts.get(occ.parse(symbol).tradier)
            except occ.OptionSymbolError:
                return False
        if c is None or ts < c.quote_ts:
            return False
        c.bid, c.ask, c.quote_ts = bid, ask, ts
        self.quotes_applied += 1
        self.last_quote_ts = max(self.last_quote_ts, ts)
        return True

    def refresh_greeks(self, now_ns: int, rate: float = 0.0, near_pct: float = 0.03) -> int:
        """Recompute IV, delta and gamma from quote mids for contracts within ``near_pct`` of the money.

        Contracts whose mid has no implied volatility (at/below intrinsic) keep vendor values.
        Returns how many contracts were updated.
        """
        s = self.underlying
        if not s or not math.isfinite(s) or s <= 0:
            return 0
        n = 0
        for c in self.contracts.values():
            if abs(c.strike - s) > near_pct * s:
                continue
            m = c.mid
            if m is None or m <= 0:
                continue
            t = greeks.year_fraction(now_ns, expiry_ns(c.symbol.expiration))
            iv = greeks.implied_vol(m, s, c.strike, t, rate, 0.0, c.call)
            if iv is None:
                continue
            g = greeks.bs_greeks(s, c.strike, t, iv, rate, 0.0, c.call)
            c.iv, c.delta, c.gamma, c.greeks_source = iv, g.delta, g.gamma, "computed"
            n += 1
        return n


def expiry_ns(d: dt.date) -> int:
    """The close of the expiration date's session (:func:`spx_common.sizing.expiry_ns`)."""
    return sizing.expiry_ns(d)


def _num(v, name: str, *, allow_none: bool = True) -> float | None:
    if v is None:
        if allow_none:
            return None
        raise ValueError(f"missing {name}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} {v!r} is not a number")
    f = float(v)
    if not math.isfinite(f):
        if allow_none:
            return None  # NaN / inf greeks are treated as missing
        raise ValueError(f"{name} {v!r} is not finite")
    return f


def _put(chain: Chain, c: Contract, problems: list[str]) -> None:
    if len(chain.contracts) >= MAX_CONTRACTS:
        problems.append(f"chain truncated at {MAX_CONTRACTS} contracts")
        return
    chain.contracts[c.symbol.tradier] = c


def _build(symbol: str, bid, ask, oi, vol, iv, delta, gamma, ts: int) -> Contract:
    sym = occ.parse(symbol)
    return Contract(sym, bid=_num(bid, "bid"), ask=_num(ask, "ask"), open_interest=int(_num(oi, "open_interest") or 0),
                    volume=int(_num(vol, "volume") or 0), iv=_num(iv, "iv"), delta=_num(delta, "delta"),
                    gamma=_num(gamma, "gamma"), quote_ts=ts)


def from_feed_doc(doc: dict, root: str = "SPXW") -> tuple[Chain, list[str]]:
    """The feed's ``chain.<root>`` body ``{"ts", "underlying", "contracts": [...]}`` (synthetic generator keys)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("contracts"), list):
        raise ValueError("chain document needs a 'contracts' list")
    ts = doc.get("ts")
    if not isinstance(ts, int) or ts <= 0:
        raise ValueError(f"chain document ts {ts!r} is not a positive integer (ns)")
    under = _num(doc.get("underlying"), "underlying")
    chain = Chain(str(doc.get("root") or root), under, ts, "feed")
    problems: list[str] = []
    for row in doc["contracts"]:
        try:
            if not isinstance(row, dict):
                raise ValueError("contract row is not an object")
            c = _build(row.get("symbol"), row.get("bid"), row.get("ask"), row.get("open_interest"), row.get("volume"),
                       row.get("iv"), row.get("delta"), row.get("gamma"), ts)
        except (ValueError, TypeError) as exc:
            problems.append(f"{row.get('symbol') if isinstance(row, dict) else '?'}: {exc}")
            continue
        _put(chain, c, problems)
    return chain, problems


def from_massive(doc: dict, ts: int, root: str = "SPXW") -> tuple[Chain, list[str]]:
    """Massive ``GET /v3/snapshot/options/I:SPX`` answer (one page or merged pages); keeps ``root`` tickers only."""
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        raise ValueError("Massive snapshot needs a 'results' list")
    chain = Chain(root, None, ts, "massive")
    problems: list[str] = []
    for r in results:
        try:
            if not isinstance(r, dict):
                raise ValueError("result is not an object")
            d, q, g = r.get("details") or {}, r.get("last_quote") or {}, r.get("greeks") or {}
            ticker = d.get("ticker")
            if not isinstance(ticker, str) or not ticker.startswith(f"O:{root}") or ticker[2 + len(root)].isalpha():
                continue  # other roots (AM-settled SPX monthlies) are not ours
            ua = r.get("underlying_asset") or {}
            u = _num(ua.get("value", ua.get("price")), "underlying")
            if u and chain.underlying is None:
                chain.underlying = u
            qts = q.get("last_updated")
            c = _build(ticker, q.get("bid"), q.get("ask"), r.get("open_interest"), (r.get("day") or {}).get("volume"),
                       r.get("implied_volatility"), g.get("delta"), g.get("gamma"),
                       qts if isinstance(qts, int) and qts > 0 else ts)
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            problems.append(f"{r.get('details', {}).get('ticker') if isinstance(r, dict) else '?'}: {exc}")
            continue
        _put(chain, c, problems)
    return chain, problems


def from_tradier(doc: dict, ts: int, underlying: float | None = None, root: str = "SPXW") -> tuple[Chain, list[str]]:
    """Tradier ``GET /markets/options/chains?greeks=true`` answer ``{"options": {"option": [...]}}``."""
    opts = (doc.get("options") or {}) if isinstance(doc, dict) else None
    if not isinstance(opts, dict):
        raise ValueError("Tradier chain needs an 'options' object")
    rows = opts.get("option") or []
    if isinstance(rows, dict):
        rows = [rows]  # Tradier collapses one-element arrays
    chain = Chain(root, underlying, ts, "tradier")
    problems: list[str] = []
    for r in rows:
        try:
            if not isinstance(r, dict):
                raise ValueError("option is not an object")
            if r.get("root_symbol", root) != root:
                continue
            g = r.get("greeks") or {}
            c = _build(r.get("symbol"), r.get("bid"), r.get("ask"), r.get("open_interest"), r.get("volume"),
                       g.get("mid_iv"), g.get("delta"), g.get("gamma"), ts)
        except (ValueError, TypeError) as exc:
            problems.append(f"{r.get('symbol') if isinstance(r, dict) else '?'}: {exc}")
            continue
        _put(chain, c, problems)
    return chain, problems


@dataclass(frozen=True, slots=True)
class Health:
    """Chain state: ``ok`` false when stale or partial; ``issues`` name each problem."""

    ok: bool
    issues: list[str]
    contracts: int
    quoted: int
    age_s: float


def health(chain: Chain | None, now_ns: int, *, stale_s: float = 30.0, min_contracts: int = 20,
           min_quoted_fraction: float = 0.5) -> Health:
    """Stale (snapshot and live quotes older than ``stale_s``) or partial (few contracts, one side
    missing, too many bad quotes, no underlying) chains are reported as not ok."""
    if chain is None:
        return Health(False, ["no_chain: no chain received yet"], 0, 0, math.inf)
    issues: list[str] = []
    n = len(chain.contracts)
    quoted = sum(1 for c in chain.contracts.values() if c.quote_ok)
    age = (now_ns - max(chain.ts, chain.last_quote_ts)) / 1e9
    if age > stale_s:
        issues.append(f"stale: newest data {age:.0f}s old (limit {stale_s:.0f}s)")
    if n < min_contracts:
        issues.append(f"partial: {n} contracts (need {min_contracts})")
    calls = sum(1 for c in chain.contracts.values() if c.call)
    if n and (calls == 0 or calls == n):
        issues.append("partial: only " + ("puts" if calls == 0 else "calls"))
    if n and quoted < min_quoted_fraction * n:
        issues.append(f"partial: {quoted}/{n} contracts with a valid two-sided quote")
    if not chain.underlying:
        issues.append("partial: no underlying price")
    return Health(not issues, issues, n, quoted, age)
