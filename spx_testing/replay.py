"""A real aggregator and detector fed by ``spx replay flatfile``, the detector's transitions collected from
the bus: the rig of the event-time test (tests/mesh/test_mesh_event_time.py) and of the replay benchmark
(benchmarks/replay_max.py).

    with ReplayRig(run_dir, env) as rig:          # both processes up, the detector hears the aggregator
        feed = rig.replay(files, "max")          # the feed process, to its exit (bounded)
        eventually(rig.released, 60)             # the aligner released everything after the final watermark
        rig.transitions                          # [(setup_id, to_state, ts), ...] in publish order
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
                 rpc_timeout_s: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.env = {"SPX_RUNTIME_RUN_DIR": str(run_dir), **env}
        self.ready_timeout_s = ready_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.transitions: list[tuple[str, str, int]] = []
        self._stop = threading.Event()

    def __enter__(self) -> ReplayRig:
        rt, bus = RuntimeConfig(run_dir=self.run_dir), BusConfig()
        self.ctx = zmq.Context()
        self.procs = Processes()
        self.det = RpcClient(self.ctx, bus.rep_endpoint("detector", rt), timeout_s=self.rpc_timeout_s, retries=0)
        self.sub = Subscriber(self.ctx, [bus.pub_endpoint("detector", rt)], ["setup.transition"], heartbeats=True)
        self._reader = threading.Thread(target=self._read, name="transitions", daemon=True)
        try:
            self.procs.service("aggregator", env=self.env)
            detector = self.procs.service("detector", env=self.env)
            detector.wait_ready(lambda: (st := self.status()) and "aggregator" in st["peers"], self.ready_timeout_s,
                                what="the detector hears the aggregator")
            detector.wait_ready(lambda: self.sub.recv(0.2) is not None, 10, what="our subscriber hears the detector")
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
            if f is not None and f.topic == "setup.transition":
                tr = f.body()
                self.transitions.append((tr.setup_id, tr.to_state, tr.ts))

    def status(self) -> dict | None:
        """The detector's ``status`` (None while it does not answer)."""
        try:
            return self.det.call("status")
        except RpcError:
            return None

    def released(self) -> bool:
        """The feed's final watermark went through the aggregator and the detector holds nothing back."""
        st = self.status()
        al = st and st.get("align")
        return bool(al and al["streams"].get("aggregator", {}).get("watermark") == FINAL_NS and al["held"] == 0)

    def replay(self, files: Sequence[str | os.PathLike], speed: str, timeout_s: float = 240.0,
               ) -> subprocess.CompletedProcess:
        """``spx replay flatfile FILES --speed SPEED --no-progress`` (the feed), to its exit; bounded."""
        return subprocess.run([sys.executable, "-m", "services.cli.main", "replay", "flatfile", *map(str, files),
                               "--speed", speed, "--no-progress"], env={**os.environ, **self.env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        try:
            self.procs.__exit__(exc_type, exc, tb)
        finally:
            if self._reader.is_alive():
                self._reader.join(2)
            self.det.close()
            self.sub.close()
            self.ctx.destroy(linger=0)
