"""The recorder process end to end over real ZeroMQ, with a real database outage mid-run.

Publishers bind the detector, selector and broker endpoints; ``python -m services.recorder`` runs
as its own process.  The database is made unavailable (SQLite: another connection holds an
exclusive lock; PostgreSQL: a dedicated database stops accepting connections and its backends
are terminated), records keep flowing (some repeated), the database comes back, and every row
is counted exactly once.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest
import zmq

from spx_common import models as m
from spx_common.bus import Publisher, RpcClient, Subscriber
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.store import Store, make_engine
from spx_testing import ServiceProcess
from tests.conftest import eventually
from tests.conftest import PG_BASE, PG_SKIP, pg_dsn


class SqliteOutage:
    def __init__(self, run_dir):
        self.path = run_dir / "spx.sqlite3"
        self.url = f"sqlite:///{self.path}"
        self.conn: sqlite3.Connection | None = None

    def down(self):
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        self.conn.execute("BEGIN EXCLUSIVE")

    def up(self):
        self.conn.execute("ROLLBACK")
        self.conn.close()

    def close(self):
        pass


class PgOutage:
    def __init__(self):
        import psycopg

        self.psycopg = psycopg
        self.db = f"spx_rec_{uuid.uuid4().hex[:10]}"
        self.admin = pg_dsn(PG_BASE)
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.db}"')
        self.url = PG_BASE.rsplit("/", 1)[0] + f"/{self.db}"

    def _admin(self, *sql):
        with self.psycopg.connect(self.admin, autocommit=True) as c:
            for s in sql:
                c.execute(s)

    def down(self):
        self._admin(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS false',
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.db}'")

    def up(self):
        self._admin(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS true')

    def close(self):
        self._admin(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS true',
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.db}'",
                    f'DROP DATABASE IF EXISTS "{self.db}"')


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request, run_dir):
    if request.param == "postgresql" and PG_SKIP:
        pytest.skip(PG_SKIP)
    o = SqliteOutage(run_dir) if request.param == "sqlite" else PgOutage()
    yield o
    o.close()


def records(i: int):
    """One transition, order, fill, position and snapshot with natural ids derived from ``i``."""
    ts = 1_700_000_000_000_000_000 + i * 1_000_000
    return [
        ("setup.transition", "setup_transition", m.SetupTransition(
            setup_id=f"s{i}", detector="orb_v1", family="orb", sym="I:SPX", direction="long", to_state="forming",
            reason="new", ts=ts, price=5000.0, entry_low=4999.0, entry_high=5001.0, stop=4995.0)),
        ("order.alice", "order", m.Order(order_id=f"o{i}", user="alice", option_symbol="SPXW260220C05000000",
                                         side="buy_to_open", quantity=1, type="limit", price=2.0, ts=ts)),
        ("fill.alice", "fill", m.Fill(order_id=f"o{i}", user="alice", option_symbol="SPXW260220C05000000",
                                      side="buy_to_open", quantity=1, price=2.0, ts=ts, fill_id=f"f{i}")),
        ("position.alice", "position", m.Position(user="alice", option_symbol=f"SPXW260220C0{5000 + i}000",
                                                  quantity=1, avg_price=2.0, ts=ts)),
        ("portfolio.alice", "doc", {"user": "alice", "ts": ts, "total_equity": 10_000.0 + i}),
    ]


TABLES = ("setup_instances", "setup_transitions", "orders", "fills", "positions", "portfolio_snapshots")


class Mesh:
    """The recorder as its own process plus bound detector/selector/broker publishers in this one."""

    def __init__(self, run_dir, url: str, **env_extra: str) -> None:
        env = dict(DATABASE_URL=url, SPX_STORE_RETRY_S="0.2", SPX_STORE_SQLITE_BUSY_TIMEOUT_S="0.3",
                   SPX_STORE_FLUSH_S="0.05", SPX_STORE_BATCH_SIZE="40", **env_extra)
        self.proc = ServiceProcess.service("recorder", run_dir=run_dir, env=env).start()
        runtime, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
        self.ctx = zmq.Context()
        self.pubs = {s: Publisher(self.ctx, bus.pub_endpoint(s, runtime, bind=True), s, linger_ms=0)
                     for s in ("detector", "selector", "broker", "feed", "aggregator")}
        self.rpc = RpcClient(self.ctx, bus.rep_endpoint("recorder", runtime), timeout_s=1.0, retries=0)
        try:
            self.proc.wait_ready(lambda: (st := self.status()) and all(st["peers"].get(p) for p in self.pubs), 20,
                                 "recorder up and subscribed", 0.1)
        except BaseException:
            self.close()
            raise

    def status(self):
        for p in self.pubs.values():
            p.heartbeat(0)
        try:
            return self.rpc.call("status")
        except Exception:  # noqa: BLE001 - not up yet
            self.rpc.close()
            return None

    def publish(self, topic, type_name, body):
        pub = self.pubs["detector" if topic.startswith("setup") else "selector" if topic.startswith("exit")
                         else "feed" if topic.startswith("status.feed") else "aggregator" if topic.startswith("bar.")
                         else "broker"]
        pub.publish(topic, type_name, body, body["ts"] if isinstance(body, dict) else getattr(body, "ts", None)
                    or body.start_ns)

    def send(self, ids):
        for i in ids:
            for topic, type_name, body in records(i):
                self.publish(topic, type_name, body)

    def close(self) -> tuple[int | None, str]:
        """Stop the recorder (SIGTERM, bounded, then SIGKILL); its exit code and captured output."""
        code = self.proc.stop()
        self.rpc.close()
        for p in self.pubs.values():
            p.close()
        self.ctx.destroy(linger=0)
        return (None if self.proc.hung else code), self.proc.describe()


def test_recorder_survives_database_outage_every_row_once(outage, run_dir):
    mesh = Mesh(run_dir, outage.url)
    store = None
    try:
        store = Store(make_engine(outage.url))

        def counts():
            return [store.count(t) for t in TABLES]

        mesh.send(range(0, 50))
        eventually(lambda: counts() == [50] * 6, 15, 0.1, "first 50 of each recorded")

        store.close()
        outage.down()
        mesh.send(range(50, 120))
        mesh.send(range(40, 60))  # repeats across the outage boundary
        eventually(lambda: (s := mesh.status()) and not s["db_up"] and s["spool_bytes"] > 0, 15, 0.1,
                   "recorder noticed the outage and spooled")
        mesh.send(range(120, 150))
        outage.up()
        eventually(lambda: (s := mesh.status()) and s["db_up"] and s["spool_bytes"] == 0 and s["queue"] == 0, 20,
                   0.1, "spool replayed")
        store = Store(make_engine(outage.url))
        eventually(lambda: counts() == [150] * 6, 10, 0.1, "every row exactly once")
        metrics = mesh.rpc.call("metrics")
        spooled = [ln for ln in metrics.splitlines() if ln.startswith("recorder_rows_spooled_total")]
        assert float(spooled[0].split()[-1]) > 0
        assert "recorder_rows_replayed_total" in metrics
    finally:
        if store is not None:
            store.close()
        code, err = mesh.close()
    assert code == 0, err


def test_recorder_requarantines_a_failing_family_live(db_url, run_dir):
    from spx_common.store import Floors, Profile, open_store

    store = open_store(db_url)
    store.save_profile(Profile(defaults=Floors(min_t1_hit_rate=0.5, min_expectancy_r=0.0, min_trades=3)),
                       author="test", reason="floors")
    # a live mesh (issue 19: without a key the configured feed is the synthetic demo, whose rows never
    # reach the optimizer's window; tests/store/test_store_provenance.py)
    mesh = Mesh(run_dir, db_url, SPX_STORE_REQUARANTINE_EVERY_S="60", SPX_STORE_REQUARANTINE_WINDOW_S="3600",
                SPX_FEED_SOURCE="live")
    blocks = Subscriber(mesh.ctx, [BusConfig().pub_endpoint("recorder", RuntimeConfig(run_dir=run_dir))], ["block."])
    try:
        t0 = 1_700_000_000_000_000_000
        for i, fam in enumerate(["orb"] * 3 + ["vwap_reclaim"] * 3):
            base = dict(setup_id=f"{fam}{i}", detector=fam, family=fam, sym="I:SPX", direction="long")
            ts = t0 + i * 10**9
            mesh.publish("setup.transition", "setup_transition", m.SetupTransition(
                **base, to_state="triggered", reason="t", ts=ts, price=100.0, entry_low=99.0, entry_high=101.0,
                stop=98.0))
            end = ("stopped", 98.0) if fam == "orb" else ("target2_hit", 104.0)
            mesh.publish("setup.transition", "setup_transition", m.SetupTransition(
                **base, to_state=end[0], reason="r", ts=ts + 5 * 10**8, price=end[1]))
        mesh.publish("exit.vwap_reclaim3", "exit_advice", m.ExitAdvice(
            setup_id="vwap_reclaim3", action="trail_stop", reason="trail", ts=t0 + 3 * 10**9 + 1,
            trailing_stop_path=[98.0, 99.5, 101.0]))
        eventually(lambda: store.count("setup_transitions") == 12, 15, 0.1, "transitions recorded")
        # logging-only evaluator: shadow transitions are recorded too
        mesh.publish("setup.shadow", "setup_transition", m.SetupTransition(
            setup_id="shadow1", detector="orb", family="orb", sym="I:SPX", direction="long", to_state="forming",
            reason="logging-only", ts=t0 + 9 * 10**9))
        eventually(lambda: store.count("setup_transitions") == 13, 15, 0.1, "shadow transition recorded")
        eventually(lambda: store.setup_instance("vwap_reclaim3")["trailing_stop_path"] == [98.0, 99.5, 101.0],
                   10, 0.1, "trailing stop path recorded from exit advice")
        assert store.get_active_profile().allows("orb")
        # a later event (event time, past requarantine_every_s) makes the recorder check the window
        mesh.publish("setup.transition", "setup_transition", m.SetupTransition(
            setup_id="late", detector="orb", family="orb", sym="I:SPX", direction="long", to_state="forming",
            reason="f", ts=t0 + 120 * 10**9))
        p = eventually(lambda: (p := store.get_active_profile()).version == 2 and p, 15, 0.1, "re-quarantined")
        assert not p.allows("orb") and p.allows("vwap_reclaim") and p.author == "auto"
        assert "t1_hit_rate 0.000 < 0.500" in p.families["orb"].reason
        assert mesh.rpc.call("profile")["version"] == 2
        frame = blocks.recv(5)
        assert frame is not None and frame.topic == "block.recorder"
        body = frame.body()
        assert (body.reason, body.subject) == ("family_quarantined", "orb") and "t1_hit_rate" in body.detail
    finally:
        blocks.close()
        store.close()
        code, err = mesh.close()
    assert code == 0, err


class SqliteMissingDir:
    """SQLite at a path whose directory does not exist yet: every connect fails until it does."""

    def __init__(self, run_dir):
        self.dir = run_dir / "later"
        self.url = f"sqlite:///{self.dir}/spx.sqlite3"

    def down(self):
        pass

    def up(self):
        self.dir.mkdir()

    def close(self):
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def down_at_start(request, run_dir):
    if request.param == "postgresql" and PG_SKIP:
        pytest.skip(PG_SKIP)
    o = SqliteMissingDir(run_dir) if request.param == "sqlite" else PgOutage()
    yield o
    o.close()


def test_recorder_started_while_database_down_migrates_and_replays(down_at_start, run_dir):
    down_at_start.down()
    mesh = Mesh(run_dir, down_at_start.url)
    store = None
    try:
        mesh.send(range(0, 30))
        eventually(lambda: (s := mesh.status()) and not s["db_up"] and s["spool_bytes"] > 0, 15, 0.1, "spooling")
        down_at_start.up()
        mesh.send(range(20, 40))
        eventually(lambda: (s := mesh.status()) and s["db_up"] and s["spool_bytes"] == 0 and s["queue"] == 0, 20,
                   0.1, "migrated and replayed")
        store = Store(make_engine(down_at_start.url))
        eventually(lambda: [store.count(t) for t in TABLES] == [40] * 6, 10, 0.1, "every row exactly once")
    finally:
        if store is not None:
            store.close()
        code, err = mesh.close()
    assert code == 0, err
