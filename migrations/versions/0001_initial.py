"""initial schema: setup instances and transitions, orders, fills, positions, portfolio snapshots,
bars, market events, backfill checkpoints, broker credentials, optimizer profiles

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "setup_instances",
        sa.Column("setup_id", sa.String(128), primary_key=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("sym", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("first_ns", sa.BigInteger, nullable=False),
        sa.Column("last_ns", sa.BigInteger, nullable=False),
        sa.Column("triggered_ns", sa.BigInteger),
        sa.Column("entry_low", sa.Float),
        sa.Column("entry_high", sa.Float),
        sa.Column("stop", sa.Float),
        sa.Column("targets", sa.JSON),
        sa.Column("confidence", sa.Float),
        sa.Column("entry_price", sa.Float),
        sa.Column("bid_ask_imbalance_at_trigger", sa.Float),
        sa.Column("aggressor_skew_at_trigger", sa.Float),
        sa.Column("macro_alignment_score", sa.Float),
        sa.Column("microstructure_at_trigger", sa.JSON),
        sa.Column("trailing_stop_path", sa.JSON),
        sa.Column("t1_hit", sa.Boolean, nullable=False),
        sa.Column("t2_hit", sa.Boolean, nullable=False),
        sa.Column("stopped", sa.Boolean, nullable=False),
        sa.Column("r_multiple", sa.Float),
        sa.Column("mfe_r", sa.Float),
        sa.Column("mae_r", sa.Float),
        sa.Column("resolved_at", sa.BigInteger),
        sa.Column("resolution", sa.String(32)),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_setup_instances_family_resolved", "setup_instances", ["family", "resolved_at"])
    op.create_table(
        "setup_transitions",
        sa.Column("setup_id", sa.String(128), nullable=False),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.String(32)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("price", sa.Float),
        sa.PrimaryKeyConstraint("setup_id", "to_state", "ts", name="pk_setup_transitions"),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("setup_id", sa.String(128)),
        sa.Column("option_symbol", sa.String(64), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("price", sa.Float),
        sa.Column("stop", sa.Float),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("broker_id", sa.String(64)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_orders_user_ts", "orders", ["user", "ts"])
    op.create_table(
        "fills",
        sa.Column("fill_key", sa.String(256), primary_key=True),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("option_symbol", sa.String(64), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("quantity", sa.Float, nullable=False),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("broker_id", sa.String(64)),
    )
    op.create_index("ix_fills_order", "fills", ["order_id"])
    op.create_table(
        "positions",
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("option_symbol", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Float, nullable=False),
        sa.Column("avg_price", sa.Float, nullable=False),
        sa.Column("realized_pnl", sa.Float, nullable=False),
        sa.Column("unrealized_pnl", sa.Float),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user", "option_symbol", name="pk_positions"),
    )
    op.create_table(
        "portfolio_snapshots",
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("total_equity", sa.Float),
        sa.Column("option_buying_power", sa.Float),
        sa.Column("body", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("user", "ts", name="pk_portfolio_snapshots"),
    )
    op.create_table(
        "bars",
        sa.Column("sym", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("open", sa.Float, nullable=False),
        sa.Column("high", sa.Float, nullable=False),
        sa.Column("low", sa.Float, nullable=False),
        sa.Column("close", sa.Float, nullable=False),
        sa.Column("volume", sa.Float, nullable=False),
        sa.Column("trades", sa.Integer, nullable=False),
        sa.Column("vwap", sa.Float),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("extra", sa.JSON),
        sa.PrimaryKeyConstraint("sym", "interval", "start_ns", name="pk_bars"),
    )
    op.create_table(
        "market_events",
        sa.Column("sym", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Float),
        sa.Column("size", sa.Float),
        sa.Column("bid", sa.Float),
        sa.Column("ask", sa.Float),
        sa.Column("bid_size", sa.Float),
        sa.Column("ask_size", sa.Float),
        sa.PrimaryKeyConstraint("sym", "kind", "ts", "seq", name="pk_market_events"),
    )
    op.create_table(
        "backfill_checkpoints",
        sa.Column("task", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("updated_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "broker_credentials",
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("broker", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(64)),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("rotated_ns", sa.BigInteger),
        sa.PrimaryKeyConstraint("user", "broker", name="pk_broker_credentials"),
    )
    op.create_table(
        "optimizer_profiles",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for name in ("optimizer_profiles", "broker_credentials", "backfill_checkpoints", "market_events", "bars",
                 "portfolio_snapshots", "positions", "fills", "orders", "setup_transitions"):
        op.drop_table(name)
    op.drop_index("ix_setup_instances_family_resolved", table_name="setup_instances")
    op.drop_table("setup_instances")
