"""The record log (spx_common/recordlog.py) every append-only file of the mesh uses: torn writes at every
byte of the last record, bit flips anywhere in a record, a full disk (injected and a real file-size limit),
the fsync policy, and the files of the earlier framings still read."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from spx_common import recordlog
from spx_common.recordlog import (ALWAYS, CURRENT, LEGACY_BE, LEGACY_LE, LEGACY_OUTBOX, MAGIC, NEVER,
                                  FsyncPolicy, LegacyFile, RecordWriter, ScanStats)

PAYLOADS = [f"record {i:02d} ".encode() * (i % 3 + 1) for i in range(6)]


def _write(path, payloads=PAYLOADS, **kw) -> RecordWriter:
    w = RecordWriter(path, **kw)
    w.append(payloads)
    w.close()
    return w


def _read(path, legacy=None) -> tuple[list[bytes], ScanStats]:
    st = ScanStats()
    return list(recordlog.iter_file(path, legacy, st)), st


def _offsets(blob: bytes) -> list[int]:
    return [off for off, _ in recordlog.scan(blob)]


def test_records_round_trip_behind_the_magic_and_the_file_is_private(tmp_path):
    path = tmp_path / "sub" / "log.bin"
    _write(path)
    blob = path.read_bytes()
    assert blob.startswith(MAGIC) and len(blob) == len(MAGIC) + sum(8 + len(p) for p in PAYLOADS)
    assert _read(path)[0] == PAYLOADS
    assert os.stat(path).st_mode & 0o777 == 0o600
    w = RecordWriter(path)  # a second session appends after the first
    w.append([b"more"])
    w.close()
    assert _read(path)[0] == [*PAYLOADS, b"more"]
    assert _read(tmp_path / "missing")[0] == [] and recordlog.recover(tmp_path / "missing").torn == 0


def test_a_write_torn_at_every_byte_of_the_last_record_loses_only_that_record(tmp_path):
    path = tmp_path / "log.bin"
    _write(path)
    whole = path.read_bytes()
    last = _offsets(whole)[-1]
    for cut in range(last + 1, len(whole)):
        path.write_bytes(whole[:cut])
        records, st = _read(path)
        assert records == PAYLOADS[:-1] and (st.torn, st.corrupt) == (1, 0), cut
        rec = recordlog.recover(path)
        assert rec.torn == 1 and path.stat().st_size == last, cut  # cut back to the last good record
        w = RecordWriter(path)
        w.append([b"after"])
        w.close()
        assert _read(path)[0] == [*PAYLOADS[:-1], b"after"], cut
    path.write_bytes(whole[:last])  # cut exactly between records: nothing torn
    assert _read(path)[1].torn == 0 and recordlog.recover(path).torn == 0 and path.stat().st_size == last


def test_a_torn_magic_is_an_empty_log(tmp_path):
    path = tmp_path / "log.bin"
    for cut in range(1, len(MAGIC)):
        path.write_bytes(MAGIC[:cut])
        assert _read(path)[0] == []
        _write(path, [b"x"])
        assert _read(path)[0] == [b"x"]


@pytest.mark.parametrize("victim", [0, 2])
def test_a_bit_flipped_anywhere_in_a_record_skips_it_counted_and_keeps_the_others(tmp_path, victim):
    path = tmp_path / "log.bin"
    _write(path)
    whole = path.read_bytes()
    offs = _offsets(whole)
    start, stop = offs[victim], offs[victim + 1]
    for byte in range(start, stop):
        for bit in range(8):
            data = bytearray(whole)
            data[byte] ^= 1 << bit
            path.write_bytes(bytes(data))
            records, st = _read(path)
            assert records == PAYLOADS[:victim] + PAYLOADS[victim + 1:], (byte, bit)
            assert (st.corrupt, st.torn, st.records) == (1, 0, len(PAYLOADS) - 1), (byte, bit)
            assert st.skipped_bytes == stop - start
            assert recordlog.recover(path).torn == 0 and path.stat().st_size == len(whole)  # never cut


def test_a_flipped_bit_in_the_last_record_is_its_torn_tail(tmp_path):
    path = tmp_path / "log.bin"
    _write(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    records, st = _read(path)
    assert records == PAYLOADS[:-1] and (st.torn, st.corrupt) == (1, 0)


def test_garbage_and_damage_between_good_records_are_skipped_by_resynchronising(tmp_path):
    path = tmp_path / "log.bin"
    blob = MAGIC + recordlog.encode(b"a") + os.urandom(3000) + recordlog.encode_many([b"b", b"c"])
    path.write_bytes(blob)
    records, st = _read(path)
    assert records == [b"a", b"b", b"c"] and st.corrupt == 1 and st.skipped_bytes == 3000
    path.write_bytes(MAGIC + os.urandom(5000))
    assert _read(path)[0] == [] and _read(path)[1].torn == 1


class FullDisk:
    """``os.write`` on a disk with ``room`` bytes left: a short write, then ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, data[:self.room])
        self.room -= n
        return n


