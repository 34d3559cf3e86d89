"""Issue 22 item 4: with the run directory on a 4 MiB tmpfs, `spx status` showed all 8 services running
while the recorder dropped rows and the outboxes failed writes, and after space returned the store still
lacked transitions, orders and fills until a manual recorder restart.

The real mesh under supervisord runs with its run directory on a small tmpfs this test mounts. The test
fills the filesystem to the last byte while setups, orders and fills are published, checks that the
processes that cannot write say so (heartbeat ``degraded``, ``spx status`` exit 1 with the reason, a
critical coach alert), frees the space, and checks that the recorder caught up on its own: every
transition, order and fill seen on the bus is in the store, none twice.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from services.cli import supervise
from services.cli.main import main
from spx_common.bus import Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.store.repo import fill_key
from tests.conftest import free_port

pytestmark = pytest.mark.mesh


@pytest.fixture
def small_fs():
    path = Path(tempfile.mkdtemp(prefix="spx-fd-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        path.rmdir()


def _fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to its last byte; return the filler file."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    fh.write(chunk)
                except OSError:
                    break
    return filler


def _status() -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["status", "--json"])
    return code, json.loads(out.getvalue())


def _counters(ctx, bus: BusConfig, runtime: RuntimeConfig) -> dict[str, float]:
    """Write failures counted by the recorder and the publishers' outboxes (their metrics requests)."""
    from spx_common.bus import RpcClient

    out: dict[str, float] = {}
    for service, names in (("recorder", ("recorder_rows_dropped_total", "recorder_db_failures_total")),
                           ("detector", ("outbox_write_errors_total",)), ("broker", ("outbox_write_errors_total",))):
        rpc = RpcClient(ctx, bus.rep_endpoint(service, runtime), timeout_s=2.0, retries=1)
        try:
            text = rpc.call("metrics")
        finally:
            rpc.close()
        for name in names:
            key = name if service == "recorder" else f"{service} {name}"
            out[key] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(name) and not line.startswith("#"))
    return out


def test_a_full_disk_loses_no_record_and_says_so(small_fs, monkeypatch):
    monkeypatch.setenv("SPX_RUNTIME_RUN_DIR", str(small_fs))
    runtime = RuntimeConfig(run_dir=small_fs)
    supervise.start(runtime, {"SPX_GATEWAY_PORT": str(free_port()), "SPX_FEED_REPLAY_SPEED": "60"})
    ctx = zmq.Context()
    bus = BusConfig()
    sub = Subscriber(ctx, [bus.pub_endpoint(s, runtime) for s in ("detector", "broker", "aggregator", "coach")],
                     ["setup.transition", "order.", "fill.", "bar.1s.SPY", "coach."])
    transitions: set = set()
    orders: set = set()
    fills: list[str] = []
    alerts: list = []
    bars = [0]

    def records() -> int:
        return len(transitions) + len(orders) + len(fills)

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            f = sub.recv(0.1)
            if f is None:
                continue
            b = f.body()
            if f.topic == "setup.transition":
                transitions.add((b.setup_id, b.to_state, b.ts))
            elif f.topic.startswith("order."):
                orders.add(b.order_id)
            elif f.topic.startswith("fill."):
                fills.append(fill_key(b))
            elif f.topic.startswith("coach."):
                alerts.append((b.kind, b.severity, b.message))
            else:
                bars[0] += 1

    figures: dict = {}
    try:
        supervise.wait_running(runtime, 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (bars[0] < 5 or records() == 0):
            pump(0.5)
        assert records() > 0, "no record before the episode"
        before = records()

        filler = _fill(small_fs)
        t_full = time.monotonic()
        degraded: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (records() < before + 5 or not degraded.get("recorder")
                                               or time.monotonic() - t_full < 10):
            pump(1.0)
            code, doc = _status()
            if code == 1:
                degraded.update(doc["unhealthy"])
        during = records() - before
        figures["records published while full"] = during
        figures["unhealthy while full"] = degraded
        assert during >= 5, "nothing was published while the disk was full"
        assert "degraded" in degraded.get("recorder", ""), degraded
        deadline = time.monotonic() + 15

        def critical() -> list:
            return [a for a in alerts if a[0] == "system_degraded" and a[1] == "critical"]
        while time.monotonic() < deadline and not critical():
            pump(0.5)
        assert critical(), f"no critical coach alert: {alerts}"
        figures["critical alerts"] = sorted({a[2][:120] for a in critical()})

        lost_while_full = _counters(ctx, bus, runtime)
        figures["while full"] = lost_while_full
        assert lost_while_full["recorder_rows_dropped_total"] > 0, "the episode cost the recorder nothing to recover"
        filler.unlink()  # space returns
        t_free = time.monotonic()
        figures["full for s"] = round(t_free - t_full, 1)
        deadline = time.monotonic() + 60
        code = 1
        while time.monotonic() < deadline:
            pump(1.0)
            code, doc = _status()
            if code == 0:
                break
        assert code == 0, f"not healthy again 60 s after space returned: {doc['unhealthy']}"
        figures["healthy again after s"] = round(time.monotonic() - t_free, 1)
        assert any(a[0] == "system_recovered" for a in alerts)

        pump(3)
        seen_tr, seen_orders, seen_fills = set(transitions), set(orders), list(fills)
        db = sqlite3.connect(runtime.path("spx.sqlite3"))
        deadline = time.monotonic() + 30
        while True:
            stored_tr = {tuple(r) for r in db.execute("select setup_id, to_state, ts from setup_transitions")}
            stored_orders = {r[0] for r in db.execute("select order_id from orders")}
            stored_fills = [r[0] for r in db.execute("select fill_key from fills")]
            missing = (seen_tr - stored_tr, seen_orders - stored_orders, set(seen_fills) - set(stored_fills))
            if not any(missing) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        figures["stored"] = {"transitions": len(seen_tr), "orders": len(seen_orders), "fills": len(seen_fills)}
        figures["recovered in s (all records stored)"] = round(time.monotonic() - t_free, 1)
        figures["missing"] = [len(x) for x in missing]
        print("FULL-DISK FIGURES", json.dumps(figures, default=str))
        assert not any(missing), f"lost: {missing}"
        per_key = db.execute("select setup_id, to_state, count(*) from setup_transitions group by 1, 2 "
                             "having count(*) > 1").fetchall()
        assert per_key == []
        assert len(stored_fills) == len(set(stored_fills))
        db.close()
    finally:
        supervise.stop(runtime, 30)
        sub.close()
        ctx.destroy(linger=0)
