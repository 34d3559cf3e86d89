"""Rollout switch storage: parse, atomic write, change detection, bad files ignored."""

import pytest

from spx_common.flags import FLAGS, FlagError, FlagStore


def test_set_reload_reports_changes_and_survives_a_bad_file(tmp_path):
    a, b = FlagStore(tmp_path / "flags.json"), FlagStore(tmp_path / "flags.json")
    assert b.reload() == {} and b.snapshot() == {k: f.default for k, f in FLAGS.items()}
    a.set("auto_execution", "true")
    a.set("tick_fanout", "alice,bob")
    assert b.reload() == {"auto_execution": True, "tick_fanout": "alice,bob"}
    assert b.reload() == {}
    (tmp_path / "flags.json").write_text("{not json")
    assert b.reload() == {} and b.get("auto_execution") is True


def test_unknown_flags_and_bad_values_are_refused(tmp_path):
    store = FlagStore(tmp_path / "flags.json")
    with pytest.raises(FlagError, match="unknown flag"):
        store.set("nope", "1")
    with pytest.raises(FlagError, match="true/false"):
        store.set("kill_switch", "maybe")
