"""Tick journal: off-hot-path writes, day rotation, bounded queue, crash loses at most one flush interval."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec

from spx_common import journal, recordlog
from spx_common.journal import JournalWriter, ReadStats, iter_batches, iter_events
from spx_common.models import IndexValue, Quote, Trade
from tests.conftest import eventually

from services.feed.replay import JournalSource
from services.feed.synthetic import SyntheticSession
from tests.feed.helpers import RunningFeed

DAY1 = 1_795_185_000_000_000_000  # 2026-11-20 09:30 New York
DAY2 = DAY1 + 86_400 * 10**9


def _batch(ts: int, n: int = 3) -> list:
    return [Trade(sym="SPY", price=590, size=100, ts=ts + i, seq=i + 1) for i in range(n)] + [
        Quote(sym="SPY", bid=590, ask=590.01, ts=ts + n), IndexValue(sym="I:SPX", value=5900, ts=ts + n)]


def test_round_trip_day_files_and_filters(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=0.05)
    w.append(_batch(DAY1))
    w.append(_batch(DAY1 + 10**9))
    w.append(_batch(DAY2))
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-20.ticks", "2026-11-21.ticks"]
    batches = list(iter_batches(tmp_path))
    assert batches == [_batch(DAY1), _batch(DAY1 + 10**9), _batch(DAY2)]
    only = list(iter_events(tmp_path, start_ns=DAY1 + 10**9, end_ns=DAY2, symbols=["I:SPX"]))
    assert [(e.sym, e.ts) for e in only] == [("I:SPX", DAY1 + 10**9 + 3)]
    assert w.written == 15 and w.dropped == 0


def test_flushes_on_its_own_within_the_interval(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=0.1)
    try:
        w.append(_batch(DAY1))
        # no close, no explicit flush: the writer thread hands it to the OS within an interval
        eventually(lambda: len(list(iter_events(tmp_path))) == 5, 2, what="journal flushed by its thread")
    finally:
        w.close()


def test_crash_loses_at_most_the_last_flush_interval(tmp_path):
    """A process killed hard keeps everything appended more than one flush interval before the kill."""
    code = textwrap.dedent(f"""
        import os, time
        from spx_common.journal import JournalWriter
        from spx_common.models import Trade
        w = JournalWriter({str(tmp_path)!r}, flush_interval_s=0.1)
        for i in range(50):
            w.append([Trade(sym="SPY", price=1, size=1, ts={DAY1} + i, seq=i + 1)])
        time.sleep(0.35)        # more than one flush interval
        w.append([Trade(sym="SPY", price=1, size=1, ts={DAY1} + 999, seq=999)])
        os._exit(9)             # crash: no close(), no final flush
    """)
    r = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert r.returncode == 9
    seqs = [e.seq for e in iter_events(tmp_path)]
    assert seqs[:50] == list(range(1, 51))  # all acknowledged-before-the-interval events survived
    assert seqs in (list(range(1, 51)), list(range(1, 51)) + [999])


def test_torn_tail_and_corrupt_record_are_skipped_and_counted(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=0.05)
    w.append(_batch(DAY1))
    w.append(_batch(DAY1 + 5))
    w.close()
    f = tmp_path / "2026-11-20.ticks"
    data = bytearray(f.read_bytes())
    data[len(recordlog.MAGIC) + 12] ^= 0x10  # a bit of the first record's payload flipped: its CRC fails
    data += b"\x10\x00\x00\x00abc"  # a torn record at the end (crash during a write)
    f.write_bytes(bytes(data))
    stats = ReadStats()
    evs = list(iter_events(tmp_path, stats=stats))
    assert evs == _batch(DAY1 + 5)
    assert (stats.corrupt, stats.torn, stats.records) == (1, 1, 1)


def _legacy(*payloads: bytes) -> bytes:
    """Records as the journal wrote them before the record log: ``<u32 LE length><msgpack>``."""
    return b"".join(len(p).to_bytes(4, "little") + p for p in payloads)


def test_a_day_file_of_the_earlier_framing_is_read_and_never_appended_to(tmp_path):
    """A trader upgrading mid-day: the day's journal written by the previous version is still read (its
    torn tail and an undecodable record counted as before), and the new writer starts the next part."""
    enc = msgspec.msgpack.encode
    f = tmp_path / "2026-11-20.ticks"
    f.write_bytes(_legacy(enc(_batch(DAY1)), b"\xc1\xc1", enc(_batch(DAY1 + 5))) + b"\x10\x00\x00\x00abc")
    stats = ReadStats()
    assert list(iter_events(tmp_path, stats=stats)) == _batch(DAY1) + _batch(DAY1 + 5)
    assert (stats.corrupt, stats.torn, stats.records) == (1, 1, 2)
    w = JournalWriter(tmp_path, flush_interval_s=10)
    w.append(_batch(DAY1 + 10))
    w.close()
    assert [p.name for p in journal.journal_files(tmp_path)] == ["2026-11-20.ticks", "2026-11-20.001.ticks"]
    assert not recordlog.is_legacy(tmp_path / "2026-11-20.001.ticks")
    assert list(iter_events(tmp_path)) == _batch(DAY1) + _batch(DAY1 + 5) + _batch(DAY1 + 10)
    tail = journal.read_journal_tail(tmp_path, journal.trading_date(DAY1))
    assert tail.events == _batch(DAY1) + _batch(DAY1 + 5) + _batch(DAY1 + 10) and tail.torn == 1
    size = sum(p.stat().st_size for p in journal.journal_files(tmp_path))
    part = journal.read_journal_tail(tmp_path, journal.trading_date(DAY1), max_bytes=size - 10)
    assert part.resynced and part.events[-5:] == _batch(DAY1 + 10)  # the old part entered mid-file


def test_side_documents_of_the_earlier_framing_are_migrated_once(tmp_path):
    enc = msgspec.msgpack.encode
    f = tmp_path / "2026-11-20.chain.docs"
    f.write_bytes(_legacy(enc({"ts": DAY1, "root": "SPXW"})))
    assert [d["ts"] for d in journal.iter_docs(tmp_path, "chain")] == [DAY1]
    w = JournalWriter(tmp_path, flush_interval_s=10)
    w.append_doc("chain", {"ts": DAY1 + 5, "root": "SPXW"})
    w.close()
    assert not recordlog.is_legacy(f)
    assert [d["ts"] for d in journal.iter_docs(tmp_path, "chain")] == [DAY1, DAY1 + 5]


def test_bounded_queue_counts_drops_and_size_rotation(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=10, max_pending=6, max_file_bytes=200)
    assert w.append(_batch(DAY1))  # 5 events
    assert not w.append(_batch(DAY1 + 1))  # would exceed 6 pending: refused, counted
    assert w.dropped == 5
    w.flush()
    for i in range(5):
        w.append(_batch(DAY1 + 10 + i))
        w.flush()
    w.close()
    files = journal.journal_files(tmp_path)
    assert len(files) > 1 and files[0].name == "2026-11-20.ticks" and files[1].name == "2026-11-20.001.ticks"
    assert len(list(iter_events(tmp_path))) == 30


def test_feed_journal_then_replay_from_journal_publishes_the_same_frames(run_dir, tmp_path):
    from services.feed.replay import SyntheticSource

    src = SyntheticSource(SyntheticSession(seed=9, duration_s=15))
    with RunningFeed(run_dir, replay_source=src, replay_speed="max", journal="on", journal_flush_s=0.05,
                     replay_start_delay_s=0.2) as feed:
        eventually(lambda: feed.service.replay_done, 20)
        eventually(lambda: len(feed.events()) == feed.service._published, 10)
        first = feed.events()
        chains = feed.bodies("chain.SPXW")
    eventually(lambda: list(iter_events(run_dir / "journal")), 5)
    recorded = list(iter_events(run_dir / "journal"))
    assert recorded == first or sorted(recorded, key=lambda e: (e.ts, e.sym)) == sorted(first, key=lambda e: (e.ts, e.sym))
    jsrc = JournalSource(run_dir / "journal")
    assert jsrc.start_ns == recorded[0].ts and jsrc.end_ns == recorded[-1].ts
    run2 = tmp_path / "r2"
    run2.mkdir()
    with RunningFeed(run2, replay_source=jsrc, replay_speed="max", replay_start_delay_s=0.2) as feed2:
        eventually(lambda: feed2.service.replay_done, 20)
        eventually(lambda: len(feed2.events()) == feed2.service._published, 10)
        again = feed2.events()
        eventually(lambda: len(feed2.bodies("chain.SPXW")) == len(chains), 5, what="chain documents replayed")
        chains2 = feed2.bodies("chain.SPXW")
    assert sorted(again, key=lambda e: (e.ts, e.sym)) == sorted(first, key=lambda e: (e.ts, e.sym))
    assert len(chains) >= 3 and chains2 == chains  # the journal keeps the chain too, replayed at its times


def test_side_documents_round_trip_and_are_validated(tmp_path):
    w = JournalWriter(tmp_path, flush_interval_s=0.05)
    w.append_doc("chain", {"ts": DAY1, "root": "SPXW", "contracts": [{"strike": 5900.0}]})
    w.append_doc("chain", {"ts": DAY1 + 5, "root": "SPXW", "contracts": []})
    import pytest

    with pytest.raises(ValueError):
        w.append_doc("chain", {"root": "no ts"})
    with pytest.raises(ValueError):
        w.append_doc("../x", {"ts": 1})
    w.close()
    assert [d["ts"] for d in journal.iter_docs(tmp_path, "chain")] == [DAY1, DAY1 + 5]
    assert (tmp_path / "2026-11-20.chain.docs").exists()
    assert list(iter_events(tmp_path)) == []  # docs never show up as events


def test_write_failure_is_counted_not_raised(tmp_path):
    (tmp_path / "2026-11-20.ticks").mkdir()  # the day file cannot be opened: like a full or broken disk
    w = JournalWriter(tmp_path, flush_interval_s=0.05)
    w.append(_batch(DAY1))
    w.close()
    assert w.errors >= 1 and "IsADirectoryError" in w.last_error and w.written == 0
