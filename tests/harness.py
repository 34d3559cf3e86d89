"""One harness for "a real service process with fake peers" tests.

``service_process(run_dir, "coach", peers=("detector", "broker"), topics=["coach."], env={...})``
binds a fake publisher at each peer's endpoint, starts ``python -m services.<name>``, waits until
it answers ``ping``, heartbeats, and sees every fake peer (slow joiners), and yields
``(pubs, sub, rpc)``. On exit the process must stop cleanly on SIGTERM (exit 0).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import eventually


@contextlib.contextmanager
def service_process(run_dir, name: str, *, peers=(), topics=(), env=None, heartbeat_ns: int = 0
                    ) -> Iterator[tuple[dict[str, Publisher], Subscriber, RpcClient]]:
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    pubs = {s: Publisher(ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0) for s in peers}
    proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"],
                            env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rpc = RpcClient(ctx, bus.rep_endpoint(name, rt), timeout_s=1.0, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint(name, rt)], list(topics), heartbeats=True)

    def ping():
        try:
            return rpc.call("ping")
        except RpcError:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]

    try:
        eventually(ping, 20, what=f"{name} answers ping")
        eventually(lambda: sub.recv(0.2) is not None, 10, what=f"{name} heartbeat")
        for peer, pub in pubs.items():  # slow joiner: until the service sees each fake publisher
            eventually(lambda p=pub, n=peer: p.heartbeat(heartbeat_ns) or n in rpc.call("status")["peers"], 10)
        yield pubs, sub, rpc
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        rpc.close()
        sub.close()
        for p in pubs.values():
            p.close()
        ctx.destroy(linger=0)
