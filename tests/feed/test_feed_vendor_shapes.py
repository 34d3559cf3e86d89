"""Massive answers as the vendor really sends them (issue 21, items 1-5), through the real client code
against the fake Massive server: option trades without ``sequence_number``, sequence numbers that start
over in a new session, index snapshot rows without ``last_updated``, ``next_url`` naming another host,
index aggregates stamped at their bar's start. docs/feed.md has the table of shapes."""

from __future__ import annotations

import asyncio
import time

from spx_common.models import IndexValue, Quote, Trade
from tests.conftest import eventually
from spx_testing.fakes.massive import FakeMassive
from tests.feed.helpers import live_feed

from services.feed.pipeline import Dedupe, TickPipeline
from services.feed.rest import MassiveRest

MS = 1_000_000
S = 1_000_000_000
T0 = 1_795_185_000_000_000_000  # 2026-11-20 09:30 New York
C = "O:SPXW261120C05900000"


def _rest(fake) -> MassiveRest:
    return MassiveRest(fake.rest_url, "k", backoff_initial_s=0.01, rate_limit_wait_s=0.01)


def _fetch_trades(fake, sym: str, gte: int, lt: int) -> list[Trade]:
    async def go():
        async with _rest(fake) as rest:
            return [t async for t in rest.trades(sym, gte_ns=gte, lt_ns=lt)]

    return asyncio.run(go())


