"""Tradier answers as the broker really sends them (issue 21, items 6-9), through the real client against the
fake Tradier server and, for the expired token, through a real broker process: an expired access token
(HTTP 500 with the fault ``keymanagement.service.access_token_expired``) during an entry and during a
flatten, an order status in capitals, a rejection whose reason is inside ``order``, and balances whose
buying power lives in another sub-object than ``account_type`` names. docs/broker.md has the table."""

from __future__ import annotations

import asyncio

import pytest

from services.broker import portfolio as pf
from services.broker import router
from services.broker.tradier import (
    TradierBadRequest, TradierClient, TradierRejected, TradierTokenExpired,
)
from spx_common.crypto import KeyRing, generate_key
from spx_common.flags import FlagStore
from spx_common.store import open_store
from tests.broker.harness import SYM, T0, Harness
from tests.conftest import eventually
from spx_testing.fakes.tradier import BALANCES, BUYING_POWER_TEXT, FakeTradier

S = 1_000_000_000


@pytest.fixture
def fake():
    with FakeTradier() as f:
        yield f
    assert f.violations == [], f.violations


def client(fake, **kw) -> TradierClient:
    kw.setdefault("backoff_s", 0.01)
    return TradierClient(fake.base_url, fake.token, fake.account, **kw)


def run(fn):
    async def go():
        c = client(run.fake)
        try:
            return await fn(c)
        finally:
            await c.aclose()
    return asyncio.run(go())


# --------------------------------------------------------------------------- 6. expired token (client)


def test_expired_token_is_an_authentication_failure_never_retried_nor_looked_up(fake):
    run.fake = fake
    fake.script("expired", "balances")
    with pytest.raises(TradierTokenExpired, match="Access Token expired"):
        run(lambda c: c.balances())
    assert fake.count("GET", "/balances") == 1  # a 500, but not retried: no retry cures an expired token

    fake.script("expired", "place")
    with pytest.raises(TradierTokenExpired) as ei:
        run(lambda c: c.place_order(router.entry_payload(SYM, 1, 1.0, "spx-u-e1-entry")))
    assert ei.value.status == 500 and "keymanagement.service.access_token_expired" in ei.value.messages
    assert fake.orders == {} and fake.count("GET", "/orders") == 0  # nothing placed, no tag lookup

    fake.expired_tokens.add(fake.token)  # every request with the token now: reads and placements alike
    with pytest.raises(TradierTokenExpired):
        run(lambda c: c.positions())
    with pytest.raises(TradierTokenExpired):  # an exit reads positions first: refused there, nothing sent
        run(lambda c: c.place_order(router.exit_payload(SYM, 1, "spx-u-e1-exit")))
    assert fake.count("POST", "/orders") == 1


# --------------------------------------------------------------------------- 7. status case, id without error


def test_placement_status_in_any_case_with_an_id_is_accepted(fake):
    run.fake = fake
    fake.script("status:OK", "place")
    placed = run(lambda c: c.place_order(router.entry_payload(SYM, 2, 1.25, "spx-u-s1-entry")))
    assert placed["id"] in fake.orders and placed["status"] == "ok"

    fake.script("status:Received", "place")  # an id, no error, a status we do not know: confirmed by id
    placed = run(lambda c: c.place_order(router.entry_payload(SYM, 1, 1.25, "spx-u-s2-entry")))
    assert placed["confirmed_by_id"] and placed["order"]["status"] == "open" and placed["id"] in fake.orders
    assert fake.count("GET", f"/orders/{placed['id']}") == 1

    fake.script("no_id", "place")  # neither id nor error: found by its tag, never sent again
    placed = run(lambda c: c.place_order(router.entry_payload(SYM, 1, 1.25, "spx-u-s3-entry")))
    assert placed["resolved_by_tag"] and fake.orders[int(placed["id"])]["tag"] == "spx-u-s3-entry"
    assert fake.count("POST", "/orders") == 3 and len(fake.orders) == 3


def test_placement_rejected_by_id_lookup_keeps_the_reason(fake):
    run.fake = fake
    fake.script("status:Received", "place")

    async def place_then_reject(c):
        orig = c.order

        async def order(oid):  # the broker rejected it between the answer and the lookup
            fake.orders[int(oid)].update(status="rejected", reason_description="Order rejected: market closed")
            return await orig(oid)
        c.order = order
        return await c.place_order(router.entry_payload(SYM, 1, 1.25, "spx-u-s4-entry"))

    with pytest.raises(TradierRejected, match="market closed"):
        run(place_then_reject)


