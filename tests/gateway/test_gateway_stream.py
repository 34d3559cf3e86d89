"""Basic streaming through the real gateway: price and 1s bars, camelCase, HTTP on the same port."""

import urllib.request

import pytest

from spx_common.bus import RpcClient
from spx_common.models import Quote, Trade
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


def test_option_root_batch_prices_each_contract(gw):
    """One ``tick.O:SPXW`` frame carries several contracts: each contract's channel gets its own price."""
    c1, c2 = "O:SPXW261120C05900000", "O:SPXW261120P05850000"
    c = WsClient(gw.url)
    c.subscribe(f"price:{c1}", f"price:{c2}")
    ts = gw.ts + 1_000_000
    gw.pubs["feed"].publish("tick.O:SPXW", "ticks",
                            [Quote(sym=c1, bid=4.0, ask=4.2, ts=ts), Quote(sym=c2, bid=2.1, ask=2.3, ts=ts + 1),
                             Trade(sym=c1, price=4.1, size=3, ts=ts + 2), Quote(sym=c2, bid=2.0, ask=2.2, ts=ts + 3)],
                            ts + 3)
    p1 = c.until(lambda m: m["channel"] == f"price:{c1}" and m["type"] == "update" and m["data"]["price"] == 4.1)
    assert (p1["data"]["bid"], p1["data"]["ask"], p1["data"]["sym"]) == (4.0, 4.2, c1)
    p2 = c.until(lambda m: m["channel"] == f"price:{c2}" and m["type"] == "update" and m["data"]["bid"] == 2.0)
    assert (p2["data"]["price"], p2["data"]["ask"], p2["data"]["sym"]) == (2.1, 2.2, c2)  # no trade: the mid
    c.close()


def test_http_dashboard_metrics_and_404(gw):
    base = f"http://127.0.0.1:{gw.port}"
    with urllib.request.urlopen(base + "/", timeout=5) as r:  # the chart is drawn by the vendored library
        assert r.status == 200 and b'<div id="chart"' in r.read()
    lib = "/static/vendor/lightweight-charts/lightweight-charts.standalone.production.js"
    with urllib.request.urlopen(base + lib, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/javascript") and b"LightweightCharts" in r.read()
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
