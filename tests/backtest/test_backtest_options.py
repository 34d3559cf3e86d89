"""The options side of a backtest: a day's option chain and quotes recorded in the tick journal are
replayed through the live selector (contract choice and sizing), the broker engine and the paper broker
filling on the replayed quotes; the trade record carries the underlying R and the option dollars."""

from __future__ import annotations

import datetime as dt

import pytest

from services.backtest import run as bt
from services.detector.config import DetectorConfig
from services.detector.market import ET
from services.feed.synthetic import SyntheticSession
from spx_common.journal import JournalWriter
from spx_common.models import MicroBar, Quote
from spx_common.store import open_store

S = 10**9
DAY = dt.date(2026, 11, 16)
CFG = DetectorConfig(entry_points=False, plugins=["tests.backtest.planted_spx_plugin"], symbols=["I:SPX"])


def open_ns(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, 9, 30, tzinfo=ET).timestamp()) * S


def bar(t0: int, i: int, c: float, v: float = 100.0) -> MicroBar:
    return MicroBar(sym="I:SPX", interval="1s", start_ns=t0 + i * S, open=c, high=c, low=c, close=c, volume=v,
                    trades=1, closed=True)


def planted(t0: int, spot: float) -> list[MicroBar]:
    """Flat, the signal bar (volume 777), the trigger at +0.5, flat, target 1 (+5.5), back to +0.3 (the
    breakeven stop): R = 0.5 x 1 + 0.5 x 0 = +0.5."""
    closes = [spot] * 10 + [spot, spot + 0.5, spot + 0.5, spot + 5.5, spot + 0.3]
    return [bar(t0, i, c, 777.0 if i == 10 else 100.0) for i, c in enumerate(closes)]


def write_journal(directory, session: SyntheticSession, t0: int) -> tuple[dict, dict]:
    """The chain at +5 s, then every contract's quote at +12 s (its chain quote), +13 s (calls 1.00 richer),
    +14 s (calls 0.30 under the first bid). Returns the chain doc and the +12 s quotes by symbol."""
    chain = {"ts": t0 + 5 * S, "root": "SPXW", "underlying": session.spot(session.sim_seconds(t0 + 5 * S)),
             "contracts": session.chain(t0 + 5 * S)}
    first = {}
    w = JournalWriter(directory)
    try:
        w.append_doc("chain", chain)
        for k, moves in ((12, (0.0, 0.0)), (13, (1.0, 1.1)), (14, (-0.3, -0.1))):
            batch = []
            for c in chain["contracts"]:
                call = c["type"] == "call"
                bid = max(round(c["bid"] + (moves[0] if call else 0.0), 2), 0.05)
                ask = max(round(c["ask"] + (moves[1] if call else 0.0), 2), round(bid + 0.05, 2))
                q = Quote(sym=c["symbol"], bid=bid, ask=ask, bid_size=500, ask_size=500, ts=t0 + k * S)
                batch.append(q)
                if k == 12:
                    first[c["symbol"][2:]] = q
            w.append(batch)
    finally:
        w.close()
    return chain, first


def test_journal_options_are_traded_through_selector_broker_and_paper_fills(tmp_path):
    session = SyntheticSession(seed=7, date=DAY)
    t0 = open_ns(DAY)
    spot = round(session.spot(session.sim_seconds(t0 + 5 * S)), 2)
    store = open_store(f"sqlite:///{tmp_path / 'bt.db'}")
    try:
        store.upsert_bars(planted(t0, spot))
        _, first = write_journal(tmp_path / "journal", session, t0)
        opts = dict(start=DAY, end=DAY, symbols=["I:SPX"], record=False)
        plain = bt.run(store, bt.Options(**opts), CFG)
        res = bt.run(store, bt.Options(**opts, journal=tmp_path / "journal", fee_per_contract=0.65), CFG)
    finally:
        store.close()
    (t,) = res["trades"]
    (p,) = plain["trades"]
    assert t["r"] == p["r"] == pytest.approx(0.5) and t["t1_hit"] and not t["t2_hit"]  # R: the same either way
    assert p["pnl_usd"] is None and p["option_reason"].startswith("empty_chain")
    # the option side: a call chosen from the replayed chain, bought at the replayed ask, sold at the bids
    assert t["option_symbol"] in first and "C" in t["option_symbol"][10:]
    q = first[t["option_symbol"]]
    entry = [f for f in t["fills"] if f["role"] == "entry"]
    assert entry and all(f["price"] == q.ask for f in entry) and t["entry_fill"] == q.ask
    sells = [f for f in t["fills"] if f["side"] == "sell_to_close"]
    assert sum(f["quantity"] for f in sells) == t["contracts"] > 0
    scale = [f for f in sells if f["role"] == "scale"]
    assert scale and scale[0]["price"] == round(q.bid + 1.0, 2)  # target 1: at the replayed bid
    cash = sum(f["quantity"] * f["price"] for f in sells) - t["contracts"] * q.ask
    fees = round(0.65 * 2 * t["contracts"], 2)
    assert t["fees_usd"] == fees and t["pnl_usd"] == pytest.approx(round(cash * 100 - fees, 2), abs=0.011)
    ev = res["evidence"]["data"][0]["options"]
    assert ev["source"] == "journal" and ev["chain_docs"] == 1 and ev["option_quotes"] == 3 * len(first)
    o = res["options"]
    assert o["trades"] == 1 and o["pnl_usd"] == t["pnl_usd"] and o["fees_usd"] == fees
    assert plain["options"]["trades"] == 0


def test_tick_resolution_reads_the_underlying_and_the_options_from_the_journal(tmp_path):
    """A run whose store has no ticks: the journal's index values drive the live aggregator and lifecycle,
    its option quotes the selector and the paper broker (what a replayed mesh run left behind)."""
    from spx_common.models import IndexValue

    session = SyntheticSession(seed=7, date=DAY)
    t0 = open_ns(DAY)
    spot = int(session.spot(session.sim_seconds(t0 + 5 * S))) + 0.777  # the signal: a close at .777
    _, first = write_journal(tmp_path / "journal", session, t0)
    closes = [spot - 0.3] * 10 + [spot, spot + 0.5, spot + 0.5, spot + 5.5, spot + 0.3, spot + 0.3]
    w = JournalWriter(tmp_path / "journal")
    try:  # the planted path as index values, four a second
        for i, c in enumerate(closes):
            w.append([IndexValue(sym="I:SPX", value=round(c, 3), ts=t0 + i * S + k * 250_000_000) for k in range(4)])
    finally:
        w.close()
    store = open_store(f"sqlite:///{tmp_path / 'bt.db'}")
    try:
        res = bt.run(store, bt.Options(start=DAY, end=DAY, symbols=["I:SPX"], resolution="tick", record=False,
                                       journal=tmp_path / "journal"), CFG)
    finally:
        store.close()
    (t,) = res["trades"]
    data = res["evidence"]["data"][0]
    assert data["source"] == "journal ticks" and data["rows"] == 16 * 4
    assert t["t1_hit"] and t["option_symbol"] in first and t["pnl_usd"] is not None
    assert t["entry_fill"] == first[t["option_symbol"]].ask
