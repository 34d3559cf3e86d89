"""Shared set-up of the restore/outbox/catch-up process tests: a real detector running the test plugin
(``tests.detector.restore_plugin``) and a real recorder, on one run directory and database."""

from __future__ import annotations

import os


def restore_env(run_dir, db_url: str) -> dict[str, str]:
    """Environment for detector and recorder processes: the test plugin only, SPY, no confirmation
    delay, no warm-up, no macro block."""
    return {**os.environ, "SPX_RUNTIME_RUN_DIR": str(run_dir), "DATABASE_URL": db_url,
            "SPX_DETECTOR_ENTRY_POINTS": "false", "SPX_DETECTOR_PLUGINS": "tests.detector.restore_plugin",
            "SPX_DETECTOR_SYMBOLS": "SPY", "SPX_DETECTOR_CONFIRM_MS": "0", "SPX_DETECTOR_WARMUP": "false",
            "SPX_DETECTOR_MACRO_BLOCK_BELOW": "-1"}
