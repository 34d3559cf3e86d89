"""The broker process end to end on real sockets: the embedded default (paper broker) and Tradier mode
against the fake Tradier server (REST + account-events websocket)."""

from __future__ import annotations

import pytest

from spx_common.flags import FlagStore
from tests.broker.harness import SYM, T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import FakeTradier

S = 1_000_000_000


def test_embedded_default_paper_trigger_entry_t1_scale_out(run_dir):
    h = Harness(run_dir)
    try:
        st = h.call("status")["broker"]
        assert st["mode"] == "paper" and st["send_allowed"] == {"default": True}
        assert "access_token" not in st["config"] and st["config"]["access_token_set"] is False
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("vwap-1", T0 + S) or h.seen("fill.default"), 10, what="entry filled")
        [entry_fill] = h.seen("fill.default")
        assert entry_fill.side == "buy_to_open" and entry_fill.quantity == 4 and entry_fill.price == 2.0
        pos = h.seen("position.default")[-1]
        assert pos.quantity == 4 and pos.avg_price == 2.0
        # issue 18: a protective stop rests right after the fill, so the entry's own updates are checked
        orders = [o for o in h.seen("order.default") if o.side == "buy_to_open"]
        assert orders[0].status == "new" and orders[-1].status == "filled"
        eventually(lambda: [o for o in h.seen("order.default") if o.type == "stop" and o.status == "open"], 10,
                   what="protective stop resting")
        # T1: the option rallies; the exit advisor scales half out at the bid
        h.quote(3.0, 3.1, T0 + 60 * S)
        eventually(lambda: h.advice("vwap-1", "scale_out", T0 + 61 * S, 0.5) or
                   len(h.seen("fill.default")) >= 2, 10, what="scale-out filled")
        scale = h.seen("fill.default")[1]
        assert scale.side == "sell_to_close" and scale.quantity == 2 and scale.price == 3.0
        pos = h.seen("position.default")[-1]
        assert pos.quantity == 2 and pos.realized_pnl == 200.0
        ledger = h.call("ledger", {"user": "default"})["default"]
        assert ledger["positions"][0]["quantity"] == 2 and ledger["pnl"]["realized"] == 200.0
        assert [f["side"] for f in ledger["fills"]] == ["buy_to_open", "sell_to_close"]
        st = h.call("status")["broker"]
        assert st["slippage"]["count"] == 2
        assert h.seen("block.") == []
        # operator flatten closes the runner (its protective stop is cancelled first, then it is sold)
        res = h.call("flatten", {})
        assert res["closing"] == [{"user": "default", "symbol": SYM, "held": 2.0}] and not res["blocked"]
        eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10, what="flattened")
        assert 'broker_fills_total 3' in h.call("metrics")
    finally:
        h.close()


def test_kill_switch_refuses_entries_with_published_reason(run_dir):
    FlagStore(run_dir / "flags.json").set("kill_switch", True)
    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("k-1", T0 + S) or h.seen("block.broker"), 10)
        b = h.seen("block.broker")[0]
        assert b.reason == "kill_switch" and b.subject == "default:k-1"
        assert h.seen("order.") == []
        assert 'broker_blocks_total{reason="kill_switch"}' in h.call("metrics")
    finally:
        h.close()


def _tradier_env(fake, **extra):
    return {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
            "TRADIER_ACCOUNT_ID": fake.account, **extra}


def test_tradier_mode_flags_off_sends_nothing(run_dir):
    with FakeTradier() as fake:
        h = Harness(run_dir, _tradier_env(fake, SPX_BROKER_AUTO_EXECUTION_USERS="default"))
        try:
            st = h.call("status")["broker"]
            assert st["mode"] == "tradier" and st["refusal_reason"] == {"default": "execution_disabled"}
            assert fake.token not in str(st)
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("t-1", T0 + S) or h.seen("block.broker"), 10)
            assert h.seen("block.broker")[0].reason == "execution_disabled"
            assert fake.count("POST", "/orders") == 0
        finally:
            h.close()
        assert fake.violations == []


def test_tradier_mode_production_url_needs_second_flag(run_dir):
    with FakeTradier() as fake:
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default"))
        try:
            assert h.call("status")["broker"]["refusal_reason"] == {"default": "production_not_enabled"}
        finally:
            h.close()


