"""``[coach]`` configuration: who is coached, and how quiet the coach is."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from spx_common.config import Section


class CoachConfig(Section):
    """Coach service: tactical alerts per user and setup, with cooldowns."""

    section: ClassVar[str] = "coach"

    users: list[str] = Field(["default"], description="Users coached on every setup (users seen on the broker's "
                             "alert./position. topics are added at runtime).")
    cooldown_s: float = Field(60.0, ge=0, le=3600, description="Event-time window in which a repeat of the same alert "
                              "kind for the same user and setup is coalesced (suppressed and counted).")
    bar_interval: str = Field("1s", pattern=r"^[0-9]{1,4}[smh]$", description="Closed bars watched for stop threats, "
                              "target touches and flow divergence.")
    stop_threat_fraction: float = Field(0.25, gt=0, lt=1, description="Stop threat when the distance left to the stop "
                                        "is at most this fraction of the entry-to-stop risk.")
    divergence_bars: int = Field(3, ge=2, le=50, description="Consecutive closed bars of opposing delta volume (while "
                                 "price does not confirm it) that make a flow divergence.")
    divergence_min_delta: float = Field(0.0, ge=0, description="Minimum |sum of delta volume| over those bars.")
    max_setups: int = Field(500, ge=10, description="Active setups tracked (oldest dropped beyond).")
    max_users: int = Field(1000, ge=1, description="Users tracked (configured plus seen).")
    prefs_refresh_s: float = Field(30.0, gt=0, description="How often users' coach preferences are re-read from the "
                                   "store (spx users set USER --coach ...).")
    feedback_window_s: float = Field(3600.0, gt=0, description="Rolling window of coach_alert_ack_rate and "
                                     "coach_alert_dismiss_rate: alerts sent in the last this many seconds and the "
                                     "users' answers to them (docs/gateway.md, op ack / dismiss).")
