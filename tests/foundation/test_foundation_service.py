"""BusService base: validation at ingress, isolation of handler failures, heartbeats, clean SIGTERM."""

import signal
import sys
import textwrap

import zmq

from spx_common.bus import Publisher, RpcClient, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import Trade
from spx_testing import ServiceProcess
from tests.conftest import eventually

SERVICE = textwrap.dedent('''
    import sys
    from spx_common.service import BusService

    class Echo(BusService):
        """Echo prices; raises on a price of 13."""
        name = "coach"
        subscriptions = {"feed": ["tick."]}

        def setup(self):
            self.seen = []
            self.on("tick.", self.handle)
            self.rpc("seen", lambda p: self.seen)

        def handle(self, frame, body):
            for t in body:
                if t.price == 13:
                    raise ValueError("unlucky")
                self.seen.append(t.price)

        async def drain(self):
            open(sys.argv[1], "w").write("drained")

    Echo.cli([])
''')


def test_service_counts_bad_frames_survives_handler_errors_and_drains_on_sigterm(run_dir, tmp_path):
    rt = RuntimeConfig(run_dir=run_dir)
    bus = BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed")
    script = tmp_path / "echo.py"
    script.write_text(SERVICE)
    marker = tmp_path / "drained"
    proc = ServiceProcess([sys.executable, str(script), str(marker)], name="echo service")
    client = RpcClient(ctx, bus.rep_endpoint("coach", rt), timeout_s=0.5, retries=0)
    try:
        with proc:
            proc.wait_ready(lambda: _try(client, "ping"), 15, what="service answers ping")
            # wait for the subscription to be live
            eventually(lambda: feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=1, ts=1)], 1) and
                       1.0 in client.call("seen"), 10)
            feed.sock.send_multipart([b"tick.SPY", b"\x00garbage"])
            feed.sock.send_multipart([b"tick.SPY", b"\x93\x63\x00\x00"])  # wrong schema
            feed.publish("tick.SPY", "ticks", [{"k": "t", "sym": "SPY", "price": 2.0}], 2)  # missing ts
            feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=13, ts=3)], 3)  # handler raises
            feed.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=4, ts=4)], 4)
            eventually(lambda: 4.0 in client.call("seen"), 5)
            metrics = client.call("metrics")
            assert 'bus_bad_frames_total{reason="garbage"} 1' in metrics
            assert 'bus_bad_frames_total{reason="schema"} 2' in metrics
            assert 'handler_errors_total{topic="tick."} 1' in metrics
            status = client.call("status")
            assert status["state"] == "running" and status["dead_letters"] >= 2
            assert (run_dir / "deadletter" / "coach.msgpack").stat().st_size > 0
            # heartbeat on hb.coach within ~1s
            sub = Subscriber(ctx, [bus.pub_endpoint("coach", rt)], [], heartbeats=True)
            hb = eventually(lambda: sub.recv(0.5), 5)
            assert hb.topic == "hb.coach" and hb.body().service == "coach"
            sub.close()
            # rollout switch changed at runtime: applied on request, visible in status
            from spx_common.flags import FlagStore

            FlagStore(run_dir / "flags.json").set("tactical_alerts", "off")
            assert client.call("flags.reload")["flags"]["tactical_alerts"] is False
            assert client.call("status")["flags"]["tactical_alerts"] is False
            proc.send_signal(signal.SIGTERM)
            proc.expect_exit(10, codes=(0,))
            assert marker.read_text() == "drained"
    finally:
        client.close()
        ctx.destroy(linger=0)


def _try(client, method):
    try:
        return client.call(method)
    except Exception:
        return None