def test_tradier_mode_enabled_places_streams_partial_fills_and_reconciles(run_dir):
    with FakeTradier() as fake:
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default",
                                          SPX_BROKER_RECONCILE_INTERVAL_S="0.5"))
        try:
            eventually(lambda: h.call("status")["broker"]["stream"] == "up" or fake._sockets, 10,
                       what="account events connected")
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("t-2", T0 + S) or fake.orders, 10, what="order placed at Tradier")
            [(oid, o)] = fake.orders.items()
            assert o["side"] == "buy_to_open" and o["quantity"] == 4 and o["price"] == 2.0
            assert o["tag"].startswith("spx-default-t-2-entry")
            fake.fill(oid, 1, 2.0)
            eventually(lambda: len(h.seen("fill.default")) == 1, 10, what="partial fill via stream")
            fake.fill(oid, 3, 1.95)
            eventually(lambda: len(h.seen("fill.default")) == 2, 10)
            fills = h.seen("fill.default")
            assert [f.quantity for f in fills] == [1, 3] and fills[1].price == pytest.approx(1.95)
            assert h.seen("position.default")[-1].quantity == 4
            assert [o.status for o in h.seen("order.default") if o.side == "buy_to_open"][-1] == "filled"
            # drift: a position appears at the broker that the ledger does not know
            fake.add_position("SPXW260220P04900000", 1, 100.0)
            eventually(lambda: [a for a in h.seen("alert.default") if a["kind"].startswith("drift:")], 10)
            assert h.call("status")["broker"]["drift"][0]["symbol"] == "SPXW260220P04900000"
            # issue 18: one entry, and protective stops for what filled (1, then the 3 more)
            assert [r.form["side"] for r in fake.requests if r.method == "POST" and r.path.endswith("/orders")] == \
                ["buy_to_open", "sell_to_close", "sell_to_close"]
            stops = [o for o in fake.orders.values() if o["type"] == "stop"]
            # advisor mode: one level, the option's value at the setup's stop (the user's own sizing), under the fill
            [level] = {o["stop_price"] for o in stops}
            assert sum(o["quantity"] for o in stops) == 4 and 0.05 <= level < 1.95
        finally:
            h.close()
        assert fake.violations == []


def test_cli_broker_status_and_flatten(run_dir):
    import subprocess
    import sys

    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("c-1", T0 + S, qty=2) or h.seen("fill.default"), 10)
        out = subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "status"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "mode        paper" in out.stdout and SYM in out.stdout and "qty     2" in out.stdout
        out = subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "flatten"], capture_output=True,
                             text=True, timeout=30)
        # issue 18: the protective stop is cancelled first; the exit follows the confirmed cancel
        assert out.returncode == 0 and "closing 1 position(s)" in out.stdout, out.stdout + out.stderr
        eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10)
    finally:
        h.close()
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "broker", "status"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "not answering" in out.stderr


@pytest.mark.parametrize("enabled", [True, False])
def test_late_day_flatten_guarded_by_flag(run_dir, enabled):
    import datetime as dt

    env = {"TRADIER_FORCE_FLATTEN_ENABLED": "true"} if enabled else {}
    h = Harness(run_dir, env)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("f-1", T0 + S, qty=2) or h.seen("fill.default"), 10)
        late = int(dt.datetime(2026, 2, 20, 20, 52, tzinfo=dt.UTC).timestamp() * 1e9)  # 15:52 ET
        h.quote_live(1.5, 1.6, late)
        if enabled:
            eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10, what="flattened")
            assert [a["kind"] for a in h.seen("alert.default") if a["kind"] == "flatten"] == ["flatten"]
            assert h.seen("fill.default")[-1].price == 1.5
        else:
            import time
            time.sleep(0.6)  # three periodic() ticks (heartbeat 0.2 s in the harness): nothing may happen
            assert h.seen("position.default")[-1].quantity == 2
            assert len(h.seen("order.default")) == 5  # entry: new, open, filled; protective stop: new, open
    finally:
        h.close()


