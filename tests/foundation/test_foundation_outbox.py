"""The publisher's outbox journal (spx_common/outbox.py ``Outbox``): kept frames are journalled before
they are sent, survive a SIGKILL of the publishing process, come back into the next session's
replay ring in publish order, and the journal stays within its size and age bounds; a torn or
damaged journal is refused record by record (counted), never a crash."""

from __future__ import annotations

import os
import sys
import textwrap

import zmq

from spx_common.bus import Outbox, Publisher, Subscriber
from spx_common.codec import decode_frames
from spx_common.models import SetupTransition
from spx_testing import ServiceProcess
from tests.conftest import eventually

S = 1_000_000_000
T0 = 1_795_185_000 * S


def _tr(i: int, ts: int | None = None) -> SetupTransition:
    return SetupTransition(setup_id=f"s{i:05d}", detector="probe", family="probe", sym="SPY", direction="long",
                           from_state=None, to_state="forming", reason="test", ts=T0 + i if ts is None else ts,
                           price=None, entry_low=100.0, entry_high=101.0, stop=99.0, targets=[102.0])


def _publisher(ctx, tmp_path, name="detector", **kw):
    pub = Publisher(ctx, f"ipc://{tmp_path}/{name}.{os.urandom(4).hex()}.pub", name, linger_ms=0)
    pub.keep(("setup.transition",), 20_000)
    loaded = pub.attach_outbox(Outbox(tmp_path / "outbox" / f"{name}.bin", **kw))
    return pub, loaded


def _ids(frames) -> list[str]:
    return [decode_frames([t.encode(), p]).body().setup_id for t, p in frames]


def test_kept_frames_come_back_into_the_next_sessions_replay_ring_in_order(tmp_path):
    ctx = zmq.Context()
    try:
        pub, loaded = _publisher(ctx, tmp_path)
        assert loaded == []
        for i in range(5):
            pub.publish("setup.transition", "setup_transition", _tr(i), T0 + i)
        pub.publish("state.market", "doc", {"x": 1}, T0)  # not kept, not journalled
        first = pub.session
        pub.close()
        pub.outbox.close()

        pub2, loaded = _publisher(ctx, tmp_path)
        assert _ids(loaded) == [f"s{i:05d}" for i in range(5)]
        assert {decode_frames([t.encode(), p]).session for t, p in loaded} == {first}  # as published
        pub2.publish("setup.transition", "setup_transition", _tr(5), T0 + 5)
        assert _ids(pub2.replay()) == [f"s{i:05d}" for i in range(6)]
        assert pub2.outbox.m_loaded.total() == 5
        pub2.close()
        pub2.outbox.close()
        _, loaded = _publisher(ctx, tmp_path)  # the third session sees both earlier ones
        assert _ids(loaded) == [f"s{i:05d}" for i in range(6)]
    finally:
        ctx.destroy(linger=0)


