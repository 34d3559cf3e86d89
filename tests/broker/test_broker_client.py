"""One ``BrokerClient`` interface (issue 18, item 10): the paper broker and the Tradier client answer the
same calls with the same shapes (the Tradier client against the fake Tradier on loopback)."""

from __future__ import annotations

import asyncio

import pytest

from services.broker import router
from services.broker.client import BrokerClient
from services.broker.paper import PaperBroker, PaperClient
from services.broker.tradier import TradierClient
from spx_testing.fakes.tradier import FakeTradier
from tests.broker.harness import SYM

EVENT_KEYS = {"id", "status", "type", "exec_quantity", "avg_fill_price", "remaining_quantity", "tag"}


async def _round_trip(client: BrokerClient, fill) -> dict:
    """Entry, its fill, a protective stop, a modify, a cancel; what every call answered."""
    out: dict = {}
    entry = await client.place_order(router.entry_payload(SYM, 2, 2.0, "spx-u1-s1-entry-1-t"), ts=1)
    out["place"] = entry
    fill(entry["id"])
    out["order"] = await client.order(entry["id"])
    stop = await client.place_order(router.stop_payload(SYM, 2, 1.0, "spx-u1-s1-stop-2-t"), ts=2)
    out["modify"] = await client.modify_order(stop["id"], ts=3, stop="1.20")
    with pytest.raises(router.OrderRefused):  # the guard runs inside every client: 2 held, 2 already for sale
        await client.place_order(router.exit_payload(SYM, 1, "spx-u1-s1-exit-3-t", 1.5), ts=4)
    out["cancel"] = await client.cancel_order(stop["id"], ts=5)
    out["after_cancel"] = await client.order(stop["id"])
    out["orders"] = await client.orders()
    out["positions"] = await client.positions()
    out["balances"] = await client.balances()
    await client.aclose()
    return out


def test_paper_and_tradier_clients_answer_the_same_calls_with_the_same_shapes():
    paper = PaperBroker()
    paper.on_quote(SYM, 1.9, 2.0, 0)  # the entry fills at once at the ask
    p = asyncio.run(_round_trip(PaperClient(paper), lambda oid: None))
    with FakeTradier() as fake:
        client = TradierClient(fake.base_url, fake.token, fake.account, backoff_s=0.01)
        t = asyncio.run(_round_trip(client, lambda oid: fake.fill(int(oid), 2, 2.0)))
        assert fake.violations == []
    for answer in (p, t):
        assert isinstance(answer["place"]["id"], (str, int)) and isinstance(answer["place"]["events"], list)
        assert isinstance(answer["modify"]["events"], list) and isinstance(answer["cancel"]["events"], list)
        assert EVENT_KEYS <= set(answer["order"]) and answer["order"]["exec_quantity"] == 2
        assert answer["order"]["status"] == "filled" and answer["after_cancel"]["status"] == "canceled"
        assert all(EVENT_KEYS <= set(o) for o in answer["orders"]) and len(answer["orders"]) == 2
        assert [(r["symbol"], r["quantity"], r["cost_basis"]) for r in answer["positions"]] == [(SYM, 2.0, 400.0)]
        assert "total_equity" in answer["balances"] and "account_type" in answer["balances"]
    assert isinstance(PaperClient(paper), BrokerClient)
    assert PaperClient.kind == "paper" and TradierClient.kind == "tradier"
