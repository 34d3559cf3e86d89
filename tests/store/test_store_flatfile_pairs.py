"""``spx backfill --flat-file TRADES --flat-file QUOTES`` (issue 19 item 4): the files of one day are
read together, so the stored bars are the bars ``spx bars --trades T --quotes Q`` writes, quotes and
microstructure included (before: each file's bars built alone, every share neutral, coverage 0)."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import os
from pathlib import Path

import pytest

from services.aggregator.bars import csv_row
from services.cli.main import main
from services.cli.backfill import flat_file_day, pair_by_day
from spx_common.calendar import ET

#: the shared real days (``../shared/data/real`` next to the repository; SPX_REAL_DATA overrides)
REAL = Path(os.environ.get("SPX_REAL_DATA", "/work/shared/data/real"))
DAY = "2013-10-07"


def window(src: Path, dst: Path, start_ns: int, end_ns: int) -> int:
    """Copy the rows of ``src`` with SIP time in ``[start_ns, end_ns)`` (header kept) to ``dst``."""
    n = 0
    with gzip.open(src, "rt", newline="") as fi, gzip.open(dst, "wt", newline="") as fo:
        reader, writer = csv.reader(fi), csv.writer(fo, lineterminator="\n")
        header = next(reader)
        writer.writerow(header)
        ts = header.index("sip_timestamp")
        for row in reader:
            if start_ns <= int(row[ts]) < end_ns:
                writer.writerow(row)
                n += 1
    return n


@pytest.fixture(scope="module")
def real_window(tmp_path_factory) -> tuple[Path, Path]:
    """Ten minutes after the open of a real day (SPY trades and quotes), as the vendor names them."""
    if not (REAL / f"{DAY}-trades-SPY.csv.gz").exists():
        pytest.skip(f"real data not found under {REAL}")
    d = tmp_path_factory.mktemp("flat")
    start = int(dt.datetime(2013, 10, 7, 9, 30, tzinfo=ET).timestamp()) * 10**9
    end = start + 600 * 10**9
    trades, quotes = d / f"{DAY}-trades-SPY.csv.gz", d / f"{DAY}-quotes-SPY.csv.gz"
    assert window(REAL / trades.name, trades, start, end) > 1000
    assert window(REAL / quotes.name, quotes, start, end) > 500
    return trades, quotes


def test_files_pair_by_day_from_name_or_first_row(tmp_path):
    a = tmp_path / "2013-10-07-trades-SPY.csv.gz"
    b = tmp_path / "2013-10-07-quotes-SPY.csv.gz"
    c = tmp_path / "2013-10-09-trades-SPY.csv.gz"
    unnamed = tmp_path / "quotes.csv"
    unnamed.write_text("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                       "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n"
                       "SPY,1,600.1,100,1,600.0,200,,,1381152600000000000,1,1381152600000000000,1,\n")
    assert flat_file_day(unnamed) == DAY
    assert pair_by_day([c, a, unnamed, b]) == [(DAY, [a, unnamed, b]), ("2013-10-09", [c])]


def test_flat_file_import_stores_the_bars_spx_bars_writes(real_window, run_dir, monkeypatch, capsys):
    trades, quotes = real_window
    out = run_dir / "bars.csv"
    assert main(["bars", "--trades", str(trades), "--quotes", str(quotes), "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as fh:
        expected = list(csv.reader(fh))[1:]
    assert len(expected) > 300

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{run_dir}/spx.sqlite3")
    assert main(["backfill", "--flat-file", str(trades), "--flat-file", str(quotes), "--symbols", "SPY"]) == 0
    assert "2 fetched" in capsys.readouterr().out
    from spx_common.store import open_store

    store = open_store(f"sqlite:///{run_dir}/spx.sqlite3")
    try:
        bars = store.bars("SPY", "1s")
        assert [csv_row(b) for b in bars] == expected  # every field, exactly (floats in repr form)
        # the quotes reached the bars: an aggressor split and quote coverage, not all-neutral trades
        assert sum(b.buy_volume or 0 for b in bars) > 0 and sum(b.sell_volume or 0 for b in bars) > 0
        covered = [b.quote_coverage_pct for b in bars if b.quote_coverage_pct]
        assert len(covered) > len(bars) // 2
        assert store.bars("SPY", "60s") and store.bars("SPY", "60s")[0].quote_coverage_pct
    finally:
        store.close()
    # a second run skips the day (one checkpoint for the pair), a forced one writes nothing twice
    assert main(["backfill", "--flat-file", str(trades), "--flat-file", str(quotes), "--symbols", "SPY"]) == 0
    assert "0 fetched (0 rows), 2 skipped" in capsys.readouterr().out
