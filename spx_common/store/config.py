"""``[store]`` configuration: which database, batch sizes, spool bounds."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from spx_common.config import RuntimeConfig, Section, env_field
from spx_common.provenance import SOURCES


class StoreConfig(Section):
    """The store (docs/store.md): database URL and the recorder's batching, spool and re-quarantine."""

    section: ClassVar[str] = "store"

    url: str = env_field(
        "",
        "SQLAlchemy URL of the database. Empty: SQLite file <run_dir>/spx.sqlite3. "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
        "DATABASE_URL",
    )
    sqlite_busy_timeout_s: float = Field(2.0, gt=0, le=60, description="SQLite lock wait before a write fails.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Recorder: most rows written per transaction.")
    queue_max: int = Field(100_000, ge=100, description="Recorder: bound of the in-memory write queue.")
    flush_s: float = Field(0.2, gt=0, le=10, description="Recorder: longest wait to fill a batch.")
    retry_s: float = Field(1.0, gt=0, le=60, description="Recorder: seconds between database retries during an outage.")
    spool_max_bytes: int = Field(1_000_000_000, ge=1_000_000, description="Recorder: bound of the outage spool file.")
    requarantine_window_s: float = Field(
        20 * 86400.0, gt=0, description="Rolling window (event time) for automatic re-quarantine of setup families.")
    requarantine_every_s: float = Field(300.0, gt=0, description="How often (event time) the recorder re-checks floors.")
    optimizer_sources: list[str] = Field(
        ["live"], description="Provenance of the setup rows the optimizer's rolling window (auto-quarantine, live "
        "statistics) reads: live only by default, so a demo, a replay or a backtest never quarantines a detector "
        "(values: live, replay, synthetic, backtest, backfill).")
    record_bar_symbols: list[str] = Field(["SPY", "I:SPX"], description="Recorder: symbols whose closed bars are "
                                          "stored (what 'spx backtest' reads at second resolution).")
    record_bar_interval: str = Field("1s", description="Recorder: interval of the stored bars.")

    @field_validator("optimizer_sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:

        bad = [x for x in v if x not in SOURCES]
        if bad:
            raise ValueError(f"unknown source(s) {bad}; use {', '.join(SOURCES)}")
        return v

    def resolved_url(self, runtime: RuntimeConfig) -> str:
        """The configured URL, or the default SQLite file under the run directory."""
        if self.url:
            return self.url
        path = runtime.path("spx.sqlite3")
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