# --------------------------------------------------------------------------- 8. the broker's reason kept


def test_rejection_inside_order_keeps_the_brokers_text(fake):
    run.fake = fake
    fake.script("order_errors", "place")
    with pytest.raises(TradierRejected) as ei:
        run(lambda c: c.place_order(router.entry_payload(SYM, 1, 1.0, "spx-u-r1-entry")))
    assert ei.value.messages == [BUYING_POWER_TEXT] and "Bad Request" not in str(ei.value)
    fake.script("order_errors_400", "place")
    with pytest.raises(TradierBadRequest) as ei:
        run(lambda c: c.place_order(router.entry_payload(SYM, 1, 1.0, "spx-u-r2-entry")))
    assert ei.value.messages == [BUYING_POWER_TEXT]
    assert fake.count("POST", "/orders") == 2 and fake.orders == {}  # never retried


# --------------------------------------------------------------------------- 9. balances shapes


@pytest.mark.parametrize("shape, bp, source", [
    ("margin", 40000.0, "margin.option_buying_power"),
    ("margin_pdt", 31000.5, "pdt.option_buying_power"),
    ("margin_cash", 27000.25, "cash.cash_available"),
    ("pdt", 15000.0, "pdt.option_buying_power"),
    ("cash", 9000.0, "cash.cash_available"),
])
def test_buying_power_from_whichever_sub_object_the_answer_has(fake, shape, bp, source):
    run.fake = fake
    fake.balances = BALANCES[shape]
    snap = pf.summarize_balances(run(lambda c: c.balances()))
    assert (snap["option_buying_power"], snap["buying_power_source"]) == (bp, source)
    assert snap["total_equity"] == 50000.12345
    if shape in ("margin_pdt", "pdt"):
        assert snap["day_trade_buying_power"] > 0


# --------------------------------------------------------------------------- 6. expired token, real process


def _ann(run_dir, key: str, token: str, account: str) -> None:
    from services.broker import credentials

    store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
    try:
        if store.user("ann") is None:
            store.add_user("ann", broker="tradier", environment="sandbox", auto_execution=True, max_contracts=5,
                           max_risk_per_trade=5000)
        credentials.save(store, KeyRing.parse(key), "ann", token, account)
    finally:
        store.close()


def _broker(run_dir, fake, key: str) -> Harness:
    FlagStore(run_dir / "flags.json").set("auto_execution", True)
    return Harness(run_dir, {"SPX_CREDENTIALS_KEYS": key, "SPX_BROKER_SANDBOX_URL": fake.base_url,
                             "TRADIER_EXECUTION_ENABLED": "true", "SPX_BROKER_POLL_INTERVAL_S": "0.3"})


def _alerts(h, kind: str) -> list[dict]:
    return [a for a in h.seen("alert.ann") if a["kind"] == kind]


def _bearing(fake, token: str) -> int:
    return sum(1 for r in fake.requests if r.headers.get("Authorization") == f"Bearer {token}")


