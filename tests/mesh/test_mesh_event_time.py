"""Same data, same transitions: a real trading day through the real feed, aggregator and detector processes
at x20 and at ``max``, and through ``spx backtest --resolution tick``, gives the same transitions per setup.

Six minutes of real SPY trades and quotes (2013-10-07, 10:00-10:06 New York, ``/work/shared/data/real/``:
about 6,800 events) are cut into flat files and replayed with ``spx replay flatfile`` (the issue's
reproduction) into a fresh aggregator and detector each time; the detector's ``setup.transition`` frames are
collected from the bus. The same events, stored, go through ``spx backtest --resolution tick``. Setups form
from the built-in detectors (and the example plugin while it is installed): real data, so the test asserts
equality and causal order, never counts tuned to outcomes, only that some setups formed at all.

Before event-time alignment (docs/protocol.md), ``--speed max`` evaluated ticks against bars from far
earlier: transitions before their own ``forming`` and different counts per run.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spx_testing.replay import ReplayRig
from tests.conftest import eventually

pytestmark = pytest.mark.mesh

REAL = Path(os.environ.get("SPX_REAL_DATA", "/work/shared/data/real"))
DAY = dt.date(2013, 10, 7)
ET = ZoneInfo("America/New_York")
START = int(dt.datetime(2013, 10, 7, 10, 0, tzinfo=ET).timestamp()) * 10**9
END = START + 6 * 60 * 10**9
ENV = {  # the same detector configuration for the mesh and the backtest
    "SPX_DETECTOR_SYMBOLS": "SPY",
    "SPX_DETECTOR_WARMUP": "false",
    "SPX_DETECTOR_BUDGET_MS": "60000",  # a loaded CI host must not disable a plugin (the backtest never does)
    "SPX_FEED_REPLAY_START_DELAY_S": "1.5",  # the aggregator and detector hear the feed before its first event
}


def _cut(src: Path, dst: Path) -> int:
    """The rows of ``src`` whose sip_timestamp is in [START, END), same header, gzip."""
    n = 0
    with gzip.open(src, "rt", newline="") as fin, gzip.open(dst, "wt", newline="") as fout:
        rows = csv.reader(fin)
        header = next(rows)
        at = header.index("sip_timestamp")
        out = csv.writer(fout)
        out.writerow(header)
        for row in rows:
            if START <= int(row[at]) < END:
                out.writerow(row)
                n += 1
    return n


@pytest.fixture(scope="module")
def window(tmp_path_factory) -> list[Path]:
    if not (REAL / "2013-10-07-trades-SPY.csv.gz").is_file():
        pytest.skip(f"no real data at {REAL}")
    d = tmp_path_factory.mktemp("window")
    files = []
    for kind in ("trades", "quotes"):
        dst = d / f"2013-10-07-{kind}-SPY.csv.gz"
        assert _cut(REAL / f"2013-10-07-{kind}-SPY.csv.gz", dst) > 0
        files.append(dst)
    return files


def replay_through_mesh(files: list[Path], speed: str, run_dir: Path) -> list[tuple[str, str, int]]:
    """``spx replay flatfile`` into a fresh aggregator and detector; the detector's transitions, in the order
    published, as (setup_id, to_state, ts)."""
    with ReplayRig(run_dir, {**ENV, "DATABASE_URL": f"sqlite:///{run_dir}/db.sqlite"}, ready_timeout_s=30) as rig:
        feed = rig.replay(files, speed, timeout_s=240)
        assert feed.returncode == 0, feed.stdout + feed.stderr
        # the feed's final watermark went through the aggregator: everything was released
        eventually(rig.released, 60, interval_s=0.2, what="the detector released everything after the replay ended")
        # every input ended: the setups still open expire at their session's close, as at the end of a
        # backtest's data (the detector checks once a second)
        eventually(lambda: rig.det.call("active") == [], 15, interval_s=0.2, what="open setups expired at the close")
        time.sleep(0.5)  # the last transitions on their way to our subscriber
        st = rig.status()
        assert st["align"]["forced"] == 0 and st["align"]["late"] == 0, st["align"]
        assert st["lost_frames"] == 0, st
        return list(rig.transitions)


def backtest(files: list[Path], tmp: Path) -> list[tuple[str, str, int]]:
    """The same events stored, then ``spx backtest --resolution tick``; its recorded transitions."""
    import sqlalchemy as sa

    from services.cli.main import main as spx_main
    from spx_common import flatfiles
    from spx_common.store import open_store
    from spx_common.store import tables as t

    url = f"sqlite:///{tmp}/bt.sqlite"
    store = open_store(url)
    try:
        store.insert_events(flatfiles.read_merged(files))
    finally:
        store.close()
    old = {k: os.environ.get(k) for k in [*ENV, "DATABASE_URL"]}
    os.environ.update({**ENV, "DATABASE_URL": url})
    try:
        assert spx_main(["backtest", DAY.isoformat(), DAY.isoformat(), "--resolution", "tick", "--symbols", "SPY",
                         "--out", str(tmp / "report"), "--quiet"]) == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    store = open_store(url, migrate=False)
    try:
        c = t.setup_transitions.c
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(c.setup_id, c.to_state, c.ts).order_by(c.ts)).all()
    finally:
        store.close()
    return [(sid.split(":", 1)[1], state, ts) for sid, state, ts in rows]


def per_setup(transitions) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for sid, state, ts in transitions:
        out.setdefault(sid, []).append((state, ts))
    return out


def never_before_forming(transitions) -> None:
    for sid, seq in per_setup(transitions).items():
        assert seq[0][0] == "forming", (sid, seq)
        assert all(ts >= seq[0][1] for _, ts in seq), f"{sid}: a transition before its forming: {seq}"
        assert [s for s, _ in seq].count("forming") == 1, (sid, seq)


def _run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="spx-", dir="/tmp"))  # ipc socket paths must stay short


def test_replay_at_x20_and_max_and_the_tick_backtest_give_the_same_transitions(window, tmp_path):
    dirs = [_run_dir(), _run_dir()]
    try:
        max_run = replay_through_mesh(window, "max", dirs[0])
        x20_run = replay_through_mesh(window, "20", dirs[1])
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    bt_run = backtest(window, tmp_path)
    assert any(state == "forming" for _, state, _ in bt_run), "no setup formed in the window: nothing compared"
    for run in (max_run, x20_run, bt_run):
        never_before_forming(run)
    # the store orders a setup's transitions of one event time by state, not by publication: compare states
    # within one event time as sets, and the sequence of event times exactly
    def canon(run):
        return {sid: sorted(seq, key=lambda x: (x[1], x[0])) for sid, seq in per_setup(run).items()}
    assert per_setup(max_run) == per_setup(x20_run)
    assert canon(max_run) == canon(bt_run)
