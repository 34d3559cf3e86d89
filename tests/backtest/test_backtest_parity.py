"""``spx backtest --parity RUN_ID``: a stored run's window re-run through the backtest and compared one by one
(transitions, orders, fills). A backtest run with its options side agrees with its re-run; a difference
injected into the stored fills, orders and transitions is listed (CLI end to end, exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import sqlalchemy as sa

from services.backtest import parity
from services.backtest import run as bt
from spx_common.store import open_store
from spx_common.store import tables as t
from tests.backtest.test_backtest_options import CFG, DAY, open_ns, planted, write_journal
from tests.backtest.test_backtest import ROOT
from services.feed.synthetic import SyntheticSession

S = 10**9


def seeded(run_dir) -> tuple[str, str, dict]:
    """A store with the planted I:SPX day and a journal with its chain and quotes; a recorded backtest run."""
    url = f"sqlite:///{run_dir}/parity.sqlite3"
    session = SyntheticSession(seed=7, date=DAY)
    t0 = open_ns(DAY)
    store = open_store(url)
    try:
        store.upsert_bars(planted(t0, round(session.spot(session.sim_seconds(t0 + 5 * S)), 2)))
        write_journal(run_dir / "journal", session, t0)
        res = bt.run(store, bt.Options(start=DAY, end=DAY, symbols=["I:SPX"], journal=run_dir / "journal"), CFG)
    finally:
        store.close()
    return url, f"bt-{res['evidence']['config_hash']}", res


def cli(run_dir, url, *args):
    env = {**os.environ, "DATABASE_URL": url, "SPX_RUNTIME_RUN_DIR": str(run_dir),
           "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.backtest.planted_spx_plugin"}
    return subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_recorded_run_and_its_rerun_agree_and_an_injected_difference_is_listed(run_dir):
    url, run_id, res = seeded(run_dir)
    (trade,) = res["trades"]
    assert trade["pnl_usd"] is not None  # the run traded options: orders and fills were recorded
    store = open_store(url)
    try:
        rec = store.run_rows(run_id)
    finally:
        store.close()
    assert len(rec["orders"]) >= 3 and len(rec["fills"]) >= 3 and rec["transitions"]
    assert all(f["setup_id"] for f in rec["fills"])
    out = run_dir / "p1"
    p = cli(run_dir, url, "--parity", run_id, "--symbols", "I:SPX", "--journal", "auto", "--out", str(out),
            "--quiet", "--workers", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no differences" in p.stdout
    doc = json.loads((out / "parity.json").read_text())
    assert doc["agree"] and doc["window"] == [DAY.isoformat()] * 2
    assert doc["compared"]["fills"] == [len(rec["fills"])] * 2 and doc["compared"]["orders"][0] >= 3

    # inject differences into what the run recorded: a fill's price, an order's quantity, a lost transition
    engine = sa.create_engine(url)
    fill = rec["fills"][-1]
    order = rec["orders"][0]
    gone = next(r for r in rec["transitions"] if r["to_state"] == "target1_hit")
    with engine.begin() as c:
        c.execute(sa.update(t.fills).where(t.fills.c.fill_key == fill["fill_key"]).values(price=fill["price"] + 0.05))
        c.execute(sa.update(t.orders).where(t.orders.c.order_id == order["order_id"]).values(quantity=99))
        c.execute(sa.delete(t.setup_transitions).where(t.setup_transitions.c.setup_id == gone["setup_id"],
                                                       t.setup_transitions.c.to_state == "target1_hit"))
    engine.dispose()
    out2 = run_dir / "p2"
    p = cli(run_dir, url, "--parity", run_id, "--symbols", "I:SPX", "--journal", "auto", "--out", str(out2),
            "--quiet", "--workers", "1")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads((out2 / "parity.json").read_text())
    assert doc["counts"] == {"transitions": 1, "orders": 1, "fills": 1}
    got = {(d["kind"], d["what"]): d for d in doc["differences"]}
    sid = parity.raw_id(fill["setup_id"])
    assert got[("fills", "price")]["key"][0] == sid
    assert got[("fills", "price")]["recorded"] == fill["price"] + 0.05
    assert got[("fills", "price")]["rerun"] == fill["price"]
    assert got[("orders", "quantity")]["recorded"] == 99 and got[("orders", "quantity")]["rerun"] == order["quantity"]
    assert got[("transitions", "only in the re-run")]["key"] == [sid, "target1_hit"]
    assert "DIFFERENCES" in p.stdout and "fills" in p.stdout


def test_parity_refuses_an_unknown_run_and_a_range_with_it(run_dir):
    url, run_id, _ = seeded(run_dir)
    p = cli(run_dir, url, "--parity", "no-such-run", "--quiet")
    assert p.returncode == 1 and "recorded no transitions, orders or fills" in p.stderr
    p = cli(run_dir, url, "2026-11-16", "2026-11-16", "--parity", run_id, "--quiet")
    assert p.returncode == 1 and "give no FROM TO" in p.stderr
    p = cli(run_dir, url, "--quiet")
    assert p.returncode == 1 and "give FROM and TO" in p.stderr


def test_compare_is_pure_and_keys_by_setup_and_order():
    rec = {"transitions": [{"setup_id": "a", "to_state": "triggered", "ts": 10, "price": 1.0},
                           {"setup_id": "a", "to_state": "stopped", "ts": 20, "price": 0.5}],
           "orders": [{"setup_id": "a", "side": "buy_to_open", "type": "limit", "option_symbol": "X", "quantity": 2,
                       "price": 1.5, "stop": None, "ts": 10}],
           "fills": [{"setup_id": "a", "side": "buy_to_open", "option_symbol": "X", "quantity": 2, "price": 1.5,
                      "ts": 11}]}
    same = {"transitions": [{"setup_id": "bt-1:a", "to_state": "triggered", "ts": 10, "price": 1.0},
                            {"setup_id": "bt-1:a", "to_state": "stopped", "ts": 20, "price": 0.5},
                            {"setup_id": "bt-1:b", "to_state": "forming", "ts": 30, "price": 2.0}],
            "orders": [{**rec["orders"][0], "setup_id": "bt-1:a", "ts": 12}],
            "fills": [{**rec["fills"][0], "setup_id": "bt-1:a"}]}
    ok = parity.compare(rec, same, tolerance_ns=5)
    assert ok["agree"]  # the run tag is not part of the key
    assert ok["after_window"]["transitions"] == 1  # after the run's last event: not compared
    d = parity.compare(rec, same, tolerance_ns=0)
    assert d["counts"] == {"transitions": 0, "orders": 1, "fills": 0} and d["differences"][0]["what"] == "ts"
    d = parity.compare(rec, {"transitions": [], "orders": [], "fills": []})
    assert d["counts"] == {"transitions": 2, "orders": 1, "fills": 1}
    assert {x["what"] for x in d["differences"]} == {"missing from the re-run"}
