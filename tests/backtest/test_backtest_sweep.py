"""Backtests across cores and machines: days in parallel give the sequential result; a parameter sweep
on a local Dask cluster (separate worker processes, the engine a real cluster runs) gives, for every set,
exactly the single backtest of that set; sweep files are validated with the set and key named; the CLI
writes the sweep report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.backtest import run as bt
from services.backtest import sweep as sw
from spx_common.store import open_store
from tests.backtest.test_backtest import CFG, DAYS, ROOT, seed


@pytest.fixture
def store(run_dir):
    s = open_store(f"sqlite:///{run_dir}/sweep.sqlite3")
    seed(s)
    yield s
    s.close()


def test_days_in_parallel_processes_give_the_sequential_result(store):
    opts = bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"], record=False)
    one = bt.run(store, opts, CFG, workers=1)
    two = bt.run(store, opts, CFG, workers=2)
    assert one["overall"]["trades"] == 3
    assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)


def test_a_sweep_on_a_local_dask_cluster_equals_each_sets_single_backtest(store):
    sets = sw.parse_sweep({"set": [{"name": "base"}, {"name": "slow trigger", "confirm_ticks": 8}],
                           "grid": {"plugins": [[]], "family_cap": [1, 2]}})
    assert [s.name for s in sets] == ["base", "slow trigger", "family_cap=1, plugins=[]", "family_cap=2, plugins=[]"]
    opts = bt.Options(start=DAYS[0], end=DAYS[-1], symbols=["SPY"], record=False)
    client, cluster = sw.local_cluster(2)
    try:
        doc = sw.run_sweep(store, opts, CFG, sets, client=client)
        assert len(client.scheduler_info()["workers"]) == 2
    finally:
        client.close()
        cluster.close()
    assert doc["jobs"] == len(sets) * len(DAYS)
    for s, ps in zip(doc["sets"], sets, strict=True):
        single = bt.run(store, opts, sw.apply(CFG, ps), workers=1)
        assert json.dumps(s["result"], sort_keys=True) == json.dumps(single, sort_keys=True), ps.name
    trades = [s["result"]["overall"]["trades"] for s in doc["sets"]]
    assert trades[0] == 3 and trades[2] == trades[3] == 0  # the sets really differ
    assert doc["sets"][0]["versus_first"] is None
    assert doc["sets"][2]["versus_first"]["promote"] is False


@pytest.mark.parametrize("doc,error", [
    ({}, "no parameter sets"),
    ({"set": [{"name": "a", "no_such_key": 1}]}, "'no_such_key' is not a [detector] setting"),
    ({"set": [{"name": "a", "confirm_ticks": 0}]}, "set 'a': confirm_ticks"),
    ({"grid": {"family_cap": 3}}, "must be a non-empty list"),
    ({"set": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"sets": []}, "unknown table"),
])
def test_sweep_files_are_validated_naming_the_set_and_key(doc, error):
    with pytest.raises(sw.SweepError, match=error.replace("[", r"\[").replace("]", r"\]")):
        for ps in sw.parse_sweep(doc):
            sw.apply(CFG, ps)


def test_dotted_keys_reach_into_plugin_config():
    ps = sw.parse_sweep({"set": [{"name": "x", "plugin_config": {"orb": {"min_skew": 0.3}}}]})[0]
    assert ps.overrides == {"plugin_config.orb.min_skew": 0.3}
    assert sw.apply(CFG, ps).plugin_config == {"orb": {"min_skew": 0.3}}


def test_cli_sweep_writes_html_png_and_json(run_dir, tmp_path, store):
    params = tmp_path / "params.toml"
    params.write_text('[[set]]\nname = "base"\n\n[[set]]\nname = "none"\nplugins = []\n')
    env = {"SPX_RUNTIME_RUN_DIR": str(run_dir), "DATABASE_URL": f"sqlite:///{run_dir}/sweep.sqlite3",
           "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.backtest.planted_plugin",
           "PYTHONPATH": str(ROOT)}
    import os

    out = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", DAYS[0].isoformat(),
                          DAYS[-1].isoformat(), "--symbols", "SPY", "--sweep", str(params), "--workers", "2",
                          "--out", str(tmp_path / "rep"), "--quiet", "--no-record"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=180, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "6 jobs (2 sets x 3 days) on dask LocalCluster, 2 worker processes" in out.stdout
    lines = out.stdout.splitlines()
    assert any(line.startswith("base") and " 3 " in line for line in lines), out.stdout
    html = (tmp_path / "rep" / "sweep.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "none" in html
    assert (tmp_path / "rep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "rep" / "sweep.json").read_text())
    assert [s["name"] for s in doc["sets"]] == ["base", "none"]
