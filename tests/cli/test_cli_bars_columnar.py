"""``spx bars`` on flat files: the columnar fast path (pyarrow reader, ``feed_columns``) writes the object
path's bars byte for byte, on a window of a real day (../shared/data/real: SPY and IBM, 2013-10-07) in the
vendor's layout (every ticker in one file, sorted by ticker then time), gzip and plain CSV.

The real days have no conditions and no corrections, so a few rows of the window's copy get an excluding
condition, an unknown one, Form T (an override that keeps the print) and a correction: the rules' columnar
form must flag exactly the prints ``TradeRules.apply`` flags."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest

from services.cli import main as cli
from services.cli.commands import bars as bars_cmd
from spx_common import flatfiles

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="the real days are not on this machine")

DAY = "2013-10-07"
START, END = 1381152600 * 10**9, 1381153500 * 10**9  # 13:30-13:45 UTC: the open, 15 minutes


def window(kind: str) -> tuple[list[str], list[list[str]]]:
    rows: list[list[str]] = []
    for sym in ("IBM", "SPY"):  # the vendor's order: ticker, then time
        with gzip.open(REAL / f"{DAY}-{kind}-{sym}.csv.gz", "rt", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            at = header.index("sip_timestamp")
            rows += [r for r in reader if START <= int(r[at]) < END]
    return header, rows


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("flat")
    out = {}
    for kind in ("trades", "quotes"):
        header, rows = window(kind)
        if kind == "trades":
            cond, corr = header.index("conditions"), header.index("correction")
            for i, value in ((10, "37"), (20, "12,37"), (30, "12"), (40, "999"), (50, "2,7"), (60, "")):
                rows[i][cond] = value
            rows[len(rows) // 2][corr] = "1"
            rows[len(rows) // 2 + 1][cond] = "10"
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        (tmp / f"{kind}.csv").write_text(text.getvalue())
        with gzip.open(tmp / f"{kind}.csv.gz", "wt", newline="") as fh:
            fh.write(text.getvalue())
        out[kind] = tmp / f"{kind}.csv.gz"
        out[kind + "-plain"] = tmp / f"{kind}.csv"
    return out


def run(tmp: Path, argv: list[str], fast: bool, monkeypatch) -> bytes:
    out = tmp / ("fast.csv" if fast else "object.csv")
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(bars_cmd, "_bars_columnar", lambda *a: None)
        assert cli.main(["bars", *argv, "--out", str(out), "--quiet"]) == 0
    return out.read_bytes()


@pytest.mark.parametrize("argv", [
    ["--interval", "1s"],
    ["--interval", "250ms", "--symbol", "IBM", "--quote-sizes", "shares"],
    ["--interval", "5s", "--no-l2", "--fill-gaps", "--symbol", "SPY", "--symbol", "XYZ"],
], ids=["1s-vendor-sizes", "250ms-ibm-shares", "5s-spy-gaps"])
@pytest.mark.parametrize("plain", [False, True], ids=["gzip", "plain"])
def test_fast_path_writes_the_object_paths_bars(files, tmp_path, monkeypatch, argv, plain):
    suffix = "-plain" if plain else ""
    args = ["--trades", str(files["trades" + suffix]), "--quotes", str(files["quotes" + suffix]), *argv]
    calls = []
    real = bars_cmd._bars_columnar
    monkeypatch.setattr(bars_cmd, "_bars_columnar", lambda *a: calls.append(1) or real(*a))
    fast = run(tmp_path, args, True, monkeypatch)
    assert calls, "the fast path was not taken"
    want = run(tmp_path, args, False, monkeypatch)
    assert fast.count(b"\n") > 100 and fast == want


def test_rules_flag_the_same_prints_and_count_them_alike(files):
    from spx_common.marketrules import TradeRules

    cols = flatfiles.read_columns([files["trades"], files["quotes"]])
    fast = TradeRules()
    excl = fast.apply_columns(cols.names, cols.sym, cols.kind, cols.excl, cols.cond, cols.conds, cols.b)
    events = list(flatfiles.read_merged([files["trades"], files["quotes"]]))
    slow = TradeRules()
    slow.apply(events)
    assert [e.excl for e in events if type(e).__name__ == "Trade"] == excl[cols.kind == 0].tolist()
    assert fast.excluded == slow.excluded and fast.excluded_size == slow.excluded_size
    assert set(fast.excluded) == {"37", "2", "7", "10", "correction"}


def test_a_bad_row_takes_the_object_path_which_reports_it(files, tmp_path, monkeypatch, capsys):
    text = files["trades-plain"].read_text().splitlines()
    fields = text[5].split(",")
    fields[6] = "-1"  # a negative price: a bad row for the object reader
    text[5] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(flatfiles.ColumnarUnsupported):
        flatfiles.read_columns([bad])
    out = tmp_path / "bars.csv"
    assert cli.main(["bars", "--trades", str(bad), "--quotes", str(files["quotes-plain"]), "--out", str(out)]) == 0
    assert "bad rows/records 1" in capsys.readouterr().err
    assert out.read_bytes() == run(tmp_path, ["--trades", str(bad), "--quotes", str(files["quotes-plain"])], False,
                                   monkeypatch)


def test_no_row_selected_gives_the_header_alone_on_both_paths(files, tmp_path, monkeypatch):
    args = ["--trades", str(files["trades"]), "--quotes", str(files["quotes"]), "--symbol", "XYZ"]
    fast = run(tmp_path, args, True, monkeypatch)
    assert fast == run(tmp_path, args, False, monkeypatch) and fast.count(b"\n") == 1


@pytest.mark.parametrize("plain", [False, True], ids=["gzip", "plain"])
def test_the_reader_reports_progress_up_to_the_files_size(files, plain):
    """``progress(done, total)``: total is the files' size as stored, done never goes back, stays within it
    and ends at it; the columns are the ones read without progress."""
    suffix = "-plain" if plain else ""
    paths = [files["trades" + suffix], files["quotes" + suffix]]
    seen: list[tuple[int, int]] = []
    cols = flatfiles.read_columns(paths, block_size=1 << 16, progress=lambda d, t: seen.append((d, t)))
    total = sum(p.stat().st_size for p in paths)
    assert {t for _, t in seen} == {total}
    done = [d for d, _ in seen]
    assert len(done) > 4 and done == sorted(done) and done[-1] == total and all(0 <= d <= total for d in done)
    same = flatfiles.read_columns(paths, block_size=1 << 16)
    assert cols.names == same.names and (cols.ts == same.ts).all() and (cols.b == same.b).all()


def test_spx_bars_shows_a_progress_bar_with_eta_on_a_terminal(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    out = tmp_path / "bars.csv"
    assert cli.main(["bars", "--trades", str(files["trades"]), "--quotes", str(files["quotes"]),
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "MB  read" in err and "eta" in err and "events ->" in err
