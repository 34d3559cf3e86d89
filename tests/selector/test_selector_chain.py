"""Chain normalizers (Massive snapshot, Tradier chain, feed doc), live quotes, greek refresh, health."""

import math

import pytest

from services.selector import chain as chains
from tests.selector.helpers import T, chain, chain_doc

EXP = "2026-11-20"


def massive_result(ticker, strike, ctype, bid, ask, delta=0.5, iv=0.2, oi=500, under=5900.0):
    r = {"details": {"contract_type": ctype, "exercise_style": "european", "expiration_date": EXP,
                     "shares_per_contract": 100, "strike_price": strike, "ticker": ticker},
         "last_quote": {"ask": ask, "ask_size": 10, "bid": bid, "bid_size": 10, "midpoint": None,
                        "last_updated": T - 5, "timeframe": "REAL-TIME"},
         "open_interest": oi, "day": {"volume": 42}, "underlying_asset": {"ticker": "I:SPX", "value": under}}
    if delta is not None:
        r["greeks"] = {"delta": delta, "gamma": 0.01, "theta": -1.0, "vega": 0.5}
    if iv is not None:
        r["implied_volatility"] = iv
    return r


def test_massive_snapshot_normalized_and_bad_rows_named():
    doc = {"status": "OK", "results": [
        massive_result("O:SPXW261120C05900000", 5900, "call", 10.0, 10.5),
        massive_result("O:SPXW261120P05900000", 5900, "put", 9.0, 9.5, delta=None, iv=None),  # greeks missing
        massive_result("O:SPX261120C05900000", 5900, "call", 11.0, 11.5),  # AM monthly root: not ours
        massive_result("O:SPXW261120C0590000X", 5900, "call", 1, 2),      # malformed ticker
        massive_result("O:SPXW261120C05905000", 5905, "call", "x", 2),    # bad bid
        massive_result("O:SPXW261120C05910000", 5910, "call", 7.0, 7.4, delta=float("nan")),
        "garbage"]}
    c, problems = chains.from_massive(doc, T)
    assert sorted(c.contracts) == ["SPXW261120C05900000", "SPXW261120C05910000", "SPXW261120P05900000"]
    assert len(problems) == 3 and any("0590000X" in p for p in problems)
    k = c.contracts["SPXW261120C05900000"]
    assert (k.bid, k.ask, k.delta, k.iv, k.open_interest, k.volume, k.quote_ts) == (10.0, 10.5, 0.5, 0.2, 500, 42, T - 5)
    assert c.contracts["SPXW261120P05900000"].delta is None
    assert c.contracts["SPXW261120C05910000"].delta is None  # NaN greek treated as missing
    assert c.underlying == 5900.0 and c.source == "massive"
    with pytest.raises(ValueError, match="results"):
        chains.from_massive({"status": "ERROR"}, T)


def test_tradier_chain_normalized():
    row = {"symbol": "SPXW261120C05900000", "root_symbol": "SPXW", "strike": 5900.0, "option_type": "call",
           "bid": 10.1, "ask": 10.6, "open_interest": 321, "volume": 12,
           "greeks": {"delta": 0.52, "gamma": 0.011, "mid_iv": 0.19, "updated_at": "2026-11-20 14:00:00"}}
    c, problems = chains.from_tradier({"options": {"option": row}}, T, 5901.0)  # single object, not a list
    assert problems == [] and c.contracts["SPXW261120C05900000"].delta == 0.52
    other = dict(row, symbol="SPX261120C05900000", root_symbol="SPX")
    nogreeks = dict(row, symbol="SPXW261120P05900000", option_type="put", greeks=None)
    c, problems = chains.from_tradier({"options": {"option": [row, other, nogreeks, {"symbol": "bad"}]}}, T)
    assert sorted(c.contracts) == ["SPXW261120C05900000", "SPXW261120P05900000"] and len(problems) == 1
    assert c.contracts["SPXW261120P05900000"].iv is None
    assert chains.from_tradier({"options": None}, T)[0].contracts == {}  # Tradier's empty answer
    with pytest.raises(ValueError):
        chains.from_tradier([], T)


def test_feed_doc_refused_or_rows_skipped():
    doc = chain_doc()
    doc["contracts"] = doc["contracts"][:4] + [{"symbol": "nope"}, 7]
    c, problems = chains.from_feed_doc(doc)
    assert len(c.contracts) == 4 and len(problems) == 2
    for bad in ({"contracts": []}, {"ts": -1, "contracts": []}, {"ts": T}, "x"):
        with pytest.raises(ValueError):
            chains.from_feed_doc(bad)


def test_live_quotes_and_computed_greeks():
    c = chain()
    sym = min(c.contracts.values(), key=lambda x: abs(x.strike - c.underlying) + (0 if x.call else 1000)).symbol
    assert c.apply_quote(sym.massive, 20.0, 20.4, T + 1)
    assert not c.apply_quote(sym.occ, 1.0, 1.2, T)  # older than what we have
    assert not c.apply_quote("O:SPXW261120C09999000", 1, 2, T + 2) and not c.apply_quote("junk", 1, 2, T + 2)
    k = c.contracts[sym.tradier]
    assert (k.bid, k.ask, k.mid) == (20.0, 20.4, 20.2)
    assert c.refresh_greeks(T + 1) > 10
    assert k.greeks_source == "computed" and 0.3 < k.delta < 0.8 and k.iv > 0
    from spx_common import greeks
    t = greeks.year_fraction(T + 1, chains.expiry_ns(sym.expiration))
    assert greeks.bs_price(c.underlying, k.strike, t, k.iv) == pytest.approx(20.2, abs=1e-5)


def test_health_reports_stale_and_partial():
    assert chains.health(chain(), T).ok
    assert not chains.health(None, T).ok
    h = chains.health(chain(), T + 60 * 10**9, stale_s=30)
    assert not h.ok and h.issues[0].startswith("stale")
    c = chain()
    for key in [k for k, v in c.contracts.items() if not v.call]:
        del c.contracts[key]
    h = chains.health(c, T)
    assert "partial: only calls" in h.issues
    c = chain()
    for v in c.contracts.values():
        v.bid, v.ask = 5.0, 4.0  # crossed everywhere
    c.underlying = None
    h = chains.health(c, T, min_contracts=500)
    assert any("valid two-sided" in i for i in h.issues) and any("no underlying" in i for i in h.issues)
    assert any(i.startswith("partial: 82 contracts") for i in h.issues) and math.isfinite(h.age_s)


def test_expiry_is_the_sessions_close_1300_on_an_early_close_1600_otherwise():
    import datetime as dt
    from zoneinfo import ZoneInfo

    et = ZoneInfo("America/New_York")

    def at(d, h):
        return int(dt.datetime.combine(d, dt.time(h, 0), et).timestamp()) * 1_000_000_000

    black_friday, monday = dt.date(2026, 11, 27), dt.date(2026, 11, 30)  # day after Thanksgiving: 13:00 close
    assert chains.expiry_ns(black_friday) == at(black_friday, 13)
    assert chains.expiry_ns(monday) == at(monday, 16)
    christmas_eve = dt.date(2026, 12, 24)
    assert chains.expiry_ns(christmas_eve) == at(christmas_eve, 13)
    # time to expiry on the early close shrinks by the three missing hours
    now = at(black_friday, 10)
    assert chains.expiry_ns(black_friday) - now == 3 * 3600 * 1_000_000_000
