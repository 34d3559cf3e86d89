"""``spx db`` and ``spx profile`` against a real database on both engines."""

from __future__ import annotations

from services.cli.main import main


def spx(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_db_and_profile_commands(db_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert spx(capsys, "db", "current")[0] == 3
    code, out = spx(capsys, "db", "upgrade")
    assert code == 0 and "at revision 0006" in out
    code, out = spx(capsys, "db", "current")
    assert code == 0 and "up to date" in out
    code, out = spx(capsys, "profile", "show")
    assert code == 0 and "version 0" in out
    code, out = spx(capsys, "profile", "set", "orb", "--quarantine", "--reason", "bad week")
    assert code == 0 and "QUARANTINED" in out
    assert spx(capsys, "profile", "set", "fade", "--disable", "--min-trades", "50")[0] == 0
    code, out = spx(capsys, "profile", "history")
    assert code == 0 and out.index("v2") < out.index("v1")
    code, out = spx(capsys, "profile", "revert", "1")
    assert code == 0 and "version 3 is a copy of version 1" in out
    from spx_common.store import get_active_profile

    p = get_active_profile(db_url)
    assert p.version == 3 and not p.allows("orb") and p.allows("fade")
    code, out = spx(capsys, "profile", "revert", "42")
    assert code == 2 and "no profile version 42" in out