def test_a_full_disk_mid_append_leaves_no_torn_record_and_raises(tmp_path):
    path = tmp_path / "log.bin"
    _write(path)
    size = path.stat().st_size
    kept = list(PAYLOADS)
    for room in (0, 1, 7, 8, 20, 45):
        disk = FullDisk(room)
        w = RecordWriter(path, write=disk)
        with pytest.raises(OSError) as exc:
            w.append([b"x" * 30, b"y" * 30])  # one append: all of it or none of it
        assert exc.value.errno == errno.ENOSPC
        assert path.stat().st_size == size and w.size == size, room
        disk.room = 1 << 20  # space again: the same writer goes on
        w.append([b"z"])
        w.close()
        kept.append(b"z")
        assert _read(path) == (kept, ScanStats(records=len(kept), end=size + 9))
        size = path.stat().st_size


def test_a_real_file_size_limit_in_a_process_never_tears_the_log(tmp_path):
    """RLIMIT_FSIZE in a child (a real kernel refusal, EFBIG, as a full disk would give ENOSPC): the
    appends past the limit fail whole, the ones before it are all readable."""
    path = tmp_path / "log.bin"
    code = textwrap.dedent(f"""
        import os, resource, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from spx_common.recordlog import RecordWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        w = RecordWriter({str(path)!r})
        ok = failed = 0
        for i in range(200):
            try:
                w.append([b"%05d" % i * 20])
                ok += 1
            except OSError:
                failed += 1
        print(ok, failed)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ok, failed = map(int, r.stdout.split())
    assert ok > 10 and failed > 0 and ok + failed == 200
    records, st = _read(path)
    assert records == [b"%05d" % i * 20 for i in range(ok)] and st.torn == 0 and st.corrupt == 0
    assert path.stat().st_size <= 4096


def test_fsync_policy(tmp_path):
    calls: list[int] = []
    for policy, appends, expected in ((NEVER, 3, 0), (ALWAYS, 3, 3), (FsyncPolicy(3600.0), 3, 1)):
        calls.clear()
        w = RecordWriter(tmp_path / f"{policy.every_s}.bin", fsync=policy, sync_fd=calls.append)
        for _ in range(appends):
            w.append([b"x"])
        assert len(calls) == (0 if policy is NEVER else 3 if policy is ALWAYS else 0), policy
        w.close()  # a policy that syncs at all syncs what is left at close
        assert len(calls) == expected, policy
    calls.clear()
    w = RecordWriter(tmp_path / "override.bin", fsync=NEVER, sync_fd=calls.append)
    w.append([b"a"], fsync=True)  # one append's own durability (the spool's outage records)
    w.append([b"b"])
    w.close()
    assert len(calls) == 1
    assert FsyncPolicy.of(True) == ALWAYS and FsyncPolicy.of(False) == NEVER
    assert FsyncPolicy(0.25).due(10.0, 10.3) and not FsyncPolicy(0.25).due(10.0, 10.2)
    assert not NEVER.due(0.0, 1e9) and ALWAYS.due(5.0, 5.0)


def test_files_of_the_earlier_framings_are_read_and_never_appended_to(tmp_path):
    import struct
    import zlib

    old = [b"alpha", b"beta", b"gamma"]
    le = tmp_path / "journal.ticks"
    le.write_bytes(b"".join(struct.pack("<I", len(p)) + p for p in old) + b"\x09\x00")  # + a torn length
    be = tmp_path / "spool.bin"
    be.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in old))
    ob = tmp_path / "outbox.bin"
    recs = [struct.pack("<II", len(p), zlib.crc32(p)) + p for p in old]
    recs[1] = recs[1][:-1] + b"X"  # damaged: its CRC fails
    ob.write_bytes(b"".join(recs))
    assert _read(le, LEGACY_LE)[0] == old and _read(le, LEGACY_LE)[1].torn == 1
    assert _read(be, LEGACY_BE)[0] == old
    records, st = _read(ob, LEGACY_OUTBOX)
    assert records == [b"alpha", b"gamma"] and st.corrupt == 1
    for f in (le, be, ob):
        assert recordlog.is_legacy(f)
        with pytest.raises(LegacyFile):
            RecordWriter(f).open()
    recordlog.rewrite(be, recordlog.iter_file(be, LEGACY_BE))  # the one-time migration
    assert not recordlog.is_legacy(be) and _read(be)[0] == old and oct(be.stat().st_mode & 0o777) == "0o600"
    assert not recordlog.is_legacy(tmp_path / "missing") and CURRENT.head_size == 8


def test_a_damaged_length_mid_file_is_not_taken_for_a_torn_tail_at_open(tmp_path):
    path = tmp_path / "log.bin"
    _write(path)
    data = bytearray(path.read_bytes())
    data[_offsets(bytes(data))[2] + 3] = 0x7F  # a length that runs far past the end
    path.write_bytes(bytes(data))
    assert recordlog.recover(path).torn == 0 and path.stat().st_size == len(data)  # nothing good cut
    _write(path, [b"after"])
    assert _read(path)[0] == PAYLOADS[:2] + PAYLOADS[3:] + [b"after"]


def test_dead_letters_of_the_earlier_format_are_migrated_once_and_rotated_in_the_record_log(tmp_path):
    import msgpack

    from spx_common.service import DeadLetters, read_dead_letters

    path = tmp_path / "deadletter" / "svc.msgpack"
    path.parent.mkdir()
    old = [[1, "garbage", "bad", [b"t", b"\x00"]], [2, "schema", "", []]]
    path.write_bytes(b"".join(msgpack.packb(d) for d in old) + msgpack.packb(old[0])[:5])  # + a torn tail
    assert read_dead_letters(path) == old
    dl = DeadLetters(path, max_bytes=300)
    assert not recordlog.is_legacy(path) and read_dead_letters(path) == old
    dl.write("handler", [b"topic"], "boom")
    assert [d[1:] for d in read_dead_letters(path)] == [d[1:] for d in old] + [["handler", "boom", [b"topic"]]]
    for i in range(10):
        dl.write("garbage", [b"x" * 50], str(i))
    dl.close()
    rotated = read_dead_letters(path.with_suffix(".1.msgpack"))
    assert rotated and read_dead_letters(path)[-1][2] == "9" and path.stat().st_size < 600


def test_recover_reads_only_the_tail_of_a_large_file(tmp_path):
    """A large sound file is checked from its last ``tail_bytes`` (a tick journal part of gigabytes opens at
    once); a torn tail is still cut exactly, and a record longer than the window falls back to the chain."""
    path = tmp_path / "log.bin"
    payloads = [os.urandom(50) for _ in range(2000)]
    _write(path, payloads)
    whole = path.read_bytes()
    assert recordlog.recover(path, tail_bytes=1000).torn == 0 and path.read_bytes() == whole
    path.write_bytes(whole[:-7])
    st = recordlog.recover(path, tail_bytes=1000)
    assert st.torn == 1 and path.stat().st_size == len(whole) - 58 and _read(path)[0] == payloads[:-1]
    _write(path, [b"y" * 5000])  # one record longer than the window, then torn
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert recordlog.recover(path, tail_bytes=1000).torn == 1 and _read(path)[0] == payloads[:-1]
