"""coach alerts with users' answers (ack | dismiss) and feed availability per session

``coach_events``: every coach alert the recorder hears, with the user's first answer to it
(``feedback``, ``feedback_ns``), for the acknowledgment and dismiss rates per kind and day.
``feed_availability``: one row per regular session and feed source: the share of session seconds
with a fresh price and the longest gap (services/feed/availability.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coach_events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("setup_id", sa.String(128)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("feedback", sa.String(16)),
        sa.Column("feedback_ns", sa.BigInteger),
    )
    op.create_index("ix_coach_events_day_kind", "coach_events", ["day", "kind"])
    op.create_table(
        "feed_availability",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("pct", sa.Float),
        sa.Column("session_s", sa.Integer, nullable=False),
        sa.Column("elapsed_s", sa.Integer, nullable=False),
        sa.Column("available_s", sa.Integer, nullable=False),
        sa.Column("longest_gap_s", sa.Integer, nullable=False),
        sa.Column("longest_gap_start_ns", sa.BigInteger),
        sa.Column("recorded_ns", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("day", "source", name="pk_feed_availability"),
    )


def downgrade() -> None:
    op.drop_table("feed_availability")
    op.drop_index("ix_coach_events_day_kind", "coach_events")
    op.drop_table("coach_events")
