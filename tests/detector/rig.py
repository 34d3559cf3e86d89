"""Shared set-up of the restore/outbox/catch-up process tests: a real detector running the test plugin
(``tests.detector.restore_plugin``) and a real recorder, on one run directory and database, with stand-in
publishers for the detector's inputs and a subscriber on what it publishes."""

from __future__ import annotations

import os

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import Trade
from spx_common.store import open_store
from spx_testing import Processes, ServiceProcess, eventually

T0 = 1_795_185_000 * 1_000_000_000


def restore_env(run_dir, db_url: str) -> dict[str, str]:
    """Environment for detector and recorder processes: the test plugin only, SPY, no confirmation
    delay, no warm-up, no macro block."""
    return {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "DATABASE_URL": db_url,
            "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.detector.restore_plugin",
            "SPX_DETECTOR_SYMBOLS": "SPY", "SPX_DETECTOR_CONFIRM_MS": "0", "SPX_DETECTOR_WARMUP": "false",
            "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1"}


class DetectorRig:
    """``with DetectorRig(run_dir, db_url) as rig:`` binds the stand-ins (``rig.pubs``: aggregator and feed, plus
    ``extra``), subscribes ``rig.watch`` to the detector's ``topics`` and opens request clients on the detector
    (``rig.det``) and the recorder (``rig.rec``); the database is migrated before any process starts.
    ``rig.start(name)`` runs ``python -m services.<name>`` in the rig's :class:`~spx_testing.Processes` group
    (``rig.ps[name]`` is the current one); leaving the block stops them all, then closes the sockets."""

    def __init__(self, run_dir, db_url: str, *, topics=("setup.transition",), extra=()) -> None:
        rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
        self.env = restore_env(run_dir, db_url)
        self.ctx = zmq.Context()
        self.pubs = {s: Publisher(self.ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0)
                     for s in ("aggregator", "feed", *extra)}
        self.watch = Subscriber(self.ctx, [bus.pub_endpoint("detector", rt)], list(topics), heartbeats=True)
        self.det = RpcClient(self.ctx, bus.rep_endpoint("detector", rt), timeout_s=1.0, retries=0)
        self.rec = RpcClient(self.ctx, bus.rep_endpoint("recorder", rt), timeout_s=1.0, retries=0)
        self.ps = Processes()
        self.seen: list = []  # setup.transition bodies, in the order received
        self.other: list = []  # (topic, body) of the other watched topics
        self.sessions: set[str] = set()  # detector sessions heard (a new one per process)
        open_store(db_url).close()  # migrated before either process touches it

    def start(self, name: str) -> ServiceProcess:
        return self.ps.service(name, env=self.env)

    def drain(self) -> list:
        """Take what the detector published so far; ``rig.seen``."""
        while (f := self.watch.recv(0.05)) is not None:
            self.sessions.add(f.session)
            if f.topic == "setup.transition":
                self.seen.append(f.body())
            elif not f.topic.startswith("hb."):
                self.other.append((f.topic, f.body()))
        return self.seen

    def detector_up(self, timeout_s: float = 45.0) -> None:
        """Until the (new) detector hears the aggregator and the feed and our subscriber hears it."""
        def ok() -> bool:
            try:
                st = self.det.call("status")
            except RpcError:
                return False
            self.pubs["aggregator"].heartbeat(T0)
            self.pubs["feed"].heartbeat(T0)
            return {"aggregator", "feed"} <= set(st["peers"])

        old = set(self.sessions)
        self.ps["detector"].wait_ready(ok, timeout_s, "detector up and subscribed")  # plugin workers first
        eventually(lambda: (self.drain(), self.sessions - old)[1], 10, what="our subscriber hears the new detector")

    def ticks(self, prices, t: int, step: int = 1000, sym: str = "SPY") -> None:
        for i, p in enumerate(prices):
            self.pubs["feed"].publish(f"tick.{sym}", "ticks", [Trade(sym=sym, price=p, size=1, ts=t + i * step)],
                                      t + i * step)

    def __enter__(self) -> DetectorRig:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.ps.__exit__(exc_type, exc, tb)
        finally:
            for s in (self.watch, self.det, self.rec, *self.pubs.values()):
                s.close()
            self.ctx.destroy(linger=0)