def test_sealed_credentials_select_tradier_mode_and_never_leak(run_dir):
    import subprocess
    import sys

    from spx_common.crypto import generate_key

    with FakeTradier() as fake:
        key = generate_key("k1")
        env = {"SPX_CREDENTIALS_KEYS": key}
        import os

        cli = [sys.executable, "-m", "services.cli.main", "broker", "credentials"]
        out = subprocess.run(cli + ["set", "--account", fake.account], input=fake.token + "\n", text=True,
                             capture_output=True, timeout=30, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        raw = (run_dir / "spx.sqlite3").read_bytes()
        assert fake.token.encode() not in raw  # only ciphertext at rest
        out = subprocess.run(cli + ["show"], text=True, capture_output=True, timeout=30, env={**os.environ, **env})
        assert "sealed with key k1" in out.stdout and fake.token not in out.stdout
        h = Harness(run_dir, {**env, "TRADIER_BASE_URL": fake.base_url})
        try:
            st = h.call("status")
            assert st["broker"]["mode"] == "tradier" and st["broker"]["config"]["account_id"] == fake.account
            assert fake.token not in str(st)
            eventually(lambda: fake.count("POST", "/accounts/events/session") >= 1, 10)  # token works
        finally:
            h.close()
        log = h.proc.output()
        assert fake.token not in log
        # a store that cannot be opened stops the broker with a clear message (no silent paper fallback)
        proc = subprocess.run([sys.executable, "-m", "services.broker"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "SPX_CREDENTIALS_KEYS": generate_key("other")})
        assert proc.returncode == 2 and "not in the key ring" in proc.stderr
    assert fake.violations == []


def test_tradier_mode_lost_placement_answer_is_found_by_tag_and_never_resent(run_dir):
    with FakeTradier() as fake:
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default", SPX_BROKER_PLACE_TIMEOUT_S="0.3"))
        try:
            eventually(lambda: fake._sockets, 10, what="account events connected")
            fake.script("hang", "place", delay_s=3.0)
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("lost-1", T0 + S, qty=2) or fake.orders, 10)
            eventually(lambda: [o for o in h.seen("order.default") if o.broker_id], 10, what="resolved by tag")
            [(oid, _)] = fake.orders.items()
            assert [o for o in h.seen("order.default") if o.broker_id][0].broker_id == str(oid)
            fake.fill(oid, 2, 2.0)
            eventually(lambda: h.seen("fill.default"), 10)
            # issue 18: the entry once, then its protective stop
            eventually(lambda: fake.count("POST", "/orders") == 2, 10, what="protective stop")
            assert [o["side"] for o in fake.orders.values()] == ["buy_to_open", "sell_to_close"]
            assert h.call("status")["broker"]["unresolved"] == []
        finally:
            h.close()
        assert fake.violations == []


def test_select_request_when_no_reco_frame_arrives(run_dir):
    import asyncio
    import threading

    import zmq.asyncio

    from spx_common.bus import RpcServer
    from spx_common.config import BusConfig, RuntimeConfig
    from spx_common.models import ContractRecommendation, SetupTransition

    asked: list[dict] = []
    stop = threading.Event()

    def serve():
        async def main():
            actx = zmq.asyncio.Context()
            server = RpcServer(actx, BusConfig().rep_endpoint("selector", RuntimeConfig(run_dir=run_dir), bind=True))

            def select(params):
                asked.append(params)
                return ContractRecommendation(setup_id=params["setup_id"], ok=True, reason="ok",
                                              tradier_symbol=SYM, bid=1.95, ask=2.0, delta=0.5, suggestedContracts=1,
                                              ts=params["transition"]["ts"])

            server.register("select", select)
            ev = asyncio.Event()
            task = asyncio.ensure_future(server.serve(ev))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            ev.set()
            await task
            server.close()
            actx.destroy(linger=0)
        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    h = Harness(run_dir, {"SPX_BROKER_MAX_RISK_PER_TRADE": "250"})
    try:
        h.quote_live(1.95, 2.0, T0)
        from tests.broker.test_broker_engine import setup_for

        entry_px, stop_px = setup_for(1, 1.95, 2.0, 250.0)  # one contract of a $250 budget (the broker sizes it)
        t = SetupTransition(setup_id="sel-1", detector="d", family="f", sym="I:SPX", direction="long",
                            to_state="triggered", reason="r", ts=T0 + S, price=entry_px, stop=stop_px)
        eventually(lambda: h.pubs["detector"].publish("setup.transition", "setup_transition", t, T0 + S) and
                   h.seen("fill.default"), 10, what="entry via select request")
        assert asked[0]["setup_id"] == "sel-1" and h.seen("fill.default")[0].quantity == 1
        assert 'broker_select_requests_total{outcome="ok"}' in h.call("metrics")
    finally:
        h.close()
        stop.set()
        th.join(5)


