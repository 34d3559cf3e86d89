"""Staged-rollout switches, changeable at runtime without a restart.

The switches live in ``<run_dir>/flags.json`` (written atomically). ``spx flags set NAME VALUE``
writes the file and then asks every running service to reload (``flags.reload`` request);
each service also re-reads the file when its modification time changes (checked once per
heartbeat), so a missed request costs at most one second.  Services read switches through
``BusService.flags`` and react in ``on_flags(changed)``.

Turning a switch back returns the previous behaviour without losing state: switches only
gate what is published or acted on, never what is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    description: str
    kind: type = bool


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag("tick_ingest_passive", False,
             "Feed ingests and journals ticks but does not fan them out (no tick.* frames)."),
        Flag("tick_fanout", "all",
             "Who receives tick-cadence prices on the gateway: 'all', 'none' (everyone falls back to the "
             "poll cadence), or a comma-separated allow-list of users.", str),
        Flag("evaluator_logging_only", False,
             "Setup lifecycle transitions are computed and recorded but not published to users."),
        Flag("tactical_alerts", True, "User-visible coach tactical alerts."),
        Flag("l2_microstructure", True,
             "Microstructure fields on bars (ENABLE_L2_MICROSTRUCTURE); off makes them null, OHLCV unchanged."),
        Flag("auto_execution", False,
             "Auto-execution may run at all (users must still opt in; Tradier flags still apply)."),
        Flag("kill_switch", False, "Refuse every new order immediately (exits still allowed)."),
    )
}


class FlagError(ValueError):
    pass


def parse_value(name: str, raw: Any) -> Any:
    flag = FLAGS.get(name)
    if flag is None:
        raise FlagError(f"unknown flag {name!r}; known: {', '.join(sorted(FLAGS))}")
    if flag.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "on", "yes"):
            return True
        if text in ("0", "false", "off", "no"):
            return False
        raise FlagError(f"flag {name} takes true/false, not {raw!r}")
    return flag.kind(raw)


class FlagStore:
    """Reads and writes ``flags.json``; ``snapshot()`` is defaults overlaid with the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._values: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        return {name: self._values.get(name, flag.default) for name, flag in FLAGS.items()}

    def get(self, name: str) -> Any:
        return self._values.get(name, FLAGS[name].default)

    def reload(self) -> dict[str, Any]:
        """Re-read the file when it changed; return {name: new value} for switches that changed."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return {}
        before = self.snapshot()
        values: dict[str, Any] = {}
        if mtime is not None:
            try:
                raw = json.loads(self.path.read_text())
                for name, value in raw.items():
                    if name in FLAGS:
                        values[name] = parse_value(name, value)
            except (OSError, ValueError):
                return {}  # keep the last good values; a half-written or bad file is ignored
        self._mtime = mtime
        self._values = values
        after = self.snapshot()
        return {k: v for k, v in after.items() if before.get(k) != v}

    def set(self, name: str, raw: Any) -> Any:
        value = parse_value(name, raw)
        self.reload()
        values = dict(self._values)
        values[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".flags-")
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
        return value
