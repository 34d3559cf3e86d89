"""Table definitions (SQLAlchemy Core). Every table has a natural key so replays never duplicate.

Every row the mesh or a backtest makes carries its provenance (``source``: live, replay, synthetic,
backtest, backfill) and ``run_id`` (``spx_common.provenance``, revision 0005).

The schema history lives in ``migrations/``; ``tests/store`` checks that the migrated database
matches these definitions exactly, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Float, Index, Integer, LargeBinary, MetaData,
                        PrimaryKeyConstraint, String, Table, Text)

metadata = MetaData()

setup_instances = Table(
    "setup_instances", metadata,
    Column("setup_id", String(128), primary_key=True),
    Column("detector", String(64), nullable=False),
    Column("family", String(64), nullable=False),
    Column("sym", String(64), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("state", String(32), nullable=False),
    Column("first_ns", BigInteger, nullable=False),
    Column("last_ns", BigInteger, nullable=False),
    Column("triggered_ns", BigInteger),
    Column("entry_low", Float),
    Column("entry_high", Float),
    Column("stop", Float),
    Column("targets", JSON),
    Column("confidence", Float),
    Column("entry_price", Float),
    Column("bid_ask_imbalance_at_trigger", Float),
    Column("aggressor_skew_at_trigger", Float),
    Column("macro_alignment_score", Float),
    Column("microstructure_at_trigger", JSON),
    Column("trailing_stop_path", JSON),
    Column("t1_hit", Boolean, nullable=False, default=False),
    Column("t2_hit", Boolean, nullable=False, default=False),
    Column("stopped", Boolean, nullable=False, default=False),
    Column("r_multiple", Float),
    Column("mfe_r", Float),
    Column("mae_r", Float),
    Column("resolved_at", BigInteger),
    Column("resolution", String(32)),
    Column("source", String(16), nullable=False, default="live"),
    Column("run_id", String(64)),
    Index("ix_setup_instances_family_resolved", "family", "resolved_at"),
)

setup_transitions = Table(
    "setup_transitions", metadata,
    Column("setup_id", String(128), nullable=False),
    Column("to_state", String(32), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("from_state", String(32)),
    Column("reason", Text, nullable=False),
    Column("price", Float),
    Column("body", JSON),  # the whole SetupTransition (revision 0002), so instances can be re-folded
    Column("source", String(16), nullable=False, server_default="live"),
    Column("run_id", String(64)),
    PrimaryKeyConstraint("setup_id", "to_state", "ts", name="pk_setup_transitions"),
)

trailing_stops = Table(
    "trailing_stops", metadata,
    Column("setup_id", String(128), primary_key=True),
    Column("ts", BigInteger, nullable=False),
    Column("path", JSON, nullable=False),
)

orders = Table(
    "orders", metadata,
    Column("order_id", String(128), primary_key=True),
    Column("user", String(64), nullable=False),
    Column("setup_id", String(128)),
    Column("option_symbol", String(64), nullable=False),
    Column("side", String(16), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("type", String(16), nullable=False),
    Column("price", Float),
    Column("stop", Float),
    Column("status", String(32), nullable=False),
    Column("broker_id", String(64)),
    Column("reason", Text, nullable=False, default=""),
    Column("ts", BigInteger, nullable=False),
    Column("source", String(16), nullable=False, server_default="live"),
    Column("run_id", String(64)),
    Index("ix_orders_user_ts", "user", "ts"),
)

fills = Table(
    "fills", metadata,
    Column("fill_key", String(256), primary_key=True),
    Column("order_id", String(128), nullable=False),
    Column("user", String(64), nullable=False),
    Column("option_symbol", String(64), nullable=False),
    Column("side", String(16), nullable=False),
    Column("quantity", Float, nullable=False),
    Column("price", Float, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("broker_id", String(64)),
    Column("source", String(16), nullable=False, server_default="live"),
    Column("run_id", String(64)),
    Index("ix_fills_order", "order_id"),
)

positions = Table(
    "positions", metadata,
    Column("user", String(64), nullable=False),
    Column("option_symbol", String(64), nullable=False),
    Column("quantity", Float, nullable=False),
    Column("avg_price", Float, nullable=False),
    Column("realized_pnl", Float, nullable=False),
    Column("unrealized_pnl", Float),
    Column("ts", BigInteger, nullable=False),
    Column("source", String(16), nullable=False, server_default="live"),
    Column("run_id", String(64)),
    PrimaryKeyConstraint("user", "option_symbol", name="pk_positions"),
)

portfolio_snapshots = Table(
    "portfolio_snapshots", metadata,
    Column("user", String(64), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("total_equity", Float),
    Column("option_buying_power", Float),
    Column("body", JSON, nullable=False),
    Column("source", String(16), nullable=False, server_default="live"),
    Column("run_id", String(64)),
    PrimaryKeyConstraint("user", "ts", name="pk_portfolio_snapshots"),
)

bars = Table(
    "bars", metadata,
    Column("sym", String(64), nullable=False),
    Column("interval", String(8), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("open", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("close", Float, nullable=False),
    Column("volume", Float, nullable=False),
    Column("trades", Integer, nullable=False),
    Column("vwap", Float),
    Column("source", String(16), nullable=False),  # provenance (revision 0005; the bar's own source in extra)
    Column("run_id", String(64)),
    Column("extra", JSON),
    PrimaryKeyConstraint("sym", "interval", "start_ns", name="pk_bars"),
)

market_events = Table(
    "market_events", metadata,
    Column("sym", String(64), nullable=False),
    Column("kind", String(1), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("price", Float),
    Column("size", Float),
    Column("bid", Float),
    Column("ask", Float),
    Column("bid_size", Float),
    Column("ask_size", Float),
    PrimaryKeyConstraint("sym", "kind", "ts", "seq", name="pk_market_events"),
)

backfill_checkpoints = Table(
    "backfill_checkpoints", metadata,
    Column("task", String(200), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("updated_ns", BigInteger, nullable=False),
)

broker_credentials = Table(
    "broker_credentials", metadata,
    Column("user", String(64), nullable=False),
    Column("broker", String(32), nullable=False),
    Column("account_id", String(64)),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("rotated_ns", BigInteger),
    PrimaryKeyConstraint("user", "broker", name="pk_broker_credentials"),
)

optimizer_profiles = Table(
    "optimizer_profiles", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("author", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("body", JSON, nullable=False),
)

users = Table(
    "users", metadata,
    Column("user", String(64), primary_key=True),
    Column("display_name", String(128), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("max_risk_per_trade", Float, nullable=False),  # dollars of premium per entry
    Column("max_contracts", Integer, nullable=False),
    Column("daily_loss_limit", Float, nullable=False),  # dollars of realized loss per ET day
    Column("day_trading_policy", String(16), nullable=False),  # alert | block | off (the broker's PDT policy)
    Column("auto_execution", Boolean, nullable=False),  # opt-in, default off
    Column("broker", String(16), nullable=False),  # paper | tradier
    Column("environment", String(16), nullable=False),  # sandbox | production
    Column("coach", JSON, nullable=False),  # channels / kinds / min_severity / quiet
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Column("last_ok_ns", BigInteger),  # last successful broker call with this user's credentials
    Column("last_error", Text),
    Column("last_error_ns", BigInteger),
)

coach_events = Table(
    # the coach's alerts with each user's answer (op: ack | dismiss on the gateway): the rollout plan's
    # "alert relevance measured by acknowledgment rate" per kind and day (spx coach stats)
    "coach_events", metadata,
    Column("id", String(32), primary_key=True),
    Column("user", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("setup_id", String(128)),
    Column("message", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("day", String(10), nullable=False),  # New York date of ts
    Column("feedback", String(16)),  # ack | dismiss | NULL (not answered)
    Column("feedback_ns", BigInteger),
    Index("ix_coach_events_day_kind", "day", "kind"),
)

feed_availability = Table(
    # one row per regular session and feed source: share of session seconds with a fresh price (SLO)
    "feed_availability", metadata,
    Column("day", String(10), nullable=False),
    Column("source", String(16), nullable=False),
    Column("pct", Float),
    Column("session_s", Integer, nullable=False),
    Column("elapsed_s", Integer, nullable=False),
    Column("available_s", Integer, nullable=False),
    Column("longest_gap_s", Integer, nullable=False),
    Column("longest_gap_start_ns", BigInteger),
    Column("recorded_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("day", "source", name="pk_feed_availability"),
)

