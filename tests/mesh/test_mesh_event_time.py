"""Same data, same results across the whole mesh: a real trading day through the real feed, aggregator,
detector, selector, broker (paper) and coach processes at ``max`` speed and at x20 gives the same transitions,
selections, orders, fills and coach alerts, and ``spx backtest --resolution tick`` the same transitions.

Six minutes of real SPY trades and quotes (2013-10-07, 10:00-10:06 New York, ``/work/shared/data/real/``:
about 6,800 events). The real data has no options, so the test adds a generated chain on SPY priced off the
real trades (Black-Scholes, flat-ish smile, half-dollar strikes: ``_options``), one quote per contract and
second and a chain document every 30 s, so the selector has something to select and the paper broker
something to fill: the option prices are made up, their timing follows the real underlying. Everything is
written as one journal and replayed with ``spx replay journal`` into one fresh mesh per speed (``mesh_runs``,
once per module: the CPU is shared). The frames are collected from the bus. The SPY events alone, stored, go
through ``spx backtest``. Real data: the test asserts equality and causal order, never counts tuned to
outcomes, only that each compared stream is not empty.

Before event-time alignment (docs/protocol.md), ``--speed max`` evaluated ticks against bars from far
earlier: transitions before their own ``forming`` and different counts per run; before the selector, broker
and coach were aligned, their outputs depended on which process ran ahead.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
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


def _options(events: list, root: str = "SPY") -> tuple[list, list[dict]]:
    """Option quotes and chain documents priced off the real SPY trades (the data has none): 11 half-dollar
    strikes around the first trade, calls and puts, one quote per contract at each half second past a second in
    which SPY traded, a chain every 30 s of event time."""
    from services.feed.synthetic import _delta, _gamma, black_scholes, option_symbol, smile_iv
    from spx_common.models import Quote, Trade

    close = int(dt.datetime(2013, 10, 7, 16, 0, tzinfo=ET).timestamp()) * 10**9
    last: dict[int, float] = {}
    for ev in events:
        if isinstance(ev, Trade):
            last[ev.ts // 10**9] = ev.price
    spot0 = next(iter(last.values()))
    strikes = [round(spot0 * 2) / 2 + 0.5 * k for k in range(-5, 6)]
    quotes, chains = [], []
    for sec in sorted(last):
        ts = sec * 10**9 + 500_000_000
        spot = last[sec]
        t_years = (close - ts) / (365 * 24 * 3600 * 10**9)
        rows = []
        for k in strikes:
            for call in (True, False):
                iv = smile_iv(0.15, spot, k)
                theo = black_scholes(spot, k, t_years, iv, call)
                half = max(0.01, round(theo * 0.01, 2))
                bid, ask = max(0.0, round(theo - half, 2)), round(theo + half, 2)
                sym = option_symbol(DAY, call, k, root)
                quotes.append(Quote(sym=sym, bid=bid, ask=ask, bid_size=50.0, ask_size=50.0, ts=ts, source="replay"))
                rows.append({"symbol": sym, "strike": k, "type": "call" if call else "put",
                             "expiration": DAY.isoformat(), "bid": bid, "ask": ask, "mid": round((bid + ask) / 2, 3),
                             "open_interest": 5000, "volume": 0, "iv": round(iv, 5),
                             "delta": round(_delta(spot, k, t_years, iv, call), 4),
                             "gamma": round(_gamma(spot, k, t_years, iv), 6)})
        if not chains or ts - chains[-1]["ts"] >= 30 * 10**9:
            chains.append({"ts": ts, "root": root, "underlying": spot, "contracts": rows})
    return quotes, chains


@pytest.fixture(scope="module")
def journal(window, tmp_path_factory) -> Path:
    """The window's SPY events and the generated options as one journal (``spx replay journal``)."""
    from spx_common import flatfiles
    from spx_common.journal import JournalWriter

    spy = list(flatfiles.read_merged(window))
    quotes, chains = _options(spy)
    merged = sorted(spy + quotes, key=lambda ev: ev.ts)  # stable: ties keep the real data's order first
    d = tmp_path_factory.mktemp("journal")
    w = JournalWriter(d)
    for i in range(0, len(merged), 500):
        assert w.append(merged[i:i + 500])
    for doc in chains:
        assert w.append_doc("chain", doc)
    w.close()
    return d


