"""``MassiveRest.recent_quotes`` (the option quote backfill's fetch) against any vendor paging.

The client is the real ``MassiveRest`` with an injected httpx transport; the vendor is a plain
function that answers ``/v3/quotes/{optionsTicker}`` as documented (``timestamp.gte``/``.lt``,
``order`` on the timestamp, ``limit`` at most 50,000 and possibly fewer rows per page than asked,
``next_url`` with an opaque cursor while rows remain). Hypothesis picks the window's quotes (equal
timestamps included), malformed rows among them, the vendor's page cap and ``max_rows``.

Properties, whatever the paging:

* what comes back is the good rows of a contiguous newest part of the window, ascending: never a
  hole in the middle, never a row from outside the window, never more than ``max_rows`` rows read;
* ``truncated`` is true exactly when rows of the window were left unread;
* the number of requests is bounded by ``ceil(max_rows / page) + 1`` (``page = min(max_rows, 50000)``);
* when the vendor honours the asked page size, nothing is left that ``max_rows`` allowed;
* every malformed row read is counted in ``rest_rows_refused_total{kind="quote"}``; every request
  carries the bearer key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from services.feed.rest import MassiveRest
from spx_common.metrics import Registry

SYM = "O:SPXW261120C05900000"
T0 = 1_795_620_600_000_000_000  # 2026-11-20 09:30 New York, ns


def row(ts: int, seq: int, bad: bool) -> dict:
    """The endpoint's eight documented fields; a bad row has an unusable bid (NaN)."""
    return {"ask_exchange": 303, "ask_price": 10.05, "ask_size": 12, "bid_exchange": 302,
            "bid_price": "NaN" if bad else 9.95, "bid_size": 10, "sequence_number": seq, "sip_timestamp": ts}


class Vendor:
    """``GET /v3/quotes/{optionsTicker}`` as documented, serving ``rows`` (any order) with pages of at
    most ``min(limit, cap)`` rows."""

    def __init__(self, rows: list[dict], cap: int) -> None:
        self.rows, self.cap = rows, cap
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path == f"/v3/quotes/{SYM}"
        params = dict(request.url.params)
        if "cursor" in params:  # opaque to the client: the original query and the offset
            params = json.loads(base64.urlsafe_b64decode(params["cursor"]))
        offset = int(params.pop("_offset", 0))
        assert params.get("sort", "timestamp") == "timestamp"
        limit = int(params.get("limit", 1000))
        assert 1 <= limit <= 50_000
        rows = [r for r in self.rows
                if ("timestamp.gte" not in params or r["sip_timestamp"] >= int(params["timestamp.gte"]))
                and ("timestamp.lt" not in params or r["sip_timestamp"] < int(params["timestamp.lt"]))]
        rows.sort(key=lambda r: (r["sip_timestamp"], r["sequence_number"]),
                  reverse=params.get("order", "desc") == "desc")
        n = min(limit, self.cap)
        body: dict = {"status": "OK", "request_id": "r", "results": rows[offset:offset + n]}
        if offset + n < len(rows):
            cursor = base64.urlsafe_b64encode(json.dumps({**params, "_offset": offset + n}).encode()).decode()
            body["next_url"] = f"https://api.massive.test/v3/quotes/{SYM}?cursor={cursor}"
        return httpx.Response(200, json=body)


@st.composite
def scenarios(draw):
    n = draw(st.integers(0, 60))
    # non-decreasing timestamps (ties happen: several quotes in one ns) and increasing sequence numbers
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    ts, rows = T0, []
    for i, step in enumerate(steps):
        ts += step
        rows.append(row(ts, 100 + i, draw(st.booleans()) and draw(st.booleans())))
    span = ts - T0 + 1
    gte = T0 + draw(st.integers(-2, span))
    lt = draw(st.integers(gte, T0 + span + 2))
    shuffled = draw(st.permutations(rows))
    return shuffled, rows, gte, lt, draw(st.integers(1, 70)), draw(st.integers(1, 25))


def fetch(vendor: Vendor, *, gte: int, lt: int, max_rows: int):
    async def go():
        reg = Registry()
        rest = MassiveRest("https://api.massive.test", "k", retries=0, requests_per_s=1e6, registry=reg,
                           transport=httpx.MockTransport(vendor))
        try:
            quotes, truncated = await rest.recent_quotes(SYM, gte_ns=gte, lt_ns=lt, max_rows=max_rows)
        finally:
            await rest.aclose()
        return quotes, truncated, reg.counter("rest_rows_refused_total", "", ["kind"]).value(kind="quote")

    return asyncio.run(go())


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_recent_quotes_is_the_newest_contiguous_part_of_the_window_whatever_the_paging(s):
    shuffled, rows, gte, lt, max_rows, cap = s
    vendor = Vendor(shuffled, cap)
    quotes, truncated, refused = fetch(vendor, gte=gte, lt=lt, max_rows=max_rows)

    window = [r for r in rows if gte <= r["sip_timestamp"] < lt]  # ascending (ts, seq)
    got = [(q.ts, q.seq) for q in quotes]
    assert got == sorted(got), "ascending event time"
    # the rows read are the newest k of the window; the good ones among them come back, in order
    read = len(got) + int(refused)
    assert read <= max_rows
    newest = window[len(window) - read:] if read else []
    assert got == [(r["sip_timestamp"], r["sequence_number"]) for r in newest if r["bid_price"] != "NaN"]
    assert refused == sum(r["bid_price"] == "NaN" for r in newest)
    assert truncated == (read < len(window))

    page = min(max_rows, 50_000)
    assert len(vendor.requests) <= math.ceil(max_rows / page) + 1
    if cap >= page:  # the vendor honoured the page size: all that max_rows allowed was read
        assert read == min(len(window), max_rows)
    first = dict(vendor.requests[0].url.params)
    assert first["order"] == "desc" and int(first["timestamp.gte"]) == gte and int(first["timestamp.lt"]) == lt
    assert int(first["limit"]) == page
    assert all(r.headers["authorization"] == "Bearer k" for r in vendor.requests)
    for q in quotes:
        assert q.sym == SYM and q.source == "backfill" and q.backfilled and q.bid_size == 10  # contracts, unscaled


def test_a_long_window_is_read_from_its_newest_end_in_few_requests():
    # 120,000 quotes in the window, max 60,000: two pages of 50,000 from the newest end, then stop
    rows = [row(T0 + i, i + 1, False) for i in range(120_000)]
    vendor = Vendor(rows, 50_000)
    quotes, truncated, refused = fetch(vendor, gte=T0, lt=T0 + 10**9, max_rows=60_000)
    assert truncated and refused == 0 and len(vendor.requests) == 2
    assert len(quotes) == 60_000 and quotes[0].seq == 60_001 and quotes[-1].seq == 120_000
