"""What a new operator meets on first use of the command line: every sub-command's ``--help`` says what
it does, the documented exit codes are in the help, money reads as money, a refusal names the command
that works, and a backtest over days with no stored data says so and fails instead of reporting zero
trades as a result."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

from services.cli.common import Progress
from services.cli import main as cli
from services.cli.commands import broker as broker_cmd
from services.cli.commands import replay as replay_cmd
from spx_common.align import FINAL_NS
from spx_common.config import PROJECT_DIR


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("spx",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_sub_command_help_says_what_it_does():
    found = dict(_commands(cli.build_parser()))
    assert ("spx", "down") in found and ("spx", "broker", "flatten") in found
    silent = [" ".join(path) for path, sub in found.items() if not sub.description]
    assert not silent, silent
    assert "Stop every service and supervisord." in found["spx", "down"].format_help()


def test_flatten_and_plugins_options_have_help():
    found = dict(_commands(cli.build_parser()))
    for path, opt in ((("spx", "broker", "flatten"), "--reason"), (("spx", "plugins"), "--json")):
        action = next(a for a in found[path]._actions if opt in a.option_strings)
        assert action.help, (path, opt)


def test_status_help_lists_every_exit_status():
    text = " ".join(dict(_commands(cli.build_parser()))["spx", "status"].format_help().split())
    assert "0 all healthy, 1 degraded, 3 mesh not running, 4 flags file not usable" in text


def test_negative_money_reads_minus_dollars():
    assert broker_cmd._money(-210.0) == "-$210.00"
    assert broker_cmd._money(1234.5) == "$1,234.50"
    assert broker_cmd._money(None) == "-"


def test_replay_while_the_feed_runs_names_the_supervised_program(monkeypatch, capsys):
    monkeypatch.setattr(replay_cmd, "call", lambda *a, **kw: {"ok": True})  # a feed answers its ping
    args = cli.build_parser().parse_args(["replay", "synthetic"])
    assert replay_cmd.cmd_replay(args) == 1
    err = capsys.readouterr().err
    assert "stop spx:feed" in err and "SPX_RUNTIME_RUN_DIR" in err


def test_progress_counts_jobs_for_a_sweep_and_projects_no_eta_before_the_first():
    out = io.StringIO()
    p = Progress(stream=out, unit="jobs")
    p(0, 4, "")
    assert "0/4 jobs" in out.getvalue() and "eta     -" in out.getvalue()
    out2 = io.StringIO()
    Progress(stream=out2)(1, 2, "2026-11-20")
    assert "1/2 days" in out2.getvalue()


def test_backtest_of_days_without_stored_data_says_so_and_exits_1(run_dir, tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{run_dir}/empty.sqlite3", "SPX_RUNTIME_RUN_DIR": str(run_dir)}
    p = subprocess.run([sys.executable, "-m", "services.cli.main", "backtest", "2026-11-19", "2026-11-20",
                        "--out", str(tmp_path / "r"), "--quiet", "--workers", "1"],
                       cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "no stored data for 2 days of 2 days (2026-11-19, 2026-11-20)" in p.stderr
    assert "spx backfill" in p.stderr and "Traceback" not in p.stderr


def test_replay_of_a_time_before_the_aggregators_watermark_warns_first(monkeypatch):
    later = 1795185135890465721  # 2026-11-20 09:32:15 ET: the embedded default's replayed day
    earlier = 1381132800000000000  # 2013-10-07 04:00:00 ET: a real flat file
    monkeypatch.setattr(replay_cmd, "call", lambda *a, **kw: {"service": "aggregator", "watermark_ns": later})
    assert replay_cmd.aggregator_watermark() == later
    warning = replay_cmd.late_warning(later, earlier)
    assert "closed up to 2026-11-20 09:32:15 ET" in warning and "starts at 2013-10-07 04:00:00 ET" in warning
    assert "spx restart aggregator" in warning
    assert replay_cmd.late_warning(earlier, later) is None  # a later time replays into it as live would
    assert replay_cmd.late_warning(None, earlier) is None  # no aggregator running


def test_replay_reads_no_watermark_from_an_absent_or_finished_aggregator(monkeypatch):
    def down(*a, **kw):
        raise replay_cmd.RpcError("timeout", "no reply")
    monkeypatch.setattr(replay_cmd, "call", down)
    assert replay_cmd.aggregator_watermark() is None
    monkeypatch.setattr(replay_cmd, "call", lambda *a, **kw: {"watermark_ns": FINAL_NS})
    assert replay_cmd.aggregator_watermark() is None


def test_status_heartbeat_ages_have_the_same_two_decimals():
    from services.cli.commands import mesh as mesh_cmd

    assert mesh_cmd.hb_age_text(1.0) == "1.00s" and mesh_cmd.hb_age_text(0.04) == "0.04s"
    assert mesh_cmd.hb_age_text(None) == "-"
