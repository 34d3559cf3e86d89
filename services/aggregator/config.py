"""``[aggregator]`` configuration."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from spx_common.config import Section, env_field


class AggregatorConfig(Section):
    """The cache/aggregator: microbars (docs/microbars.md) and the bounded tick cache."""

    section: ClassVar[str] = "aggregator"

    intervals: list[str] = Field(["1s", "5s", "60s"], description="Bar intervals (1s, 5s, 250ms, 1m, ...). 60s: "
                                 "the selector's runner trail (bar_interval) and the dashboard's 1 m chart.")
    l2_microstructure: bool = env_field(
        True, "Compute quote microstructure fields; false makes them null (OHLCV unchanged).",
        "ENABLE_L2_MICROSTRUCTURE")
    fill_gaps: bool = Field(False, description="Emit zero-volume bars at the previous close for buckets "
                            "without a trade (microstructure null).")
    max_gap_bars: int = Field(3600, ge=0, le=1_000_000, description="fill_gaps fills a gap of at most this many "
                              "buckets; a longer one (a session break) is counted (aggregator_gaps_unfilled) and "
                              "left unfilled, so one far-stamped event cannot make unbounded bars.")
    allowed_lateness_ms: int = Field(250, ge=0, le=60_000, description="A bar closes when the feed's event-time "
                                     "watermark passes its end by this much (quiet markets still close bars).")
    progress_ms: int = Field(250, ge=10, description="In-progress bar updates: at most one per symbol and "
                             "interval per this many wall milliseconds.")
    cache_window_s: int = Field(600, ge=1, description="Tick cache keeps events this recent (event time).")
    cache_max_events: int = Field(200_000, ge=100, description="Tick cache bound per symbol (events).")
    cache_max_mb: int = Field(256, ge=1, le=65_536, description="Tick cache bound over all symbols (MiB of kept "
                              "msgpack batches, ~110 bytes per event); above it the oldest batches go first.")
    bars_kept: int = Field(7200, ge=10, description="Closed bars kept per symbol and interval for queries.")
    max_symbols: int = Field(5000, ge=1, description="Symbols tracked at most; more are refused and counted.")
    warmup_from_journal: bool = Field(True, description="On start, rebuild cache and bars from the newest day of "
                                      "the tick journal (its newest warmup_max_mb only).")
    warmup_max_mb: int | None = Field(64, ge=1, le=65_536, description="Warm-up reads at most this many MiB "
                                      "from the end of the journal's newest day (a restart stays within seconds "
                                      "whatever the day's size: 64 MiB is ~0.8 s of CPU). Unset: cache_max_mb, "
                                      "what fills the tick cache (~3.3 s of CPU at 256 MiB). "
                                      "Older events are not cached again; the first bars of the tail may be "
                                      "partial (docs/reliability.md, failure modes).")

    @property
    def warmup_max_bytes(self) -> int:
        """The warm-up's read bound in bytes (``warmup_max_mb``, else ``cache_max_mb``)."""
        return (self.warmup_max_mb or self.cache_max_mb) << 20

    @field_validator("intervals")
    @classmethod
    def _intervals(cls, v: list[str]) -> list[str]:
        from services.aggregator.bars import parse_interval

        for name in v:
            parse_interval(name)
        if not 1 <= len(v) <= 8:
            raise ValueError(f"give 1 to 8 bar intervals (got {len(v)})")
        return v
