"""``spx up`` and ``spx status`` tell the truth on the real supervisord mesh.

* A configuration error: ``spx up`` exits non-zero naming the service, the key, its value and its
  source; ``spx status`` (text and ``--json``) exits 1 with the same reason; the gateway's ``status``
  channel lists the service as ``fatal`` with the reason (a row, not a missing one); the service stays
  down (exit 2 is 'expected' in supervisord.conf, so it is not restarted).
* A stopped process (SIGSTOP): ``spx status`` exits 1 naming it, ``no heartbeat`` and why; after
  SIGCONT it is healthy again and ``spx status`` exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from services.cli import supervise
from spx_common.config import RuntimeConfig
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.mesh

KEY = "SPX_AGGREGATOR_ALLOWED_LATENESS_MS"


def _spx(env: dict, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _gateway_status(port: int) -> dict:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": ["status"]}))
        while True:
            msg = json.loads(ws.recv(timeout=10))
            if msg.get("channel") == "status" and msg["type"] in ("snapshot", "update") and msg["data"]:
                return msg["data"]


def test_bad_config_fails_spx_up_naming_the_key_and_status_says_why(run_dir):
    port = free_port()
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_GATEWAY_PORT": str(port), KEY: "-5"}
    runtime = RuntimeConfig(run_dir=run_dir)
    try:
        up = _spx(env, "up", "--timeout", "60")
        assert up.returncode != 0, up.stdout + up.stderr
        line = next(ln for ln in up.stderr.splitlines() if ln.strip().startswith("aggregator:"))
        assert "allowed_lateness_ms" in line and "'-5'" in line and f"environment {KEY}" in line, up.stderr
        assert not any(ln.strip().startswith(("feed:", "gateway:", "detector:")) for ln in up.stderr.splitlines())

        st = _spx(env, "status")
        assert st.returncode == 1, st.stdout + st.stderr
        assert "DEGRADED" in st.stdout
        reason = next(ln for ln in st.stdout.splitlines() if ln.strip().startswith("aggregator:"))
        assert "allowed_lateness_ms" in reason and KEY in reason, st.stdout
        js = _spx(env, "status", "--json")
        assert js.returncode == 1
        doc = json.loads(js.stdout)
        assert doc["healthy"] is False and set(doc["unhealthy"]) == {"aggregator"}, doc["unhealthy"]
        assert "allowed_lateness_ms" in doc["unhealthy"]["aggregator"]
        row = next(r for r in doc["services"] if r["service"] == "aggregator")
        assert row["healthy"] is False and row["state"] != "RUNNING"

        # the gateway's status channel: a row for the aggregator, fatal, with the reason
        data = eventually(lambda: (lambda d: d if d["services"].get("aggregator", {}).get("state") == "fatal"
                                   else None)(_gateway_status(port)), 30, 0.5, what="aggregator fatal in status")
        agg = data["services"]["aggregator"]
        assert agg["alive"] is False and agg["healthy"] is False and "allowed_lateness_ms" in agg["reason"]
        assert data["services"]["feed"]["healthy"] is True
        # still down, never restarted into a loop
        states = {p["name"]: p["statename"] for p in supervise.processes(runtime)}
        assert states["aggregator"] in ("EXITED", "FATAL", "BACKOFF"), states
    finally:
        supervise.stop(runtime, 30)


def test_a_stopped_service_makes_spx_status_exit_1_with_the_reason(run_dir):
    port = free_port()
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_GATEWAY_PORT": str(port)}
    env.pop(KEY, None)
    runtime = RuntimeConfig(run_dir=run_dir)
    try:
        up = _spx(env, "up", "--timeout", "60")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "services up" in up.stdout
        healthy = eventually(lambda: (lambda st: st.returncode == 0 and st)(_spx(env, "status")), 30, 0.5,
                             what="spx status healthy")
        # every heartbeat age is printed with the same two decimals (it read '1.0s' beside '0.04s')
        header = next(ln for ln in healthy.stdout.splitlines() if ln.startswith("service "))
        at = header.index("hb age") + len("hb age")
        rows = [ln for ln in healthy.stdout.splitlines() if ln.split()[:2][-1:] == ["RUNNING"]]
        assert len(rows) == 8 and all(re.fullmatch(r"\d+\.\d\ds", ln[:at].split()[-1]) for ln in rows), rows
        pid = {p["name"]: p["pid"] for p in supervise.processes(runtime)}["detector"]
        os.kill(pid, signal.SIGSTOP)
        try:
            def degraded():
                st = _spx(env, "status", "--json")
                doc = json.loads(st.stdout)
                return st.returncode == 1 and "detector" in doc["unhealthy"] and doc
            doc = eventually(degraded, 30, 0.5, what="spx status exit 1 naming the detector")
            assert "no heartbeat" in doc["unhealthy"]["detector"] and "SIGSTOP" in doc["unhealthy"]["detector"]
            text = _spx(env, "status")
            assert text.returncode == 1
            assert any(ln.strip().startswith("detector:") and "no heartbeat" in ln for ln in text.stdout.splitlines())
        finally:
            os.kill(pid, signal.SIGCONT)
        eventually(lambda: _spx(env, "status").returncode == 0, 30, 0.5, what="healthy again after SIGCONT")
        # a typo in a topic prefix is not silence: tail says nothing came and what the mesh publishes
        tail = _spx(env, "tail", "nosuch.", "--timeout", "4")
        assert tail.returncode == 0 and tail.stdout == "", tail.stdout
        assert "no frames on topic prefix 'nosuch.'" in tail.stderr and "hb." in tail.stderr, tail.stderr
        # an unusable flags file: every service runs, but the last line must not say healthy
        (run_dir / "flags.json").write_text('{"kill_switch": false,}')
        text = _spx(env, "status")
        assert text.returncode == 4 and "FLAGS FILE NOT USABLE" in text.stdout, text.stdout
        assert "healthy: all" not in text.stdout and "every switch failed closed" in text.stdout.splitlines()[-1]
    finally:
        supervise.stop(runtime, 30)


def test_spx_up_fails_when_another_program_holds_the_gateway_port(run_dir):
    """The gateway heartbeats before it binds its port; with the port taken it died right after, and
    ``spx up`` still said 'all 8 services up' and printed a dashboard URL served by someone else."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_GATEWAY_PORT": str(port)}
    runtime = RuntimeConfig(run_dir=run_dir)
    try:
        up = _spx(env, "up", "--timeout", "60")
        assert up.returncode == 1, up.stdout + up.stderr
        assert "all 8 services up" not in up.stdout and "dashboard:" not in up.stdout
        line = next(ln for ln in up.stderr.splitlines() if ln.strip().startswith("gateway:"))
        assert "address already in use" in line, up.stderr
        assert not any(ln.strip().startswith(("feed:", "aggregator:", "recorder:")) for ln in up.stderr.splitlines())
    finally:
        supervise.stop(runtime, 30)
        holder.close()
