"""The live aggregator process and ``spx bars`` produce identical bars from the same input."""

import csv
import gzip
import random

import msgspec

import services.aggregator.bars as bars
from services.aggregator.bars import CSV_COLUMNS, bars_from_events, csv_row
from services.cli.main import main as spx
from spx_common.bus import RpcError
from spx_common.codec import encode_payload
from spx_common.marketrules import TradeRules
from spx_common.models import IndexValue, Quote, Trade
from spx_common.service import read_dead_letters
from tests.aggregator.rig import aggregator_process
from tests.conftest import eventually

S = 1_000_000_000
T0 = 1_795_185_000 * S


def _stream(n=3000, seed=3):
    rnd = random.Random(seed)
    ts, mid, out = T0, 590.0, []
    for _ in range(n):
        ts += rnd.randint(1, 15_000_000)  # unique timestamps, ~7 ms apart
        mid += rnd.choice([-0.01, 0, 0.01])
        if rnd.random() < 0.6:
            out.append(Quote(sym="SPY", bid=round(mid - 0.01, 2), ask=round(mid + 0.01, 2),
                             bid_size=rnd.choice([100, 300, 900]), ask_size=rnd.choice([100, 200, 1200]), ts=ts,
                             seq=len(out) + 1))
        else:
            out.append(Trade(sym="SPY", price=round(mid + rnd.choice([-0.01, 0, 0.01]), 2),
                             size=rnd.choice([1, 100, 250]), ts=ts, seq=len(out) + 1,
                             cond=rnd.choice([[14, 41], [14, 41], [12], [], [12, 37]])))  # 1 in 5 an odd lot
    return out


def _write_flat_files(events, d):
    trades = [e for e in events if isinstance(e, Trade)]
    quotes = [e for e in events if isinstance(e, Quote)]
    random.Random(1).shuffle(trades)  # any row order must be accepted
    tp, qp = d / "trades.csv.gz", d / "quotes.csv"
    with gzip.open(tp, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
                   "sip_timestamp,size,tape,trf_id,trf_timestamp".split(","))
        for e in trades:
            w.writerow([e.sym, ",".join(map(str, e.cond)), 0, 11, e.seq, e.ts - 5, e.price, e.seq, e.ts, int(e.size), 1,
                        0, 0])
    with open(qp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                   "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp".split(","))
        for e in quotes:
            w.writerow([e.sym, 12, e.ask, int(e.ask_size), 11, e.bid, int(e.bid_size), 1, "", e.ts - 5, e.seq, e.ts,
                        1, 0])
    return tp, qp


