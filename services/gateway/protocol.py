"""The browser-facing protocol: client requests, server messages, channels, and their JSON Schemas.

Everything a UI developer needs is in ``docs/gateway.md``, generated from the pydantic models
here (``python -m services.gateway.protocol > docs/gateway.md``; a test keeps the two equal).
Bus bodies keep their snake_case names on the bus; towards browsers bar fields are camelCase.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from spx_common.errors import Refused
from spx_common import models as m
from spx_common.schemas import model_for

# --------------------------------------------------------------------------- channels

SYMBOL = r"[A-Za-z0-9:._-]{1,48}"
INTERVAL = r"[0-9]{1,4}[smh]"
PUBLIC_CHANNELS = {
    "price": re.compile(rf"^price:({SYMBOL})\Z"),
    "microbar": re.compile(rf"^microbar:({SYMBOL}):({INTERVAL})\Z"),
}
SIMPLE_CHANNELS = ("setups", "snapshot", "status")
#: channels that carry one user's data and need a token; a connection only gets its own user's
USER_CHANNELS = ("coach", "positions", "orders", "fills")


class ChannelError(Refused, ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_channel(name: str) -> tuple[str, tuple[str, ...]]:
    """``"microbar:SPY:1s"`` -> ``("microbar", ("SPY", "1s"))``; raise :class:`ChannelError` when unknown."""
    if not isinstance(name, str):
        raise ChannelError("bad_channel", "channel names are strings")
    if name in SIMPLE_CHANNELS or name in USER_CHANNELS:
        return name, ()
    for kind, rx in PUBLIC_CHANNELS.items():
        match = rx.match(name)
        if match:
            return kind, match.groups()
    raise ChannelError("bad_channel", f"unknown channel {name[:80]!r}; see docs/gateway.md for channel names")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


_BAR_FIELDS = [(f.name, camel(f.name)) for f in msgspec.structs.fields(m.MicroBar)]


def bar_json(bar: m.MicroBar) -> dict[str, Any]:
    """A bar as the browser sees it: camelCase keys, every field present (null when unknown)."""
    return {c: getattr(bar, n) for n, c in _BAR_FIELDS}


# --------------------------------------------------------------------------- client -> server


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Subscribe(_Strict):
    """Start receiving channels: each first gets a ``snapshot`` message, then ``update`` messages."""

    op: Literal["subscribe"]
    channels: Annotated[list[str], Field(min_length=1, max_length=64)]
    latency: bool = Field(False, description="Add latencyMs (bus publish to gateway send) to every message.")
    id: str | None = Field(None, max_length=64, description="Echoed back in the 'subscribed' acknowledgement.")


class Unsubscribe(_Strict):
    """Stop receiving channels (unknown or unsubscribed names are ignored)."""

    op: Literal["unsubscribe"]
    channels: Annotated[list[str], Field(min_length=1, max_length=64)]
    id: str | None = Field(None, max_length=64)


class Ping(_Strict):
    """Liveness check; answered with a ``pong`` message."""

    op: Literal["ping"]
    id: str | None = Field(None, max_length=64)


class Auth(_Strict):
    """Present a (new) token on an open connection: needed again after ``token_expired``, which drops
    the user for good on that connection. Answered with an ``authenticated`` message (its user and
    expiry); a refused token gets an error (``bad_token``, ``token_expired``) and leaves the connection
    without a user. A token of another user first drops the previous user's channels."""

    op: Literal["auth"]
    token: str = Field(min_length=1, max_length=512)
    id: str | None = Field(None, max_length=64)


class CredentialsSet(_Strict):
    """Store this user's Tradier access token and account id (needs a token on the connection). The
    gateway forwards it to the broker, which seals it at once; it is never echoed, logged or returned.
    Answered with a ``credentials`` message (``data.op`` ``credentials.set``)."""

    op: Literal["credentials.set"]
    token: str = Field(min_length=8, max_length=512, description="Tradier access token (write-only).")
    accountId: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$", description="Tradier account id.")
    id: str | None = Field(None, max_length=64)


