"""The live aggregator process and ``spx bars`` produce identical bars from the same input."""

import csv
import gzip
import os
import random
import subprocess
import sys

import zmq

from services.aggregator.bars import CSV_COLUMNS, csv_row
from services.cli.main import main as spx
from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import IndexValue, Quote, Trade
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
                             size=rnd.choice([1, 100, 250]), ts=ts, seq=len(out) + 1, cond=[12, 37]))
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
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed")
    proc = subprocess.Popen([sys.executable, "-m", "services.aggregator"], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint("aggregator", rt)], ["bar.1s.SPY"])
    try:
        def feed_seen():
            feed.heartbeat(0)
            try:
                return client.call("status")["peers"].get("feed")
            except RpcError:
                return None

        eventually(feed_seen, 20, interval_s=0.2)
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
        try:
            client.call("bars_since", {"sym": "SPY", "interval": "7s"})
            raise AssertionError("bad interval accepted")
        except RpcError as exc:
            assert exc.code == "bad_request"
    finally:
        proc.terminate()
        proc.wait(10)
        client.close()
        sub.close()
        feed.close()
        ctx.destroy(linger=0)

    tp, qp = _write_flat_files(events, tmp_path)
    out = tmp_path / "bars.csv"
    assert spx(["bars", "--trades", str(tp), "--quotes", str(qp), "--interval", "1s", "--out", str(out),
                "--quiet"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == CSV_COLUMNS
    assert rows[1:] == [csv_row(b) for b in live]
