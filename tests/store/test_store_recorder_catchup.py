"""The recorder catches up from the publishers' replay rings: transitions published while it was
down are recorded once it starts, exactly once (real detector and recorder processes, real
ZeroMQ, SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

from spx_common.models import MicroBar
from spx_common.store import open_store
from spx_common.store import tables as t
from tests.conftest import eventually
from tests.detector.rig import T0, DetectorRig

S = 1_000_000_000


def test_recorder_started_late_records_what_it_missed_exactly_once(db_url, run_dir):
    with DetectorRig(run_dir, db_url) as rig:
        store = open_store(db_url, migrate=False)
        try:
            rig.start("detector")
            rig.detector_up(20)
            rig.pubs["aggregator"].publish("bar.1s.SPY", "bar", MicroBar(
                sym="SPY", interval="1s", start_ns=T0, open=100.4, high=100.9, low=100.4, close=100.8, volume=10,
                closed=True), T0)
            rig.ticks([100.8, 101.2, 101.3, 101.4], T0 + S, step=1)
            eventually(lambda: [x.to_state for x in rig.drain()] == ["forming", "ready", "triggered"], 10,
                       what="three transitions")
            # only now does the recorder start: everything above was published while it was down
            rig.start("recorder")

            def rows():
                with store.engine.connect() as c:
                    return sorted(r.to_state for r in c.execute(sa.select(t.setup_transitions.c.to_state)))
            eventually(lambda: rows() == ["forming", "ready", "triggered"], 20, what="the recorder caught up")
            import re
            fetched = re.search(r'recorder_replayed_frames_total\{peer="detector"\} ([0-9.]+)',
                                str(rig.rec.call("metrics")))
            assert fetched and float(fetched.group(1)) >= 3  # fetched at least once (idempotent if more)
            inst = store.setup_instances()
            assert len(inst) == 1 and inst[0]["state"] == "triggered" and inst[0]["entry_price"] == 101.4
        finally:
            store.close()
