"""CURVE over tcp: an authorized peer gets frames and answers; an unknown key gets nothing."""

import sys
import textwrap

import zmq

from services.cli.main import main as spx
from spx_common.bus import RpcClient, RpcTimeout, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.curve import CurveKeys, generate
from spx_testing import ServiceProcess
from tests.conftest import eventually, free_port

SERVICE = textwrap.dedent('''
    from spx_common.service import BusService
    from spx_common.models import Trade

    class Pub(BusService):
        """Publishes a trade every heartbeat."""
        name = "feed"

        def periodic(self):
            self.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=1.0, ts=1)], 1)

    Pub.cli([])
''')


def test_curve_encrypts_authenticates_and_refuses_unknown_peers(run_dir, tmp_path, monkeypatch):
    keys = run_dir / "keys"
    assert spx(["keys", "generate", "feed", "cli", "--dir", str(keys)]) == 0
    # an intruder with a well-formed keypair that is NOT in keys/public
    stranger_dir = tmp_path / "stranger"
    generate(stranger_dir, "cli")
    base = free_port()
    env = {"SPX_BUS_TRANSPORT": "tcp", "SPX_BUS_TCP_BASE_PORT": str(base), "SPX_BUS_CURVE": "true",
           "SPX_RUNTIME_RUN_DIR": str(run_dir)}
    script = tmp_path / "pub.py"
    script.write_text(SERVICE)
    proc = ServiceProcess([sys.executable, str(script)], name="curve publisher", env=env)
    ctx = zmq.Context()
    rt = RuntimeConfig(run_dir=run_dir)
    bus = BusConfig(transport="tcp", tcp_base_port=base, curve=True)
    good = CurveKeys.load(keys, "cli")
    bad = CurveKeys.load(stranger_dir, "cli")
    bad.peers["feed"] = good.peers["feed"]  # the stranger knows the server's public key, but is not authorized
    try:
        with proc:
            ok_client = RpcClient(ctx, bus.rep_endpoint("feed", rt), timeout_s=0.5, retries=0, curve=good, peer="feed")
            assert proc.wait_ready(lambda: _try(ok_client), 15, "the publisher answers over CURVE")["pong"] is True
            sub = Subscriber(ctx, [bus.pub_endpoint("feed", rt)], ["tick."], curve=good, peers=["feed"])
            frame = eventually(lambda: sub.recv(0.5), 10)
            assert frame.topic == "tick.SPY"

            bad_client = RpcClient(ctx, bus.rep_endpoint("feed", rt), timeout_s=0.5, retries=1, curve=bad, peer="feed")
            try:
                bad_client.call("ping")
                raise AssertionError("unauthorized client was answered")
            except RpcTimeout:
                pass
            bad_sub = Subscriber(ctx, [bus.pub_endpoint("feed", rt)], ["tick."], curve=bad, peers=["feed"])
            assert bad_sub.recv(2.5) is None
            plain = Subscriber(ctx, [bus.pub_endpoint("feed", rt)], ["tick."])  # no encryption at all
            assert plain.recv(1.5) is None
            for s in (sub, bad_sub, plain):
                s.close()
            ok_client.close()
            bad_client.close()
    finally:
        ctx.destroy(linger=0)


def _try(client):
    try:
        return client.call("ping")
    except RpcTimeout:
        return None