def test_expired_token_during_an_entry_stops_the_account_until_a_new_token_is_stored(run_dir):
    key = generate_key("k1")
    with FakeTradier(token="ann-token-1", account="VA1") as fake:
        _ann(run_dir, key, fake.token, fake.account)
        h = _broker(run_dir, fake, key)
        try:
            eventually(lambda: fake._sockets, 10, what="account events connected")
            h.quote_live(1.95, 2.0, T0)
            fake.script("expired", "place")  # the token expires just as the entry is sent ...
            h.trigger("x-1", T0 + S, qty=2)
            eventually(lambda: _alerts(h, "token_expired"), 10, what="token expired alert")
            fake.expired_tokens.add("ann-token-1")  # ... and stays expired for every request after it
            [alert] = _alerts(h, "token_expired")
            assert "token expired: renew it with spx users credentials set ann" in alert["message"]
            [order] = [o for o in h.seen("order.ann") if o.status == "rejected"]
            assert order.reason.startswith("token_expired: access token expired (Access Token expired")
            assert [o.status for o in h.seen("order.ann")] == ["new", "rejected"]  # never "unknown"
            reasons = [b.reason for b in h.seen("block.broker") if b.subject.startswith("ann:")]
            assert "token_expired" in reasons and "placement_not_found" not in reasons
            assert fake.count("POST", "/orders") == 1 and fake.orders == {}
            st = h.call("status")["broker"]
            assert st["refusal_reason"] == {"ann": "token_expired"} and st["accounts"]["ann"]["token_expired"]
            assert st["unresolved"] == []
            store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
            try:
                assert "TradierTokenExpired" in (store.user("ann")["last_error"] or "")
            finally:
                store.close()
            # stop sending: nothing more with the dead token (no polling, no tag lookups, no retries)
            sent = _bearing(fake, "ann-token-1")
            h.trigger("x-2", T0 + 2 * S, qty=2)
            eventually(lambda: [b for b in h.seen("block.broker") if b.subject == "ann:x-2"], 10, what="x-2 refused")
            assert [b.reason for b in h.seen("block.broker") if b.subject == "ann:x-2"] == ["token_expired"]
            assert _bearing(fake, "ann-token-1") == sent

            # the user stores a new token (spx users credentials set writes the store): the broker resumes
            fake.token = "ann-token-2"
            _ann(run_dir, key, "ann-token-2", "VA1")
            eventually(lambda: _alerts(h, "token_renewed"), 10, what="resumed with the new token")
            assert h.call("status")["broker"]["send_allowed"] == {"ann": True}
            h.trigger("x-3", T0 + 3 * S, qty=2)
            eventually(lambda: fake.orders, 10, what="the next entry placed with the new token")
            [placed] = fake.orders.values()
            assert placed["tag"].startswith("spx-ann-x-3")
            assert _bearing(fake, "ann-token-1") == sent
        finally:
            h.close()
        assert fake.violations == []


def test_expired_token_during_a_flatten_keeps_the_position_and_flattens_after_renewal(run_dir):
    key = generate_key("k1")
    with FakeTradier(token="ann-token-1", account="VA1") as fake:
        _ann(run_dir, key, fake.token, fake.account)
        h = _broker(run_dir, fake, key)
        try:
            eventually(lambda: fake._sockets, 10, what="account events connected")
            h.quote_live(1.95, 2.0, T0)
            h.trigger("f-1", T0 + S, qty=2)
            eventually(lambda: fake.orders, 10, what="entry placed")
            [oid] = fake.orders
            fake.fill(oid, 2, 2.0)
            eventually(lambda: h.seen("position.ann") and h.seen("position.ann")[-1].quantity == 2, 10)
            # issue 18: a protective stop rests right after the fill (POST #2)
            eventually(lambda: fake.count("POST", "/orders") == 2, 10, what="protective stop")

            fake.expired_tokens.add("ann-token-1")
            # the flatten reads the broker's positions first: that answer is the expired-token fault
            res = h.call("flatten", {"user": "ann", "reason": "operator flatten"})
            assert res["orders"] == [] and res["blocked"] == ["token_expired"], res
            assert res["reconcile_errors"]["ann"].startswith("access token expired")
            eventually(lambda: _alerts(h, "token_expired"), 10, what="token expired alert")
            assert fake.count("POST", "/orders") == 2  # the exit was never sent with the dead token
            assert fake.count("GET", "/positions") >= 1 and h.seen("position.ann")[-1].quantity == 2
            sent = _bearing(fake, "ann-token-1")
            blocked = h.call("flatten", {"user": "ann"})  # while expired: refused with the reason, nothing sent
            assert blocked["orders"] == [] and blocked["blocked"] == ["token_expired"]
            assert _bearing(fake, "ann-token-1") == sent

            # renewed through the gateway's credentials.set: the account resumes at once
            fake.token = "ann-token-2"
            res = h.call("credentials.set", {"user": "ann", "token": "ann-token-2", "account_id": "VA1"})
            assert res["ok"] and "ann-token-2" not in str(res)
            eventually(lambda: _alerts(h, "token_renewed"), 5, what="resumed")
            # the protective stop is cancelled first (issue 18); the exit follows the confirmed cancel
            assert h.call("flatten", {"user": "ann", "reason": "operator flatten"})["closing"]
            eventually(lambda: fake.count("POST", "/orders") == 3, 10, what="exit placed with the new token")
            exit_id = max(fake.orders)
            assert fake.orders[exit_id]["side"] == "sell_to_close"
            fake.fill(exit_id, 2, 2.1)
            eventually(lambda: h.seen("position.ann")[-1].quantity == 0, 10, what="flattened")
        finally:
            h.close()
        assert fake.violations == []


