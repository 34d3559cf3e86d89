"""A plugin that runs out of memory in an isolated worker: the worker answers with the error and its limit and
keeps serving (the worker's own code, in this process, on a pipe; the memory limit itself is not applied here)."""

from __future__ import annotations

import os

import msgspec

from services.detector import worker as worker_mod
from services.detector.isolation import BarMsg, LoadMsg, read_frame
from spx_common.models import MicroBar

S = 1_000_000_000


def test_memory_error_is_reported_with_the_limit_and_the_worker_goes_on(monkeypatch):
    limits = []
    monkeypatch.setattr(worker_mod.resource, "setrlimit", lambda what, lim: limits.append((what, lim)))
    host_r, worker_w = os.pipe()
    worker_r, host_w = os.pipe()
    try:
        w = worker_mod.Worker(worker_r, worker_w)
        w.load(LoadMsg(kind="module", target="tests.detector.hostile.oom", mem_mb=256))
        assert limits == [(worker_mod.resource.RLIMIT_DATA, (256 * 2**20, 256 * 2**20))]
        loaded = msgspec.msgpack.decode(read_frame(host_r))
        assert loaded["op"] == "loaded" and [p["name"] for p in loaded["plugins"]] == ["oom"], loaded
        bar = MicroBar(sym="SPY", interval="1s", start_ns=10 * S, open=1.0, high=1.0, low=1.0, close=1.0)
        for seq in (1, 2):  # the second call shows the worker survived the first
            w.bar(BarMsg(seq=seq, sym="SPY", reset=seq == 1, bars=[bar], now_ns=11 * S, state={}, minutes=1.0,
                         call=["oom"]))
            out = msgspec.msgpack.decode(read_frame(host_r))
            done = msgspec.msgpack.decode(read_frame(host_r))
            assert out["op"] == "out" and out["seq"] == seq and out["out"] is None, out
            assert out["error"] == "MemoryError (worker limit 256 MiB)"
            assert done["op"] == "done" and done["seq"] == seq
    finally:
        for fd in (host_r, worker_w, worker_r, host_w):
            os.close(fd)
