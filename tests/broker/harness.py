"""Test harness: the real broker process (``python -m services.broker``) on a private run dir, with
real publishers standing in for the detector, selector and feed, and a real subscriber on the broker.

The process runs under :class:`spx_testing.ServiceProcess` (output captured live). ``close()`` stops it
and judges it: when the test body is failing, the broker's output is added to that failure; otherwise a
broker that did not exit 0 on SIGTERM is the failure (with its output)."""

from __future__ import annotations

import datetime as dt
import os
import sys

import zmq

from spx_common.bus import Publisher, RpcClient, RpcError, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import ContractRecommendation, ExitAdvice, Quote, SetupTransition, SizingBreakdown
from spx_testing import ServiceProcess
from tests.conftest import eventually

SYM = "SPXW260220C05000000"
T0 = int(dt.datetime(2026, 2, 20, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)


class Harness:
    def __init__(self, run_dir, env: dict[str, str] | None = None, stand_ins=("detector", "selector", "feed")):
        self.rt = RuntimeConfig(run_dir=run_dir)
        self.bus = BusConfig()
        self.ctx = zmq.Context()
        self.pubs = {s: Publisher(self.ctx, self.bus.pub_endpoint(s, self.rt, bind=True), s) for s in stand_ins}
        # fast heartbeats: the harness waits for one before trading (slow joiner), so tests start sooner
        full_env = {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "SPX_BUS_HEARTBEAT_S": "0.2", **(env or {})}
        for k in [k for k in full_env if k.startswith("TRADIER_") and k not in (env or {})]:
            full_env.pop(k)
        self.proc = ServiceProcess.service("broker", env=full_env, inherit_env=False).start()
        self.rpc = RpcClient(self.ctx, self.bus.rep_endpoint("broker", self.rt), timeout_s=1.0, retries=0)
        self.sub = Subscriber(self.ctx, [self.bus.pub_endpoint("broker", self.rt)],
                              ["order.", "fill.", "position.", "block.", "alert.", "portfolio."], heartbeats=True)
        self.frames: list = []
        try:
            self.proc.wait_ready(self._ping, 20, what="broker answers ping")
            # a heartbeat proves our subscription is connected before anything is traded (slow joiner)
            self.proc.wait_ready(lambda: any(t.startswith("hb.") for t, _ in self.collect(0.2)), 10,
                                 what="broker heartbeat")
        except BaseException:
            self.close()
            raise

    def _ping(self):
        try:
            return self.rpc.call("ping")
        except RpcError:
            return None

    def call(self, method, params=None):
        return self.rpc.call(method, params)

    def collect(self, timeout_s=0.05):
        while True:
            f = self.sub.recv(timeout_s)
            if f is None:
                return self.frames
            self.frames.append((f.topic, f.body()))
            if f.topic.startswith("hb.") and len(self.frames) > 1000:
                self.frames = [x for x in self.frames if not x[0].startswith("hb.")]

    def seen(self, prefix):
        self.collect()
        return [b for t, b in self.frames if t.startswith(prefix)]

    def quote(self, bid, ask, ts, sym=SYM, size=0.0):
        q = Quote(sym="O:" + sym, bid=bid, ask=ask, bid_size=size, ask_size=size, ts=ts)
        self.pubs["feed"].publish("tick.O:" + sym, "ticks", [q], ts)

    def quote_live(self, bid, ask, ts, sym=SYM):
        """Publish a quote until the broker's event clock shows it (subscription connected)."""
        def go():
            self.quote(bid, ask, ts, sym)
            return self.call("status")["broker"]["event_ns"] >= ts
        eventually(go, 10, what="broker received the quote")

    def trigger(self, setup, ts, qty=4, bid=1.95, ask=2.0, sym=SYM, risk=500.0):
        t = SetupTransition(setup_id=setup, detector="vwap", family="reclaim", sym="I:SPX", direction="long",
                            from_state="ready", to_state="triggered", reason="reclaim confirmed", ts=ts)
        # the broker re-sizes every entry for its user (issue 18): the setup's stop is placed so that ``qty``
        # contracts of this 0.5-delta call risk about the default $500 budget (tests.broker.test_broker_engine)
        from tests.broker.test_broker_engine import setup_for

        entry, stop = setup_for(qty, bid, ask, risk)
        sizing = SizingBreakdown(maxRiskDollars=risk, contractsByRisk=qty, contractsByBuyingPower=qty,
                                 perContractDebit=ask * 100, entry=entry, stop=stop)
        r = ContractRecommendation(setup_id=setup, ok=True, reason="ok", occ_symbol=SYM[:4] + "  " + SYM[4:],
                                   tradier_symbol=sym, massive_symbol="O:" + sym, option_type="call", strike=5000,
                                   expiration="2026-02-20", bid=bid, ask=ask, mid=(bid + ask) / 2, delta=0.5,
                                   suggestedContracts=qty, sizing=sizing, ts=ts)
        self.pubs["detector"].publish("setup.transition", "setup_transition", t, ts)
        self.pubs["selector"].publish(f"reco.{setup}", "recommendation", r, ts)

    def advice(self, setup, action, ts, fraction=None):
        a = ExitAdvice(setup_id=setup, action=action, reason=f"{action} test", ts=ts, fraction=fraction)
        self.pubs["selector"].publish(f"exit.{setup}", "exit_advice", a, ts)

    def close(self) -> int | None:
        """Stop the broker (SIGTERM, bounded, then SIGKILL) and close the sockets; the exit code.

        Called from a ``finally`` while the test is failing, it adds the broker's output to that failure
        and returns; otherwise it raises :class:`spx_testing.ProcessFailed` (with the output) unless the
        broker stopped cleanly (exit 0, or killed on purpose with ``h.proc.kill()``)."""
        rc = self.proc.stop()
        self.rpc.close()
        self.sub.close()
        for p in self.pubs.values():
            p.close()
        self.ctx.destroy(linger=0)
        failing = sys.exc_info()[1]
        if failing is not None:
            failing.add_note(self.proc.describe())
        else:
            self.proc.check()
        return rc
