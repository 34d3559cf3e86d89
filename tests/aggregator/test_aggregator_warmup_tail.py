"""The aggregator's warm-up reads a bounded tail of the journal's newest day (``warmup_max_mb``), not the day.

Real journal files written by :class:`JournalWriter` (multi-symbol records, as the feed journals one vendor
batch per record), a real aggregator (in this process, and as its own process for the status RPC).
"""

import random
from collections import defaultdict

import zmq

from services.aggregator.bars import bars_from_events, csv_row
from services.aggregator.config import AggregatorConfig
from services.aggregator.service import Aggregator
from spx_common.bus import RpcClient, RpcError
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.journal import JournalWriter, journal_files
from spx_common.models import IndexValue, Quote, Trade
from spx_testing import ServiceProcess

MS = 1_000_000
T0 = 1_795_185_000_000_000_000  # 2026-11-20 09:30 New York
C1, C2 = "O:SPXW261120C05900000", "O:SPXW261120P05850000"
INTERVALS = ["1s", "5s"]


def _records(n_records: int, seed: int = 11) -> list[list]:
    """Time-ordered vendor batches of several symbols each (SPY trades and quotes, two option contracts,
    I:SPX values), ~1 ms apart: what the feed journals (sizes as floats, as the journal decodes them)."""
    rnd = random.Random(seed)
    ts, spy, opt, seq = T0, 590.0, 12.0, 0
    out = []
    for _ in range(n_records):
        batch = []
        for _ in range(rnd.randint(8, 30)):
            ts += rnd.randint(1, 2 * MS)
            seq += 1
            r = rnd.random()
            spy += rnd.choice([-0.01, 0, 0.01])
            if r < 0.35:
                batch.append(Quote(sym="SPY", bid=round(spy - 0.01, 2), ask=round(spy + 0.01, 2),
                                   bid_size=rnd.choice([100.0, 300.0]), ask_size=rnd.choice([100.0, 900.0]), ts=ts,
                                   seq=seq))
            elif r < 0.55:
                batch.append(Trade(sym="SPY", price=round(spy + rnd.choice([-0.01, 0, 0.01]), 2),
                                   size=rnd.choice([1.0, 100.0, 250.0]), ts=ts, seq=seq, cond=[12]))
            elif r < 0.9:
                opt = max(0.05, opt + rnd.choice([-0.05, 0, 0.05]))
                sym = rnd.choice([C1, C2])
                if rnd.random() < 0.8:
                    batch.append(Quote(sym=sym, bid=round(opt, 2), ask=round(opt + 0.1, 2), bid_size=10.0,
                                       ask_size=rnd.choice([5.0, 20.0]), ts=ts, seq=seq))
                else:
                    batch.append(Trade(sym=sym, price=round(opt + 0.05, 2), size=rnd.choice([1.0, 2.0]), ts=ts,
                                       seq=seq))
            else:
                batch.append(IndexValue(sym="I:SPX", value=round(spy * 10, 2), ts=ts))
        out.append(batch)
    return out


def _journal(run_dir, records, **kw):
    writer = JournalWriter(run_dir / "journal", flush_interval_s=10, **kw)
    for i, batch in enumerate(records):
        assert writer.append(batch)
        if i % 100 == 99:
            writer.flush()  # a part is rolled over at a flush, as the writer thread does every 0.25 s
    writer.close()
    return journal_files(run_dir / "journal")


def _by_key(bars) -> dict[tuple[str, str, int], list[str]]:
    return {(b.sym, b.interval, b.start_ns): csv_row(b) for b in bars}


def _warm_bars(svc: Aggregator) -> list:
    """What the warmed aggregator serves: closed bars of the rings and the in-progress bars."""
    out = [b for ring in svc.bars.values() for b in ring]
    for sym in svc.agg.symbol_names():
        for interval in INTERVALS:
            bar = svc.agg.current(sym, interval)
            if bar is not None:
                out.append(bar)
    return out


