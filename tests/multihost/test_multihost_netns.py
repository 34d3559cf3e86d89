"""Two "hosts" in network namespaces joined by a veth pair, over tcp with CURVE.

Host A runs the feed and the aggregator; host B runs two detector shards (SPY and I:SPX).
A checker on host B with an authorized key sees both shards receiving bars and ticks from
host A; a peer with an unknown key gets no frame and no answer. Needs root and iproute2
(skipped with the reason otherwise).
"""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

from services.cli.main import main as spx
from spx_common.curve import generate
from spx_testing import Processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")

CHECK = textwrap.dedent('''
    import json, sys, time
    import zmq
    from spx_common.bus import RpcClient, RpcError, Subscriber
    from spx_common.config import BusConfig, RuntimeConfig
    from spx_common.curve import CurveKeys

    keys_dir, stranger_dir, a, b = sys.argv[1:5]
    bus = BusConfig(transport="tcp", curve=True, hosts={"feed": a, "aggregator": a, "detector-1": b, "detector-2": b})
    rt = RuntimeConfig(run_dir="/tmp")
    ctx = zmq.Context()
    good = CurveKeys.load(__import__("pathlib").Path(keys_dir), "cli")
    out = {}
    deadline = time.monotonic() + 60
    for shard in ("detector-1", "detector-2"):
        c = RpcClient(ctx, bus.rep_endpoint(shard, rt), timeout_s=1, retries=0, curve=good, peer="detector")
        while time.monotonic() < deadline:
            try:
                st = c.call("status")
                m = c.call("metrics")
                frames = [float(l.split()[1]) for l in m.splitlines() if l.startswith("bus_frames_in_total ")]
                if st["peers"].get("aggregator") and st["peers"].get("feed") and frames and frames[0] > 20:
                    out[shard] = {"peers": st["peers"], "frames_in": frames[0]}
                    break
            except RpcError:
                pass
            time.sleep(0.5)
        c.close()
    bad = CurveKeys.load(__import__("pathlib").Path(stranger_dir), "cli")
    bad.peers.update(good.peers)  # knows the servers' public keys, but its own key is not authorized
    s = Subscriber(ctx, [bus.pub_endpoint("aggregator", rt)], ["bar."], curve=bad, peers=["aggregator"])
    out["stranger_frames"] = 0 if s.recv(3) is None else 1
    c = RpcClient(ctx, bus.rep_endpoint("aggregator", rt), timeout_s=1, retries=0, curve=bad, peer="aggregator")
    try:
        c.call("ping")
        out["stranger_answered"] = True
    except RpcError:
        out["stranger_answered"] = False
    print(json.dumps(out))
''')


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def hosts():
    tag = f"{random.randint(0, 0xFFFF):04x}"
    net = random.randint(10, 250)
    a_ns, b_ns, va, vb = f"spxA{tag}", f"spxB{tag}", f"va{tag}", f"vb{tag}"
    a_ip, b_ip = f"10.213.{net}.1", f"10.213.{net}.2"
    try:
        sh("ip", "netns", "add", a_ns)
        sh("ip", "netns", "add", b_ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a_ns)
        sh("ip", "link", "set", vb, "netns", b_ns)
        for ns, dev, ip in ((a_ns, va, a_ip), (b_ns, vb, b_ip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a_ns, b_ns, a_ip, b_ip
    finally:
        for ns in (a_ns, b_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_feed_and_aggregator_on_one_host_sharded_detectors_on_another_with_curve(hosts, tmp_path):
    a_ns, b_ns, a_ip, b_ip = hosts
    keys = tmp_path / "keys"
    assert spx(["keys", "generate", "feed", "aggregator", "detector", "cli", "--dir", str(keys)]) == 0
    generate(tmp_path / "stranger", "cli")
    common = {"SPX_BUS_TRANSPORT": "tcp", "SPX_BUS_CURVE": "true", "SPX_BUS_CURVE_DIR": str(keys),
              "SPX_BUS_HOSTS": json.dumps({"feed": a_ip, "aggregator": a_ip, "detector-1": b_ip, "detector-2": b_ip}),
              "SPX_BUS_INSTANCES": json.dumps({"detector": ["detector-1", "detector-2"]}),
              "SPX_RUNTIME_LOG_LEVEL": "WARNING"}
    ps = Processes()

    def start(ns, ip, module, *args, **env):
        run_dir = tmp_path / f"run-{ns}-{module}-{len(ps.procs)}"
        e = {**common, "SPX_BUS_TCP_BIND_HOST": ip, "SPX_RUNTIME_RUN_DIR": str(run_dir), **env}
        ps.run(["ip", "netns", "exec", ns, sys.executable, "-m", f"services.{module}", *args], name=f"{module}@{ns}",
               env=e, stop_timeout_s=15)

    with ps:
        start(a_ns, a_ip, "feed")
        start(a_ns, a_ip, "aggregator")
        start(b_ns, b_ip, "detector", "--instance", "detector-1", SPX_DETECTOR_SYMBOLS="SPY")
        start(b_ns, b_ip, "detector", "--instance", "detector-2", SPX_DETECTOR_SYMBOLS="I:SPX")
        script = tmp_path / "check.py"
        script.write_text(CHECK)
        res = subprocess.run(["ip", "netns", "exec", b_ns, sys.executable, str(script), str(keys),
                              str(tmp_path / "stranger"), a_ip, b_ip], capture_output=True, text=True, timeout=120,
                             env={**os.environ})
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        for shard in ("detector-1", "detector-2"):
            assert shard in out, f"{shard} never received data from host A: {out}"
        assert out["stranger_frames"] == 0
        assert out["stranger_answered"] is False
