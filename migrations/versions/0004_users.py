"""users: one row per trader (risk settings, auto-execution opt-in, broker kind/environment, coach
preferences) plus the status of their broker credentials (last successful call, last error)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("max_risk_per_trade", sa.Float, nullable=False),
        sa.Column("max_contracts", sa.Integer, nullable=False),
        sa.Column("daily_loss_limit", sa.Float, nullable=False),
        sa.Column("day_trading_policy", sa.String(16), nullable=False),
        sa.Column("auto_execution", sa.Boolean, nullable=False),
        sa.Column("broker", sa.String(16), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("coach", sa.JSON, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_ns", sa.BigInteger, nullable=False),
        sa.Column("last_ok_ns", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_ns", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("users")
