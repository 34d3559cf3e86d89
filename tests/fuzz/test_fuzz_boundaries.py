"""Hypothesis fuzzing of the boundaries not covered elsewhere (frames: test_fuzz_frames.py; vendor
WebSocket JSON: tests/feed/test_feed_parsing.py): plugin outputs, Massive REST answers and Tradier
REST answers. Every case: no crash and no hang, a clear refusal (an error type or a counted reason),
and the good data around the bad kept."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.broker.tradier import (TradierBadResponse, TradierClient, TradierError, collection, dec,
                                     error_messages, exec_quantity)
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.hookspecs import API_VERSION, hookimpl
from services.detector.host import PluginHost
from services.feed.rest import MassiveRest, RestError, quote_from_rest, trade_from_rest
from spx_common.models import MicroBar, Quote, Trade

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_like = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), c, max_size=5)),
                         max_leaves=20)
GOOD = {"direction": "long", "entry_low": 100.0, "entry_high": 100.5, "stop": 99.0, "targets": [101.5],
        "confidence": 0.6}
candidate_ish = st.fixed_dictionaries({}, optional={
    "direction": st.one_of(st.sampled_from(["long", "short", "up"]), scalars),
    "entry_low": scalars, "entry_high": scalars, "stop": scalars,
    "targets": st.one_of(st.lists(scalars, max_size=3), scalars), "confidence": scalars,
    "evidence": st.one_of(st.dictionaries(st.text(max_size=6), json_like, max_size=3), scalars)})


# ------------------------------------------------------------------ plugin outputs


@FUZZ
@given(st.lists(st.one_of(candidate_ish, json_like), max_size=6), st.booleans())
def test_plugin_output_never_breaks_the_host_and_the_good_candidate_is_kept(junk, wrap_in_list):
    out = [GOOD, *junk] if wrap_in_list else (junk[0] if junk else None)

    class Fuzzed:
        @staticmethod
        @hookimpl
        def spx_detector_describe():
            return {"name": "fuzzed", "family": "fuzz", "api_version": API_VERSION}

        @staticmethod
        @hookimpl
        def spx_detector_on_bar(ctx, bar):
            return out

    host = PluginHost()
    host.register(Fuzzed(), "fuzz")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY"], family_cap=100, macro_block_below=-1.0), host)
    bar = MicroBar(sym="SPY", interval="1s", start_ns=1_795_185_000 * 10**9, open=100.2, high=100.3, low=100.1,
                   close=100.2, volume=10, closed=True)
    trs = eng.on_bar(bar)  # never raises
    refused = eng.drain_blocks()
    status = host.describe()[0]
    assert status["errors"] == 0 and status["status"] == "active"
    if wrap_in_list:
        assert [t.to_state for t in trs][:1] == ["forming"]  # the good candidate got through
        assert trs[0].entry_low == 100.0
    accepted_or_refused = len(trs) + len(refused)
    if isinstance(out, list):
        assert accepted_or_refused >= 1 or not out  # every item is accounted for, at least in part
    for reason, _ in refused:
        assert reason in {"candidate_invalid", "candidate_geometry", "candidate_not_finite", "candidate_not_a_map",
                          "plugin_output_not_a_list",
                          "duplicate", "capacity", "family_cap", "macro_misaligned", "family_quarantined"}


# ------------------------------------------------------------------ Massive REST answers


@FUZZ
@given(json_like)
def test_massive_rest_rows_parse_or_are_refused(row):
    for parse in (trade_from_rest, quote_from_rest):
        try:
            ev = parse("SPY", row)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{parse.__name__} raised {exc!r} on {row!r}")
        if ev is not None:
            assert isinstance(ev, (Trade, Quote)) and ev.ts == int(row["sip_timestamp"])
            vals = [ev.price, ev.size] if isinstance(ev, Trade) else [ev.bid, ev.ask, ev.bid_size, ev.ask_size]
            assert all(v >= 0 and not math.isnan(v) for v in vals)


@FUZZ
@given(st.one_of(json_like.map(lambda v: json.dumps(v).encode()), st.binary(max_size=60)),
       st.sampled_from([200, 200, 200, 400, 403, 404, 500, 502]))
def test_massive_rest_answers_give_a_body_or_a_clear_error(body, status):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    async def call():
        async with MassiveRest("http://massive.test", "k", retries=0, transport=httpx.MockTransport(handler)) as r:
            return await r.get_json("/v3/trades/SPY")

    try:
        out = asyncio.run(call())
    except RestError as exc:
        assert exc.kind in ("fatal", "retryable") and (exc.status == status or status == 200)
        return
    assert status == 200 and isinstance(out, dict)


# ------------------------------------------------------------------ Tradier REST answers


@FUZZ
@given(json_like)
def test_tradier_parsers_accept_or_refuse_cleanly(body):
    for fn in (lambda b: collection(b, "orders", "order"), error_messages):
        try:
            out = fn(body) if isinstance(body, dict) or fn is error_messages else []
        except TradierBadResponse:
            continue
        assert isinstance(out, list)
    assert dec(body) is None or dec(body) == dec(body) or dec(body).is_nan()
    if isinstance(body, dict):
        exec_quantity(body)


@FUZZ
@given(st.one_of(json_like.map(lambda v: json.dumps(v).encode()), st.binary(max_size=60)),
       st.sampled_from([200, 200, 400, 401, 500]))
def test_tradier_client_answers_give_data_or_a_tradier_error(body, status):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    async def call():
        c = TradierClient("http://tradier.test/v1", "tok-SECRET-9f3", "VA000", max_retries=0, backoff_s=0.0,
                          transport=httpx.MockTransport(handler))
        try:
            return await c.balances(), await c.orders()
        finally:
            await c.aclose()

    try:
        balances, orders = asyncio.run(call())
    except TradierError as exc:
        assert "tok-SECRET-9f3" not in str(exc) and "tok-SECRET-9f3" not in repr(exc)  # never echoed
        return
    assert isinstance(balances, dict) and isinstance(orders, list) and all(isinstance(o, dict) for o in orders)