def test_tradier_mode_stream_event_before_the_placement_answer_is_kept_and_applied(run_dir):
    with FakeTradier(stream_tags=False) as fake:
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default", SPX_BROKER_PLACE_TIMEOUT_S="5"))
        try:
            eventually(lambda: fake._sockets, 10, what="account events connected")
            fake.script("hang", "place", delay_s=1.0)  # the answer comes after the fill event
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("early-1", T0 + S, qty=2) or fake.orders, 10)
            [(oid, _)] = fake.orders.items()
            fake.fill(oid, 2, 2.0)
            eventually(lambda: h.seen("fill.default"), 10, what="early event applied after the answer")
            assert h.seen("fill.default")[0].quantity == 2
            eventually(lambda: fake.count("POST", "/orders") == 2, 10, what="protective stop")
            assert [r.form["side"] for r in fake.requests if r.method == "POST" and r.path.endswith("/orders")] == \
                ["buy_to_open", "sell_to_close"]  # the entry was never sent twice
            assert 'broker_bad_input_total{kind="unknown_order_event"} 1' in h.call("metrics")  # it came early
        finally:
            h.close()
        assert fake.violations == []


def test_tradier_portfolio_snapshots_on_1pct_moves_and_pdt_alert_with_cooldown(run_dir):
    with FakeTradier() as fake:
        fake.balances = {"account_type": "pdt", "total_equity": 20000.0, "total_cash": 20000.0,
                         "pdt": {"option_buying_power": 15000.0, "day_trade_buying_power": 0.0}}
        h = Harness(run_dir, _tradier_env(fake, SPX_BROKER_PORTFOLIO_INTERVAL_S="0.2"))
        try:
            eventually(lambda: h.seen("portfolio.default"), 10, what="first snapshot")
            snap = h.seen("portfolio.default")[0]
            assert snap["total_equity"] == 20000 and snap["day_trade_buying_power"] == 0 and snap["mode"] == "tradier"
            fake.balances = {**fake.balances, "total_equity": 20100.0}  # +0.5 %: not persisted
            eventually(lambda: fake.count("GET", "/balances") >= 4, 10)
            assert len(h.seen("portfolio.default")) == 1
            fake.balances = {**fake.balances, "total_equity": 21000.0}  # +5 %
            eventually(lambda: len(h.seen("portfolio.default")) == 2, 10)
            alerts = [a["kind"] for a in h.seen("alert.default")]
            assert alerts.count("pdt_equity") == 1 and alerts.count("pdt_dtbp") == 1  # cooldown: once each
            assert fake.count("POST", "/orders") == 0
        finally:
            h.close()
        assert fake.violations == []


def test_tradier_mode_polls_order_status_while_the_stream_is_down(run_dir):
    with FakeTradier() as fake:
        fake.script("500", "session", times=1000)  # the account-events session cannot be created
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default",
                                          SPX_BROKER_POLL_INTERVAL_S="0.2", SPX_BROKER_MAX_RETRIES="0"))
        try:
            eventually(lambda: h.call("status")["broker"]["stream"] == "down", 10, what="stream down")
            h.quote_live(1.95, 2.0, T0)
            eventually(lambda: h.trigger("poll-1", T0 + S, qty=3) or fake.orders, 10)
            [(oid, _)] = fake.orders.items()
            fake.fill(oid, 1, 2.0)
            eventually(lambda: len(h.seen("fill.default")) == 1, 10, what="partial fill found by polling")
            fake.fill(oid, 2, 2.0)
            eventually(lambda: len(h.seen("fill.default")) == 2, 10, what="rest found by polling")
            assert h.seen("position.default")[-1].quantity == 3 and not fake._sockets
        finally:
            h.close()
        assert fake.violations == []