def test_live_service_and_spx_bars_agree_to_the_last_digit(run_dir, tmp_path):
    events = _stream()
    assert TradeRules().apply(events) > 100  # as the feed does: the odd lots are flagged volume only
    with aggregator_process(run_dir, ["bar.1s.SPY"]) as (feed, client, sub):
        for i in range(0, len(events), 10):
            feed.publish("tick.SPY", "ticks", events[i:i + 10], events[min(i + 9, len(events) - 1)].ts)
        feed.publish("tick.I:SPX", "ticks", [IndexValue(sym="I:SPX", value=5900, ts=events[-1].ts + 10 * S)], 0)
        live = []
        expected_last = (events[-1].ts // S) * S
        while not live or live[-1].start_ns < expected_last:
            frame = sub.recv(10)
            assert frame is not None, f"only {len(live)} bars arrived"
            bar = frame.body()
            if bar.closed:
                live.append(bar)
        # snapshot API: closed bars and the topic sequence to stitch against
        snap = client.call("bars_since", {"sym": "SPY", "interval": "1s"})
        assert len(snap["bars"]) == len(live) and snap["topic_seq"] >= len(live)
        assert client.call("last", {"sym": "SPY"})["seq"] == len(events)
        # the excluded prints are in the tick cache, flagged, as they arrived (out of the bars above)
        held = [e["event"] for e in client.call("ticks_since", {"sym": "SPY", "seq": 0})["events"]]
        assert len(held) == len(events)
        flagged = [ev for ev in held if ev.get("excl")]
        assert len(flagged) == sum(1 for e in events if type(e) is Trade and e.excl) > 100
        assert all(ev["excl"] == 4 and ev["cond"] == [12, 37] for ev in flagged)  # odd lots: volume only
        try:
            client.call("bars_since", {"sym": "SPY", "interval": "7s"})
            raise AssertionError("bad interval accepted")
        except RpcError as exc:
            assert exc.code == "bad_request"

    tp, qp = _write_flat_files(events, tmp_path)
    out = tmp_path / "bars.csv"
    assert spx(["bars", "--trades", str(tp), "--quotes", str(qp), "--interval", "1s", "--out", str(out),
                "--quiet"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == CSV_COLUMNS
    assert rows[1:] == [csv_row(b) for b in live]


def test_option_root_batches_are_cached_and_barred_per_contract(run_dir):
    """``tick.O:SPXW`` frames carry several contracts (docs/protocol.md): the real aggregator keeps each
    contract's ticks apart in its cache and makes each contract's bars exactly as from its own stream."""
    c1, c2 = "O:SPXW261120C05900000", "O:SPXW261120P05850000"
    rnd = random.Random(7)
    events, ts = [], T0
    for i in range(600):
        ts += rnd.randint(1, 20_000_000)
        sym, mid = (c1, 4.0) if rnd.random() < 0.5 else (c2, 2.5)
        if rnd.random() < 0.7:
            events.append(Quote(sym=sym, bid=mid - 0.05, ask=mid + 0.05, bid_size=float(rnd.randint(1, 50)),
                                ask_size=float(rnd.randint(1, 50)), ts=ts, seq=i + 1))
        else:
            events.append(Trade(sym=sym, price=mid + rnd.choice([-0.05, 0, 0.05]), size=float(rnd.randint(1, 9)),
                                ts=ts, seq=i + 1))
    with aggregator_process(run_dir, ["bar.1s.O:SPXW"]) as (feed, client, sub):
        for i in range(0, len(events), 25):
            batch = events[i:i + 25]
            feed.publish("tick.O:SPXW", "ticks", batch, batch[-1].ts)
        # a later event of each contract closes every bar before it
        end = (ts // S + 2) * S
        closing = [Quote(sym=c, bid=1, ask=1.1, ts=end, seq=10_000 + k) for k, c in enumerate((c1, c2))]
        feed.publish("tick.O:SPXW", "ticks", closing, end)
        want = {c: [b for b in bars_from_events([e for e in events if e.sym == c]) if b.start_ns < end]
                for c in (c1, c2)}
        live: dict[str, list] = {c1: [], c2: []}
        while sum(map(len, live.values())) < sum(map(len, want.values())):
            frame = sub.recv(10)
            assert frame is not None, f"bars so far: { {c: len(v) for c, v in live.items()} }"
            bar = frame.body()
            if bar.closed:
                live[bar.sym].append(bar)
        for c in (c1, c2):
            assert [csv_row(b) for b in live[c]] == [csv_row(b) for b in want[c]]
            mine = [e for e in events if e.sym == c] + [q for q in closing if q.sym == c]
            last = client.call("last", {"sym": c})
            assert last["seq"] == len(mine) and last["quote"]["sym"] == c
            got = client.call("ticks_since", {"sym": c, "seq": 0})["events"]
            assert [e["event"]["seq"] for e in got] == [e.seq for e in mine]


def test_bad_ticks_bodies_are_refused_counted_and_dead_lettered_and_odd_good_ones_aggregated(run_dir):
    """The aggregator reads ``ticks`` bodies as bytes (its core parses them), yet a frame from another process
    is still validated: a bad body is counted in ``bus_bad_frames_total{reason}`` and dead-lettered as it
    arrived, and the service goes on; a valid body in a form the core may not take as it is (a key the schema
    does not know, an integer price) is decoded, re-encoded and aggregated like any other."""
    enc = msgspec.msgpack.encode
    bad = [  # (reason, body bytes)
        ("schema", enc([{"k": "t", "sym": "SPY", "price": -5.0, "ts": T0}])),
        ("schema", enc([{"k": "q", "sym": "SPY", "bid": 1.0, "ask": 1.1}])),  # no ts
        ("garbage", b"\xc1"),
        ("garbage", enc([{"k": "t", "sym": "SPY", "price": 1.0, "ts": T0}]) + b"\x00"),  # trailing bytes
    ]
    odd = [{"k": "t", "sym": "SPY", "price": 590, "size": 100, "ts": T0 + 1, "venue": "X"},
           {"ts": T0 + 2, "ask": 590.02, "bid": 590.0, "sym": "SPY", "k": "q"}]
    with aggregator_process(run_dir, []) as (feed, client, sub):
        sent = []
        for seq, (_, body) in enumerate(bad, 1):
            parts = [b"tick.SPY", encode_payload("ticks", msgspec.Raw(body), src="feed", session="raw", seq=seq,
                                                 event_ns=T0)]
            feed.sock.send_multipart(parts)
            sent.append(parts)
        feed.sock.send_multipart([b"tick.SPY", encode_payload("ticks", msgspec.Raw(enc(odd)), src="feed",
                                                              session="raw", seq=len(bad) + 1, event_ns=T0 + 2)])
        good = Trade(sym="SPY", price=590.01, size=1, ts=T0 + 3)
        feed.publish("tick.SPY", "ticks", [good], good.ts)
        last = eventually(lambda: (r := client.call("last", {"sym": "SPY"}))["seq"] == 3 and r, 10,
                          what="the odd and the good frames aggregated")
        assert last["trade"]["price"] == 590.01 and last["quote"]["bid"] == 590.0
        events = [e["event"] for e in client.call("ticks_since", {"sym": "SPY", "seq": 0})["events"]]
        assert [(e["k"], e["price"] if e["k"] == "t" else e["ask"], e["ts"]) for e in events] == [
            ("t", 590.0, T0 + 1), ("q", 590.02, T0 + 2), ("t", 590.01, T0 + 3)]
        metrics = client.call("metrics")
        assert 'bus_bad_frames_total{reason="schema"} 2' in metrics
        assert 'bus_bad_frames_total{reason="garbage"} 2' in metrics
        assert 'handler_errors_total{topic="tick."}' not in metrics
        assert "aggregator_events_total 3" in metrics
        # the odd body is valid but not in msgspec's form: the compiled core leaves it to msgspec, counted
        assert f"aggregator_fallback_frames_total {1 if bars.COMPILED else 0}" in metrics
        status = client.call("status")
        assert status["state"] == "running" and status["bad_frames"] == 4 and status["dead_letters"] == 4
    letters = read_dead_letters(run_dir / "deadletter" / "aggregator.msgpack")
    assert [(reason, parts) for _, reason, _, parts in letters] == [
        (reason, parts) for (reason, _), parts in zip(bad, sent, strict=True)]
