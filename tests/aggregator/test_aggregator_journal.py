"""``spx bars --journal`` and the service's journal warm-up give the same bars as the flat files."""

import csv

from services.aggregator.bars import csv_row
from services.aggregator.config import AggregatorConfig
from services.aggregator.service import Aggregator
from services.cli.main import main as spx
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.journal import JournalWriter
from tests.aggregator.test_aggregator_service import _stream, _write_flat_files


def test_journal_bars_and_warm_up_match_flat_file_bars(run_dir, tmp_path):
    events = _stream(2000, seed=5)
    writer = JournalWriter(run_dir / "journal", flush_interval_s=0.05)
    for i in range(0, len(events), 7):
        assert writer.append(events[i:i + 7])
    writer.close()

    tp, qp = _write_flat_files(events, tmp_path)
    flat, jour = tmp_path / "flat.csv", tmp_path / "journal.csv"
    assert spx(["bars", "--trades", str(tp), "--quotes", str(qp), "--out", str(flat), "--quiet"]) == 0
    assert spx(["bars", "--journal", str(run_dir / "journal"), "--out", str(jour), "--quiet"]) == 0
    flat_rows = list(csv.reader(flat.open()))
    assert len(flat_rows) > 10 and flat_rows == list(csv.reader(jour.open()))

    svc = Aggregator(RuntimeConfig(run_dir=run_dir), BusConfig(),
                     config=AggregatorConfig(intervals=["1s"], warmup_from_journal=False))
    assert svc.warm_up() == len(events)
    assert svc.cache.last("SPY")["seq"] == len(events)
    warm = [csv_row(b) for b in svc.bars[("SPY", "1s")]] + [csv_row(svc.agg.current("SPY", "1s"))]
    assert warm == flat_rows[1:]