class CredentialsTest(_Strict):
    """Fetch balances with the stored token from the user's environment (sandbox or production base
    URL); answered with the account type and option buying power, or ``ok: false`` and why."""

    op: Literal["credentials.test"]
    id: str | None = Field(None, max_length=64)


class CredentialsRemove(_Strict):
    """Delete the stored token of this user (``data.removed`` says whether one was stored)."""

    op: Literal["credentials.remove"]
    id: str | None = Field(None, max_length=64)


class CredentialsStatus(_Strict):
    """Environment, whether a token is stored, last successful call / last error, and whether execution
    would be allowed now and, if not, the exact reason."""

    op: Literal["credentials.status"]
    id: str | None = Field(None, max_length=64)


class Flatten(_Strict):
    """Close this user's open positions through the broker's flatten (the same rules as ``spx broker
    flatten``: gated like any order, refused ones are listed). Needs a user on the connection (a token, or
    the loopback dashboard user). ``symbol``: only that option contract; absent: every open position.
    Answered with a ``flatten`` message."""

    op: Literal["flatten"]
    symbol: str | None = Field(None, min_length=1, max_length=64, description="Option symbol to close; absent: all.")
    id: str | None = Field(None, max_length=64)


class FlattenData(_Strict):
    """``data`` of a ``type: flatten`` message, the answer to ``op: flatten``."""

    ok: bool = Field(description="True when every exit order was queued (nothing refused).")
    user: str
    symbol: str | None = None
    orders: list[str] = Field([], description="Exit orders queued.")
    blocked: list[str] = Field([], description="Why exits were refused (kill switch, user disabled, ...).")
    closing: list[str] = Field([], description="Option symbols the broker is closing (an exit queued now, or after "
                               "its resting protective stop is cancelled).")
    stopsCancelled: int = Field(0, description="Resting orders (protective stops) cancelled first; the exit of "
                                "their position is placed once the broker confirms each cancel.")
    id: str | None = None


class Ack(_Strict):
    """Acknowledge one of your coach alerts as useful (needs a user on the connection). Idempotent: the
    first answer to an alert (ack or dismiss) is final and every later one is answered with it. Answered
    with a ``feedback`` message; an id that is not one of your recent alerts gets ``unknown_event``."""

    op: Literal["ack"]
    eventId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                         description="The coach event's id (``data.id`` of a coach message).")
    id: str | None = Field(None, max_length=64)


class Dismiss(_Strict):
    """Dismiss one of your coach alerts as noise (same rules as ``ack``)."""

    op: Literal["dismiss"]
    eventId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                         description="The coach event's id (``data.id`` of a coach message).")
    id: str | None = Field(None, max_length=64)


class FeedbackData(_Strict):
    """``data`` of a ``type: feedback`` message, the answer to ``op: ack`` / ``op: dismiss``."""

    eventId: str
    action: Literal["ack", "dismiss"] = Field(description="The alert's recorded answer (the first one given).")
    kind: str = Field(description="The alert's kind.")
    first: bool = Field(description="True when this request recorded the answer; false when it was already given.")
    id: str | None = None


CREDENTIAL_REQUESTS = (CredentialsSet, CredentialsTest, CredentialsRemove, CredentialsStatus)
ClientMessage = Annotated[(Subscribe | Unsubscribe | Ping | Auth | CredentialsSet | CredentialsTest
                          | CredentialsRemove | CredentialsStatus | Flatten | Ack | Dismiss),
                          Field(discriminator="op")]
CLIENT_ADAPTER: TypeAdapter = TypeAdapter(ClientMessage)

#: deepest nesting of arrays/objects a client message may have (the protocol needs 2); deeper
#: messages are answered ``bad_json`` before they are parsed (a 4,000-deep ``[[[...]]]`` used to
#: exhaust the parser's recursion and close the connection)
MAX_JSON_DEPTH = 8


