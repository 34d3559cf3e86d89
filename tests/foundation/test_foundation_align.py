"""``spx_common.align``: the event-time alignment core, without sockets.

The property: streams whose watermarks are honest (each stream's later items have keys at or after
its watermark) release the same sequence, in ``(key, order, stream, arrival)`` order, whatever the
interleaving of the streams and wherever ``release`` is called; bounds and idle streams are counted.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spx_common.align import FINAL_NS, Aligner


@st.composite
def streams(draw):
    """2-4 streams of ('item', key, order, label) and ('wm', ns) steps, honest watermarks, keys non-decreasing."""
    out = {}
    for s in range(draw(st.integers(2, 4))):
        name = f"s{s}"
        key = draw(st.integers(0, 5))
        steps = []
        for i in range(draw(st.integers(0, 25))):
            if draw(st.booleans()):
                key += draw(st.integers(0, 3))
                steps.append(("item", key, (draw(st.integers(0, 1)),), f"{name}#{i}"))
            else:  # a watermark at most the next key: every later item is at or after it
                steps.append(("wm", key + draw(st.integers(0, 1)) if not steps or steps[-1][0] == "wm" else key))
        steps.append(("wm", FINAL_NS))
        out[name] = steps
    return out


def _fix_watermarks(steps):
    """Keep only watermarks that are honest for what follows (no later item below them)."""
    out = []
    for i, step in enumerate(steps):
        if step[0] == "wm":
            later = [s[1] for s in steps[i + 1:] if s[0] == "item"]
            if later and step[1] > min(later):
                continue
        out.append(step)
    return out


@st.composite
def interleavings(draw):
    data = {k: _fix_watermarks(v) for k, v in draw(streams()).items()}
    orders = []
    for _ in range(3):
        pos = {k: 0 for k in data}
        seq = []
        while any(pos[k] < len(v) for k, v in data.items()):
            k = draw(st.sampled_from(sorted(k for k, v in data.items() if pos[k] < len(v))))
            seq.append((k, data[k][pos[k]], draw(st.booleans())))  # (stream, step, release after it?)
            pos[k] += 1
        orders.append(seq)
    return data, orders


def run(seq, **kw) -> tuple[list, Aligner]:
    al = Aligner(sorted({k for k, _, _ in seq}), **kw)
    for name in al.streams:  # each publisher announces a watermark at start-up, before any data flows
        al.watermark(name, 0)
    out = []
    for stream, step, rel in seq:
        if step[0] == "item":
            al.push(stream, step[1], step[2], step[3], nbytes=10)
        else:
            al.watermark(stream, step[1])
        if rel:
            out.extend(al.release())
    out.extend(al.release())
    return out, al


@settings(max_examples=150, deadline=None)
@given(interleavings())
def test_any_interleaving_releases_the_same_sequence(case):
    data, orders = case
    expect = sorted(((s[1], s[2], k, i, s[3]) for k, v in data.items()
                     for i, s in enumerate(x for x in v if x[0] == "item")))
    for seq in orders:
        got, al = run(seq)
        assert got == [e[-1] for e in expect]
        assert al.stats.late == 0 and al.stats.forced == 0 and len(al) == 0
        assert al.stats.held == 0 and al.stats.held_bytes == 0


@settings(max_examples=80, deadline=None)
@given(interleavings(), st.integers(1, 6))
def test_bounded_hold_releases_early_and_counts_it(case, cap):
    data, orders = case
    for seq in orders:
        al = Aligner(sorted(data), max_items=cap)
        for name in data:
            al.watermark(name, 0)
        out = []
        for stream, step, _ in seq:
            if step[0] == "item":
                al.push(stream, step[1], step[2], step[3])
            else:
                al.watermark(stream, step[1])
            out.extend(al.release())
            assert len(al) <= cap
        n = sum(1 for v in data.values() for s in v if s[0] == "item")
        assert sorted(out) == sorted(s[3] for v in data.values() for s in v if s[0] == "item") and len(out) == n


def test_item_waits_for_every_stream_and_ties_wait():
    al = Aligner(["feed", "aggregator"])
    al.watermark("aggregator", 0)  # announced at start: waited for from now on
    al.push("feed", 100, (1,), "tick@100")
    al.watermark("feed", 200)
    assert al.release() == []  # the aggregator is not past 100 yet
    al.watermark("aggregator", 100)
    assert al.release() == []  # a bar ending at 100 may still come: ties wait
    al.push("aggregator", 100, (0, "SPY"), "bar@100")
    al.watermark("aggregator", 101)
    assert al.release() == ["bar@100", "tick@100"]  # order: the bar before the ticks at its end
    assert al.frontier == 101


def test_idle_stream_stops_holding_back_and_bytes_are_bounded():
    al = Aligner(["feed", "aggregator"], max_bytes=100)
    al.push("feed", 1, (), "first")
    assert al.release() == ["first"]  # nobody sent a watermark: nothing to wait for
    al.watermark("aggregator", 0)
    al.watermark("feed", 50)
    al.push("feed", 10, (), "a", nbytes=60)
    assert al.release() == []
    al.idle("aggregator")
    assert al.release() == ["a"] and al.stats.forced == 0
    al.watermark("aggregator", 20)  # it is back: waited for again
    al.push("feed", 30, (), "b", nbytes=60)
    assert al.release() == []
    al.push("feed", 40, (), "c", nbytes=60)  # 120 bytes held > 100: the oldest goes early
    assert al.release() == ["b"] and al.stats.forced == 1 and al.stats.held_bytes == 60
    al.push("feed", 5, (), "late")
    assert al.stats.late == 1
    assert al.drain() == ["late", "c"]


def test_restarted_publisher_may_go_back_in_time():
    al = Aligner(["feed"])
    al.watermark("feed", 500, session="a")
    al.watermark("feed", 100, session="a")
    assert al.streams["feed"].watermark == 500  # never backwards within a session
    al.watermark("feed", 100, session="b")
    assert al.streams["feed"].watermark == 100 and al.stats.resets == 1


def test_ended_when_every_stream_announced_the_end_and_nothing_is_held():
    """A finished replay: every input's watermark is FINAL_NS and nothing waits (the detector then lets
    every session close pass, as the backtest does at the end of its data)."""
    from spx_common.align import FINAL_NS, Aligner

    al = Aligner(["feed", "aggregator"])
    assert not al.ended()  # nothing heard yet
    al.watermark("feed", FINAL_NS)
    al.push("aggregator", 5, (0,), "bar")
    assert not al.ended()  # the aggregator has not ended
    al.watermark("aggregator", FINAL_NS)
    assert not al.ended()  # its bar is still held
    assert al.release() == ["bar"] and al.ended()


@st.composite
def batched(draw):
    """Streams of events (time, label) in batches: each stream's events cut into runs two ways."""
    data = {k: _fix_watermarks(v) for k, v in draw(streams()).items()}
    orders = {k: (draw(st.integers(0, 1)),) for k in data}  # a run's events share their order
    cuts = []
    for _ in range(2):  # the same events, batched differently and interleaved differently
        seqs = {}
        for k, steps in data.items():
            out, run = [], []
            for step in steps:
                if step[0] == "item":
                    run.append((step[1], step[3]))
                    if draw(st.booleans()):
                        continue
                if run:
                    out.append(("run", run))
                    run = []
                if step[0] == "wm":
                    out.append(step)
            if run:
                out.append(("run", run))
            seqs[k] = out
        pos = {k: 0 for k in seqs}
        seq = []
        while any(pos[k] < len(v) for k, v in seqs.items()):
            k = draw(st.sampled_from(sorted(k for k, v in seqs.items() if pos[k] < len(v))))
            seq.append((k, seqs[k][pos[k]], draw(st.booleans())))
            pos[k] += 1
        cuts.append(seq)
    return data, orders, cuts


