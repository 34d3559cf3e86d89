"""Backfill against the fake Massive REST server: pagination, 429/500 retries, resume, idempotency."""

from __future__ import annotations

import asyncio
import datetime as dt
import io

import pytest

from services.cli.main import main
from services.feed.rest import MassiveRest
from services.cli.backfill import Progress, import_flat_files, plan, run_rest, trading_days
from spx_testing.fakes.massive import FakeMassive

DAY = dt.date(2026, 11, 20)  # a Friday
DAY2 = dt.date(2026, 11, 23)  # the next Monday


def day_ms(d: dt.date) -> int:
    return int(dt.datetime.combine(d, dt.time(14, 30), dt.UTC).timestamp() * 1000)


def aggs(d: dt.date, n: int, step_ms: int, base: float = 500.0) -> list[dict]:
    t0 = day_ms(d)
    return [{"o": base + i, "h": base + i + 1, "l": base + i - 1, "c": base + i + 0.5, "v": 100 + i,
             "vw": base + i + 0.2, "n": 3, "t": t0 + i * step_ms} for i in range(n)]


@pytest.fixture
def fake():
    with FakeMassive(api_key="k", page_limit_max=1000) as f:
        f.aggs[("SPY", "second")] = aggs(DAY, 2500, 1000) + aggs(DAY2, 1200, 1000)
        f.aggs[("SPY", "minute")] = aggs(DAY, 390, 60_000) + aggs(DAY2, 390, 60_000)
        yield f


def run(store, fake, tasks, **kw):
    async def go():
        async with MassiveRest(fake.rest_url, "k", retries=3, backoff_initial_s=0.01, backoff_max_s=0.05,
                               rate_limit_wait_s=0.01) as rest:
            return await run_rest(store, rest, tasks, progress=Progress(len(tasks), io.StringIO()), **kw)
    return asyncio.run(go())


def test_pagination_retries_and_idempotent_rerun(store, fake):
    tasks = plan(["SPY"], trading_days(DAY, DAY2), ["second", "minute"], False, False)
    assert len(tasks) == 4  # the weekend is not a task
    fake.fail_next("/v2/aggs/ticker/SPY/range/1/second", 429, 500)
    s = run(store, fake, tasks)
    assert (s.fetched, s.skipped, s.failed, s.rows) == (4, 0, 0, 2500 + 1200 + 780)
    assert store.count("bars") == 4480
    pages = [p for p, q, h in fake.requests if "cursor" in q]
    assert len(pages) >= 2 + 1  # 2500 -> three pages, 1200 -> two
    bars = store.bars("SPY", "1s")
    assert len(bars) == 3700 and bars[0].open == 500.0 and bars[0].vwap == 500.2 and bars[0].source == "backfill"
    assert all(h.get("authorization") == "Bearer k" or h.get("Authorization") == "Bearer k"
               for _, _, h in fake.requests)
    s2 = run(store, fake, tasks)
    assert (s2.fetched, s2.skipped) == (0, 4) and store.count("bars") == 4480
    s3 = run(store, fake, tasks, force=True)
    assert s3.fetched == 4 and store.count("bars") == 4480  # re-fetch writes nothing twice


def test_resume_after_failure(store, fake):
    tasks = plan(["SPY"], [DAY, DAY2], ["minute"], False, False)
    fake.fail_next("/v2/aggs/ticker/SPY/range/1/minute/2026-11-23", 500, 500, 500, 500)  # beyond 3 retries
    s = run(store, fake, tasks)
    assert (s.fetched, s.failed) == (1, 1) and "2026-11-23" in s.failures[0]
    assert store.checkpoint("rest:minute:SPY:2026-11-23")["status"] == "failed"
    s2 = run(store, fake, tasks)  # resumes: only the failed day is fetched
    assert (s2.fetched, s2.skipped, s2.failed) == (1, 1, 0)
    assert store.count("bars") == 780


def test_fatal_status_fails_fast(store, fake):
    tasks = plan(["SPY"], [DAY], ["minute"], False, False)
    fake.fail_next("/v2/aggs/ticker/SPY/range/1/minute", 403)
    before = len(fake.requests)
    s = run(store, fake, tasks)
    assert s.failed == 1 and "403" in s.failures[0] and len(fake.requests) - before == 1  # never retried


def test_progress_eta():
    p = Progress(4, io.StringIO(), clock=iter([0.0, 10.0, 20.0]).__next__)
    p.step(100, "a")
    assert "1/4" in p.stream.getvalue() and "ETA 00:30" in p.stream.getvalue()


