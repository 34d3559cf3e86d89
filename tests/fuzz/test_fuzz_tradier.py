"""Fuzzing the Tradier boundary (broker client) with hypothesis answers through an injected transport.

Every call of the real ``TradierClient`` gets answers drawn from: any status, JSON bodies shaped like
Tradier's (collections as list / single object / ``"null"``, numbers as strings, ``NaN``/``sNaN``/huge
decimals), fault and error bodies, HTML pages, and hostile rate-limit headers. Properties:

* only the client's own error tree leaves it (``TradierError`` subclasses; ``OrderRefused`` for a
  placement the guard refuses) - never KeyError/TypeError/ValueError/InvalidOperation;
* retries and rate-limit waits stay bounded (the test never waits beyond ``max_rate_wait_s``);
* what a successful call returns has the documented shape (lists of dicts, a dict, strings).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.broker import router
from services.broker.tradier import TradierClient, TradierError

SYM = "SPXW261120C05900000"
numbers = st.sampled_from(["1", "2.5", "-3", "NaN", "sNaN", "Infinity", "1e999999", "abc", "", "null", 0, 1.5, None,
                           10**30, [], {}])
order = st.fixed_dictionaries({}, optional={
    "id": numbers, "tag": st.sampled_from(["t1", "", None, 5]), "status": st.sampled_from(
        ["open", "filled", "rejected", "pending", "partially_filled", "weird", None]),
    "side": st.sampled_from(["sell_to_close", "buy_to_open", None, 3]), "option_symbol": st.sampled_from([SYM, "", None]),
    "quantity": numbers, "remaining_quantity": numbers, "exec_quantity": numbers, "executed_quantity": numbers})
position = st.fixed_dictionaries({}, optional={"symbol": st.sampled_from([SYM, "SPY", None]), "quantity": numbers,
                                               "cost_basis": numbers})
anything = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6) | numbers,
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=8)


def coll(outer: str, inner: str, item) -> st.SearchStrategy:
    return st.one_of(
        st.lists(item, max_size=3).map(lambda xs: {outer: {inner: xs}}),
        item.map(lambda x: {outer: {inner: x}}),
        st.sampled_from(["null", None, "", 5, [1]]).map(lambda v: {outer: v}),
        anything.map(lambda v: {outer: {inner: v}}),
    )


bodies = st.one_of(
    coll("orders", "order", order), coll("positions", "position", position),
    st.fixed_dictionaries({"order": st.one_of(order, anything)}),
    st.fixed_dictionaries({"balances": anything}),
    st.fixed_dictionaries({"stream": st.one_of(anything, st.fixed_dictionaries(
        {"url": st.sampled_from(["wss://x", "", None]), "sessionid": st.sampled_from(["s", "", None])}))}),
    st.fixed_dictionaries({"expirations": st.one_of(anything, st.fixed_dictionaries({"date": anything}))}),
    coll("quotes", "quote", anything), coll("options", "option", anything),
    st.fixed_dictionaries({"errors": st.one_of(anything, st.fixed_dictionaries({"error": anything}))}),
    st.fixed_dictionaries({"fault": st.one_of(anything, st.fixed_dictionaries(
        {"faultstring": anything, "detail": st.fixed_dictionaries({"errorcode": anything})}))}),
    anything,
)
answers = st.tuples(
    st.sampled_from([200, 200, 200, 201, 302, 400, 401, 403, 404, 429, 500, 502, 503]),
    st.one_of(bodies.map(lambda b: json.dumps(b)), st.sampled_from(["", "<html>502</html>", "{", "null", "[]"])),
    st.fixed_dictionaries({}, optional={
        "X-Ratelimit-Allowed": st.sampled_from(["120", "x", "-1", "0"]),
        "X-Ratelimit-Used": st.sampled_from(["121", "1", "y"]),
        "X-Ratelimit-Available": st.sampled_from(["0", "5", "-3", "z"]),
        "X-Ratelimit-Expiry": st.sampled_from([str(int(time.time() * 1000) + 50), "0", "9" * 30, "q", "-5"])}),
)

CALLS = ["balances", "positions", "orders", "order", "quotes", "option_chain", "expirations", "events",
         "long_and_working", "cancel", "modify", "place_entry", "place_exit"]


async def _call(client: TradierClient, name: str):
    if name == "balances":
        return await client.balances()
    if name == "positions":
        return await client.positions()
    if name == "orders":
        return await client.orders()
    if name == "order":
        return await client.order("1")
    if name == "quotes":
        return await client.quotes([SYM])
    if name == "option_chain":
        return await client.option_chain("SPX", "2026-11-20")
    if name == "expirations":
        return await client.expirations("SPX")
    if name == "events":
        return await client.create_events_session()
    if name == "long_and_working":
        return await client.long_and_working(SYM)
    if name == "cancel":
        return await client.cancel_order("1")
    if name == "modify":
        return await client.modify_order("1", price="2.05")
    if name == "place_entry":
        return await client.place_order(router.entry_payload(SYM, 1, 2.0, "t1"))
    return await client.place_order(router.exit_payload(SYM, 1, "t1", 2.0))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CALLS), st.lists(answers, min_size=1, max_size=4))
@example("cancel", [(200, '{"order": [null]}', {})])
@example("long_and_working", [(200, json.dumps({"positions": {"position": {"symbol": SYM, "quantity": "sNaN"}}}), {})])
@example("place_exit", [(200, json.dumps({"orders": {"order": {"option_symbol": SYM, "side": "sell_to_close",
                                                                  "status": "open", "remaining_quantity": "sNaN"}}}),
                         {})])
def test_any_tradier_answer_gives_a_result_or_a_tradier_error(name, script):
    served = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        status, text, headers = script[min(served[0], len(script) - 1)]
        served[0] += 1
        return httpx.Response(status, text=text, headers={"content-type": "application/json", **headers})

    async def go():
        client = TradierClient("https://sandbox.invalid/v1", "token", "VA1", max_retries=2, backoff_s=0.0,
                               max_rate_wait_s=0.2, transport=httpx.MockTransport(handler))
        try:
            return await asyncio.wait_for(_call(client, name), 10)
        finally:
            await client.aclose()

    t0 = time.monotonic()
    try:
        result = asyncio.run(go())
    except (TradierError, router.OrderRefused):
        result = None
    assert time.monotonic() - t0 < 10
    assert served[0] <= 40, "retries must stay bounded"
    if result is None:
        return
    if name in ("positions", "orders", "quotes", "option_chain"):
        assert isinstance(result, list) and all(isinstance(x, dict) for x in result)
    elif name == "expirations":
        assert isinstance(result, list) and all(isinstance(x, str) for x in result)
    elif name == "events":
        assert all(isinstance(x, str) and x for x in result)
    elif name == "long_and_working":
        assert all(isinstance(x, (int, float)) for x in result)
    else:
        assert isinstance(result, dict)
