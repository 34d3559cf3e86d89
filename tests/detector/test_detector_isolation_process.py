"""A real detector process with hostile plugin packages installed through entry points (issue 24).

The detector runs ``good`` (one candidate per bar), ``sleeper`` (sleeps 30 s a call), ``looper`` (an
infinite loop that swallows exceptions) and ``segfault`` (a NULL read), each package in its own worker.
Fed closed bars and a print below each setup's stop over the bus, it keeps its heartbeat (no gap near
the hang budget's order), keeps forming ``good``'s setups, and reports the hostile ones disabled with
their reasons and next probe over ``plugins``; stopping it leaves no worker behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import MicroBar, Trade
from spx_testing import ServiceProcess
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T0 = 1_795_185_000 * S
PLUGINS = ["good", "sleeper", "looper", "segfault"]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_hostile_plugins_never_stop_the_heartbeat_or_the_good_plugin(run_dir, tmp_path):
    dist = tmp_path / "hostile_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[spx.detectors]\n" + "".join(f"{n} = tests.detector.hostile.{n}\n" for n in PLUGINS))
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "DATABASE_URL": f"sqlite:///{run_dir}/t.db",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "SPX_DETECTOR_ENTRY_POINTS_ENABLED": ",".join(PLUGINS), "SPX_DETECTOR_SYMBOLS": "SPY",
           "SPX_DETECTOR_CONFIRM_MS": "0", "SPX_DETECTOR_WARMUP": "false", "SPX_DETECTOR_RESTORE_SETUPS": "false",
           "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1", "SPX_DETECTOR_FAMILY_CAP": "100",
           "SPX_DETECTOR_HANG_MS": "700", "SPX_DETECTOR_STOP_MS": "150", "SPX_DETECTOR_MAX_SLOW": "2"}
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    agg = Publisher(ctx, bus.pub_endpoint("aggregator", rt, bind=True), "aggregator", linger_ms=0)
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    watch = Subscriber(ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition", "hb.detector"], heartbeats=True)
    det = RpcClient(ctx, bus.rep_endpoint("detector", rt), timeout_s=1.0, retries=0)
    proc = ServiceProcess.service("detector", env=env, stop_timeout_s=15)
    workers: list[int] = []
    try:
        with proc:
            def up():
                try:
                    st = det.call("status")
                except RpcError:
                    return False
                agg.heartbeat(T0)
                feed.heartbeat(T0)
                return {"aggregator", "feed"} <= set(st["peers"])

            proc.wait_ready(up, 30, what="detector up, its workers loaded, subscribed")
            doc = det.call("plugins")
            assert sorted(p["name"] for p in doc["plugins"]) == sorted(PLUGINS), doc
            workers = _children(proc.pid)
            assert len(workers) == 4  # one worker per plugin package

            beats: list[float] = []
            formed: list[int] = []
            eventually(lambda: any(f.topic == "hb.detector" for f in iter(lambda: watch.recv(0.1), None)), 10,
                       what="our SUB hears the detector")
            for i in range(40):
                c = 100.0 + i / 10
                t = T0 + i * S
                agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=t, open=c, high=c + 0.05,
                                                          low=c - 0.05, close=c, volume=100.0, trades=1, closed=True), t)
                feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=c - 5, size=1.0, ts=t + S // 2)], t + S // 2)
                end = time.monotonic() + 0.15
                while (left := end - time.monotonic()) > 0:
                    f = watch.recv(left)
                    if f is None:
                        break
                    if f.topic == "hb.detector":
                        beats.append(time.monotonic())
                    else:
                        tr = f.body()
                        if tr.detector == "good" and tr.to_state == "forming":
                            formed.append(tr.ts)
            status = {p["name"]: p for p in det.call("plugins")["plugins"]}
            assert status["good"]["status"] == "active", status["good"]
            # good formed a setup on (nearly) every bar: each print below its stop resolves it before the next bar
            assert len(formed) >= 30, (len(formed), status)
            for name, why in (("sleeper", "no answer in 700 ms"), ("segfault", "signal 11"),
                              ("looper", "stopped after 150 ms of CPU")):
                assert status[name]["status"] == "disabled" and why in status[name]["reason"], status[name]
                assert status[name]["retry_in_s"] is not None
            gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
            assert beats and max(gaps) < 3.0, gaps  # 1 s heartbeats; one hang holds the loop <= hang_ms
    finally:
        for c in (agg, feed, watch, det):
            c.close()
        ctx.term()
    for pid in workers:  # no worker outlives the detector
        eventually(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split()[2] == "Z", 5, what=f"worker {pid} gone")
