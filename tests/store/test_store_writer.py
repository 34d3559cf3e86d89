"""The recorder's writer on a real database: overflow to the spool, bad records isolated, torn spool tail."""

from __future__ import annotations

import msgspec

from spx_common import models as m
from spx_common import recordlog
from spx_common.metrics import Registry
from services.recorder.spool import Spool
from services.recorder.writer import Writer
from tests.conftest import eventually


def order(i: int) -> dict:
    return msgspec.to_builtins(m.Order(order_id=f"o{i}", user="u", option_symbol="X", side="buy_to_open",
                                       quantity=1, type="market", ts=i))


def test_full_queue_overflows_to_spool_then_everything_lands_once(store, run_dir):
    reg = Registry()
    w = Writer(store, Spool(run_dir / "spool.bin", 10_000_000), reg, batch_size=50, queue_max=100,
               flush_s=0.01, retry_s=0.05)
    for i in range(1000):  # writer not started yet: 100 queued, 900 overflow to the spool, none blocks
        w.submit("order", order(i))
    assert w.pending() == 100 and w.spool.size() > 0
    w.start()
    eventually(lambda: store.count("orders") == 1000 and not w.spool, 20, 0.05, "all written")
    for i in range(0, 1000, 20):  # replays (50, within the queue bound) change nothing
        w.submit("order", order(i))
    w.stop(5)
    assert store.count("orders") == 1000
    assert reg.summary().get("recorder_rows_spooled_total") == 900


def test_bad_record_does_not_sink_its_batch(store, run_dir):
    reg = Registry()
    w = Writer(store, Spool(run_dir / "spool.bin", 10_000_000), reg, batch_size=50, flush_s=0.01)
    for i in range(5):
        w.submit("order", order(i))
    w.submit("order", {"order_id": "bad", "quantity": -1})
    w.submit("snapshot", {"user": "u"})
    for i in range(5, 10):
        w.submit("order", order(i))
    w.start()
    w.stop(5)
    assert store.count("orders") == 10 and store.count("portfolio_snapshots") == 0
    assert 'recorder_rows_dropped_total{reason="invalid"} 2' in reg.render()


def test_spool_ignores_a_torn_tail(run_dir):
    sp = Spool(run_dir / "s.bin", 1_000_000)
    sp.append([("order", {"a": 1}), ("fill", {"b": 2})])
    with sp.path.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")
    assert [r for chunk in sp.read(1) for r in chunk] == [("order", {"a": 1}), ("fill", {"b": 2})]
    reopened = Spool(run_dir / "s.bin", 1_000_000)  # the next process start cuts the torn record
    reopened.append([("order", {"c": 3})])
    assert [r for chunk in reopened.read(10) for r in chunk] == [("order", {"a": 1}), ("fill", {"b": 2}),
                                                                 ("order", {"c": 3})]


def test_a_spool_of_the_earlier_framing_is_migrated_once_and_kept(run_dir):
    """A recorder upgraded while its spool holds an outage's records: the old big-endian framing is read,
    rewritten once in the record log's (its torn tail dropped), and nothing is lost."""
    old = [("order", {"a": 1}), ("fill", {"b": 2}, "tradier", "r1")]
    blob = b"".join(len(p).to_bytes(4, "big") + p for p in map(msgspec.msgpack.encode, old))
    (run_dir / "s.bin").write_bytes(blob + b"\x00\x00\x01\x00partial")
    sp = Spool(run_dir / "s.bin", 1_000_000)
    assert sp.migrated == 1 and sp.recovered.torn == 1 and not recordlog.is_legacy(sp.path)
    sp.append([("order", {"c": 3})])
    assert [r for c in Spool(run_dir / "s.bin", 1_000_000).read(10) for r in c] == [
        ("order", {"a": 1}), ("fill", {"b": 2}, "tradier", "r1"), ("order", {"c": 3})]


def test_records_appended_during_a_replay_survive_it(run_dir):
    sp = Spool(run_dir / "s.bin", 1_000_000)
    sp.append([("order", {"n": 1})])
    taking = sp.take()
    assert taking == sp.replaying and not sp.path.exists()
    sp.append([("order", {"n": 2})], fsync=False)  # e.g. a queue overflow while the writer replays
    assert sp.take() == sp.replaying  # an unfinished replay comes first
    assert [r for c in sp.read(10, taking) for r in c] == [("order", {"n": 1})]
    sp.done(taking)
    nxt = sp.take()
    assert [r for c in sp.read(10, nxt) for r in c] == [("order", {"n": 2})]
    sp.done(nxt)
    assert sp.take() is None and sp.size() == 0 and not sp


def test_stop_moves_what_the_writer_cannot_reach_to_the_spool(store, run_dir):
    reg = Registry()
    w = Writer(store, Spool(run_dir / "spool.bin", 10_000_000), reg, batch_size=50)
    for i in range(30):  # never started: as if the writer thread were stuck in a database call
        w.submit("order", order(i))
    w.stop(0.1)
    assert w.pending() == 0 and reg.summary().get("recorder_rows_spooled_total") == 30
    w2 = Writer(store, Spool(run_dir / "spool.bin", 10_000_000), Registry(), batch_size=50, retry_s=0.05)
    w2.start()  # the next process replays them
    eventually(lambda: store.count("orders") == 30 and not w2.spool, 10, 0.05, "replayed after restart")
    w2.stop(5)
