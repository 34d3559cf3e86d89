"""The real selector process (``python -m services.selector``) on real sockets: chain doc and quotes
in, ``select`` answered, ``reco.<id>`` on a trigger, ``exit.<id>`` from bars, bad input counted."""


import pytest

from spx_common.bus import RpcError
from spx_common.models import MicroBar, Quote, SetupTransition
from tests.conftest import eventually
from tests.harness import service_process
from tests.selector.helpers import T, chain_doc

PUBS = ("feed", "detector", "aggregator")


@pytest.fixture
def selector(run_dir):
    with service_process(run_dir, "selector", peers=PUBS, topics=["reco.", "exit.", "block."], heartbeat_ns=T,
                         env={"SPX_SELECTOR_DEFAULT_BUYING_POWER": "20000", "SPX_SELECTOR_BAR_INTERVAL": "1s",
                              "SPX_SELECTOR_PIVOT_LEFT": "1", "SPX_SELECTOR_PIVOT_RIGHT": "1"}) as handles:
        yield handles


def _collect(sub, pred, timeout_s=5.0):
    got = []

    def drained():
        got.extend((f.topic, f.body()) for f in iter(lambda: sub.recv(0.05), None) if not f.topic.startswith("_"))
        return pred(got)

    eventually(drained, timeout_s)
    return got


