"""Docs tied to code: every refusal reason and alert kind the broker can publish is documented."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "broker.md").read_text()


def _reasons() -> set[str]:
    found: set[str] = set()
    for f in (ROOT / "services" / "broker").glob("*.py"):
        src = f.read_text()
        found |= set(re.findall(r'OrderRefused\("([a-z_]+)"', src))
        first_arg = r'(?:[^,()]|\([^()]*\))+'  # an expression, with at most one level of parentheses
        found |= set(re.findall(r'Block\(' + first_arg + r',\s*"([a-z_]+)"', src))
        found |= set(re.findall(r'self\._block\(' + first_arg + r',\s*"([a-z_]+)"', src))
        found |= set(re.findall(r'return False, "([a-z_]+)"', src))
    return found


def test_every_block_reason_is_documented():
    reasons = _reasons()
    assert {"sell_to_open", "would_short", "kill_switch", "max_open_risk", "execution_disabled"} <= reasons
    missing = sorted(r for r in reasons if f"`{r}`" not in DOC)
    assert missing == [], f"docs/broker.md does not document: {missing}"


def test_every_alert_kind_is_documented():
    kinds = set()
    for f in (ROOT / "services" / "broker").glob("*.py"):
        src = f.read_text()
        kinds |= set(re.findall(r'self\._alert\([^,]+,\s*f?"([a-z_]+)', src))
        kinds |= set(re.findall(r'"kind":\s*"([a-z_]+)"', src))
    assert {"pdt_equity", "flatten", "exit_failed"} <= kinds
    missing = sorted(k for k in kinds if f"`{k}" not in DOC)
    assert missing == [], f"docs/broker.md does not document alert kinds: {missing}"