def _split(item, i, _rest_key):
    return item[:i], item[i:]


@settings(max_examples=150, deadline=None)
@given(batched())
def test_runs_release_events_in_per_event_order_whatever_the_batching(case):
    """A run is cut at the frontier and before the next held item: the released events are in the order
    they would have as one item each, however the publishers batched them."""
    data, orders, cuts = case
    expect = sorted(((s[1], orders[k], k, i, s[3]) for k, v in data.items()
                     for i, s in enumerate(x for x in v if x[0] == "item")))
    for seq in cuts:
        al = Aligner(sorted(data), splitter=_split)
        for name in al.streams:
            al.watermark(name, 0)
        got: list = []
        for stream, step, rel in seq:
            if step[0] == "run":
                times = [t for t, _ in step[1]]
                al.push(stream, times[0], orders[stream], [label for _, label in step[1]], nbytes=10 * len(times),
                        times=times)
            else:
                al.watermark(stream, step[1])
            if rel:
                got.extend(e for part in al.release() for e in part)
        got.extend(e for part in al.release() for e in part)
        assert got == [e[-1] for e in expect]
        assert al.stats.late == 0 and al.stats.forced == 0 and len(al) == 0 and al.stats.held_bytes == 0


def test_a_run_waits_past_the_frontier_and_the_rest_is_held():
    al = Aligner(["feed", "detector"], splitter=_split)
    al.watermark("feed", 0)
    al.watermark("detector", 0)
    al.push("feed", 10, (), ["q10", "q20", "q30"], times=[10, 20, 30])
    al.watermark("feed", 31)
    al.watermark("detector", 21)
    assert al.release() == [["q10", "q20"]]  # q30 may still meet a transition at 21..30
    al.push("detector", 25, (), "tr25")
    al.watermark("detector", 40)
    assert al.release() == ["tr25", ["q30"]]
    assert len(al) == 0 and al.released_key == 30
