"""A deliberately simple, independent reference for the microbar formulas (docs/microbars.md).

It recomputes every bar from whole lists, by definition, with none of the aggregator's
incremental state: the quote in force for a trade is found by scanning the stream backwards,
quote observations by filtering the symbol's quotes by time. Input must be in stream order with
non-decreasing timestamps (what the property tests generate). An excluded trade (``excl`` != 0) is in
no bar at all, except a volume-only one (``excl`` 4): its size is added to the volume and neutral volume
of its bucket's bar (a bucket with no other print has no bar).
"""

from __future__ import annotations

from spx_common.models import IndexValue, Quote, Trade


def reference_bars(events: list, interval_ns: int, interval: str = "1s", l2: bool = True) -> list[dict]:
    out = []
    symbols = sorted({e.sym for e in events})
    for sym in symbols:
        stream = [(i, e) for i, e in enumerate(events) if e.sym == sym]
        quotes = [(i, e) for i, e in stream if isinstance(e, Quote)]
        prints = [(i, e) for i, e in stream if isinstance(e, IndexValue) or isinstance(e, Trade) and not e.excl]
        vonly = [e for _, e in stream if isinstance(e, Trade) and e.excl == 4]
        buckets = sorted({e.ts // interval_ns for _, e in prints})
        for b in buckets:
            start, end = b * interval_ns, (b + 1) * interval_ns
            rows = [(i, e) for i, e in prints if start <= e.ts < end]
            prices = [e.value if isinstance(e, IndexValue) else e.price for _, e in rows]
            bar = {"sym": sym, "interval": interval, "start_ns": start, "open": prices[0], "high": max(prices),
                   "low": min(prices), "close": prices[-1], "trades": len(rows)}
            if isinstance(rows[0][1], IndexValue):
                bar.update(volume=0.0, vwap=None)
                bar.update(dict.fromkeys(MICRO))
                out.append(bar)
                continue
            sizes = [e.size for _, e in rows]
            volume = 0.0
            for s in sizes:
                volume += s
            pv = 0.0
            for _, e in rows:
                pv += e.price * e.size
            extra = 0.0
            for e in vonly:
                if start <= e.ts < end:
                    extra += e.size
            bar.update(volume=volume + extra, vwap=pv / volume if volume > 0 else None)
            if not l2:
                bar.update(dict.fromkeys(MICRO))
                out.append(bar)
                continue
            buy = sell = neutral = 0.0
            covered = 0
            for i, e in rows:
                before = [q for j, q in quotes if j < i]
                q = before[-1] if before else None
                if q is not None and q.ask > 0 and e.price >= q.ask:
                    buy += e.size
                elif q is not None and q.bid > 0 and e.price <= q.bid:
                    sell += e.size
                else:
                    neutral += e.size
                if q is not None and q.bid > 0 and q.ask > 0:
                    covered += 1
            at_start = [q for _, q in quotes if q.ts < start]
            obs = ([at_start[-1]] if at_start else []) + [q for _, q in quotes if start <= q.ts < end]
            sb = sa = 0.0
            for q in obs:
                sb += q.bid_size
                sa += q.ask_size
            spreads = [(q.ask - q.bid) / ((q.ask + q.bid) / 2) * 10_000 for q in obs
                       if q.bid > 0 and q.ask > 0 and q.ask >= q.bid]
            spread_sum = 0.0
            for s in spreads:
                spread_sum += s
            at_close = [q for _, q in quotes if q.ts < end]
            close_q = at_close[-1] if at_close else None
            bsz = close_q.bid_size if close_q else None
            asz = close_q.ask_size if close_q else None
            bar.update(
                buy_volume=buy, sell_volume=sell, neutral_volume=neutral + extra, delta_volume=buy - sell,
                bid_ask_imbalance=(sb - sa) / (sb + sa) if obs and sb + sa > 0 else None,
                avg_spread_bps=spread_sum / len(spreads) if spreads else None,
                bid_size_at_close=bsz, ask_size_at_close=asz,
                ask_bid_size_ratio=asz / bsz if bsz else None,
                quote_coverage_pct=100.0 * covered / len(rows),
            )
            out.append(bar)
    return out


MICRO = ("buy_volume", "sell_volume", "neutral_volume", "delta_volume", "bid_ask_imbalance", "avg_spread_bps",
         "bid_size_at_close", "ask_size_at_close", "ask_bid_size_ratio", "quote_coverage_pct")


def as_dicts(bars) -> list[dict]:
    keys = ("sym", "interval", "start_ns", "open", "high", "low", "close", "trades", "volume", "vwap") + MICRO
    rows = [{k: getattr(b, k) for k in keys} for b in bars]
    return sorted(rows, key=lambda r: (r["sym"], r["start_ns"]))


def normalize(rows: list[dict]) -> list[dict]:
    keys = ("sym", "interval", "start_ns", "open", "high", "low", "close", "trades", "volume", "vwap") + MICRO
    return sorted(({k: r.get(k) for k in keys} for r in rows), key=lambda r: (r["sym"], r["start_ns"]))
