"""trailing_stops: newest trailing-stop path per setup (kept even when advice precedes the setup)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trailing_stops",
        sa.Column("setup_id", sa.String(128), primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("path", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trailing_stops")