def json_depth_ok(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests arrays/objects at most ``limit`` deep (brackets inside strings ignored)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    if text.count("[") + text.count("{") <= limit:  # the usual case, at C speed
        return True
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


# --------------------------------------------------------------------------- server -> client

MessageType = Literal["welcome", "snapshot", "update", "subscribed", "unsubscribed", "pong", "credentials",
                      "authenticated", "flatten", "feedback", "error"]


class ServerMessage(_Strict):
    """Every server message. ``seq`` counts per channel: a snapshot carries the channel's current
    sequence and the updates after it carry the following ones, so a client stitches them with no
    gap and no duplicate. Only ``price`` and in-progress bars may be conflated for a slow client:
    a conflated update carries a later seq (``conflated`` says how many were folded into it)."""

    channel: str | None = Field(description="The channel name as subscribed; null for connection-level messages.")
    type: MessageType
    seq: int = Field(ge=0, description="Per-channel sequence; 0 for control messages.")
    source: Literal["tick", "poll"] = Field(description="How the data reached the mesh: live stream or REST polling.")
    data: Any = Field(description="Channel payload (schemas below), or error/control details.")
    ts: int | None = Field(None, description="Event time of the data, ns since the Unix epoch.")
    latencyMs: float | None = Field(None, description="Only when subscribed with latency: true.")
    conflated: int | None = Field(None, description="Updates replaced by this one in a slow client's queue.")
    cadenceMs: float | None = Field(
        None, description="Only on price channels served at poll cadence (tick_fanout switch, docs/rollout.md): "
        "one conflated price per this many ms, with source 'poll'. Absent at tick cadence.")


class ErrorData(_Strict):
    """``data`` of a ``type: error`` message. The connection stays open (except for close codes below)."""

    code: Literal["bad_json", "bad_request", "too_large", "rate_limited", "bad_channel", "unauthorized",
                  "bad_token", "token_expired", "too_many_channels", "broker_unavailable", "busy", "unknown_event"]
    message: str
    id: str | None = None


class AuthenticatedData(_Strict):
    """``data`` of a ``type: authenticated`` message, the answer to an ``auth`` request."""

    user: str = Field(description="The token's user: user channels of this user may be subscribed now.")
    expiresAt: int = Field(description="Token expiry, Unix seconds; then the user is dropped (token_expired).")
    id: str | None = None


class CredentialsData(_Strict):
    """``data`` of a ``type: credentials`` message, the answer to one ``credentials.*`` request of this
    connection's user. Never holds the token. When ``ok`` is false, ``code`` and ``message`` say why:
    ``no_user`` (no user record: an operator adds it with ``spx users add``), ``bad_request``,
    ``no_store``, ``no_key``, ``test_failed`` (the balances call failed: error class and HTTP status)."""

    op: Literal["credentials.set", "credentials.test", "credentials.remove", "credentials.status"]
    id: str | None = None
    ok: bool
    user: str
    code: str | None = None
    message: str | None = None
    stored: bool | None = Field(None, description="set: the token was sealed into the store.")
    removed: bool | None = Field(None, description="remove: a token was stored and is gone.")
    broker: Literal["paper", "tradier"] | None = None
    environment: Literal["sandbox", "production"] | None = None
    tokenStored: bool | None = None
    accountId: str | None = None
    accountType: str | None = Field(None, description="test: margin, cash or pdt, as Tradier reports it.")
    optionBuyingPower: float | None = Field(None, description="test: option buying power in dollars.")
    totalEquity: float | None = None
    lastOkNs: int | None = Field(None, description="status: last successful broker call with this token.")
    lastError: str | None = None
    executionAllowed: bool | None = Field(None, description="status: would the broker send this user's orders now.")
    reason: str | None = Field(None, description="status: why not - user_disabled, kill_switch, not_opted_in, "
                               "paper_auto_execution_off, auto_execution_flag_off, no_token, execution_disabled, "
                               "production_not_enabled.")


class PriceData(_Strict):
    """``price:<symbol>`` data: the last trade (index value for indices) and the last quote."""

    sym: str
    price: float | None = Field(description="Last trade price or index value (quote mid when none yet).")
    bid: float | None = None
    ask: float | None = None
    size: float | None = None
    ts: int


_bar_model = model_for(m.MicroBar)
BarData = create_model(
    "BarData",
    __config__=ConfigDict(extra="forbid"),
    __doc__="``microbar:<symbol>:<interval>`` update data: one bar, camelCase (``closed`` false while in progress).",
    **{camel(name): (info.annotation, info.default if not info.is_required() else ...)
       for name, info in _bar_model.model_fields.items()},
)


class BarSnapshot(_Strict):
    """``microbar`` snapshot data: recent closed bars (oldest first) and the bar in progress."""

    bars: list[BarData]  # type: ignore[valid-type]  # a model built at run time
    current: BarData | None = None  # type: ignore[valid-type]  # a model built at run time


class SetupsSnapshot(_Strict):
    """``setups`` snapshot data: latest transition of each recent setup (update data is one transition)."""

    setups: list[model_for(m.SetupTransition)]  # type: ignore[valid-type]  # a model built at run time


class MarketSnapshot(_Strict):
    """``snapshot`` channel data: the detector's market-state document (levels, VWAP bands, GEX, regime)."""

    model_config = ConfigDict(extra="allow")


class HeldCoachEvent(model_for(m.CoachEvent)):  # type: ignore[misc]  # a generated pydantic model class
    """A coach alert as the ``coach`` snapshot holds it: the CoachEvent fields and this user's answer."""

    feedback: Literal["ack", "dismiss"] | None = Field(None, description="This user's answer to the alert (op: ack "
                                                       "or dismiss), absent until answered.")


class CoachSnapshot(_Strict):
    """``coach`` snapshot data: this user's recent tactical alerts (update data is one CoachEvent)."""

    events: list[HeldCoachEvent]


class PositionData(model_for(m.Position)):  # type: ignore[misc,valid-type]  # a model built at run time
    """One position: the broker's (``mark`` is the quote mid its unrealized P&L is marked at) plus the
    contract's greeks from the newest chain document, when the feed has published one."""

    delta: float | None = Field(None, description="Per contract, from the chain (vendor or model).")
    gamma: float | None = Field(None, description="Per contract per index point, from the chain.")
    iv: float | None = Field(None, description="Implied volatility (fraction), from the chain.")


class PositionsSnapshot(_Strict):
    """``positions`` snapshot data: this user's open and closed positions (update data is one Position)."""

    positions: list[PositionData]


class OrdersSnapshot(_Strict):
    """``orders`` snapshot data: recent orders (update: one Order)."""

    orders: list[model_for(m.Order)]  # type: ignore[valid-type]  # a model built at run time


class FillsSnapshot(_Strict):
    """``fills`` snapshot data: recent fills (update: one Fill)."""

    fills: list[model_for(m.Fill)]  # type: ignore[valid-type]  # a model built at run time


class ServiceStatus(_Strict):
    alive: bool
    state: str = Field(description="The heartbeat's state (running, degraded, ...); 'down' for a service not "
                       "heard, 'fatal' for one that cannot start (its configuration: see reason).")
    detail: str = ""
    heartbeatAgeS: float | None = Field(None, description="Seconds since its last heartbeat; null when never heard.")
    healthy: bool = Field(True, description="Heard within the peer timeout and its state is 'running'.")
    reason: str = Field("", description="Why it is not healthy (e.g. 'invalid configuration: [aggregator] "
                        "allowed_lateness_ms = ...', 'no heartbeat for 5s'); empty when healthy.")


class FeedStatusData(_Strict):
    mode: Literal["tick", "poll", "replay", "down"]
    connected: bool
    eventsPerS: float
    lastEventAgeMs: float | None = None
    detail: str = Field("", description="The feed's own words: the vendor when live, the source and speed when "
                        "replaying (e.g. 'synthetic x1', 'journal x10').")
    eventTs: int | None = Field(None, description="Event time of the feed's newest event (ns): the session date "
                                "of a replay.")
    availabilityPct: float | None = Field(None, description="Share of the regular session's seconds so far with a "
                                          "fresh price (tick or poll), percent (SLO > 99.5; docs/feed.md).")
    availabilityDay: str | None = Field(None, description="The session (New York date) availabilityPct is about.")
    longestGapS: int = Field(0, description="Longest run of session seconds without a fresh price in that session.")
    longestGapStartNs: int | None = Field(None, description="When that gap began (ns).")
    source: Literal["live", "replay", "synthetic", ""] = Field(
        "", description="What the mesh runs on: live only when the feed is a vendor's stream; replay (journal, "
        "flat files) or synthetic (the generated session). Empty from a feed older than this field.")
    badge: str = Field("", description="What to show: 'LIVE', or 'REPLAY <date> x<speed>' (with '(synthetic)').")
    replayDate: str = Field("", description="Replay only: the New York date being replayed (YYYY-MM-DD).")
    speed: str = Field("", description="Replay only: the replay speed ('1', '20', 'max').")
    runId: str = Field("", description="The run stamped on every stored row (docs/store.md, provenance).")


class StatusData(_Strict):
    """``status`` data (snapshot and every update, about once a second)."""

    services: dict[str, ServiceStatus]
    feed: FeedStatusData | None = None
    clients: int
    priceBroadcastRate: float
    switches: dict[str, dict[str, bool | str]] = Field(
        {}, description="Rollout switches each running service applies now (service -> switch -> value), "
        "from their heartbeats; see docs/rollout.md.")


class Welcome(_Strict):
    """``welcome`` data, sent first on every connection."""

    user: str | None = Field(description="The token's user, null without a token.")
    channels: list[str] = Field(description="Channel name forms this gateway serves.")
    priceThrottleMs: float
    protocol: int


CHANNEL_DATA: dict[str, tuple[type[BaseModel] | None, type[BaseModel]]] = {
    "price:<symbol>": (PriceData, PriceData),
    "microbar:<symbol>:<interval>": (BarSnapshot, BarData),
    "setups": (SetupsSnapshot, model_for(m.SetupTransition)),
    "snapshot": (MarketSnapshot, MarketSnapshot),
    "status": (StatusData, StatusData),
    "coach": (CoachSnapshot, model_for(m.CoachEvent)),
    "positions": (PositionsSnapshot, PositionData),
    "orders": (OrdersSnapshot, model_for(m.Order)),
    "fills": (FillsSnapshot, model_for(m.Fill)),
}
PROTOCOL = 1


def schema_doc() -> str:
    """The generated part of ``docs/gateway.md``: one JSON Schema per message and payload."""
    out = ["## JSON Schemas (generated)", "",
           "Generated from `services/gateway/protocol.py` by `python -m services.gateway.protocol --write`; "
           "`tests/gateway/test_gateway_docs.py` fails when this section and the code disagree.", ""]

    def block(title: str, model: Any) -> None:
        schema = model.model_json_schema() if isinstance(model, type) else TypeAdapter(model).json_schema()
        out.extend([f"### {title}", "", "```json", json.dumps(schema, indent=2, sort_keys=True), "```", ""])

    block("Client message (subscribe | unsubscribe | ping | auth | credentials.* | flatten | ack | dismiss)",
          ClientMessage)
    block("Server message envelope", ServerMessage)
    block("Error data", ErrorData)
    block("Welcome data", Welcome)
    block("Credentials data (answer to credentials.*)", CredentialsData)
    block("Authenticated data (answer to auth)", AuthenticatedData)
    block("Flatten data (answer to flatten)", FlattenData)
    block("Feedback data (answer to ack and dismiss)", FeedbackData)
    for channel, (snap, upd) in CHANNEL_DATA.items():
        if snap is upd:
            block(f"`{channel}` data (snapshot and update)", snap)
        else:
            block(f"`{channel}` snapshot data", snap)
            block(f"`{channel}` update data", upd)
    return "\n".join(out)


MARKER = "<!-- generated from services/gateway/protocol.py: everything below this line -->"


def write_doc(path: Path) -> None:
    """Replace the generated part of ``docs/gateway.md`` (after :data:`MARKER`) with :func:`schema_doc`."""
    head = path.read_text().split(MARKER)[0]
    path.write_text(head + MARKER + "\n\n" + schema_doc())


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        write_doc(Path(__file__).resolve().parents[2] / "docs" / "gateway.md")
    else:
        print(schema_doc(), end="")