def test_a_margin_account_answered_with_pdt_buying_power_sizes_entries_by_it(run_dir):
    """Through a real broker process: the buying power of a margin account whose balances carry the ``pdt``
    sub-object (no ``margin`` one) bounds the entry size (on main it was unknown, so unbounded)."""
    with FakeTradier() as fake:
        fake.balances = {**BALANCES["margin_pdt"], "pdt": {"option_buying_power": 450.0,
                                                           "day_trade_buying_power": 900.0}}
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
                              "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
                              "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true",
                              "SPX_BROKER_AUTO_EXECUTION_USERS": "default", "SPX_BROKER_PORTFOLIO_INTERVAL_S": "0.5"})
        try:
            snap = eventually(lambda: h.seen("portfolio.default"), 15, what="balances read")[0]
            assert (snap["option_buying_power"], snap["buying_power_source"]) == (450.0, "pdt.option_buying_power")
            h.quote_live(1.95, 2.0, T0)
            h.trigger("bp-1", T0 + S, qty=4)  # $200 a contract: 450 of buying power buys 2
            eventually(lambda: fake.orders, 10, what="entry placed")
            [o] = fake.orders.values()
            assert o["quantity"] == 2
        finally:
            h.close()
        assert fake.violations == []


def test_status_ok_in_capitals_is_tracked_and_a_rejection_keeps_its_reason_in_a_real_broker(run_dir):
    """Items 7 and 8 through a real broker process: an entry answered ``{"order":{"id","status":"OK"}}`` is
    open and filled (on main: recorded rejected, never tracked); an entry refused with ``errors`` inside
    ``order`` keeps the broker's text in the block, the alert and the order record."""
    with FakeTradier() as fake:
        FlagStore(run_dir / "flags.json").set("auto_execution", True)
        h = Harness(run_dir, {"TRADIER_ACCESS_TOKEN": fake.token, "TRADIER_BASE_URL": fake.base_url,
                              "TRADIER_ACCOUNT_ID": fake.account, "TRADIER_EXECUTION_ENABLED": "true",
                              "TRADIER_EXECUTION_PRODUCTION_ENABLED": "true",
                              "SPX_BROKER_AUTO_EXECUTION_USERS": "default"})
        try:
            eventually(lambda: fake._sockets, 10, what="account events connected")
            fake.script("status:OK", "place")
            h.quote_live(1.95, 2.0, T0)
            h.trigger("ok-1", T0 + S, qty=2)
            eventually(lambda: fake.orders, 10, what="entry placed")
            [oid] = fake.orders
            eventually(lambda: [o for o in h.seen("order.default") if o.status == "open"], 10, what="tracked open")
            fake.fill(oid, 2, 2.0)
            eventually(lambda: h.seen("position.default") and h.seen("position.default")[-1].quantity == 2, 10,
                       what="the fill of the OK-answered order")
            assert not [o for o in h.seen("order.default") if o.status == "rejected"]
            # issue 18: the protective stop rests after the fill (POST #2) before the next entry is scripted
            eventually(lambda: fake.count("POST", "/orders") == 2, 10, what="protective stop")

            fake.script("order_errors", "place")
            h.trigger("bp-2", T0 + 2 * S, qty=1)
            eventually(lambda: [b for b in h.seen("block.broker") if "-bp-2-" in b.subject], 10,
                       what="the refused entry")
            [block] = [b for b in h.seen("block.broker") if "-bp-2-" in b.subject]  # subject: the order id
            assert block.reason == "broker_rejected" and BUYING_POWER_TEXT in block.detail
            [order] = [o for o in h.seen("order.default") if o.setup_id == "bp-2" and o.status == "rejected"]
            assert BUYING_POWER_TEXT in order.reason
            alert = eventually(lambda: [a for a in h.seen("alert.default") if a["kind"] == "broker_error"], 10)[0]
            assert BUYING_POWER_TEXT in alert["message"]
            assert fake.count("POST", "/orders") == 3  # entry, protective stop, the refused entry: not retried
        finally:
            h.close()
        assert fake.violations == []