def test_kill_switch_at_runtime_refuses_new_entries_but_lets_exits_out(run_dir):
    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("rk-1", T0 + S, qty=2) or h.seen("fill.default"), 10)
        FlagStore(run_dir / "flags.json").set("kill_switch", True)
        assert h.call("flags.reload")["flags"]["kill_switch"] is True
        eventually(lambda: h.trigger("rk-2", T0 + 2 * S) or h.seen("block.broker"), 10)
        assert h.seen("block.broker")[0].reason == "kill_switch"
        h.quote(2.5, 2.6, T0 + 3 * S)
        eventually(lambda: h.advice("rk-1", "exit_all", T0 + 4 * S) or
                   h.seen("position.default")[-1].quantity == 0, 10, what="exit allowed under the kill switch")
    finally:
        h.close()


def test_tradier_restart_adopts_broker_positions_and_flatten_covers_them(run_dir):
    with FakeTradier() as fake:
        fake.add_position(SYM, 3, 600.0)  # held before this broker process started
        fake.add_position("SPXW260220P04900000", -1, -100.0)  # a short we never opened: alerted, untouched
        fake.orders[1] = {"id": 1, "tag": "spx-default-old-setup-entry-1-abc123", "status": "filled",
                          "side": "buy_to_open", "option_symbol": SYM, "quantity": 3.0, "exec_quantity": 3.0,
                          "remaining_quantity": 0.0, "type": "limit"}  # sent before the restart
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default"))
        try:
            eventually(lambda: [t for t in h.call("status")["broker"]["engine"]["trades"]
                                if t["setup_id"] == f"adopted-{SYM}"], 10, what="adopted")
            # today's entries are read from the broker's orders right after the positions: wait for both
            eventually(lambda: h.call("status")["broker"]["engine"]["entries_today"], 10, what="entries counted")
            engine = h.call("status")["broker"]["engine"]
            trade = engine["trades"][0]
            assert trade["held"] == 3 and trade["avg_price"] == 2.0
            assert engine["entries_today"] == {"default": 1}  # counted against the daily limit
            eventually(lambda: h.seen("alert.default"), 10, what="alerts after the first reconcile")
            kinds = {a["kind"] for a in h.seen("alert.default")}
            assert "short:SPXW260220P04900000" in kinds and f"drift:{SYM}" not in kinds  # adopted: no drift
            assert h.seen("position.default")[0].quantity == 3
            # the adopted position gets a protective stop for its quantity (premium_pct: 2.00 x (1 - 0.5))
            eventually(lambda: [o for o in fake.orders.values() if o["type"] == "stop"], 10, what="protective stop")
            [stop] = [o for o in fake.orders.values() if o["type"] == "stop"]
            assert (stop["side"], stop["quantity"], stop["stop_price"]) == ("sell_to_close", 3, 1.0)
            h.quote(1.5, 1.6, T0)
            res = h.call("flatten", {})
            assert len(res["cancels"]) == 1 and res["orders"] == []  # the stop first, the exit on its cancel
            eventually(lambda: [o for o in fake.orders.values() if o["side"] == "sell_to_close" and o["type"] != "stop"],
                       10)
            [o] = [o for o in fake.orders.values() if o["side"] == "sell_to_close" and o["type"] != "stop"]
            assert o["option_symbol"] == SYM and o["quantity"] == 3 and o["price"] == 1.5 and stop["status"] == "canceled"
        finally:
            h.close()
        assert fake.violations == []