def _streamed(t: Trade) -> Trade:
    """What the stream gives for the print ``t``: the vendor's sequence number, time in whole ms."""
    return Trade(sym=t.sym, price=t.price, size=t.size, ts=t.ts // MS * MS, seq=t.seq, exch=t.exch, cond=t.cond)


# --------------------------------------------------------------------------- 1. option trades from REST


def test_option_trades_from_rest_have_no_sequence_and_the_overlap_is_published_once(fake):
    # the vendor's prints of one contract: two identical prints in the same ms (a split execution) among them
    prints = [Trade(sym=C, price=5.5, size=1, ts=T0 + 1 * MS + 123_456, seq=101, exch=302),
              Trade(sym=C, price=5.6, size=2, ts=T0 + 2 * MS + 5_000, seq=102, exch=302, cond=[209]),
              Trade(sym=C, price=5.6, size=2, ts=T0 + 2 * MS + 7_000, seq=103, exch=302, cond=[209]),
              Trade(sym=C, price=5.7, size=4, ts=T0 + 3 * MS + 1, seq=104, exch=303),
              Trade(sym=C, price=5.8, size=1, ts=T0 + 4 * MS + 999_999, seq=105, exch=302)]
    fake.trades[C] = prints
    rest_rows = _fetch_trades(fake, C, T0, T0 + S)
    assert [(t.seq, t.ts, t.size) for t in rest_rows] == [(0, p.ts, p.size) for p in prints]  # no sequence number
    row = fake_row(fake, C)
    assert "sequence_number" not in row and "id" not in row and row["sip_timestamp"] == prints[0].ts

    p = TickPipeline()
    # the stream delivered the first print and ONE of the identical pair before the connection dropped
    p.process([_streamed(prints[0]), _streamed(prints[1])])
    # the reconnect backfill: the vendor's answer for the whole window, in one pass
    out = p.process(rest_rows)
    published = [e for _, evs in out for e in evs]
    assert [(e.price, e.size) for e in published] == [(5.6, 2), (5.7, 4), (5.8, 1)]
    assert p.drops == {"duplicate": 2}
    # volume over everything published = the vendor's distinct prints
    assert 1 + 2 + sum(e.size for e in published) == sum(t.size for t in prints)
    # the stream delivers a print late, after the backfill published it: still once
    out = p.process([_streamed(prints[3])])
    assert out == [] and p.drops == {"duplicate": 3}
    # a second, overlapping backfill window answers the same rows: nothing again
    assert p.process(_fetch_trades(fake, C, T0 + 2 * MS, T0 + S)) == []


def fake_row(fake: FakeMassive, sym: str) -> dict:
    """The raw first ``/v3/trades`` row the fake serves for ``sym`` (its shape, not the client's view)."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{fake.rest_url}/v3/trades/{sym}?order=asc&limit=1",
                                 headers={"Authorization": f"Bearer {fake.api_key}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["results"][0]


def test_option_trades_of_a_backfill_answer_split_into_chunks_count_as_one_answer():
    d = Dedupe()
    a = Trade(sym=C, price=1.0, size=1, ts=T0, exch=302)
    assert not d.seen(Trade(sym=C, price=1.0, size=1, ts=T0, seq=7, exch=302))  # streamed
    passes: dict[int, int] = {}
    # the REST answer has the same print twice (two prints); chunked, the second chunk still counts on
    assert d.seen(a, passes) and not d.seen(a, passes)
    assert d.seen(a, {}) and d.seen(a, {})  # another answer over the same window: both known


# --------------------------------------------------------------------------- 2. sequence numbers per session


def test_a_new_sessions_sequence_numbers_are_not_the_previous_runs():
    d = Dedupe()
    old = [Trade(sym="SPY", price=590.0, size=100, ts=T0 + i * MS, seq=i) for i in range(1, 6)]
    for e in old:  # seeded from the previous run's journal tail
        assert not d.seen(e)
    # the vendor's numbers start over (a new session, another cluster): different events, later
    new = [Trade(sym="SPY", price=591.0, size=100, ts=T0 + 90 * S + i * MS, seq=i) for i in range(1, 6)]
    assert [d.seen(e) for e in new] == [False] * 5
    quotes = [Quote(sym="SPY", bid=1, ask=2, ts=T0 + 95 * S, seq=3), Quote(sym="SPY", bid=1, ask=2, ts=T0, seq=3)]
    assert [d.seen(q) for q in quotes] == [False, False]
    # the same print again: its REST row (ns) against the streamed one (whole ms) is still a duplicate
    assert d.seen(Trade(sym="SPY", price=590.0, size=100, ts=T0 + 3 * MS + 654_321, seq=3))
    assert d.seen(new[2]) and d.seen(quotes[1])
    p = TickPipeline()
    p.process(old)
    assert sum(len(evs) for _, evs in p.process(new)) == 5 and p.drops == {}


def test_restart_seeded_dedupe_lets_a_new_session_through(run_dir, fake):
    """Through a live feed whose dedupe holds the previous run's events (as a restart seeds it): the
    new stream's events reuse the same sequence numbers and are all published."""
    with live_feed(run_dir, fake, ["tick.", "status.feed"]) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        t = time.time_ns() - 120 * S

        async def seed() -> None:  # the previous session's SPY trades 1..3 (what _prepare_restart seeds)
            for i in range(1, 4):
                feed.service.pipeline.dedupe.seen(Trade(sym="SPY", price=590.0, size=100, ts=t + i * MS, seq=i))

        asyncio.run_coroutine_threadsafe(seed(), feed.loop).result(5)
        now = time.time_ns()
        fake.push("stocks", [Trade(sym="SPY", price=592.0, size=10 + i, ts=now + i * MS, seq=i) for i in range(1, 4)])
        eventually(lambda: len(feed.events("tick.SPY")) == 3, 5, what="the new session's trades 1..3")
        assert [e.size for e in feed.events("tick.SPY")] == [11, 12, 13]


# --------------------------------------------------------------------------- 3. index rows without last_updated


def test_index_snapshot_row_without_last_updated_is_a_value_at_its_arrival(fake):
    fake.index_values["I:SPX"] = IndexValue(sym="I:SPX", value=5903.25, ts=T0)
    fake.index_values["I:VIX"] = IndexValue(sym="I:VIX", value=14.5, ts=T0)
    fake.index_untimed = {"I:SPX"}

    async def go():
        async with _rest(fake) as rest:
            before = time.time_ns()
            got = await rest.index_values(["I:SPX", "I:VIX", "I:NOPE"])
            return before, got, time.time_ns(), rest.m_refused.value(kind="index_value")

    before, got, after, refused = asyncio.run(go())
    by = {v.sym: v for v in got}
    assert set(by) == {"I:SPX", "I:VIX"} and refused == 0
    assert by["I:SPX"].value == 5903.25 and before <= by["I:SPX"].ts <= after and by["I:SPX"].source == "poll"
    assert by["I:VIX"].ts == T0  # a row with its time keeps it


def test_poll_mode_publishes_untimed_index_values_and_centres_the_strikes(run_dir, fake):
    fake.index_values["I:SPX"] = IndexValue(sym="I:SPX", value=5903.0, ts=T0)
    fake.index_untimed = {"I:SPX"}
    with live_feed(run_dir, fake, poll_after_s=0.6, poll_interval_s=0.2) as feed:
        fake.wait_subscribed("indices", "V.I:SPX")
        eventually(lambda: feed.events("tick.I:SPX"), 10, what="a polled index value")
        v = feed.events("tick.I:SPX")[0]
        assert (v.value, v.source) == (5903.0, "poll")
        eventually(lambda: feed.service.live.atm_center == 5905.0, 5, what="strikes centred on the polled value")
        eventually(lambda: any(t.startswith("T.O:SPXW") for t in fake.subscriptions.get("options", ())), 5,
                   what="option contracts subscribed around the money")


# --------------------------------------------------------------------------- 4. next_url to another host


def test_next_url_naming_another_host_is_followed_on_the_configured_one(fake):
    with FakeMassive(api_key="someone-else") as elsewhere:
        fake.trades["SPY"] = [Trade(sym="SPY", price=590 + i / 100, size=100, ts=T0 + i * MS, seq=i + 1, exch=4)
                              for i in range(25)]
        fake.page_limit_max = 10
        fake.next_url_base = elsewhere.rest_url  # the answer names another host (as api.massive.com would)
        got = _fetch_trades(fake, "SPY", T0, T0 + S)
        assert [t.seq for t in got] == list(range(1, 26))  # every page, from the configured host
        assert elsewhere.requests == []  # nothing, so never the key, went to the other host
        assert len(fake.requests) == 3 and all(h.get("Authorization") == "Bearer k" for _, _, h in fake.requests)
        assert all("cursor" in q for _, q, _ in fake.requests[1:])


# --------------------------------------------------------------------------- 5. index backfill stamped at bar end


def test_backfilled_index_closes_are_stamped_at_their_bars_end(run_dir, fake):
    with live_feed(run_dir, fake, ["tick.", "status.feed", "status.backfill"]) as feed:
        fake.wait_subscribed("indices", "V.I:SPX")
        t0 = (time.time_ns() - 6 * S) // S * S  # a whole second, some seconds ago
        fake.push("indices", [IndexValue(sym="I:SPX", value=5900.0, ts=t0 + 200 * MS)])
        eventually(lambda: feed.events("tick.I:SPX"), 5, what="streamed index value")
        # the vendor's 1 s bars (t = the bar's start, ms) of the gap: the close is the last value in the bar
        fake.aggs[("I:SPX", "second")] = [{"o": 5900.0, "h": 5901.0, "l": 5899.0, "c": 5900.5 + i,
                                            "t": (t0 + i * S) // MS} for i in range(0, 4)]
        fake.drop("indices")
        eventually(lambda: [d for d in feed.bodies("status.backfill") if d["market"] == "indices"], 10,
                   what="the indices gap backfilled")
        back = [e for e in feed.events("tick.I:SPX") if e.backfilled]
    assert [(e.ts - t0, e.value) for e in back] == [(i * S + 999 * MS, 5900.5 + i) for i in range(0, 4)]
    # each close lies inside its own 1 s bar (never at the start, where it would be that bar's open)
    assert all((e.ts - t0) // S == i for i, e in enumerate(back))
