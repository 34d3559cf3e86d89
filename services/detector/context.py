"""The read-only context a plugin sees.

``ctx.bars`` is a tuple of the host's recent closed bars; :class:`~spx_common.models.MicroBar`
is frozen, so sharing them costs nothing and no plugin can change one. ``ctx.state`` is frozen
recursively (maps become read-only mappings, lists become tuples) and ``ctx.config`` is frozen
once per engine. The per-bar cost of a context is therefore one tuple of references, whatever
``[detector] bars_kept`` is — which is what lets a 117,000-bar backtest run every built-in
detector in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from collections.abc import Mapping

from spx_common.models import MicroBar


_SCALARS = frozenset({float, int, str, bool, type(None)})


def freeze(value: Any) -> Any:
    """A deep read-only view: dicts -> MappingProxyType, lists/tuples -> tuples, scalars as they are."""
    t = type(value)
    if t is dict:
        return MappingProxyType({k: v if type(v) in _SCALARS else freeze(v) for k, v in value.items()})
    if t is list or t is tuple:
        return tuple(v if type(v) in _SCALARS else freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class DetectorContext:
    sym: str
    now_ns: int
    bars: tuple[MicroBar, ...]
    state: Mapping[str, Any]
    config: Mapping[str, Any]
    minutes_since_open: float

    @staticmethod
    def build(sym: str, now_ns: int, bars, state: dict, config: Mapping[str, Any],
              minutes_since_open: float) -> DetectorContext:
        """``state`` must be a document the caller will not reuse (it is frozen, not copied)."""
        return DetectorContext(sym, now_ns, tuple(bars), freeze(state),
                               config if isinstance(config, MappingProxyType) else freeze(dict(config)),
                               minutes_since_open)
