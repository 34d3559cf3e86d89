"""Tradier REST client against the fake Tradier server (real HTTP on loopback, every request checked)."""

import asyncio
from decimal import Decimal

import pytest

from services.broker import router
from services.broker.tradier import (
    PlacementUnresolved, TradierAuthError, TradierBadRequest, TradierBadResponse, TradierClient, TradierRateLimited,
    TradierRejected,
    TradierServerError, account_events, collection,
)
from spx_testing.fakes.tradier import FakeTradier

SYM = "SPXW260220C05000000"


@pytest.fixture
def fake():
    with FakeTradier() as f:
        yield f
    assert f.violations == [], f.violations


def client(fake, **kw):
    kw.setdefault("backoff_s", 0.01)
    return TradierClient(fake.base_url, fake.token, fake.account, **kw)


def run(coro):
    return asyncio.run(coro)


def test_collections_single_list_and_null():
    assert collection({"orders": "null"}, "orders", "order") == []
    assert collection({"orders": {"order": {"id": 1}}}, "orders", "order") == [{"id": 1}]
    assert collection({"orders": {"order": [{"id": 1}, {"id": 2}]}}, "orders", "order") == [{"id": 1}, {"id": 2}]
    assert collection({}, "orders", "order") == []


def test_account_reads_and_market_data(fake):
    async def go():
        c = client(fake)
        try:
            bal = await c.balances()
            assert bal["total_equity"] == Decimal("50000.12345") and bal["margin"]["option_buying_power"] == 40000
            assert await c.positions() == [] and await c.orders() == []
            fake.add_position(SYM, 2, 250.0)
            assert (await c.positions())[0]["quantity"] == 2
            assert len(await c.quotes(["SPX", SYM])) == 2
            assert len(await c.option_chain("SPX", "2026-02-20")) == 4
            assert await c.expirations("SPX") == ["2026-02-20", "2026-02-23"]
            assert c.limits["standard"].allowed == 60 and c.limits["market_data"].available is not None
            assert "test-token" not in repr(c)
        finally:
            await c.aclose()
    run(go())


def test_place_modify_cancel(fake):
    async def go():
        c = client(fake)
        try:
            placed = await c.place_order(router.entry_payload(SYM, 2, 1.23, "spx-default-s1-entry"))
            oid = placed["id"]
            o = fake.orders[oid]
            assert o["side"] == "buy_to_open" and o["price"] == 1.25 and o["tag"] == "spx-default-s1-entry"
            form = [r.form for r in fake.requests if r.method == "POST"][0]
            assert form == {"class": "option", "symbol": "SPX", "option_symbol": SYM, "side": "buy_to_open",
                            "quantity": "2", "type": "limit", "duration": "day", "price": "1.25",
                            "tag": "spx-default-s1-entry"}
            await c.modify_order(oid, price="1.30")
            assert fake.orders[oid]["price"] == 1.3
            with pytest.raises(router.OrderRefused):
                await c.modify_order(oid, quantity="3")
            with pytest.raises(router.OrderRefused, match="grid"):
                await c.modify_order(oid, price="3.05")
            await c.cancel_order(oid)
            assert fake.orders[oid]["status"] == "canceled"
            with pytest.raises(TradierBadRequest, match="finalized"):
                await c.cancel_order(oid)
            preview = await c.place_order(router.entry_payload(SYM, 1, 1.0, "p1"), preview=True)
            assert preview["result"] is True and len(fake.orders) == 1
        finally:
            await c.aclose()
    run(go())


def test_client_refuses_shorts_whatever_the_caller_asks(fake):
    async def go():
        c = client(fake)
        try:
            bad = router.entry_payload(SYM, 1, 1.0, "x1") | {"side": "sell_to_open"}
            with pytest.raises(router.OrderRefused, match="sell_to_open"):
                await c.place_order(bad)
            with pytest.raises(router.OrderRefused, match="would_short"):
                await c.place_order(router.exit_payload(SYM, 1, "x2", 1.0))  # nothing held
            fake.add_position(SYM, 2, 250.0)
            await c.place_order(router.stop_payload(SYM, 2, 0.95, "x3"))
            with pytest.raises(router.OrderRefused, match="working sells"):
                await c.place_order(router.scale_out_payload(SYM, 1, 2.0, "x4"))  # stop already covers both
            with pytest.raises(router.OrderRefused, match="order_class"):
                await c.place_order({"class": "multileg", "symbol": "SPX"})
            assert fake.count("POST", "/orders") == 1
        finally:
            await c.aclose()
    run(go())


