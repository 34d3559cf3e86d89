"""One harness for "a real service process with fake peers" tests.

``service_process(run_dir, "coach", peers=("detector", "broker"), topics=["coach."], env={...})``
binds a fake publisher at each peer's endpoint, starts ``python -m services.<name>``, waits until
it answers ``ping``, heartbeats, and sees every fake peer (slow joiners), and yields
``(pubs, sub, rpc)``. On exit the process must stop cleanly on SIGTERM (exit 0). The process runs under
:class:`spx_testing.ServiceProcess`: its output is captured live and shown with the first failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_testing import ServiceProcess


@contextlib.contextmanager
def service_process(run_dir, name: str, *, peers=(), topics=(), env=None, heartbeat_ns: int = 0
                    ) -> Iterator[tuple[dict[str, Publisher], Subscriber, RpcClient]]:
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    pubs = {s: Publisher(ctx, bus.pub_endpoint(s, rt, bind=True), s, linger_ms=0) for s in peers}
    rpc = RpcClient(ctx, bus.rep_endpoint(name, rt), timeout_s=1.0, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint(name, rt)], list(topics), heartbeats=True)

    def ping():
        try:
            return rpc.call("ping")
        except RpcError:
            return None

    try:
        with ServiceProcess.service(name, run_dir=run_dir, env=env) as proc:
            proc.wait_ready(ping, 20, what=f"{name} answers ping")
            proc.wait_ready(lambda: sub.recv(0.2) is not None, 10, what=f"{name} heartbeat")
            for peer, pub in pubs.items():  # slow joiner: until the service sees each fake publisher
                proc.wait_ready(lambda p=pub, n=peer: p.heartbeat(heartbeat_ns) or n in rpc.call("status")["peers"],
                                10, what=f"{name} hears {peer}")
            yield pubs, sub, rpc
    finally:
        rpc.close()
        sub.close()
        for p in pubs.values():
            p.close()
        ctx.destroy(linger=0)
