"""The event time a service reports in its heartbeat (``last_event_ns``, shown as the event lag in
``spx status``) is the newest real event: the end-of-input watermark a replay publishes (``FINAL_NS``)
made ``spx status`` print an event lag of -781946.7h after ``spx replay`` finished."""

from __future__ import annotations

from types import SimpleNamespace

from spx_common.align import FINAL_NS
from spx_common.service import newest_event_ns


def _frames(*ns: int):
    return [SimpleNamespace(event_ns=n) for n in ns]


def test_the_end_of_input_watermark_is_no_event_time():
    assert newest_event_ns(_frames(10, 20, FINAL_NS), 5) == 20
    assert newest_event_ns(_frames(FINAL_NS), 20) == 20  # a batch of only the final watermark keeps the last


def test_the_newest_frame_of_a_batch_wins():
    assert newest_event_ns(_frames(30, 10, 40), 5) == 40
    assert newest_event_ns([], 7) == 7
