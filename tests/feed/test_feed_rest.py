"""Historical REST client against the fake Massive REST server: pagination, retries, taxonomy."""

from __future__ import annotations

import asyncio

import pytest

from spx_common.metrics import Registry
from spx_common.models import IndexValue, Quote, Trade

from services.feed.rest import MassiveRest, RestError

T0 = 1_763_650_000_000_000_000  # 2025-11-20, after the shares cut-over


def _trades(n: int, sym: str = "SPY") -> list[Trade]:
    return [Trade(sym=sym, price=590 + i / 100, size=100, ts=T0 + i * 1_000_000, seq=i + 1, exch=4) for i in range(n)]


def _rest(fake, **kw) -> MassiveRest:
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("rate_limit_wait_s", 0.01)
    return MassiveRest(fake.rest_url, "k", **kw)


def test_trades_follow_next_url_with_key_readded(fake):
    fake.trades["SPY"] = _trades(25)
    fake.page_limit_max = 10

    async def go():
        async with _rest(fake) as rest:
            return [t async for t in rest.trades("SPY", gte_ns=T0 + 2_000_000, lt_ns=T0 + 22_000_000)]

    got = asyncio.run(go())
    assert [t.seq for t in got] == list(range(3, 23))
    assert all(t.backfilled and t.source == "backfill" for t in got)
    paths = [p for p, q, h in fake.requests]
    assert len(paths) == 2 and all(p == "/v3/trades/SPY" for p in paths)
    assert "cursor" in fake.requests[1][1] and "apiKey" not in fake.requests[1][1]
    assert all(h.get("Authorization") == "Bearer k" for _, _, h in fake.requests)


def test_quotes_units_and_malformed_rows_skipped(fake):
    old = T0 - 365 * 86400 * 10**9  # before 2025-11-03: sizes were round lots
    fake.quotes["SPY"] = [Quote(sym="SPY", bid=1, ask=1.01, bid_size=3, ask_size=4, ts=old, seq=1),
                          Quote(sym="SPY", bid=1, ask=1.01, bid_size=300, ask_size=400, ts=T0, seq=2)]

    async def go():
        async with _rest(fake) as rest:
            return [q async for q in rest.quotes("SPY", gte_ns=0, lt_ns=T0 + 1)]

    got = asyncio.run(go())
    assert [(q.bid_size, q.ask_size) for q in got] == [(300, 400), (300, 400)]


def test_retry_taxonomy_429_and_html_500_then_success(fake):
    fake.trades["SPY"] = _trades(3)
    fake.fail_next("/v3/trades", 429, 500, 502)
    reg = Registry()

    async def go():
        async with _rest(fake, registry=reg) as rest:
            return [t async for t in rest.trades("SPY", gte_ns=0, lt_ns=T0 * 2)]

    assert len(asyncio.run(go())) == 3
    req = reg.counter("rest_requests_total", "", ["outcome"])
    assert req.value(outcome="retryable_429") == 1
    assert req.value(outcome="retryable_500") == 1
    assert req.value(outcome="retryable_502") == 1
    assert req.value(outcome="ok") == 1
    assert reg.counter("rest_retries_total", "").value() == 3


def test_retries_are_bounded_and_fatal_is_not_retried(fake):
    fake.fail_next("/v2/aggs", 503, 503, 503)
    fake.aggs[("SPY", "minute")] = [{"o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "t": 1_763_650_000_000}]

    async def go():
        async with _rest(fake, retries=2) as rest:
            with pytest.raises(RestError) as ei:
                await rest.aggregates("SPY", 1, "minute", "2025-11-20", "2025-11-20")
            assert ei.value.kind == "retryable" and ei.value.status == 503
            bars = await rest.aggregates("SPY", 1, "minute", "2025-11-20", "2025-11-20")
            assert bars[0]["c"] == 1.5
        async with MassiveRest(fake.rest_url, "wrong", backoff_initial_s=0.01) as bad:
            with pytest.raises(RestError) as ei:
                await bad.last_trade("SPY")
            assert ei.value.kind == "fatal" and ei.value.status == 401 and "Unknown API Key" in str(ei.value)

    before = len(fake.requests)
    asyncio.run(go())
    assert len(fake.requests) - before == 3 + 1 + 1  # 3 tries, 1 success, 1 fatal without retry


def test_timeout_is_retryable(fake):
    fake.rest_stall_s = 0.5

    async def go():
        async with _rest(fake, timeout_s=0.1, retries=1) as rest:
            with pytest.raises(RestError) as ei:
                await rest.last_trade("SPY")
            return ei.value

    err = asyncio.run(go())
    assert err.kind == "retryable" and "timeout" in err.message


def test_poll_endpoints(fake):
    fake.trades["SPY"] = _trades(2)
    fake.quotes["SPY"] = [Quote(sym="SPY", bid=590, ask=590.01, bid_size=200, ask_size=300, ts=T0, seq=9)]
    fake.index_values["I:SPX"] = IndexValue(sym="I:SPX", value=5900.5, ts=T0)

    async def go():
        async with _rest(fake) as rest:
            return (await rest.last_trade("SPY"), await rest.last_quote("SPY"), await rest.index_values(["I:SPX", "I:X"]),
                    await rest.last_trade("QQQ"))

    t, q, idx, none = asyncio.run(go())
    assert t.seq == 2 and t.source == "poll"
    assert (q.bid, q.ask, q.bid_size, q.ask_size, q.source) == (590, 590.01, 200, 300, "poll")
    assert [(v.sym, v.value) for v in idx] == [("I:SPX", 5900.5)]
    assert none is None