def test_cli_backfill_summary(fake, run_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{run_dir}/spx.sqlite3")
    monkeypatch.setenv("MASSIVE_API_KEY", "k")
    monkeypatch.setenv("MASSIVE_REST_URL", fake.rest_url)
    assert main(["backfill", "2026-11-20", "2026-11-20", "--symbols", "SPY", "--resolution", "minute"]) == 0
    out = capsys.readouterr()
    assert "1 fetched (390 rows), 0 skipped" in out.out and "ETA" in out.err
    assert main(["backfill", "2026-11-20", "2026-11-20", "--symbols", "SPY", "--resolution", "minute"]) == 0
    assert "0 fetched (0 rows), 1 skipped" in capsys.readouterr().out
    assert main(["backfill", "2026-11-21", "2026-11-20"]) == 2
    assert main(["backfill"]) == 2 and "FROM is required" in capsys.readouterr().err
    assert main(["backfill", "--flat-file", str(run_dir / "missing.csv")]) == 2
    flat = run_dir / "2026-11-20.quotes.csv"
    flat.write_text("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                    "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n"
                    "SPY,1,600.1,100,1,600.0,200,,,1763649000000000000,1,1763649000000000000,1,\n"
                    "QQQ,1,500.1,100,1,500.0,200,,,1763649000000000000,2,1763649000000000000,1,\n")
    capsys.readouterr()
    assert main(["backfill", "--flat-file", str(flat), "--symbols", "SPY"]) == 0
    assert "1 fetched" in capsys.readouterr().out


def test_flat_file_import(store, tmp_path):
    path = tmp_path / "2026-11-20.trades.csv"
    t0 = 1_763_649_000_000_000_000
    rows = ["ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,"
            "size,tape,trf_id,trf_timestamp"]
    for i in range(30):
        rows.append(f"SPY,,0,4,{i},{t0 + i * 100_000_000},{600 + i * 0.01:.2f},{i},{t0 + i * 100_000_000},10,1,,")
    rows.append("SPY,,0,4,x,notanumber,1,1,notanumber,1,1,,")
    path.write_text("\n".join(rows) + "\n")
    s = import_flat_files(store, [path], symbols=["SPY"])
    assert s.fetched == 1 and s.bad_rows == 1
    assert store.count("market_events") == 30
    bars = store.bars("SPY", "1s")
    assert [b.trades for b in bars] == [10, 10, 10] and bars[0].open == 600.0
    s2 = import_flat_files(store, [path], symbols=["SPY"])
    assert s2.skipped == 1 and store.count("market_events") == 30


def test_trades_and_quotes_paginated_into_market_events(store, fake):
    from spx_common.models import Quote, Trade

    t0 = int(dt.datetime.combine(DAY, dt.time(15), dt.UTC).timestamp()) * 10**9
    fake.trades["SPY"] = [Trade(sym="SPY", price=600 + i * 0.01, size=10, ts=t0 + i * 10**6, seq=i)
                          for i in range(2300)]
    fake.quotes["SPY"] = [Quote(sym="SPY", bid=599.9, ask=600.1, bid_size=100, ask_size=200, ts=t0 + i * 10**6,
                                seq=i) for i in range(1500)]
    fake.fail_next("/v3/quotes", 429)
    tasks = plan(["SPY"], [DAY], [], True, True)
    s = run(store, fake, tasks)
    assert (s.fetched, s.failed, s.rows) == (2, 0, 3800)
    assert store.count("market_events") == 3800
    assert run(store, fake, tasks, force=True).rows == 3800 and store.count("market_events") == 3800


class Interrupt(Progress):
    """Ctrl-C after ``after`` tasks (raised from inside the run, like a SIGINT between two steps)."""

    def __init__(self, total, after):
        super().__init__(total, io.StringIO())
        self.after = after

    def step(self, rows, label=""):
        super().step(rows, label)
        if self.done == self.after:
            raise KeyboardInterrupt


def test_interrupted_backfill_resumes_without_duplicates(store, fake):
    tasks = plan(["SPY"], [DAY, DAY2], ["second", "minute"], False, False)

    async def go(progress):
        async with MassiveRest(fake.rest_url, "k", retries=1, backoff_initial_s=0.01) as rest:
            return await run_rest(store, rest, tasks, progress=progress)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(go(Interrupt(len(tasks), 2)))
    done = [k for k in (f"rest:{kd}:SPY:{d.isoformat()}" for kd, _, d in tasks) if store.checkpoint(k)]
    assert len(done) == 2
    s = asyncio.run(go(Progress(len(tasks), io.StringIO())))
    assert (s.fetched, s.skipped, s.failed) == (2, 2, 0)
    assert store.count("bars") == 2500 + 1200 + 780


def test_excluded_prints_are_counted_not_stored_and_stay_out_of_the_stored_bars(store, fake, tmp_path):
    """The feed's trade rules on both importers: an odd lot (37) and a correction are not in market_events;
    the correction is in no bar, the odd lot's size only in the bar's volume; Form T (12) and a sweep are
    regular prints (docs/microbars.md)."""
    from spx_common.models import Trade

    t0 = int(dt.datetime.combine(DAY, dt.time(15), dt.UTC).timestamp()) * 10**9
    fake.trades["SPY"] = [Trade(sym="SPY", price=600.0, size=10, ts=t0, seq=1, cond=[14]),
                          Trade(sym="SPY", price=650.0, size=7, ts=t0 + 1, seq=2, cond=[37]),
                          Trade(sym="SPY", price=650.0, size=5, ts=t0 + 2, seq=3),
                          Trade(sym="SPY", price=601.0, size=10, ts=t0 + 3, seq=4, cond=[12])]
    fake.corrections[("SPY", 3)] = 1
    s = run(store, fake, plan(["SPY"], [DAY], [], True, False))
    assert (s.rows, s.excluded) == (2, 2) and store.count("market_events") == 2
    assert "2 trades excluded" in s.text()

    path = tmp_path / "2026-11-20.trades.csv"
    t1 = 1_763_649_000_000_000_000
    path.write_text("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
                    "sip_timestamp,size,tape,trf_id,trf_timestamp\n"
                    f"QQQ,14,0,4,1,{t1},500.0,1,{t1},10,1,,\n"
                    f"QQQ,\"12,37\",0,4,2,{t1 + 1},550.0,2,{t1 + 1},3,1,,\n"
                    f"QQQ,,1,4,3,{t1 + 2},550.0,3,{t1 + 2},4,1,,\n"
                    f"QQQ,12,0,4,4,{t1 + 3},501.0,4,{t1 + 3},10,1,,\n")
    s = import_flat_files(store, [path], symbols=["QQQ"])
    assert s.excluded == 2 and len(store.events(["QQQ"])) == 2
    (bar,) = store.bars("QQQ", "1s")
    assert (bar.high, bar.volume, bar.trades, bar.vwap) == (501.0, 23.0, 2, 500.5)
