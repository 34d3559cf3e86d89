"""Replay throughput at ``--speed max`` through the real feed, aggregator and detector, and whether the
transitions are the same run after run (the issue-19 reproduction).

    python benchmarks/replay_max.py /work/shared/data/real/2013-10-07-{trades,quotes}-SPY.csv.gz
    python benchmarks/replay_max.py FILES... --runs 3 --env SPX_BUS_ALIGN=false     # without alignment

Each run starts a fresh aggregator and detector (``python -m services.<name>``, private run directory, SQLite),
replays the files with ``spx replay flatfile --speed max`` and waits until the detector has handled everything
(its aligner released all after the feed's final watermark; without alignment: until its transition count
stops moving for 5 s). Printed per run: events, replay wall time and events/s (the feed process, start to
exit), time until the detector was done, setups and transitions, setups with a transition stamped before their
own ``forming``, and a digest of the transitions per setup (equal digests: the same transitions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spx_testing.replay import ReplayRig  # noqa: E402


def one_run(files: list[str], env_extra: dict[str, str], symbols: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="spx-rm-", dir="/tmp"))
    env = {"DATABASE_URL": f"sqlite:///{run_dir}/db.sqlite",
           "SPX_DETECTOR_SYMBOLS": symbols, "SPX_DETECTOR_WARMUP": "false", "SPX_DETECTOR_BUDGET_MS": "60000",
           "SPX_FEED_REPLAY_START_DELAY_S": "1.5", **env_extra}
    try:
        with ReplayRig(run_dir, env, rpc_timeout_s=2.0) as rig:
            t0 = time.monotonic()
            feed = rig.replay(files, "max", timeout_s=1800)
            t_feed = time.monotonic() - t0 - 1.5  # the start delay is not replay time
            last, stable_since = -1, time.monotonic()
            while time.monotonic() - t0 < 1800:
                if rig.released():
                    break
                if (rig.status() or {}).get("align") is None:  # without alignment: until the count stops moving
                    if len(rig.transitions) != last:
                        last, stable_since = len(rig.transitions), time.monotonic()
                    elif time.monotonic() - stable_since > 5:
                        break
                time.sleep(0.1)
            t_done = time.monotonic() - t0 - 1.5
            time.sleep(0.5)
            st = rig.status() or {}
            got = list(rig.transitions)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    events = int(feed.stdout.split("replayed ", 1)[1].split(" ", 1)[0].replace(",", "")) if "replayed " in feed.stdout else 0
    per: dict[str, list] = {}
    for sid, state, ts in got:
        per.setdefault(sid, []).append((state, ts))
    inverted = sum(1 for seq in per.values() if seq[0][0] != "forming" or any(ts < seq[0][1] for _, ts in seq))
    digest = hashlib.sha256(json.dumps(sorted((k, v) for k, v in per.items())).encode()).hexdigest()[:12]
    return {"events": events, "replay_s": round(t_feed, 2), "events_per_s": round(events / t_feed) if t_feed > 0 else None,
            "detector_done_s": round(t_done, 2), "setups": len(per), "transitions": len(got),
            "inverted_setups": inverted, "digest": digest, "align": st.get("align"), "feed_rc": feed.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="flat files (trades and quotes of one day)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--symbols", default="SPY", help="detector symbols (default SPY)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results = []
    for i in range(args.runs):
        r = one_run(args.files, env, args.symbols)
        results.append(r)
        al = r["align"] or {}
        print(f"run {i + 1}: {r['events']:,} events in {r['replay_s']} s ({r['events_per_s']:,} events/s), detector done "
              f"after {r['detector_done_s']} s; {r['setups']} setups, {r['transitions']} transitions, "
              f"{r['inverted_setups']} with a transition before forming; digest {r['digest']}; "
              f"aligned: late {al.get('late')}, forced {al.get('forced')}; load average {os.getloadavg()[0]:.2f}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
