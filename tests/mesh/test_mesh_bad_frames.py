"""Every subscribing process of the mesh refuses bad frames, counts them by reason and keeps running.

Each service runs as its own OS process (``python -m services.<name>``) in a private run
directory; the test binds fake publishers at the endpoints of every peer it may subscribe to
and sends garbage, a wrong protocol version, a wrong envelope and bodies with missing fields on
every topic of docs/protocol.md, then checks the counters and that the process still answers.
"""

import re
import time

import msgspec
import pytest
import zmq

from spx_common.bus import Publisher, RpcClient, RpcError
from spx_common.config import SERVICES, BusConfig, RuntimeConfig
from spx_testing import ServiceProcess
from tests.conftest import eventually, free_port

TOPICS = {
    "tick.SPY": "ticks", "tick.O:SPXW261120C05900000": "ticks", "bar.1s.SPY": "bar", "bar.5s.I:SPX": "bar",
    "setup.transition": "setup_transition", "setup.candidate": "setup_candidate", "state.market": "doc",
    "chain.SPXW": "doc", "reco.x": "recommendation", "exit.x": "exit_advice", "order.default": "order",
    "fill.default": "fill", "position.default": "position", "portfolio.default": "doc", "alert.default": "doc",
    "coach.default": "coach", "status.feed": "feed_status", "block.detector": "block", "wm.feed": "watermark",
    "wm.aggregator": "watermark",
}


def _counter(metrics: str, reason: str) -> float:
    m = re.search(rf'bus_bad_frames_total\{{reason="{re.escape(reason)}"\}} ([0-9.e+]+)', metrics)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "feed"])
def test_bad_frames_are_counted_and_the_process_survives(service, run_dir):
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    peers = {name: Publisher(ctx, bus.pub_endpoint(name, rt, bind=True), name) for name in SERVICES if name != service}
    env = {"SPX_GATEWAY_PORT": str(free_port()), "SPX_RUNTIME_LOG_LEVEL": "WARNING"}
    proc = ServiceProcess.service(service, run_dir=run_dir, env=env, stop_timeout_s=15)
    client = RpcClient(ctx, bus.rep_endpoint(service, rt), timeout_s=1.0, retries=0)
    try:
        with proc:
            def live_peers():
                for pub in peers.values():
                    pub.heartbeat(time.time_ns())
                try:
                    return {k for k, v in client.call("status")["peers"].items() if v}
                except RpcError:
                    return set()

            subscribed = proc.wait_ready(live_peers, 30, f"{service} sees a fake peer", 0.2)
            for name in subscribed:
                sock = peers[name].sock
                # header-level garbage on the heartbeat topic, which every subscriber listens to
                hb = f"hb.{name}".encode()
                sock.send_multipart([hb, b"\x00\x01garbage"])
                sock.send_multipart([hb, msgspec.msgpack.encode([99, "heartbeat", name, "s", 1, 0, 0, msgspec.Raw(b"\x90")])])
                sock.send_multipart([hb, msgspec.msgpack.encode(["not", "an", "envelope"])])
                sock.send_multipart([hb])
                # well-formed envelopes with bodies missing required fields, on every topic
                for topic, type_name in TOPICS.items():
                    peers[name].publish(topic, type_name, [{"k": "t"}] if type_name == "ticks" else {"bogus": 1}, 1)
            n = len(subscribed)

            def counted():
                text = client.call("metrics")
                return text if _counter(text, "garbage") >= n and _counter(text, "frames") >= n else None

            metrics = eventually(counted, 10, what="bad frames counted")
            assert _counter(metrics, "version") >= n
            assert _counter(metrics, "schema") > n  # envelopes, plus at least one body of a handled topic
            assert client.call("ping")["pong"] is True
            assert proc.alive()
    finally:
        client.close()
        for pub in peers.values():
            pub.close()
        ctx.destroy(linger=0)
