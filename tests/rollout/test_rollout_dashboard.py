"""The dashboard's switches panel and price badge in headless Chromium, against real feed and gateway
processes, while an operator flips switches with ``spx flags set``."""

from __future__ import annotations

import contextlib

from tests.conftest import eventually, free_port
from tests.harness import service_process
from tests.rollout.helpers import spx_flags_set

ROW = "document.querySelector('#switches tr[data-switch=\"{}\"]')?.dataset.value"
WHO = "document.querySelector('#switches tr[data-switch=\"{}\"] td:last-child')?.textContent"


def test_switches_panel_and_badge_follow_spx_flags_set(run_dir, browser):
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_FEED_REPLAY_START_DELAY_S": "0"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(service_process(run_dir, "feed", env=env))
        stack.enter_context(service_process(run_dir, "gateway", env=env))
        dt = browser(f"http://127.0.0.1:{port}/?sym=SPY")
        try:
            js = dt.js
            eventually(lambda: js(ROW.format("tick_fanout")) == "all", 20, 0.2, what="switches panel")
            assert js(WHO.format("tick_fanout")) == "all 2"  # feed and gateway report it
            eventually(lambda: js("document.getElementById('badge-mode').textContent") == "tick", 20, 0.2,
                       what="tick-cadence prices")

            spx_flags_set(run_dir, "tick_fanout", "alice")  # the page has no token: poll cadence
            eventually(lambda: js("document.getElementById('badge-mode').textContent") == "poll 1s", 10, 0.2,
                       what="badge shows the poll cadence")
            eventually(lambda: js(ROW.format("tick_fanout")) == "alice", 10, 0.2, what="panel shows the new value")

            spx_flags_set(run_dir, "tick_ingest_passive", "true")
            eventually(lambda: js(ROW.format("tick_ingest_passive")) == "true", 10, 0.2)
            spx_flags_set(run_dir, "tick_fanout", "all")
            eventually(lambda: js("document.getElementById('badge-mode').textContent") == "poll", 10, 0.2,
                       what="tick cadence again, but the passive feed's prices are polled")
            spx_flags_set(run_dir, "tick_ingest_passive", "false")
            eventually(lambda: js("document.getElementById('badge-mode').textContent") == "tick", 10, 0.2,
                       what="tick-cadence prices again")
            rows = js("[...document.querySelectorAll('#switches tr')].map(r => r.dataset.switch)")
            assert sorted(r for r in rows if r) == sorted(
                ["auto_execution", "evaluator_logging_only", "kill_switch", "l2_microstructure", "paper_auto_execution",
                 "tactical_alerts", "tick_fanout", "tick_ingest_passive"])  # issue 18: the paper switch is visible
        finally:
            dt.close()
