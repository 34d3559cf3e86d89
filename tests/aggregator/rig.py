"""A real aggregator process with a feed publisher in front of it (the tests' side of the bus)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from collections.abc import Iterator

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from tests.conftest import eventually


@contextmanager
def aggregator_process(run_dir, topics: list[str], env: dict[str, str] | None = None
                       ) -> Iterator[tuple[Publisher, RpcClient, Subscriber]]:
    """Start ``python -m services.aggregator`` in ``run_dir``; yield (feed publisher, request client,
    subscriber to ``topics`` of the aggregator) once the aggregator hears the feed; stop it all after."""
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed")
    proc = subprocess.Popen([sys.executable, "-m", "services.aggregator"], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint("aggregator", rt)], topics)
    try:
        def feed_seen():
            feed.heartbeat(0)
            try:
                return client.call("status")["peers"].get("feed")
            except RpcError:
                return None

        eventually(feed_seen, 20, interval_s=0.2, what="the aggregator hears the feed")
        yield feed, client, sub
    finally:
        proc.terminate()
        proc.wait(10)
        client.close()
        sub.close()
        feed.close()
        ctx.destroy(linger=0)
