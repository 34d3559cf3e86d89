"""Exit mechanics on scripted price paths: 1R/2R scale-outs, breakeven, pivot trailing, stops."""

import pytest

from services.selector.exits import ExitPlan, ExitPlanError, ExitRules, run_path

S = 1_000_000_000


def bars(path):
    """(high, low) pairs -> (ts, high, low) one second apart."""
    return [(i * S, hi, lo) for i, (hi, lo) in enumerate(path, 1)]


def actions(advice):
    return [(a.action, a.r_multiple) for a in advice]


def test_long_full_path_scale_breakeven_trail_and_exit():
    plan = ExitPlan("s1", "long", 100.0, 95.0, rules=ExitRules(0.5, 0.5, 2, 2, 0.5))  # R = 5, t1 105, t2 110
    path = [(101, 99), (103, 100), (105.5, 102), (108, 104), (110.2, 107),  # t1 then t2
            (111, 109), (109, 106), (112, 108), (114, 111), (115, 112),     # swing low 106 confirmed
            (113, 109), (117, 110), (118, 113), (116, 105.4)]              # higher low 109 confirmed, then stop hit
    out = run_path(plan, bars(path))
    assert actions(out) == [("scale_out", 1.0), ("move_stop", 1.0), ("scale_out", 2.0),
                            ("trail_stop", 1.2), ("trail_stop", 1.8), ("exit_all", 1.7)]
    assert out[1].stop == 100.0  # breakeven
    assert out[0].fraction == 0.5 and out[2].fraction == 0.5
    assert out[3].stop == 105.5 and out[4].stop == 108.5
    assert out[-1].reason.startswith("trailing stop 108.5")
    assert plan.trailing_stop_path == [95.0, 100.0, 105.5, 108.5] == out[-1].trailing_stop_path
    assert plan.closed and run_path(plan, bars([(200, 1)])) == []


def test_short_mirror_with_explicit_targets():
    plan = ExitPlan("s2", "short", 100.0, 104.0, targets=[97.0, 92.0], rules=ExitRules(0.25, 0.5, 1, 1, 0.25))
    path = [(100, 98), (99, 96.5), (97, 94), (95, 91.5), (94, 92), (96, 93), (95, 93.5), (96.3, 94)]
    out = run_path(plan, bars(path))
    assert [a.action for a in out] == ["scale_out", "move_stop", "scale_out", "trail_stop", "exit_all"]
    assert out[0].fraction == 0.25 and out[1].stop == 100.0
    assert out[3].stop == 96.25  # swing high 96 (bars 95/96/95) + buffer
    assert out[-1].price == 96.25 and out[-1].reason.startswith("trailing stop")


@pytest.mark.parametrize("path,expect", [
    ([(101, 94.9)], [("exit_all", -1.0)]),                                  # initial stop
    ([(105, 101), (104, 99.9)], [("scale_out", 1.0), ("move_stop", 1.0), ("exit_all", 0.0)]),  # breakeven stop
    ([(106, 94)], [("exit_all", -1.0)]),                                    # both in one bar: stop first
    ([(111, 101)], [("scale_out", 1.0), ("move_stop", 1.0), ("scale_out", 2.0)]),  # gap through both targets
    ([(104.9, 95.1)] * 5, []),                                              # nothing touched
])
def test_scripted_paths(path, expect):
    assert actions(run_path(ExitPlan("s", "long", 100, 95), bars(path))) == expect


def test_pivots_only_trail_the_runner_and_never_loosen():
    plan = ExitPlan("s", "long", 100, 95, rules=ExitRules(pivot_left=1, pivot_right=1, trail_buffer=0))
    out = run_path(plan, bars([(102, 99), (101, 97), (103, 100)]))  # pivot 97 before target 1: no trail
    assert out == [] and plan.last_pivot == 97 and plan.stop == 95
    out = run_path(plan, bars([(111, 103), (110, 104), (112, 108), (111, 103.5), (113, 109)]))
    assert [a.action for a in out] == ["scale_out", "move_stop", "scale_out", "trail_stop"]
    assert plan.stop == 103.5 and plan.trailing_stop_path == [95, 100, 103.5]
    # a pivot below the current stop (seen only on the pivot series) never loosens it
    assert plan.on_pivot_bar(115, 110, 1) == [] and plan.on_pivot_bar(114, 101, 2) == []
    assert plan.on_pivot_bar(116, 112, 3) == [] and plan.last_pivot == 101 and plan.stop == 103.5


def test_pivot_interval_aggregates_price_bars():
    plan = ExitPlan("s", "long", 100, 95, rules=ExitRules(pivot_left=1, pivot_right=1, trail_buffer=0))
    run_path(plan, bars([(111, 101)]))
    out = run_path(plan, bars([(112, 108), (111, 107), (110, 106), (109, 104), (113, 109), (114, 110)]),
                   pivot_every=2)  # pivot bars: (112,107) (110,104) (114,109)
    assert [a.stop for a in out] == [104]


@pytest.mark.parametrize("kw", [dict(direction="long", entry=100, stop=101), dict(direction="short", entry=100, stop=99),
                                dict(direction="up", entry=100, stop=99), dict(direction="long", entry=float("nan"), stop=9)])
def test_bad_plans_are_refused_clearly(kw):
    with pytest.raises(ExitPlanError):
        ExitPlan("s", **kw)


def test_bad_bars_are_ignored():
    plan = ExitPlan("s", "long", 100, 95)
    assert plan.on_price_bar(float("nan"), 90, 1) == [] and plan.on_price_bar(90, 99, 1) == []
    assert plan.on_pivot_bar(float("inf"), 1, 1) == [] and not plan.closed
