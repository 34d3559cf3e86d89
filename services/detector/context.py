"""The read-only context a plugin sees (copies and immutable views only)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from spx_common.models import MicroBar

NY_OPEN_OFFSET_MIN = 0


@dataclass(frozen=True)
class DetectorContext:
    sym: str
    now_ns: int
    bars: tuple[MicroBar, ...]
    state: Mapping[str, Any]
    config: Mapping[str, Any]
    minutes_since_open: float

    @staticmethod
    def build(sym: str, now_ns: int, bars: list[MicroBar], state: dict, config: dict,
              minutes_since_open: float) -> "DetectorContext":
        import copy

        return DetectorContext(sym, now_ns, tuple(copy.copy(b) for b in bars),
                               MappingProxyType(copy.deepcopy(state)), MappingProxyType(dict(config)),
                               minutes_since_open)