MESH = ("aggregator", "detector", "selector", "broker", "coach")
COLLECT = {"selector": ["reco.", "exit."], "broker": ["order.", "fill."], "coach": ["coach."]}
MESH_ENV = {  # the selector and the broker trade the generated SPY chain (a tenth of SPX's risk per contract)
    "SPX_SELECTOR_ROOT": "SPY",
    "SPX_SELECTOR_MIN_RISK_PER_CONTRACT": "1",
    "SPX_BROKER_MIN_RISK_PER_CONTRACT": "1",
    "SPX_COACH_USERS": "default",
}


def replay_through_mesh(journal: Path, speed: str, run_dir: Path) -> dict[str, list]:
    """``spx replay journal`` into a fresh mesh; what each process published, in the order published, by topic
    prefix (``transition``: the detector's). Waits until the coach (the last of the chain) has every input's
    final watermark; no process counts a late or forced item."""
    env = {**ENV, **MESH_ENV, "DATABASE_URL": f"sqlite:///{run_dir}/db.sqlite"}
    with ReplayRig(run_dir, env, ready_timeout_s=40, rpc_timeout_s=2.0, services=MESH, collect=COLLECT) as rig:
        feed = rig.replay([journal], speed, timeout_s=240, source="journal")
        assert feed.returncode == 0, feed.stdout + feed.stderr
        eventually(lambda: rig.released("coach"), 90, interval_s=0.2,
                   what="the coach has every input's final watermark")
        time.sleep(0.5)  # the last frames on their way to our subscriber
        for name in MESH[1:]:
            st = rig.status(name)
            assert st["align"]["forced"] == 0 and st["align"]["late"] == 0, (name, st["align"])
            assert st["lost_frames"] == 0, (name, st)
        return {"transition": list(rig.transitions), **{k: list(v) for k, v in rig.frames.items()}}


@pytest.fixture(scope="module")
def mesh_runs(journal) -> dict[str, dict[str, list]]:
    """The same journal through a fresh mesh at ``max`` and at x20 (once per module: the CPU is shared)."""
    out = {}
    for speed in ("max", "20"):
        d = _run_dir()
        try:
            out[speed] = replay_through_mesh(journal, speed, d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


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


def _canon(frames: list, drop: tuple[str, ...] = ()) -> list[dict]:
    """Frames as plain maps, without the fields in ``drop`` (random ids) and with the broker's session id
    taken out of order and fill ids (``spx-<user>-<setup>-<role>-<n>-<session>[-<fill>]``)."""
    out = []
    for f in frames:
        d = msgspec.to_builtins(f)
        for k in drop:
            d.pop(k, None)
        for k in ("order_id", "fill_id"):
            if isinstance(d.get(k), str):
                d[k] = re.sub(r"-[0-9a-f]{6}(?=(-\d+)?$)", "", d[k])
        out.append(d)
    return out


def test_replay_at_x20_and_max_and_the_tick_backtest_give_the_same_transitions(mesh_runs, window, tmp_path):
    max_run, x20_run = (mesh_runs[s]["transition"] for s in ("max", "20"))
    bt_run = backtest(window, tmp_path)
    assert any(state == "forming" for _, state, _ in bt_run), "no setup formed in the window: nothing compared"
    for run in (max_run, x20_run, bt_run):
        never_before_forming(run)
    # the store orders a setup's transitions of one event time by state, not by publication: compare states
    # within one event time as sets, and the sequence of event times exactly
    def canon(run):
        return {sid: sorted(seq, key=lambda x: (x[1], x[0])) for sid, seq in per_setup(run).items()}
    assert max_run == x20_run  # the whole sequence, in the order published
    assert canon(max_run) == canon(bt_run)


def test_selections_orders_fills_and_coach_alerts_do_not_depend_on_the_replay_speed(mesh_runs):
    a, b = mesh_runs["max"], mesh_runs["20"]
    assert any(r.ok for r in a["reco."]), "no selection in the window: nothing compared"
    assert a["fill."], "no paper fill in the window: nothing compared"
    assert a["coach."], "no coach alert in the window: nothing compared"
    for prefix in ("reco.", "exit.", "order.", "fill."):  # every state, in the order published
        assert _canon(a[prefix]) == _canon(b[prefix]), prefix
    assert _canon(a["coach."], ("id",)) == _canon(b["coach."], ("id",))
