"""A real aggregator process with a feed publisher in front of it (the tests' side of the bus)."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_testing import ServiceProcess


@contextmanager
def aggregator_process(run_dir, topics: list[str], env: dict[str, str] | None = None
                       ) -> Iterator[tuple[Publisher, RpcClient, Subscriber]]:
    """Start ``python -m services.aggregator`` in ``run_dir``; yield (feed publisher, request client,
    subscriber to ``topics`` of the aggregator) once the aggregator hears the feed; stop it all after."""
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed")
    client = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1, retries=0)
    sub = Subscriber(ctx, [bus.pub_endpoint("aggregator", rt)], topics)
    try:
        with ServiceProcess.service("aggregator", run_dir=run_dir, env=env) as proc:
            def feed_seen():
                feed.heartbeat(0)
                try:
                    return client.call("status")["peers"].get("feed")
                except RpcError:
                    return None

            proc.wait_ready(feed_seen, 20, interval_s=0.2, what="the aggregator hears the feed")
            yield feed, client, sub
    finally:
        client.close()
        sub.close()
        feed.close()
        ctx.destroy(linger=0)
