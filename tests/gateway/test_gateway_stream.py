"""Basic streaming through the real gateway: price and 1s bars, camelCase, HTTP on the same port."""

import urllib.request

import pytest

from spx_common.bus import RpcClient
from tests.conftest import eventually
from tests.gateway.harness import GatewayRunner, WsClient


@pytest.fixture
def gw(run_dir):
    g = GatewayRunner(run_dir, price_throttle_ms=0)
    yield g
    g.close()


def test_price_and_bars_stream_with_envelope(gw):
    c = WsClient(gw.url)
    ack = c.subscribe("price:SPY", "microbar:SPY:1s")
    assert ack["data"]["channels"] == ["price:SPY", "microbar:SPY:1s"]
    snaps = c.on("price:SPY", ("snapshot",)) + c.on("microbar:SPY:1s", ("snapshot",))
    assert len(snaps) == 2 and snaps[0]["data"] is None and snaps[1]["data"] == {"bars": [], "current": None}
    gw.trade(601.25)
    msg = c.until(lambda m: m["channel"] == "price:SPY" and m["type"] == "update")
    assert msg["data"]["price"] == 601.25 and msg["data"]["bid"] == 601.24 and msg["source"] == "tick"
    assert msg["seq"] == snaps[0]["seq"] + 1
    gw.bar(0, 601.3, closed=False)
    gw.bar(0, 601.4, closed=True)
    bar = c.until(lambda m: m["channel"] == "microbar:SPY:1s" and m["data"]["closed"])
    assert bar["data"]["deltaVolume"] == 12.0 and bar["data"]["bidAskImbalance"] == 0.2
    assert bar["data"]["close"] == 601.4 and "delta_volume" not in bar["data"]
    c.close()


def test_http_dashboard_metrics_and_404(gw):
    base = f"http://127.0.0.1:{gw.port}"
    with urllib.request.urlopen(base + "/", timeout=5) as r:
        assert r.status == 200 and b"<canvas" in r.read()
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        assert b"ws_price_broadcast_rate" in r.read()
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(base + "/static/../../service.py", timeout=5)
    assert exc.value.code == 404


def test_status_rpc_and_heartbeat_detail_describe_the_gateway(gw):
    c = WsClient(gw.url)
    rpc = RpcClient(gw.ctx, gw.bus.rep_endpoint("gateway", gw.rt), timeout_s=2.0, retries=0)
    try:
        doc = eventually(lambda: (d := rpc.call("status"))["gateway"]["clients"] == 1 and d, 5)
        assert doc["gateway"]["url"] == gw.url
        eventually(lambda: "clients=1" in gw.svc.detail, 5, what="heartbeat detail shows the clients")
    finally:
        rpc.close()
        c.close()
