"""Migrations up from empty on both engines; the migrated schema equals the table definitions."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from spx_common.store import current, head, make_engine, upgrade
from spx_common.store.tables import metadata


def test_upgrade_from_empty_matches_tables(db_url):
    assert current(db_url) is None
    upgrade(db_url)
    assert current(db_url) == head() == "0006"
    upgrade(db_url)  # a second upgrade is a no-op
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            assert set(metadata.tables) <= names
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            assert diff == []
            cols = {c["name"] for c in sa.inspect(conn).get_columns("setup_instances")}
            assert {"bid_ask_imbalance_at_trigger", "aggressor_skew_at_trigger", "macro_alignment_score",
                    "trailing_stop_path", "t1_hit", "t2_hit", "stopped", "r_multiple", "mfe_r", "mae_r",
                    "resolved_at"} <= cols
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(db_url):
    from alembic import command

    from spx_common.store.engine import _alembic_config

    upgrade(db_url)
    command.downgrade(_alembic_config(db_url), "base")
    assert current(db_url) is None
    upgrade(db_url)
    assert current(db_url) == "0006"
