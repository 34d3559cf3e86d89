"""Fuzzing the Massive REST boundary (feed backfill and poll fallback).

The client is the real ``MassiveRest`` with an injected httpx transport: the fake server is a plain
function serving hypothesis-generated answers (any status, any body, hostile ``next_url``s, rows that
are almost right). Properties:

* only ``RestError`` ever leaves the client (no KeyError/TypeError/OverflowError/AttributeError), and
  every request is counted by outcome in ``rest_requests_total``;
* every Trade/Quote it yields is valid on the wire: it survives the mesh codec (encode + typed decode),
  so one bad row can never make the frame that carries the good rows around it unpublishable;
* the well-formed rows planted among the junk are all yielded, in order;
* pagination is bounded whatever ``next_url`` says.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.feed.rest import MassiveRest, RestError
from spx_common.codec import decode_frames, encode_payload
from spx_common.metrics import Registry

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=4), max_leaves=12)

GOOD_TS = 1_771_599_600_000_000_000


def good_trade(i: int) -> dict:
    return {"price": 590.0 + i / 100, "size": 10, "sip_timestamp": GOOD_TS + i, "sequence_number": 1000 + i,
            "exchange": 4, "conditions": [12]}


def good_quote(i: int) -> dict:
    return {"bid_price": 590.0, "ask_price": 590.02, "bid_size": 100, "ask_size": 200, "sip_timestamp": GOOD_TS + i,
            "sequence_number": 5000 + i, "bid_exchange": 4, "ask_exchange": 7}


TRADE_KEYS = list(good_trade(0))
QUOTE_KEYS = list(good_quote(0))
hostile_numbers = st.sampled_from([-1, -0.0, 2**63, 2**64, 2**80, -(2**63) - 1, 1e308, math.inf, -math.inf, "1e400",
                                   "NaN", "12", "", None, True, [], {}])


def almost(keys: list[str], make) -> st.SearchStrategy:
    """A good row with one field replaced by something hostile (or removed)."""
    return st.tuples(st.integers(0, 10_000), st.sampled_from(keys), hostile_numbers | json_values, st.booleans()).map(
        lambda t: {k: v for k, v in {**make(t[0]), t[1]: t[2]}.items() if not (t[3] and k == t[1])})


def page(kind: str) -> st.SearchStrategy:
    keys, make = (TRADE_KEYS, good_trade) if kind == "trades" else (QUOTE_KEYS, good_quote)
    results = st.lists(st.one_of(almost(keys, make), json_values), max_size=6) | json_values
    body = st.fixed_dictionaries({"status": st.just("OK"), "results": results},
                                 optional={"next_url": st.sampled_from(["http://fake/v3/next?cursor=abc", "", 5, None,
                                                                        "/relative", "http://fake/loop"]),
                                           "request_id": st.text(max_size=5)})
    return st.one_of(
        body.map(lambda b: (200, json.dumps(b, allow_nan=True), "application/json")),
        json_values.map(lambda v: (200, json.dumps(v, allow_nan=True), "application/json")),
        st.tuples(st.sampled_from([400, 401, 403, 404, 413, 429, 500, 502, 503]), st.text(max_size=30),
                  st.sampled_from(["text/html", "application/json"])),
        st.text(max_size=40).map(lambda t: (200, t, "application/json")),
    )


def wire(ev) -> list:
    """Publish-and-receive through the mesh codec (what the aggregator would decode)."""
    payload = encode_payload("ticks", [ev], src="feed", session="s", seq=1, event_ns=0)
    return decode_frames([b"tick.SPY", payload]).body()


async def _collect(kind: str, answers: list, good_first: int) -> tuple[list, RestError | None, Registry, int]:
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        i = calls[0]
        calls[0] += 1
        if i == 0 and good_first:  # the first page: good rows, then a next_url into the fuzzed answers
            rows = [good_trade(j) if kind == "trades" else good_quote(j) for j in range(good_first)]
            return httpx.Response(200, json={"status": "OK", "results": rows, "next_url": "http://fake/v3/page2"})
        if i >= 30:  # a looping next_url ends here (the max_pages bound itself: test_pagination_is_bounded)
            return httpx.Response(200, json={"status": "OK", "results": []})
        status, text, ctype = answers[(i - (1 if good_first else 0)) % len(answers)]
        return httpx.Response(status, text=text, headers={"content-type": ctype})

    reg = Registry()
    rest = MassiveRest("http://fake", "k", retries=2, backoff_initial_s=0.0, backoff_max_s=0.0, rate_limit_wait_s=0.0,
                       requests_per_s=1e9, registry=reg, transport=httpx.MockTransport(handler))
    got, err = [], None
    try:
        gen = rest.trades("SPY", gte_ns=0, lt_ns=2**62) if kind == "trades" else rest.quotes("SPY", gte_ns=0,
                                                                                              lt_ns=2**62)
        async for ev in gen:
            got.append(ev)
            if len(got) > 10_000:
                break
    except RestError as exc:
        err = exc
    finally:
        await rest.aclose()
    return got, err, reg, calls[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["trades", "quotes"]), st.integers(0, 3), st.data())
def test_any_rest_answer_gives_wire_valid_events_or_a_rest_error(kind, good_first, data):
    answers = data.draw(st.lists(page(kind), min_size=1, max_size=3))
    got, err, reg, calls = asyncio.run(_collect(kind, answers, good_first))
    # the good rows of the first page come first, all of them, in order
    assert [e.seq for e in got[:good_first]] == [(1000 if kind == "trades" else 5000) + j for j in range(good_first)]
    # everything yielded can be published: the typed decode on the consumer side accepts it
    for ev in got:
        assert wire(ev) == [ev]
    # every request counted; pagination bounded (max_pages) and retries bounded
    counted = reg.counter("rest_requests_total", "", ["outcome"]).total()
    assert counted == calls
    assert calls <= 31
    if err is not None:
        assert err.kind in ("retryable", "fatal") and err.url


def test_pagination_is_bounded_whatever_next_url_says():
    calls = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        return httpx.Response(200, json={"status": "OK", "results": [good_trade(calls[0])],
                                         "next_url": "http://fake/v3/trades/SPY?cursor=same"})

    async def go():
        rest = MassiveRest("http://fake", "k", requests_per_s=1e9, transport=httpx.MockTransport(handler))
        try:
            return [r async for r in rest.paginate("/v3/trades/SPY", {}, max_pages=7)]
        finally:
            await rest.aclose()

    assert len(asyncio.run(go())) == 7 and calls[0] == 7


def test_last_trade_and_nbbo_and_indices_refuse_hostile_rows():
    hostile = [{"p": math.inf, "t": 1}, {"p": 1.0, "t": 2**80}, {"p": "x", "t": 1}, {"p": 1.0, "t": -5},
               {"p": 1.0, "t": 1, "q": 2**70}, {"P": 1.0, "p": 1.0, "t": 1e400}]

    async def go():
        out = []
        for row in hostile:
            def handler(request, row=row):
                if "snapshot" in request.url.path:
                    return httpx.Response(200, text=json.dumps({"results": [
                        {"ticker": "I:SPX", "value": row.get("p"), "last_updated": row.get("t")}, "junk", 5]},
                        allow_nan=True))
                return httpx.Response(200, text=json.dumps({"results": row}, allow_nan=True))

            rest = MassiveRest("http://fake", "k", retries=0, requests_per_s=1e9,
                               transport=httpx.MockTransport(handler))
            try:
                for ev in (await rest.last_trade("SPY"), await rest.last_quote("SPY"),
                           *(await rest.index_values(["I:SPX"]))):
                    if ev is not None:
                        out.append(ev)
            finally:
                await rest.aclose()
        return out

    for ev in asyncio.run(go()):
        assert wire(ev) == [ev], ev