def test_selector_process_end_to_end(selector, capsys):
    pubs, sub, rpc = selector
    doc = chain_doc()
    spot = doc["underlying"]
    assert rpc.call("chain")["issues"][0].startswith("no_chain")
    pubs["feed"].publish("chain.SPXW", "doc", {"ts": T, "contracts": "nope"}, T)  # refused, counted
    pubs["feed"].publish("chain.SPXW", "doc", doc, T)
    view = eventually(lambda: (lambda v: v["ok"] and v)(rpc.call("chain")), 5)
    assert view["contracts"] == 82 and view["underlying"] == spot
    atm = min((c for c in doc["contracts"] if c["type"] == "call"), key=lambda c: abs(c["strike"] - spot))
    pubs["feed"].publish("tick.O:SPXW", "ticks", [Quote(sym=atm["symbol"], bid=atm["bid"] + 0.5, ask=atm["ask"] + 0.5,
                                                        bid_size=5, ask_size=5, ts=T + 10**9)], T + 10**9)
    near = eventually(lambda: (lambda v: [c for c in v["near"] if "O:" + c["symbol"] == atm["symbol"]
                                          and c["bid"] == atm["bid"] + 0.5] or None)(rpc.call("chain")), 5)
    assert near[0]["greeks"] == "computed"

    setup = {"setup_id": "s9", "direction": "long", "entry": spot, "stop": spot - 8}
    a = rpc.call("select", {"setup": setup, "risk": {"maxRiskDollars": 800, "dayTradeBuyingPower": 50_000},
                            "regime": "trending"})
    b = rpc.call("select", {"setup": setup, "risk": {"maxRiskDollars": 8000, "dayTradeBuyingPower": 50_000},
                            "regime": "trending"})
    assert a["ok"] and b["ok"] and a["sizing"]["contractsByRisk"] < b["sizing"]["contractsByRisk"]
    z = rpc.call("select", {"setup": setup, "risk": {"maxRiskDollars": 800, "dayTradeBuyingPower": 0}})
    assert not z["ok"] and z["reason"].startswith("no_buying_power")
    with pytest.raises(RpcError) as err:
        rpc.call("select", {"setup": {"direction": "long"}, "risk": {}})
    assert err.value.code == "bad_request"

    t = SetupTransition(setup_id="s1", detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                        from_state="ready", to_state="triggered", reason="t", ts=T + 2 * 10**9, price=spot,
                        stop=spot - 5, targets=[spot + 5, spot + 10])
    pubs["detector"].publish("state.market", "doc", {"regime": "trend_up", "ts": T}, T)
    pubs["detector"].publish("setup.transition", "setup_transition", t, t.ts)
    got = _collect(sub, lambda g: any(tp == "reco.s1" for tp, _ in g))
    reco = [b for tp, b in got if tp == "reco.s1"][0]
    assert reco.ok and reco.ts == t.ts and reco.suggestedContracts >= 1 and reco.option_type == "call", reco.reason
    assert reco.sizing.contractsByBuyingPower == int(20000 // reco.sizing.perContractDebit)
    # the broker's fallback form answers the same (cached) recommendation
    again = rpc.call("select", {"setup_id": "s1", "transition": {**_builtins(t)}})
    assert again["occ_symbol"] == reco.occ_symbol and again["suggestedContracts"] == reco.suggestedContracts

    path = [(spot + 2, spot - 1), (spot + 5.5, spot + 1), (spot + 10.5, spot + 4), (spot + 11, spot + 7),
            (spot + 9, spot + 5.5), (spot + 12, spot + 9), (spot + 12, spot + 4.9)]
    for i, (hi, lo) in enumerate(path, 3):
        ts = T + i * 10**9
        bar = MicroBar(sym="I:SPX", interval="1s", start_ns=ts - 10**9, open=lo, high=hi, low=lo, close=hi,
                       closed=True)
        pubs["aggregator"].publish("bar.1s.I:SPX", "bar", bar, ts)
    got = _collect(sub, lambda g: any(tp == "exit.s1" and b.action == "exit_all" for tp, b in g))
    acts = [b.action for tp, b in got if tp == "exit.s1"]
    assert acts == ["scale_out", "move_stop", "scale_out", "trail_stop", "exit_all"]
    last = [b for tp, b in got if tp == "exit.s1"][-1]
    assert last.trailing_stop_path == [spot - 5, spot, spot + 5.0]  # swing low 5.5 - 0.5 buffer
    assert rpc.call("exits") == []
    metrics = rpc.call("metrics")
    assert 'selector_bad_input_total{kind="chain_doc"} 1' in metrics
    assert 'selector_chain_issue_total{kind="no_chain"} 1' in metrics
    assert 'selector_exit_advice_total{action="scale_out"} 2' in metrics

    # spx select asks the running process and prints readably
    from services.cli.main import main
    capsys.readouterr()
    assert main(["select", "long", "--entry", str(spot), "--stop", str(spot - 8), "--risk", "800",
                 "--dtbp", "50000", "--regime", "trending"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK  ") and "suggested  " in out and "by buying power" in out and a["tradier_symbol"] in out
    assert main(["select", "short", "--entry", str(spot), "--stop", str(spot - 8), "--dtbp", "1"]) == 1
    assert capsys.readouterr().out.startswith("NO  stop_wrong_side")
    assert main(["select", "--chain"]) == 0 and "chain OK: 82 contracts" in capsys.readouterr().out
    assert main(["select", "long"]) == 2
    # issue 18's reproduced case: the entry 23 points above SPX, an 8-point stop, $500 of risk. It sized
    # 30 contracts ($19,800 of premium): the loss was priced against the current quote and clamped to $0.01
    cmd = ["select", "long", "--entry", str(spot + 23), "--stop", str(spot + 15), "--risk", "500", "--dtbp", "20000"]
    assert main(cmd + ["--json"]) in (0, 1)
    import json
    r = json.loads(capsys.readouterr().out)
    s = r["sizing"]
    assert s["entry"] == spot + 23 and s["stop"] == spot + 15 and s["valueAtEntry"] > s["valueAtStop"]
    n = r.get("suggestedContracts", 0)  # 0 is left off the wire
    assert s["perContractLoss"] > 10 and n * s["perContractLoss"] <= 500
    assert n * s["perContractDebit"] <= 2000 and s["maxPremiumDollars"] == 2000
    main(cmd)
    assert f"at entry {spot + 23:g}" in capsys.readouterr().out  # the loss line a trader checks by hand


def _builtins(t):
    import msgspec
    return msgspec.to_builtins(t)
