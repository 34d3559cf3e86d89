"""``[gateway]`` configuration: where the websocket/HTTP server listens and its load-safety bounds."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from spx_common.config import RuntimeConfig, Section, env_field


class GatewayConfig(Section):
    """The websocket gateway and dashboard server (``ws://host:port/ws``, ``http://host:port/``)."""

    section: ClassVar[str] = "gateway"

    host: str = Field("127.0.0.1", description="Interface the websocket + HTTP server binds to.")
    port: int = Field(8765, ge=0, le=65535, description="TCP port of the websocket + HTTP server (0: any free port).")
    price_throttle_ms: float = Field(
        250.0, ge=0, le=10_000,
        description="Per-symbol price throttle: the first price in a window goes out at once (leading edge), "
        "the latest one when the window ends; 0 disables throttling.")
    queue_max: int = Field(
        2000, ge=8, le=1_000_000,
        description="Per-client outbound queue bound (messages). Price and in-progress bars are conflated in "
        "place; a client whose queue overflows is disconnected (close code 4008).")
    queue_max_bytes: int = Field(
        8 << 20, ge=1 << 16, le=1 << 30,
        description="Per-client outbound queue bound in bytes (a 1s bar snapshot with full history is ~290 KB). "
        "Conflation first; a client whose queue would pass it is disconnected (close code 4008).")
    queues_max_bytes: int = Field(
        128 << 20, ge=1 << 20, le=1 << 34,
        description="Bound on the bytes queued for all clients together: past it (checked each second) the "
        "clients with the largest queues are disconnected (close code 4008) until the total is under it.")
    max_seeding: int = Field(
        32, ge=0, le=10_000,
        description="Bar-history requests to the aggregator in flight at once (for series the gateway has no "
        "history of); past it a subscription is served from the gateway's own history.")
    slow_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="A client whose queue stays above half of queue_max this long is disconnected as too slow.")
    write_limit_bytes: int = Field(
        65536, ge=1024, description="Kernel-side write buffer per connection before sends wait (backpressure).")
    send_buffer_bytes: int = Field(
        262_144, ge=0, le=64 * 1024 * 1024,
        description="Kernel send buffer (SO_SNDBUF) per connection, so a slow client's backlog stays bounded in "
        "the kernel too and shows up in its conflating queue; 0 leaves the OS default (autotuned, up to MBs).")
    poll_cadence_ms: float = Field(
        1000.0, ge=50, le=60_000,
        description="Cadence of the poll-cadence price stream served to users the tick_fanout switch leaves out "
        "(one conflated price per symbol per period, source 'poll'; docs/rollout.md).")
    max_message_bytes: int = Field(
        4096, ge=64, le=1_000_000,
        description="Largest client message answered; bigger ones get an error (type 'error', code 'too_large').")
    max_frame_bytes: int = Field(
        65536, ge=1024, description="Hard websocket frame cap: a bigger frame closes the connection (1009).")
    client_msgs_per_s: float = Field(
        20.0, gt=0, description="Sustained client message rate; burst is twice this. Excess gets 'rate_limited'.")
    client_channels_per_s: float = Field(
        100.0, gt=0, description="Sustained channel names subscribed per second per connection (burst twice "
        "this, at least 64: one full subscribe); excess subscribe messages get 'rate_limited'.")
    max_channels: int = Field(64, ge=1, le=10_000, description="Channels one connection may hold.")
    max_clients: int = Field(5000, ge=1, description="Concurrent websocket connections; more are refused (1013).")
    allowed_origins: list[str] = Field(
        [], description="Browser origins allowed to open the websocket, in addition to the gateway's own "
        "http://127.0.0.1:<port> and http://localhost:<port>. Clients that send no Origin (non-browser) are allowed.")
    history_bars: int = Field(600, ge=1, le=100_000, description="Closed bars kept per symbol and interval for snapshots.")
    max_symbols: int = Field(20_000, ge=10, description="Symbols with a remembered last price (LRU beyond).")
    token_secret: str = env_field(
        "", "HMAC secret for user tokens. Empty: a random secret kept in <run_dir>/keys/gateway_token.key "
        "(created 0600 by the gateway or 'spx token').", "SPX_TOKEN_SECRET", repr=False)
    loopback_user: str = Field(
        "default", max_length=64, description="User the dashboard acts for without a token when the gateway is "
        "bound to a loopback address (127.0.0.1, ::1, localhost) and the connection comes from loopback: its "
        "coach, positions, orders, fills and flatten. Empty: always ask for a token. Never applied on any "
        "other bind address.")
    token_ttl_s: int = Field(12 * 3600, ge=60, le=90 * 86400, description="Default lifetime of 'spx token' tokens.")
    snapshot_rpc: bool = Field(
        True, description="Ask the aggregator's query API (last tick, bars since) for snapshots of series the "
        "gateway has not seen since it started; the gateway's own bounded history is the fallback.")
    static_dir: Path | None = Field(None, description="Dashboard files (default: the package's static/ folder).")

    def secret_path(self, runtime: RuntimeConfig) -> Path:
        return runtime.path("keys", "gateway_token.key")