def test_tradier_late_day_flatten_failure_is_logged_alerted_and_bounded(run_dir):
    import datetime as dt

    with FakeTradier() as fake:
        fake.add_position(SYM, 2, 400.0)  # adopted at start
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, _tradier_env(fake, TRADIER_EXECUTION_ENABLED="true",
                                          TRADIER_EXECUTION_PRODUCTION_ENABLED="true",
                                          TRADIER_FORCE_FLATTEN_ENABLED="true",
                                          SPX_BROKER_AUTO_EXECUTION_USERS="default"))
        try:
            eventually(lambda: h.call("status")["broker"]["engine"]["trades"], 10, what="adopted")
            eventually(lambda: [o for o in fake.orders.values() if o["type"] == "stop"], 10, what="protective stop")
            fake.script("reject", "place", times=100)  # the broker refuses every exit
            late = int(dt.datetime(2026, 2, 20, 20, 52, tzinfo=dt.UTC).timestamp() * 1e9)  # 15:52 ET
            h.quote_live(1.5, 1.6, late)
            eventually(lambda: [b for b in h.seen("block.broker") if b.reason == "exit_retries_exhausted"], 15,
                       what="bounded retries")
            kinds = [a["kind"] for a in h.seen("alert.default")]
            assert "flatten" in kinds and "exit_failed" in kinds
            assert [b.reason for b in h.seen("block.broker")].count("broker_rejected") == 5
            exits = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/orders")
                     and r.form.get("type") != "stop"]  # the adopted position's protective stop aside
            assert len(exits) == 5 and fake.positions[SYM]["quantity"] == 2  # untouched
            assert h.call("status")["state"] == "running"
        finally:
            h.close()
        assert fake.violations == []


def test_restart_restores_the_ledger_from_the_store(run_dir):
    import time as _time

    from spx_common.models import Order, Position
    from spx_common.store import open_store

    now = _time.time_ns()
    from spx_common import provenance

    # what the recorder wrote before the restart, stamped with this configuration's provenance (issue 19:
    # the broker restores only rows of the run it continues)
    prov = {"source": provenance.configured()[0], "run_id": "before"}
    store = open_store(f"sqlite:///{run_dir / 'spx.sqlite3'}")
    store.record_orders([Order(order_id="spx-default-s9-entry-1-old", user="default", setup_id="s9",
                               option_symbol=SYM, side="buy_to_open", quantity=2, type="limit", price=2.0,
                               status="filled", ts=now),
                         # its protective stop, moved to 1.40 before the restart (the paper broker forgets it)
                         Order(order_id="spx-default-s9-stop-2-old", user="default", setup_id="s9",
                               option_symbol=SYM, side="sell_to_close", quantity=2, type="stop", stop=1.4,
                               status="open", ts=now)], **prov)
    store.record_positions([Position(user="default", option_symbol=SYM, quantity=2, avg_price=2.0,
                                     realized_pnl=50.0, ts=now)], **prov)
    store.record_snapshots([{"user": "default", "ts": now, "total_cash": 99_600.0, "total_equity": 100_000.0}],
                           **prov)
    store.close()
    h = Harness(run_dir)
    try:
        st = h.call("status")["broker"]
        assert st["engine"]["entries_today"] == {"default": 1}
        assert st["engine"]["trades"][0]["held"] == 2 and st["ledger"]["default"]["pnl"]["realized"] == 50.0
        eventually(lambda: h.seen("position.default"), 10, what="restored position published")
        # a protective stop rests again for the restored quantity, at the level the setup's stop had reached
        eventually(lambda: [o for o in h.seen("order.default") if o.type == "stop" and o.status == "open"], 10,
                   what="protective stop on the restored position")
        [stop] = [o for o in h.seen("order.default") if o.type == "stop" and o.status == "open"]
        assert (stop.quantity, stop.stop, stop.setup_id) == (2, 1.4, f"adopted-{SYM}")
        h.quote(2.4, 2.5, now)
        res = h.call("flatten", {})  # the restored position is managed like any other: its stop cancelled first
        assert res["cancels"] == [stop.order_id] and res["closing"] == [{"user": "default", "symbol": SYM, "held": 2.0}]
        eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10, what="flattened")
        pos = h.seen("position.default")[-1]
        assert pos.realized_pnl == 50.0 + (2.4 - 2.0) * 2 * 100
        eventually(lambda: h.call("portfolio").get("total_cash") is not None, 10)
        assert h.call("portfolio")["total_cash"] == 99_600.0 + 2.4 * 2 * 100
        assert h.seen("block.") == [] and [a for a in h.seen("alert.") if a["kind"].startswith("drift")] == []
    finally:
        h.close()
