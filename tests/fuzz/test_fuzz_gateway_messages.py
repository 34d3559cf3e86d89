"""Fuzzing the websocket client boundary of a real gateway (real sockets, real bus publishers).

One connection receives hypothesis-generated client messages: near-valid subscribe/unsubscribe/ping
objects with hostile fields, any JSON, non-JSON text, binary frames, oversized messages. After each
one the client sends a ping with a fresh id. Properties:

* the connection stays open and the pong for that id arrives (no crash, no hang, no wedge);
* every server message conforms to the published schema (``check_schema``);
* every refusal is an ``error`` message with a code, and each one is counted in
  ``ws_client_errors_total{code}`` (the count of error messages equals the counter's increase);
* a valid ``price:SPY`` subscription made at the start keeps receiving prices throughout.
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import GatewayRunner, WsClient

GOOD_CHANNELS = ["price:SPY", "microbar:SPY:1s", "setups", "market", "status", "microbar:I:SPX:5s"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
channels = st.one_of(st.sampled_from(GOOD_CHANNELS), st.text(max_size=30), json_values)
near_valid = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping", "SUBSCRIBE", "", "auth"]), json_values)},
    optional={"channels": st.one_of(st.lists(channels, max_size=5), json_values), "id": json_values,
              "latency": json_values, "extra": json_values})
messages = st.one_of(
    near_valid.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.integers(4097, 20_000).map(lambda n: json.dumps({"op": "ping", "id": "x" * n})),
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = GatewayRunner(tmp_path_factory.mktemp("gwfuzz"), price_throttle_ms=0, client_msgs_per_s=100_000)
    client = WsClient(gw.url)
    client.subscribe("price:SPY")
    yield gw, client
    client.close()
    gw.close()


def _errors_counted(gw) -> float:
    return gw.svc.metrics.counter("ws_client_errors_total", "", ["code"]).total()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(messages, min_size=1, max_size=4))
def test_hostile_client_messages_are_refused_counted_and_the_connection_lives(gateway, batch):
    gw, client = gateway
    counted0 = _errors_counted(gw)
    seen0 = len(client.messages)
    for raw in batch:
        client.send(raw)
    rid = uuid.uuid4().hex
    gw.trade(590.0)
    client.send({"op": "ping", "id": rid})
    client.until(lambda m: m["type"] == "pong" and m["data"].get("id") == rid, 5)  # every message schema-checked
    got = client.messages[seen0:]
    errors = [m for m in got if m["type"] == "error"]
    assert all(isinstance(m["data"].get("code"), str) and m["data"]["code"] for m in errors)
    assert _errors_counted(gw) - counted0 == len(errors)
    for raw in batch:
        if isinstance(raw, bytes) or not raw.strip().startswith(("{", "[")):
            assert errors, f"no error for {raw!r:.80}"


def test_prices_keep_flowing_after_the_fuzzing(gateway):
    gw, client = gateway
    n = len(client.on("price:SPY"))
    gw.trade(591.25)
    client.until(lambda m: m["channel"] == "price:SPY" and m["type"] == "update" and len(client.on("price:SPY")) > n,
                 5)
