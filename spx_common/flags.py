"""Staged-rollout switches, changeable at runtime without a restart.

The switches live in ``<run_dir>/flags.json`` (written atomically). ``spx flags set NAME VALUE``
writes the file and then asks every running service to reload (``flags.reload`` request);
each service also re-reads the file when its modification time changes (checked once per
heartbeat), so a missed request costs at most one second.  Services read switches through
``BusService.flags`` and react in ``on_flags(changed)``.

Turning a switch back returns the previous behaviour without losing state: switches only
gate what is published or acted on, never what is kept.

**Fail closed.** A flags file that cannot be read, is not valid JSON, holds an unknown switch or a
bad value, or is missing although one was written before (the ``flags.json.expected`` marker that
``set`` leaves beside it) puts every switch at its *safe* value: the kill switch ON, auto-execution
off, the rest at their defaults.  :attr:`FlagStore.error` says why; every process reading the same
file applies the same state, and it lasts until a valid file is written (``spx flags set``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from spx_common.errors import Refused


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    description: str
    kind: type = bool
    #: the value applied while the flags file is unreadable or invalid (fail closed); None = ``default``
    safe: Any = None

    @property
    def safe_value(self) -> Any:
        return self.default if self.safe is None else self.safe


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
             "Automatic entries on Tradier may run at all (users must still opt in; TRADIER_EXECUTION_ENABLED still "
             "applies). Exits and flatten never need it."),
        Flag("paper_auto_execution", True,
             "The paper broker takes positions automatically (sends nothing anywhere; [broker] paper_auto_execution "
             "must be on too). Exits and flatten never need it.", safe=False),
        Flag("kill_switch", False, "Refuse every new entry immediately (exits, stops and flatten always go "
             "through).", safe=True),
    )
}


class FlagError(Refused, ValueError):
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


def safe_values() -> dict[str, Any]:
    """Every switch at its fail-closed value (kill switch ON)."""
    return {name: flag.safe_value for name, flag in FLAGS.items()}


def parse_file(text: str) -> dict[str, Any]:
    """The switches of a flags file; raises :class:`FlagError` for anything that is not a JSON object of
    known switches with valid values (a file we do not fully understand is not trusted at all)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FlagError(f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FlagError(f"not a JSON object but {type(raw).__name__}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = parse_value(name, value)  # unknown names and bad values raise FlagError
    return values


class FlagStore:
    """Reads and writes ``flags.json``; ``snapshot()`` is defaults overlaid with the file, or every
    switch at its safe value while the file is invalid (:attr:`error` says why)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: object = ()  # never equal to a real (mtime, marker) pair: the first reload reads
        self._values: dict[str, Any] = {}
        self.error: str | None = None  # why the switches are failed closed; None when the file is good

    @property
    def marker(self) -> Path:
        """Left beside the file by :meth:`set`: from then on a missing file is an error, not "defaults"."""
        return self.path.with_name(self.path.name + ".expected")

    def snapshot(self) -> dict[str, Any]:
        if self.error is not None:
            return safe_values()
        return {name: self._values.get(name, flag.default) for name, flag in FLAGS.items()}

    def get(self, name: str) -> Any:
        return self.snapshot()[name]

    def _stamp(self) -> object:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        except OSError as exc:
            return ("error", repr(exc))
        return mtime, self.marker.exists()

    def _read(self) -> tuple[dict[str, Any], str | None]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            if self.marker.exists():
                return {}, f"{self.path} is missing (it was written before)"
            return {}, None  # never written: the defaults
        except (OSError, UnicodeDecodeError) as exc:
            return {}, f"{self.path} unreadable: {exc}"
        try:
            return parse_file(text), None
        except FlagError as exc:
            return {}, f"{self.path} invalid: {exc}"

    def reload(self) -> dict[str, Any]:
        """Re-read the file when it changed; return {name: new value} for switches that changed."""
        stamp = self._stamp()
        if stamp == self._mtime:
            return {}
        before = self.snapshot()
        self._values, self.error = self._read()
        self._mtime = stamp
        after = self.snapshot()
        return {k: v for k, v in after.items() if before.get(k) != v}

    def set(self, name: str, raw: Any) -> Any:
        """Write ``name`` into the file (atomically). On an invalid file, the valid file written holds
        only this switch (the others at their defaults): writing a valid file is how fail-closed ends."""
        value = parse_value(name, raw)
        self.reload()
        values = dict(self._values) if self.error is None else {}
        values[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.marker.touch()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".flags-")
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
        self.reload()
        return value
