"""The command line reads well: suggestions for typos, help texts that do not break names, numbers
rounded, columns aligned, a metrics summary, configuration with its sources and only secrets masked,
a loud detector without plugins, and package metadata that installs without deprecation warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from services.cli import main as cli
from services.cli.commands import metrics as metrics_cmd
from services.cli.commands import select as select_cmd
from spx_common.config import PROJECT_DIR
from spx_common.metrics import Registry
from tests.conftest import eventually
from tests.harness import service_process


def _spx(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80", **(env or {})})


@pytest.mark.parametrize(("typed", "meant"), [("stauts", "status"), ("metrcs", "metrics"), ("plugin", "plugins")])
def test_mistyped_commands_get_a_close_match(capsys, typed, meant):
    with pytest.raises(SystemExit) as exc:
        cli.main([typed])
    assert exc.value.code == 2
    assert f"did you mean '{meant}'" in capsys.readouterr().err


def test_mistyped_sub_commands_and_choices_get_a_close_match(capsys):
    for argv, meant in ((["config", "shwo"], "show"), (["restart", "aggregater"], "aggregator")):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert f"did you mean '{meant}'" in capsys.readouterr().err


def test_bars_help_never_breaks_a_column_name():
    from services.aggregator.bars import CSV_COLUMNS

    out = _spx("bars", "--help").stdout
    words = {w.strip(",") for w in out.split()}
    missing = [c for c in CSV_COLUMNS if c not in words]
    assert not missing, out


def test_replay_help_names_the_supervised_program():
    out = _spx("replay", "--help").stdout
    assert "supervisorctl -c supervisord.conf stop spx:feed" in " ".join(out.split())


def test_select_chain_rounds_numbers(monkeypatch, capsys):
    answer = {"ok": True, "contracts": 2, "quoted": 2, "underlying": 5878.63, "age_s": 0.4, "regime": "trending",
              "issues": [], "near": [
                  {"symbol": "O:SPXW261207C05880000", "bid": 4.1, "ask": 4.3, "delta": 0.5140273513875555,
                   "iv": 0.18234567, "open_interest": 12345, "greeks": "vendor"},
                  {"symbol": "O:SPXW261207P05880000", "bid": None, "ask": None, "delta": None, "iv": None,
                   "open_interest": 0, "greeks": "none"}]}
    monkeypatch.setattr(select_cmd, "call", lambda *a, **k: answer)
    assert cli.main(["select", "--chain"]) == 0
    out = capsys.readouterr().out
    assert "delta +0.514" in out and "0.51402" not in out
    assert "iv  18.2%" in out and "oi  12,345" in out and "bid    4.10" in out
    assert "delta      -" in out  # a missing value is a dash, not None


def test_plugins_table_columns_are_aligned():
    out = _spx("plugins", "--offline")
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("available")]
    assert len(lines) >= 3, out.stdout
    head = lines[0]
    for col in ("version", "status", "source"):
        starts = {ln.find(" " + ln.split()[head.split().index(col)] + " ", head.find(col) - 1) + 1 for ln in lines[1:]}
        assert starts == {head.find(col)}, (col, out.stdout)


def test_no_detector_plugin_is_a_loud_warning_and_exit_1():
    out = _spx("plugins", "--offline", env={"SPX_DETECTOR_ENTRY_POINTS_ENABLED": '["nothing"]'})
    assert out.returncode == 1
    assert "WARNING: no detector plugin loaded" in out.stderr


def test_detector_without_plugins_says_degraded_in_its_heartbeat(run_dir):
    env = {"SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_WARMUP": "false", "DATABASE_URL": "",
           "SPX_DETECTOR_SYMBOLS": "SPY"}
    with service_process(run_dir, "detector", env=env) as (_pubs, sub, _rpc):
        def degraded():
            frame = sub.recv(0.5)
            if frame is not None and frame.type == "heartbeat":
                hb = frame.body()
                return hb.state == "degraded" and hb
        hb = eventually(degraded, 10, what="a degraded heartbeat")
        assert "no detector plugin loaded" in hb.detail
    from spx_common import health

    assert health.assess("detector", {"statename": "RUNNING", "pid": 0}, hb, 0.1, run_dir) == (
        False, f"degraded: {hb.detail}")


def test_metrics_summary_replaces_buckets_with_percentiles():
    reg = Registry()
    reg.counter("frames_total", "Frames.", ["kind"]).inc(1234567, kind="tick")
    reg.gauge("queue_depth", "Queue.").set(3)
    h = reg.histogram("handler_latency_ms", "Handler time.")
    for v in [0.05] * 98 + [40, 400]:
        h.observe(v)
    text = metrics_cmd.summary(reg.render())
    assert "_bucket" not in text and 'le="' not in text
    row = next(ln for ln in text.splitlines() if ln.startswith("handler_latency_ms"))
    assert row.split()[1] == "100" and "<= 0.100" in row and "<= 50" in row  # count, p50, p99
    assert any(ln.startswith('frames_total{kind="tick"}') and "1,234,567" in ln for ln in text.splitlines())
    assert len(text.splitlines()) < len(reg.render().splitlines()) / 2


def test_config_show_masks_secrets_only_and_names_each_source():
    env = {"SPX_AGGREGATOR_ALLOWED_LATENESS_MS": "7", "SPX_GATEWAY_TOKEN_SECRET": "s3cret",
           "MASSIVE_API_KEY": "abcdef", "DATABASE_URL": "postgresql+psycopg://spx:pw@db/spx"}
    out = _spx("config", "show", "--json", env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["aggregator"]["allowed_lateness_ms"] == {
        "value": 7, "source": "environment SPX_AGGREGATOR_ALLOWED_LATENESS_MS"}
    assert doc["aggregator"]["intervals"]["source"] == "default"
    assert doc["gateway"]["token_secret"]["value"] == "***"
    assert doc["feed"]["api_key"] == {"value": "***", "source": "environment MASSIVE_API_KEY"}
    assert doc["store"]["url"]["value"] == "postgresql+psycopg://spx:***@db/spx"
    masked = [(s, k) for s, keys in doc.items() for k, v in keys.items() if v["value"] == "***"]
    assert sorted(masked) == [("feed", "api_key"), ("gateway", "token_secret")]
    assert isinstance(doc["gateway"]["token_ttl_s"]["value"], int)
    assert "s3cret" not in out.stdout and "abcdef" not in out.stdout and ":pw@" not in out.stdout
    text = _spx("config", "show", "aggregator", env=env).stdout
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("allowed_lateness_ms"))
    assert line.split()[1:] == ["7", "environment", "SPX_AGGREGATOR_ALLOWED_LATENESS_MS"]


def test_config_error_names_key_value_and_source(run_dir):
    out = subprocess.run([sys.executable, "-m", "services.aggregator"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir),
                              "SPX_AGGREGATOR_ALLOWED_LATENESS_MS": "-5"})
    assert out.returncode == 2
    assert "allowed_lateness_ms = '-5' (environment SPX_AGGREGATOR_ALLOWED_LATENESS_MS)" in out.stderr
    record = json.loads((run_dir / "fatal" / "aggregator.json").read_text())
    assert "allowed_lateness_ms = '-5'" in record["reason"] and "\n" not in record["reason"]


def test_package_metadata_uses_spdx_license_strings():
    """setuptools >= 77 warns (a ~15-line banner per build) about a license TOML table."""
    files = [PROJECT_DIR / "pyproject.toml", *sorted((PROJECT_DIR / "plugins").glob("*/pyproject.toml"))]
    for path in files:
        doc = tomllib.loads(path.read_text())
        assert isinstance(doc["project"].get("license"), str), path
        assert any(r.startswith("setuptools>=77") for r in doc["build-system"]["requires"]), path
