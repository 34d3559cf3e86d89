"""The aggregator's heartbeat detail (the ``detail`` column of ``spx status``) names its event-time
watermark as a time an operator reads, not a nanosecond integer."""

from __future__ import annotations

import datetime as dt

from services.aggregator.service import watermark_text
from spx_common.align import FINAL_NS
from spx_common.calendar import ET


def test_watermark_reads_as_new_york_time_with_milliseconds():
    ns = int(dt.datetime(2026, 11, 20, 9, 30, 3, 358125, tzinfo=ET).timestamp()) * 10**9 + 358_125_724
    assert watermark_text(ns) == "09:30:03.358 ET 2026-11-20"


def test_watermark_before_the_first_event_and_after_the_last():
    assert watermark_text(0) == "-"
    assert watermark_text(FINAL_NS) == "final"
