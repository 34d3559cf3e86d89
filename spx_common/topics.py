"""Every topic on the bus, named once: prefixes to subscribe to and builders for the topics published.

A subscription is a prefix (ZeroMQ matches topic bytes from the start): ``BAR`` receives every bar,
``bar_topic("1s", "SPY")`` is one series. The table of topics, what each carries and who publishes it is
in docs/protocol.md; services and the CLI take the strings from here, never write them out.

``tick.<sym>`` carries a stock's or an index's ticks (``tick.SPY``, ``tick.I:SPX``). Options travel by
root: the events of every ``O:SPXW...`` contract in one vendor batch are one ``tick.O:SPXW`` frame. A 0DTE
stream touches ~80 contracts a few events at a time, and one frame per contract made the per-frame cost
(publish, receive, envelope, dispatch: in the feed and in each of four subscribers) the largest CPU cost
of the mesh at 50,000 events/s (docs/performance.md). So a consumer of option ticks reads each event's
``sym``; :func:`group_by_symbol` splits a batch when it needs each contract apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from spx_common.models import MarketEvent

__all__ = [
    "ALERT", "AVAILABILITY_FEED", "BAR", "BLOCK", "CHAIN", "COACH", "EXIT", "FEEDBACK_COACH", "FILL", "HEARTBEAT",
    "OPTION_TICK", "ORDER", "PORTFOLIO", "POSITION", "RECO", "SETUP_CANDIDATE", "SETUP_SHADOW", "SETUP_TRANSITION",
    "STATE_MARKET", "STATUS", "STATUS_BACKFILL", "STATUS_DETECTOR_PLUGIN", "STATUS_FEED", "TICK", "WATERMARK",
    "alert_topic",
    "bar_topic", "block_topic", "chain_topic", "coach_topic", "exit_topic", "fill_topic", "group_by_symbol",
    "heartbeat_topic", "is_one_symbol", "order_topic", "portfolio_topic", "position_topic", "reco_topic",
    "tick_topic", "watermark_topic",
]

# ---------------------------------------------------------------- prefixes and single topics

TICK = "tick."  #: every tick: ``tick.<sym>``, options by root ``tick.O:<root>`` (:func:`tick_topic`)
OPTION_TICK = "tick.O:"  #: every option tick
BAR = "bar."  #: every bar: ``bar.<interval>.<sym>`` (:func:`bar_topic`)
CHAIN = "chain."  #: option chain snapshots: ``chain.<root>``
SETUP_CANDIDATE = "setup.candidate"
SETUP_TRANSITION = "setup.transition"
SETUP_SHADOW = "setup.shadow"  #: transitions of detectors running in shadow mode (never traded)
STATE_MARKET = "state.market"
STATUS = "status."  #: every status document
STATUS_FEED = "status.feed"
STATUS_BACKFILL = "status.backfill"
STATUS_DETECTOR_PLUGIN = "status.detector.plugin"
AVAILABILITY_FEED = "availability.feed"
BLOCK = "block."  #: refusals: ``block.<service>``
RECO = "reco."  #: contract recommendations: ``reco.<setup_id>``
EXIT = "exit."  #: exit advice: ``exit.<setup_id>``
ORDER = "order."  #: per user: ``order.<user>``
FILL = "fill."
POSITION = "position."
PORTFOLIO = "portfolio."
ALERT = "alert."
COACH = "coach."
FEEDBACK_COACH = "feedback.coach"
HEARTBEAT = "hb."  #: ``hb.<service>``, every process once a second
WATERMARK = "wm."  #: ``wm.<instance>``: event time up to which a publisher's output is complete


# ---------------------------------------------------------------- builders


def bar_topic(interval: str, sym: str) -> str:
    """``bar.<interval>.<sym>``, e.g. ``bar.1s.SPY``."""
    return f"{BAR}{interval}.{sym}"


def chain_topic(root: str) -> str:
    return CHAIN + root


def block_topic(service: str) -> str:
    return BLOCK + service


def reco_topic(setup_id: str) -> str:
    return RECO + setup_id


def exit_topic(setup_id: str) -> str:
    return EXIT + setup_id


def order_topic(user: str) -> str:
    return ORDER + user


def fill_topic(user: str) -> str:
    return FILL + user


def position_topic(user: str) -> str:
    return POSITION + user


def portfolio_topic(user: str) -> str:
    return PORTFOLIO + user


def alert_topic(user: str) -> str:
    return ALERT + user


def coach_topic(user: str) -> str:
    return COACH + user


def heartbeat_topic(service: str) -> str:
    return HEARTBEAT + service


def watermark_topic(instance: str) -> str:
    return WATERMARK + instance


def tick_topic(sym: str) -> str:
    """The topic that carries ``sym``'s ticks: ``tick.<sym>``, or ``tick.O:<root>`` for an option."""
    if sym.startswith("O:") and len(sym) > 17:  # Massive form: O: + root + 15 characters
        return OPTION_TICK + sym[2:-15]
    return TICK + sym


def is_one_symbol(topic: str, events: Sequence[MarketEvent]) -> bool:
    """True when a ``ticks`` frame on ``topic`` is one symbol's batch (``tick.<sym>``), not a root's."""
    return bool(events) and topic[5:] == events[0].sym


def group_by_symbol(events: Sequence[MarketEvent]) -> dict[str, list[MarketEvent]]:
    """``{sym: its events in batch order}``, symbols in order of first appearance."""
    out: dict[str, list[MarketEvent]] = {}
    for ev in events:
        evs = out.get(ev.sym)
        if evs is None:
            out[ev.sym] = [ev]
        else:
            evs.append(ev)
    return out
