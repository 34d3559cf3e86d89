"""Provenance: where the data behind a stored row came from, and which run made it.

Every row the store keeps (setup instances and transitions, orders, fills, positions, portfolio
snapshots, bars) carries a ``source`` and a ``run_id``:

* ``live`` - the mesh on a vendor's real-time stream (``[feed] source=live``);
* ``replay`` - the mesh replaying recorded data (the tick journal or vendor flat files);
* ``synthetic`` - the mesh replaying the generated session (the embedded default without a key);
* ``backtest`` - ``spx backtest`` (in one process, no mesh);
* ``backfill`` - vendor history imported by ``spx backfill`` (REST bars, flat files), not made by a run.

The feed is the authority: it states its source and run id in every ``status.feed``
(:class:`~spx_common.models.FeedStatus`); processes that start before they hear it use
:func:`configured` (the same configuration the feed resolves). ``spx up`` gives the whole mesh one
run id (``SPX_RUN_ID``); a process started alone uses its own session id.

Only ``live`` rows feed the optimizer's rolling window by default (``[store] optimizer_sources``),
so a demo or a replay never quarantines a detector.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from spx_common.config import FeedSourceConfig, load

if TYPE_CHECKING:
    from spx_common.models import FeedStatus

SOURCES = ("live", "replay", "synthetic", "backtest", "backfill")
ProvenanceSource = Literal["live", "replay", "synthetic", "backtest", "backfill"]
#: a row of a higher rank is never overwritten by one of a lower rank on the same natural key (bars)
RANK = {"live": 4, "backfill": 3, "replay": 2, "synthetic": 1, "backtest": 0}
RUN_ID_ENV = "SPX_RUN_ID"


def of_feed_source(kind: str) -> str:
    """The provenance of a feed source (``[feed] source`` after ``auto`` is resolved)."""
    if kind == "live":
        return "live"
    if kind == "synthetic":
        return "synthetic"
    return "replay"  # journal, flatfile, or a replay source handed in (spx replay)


def run_id(fallback: str = "") -> str:
    """The mesh's run id: ``SPX_RUN_ID`` (set by ``spx up``), else ``fallback``."""
    return os.environ.get(RUN_ID_ENV) or fallback


def configured() -> tuple[str, str]:
    """(source, run id) as this host's configuration says the feed runs (before its status is heard)."""
    try:
        kind = load(FeedSourceConfig, part=True).resolved_source()
    except Exception:  # a process must not fail on another section's configuration
        kind = "live"
    return of_feed_source(kind), run_id()


def badge(feed: FeedStatus) -> str:
    """What a status line or the dashboard shows for a :class:`~spx_common.models.FeedStatus`: ``LIVE``
    only when the feed is a vendor's stream, else ``REPLAY <date> x<speed>`` (``(synthetic)`` for the
    generated session)."""
    if feed.source == "live":
        return "LIVE"
    if not feed.source:  # a feed older than provenance: say what its mode says
        return feed.mode.upper()
    kind = "" if feed.source == "replay" else f" ({feed.source})"
    speed = f" x{feed.speed}" if feed.speed else ""
    return f"REPLAY {feed.replay_date or '?'}{speed}{kind}"
