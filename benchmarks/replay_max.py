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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from spx_common.align import FINAL_NS  # noqa: E402
from spx_common.bus import RpcClient, RpcError, Subscriber  # noqa: E402
from spx_common.config import BusConfig, RuntimeConfig  # noqa: E402


def one_run(files: list[str], env_extra: dict[str, str], symbols: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="spx-rm-", dir="/tmp"))
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "DATABASE_URL": f"sqlite:///{run_dir}/db.sqlite",
           "SPX_DETECTOR_SYMBOLS": symbols, "SPX_DETECTOR_WARMUP": "false", "SPX_DETECTOR_BUDGET_MS": "60000",
           "SPX_FEED_REPLAY_START_DELAY_S": "1.5", **env_extra}
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    procs = {n: subprocess.Popen([sys.executable, "-m", f"services.{n}"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in ("aggregator", "detector")}
    det = RpcClient(ctx, bus.rep_endpoint("detector", rt), timeout_s=2.0, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition"], heartbeats=True)
    got: list[tuple[str, str, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            f = sub.recv(0.1)
            if f is not None and f.topic == "setup.transition":
                tr = f.body()
                got.append((tr.setup_id, tr.to_state, tr.ts))

    def status():
        try:
            return det.call("status")
        except RpcError:
            return None

    reader = threading.Thread(target=read, daemon=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((st := status()) and "aggregator" in st["peers"]):
            time.sleep(0.2)
        while sub.recv(0.2) is None and time.monotonic() < deadline:
            pass
        reader.start()
        t0 = time.monotonic()
        feed = subprocess.run([sys.executable, "-m", "services.cli.main", "replay", "flatfile", *files, "--speed",
                               "max", "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True)
        t_feed = time.monotonic() - t0 - 1.5  # the start delay is not replay time
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - t0 < 1800:
            st = status() or {}
            al = st.get("align")
            if al is not None:
                if al["streams"].get("aggregator", {}).get("watermark") == FINAL_NS and al["held"] == 0:
                    break
            elif len(got) != last:
                last, stable_since = len(got), time.monotonic()
            elif time.monotonic() - stable_since > 5:
                break
            time.sleep(0.1)
        t_done = time.monotonic() - t0 - 1.5
        time.sleep(0.5)
        st = status() or {}
    finally:
        stop.set()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        reader.join(2)
        det.close()
        sub.close()
        ctx.destroy(linger=0)
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
