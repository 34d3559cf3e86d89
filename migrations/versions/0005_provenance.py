"""provenance on every stored row: source (live | replay | synthetic | backtest | backfill) and run_id

setup_instances already had ``source``; the transitions, orders, fills, positions and portfolio
snapshots get one (rows written before this revision are taken as ``live``: nothing recorded which
feed made them). ``bars.source`` held the bar's own wire source (tick | poll | replay | backfill); it
now holds the provenance (tick and poll bars -> live; the bar's own source moves to ``extra`` when it
is not the provenance's usual one, see spx_common/store/repo.py ``bar_row``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("setup_transitions", "orders", "fills", "positions", "portfolio_snapshots")


def upgrade() -> None:
    with op.batch_alter_table("setup_instances") as batch:
        batch.add_column(sa.Column("run_id", sa.String(64)))
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="live"))
            batch.add_column(sa.Column("run_id", sa.String(64)))
    with op.batch_alter_table("bars") as batch:
        batch.add_column(sa.Column("run_id", sa.String(64)))
    op.execute("UPDATE bars SET source = 'live' WHERE source IN ('tick', 'poll')")


def downgrade() -> None:
    op.execute("UPDATE bars SET source = 'tick' WHERE source = 'live'")
    with op.batch_alter_table("bars") as batch:
        batch.drop_column("run_id")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("run_id")
            batch.drop_column("source")
    with op.batch_alter_table("setup_instances") as batch:
        batch.drop_column("run_id")