def test_rejection_in_http_200_and_400_are_typed_and_not_retried(fake):
    async def go():
        c = client(fake)
        try:
            fake.script("reject", "place")
            with pytest.raises(TradierRejected, match="DayTradingBuyingPowerExceeded"):
                await c.place_order(router.entry_payload(SYM, 1, 1.0, "r1"))
            fake.script("400", "place")
            with pytest.raises(TradierBadRequest, match="Invalid Parameter"):
                await c.place_order(router.entry_payload(SYM, 1, 1.0, "r2"))
            assert fake.count("POST", "/orders") == 2
        finally:
            await c.aclose()
    run(go())


def test_429_honours_rate_limit_headers_then_succeeds(fake):
    async def go():
        c = client(fake)
        try:
            fake.script("429", "balances")
            assert (await c.balances())["account_type"] == "margin"
            assert fake.count("GET", "/balances") == 2
            fake.script("429", "place")
            await c.place_order(router.entry_payload(SYM, 1, 1.0, "rl1"))
            assert fake.count("POST", "/orders") == 2 and len(fake.orders) == 1
            fake.script("429", "positions", times=10)
            with pytest.raises(TradierRateLimited):
                await client(fake, max_retries=1).positions()
        finally:
            await c.aclose()
    run(go())


def test_500_retried_for_reads_never_for_placement(fake):
    async def go():
        c = client(fake)
        try:
            fake.script("500", "orders")
            assert await c.orders() == []
            assert fake.count("GET", "/orders") == 2
            fake.script("500", "positions", times=10)
            with pytest.raises(TradierServerError):
                await client(fake, max_retries=2).positions()
            # a 500 on placement: looked up by tag (not found) -> unresolved, never re-sent
            fake.script("500", "place")
            with pytest.raises(PlacementUnresolved):
                await c.place_order(router.entry_payload(SYM, 1, 1.0, "five-hundred"))
            assert fake.count("POST", "/orders") == 1
        finally:
            await c.aclose()
    run(go())


def test_placement_whose_answer_never_arrives_is_found_by_tag_not_resent(fake):
    async def go():
        c = client(fake, place_timeout_s=0.3)
        try:
            fake.script("hang", "place", delay_s=3.0)
            placed = await c.place_order(router.entry_payload(SYM, 1, 1.0, "lost-answer-1"))
            assert placed["resolved_by_tag"] and placed["id"] in fake.orders
            assert fake.count("POST", "/orders") == 1 and len(fake.orders) == 1
        finally:
            await c.aclose()
    run(go())


def test_auth_fault_is_typed(fake):
    async def go():
        c = TradierClient(fake.base_url, "wrong", fake.account, backoff_s=0.01)
        try:
            with pytest.raises(TradierAuthError, match="Invalid Access Token"):
                await c.balances()
        finally:
            await c.aclose()
    run(go())
    fake.violations.clear()  # the wrong token was the point


def test_account_events_stream_partial_fills(fake):
    async def go():
        c = client(fake)
        try:
            placed = await c.place_order(router.entry_payload(SYM, 3, 1.0, "ev1"))
            events = []

            async def reader():
                async for ev in account_events(c, idle_timeout_s=5):
                    events.append(ev)
                    if ev["status"] == "filled":
                        return

            task = asyncio.create_task(reader())
            for _ in range(100):
                if fake._sockets:
                    break
                await asyncio.sleep(0.02)
            fake.heartbeat()
            await asyncio.to_thread(fake.fill, placed["id"], 1, 1.0)
            await asyncio.to_thread(fake.fill, placed["id"], 2, 1.05)
            await asyncio.wait_for(task, 5)
            assert [e["status"] for e in events] == ["partially_filled", "filled"]
            assert events[0]["exec_quantity"] == 1 and events[1]["remaining_quantity"] == 0
            assert events[0]["tag"] == "ev1"
        finally:
            await c.aclose()
    run(go())


def test_html_answer_to_a_placement_is_resolved_by_tag(fake):
    async def go():
        c = client(fake)
        try:
            fake.script("html", "place")
            placed = await c.place_order(router.entry_payload(SYM, 1, 1.0, "html-1"))
            assert placed["resolved_by_tag"] and fake.count("POST", "/orders") == 1 and len(fake.orders) == 1
            fake.script("html", "balances")
            with pytest.raises(TradierBadResponse, match="not a JSON object"):
                await c.balances()
        finally:
            await c.aclose()
    run(go())