def test_warm_up_reads_only_the_tail_of_a_day_larger_than_the_bound(run_dir):
    records = _records(2_500)
    parts = _journal(run_dir, records, max_file_bytes=700_000)
    with open(parts[-1], "ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x93")  # a torn last record (a crash during the write)
    day_bytes = sum(p.stat().st_size for p in parts)
    assert len(parts) >= 4 and day_bytes > 3 << 20

    svc = Aggregator(RuntimeConfig(run_dir=run_dir), BusConfig(),
                     config=AggregatorConfig(intervals=INTERVALS, warmup_from_journal=False, warmup_max_mb=1))
    n = svc.warm_up()
    info = svc.warmup
    assert info["state"] == "partial" and info["bytes"] == 1 << 20 and info["torn"] == 1
    assert info["resynced"] and 0 < info["skipped_bytes"] < 4096 and info["corrupt"] == 0
    assert info["parts"] == [p.name for p in parts[-len(info["parts"]):]] and len(info["parts"]) == 2

    # exactly the newest whole records: their events, nothing older
    tail = [ev for batch in records[-info["records"]:] for ev in batch]
    every = [ev for batch in records for ev in batch]
    assert n == info["events"] == len(tail) and 0 < n < len(every) // 2
    assert info["first_ns"] == min(ev.ts for ev in records[-info["records"]]) == info["oldest_ns"]
    assert info["newest_ns"] == every[-1].ts
    per_sym = defaultdict(list)
    for ev in tail:
        per_sym[ev.sym].append(ev)
    assert set(svc.cache.syms) == set(per_sym)
    for sym, evs in per_sym.items():
        got = svc.cache.since(sym, ts_ns=0, limit=100_000)
        assert [e["event"] for e in got["events"]] == evs and got["seq"] == len(evs)
        assert got["events"][0]["event"].ts >= info["first_ns"]
    assert svc.cache.last("SPY")["trade"] == [ev for ev in tail if ev.sym == "SPY" and isinstance(ev, Trade)][-1]

    # bars: exactly the bars of the events read
    warm = _by_key(_warm_bars(svc))
    assert warm == _by_key(bars_from_events(tail, intervals=INTERVALS))
    # and the bars the whole day made, for every bar that starts after the first record read (this journal
    # is in event-time order: D = 0) and, for a quoted symbol, after its first quote read
    whole = _by_key(bars_from_events(every, intervals=INTERVALS))
    first_quote = {}
    for ev in tail:
        if isinstance(ev, Quote):
            first_quote.setdefault(ev.sym, ev.ts)
    exact = {k for k in warm if k[2] > info["first_ns"] and k[2] > first_quote.get(k[0], 0)}
    assert len(exact) > 40 and {k: warm[k] for k in exact} == {k: whole[k] for k in exact}
    # the rest may be partial: the bars cut by the bound differ from the day's
    assert any(warm[k] != whole[k] for k in set(warm) - exact)


def test_warm_up_of_a_day_smaller_than_the_bound_reads_it_whole(run_dir):
    records = _records(600, seed=5)
    parts = _journal(run_dir, records, max_file_bytes=150_000)
    assert len(parts) >= 3
    svc = Aggregator(RuntimeConfig(run_dir=run_dir), BusConfig(),
                     config=AggregatorConfig(intervals=INTERVALS, warmup_from_journal=False, warmup_max_mb=1))
    every = [ev for batch in records for ev in batch]
    assert svc.warm_up() == len(every)
    info = svc.warmup
    assert info["state"] == "whole_day" and not info["resynced"] and info["torn"] == 0
    assert info["bytes"] == sum(p.stat().st_size for p in parts) and info["parts"] == [p.name for p in parts]
    assert info["first_ns"] == info["oldest_ns"] == every[0].ts and info["newest_ns"] == every[-1].ts
    assert _by_key(_warm_bars(svc)) == _by_key(bars_from_events(every, intervals=INTERVALS))


def test_aggregator_process_reports_its_bounded_warm_up(run_dir):
    """A real aggregator process started on a day larger than ``warmup_max_mb``: the status RPC says what
    was read, and ``ticks_since`` serves the tail only."""
    records = _records(2_500, seed=3)
    _journal(run_dir, records)
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    proc = ServiceProcess.service("aggregator", run_dir=run_dir, env={"SPX_AGGREGATOR_WARMUP_MAX_MB": "1"})
    ctx = zmq.Context()
    client = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1, retries=0)
    try:
        with proc:
            def status():
                try:
                    return client.call("status")
                except RpcError:
                    return None

            doc = proc.wait_ready(status, 20, "aggregator status", 0.2)
            info = doc["warm_up"]
            assert info["state"] == "partial" and info["bytes"] == 1 << 20 and info["resynced"]
            tail = [ev for batch in records[-info["records"]:] for ev in batch]
            assert info["events"] == len(tail) and info["first_ns"] == min(ev.ts for ev in records[-info["records"]])
            assert info["seconds"] < 5
            spy = [ev for ev in tail if ev.sym == "SPY"]
            got = client.call("ticks_since", {"sym": "SPY", "since_ns": 0, "limit": 100_000})
            assert not got["truncated"] and got["seq"] == len(spy)
            assert [e["event"]["ts"] for e in got["events"]] == [ev.ts for ev in spy]
            bars = client.call("bars_since", {"sym": "SPY", "interval": "1s"})["bars"]
            assert bars and bars[0]["start_ns"] >= (info["first_ns"] // 10**9) * 10**9
    finally:
        client.close()
        ctx.destroy(linger=0)
