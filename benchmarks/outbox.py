"""Cost of the publisher's outbox journal (spx_common/outbox.py ``Outbox``) on the publish path.

    python benchmarks/outbox.py            # 20,000 setup transitions per variant, best of 5
    python benchmarks/outbox.py --n 5000 --fsync

Publishes ``SetupTransition`` frames (the detector's records, ~600 bytes) on a real PUB socket:

* ``plain``: not kept (a topic outside ``replayable``);
* ``ring``: kept in the in-memory replay ring only (the behaviour before the outbox);
* ``outbox``: kept and journalled before sending (the default);
* ``outbox+fsync`` (``--fsync``): also fsynced per record.

Times are process CPU time (all threads, so ZeroMQ's I/O thread too; the machine is shared).
Then the two rare costs: one compaction of a journal at its size bound, and the start-up load of a
full journal (the replay ring's 20,000 frames) into the ring. Prints microseconds per publish and
milliseconds for the rare operations, and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from spx_common.bus import Outbox, Publisher  # noqa: E402
from spx_common.models import SetupTransition  # noqa: E402

T0 = 1_795_185_000 * 10**9


def transition(i: int) -> SetupTransition:
    return SetupTransition(setup_id=f"{i:016x}", detector="orb_breakout", family="breakout", sym="SPY",
                           direction="long", from_state="ready", to_state="triggered",
                           reason="price beyond 601.25 for 3 ticks", ts=T0 + i, price=601.3, entry_low=600.9,
                           entry_high=601.25, stop=599.8, targets=[602.5, 603.75], confidence=0.71,
                           microstructure={"bid_ask_imbalance": 0.31, "aggressor_skew": 0.42,
                                           "quote_coverage_pct": 98.5, "avg_spread_bps": 0.17},
                           macro_alignment_score=0.6)


def run(variant: str, n: int, rounds: int, tmp: Path) -> dict:
    ctx = zmq.Context()
    per_us = []
    try:
        for r in range(rounds):
            pub = Publisher(ctx, f"ipc://{tmp}/bench-{variant}-{r}.pub", "detector", linger_ms=0)
            if variant != "plain":
                pub.keep(("setup.transition",), 20_000)
            if variant.startswith("outbox"):
                pub.attach_outbox(Outbox(tmp / f"{variant}-{r}.bin", fsync=variant.endswith("fsync")))
            bodies = [transition(i) for i in range(n)]
            topic = "setup.transition" if variant != "plain" else "setup.other"
            t0 = time.process_time()
            for i, b in enumerate(bodies):
                pub.publish(topic, "setup_transition", b, T0 + i)
            per_us.append((time.process_time() - t0) / n * 1e6)
            if pub.outbox is not None:
                pub.outbox.close()
            pub.close()
    finally:
        ctx.destroy(linger=0)
    return {"variant": variant, "n": n, "us_per_publish_best": round(min(per_us), 2),
            "us_per_publish_median": round(statistics.median(per_us), 2)}


def rare_costs(tmp: Path) -> dict:
    ctx = zmq.Context()
    try:
        pub = Publisher(ctx, f"ipc://{tmp}/bench-rare.pub", "detector", linger_ms=0)
        pub.keep(("setup.transition",), 20_000)
        pub.attach_outbox(Outbox(tmp / "rare.bin"))
        for i in range(20_000):
            pub.publish("setup.transition", "setup_transition", transition(i), T0 + i)
        size = pub.outbox.size
        t0 = time.perf_counter()
        pub.outbox.compact(list(pub.kept))
        compact_ms = (time.perf_counter() - t0) * 1000
        pub.outbox.close()
        pub.close()
        pub2 = Publisher(ctx, f"ipc://{tmp}/bench-rare2.pub", "detector", linger_ms=0)
        pub2.keep(("setup.transition",), 20_000)
        t0 = time.perf_counter()
        loaded = pub2.attach_outbox(Outbox(tmp / "rare.bin"))
        load_ms = (time.perf_counter() - t0) * 1000
        pub2.outbox.close()
        pub2.close()
    finally:
        ctx.destroy(linger=0)
    return {"journal_bytes_20000_frames": size, "compaction_ms_20000_frames": round(compact_ms, 1),
            "load_ms_20000_frames": round(load_ms, 1), "loaded": len(loaded)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="publishes per round")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per variant (best and median reported)")
    ap.add_argument("--fsync", action="store_true", help="also measure the fsync-per-record variant")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="spx-outbox-bench-") as d:
        tmp = Path(d)
        variants = ["plain", "ring", "outbox"] + (["outbox+fsync"] if args.fsync else [])
        rows = [run(v, args.n if v != "outbox+fsync" else min(args.n, 2000), args.rounds, tmp) for v in variants]
        rare = rare_costs(tmp)
    print(f"{'variant':<14} {'n':>7} {'CPU us/publish best':>20} {'median':>8}")
    for r in rows:
        print(f"{r['variant']:<14} {r['n']:>7} {r['us_per_publish_best']:>20.2f} {r['us_per_publish_median']:>8.2f}")
    ring = next(r for r in rows if r["variant"] == "ring")["us_per_publish_best"]
    box = next(r for r in rows if r["variant"] == "outbox")["us_per_publish_best"]
    print(f"outbox cost per kept frame: {box - ring:+.2f} us (best of {args.rounds})")
    print(f"journal of 20,000 transitions: {rare['journal_bytes_20000_frames']:,} bytes; one compaction "
          f"{rare['compaction_ms_20000_frames']} ms; start-up load {rare['load_ms_20000_frames']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"variants": rows, "rare": rare}, indent=2))


if __name__ == "__main__":
    main()
