"""Rollout switch storage: parse, atomic write, change detection, and fail closed on a bad file."""

import os

import pytest

from spx_common.flags import FLAGS, FlagError, FlagStore, safe_values


def test_set_reload_reports_changes_and_fails_closed_on_a_bad_file(tmp_path):
    # behaviour changed (issue 18): a bad file used to be ignored (last good values kept); it now puts
    # every switch at its safe value, the kill switch ON, until a valid file is written
    a, b = FlagStore(tmp_path / "flags.json"), FlagStore(tmp_path / "flags.json")
    assert b.reload() == {} and b.snapshot() == {k: f.default for k, f in FLAGS.items()} and b.error is None
    a.set("auto_execution", "true")
    a.set("tick_fanout", "alice,bob")
    assert b.reload() == {"auto_execution": True, "tick_fanout": "alice,bob"}
    assert b.reload() == {}
    (tmp_path / "flags.json").write_text('{"kill_switch": false, "auto_execution": true,}')  # a trailing comma
    assert b.reload() == {"kill_switch": True, "auto_execution": False, "tick_fanout": "all",
                          "paper_auto_execution": False}
    assert b.get("kill_switch") is True and "invalid" in b.error
    restarted = FlagStore(tmp_path / "flags.json")
    assert restarted.reload() == {"kill_switch": True, "paper_auto_execution": False}  # a restart: the same
    assert restarted.snapshot() == safe_values()
    a.set("kill_switch", "false")  # writing a valid file ends it
    assert b.reload() == {"kill_switch": False, "paper_auto_execution": True} and b.error is None
    assert b.snapshot()["auto_execution"] is False  # the valid file holds only what was written


@pytest.mark.parametrize("content", ['[1, 2]', '{"kill_switch": "maybe"}', '{"no_such_switch": true}', "\xff\xfe"])
def test_invalid_content_fails_closed(tmp_path, content):
    (tmp_path / "flags.json").write_bytes(content.encode("latin-1"))
    s = FlagStore(tmp_path / "flags.json")
    s.reload()
    assert s.error and s.snapshot() == safe_values() and s.snapshot()["kill_switch"] is True


def test_missing_file_after_a_write_and_unreadable_file_fail_closed(tmp_path):
    path = tmp_path / "flags.json"
    s = FlagStore(path)
    s.set("auto_execution", "true")
    path.unlink()
    s.reload()
    assert "missing" in s.error and s.get("kill_switch") is True and s.get("auto_execution") is False
    path.write_text('{"auto_execution": true}')
    os.chmod(path, 0)
    try:
        fresh = FlagStore(path)
        fresh.reload()
        if os.geteuid() != 0:  # root reads anything
            assert "unreadable" in fresh.error and fresh.get("kill_switch") is True
    finally:
        os.chmod(path, 0o600)
    never = FlagStore(tmp_path / "other" / "flags.json")  # never written: the defaults, no error
    never.reload()
    assert never.error is None and never.get("kill_switch") is False


def test_unknown_flags_and_bad_values_are_refused(tmp_path):
    store = FlagStore(tmp_path / "flags.json")
    with pytest.raises(FlagError, match="unknown flag"):
        store.set("nope", "1")
    with pytest.raises(FlagError, match="true/false"):
        store.set("kill_switch", "maybe")
