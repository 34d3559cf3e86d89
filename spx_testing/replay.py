"""A real aggregator and detector (and optionally the selector, broker and coach) fed by ``spx replay``, the
detector's transitions (and any other frames asked for) collected from the bus: the rig of the event-time test
(tests/mesh/test_mesh_event_time.py) and of the replay benchmark (benchmarks/replay_max.py).

    with ReplayRig(run_dir, env) as rig:          # both processes up, the detector hears the aggregator
        feed = rig.replay(files, "max")          # the feed process, to its exit (bounded)
        eventually(rig.released, 60)             # the aligner released everything after the final watermark
        rig.transitions                          # [(setup_id, to_state, ts), ...] in publish order

    with ReplayRig(run_dir, env, services=MESH, collect={"broker": ["order.", "fill."]}) as rig:
        rig.replay([journal_dir], "20", source="journal")
        eventually(lambda: rig.released("coach"), 90)  # the last of the chain has every input's end
        rig.frames["order."]                     # bodies in publish order, by collected prefix
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import zmq

from spx_common.align import FINAL_NS
from spx_common.bus import RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_testing.process import ROOT, Processes, ProcessFailed


class ReplayRig:
    """``python -m services.aggregator`` and ``services.detector`` in ``run_dir`` with ``env`` (on top of this
    process's environment), a subscriber collecting ``setup.transition`` in a thread, and a request client
    on the detector. Leaving the block stops everything (see :class:`~spx_testing.process.Processes`)."""

    def __init__(self, run_dir: str | os.PathLike, env: Mapping[str, str], *, ready_timeout_s: float = 60.0,
                 rpc_timeout_s: float = 1.0, services: Sequence[str] = ("aggregator", "detector"),
                 collect: Mapping[str, Sequence[str]] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.env = {"SPX_RUNTIME_RUN_DIR": str(run_dir), **env}
        self.ready_timeout_s = ready_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.services = tuple(services)
        #: publisher -> topic prefixes collected (bodies in ``frames[prefix]``); the detector's transitions always
        self.collect = {"detector": ["setup.transition"], **{k: list(v) for k, v in (collect or {}).items()}}
        self.transitions: list[tuple[str, str, int]] = []
        self.frames: dict[str, list] = {p: [] for v in self.collect.values() for p in v}
        self._stop = threading.Event()

    def __enter__(self) -> ReplayRig:
        rt, bus = RuntimeConfig(run_dir=self.run_dir), BusConfig()
        self.ctx = zmq.Context()
        self.procs = Processes()
        self.rpcs = {n: RpcClient(self.ctx, bus.rep_endpoint(n, rt), timeout_s=self.rpc_timeout_s, retries=0)
                     for n in self.services}
        self.det = self.rpcs["detector"]
        self.sub = Subscriber(self.ctx, [bus.pub_endpoint(n, rt) for n in self.collect],
                              [p for v in self.collect.values() for p in v], heartbeats=True)
        self._reader = threading.Thread(target=self._read, name="transitions", daemon=True)
        try:
            procs = {n: self.procs.service(n, env=self.env) for n in self.services}
            detector = procs["detector"]
            detector.wait_ready(lambda: (st := self.status()) and "aggregator" in st["peers"], self.ready_timeout_s,
                                what="the detector hears the aggregator")
            for name, proc in procs.items():  # each hears every publisher it aligns (the chain is complete)
                peers = [p for p in ("detector", "selector", "broker") if p in self.services and p != name and
                         _reads(name, p)]
                proc.wait_ready(lambda name=name, peers=peers: (st := self.status(name)) and
                                all(p in st["peers"] for p in peers), self.ready_timeout_s,
                                what=f"{name} hears {peers}")
            heard: set[str] = set()
            detector.wait_ready(lambda: (f := self.sub.recv(0.2)) is not None and heard.add(f.src) is None and
                                heard >= set(self.collect), 20, what="our subscriber hears every collected process")
            for p in self.procs.procs:
                if not p.alive():
                    raise ProcessFailed(p, "exited during the start")
            self._reader.start()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            f = self.sub.recv(0.1)
            if f is None:
                continue
            if f.topic == "setup.transition":
                tr = f.body()
                self.transitions.append((tr.setup_id, tr.to_state, tr.ts))
            for prefix in self.collect.get(f.src, ()):
                if f.topic.startswith(prefix):
                    self.frames[prefix].append(f.body())
                    break

    def status(self, name: str = "detector") -> dict | None:
        """A process's ``status`` (None while it does not answer)."""
        try:
            return self.rpcs[name].call("status")
        except RpcError:
            return None

    def released(self, name: str = "detector") -> bool:
        """Every input ``name`` aligns announced its end (the replay's final watermark went through every
        process before it) and it holds nothing back."""
        st = self.status(name)
        al = st and st.get("align")
        if not al:
            return False
        waited = [s for s in al["streams"].values() if s.get("watermark") is not None]
        return bool(waited) and all(s["watermark"] == FINAL_NS for s in waited) and al["held"] == 0

    def replay(self, paths: Sequence[str | os.PathLike], speed: str, timeout_s: float = 240.0, *,
               source: str = "flatfile") -> subprocess.CompletedProcess:
        """``spx replay SOURCE PATHS --speed SPEED --no-progress`` (the feed), to its exit; bounded."""
        return subprocess.run([sys.executable, "-m", "services.cli.main", "replay", source, *map(str, paths),
                               "--speed", speed, "--no-progress"], env={**os.environ, **self.env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        try:
            self.procs.__exit__(exc_type, exc, tb)
        finally:
            if self._reader.is_alive():
                self._reader.join(2)
            for r in self.rpcs.values():
                r.close()
            self.sub.close()
            self.ctx.destroy(linger=0)


def _reads(consumer: str, publisher: str) -> bool:
    """``consumer`` subscribes to ``publisher`` in the mesh (README table): what the rig waits for at start."""
    return publisher in {"selector": ("detector",), "broker": ("detector", "selector"),
                         "coach": ("detector", "selector", "broker")}.get(consumer, ())
