"""One unit per field on every path: the same vendor quote read from the WebSocket, REST and a flat file gives
the same sizes - shares for stocks, contracts for options - before and after the vendor's 2025-11-03 change."""

from __future__ import annotations

import gzip
import json

import pytest

from services.feed.parsing import MassiveParser
from services.feed.rest import quote_from_rest
from spx_common import flatfiles
from spx_common.marketrules import SHARES_SINCE_NS

MS = 1_000_000
BEFORE = (SHARES_SINCE_NS - 86_400 * 10**9) // MS * MS  # 2025-11-02, round lots on every vendor path
AFTER = (SHARES_SINCE_NS + 86_400 * 10**9) // MS * MS  # 2025-11-04, shares on every vendor path
QUOTES_HEADER = ("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                 "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp")


def three_paths(tmp_path, sym: str, ts: int, bid_size: float, ask_size: float, quote_sizes: str = "vendor"):
    """(bid_size, ask_size) of one vendor quote as the WebSocket, REST and flat-file readers make it."""
    ws = json.dumps([{"ev": "Q", "sym": sym, "bx": 4, "bp": 1.5, "bs": bid_size, "ax": 7, "ap": 1.6, "as": ask_size,
                      "t": ts // MS, "q": 11}])
    events, _ = MassiveParser().parse(ws)
    rest = quote_from_rest(sym, {"ask_exchange": 7, "ask_price": 1.6, "ask_size": ask_size, "bid_exchange": 4,
                                 "bid_price": 1.5, "bid_size": bid_size, "sequence_number": 11, "sip_timestamp": ts})
    path = tmp_path / f"{sym.replace(':', '_')}-{ts}-quotes.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(QUOTES_HEADER + "\n" + f"{sym},7,1.6,{ask_size:g},4,1.5,{bid_size:g},,,{ts - 500},11,{ts},3,0\n")
    (flat,) = list(flatfiles.iter_events(path, quote_sizes=quote_sizes))
    return [(q.bid_size, q.ask_size) for q in (events[0], rest, flat)]


@pytest.mark.parametrize("sym,ts,want", [
    ("SPY", BEFORE, (300.0, 1200.0)),  # round lots 3 x 12 -> shares, on all three paths
    ("SPY", AFTER, (3.0, 12.0)),  # already shares
    ("O:SPY251219C00600000", BEFORE, (3.0, 12.0)),  # option sizes are contracts, any date
    ("O:SPY251219C00600000", AFTER, (3.0, 12.0)),
])
def test_the_same_vendor_quote_has_the_same_sizes_on_websocket_rest_and_flat_files(tmp_path, sym, ts, want):
    assert three_paths(tmp_path, sym, ts, 3, 12) == [want, want, want]


def test_flat_files_already_in_shares_are_read_as_they_are(tmp_path):
    # files converted from another source (../shared/data/real) hold shares whatever their date
    ws, rest, flat = three_paths(tmp_path, "SPY", BEFORE, 3, 12, quote_sizes="shares")
    assert ws == rest == (300.0, 1200.0) and flat == (3.0, 12.0)
    with pytest.raises(ValueError):
        list(flatfiles.iter_events(tmp_path / "x.csv", quote_sizes="lots"))
