"""Store write throughput: the recorder's batched writer and bar upserts, on SQLite and PostgreSQL.

    python benchmarks/store.py [--n 20000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints records/s for (1) the recorder writer draining a mixed stream of transitions, orders,
fills, positions and snapshots from its queue into the database (batch 500, one transaction
each), (2) a replay of the same stream (idempotent no-op writes), (3) bar upserts as backfill
does them and bar reads for replay, and (4) the outage spool: append and read back.  PostgreSQL runs in a private schema
dropped afterwards; it is skipped when unreachable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

from spx_common import models as m
from spx_common.metrics import Registry
from spx_common.store import open_store
from services.recorder.spool import Spool
from services.recorder.writer import Writer

T0 = 1_763_650_000_000_000_000


def stream(n: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    i = 0
    while len(out) < n:
        ts = T0 + i * 1_000_000
        out += [
            ("transition", msgspec.to_builtins(m.SetupTransition(
                setup_id=f"s{i // 4}", detector="orb_v1", family="orb", sym="I:SPX", direction="long",
                to_state=("forming", "triggered", "target1_hit", "target2_hit")[i % 4], reason="r", ts=ts,
                price=5000.0 + i % 4, entry_low=4999.0, entry_high=5001.0, stop=4995.0))),
            ("order", msgspec.to_builtins(m.Order(order_id=f"o{i}", user="alice", option_symbol="X",
                                                  side="buy_to_open", quantity=1, type="limit", price=2.0, ts=ts))),
            ("fill", msgspec.to_builtins(m.Fill(order_id=f"o{i}", user="alice", option_symbol="X",
                                                side="buy_to_open", quantity=1, price=2.0, ts=ts, fill_id="f"))),
            ("position", msgspec.to_builtins(m.Position(user="alice", option_symbol=f"X{i % 50}", quantity=1,
                                                        avg_price=2.0, ts=ts))),
            ("snapshot", {"user": "alice", "ts": ts, "total_equity": 1e4 + i}),
        ]
        i += 1
    return out[:n]


def drain(store, records, run_dir: Path) -> float:
    w = Writer(store, Spool(run_dir / f"spool-{uuid.uuid4().hex}.bin", 10**9), Registry(), batch_size=500,
               queue_max=len(records) + 1, flush_s=0.01)
    for kind, body in records:
        w.submit(kind, body)
    t0 = time.perf_counter()
    w.start()
    w.stop(600)
    return time.perf_counter() - t0


def bench_engine(label: str, url: str, n: int, run_dir: Path) -> None:
    store = open_store(url)
    try:
        recs = stream(n)
        dt = drain(store, recs, run_dir)
        expect = sum(1 for k, _ in recs if k == "order")
        assert store.count("orders") == expect and store.count("fills") == expect, "not every record landed"
        print(f"{label:<11} recorder writer, new rows     {n / dt:>12,.0f} records/s  ({n:,} in {dt:.2f} s)")
        dt = drain(store, recs, run_dir)
        assert store.count("orders") == expect, "a replay duplicated rows"
        print(f"{label:<11} recorder writer, replayed     {n / dt:>12,.0f} records/s  (idempotent, no new rows)")
        bars = [m.MicroBar(sym="SPY", interval="1s", start_ns=T0 + i * 10**9, open=1, high=2, low=0.5, close=1.5,
                           volume=10, trades=3, vwap=1.2, source="backfill") for i in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, 5000):
            store.upsert_bars(bars[i:i + 5000])
        dt = time.perf_counter() - t0
        print(f"{label:<11} bar upsert (backfill)         {n / dt:>12,.0f} bars/s")
        t0 = time.perf_counter()
        back = store.bars("SPY", "1s")
        dt = time.perf_counter() - t0
        assert len(back) == n
        print(f"{label:<11} bar read as MicroBar (replay) {n / dt:>12,.0f} bars/s")
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="spx-bench-store-") as d:
        run_dir = Path(d)
        sp = Spool(run_dir / "spool.bin", 10**10)
        recs = stream(args.n)
        t0 = time.perf_counter()
        for i in range(0, len(recs), 500):
            sp.append(recs[i:i + 500])
        t1 = time.perf_counter()
        back = sum(len(c) for c in sp.read(500))
        t2 = time.perf_counter()
        assert back == len(recs)
        print(f"{'spool':<11} append (fsync per 500)         {len(recs) / (t1 - t0):>12,.0f} records/s")
        print(f"{'spool':<11} read back                     {len(recs) / (t2 - t1):>12,.0f} records/s")
        bench_engine("sqlite", f"sqlite:///{run_dir}/bench.sqlite3", args.n, run_dir)
        try:
            import psycopg

            schema = f"spx_bench_{uuid.uuid4().hex[:10]}"
            dsn = args.pg.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as c:
                c.execute(f'CREATE SCHEMA "{schema}"')
        except Exception as exc:  # noqa: BLE001
            print(f"postgresql  skipped: {exc}")
            return
        try:
            bench_engine("postgresql", f"{args.pg}?options=-csearch_path%3D{schema}", args.n, run_dir)
        finally:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