def test_frames_sent_right_before_a_sigkill_are_in_the_outbox(tmp_path):
    """A real process publishes and is SIGKILLed right after its last send: every frame was journalled
    (written before sent; page-cache writes survive the kill), and what a subscriber received is a
    prefix of the journal, in the same order."""
    ep = f"ipc://{tmp_path}/victim.pub"
    child = textwrap.dedent(f"""
        import os, select, signal, sys, zmq
        sys.path.insert(0, {os.getcwd()!r})
        from pathlib import Path
        from spx_common.bus import Outbox, Publisher
        from tests.foundation.test_foundation_outbox import _tr, T0
        ctx = zmq.Context()
        pub = Publisher(ctx, {ep!r}, "detector", linger_ms=0)
        pub.keep(("setup.transition",), 20_000)
        pub.attach_outbox(Outbox(Path({str(tmp_path)!r}) / "outbox" / "detector.bin"))
        while not select.select([sys.stdin], [], [], 0.05)[0]:
            pub.heartbeat(T0)  # until the subscriber says it hears us
        for i in range(300):
            pub.publish("setup.transition", "setup_transition", _tr(i), T0 + i)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    ctx = zmq.Context()
    proc = ServiceProcess([sys.executable, "-c", child], name="publisher", stdin=True, ok_codes=(-9,))
    try:
        with proc:
            sub = Subscriber(ctx, [ep], ["setup.transition"])
            proc.wait_ready(lambda: (sub.recv(0.05), "detector" in sub.core.peers)[1], 20, what="the child's heartbeat")
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            seen = []
            while (f := sub.recv(2.0)) is not None:
                seen.append(f.body().setup_id)
            assert proc.wait(20) == -9  # it SIGKILLed itself after the last publish
            _, loaded = _publisher(ctx, tmp_path)
            assert _ids(loaded) == [f"s{i:05d}" for i in range(300)]
            assert seen == _ids(loaded)[:len(seen)]
            sub.close()
    finally:
        ctx.destroy(linger=0)


def test_a_torn_tail_and_a_damaged_record_are_refused_and_counted(tmp_path):
    ctx = zmq.Context()
    try:
        pub, _ = _publisher(ctx, tmp_path)
        for i in range(4):
            pub.publish("setup.transition", "setup_transition", _tr(i), T0 + i)
        pub.close()
        pub.outbox.close()
        path = tmp_path / "outbox" / "detector.bin"
        data = bytearray(path.read_bytes())
        rec = len(data) // 4
        data[rec + rec // 2] ^= 0xFF  # the second record's contents damaged
        data += data[:rec // 3]  # a write cut short
        path.write_bytes(bytes(data))
        pub2, loaded = _publisher(ctx, tmp_path)
        assert _ids(loaded) == ["s00000", "s00002", "s00003"]
        assert pub2.outbox.m_refused.value(reason="crc") == 1 and pub2.outbox.m_refused.value(reason="torn") == 1
        # the journal was rewritten clean: what is appended now is readable after it
        pub2.publish("setup.transition", "setup_transition", _tr(9), T0 + 9)
        pub2.close()
        pub2.outbox.close()
        _, loaded = _publisher(ctx, tmp_path)
        assert _ids(loaded) == ["s00000", "s00002", "s00003", "s00009"]
        path.write_bytes(os.urandom(5000))  # garbage: refused, empty ring, never a crash
        _, loaded = _publisher(ctx, tmp_path)
        assert loaded == []
    finally:
        ctx.destroy(linger=0)


def test_the_journal_stays_within_its_size_bound_and_keeps_the_newest_contiguous_tail(tmp_path):
    ctx = zmq.Context()
    try:
        pub, _ = _publisher(ctx, tmp_path, max_bytes=64 << 10)
        path = tmp_path / "outbox" / "detector.bin"
        for i in range(2000):
            pub.publish("setup.transition", "setup_transition", _tr(i), T0 + i)
            assert path.stat().st_size <= 64 << 10
        assert pub.outbox.m_compactions.total() >= 2
        pub.close()
        pub.outbox.close()
        _, loaded = _publisher(ctx, tmp_path, max_bytes=64 << 10)
        ids = _ids(loaded)
        assert ids[-1] == "s01999" and len(ids) > 50
        assert ids == [f"s{i:05d}" for i in range(2000 - len(ids), 2000)]  # contiguous: nothing skipped
    finally:
        ctx.destroy(linger=0)


def test_frames_older_than_the_age_bound_in_event_time_are_dropped_at_load(tmp_path):
    ctx = zmq.Context()
    try:
        pub, _ = _publisher(ctx, tmp_path, max_age_ns=3600 * S)
        pub.publish("setup.transition", "setup_transition", _tr(0, T0), T0)
        pub.publish("setup.transition", "setup_transition", _tr(1, T0 + 7200 * S), T0 + 7200 * S)
        pub.publish("setup.transition", "setup_transition", _tr(2, T0 + 7300 * S), T0 + 7300 * S)
        pub.close()
        pub.outbox.close()
        _, loaded = _publisher(ctx, tmp_path, max_age_ns=3600 * S)
        assert _ids(loaded) == ["s00001", "s00002"]
    finally:
        ctx.destroy(linger=0)


def test_an_unwritable_outbox_is_counted_and_the_frame_is_still_sent(tmp_path):
    (tmp_path / "outbox").write_text("a file where the directory should be")
    ctx = zmq.Context()
    try:
        pub, loaded = _publisher(ctx, tmp_path)
        assert loaded == []
        sub = Subscriber(ctx, [pub.endpoint], ["setup.transition"])
        got = []

        def received():
            pub.publish("setup.transition", "setup_transition", _tr(len(got)), T0)
            f = sub.recv(0.1)
            if f is not None:
                got.append(f)
            return got
        eventually(received, 10, what="frames still sent")
        assert pub.outbox.m_errors.total() >= 1 and pub.outbox.m_written.total() == 0
        assert len(pub.replay()) >= 1  # still in the in-memory ring
        sub.close()
    finally:
        ctx.destroy(linger=0)


def test_an_unreadable_journal_is_left_alone_counted_and_publishing_goes_on(tmp_path):
    (tmp_path / "outbox" / "detector.bin").mkdir(parents=True)  # a directory where the journal should be
    ctx = zmq.Context()
    try:
        pub, loaded = _publisher(ctx, tmp_path)
        assert loaded == [] and pub.outbox.m_refused.value(reason="unreadable") == 1
        pub.publish("setup.transition", "setup_transition", _tr(0), T0)
        assert pub.outbox.m_errors.total() >= 1 and len(pub.replay()) == 1
        assert (tmp_path / "outbox" / "detector.bin").is_dir()  # not replaced by an empty journal
        pub.close()
    finally:
        ctx.destroy(linger=0)


def test_an_outbox_of_the_earlier_framing_is_reloaded_and_migrated_once(tmp_path):
    """A publisher upgraded with frames in its outbox: the earlier framing (``<IIH>`` head, CRC, no magic)
    is read into the replay ring, and the file is rewritten in the record log's framing."""
    import struct
    import zlib

    from spx_common import recordlog
    from spx_common.codec import encode_payload

    def old_record(i: int) -> bytes:
        topic = b"setup.transition"
        payload = encode_payload("setup_transition", _tr(i), src="detector", session="old", seq=i + 1,
                                 event_ns=T0 + i)
        rest = len(topic).to_bytes(2, "little") + topic + payload
        return struct.pack("<II", len(rest), zlib.crc32(rest)) + rest

    path = tmp_path / "outbox" / "detector.bin"
    path.parent.mkdir()
    path.write_bytes(b"".join(old_record(i) for i in range(3)) + old_record(3)[:20])  # + a torn tail
    ctx = zmq.Context()
    try:
        pub, loaded = _publisher(ctx, tmp_path)
        assert _ids(loaded) == ["s00000", "s00001", "s00002"] and pub.outbox.m_refused.value(reason="torn") == 1
        assert not recordlog.is_legacy(path)
        pub.publish("setup.transition", "setup_transition", _tr(7), T0 + 7)
        pub.close()
        pub.outbox.close()
        _, loaded = _publisher(ctx, tmp_path)
        assert _ids(loaded) == ["s00000", "s00001", "s00002", "s00007"]
    finally:
        ctx.destroy(linger=0)
