"""The market rules module: the condition table as data, the exclusion rule, the outlier guard, units."""

from __future__ import annotations

import json

import pytest

from spx_common import marketrules as mr
from spx_common.models import Quote, Trade

T0 = 1_700_000_000 * 1_000_000_000


def test_the_table_is_data_with_its_source_and_date():
    doc = json.loads(mr.TABLE_PATH.read_text())
    assert "/v3/reference/conditions" in doc["source"] and doc["retrieved"]
    ids = [r["id"] for r in doc["conditions"]]
    assert len(ids) == len(set(ids)) >= 40
    # the rows checked against verbatim copies of the endpoint's answer
    rules = {r["id"]: (r["updates_high_low"], r["updates_open_close"], r["updates_volume"]) for r in doc["conditions"]}
    assert rules[2] == rules[7] == rules[12] == rules[37] == (False, False, True)
    assert rules[10] == rules[32] == (True, False, True)
    assert rules[14] == rules[41] == (True, True, True)
    assert rules[16] == (False, False, False) and rules[38] == (True, True, False)


def test_a_print_is_excluded_when_any_condition_misses_a_rule_and_form_t_is_overridden():
    assert mr.excluding_conditions([14, 41]) == []  # sweep, trade-thru exempt: a regular print
    assert mr.excluding_conditions([12]) == []  # Form T: the override (extended hours make bars)
    assert mr.excluding_conditions([12, 37]) == [37]  # an odd lot stays out, extended hours or not
    for cid in (2, 5, 7, 10, 13, 15, 16, 20, 21, 22, 29, 32, 33, 37, 38, 52, 53):
        assert mr.excluding_conditions([cid]) == [cid], cid
    assert mr.excluding_conditions([999]) == []  # unknown ids never hide a trade
    assert mr.condition_name(22) == "Prior Reference Price" and mr.condition_name(999) == "unknown"


def test_volume_only_when_every_excluding_condition_still_updates_the_volume():
    assert mr.classify([14, 41]) == mr.classify([12]) == mr.classify([]) == mr.classify([999]) == 0
    for cid in (2, 5, 7, 10, 13, 20, 21, 22, 29, 32, 33, 37, 52, 53):
        assert mr.classify([cid]) == mr.EXCL_VOLUME_ONLY, cid
        assert mr.classify([12, cid, 14]) == mr.EXCL_VOLUME_ONLY, cid
    for cid in (15, 16, 38):
        assert mr.classify([cid]) == mr.classify([37, cid]) == mr.EXCL_CONDITION, cid


def test_trade_rules_flag_count_and_leave_options_to_corrections():
    rules = mr.TradeRules(keep=10)
    evs = [Trade(sym="SPY", price=1, size=5, ts=T0, cond=[14]),
           Trade(sym="SPY", price=1, size=7, ts=T0, cond=[37, 22]),
           Trade(sym="SPY", price=1, size=3, ts=T0, excl=mr.EXCL_CORRECTION),
           Trade(sym="O:SPXW261120C05900000", price=1, size=1, ts=T0, cond=[37])]
    assert rules.apply(evs) == 2
    assert [e.excl for e in evs] == [0, mr.EXCL_VOLUME_ONLY, mr.EXCL_CORRECTION, 0]
    assert rules.excluded == {"37": 1, "22": 1, "correction": 1}
    assert rules.excluded_size == {"37": 7.0, "22": 7.0, "correction": 3.0}
    assert rules.kept == [evs[1], evs[2]]
    assert "22 Prior Reference Price" in mr.explain_row(evs[1]) and "correction" in mr.explain_row(evs[2])
    assert rules.apply(evs[1:2]) == 1 and rules.excluded["37"] == 2  # flagged upstream: counted again, same flag
    assert rules.take_counts()[0]["37"] == 2 and rules.excluded == {}


def test_the_outlier_guard_is_off_by_default_and_excludes_only_prints_without_conditions():
    q = Quote(sym="SPY", bid=165.0, ask=165.02, ts=T0)
    far = Trade(sym="SPY", price=167.51, size=100, ts=T0 + 1)
    assert mr.TradeRules().apply([q, far]) == 0 and far.excl == 0
    rules = mr.TradeRules(outlier_pct=0.5)
    near = Trade(sym="SPY", price=165.5, size=100, ts=T0 + 2)  # 0.29% above the ask
    with_cond = Trade(sym="SPY", price=167.51, size=100, ts=T0 + 3, cond=[14])
    low = Trade(sym="SPY", price=163.0, size=1, ts=T0 + 4)
    assert rules.apply([q, far, near, with_cond, low]) == 2
    assert (far.excl, near.excl, with_cond.excl, low.excl) == (mr.EXCL_OUTLIER, 0, 0, mr.EXCL_OUTLIER)
    assert rules.excluded == {"outlier": 2}
    nobody = Trade(sym="QQQ", price=1000.0, size=1, ts=T0)  # no quote in force: nothing to compare with
    assert rules.apply([nobody]) == 0
    with pytest.raises(ValueError):
        mr.TradeRules(outlier_pct=-1)


def test_quote_sizes_are_shares_from_2025_11_03_new_york_and_options_are_contracts():
    assert mr.quote_size_factor("SPY", mr.SHARES_SINCE_NS - 1) == 100
    assert mr.quote_size_factor("SPY", mr.SHARES_SINCE_NS) == 1
    assert mr.quote_size_factor("O:SPY251219C00600000", 0) == 1
