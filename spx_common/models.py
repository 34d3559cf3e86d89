"""Every message type that crosses a process boundary.

These msgspec ``Struct`` classes are the single source of truth for the wire
schema.  msgspec's typed msgpack decoder validates types, required fields and
the ``Meta`` constraints while decoding, at roughly 0.5 us per tick
(``benchmarks/codec.py``), so every subscriber validates every frame it
receives without a second pass.  pydantic twins of each model (for JSON
Schema, UI documentation and rich boundary errors) are generated from these
classes in :mod:`spx_common.schemas`, never written by hand.

Units, everywhere:
  * times are integer nanoseconds since the Unix epoch (UTC), named ``*_ns``
    or ``ts``;
  * prices are floats in the instrument's quote currency (USD);
  * stock quote sizes are shares, option quote and trade sizes are contracts,
    index values have no size.

Adding a field: give it a default so older publishers still decode, and add a
line to ``docs/protocol.md``.  Removing or retyping a field bumps
:data:`spx_common.codec.PROTOCOL_VERSION`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
import hashlib

NonNeg = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
Ns = Annotated[int, Meta(ge=0, description="Unix time in nanoseconds")]
Source = Literal["tick", "poll", "replay", "backfill"]
Direction = Literal["long", "short"]
ExitAction = Literal["scale_out", "move_stop", "trail_stop", "exit_all", "hold"]
Severity = Literal["info", "warning", "critical"]
ServiceState = Literal["starting", "running", "degraded", "stopping"]


class Base(Struct, kw_only=True, omit_defaults=True):
    """Base for all messages: keyword-only construction, defaults omitted on the wire.

    High-volume types (ticks, bars) are declared ``gc=False``: they hold only scalars and lists
    of ints, so they can never be part of a reference cycle, and keeping hundreds of thousands
    of them in caches would otherwise make every cyclic-GC pass rescan them (measured: body
    decode of cached ticks ran ~6x slower with GC tracking).
    """

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    def to_builtins(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# --------------------------------------------------------------------------- market data
# Trade, Quote and IndexValue are members of one tagged union (field ``k``) so a single
# ``ticks`` frame can carry a vendor array of mixed events in stream order.


class Trade(Base, kw_only=True, tag="t", tag_field="k", gc=False):
    """One trade print (stock or option)."""

    sym: str
    price: NonNeg
    size: NonNeg = 0.0
    ts: Ns
    seq: int = 0  # vendor sequence number (Massive ``q``); 0 when unknown
    exch: int = 0
    cond: list[int] = []
    source: Source = "tick"
    backfilled: bool = False
    #: not 0: the print is not a regular print for bars and stays out of the lifecycle (1 condition,
    #: 2 correction, 3 outlier guard: out of bars; 4 volume only: its size counts in bar volume, nothing
    #: else; spx_common/marketrules.py, docs/microbars.md); kept in the tick cache and the journal
    excl: int = 0


class Quote(Base, kw_only=True, tag="q", tag_field="k", gc=False):
    """One NBBO quote update. Stock sizes are shares, option sizes are contracts."""

    sym: str
    bid: NonNeg
    ask: NonNeg
    bid_size: NonNeg = 0.0
    ask_size: NonNeg = 0.0
    ts: Ns
    seq: int = 0
    bid_exch: int = 0
    ask_exch: int = 0
    source: Source = "tick"
    backfilled: bool = False


class IndexValue(Base, kw_only=True, tag="v", tag_field="k", gc=False):
    """An index value (e.g. ``I:SPX``); no size, no quote."""

    sym: str
    value: NonNeg
    ts: Ns
    source: Source = "tick"
    backfilled: bool = False


MarketEvent = Trade | Quote | IndexValue


def parse_interval(text: str) -> int:
    """A bar interval in ns: '1s' -> 1e9, '5s', '250ms', '1m' are accepted."""
    text = text.strip().lower()
    for suffix, mult in (("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000)):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            value = int(text[: -len(suffix)]) * mult
            if value <= 0:
                break
            return value
    raise ValueError(f"bad bar interval {text!r}; use e.g. 1s, 5s, 250ms, 1m")


_INTERVAL_NS: dict[str, int] = {}


def bar_end_ns(bar: MicroBar) -> int:
    """The end of ``bar`` (exclusive): its start plus its interval."""
    iv = _INTERVAL_NS.get(bar.interval)
    if iv is None:
        iv = parse_interval(bar.interval)
        if len(_INTERVAL_NS) < 64:
            _INTERVAL_NS[bar.interval] = iv
    return bar.start_ns + iv


# mypy models msgspec Structs as dataclasses and refuses a frozen one under a non-frozen base; msgspec allows
# it (frozen is per class: Base's fields are set only at construction).
class MicroBar(Base, kw_only=True, gc=False, frozen=True):  # type: ignore[misc]  # allowed by msgspec: above
    """A 1s/5s (or any interval) bar with quote microstructure.

    Frozen: a bar is a fact once published; detectors and the backtester share bars without
    copying them (``msgspec.structs.replace`` makes a changed copy).

    Formulas are specified in ``docs/microbars.md``; field names are snake_case on the
    bus and camelCase towards browsers.
    """

    sym: str
    interval: str  # "1s", "5s", "60s"
    start_ns: Ns
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    trades: int = 0
    vwap: float | None = None
    buy_volume: float | None = None
    sell_volume: float | None = None
    neutral_volume: float | None = None
    delta_volume: float | None = None
    bid_ask_imbalance: float | None = None
    ask_bid_size_ratio: float | None = None
    quote_coverage_pct: float | None = None
    avg_spread_bps: float | None = None
    bid_size_at_close: float | None = None
    ask_size_at_close: float | None = None
    closed: bool = False
    gap_fill: bool = False
    source: Source = "tick"


# --------------------------------------------------------------------------- health


class FeedStatus(Base, kw_only=True):
    """Published by the feed every second on ``status.feed.mode``."""

    mode: Literal["tick", "poll", "replay", "down"]
    connected: bool
    events_per_s: float = 0.0
    last_event_age_ms: float | None = None
    reconnects: int = 0
    ts: Ns
    detail: str = ""
    #: regular-session availability of the current (or last) session so far (services/feed/availability.py)
    availability_pct: float | None = None
    availability_day: str | None = None
    longest_gap_s: int = 0
    longest_gap_start_ns: int | None = None
    #: provenance of what the mesh makes from this feed (spx_common.provenance): live | replay | synthetic
    source: str = ""
    #: the run stamped on stored rows (``spx up``'s SPX_RUN_ID, else the feed's session)
    run_id: str = ""
    #: replay only: the New York date being replayed and the speed ("20", "max")
    replay_date: str = ""
    speed: str = ""


class Heartbeat(Base, kw_only=True):
    """Sent by every publisher each second on ``hb.<service>``.

    ``session`` changes when the process restarts; ``topics`` maps each topic the
    publisher has sent on to its last sequence number, so a subscriber can detect
    loss at the tail of a stream, not only between frames. ``flags`` are the rollout
    switches the process is applying now (``spx status`` and the dashboard show them).
    """

    service: str
    session: str
    pid: int
    started_ns: Ns
    ts: Ns
    frames_out: NonNegInt = 0
    state: ServiceState = "running"
    detail: str = ""
    stats: dict[str, float] = {}
    flags: dict[str, bool | str] = {}


class Watermark(Base, kw_only=True):
    """Sent on ``wm.<service>`` by a publisher of event-time data: every frame it publishes later carries
    events at or after ``ns`` (docs/protocol.md, "Event-time alignment"). ``ns`` = 2**62: the stream ended.
    ``idle``: a relay whose own inputs carry no watermark (a tool, an older publisher) promises nothing:
    consumers stop waiting for it until it sends a watermark without ``idle``."""

    ns: Ns
    idle: bool = False


# --------------------------------------------------------------------------- detection


class SetupCandidate(Base, kw_only=True):
    """What a detector plugin returns: a proposed setup with its evidence."""

    detector: str
    family: str
    sym: str
    direction: Direction
    entry_low: float
    entry_high: float
    stop: float
    targets: list[float] = []
    confidence: Annotated[float, Meta(ge=0, le=1)] = 0.5
    ts: Ns
    evidence: dict[str, str | float | int | bool | None] = {}


SetupState = Literal[
    "forming", "ready", "triggered", "target1_hit", "target2_hit", "invalidated", "stopped", "expired", "blocked"
]


class SetupTransition(Base, kw_only=True):
    """A lifecycle state change of one setup instance, published on ``setup.transition``."""

    setup_id: str
    detector: str
    family: str
    sym: str
    direction: Direction
    from_state: SetupState | None = None
    to_state: SetupState
    reason: str
    ts: Ns
    price: float | None = None
    entry_low: float | None = None
    entry_high: float | None = None
    stop: float | None = None
    targets: list[float] = []
    microstructure: dict[str, float | None] = {}
    macro_alignment_score: float | None = None
    confidence: float | None = None


# --------------------------------------------------------------------------- selection & exits


class SizingBreakdown(Base, kw_only=True):
    """Every term of a size (``spx_common/sizing.py``; formulas in docs/selector.md "Sizing"). Dollars per
    contract; ``valueAtEntry``/``valueAtStop``/``spread`` per share; ``entry``/``stop`` underlying levels."""

    maxRiskDollars: float
    contractsByRisk: int
    contractsByBuyingPower: int
    perContractDebit: float
    margin_limit_blocked: bool = False
    entry: float | None = None
    stop: float | None = None
    valueAtEntry: float | None = None
    valueAtStop: float | None = None
    spread: float | None = None
    perContractLoss: float | None = None
    minRiskPerContract: float | None = None
    pricing: str | None = None  # "iv" (Black-Scholes with the contract's IV) | "delta_gamma"
    buyingPower: float | None = None
    maxPremiumDollars: float | None = None
    contractsByPremium: int | None = None
    maxContracts: int | None = None
    contracts: int | None = None
    bound: str | None = None  # the binding limit: risk | buying power | premium | max_contracts


class ContractRecommendation(Base, kw_only=True):
    setup_id: str
    ok: bool
    reason: str
    occ_symbol: str | None = None
    tradier_symbol: str | None = None
    massive_symbol: str | None = None
    option_type: Literal["call", "put"] | None = None
    strike: float | None = None
    expiration: str | None = None
    delta: float | None = None
    bid: float | None = None
    ask: float | None = None
    mid: float | None = None
    suggestedContracts: int = 0
    sizing: SizingBreakdown | None = None
    iv: float | None = None  # the contract's implied volatility at selection (the broker re-sizes with it)
    gamma: float | None = None
    underlying: float | None = None  # underlying value when delta/gamma/the quote were taken
    ts: Ns = 0


class ExitAdvice(Base, kw_only=True):
    setup_id: str
    action: ExitAction
    reason: str
    ts: Ns
    fraction: float | None = None
    stop: float | None = None
    price: float | None = None
    r_multiple: float | None = None
    trailing_stop_path: list[float] = []


# --------------------------------------------------------------------------- execution

OrderSide = Literal["buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]


class Order(Base, kw_only=True):
    order_id: str  # our id; also the Tradier ``tag``
    user: str
    setup_id: str | None = None
    option_symbol: str
    side: OrderSide
    quantity: Annotated[int, Meta(gt=0)]
    type: OrderType
    price: float | None = None
    stop: float | None = None
    status: str = "pending"
    broker_id: str | None = None
    reason: str = ""
    ts: Ns


class Fill(Base, kw_only=True):
    order_id: str
    user: str
    option_symbol: str
    side: OrderSide
    quantity: Annotated[float, Meta(gt=0)]
    price: NonNeg
    ts: Ns
    fill_id: str = ""
    broker_id: str | None = None


class Position(Base, kw_only=True):
    user: str
    option_symbol: str
    quantity: float
    avg_price: float
    realized_pnl: float = 0.0
    unrealized_pnl: float | None = None
    ts: Ns
    mark: float | None = None  # the quote mid the unrealized P&L is marked at (None before a quote)


# --------------------------------------------------------------------------- coach


class CoachEvent(Base, kw_only=True):
    user: str
    kind: str  # entry_window_opened, stop_threat, target1_touched, flow_divergence_detected, pdt_alert, ...
    message: str
    ts: Ns
    setup_id: str | None = None
    severity: Severity = "info"
    data: dict[str, str | float | int | bool | None] = {}
    #: stable id (``coach_event_id``): what a user acknowledges or dismisses; "" from older coaches
    id: str = ""


def coach_event_id(user: str, kind: str, ts: int, setup_id: str | None) -> str:
    """The id of a coach event: the same inputs always give the same id (a replay re-identifies the
    same alerts); the coach's cooldown never emits one (user, kind, setup) twice at one time."""

    return hashlib.sha1(f"{user}|{kind}|{ts}|{setup_id or ''}".encode()).hexdigest()[:16]


class CoachFeedback(Base, kw_only=True):
    """A user's answer to a coach alert (``op: ack`` / ``op: dismiss`` on the gateway), published by the
    gateway on ``feedback.coach``: ``ack`` = useful, ``dismiss`` = noise. The first answer is final."""

    user: str
    event_id: str
    action: Literal["ack", "dismiss"]
    kind: str
    event_ts: Ns
    ts: Ns  # when the user answered (wall clock)


# --------------------------------------------------------------------------- control


class ErrorInfo(Base, kw_only=True):
    """The one error shape of every request/reply answer."""

    code: str
    message: str


class Reply(Base, kw_only=True):
    """Answer to every request: ``ok`` with a ``result``, or not ok with an ``error``."""

    ok: bool
    result: Any = None
    error: ErrorInfo | None = None


class BlockEvent(Base, kw_only=True):
    """Published whenever something is refused: a setup blocked, an order not sent."""

    service: str
    reason: str
    ts: Ns
    subject: str = ""
    detail: str = ""



# --------------------------------------------------------------------------- the tick wire, described


class WireSchemaDrift(ImportError):
    """A reader of tick bytes that does not read what these models say (raised when it is imported, so that
    whoever tries the import falls back to msgspec's decoding of these models)."""


def _type_text(t: msgspec.inspect.Type) -> str:
    """A field type as the tick wire's readers name it; any other type: its repr (no reader matches it)."""
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):  # documentation (a description): decoding is its type's
        t = t.type
    if isinstance(t, mi.StrType) and t.min_length is None and t.max_length is None and t.pattern is None:
        return "str"
    if isinstance(t, (mi.IntType, mi.FloatType)):
        name = "int" if isinstance(t, mi.IntType) else "float"
        bounds = (t.gt, t.le, t.lt, t.multiple_of)
        if all(b is None for b in bounds) and t.ge in (None, 0):
            return name if t.ge is None else f"{name}>=0"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.ListType) and t.min_length is None and t.max_length is None and _type_text(t.item_type) == "int":
        return "list[int]"
    if isinstance(t, mi.LiteralType):
        values: list[Any] = list(t.values)  # one field's literals are of one type (str here)
        return "|".join(repr(v) for v in sorted(values))
    return repr(t)


def tick_wire_schema(types: tuple[type, ...] = (Trade, Quote, IndexValue)) -> dict[str, dict[str, tuple[str, bool]]]:
    """The maps of a ``ticks`` body as these models define them: ``{tag: {wire key: (type text, required)}}``,
    the tag field included (``"tag"``). What a byte reader of ticks (the aggregator's compiled core) must read,
    exactly: :func:`wire_schema_drift` compares the two."""
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for t in types:
        info = msgspec.inspect.type_info(t)
        if not isinstance(info, msgspec.inspect.StructType) or info.tag is None:
            raise TypeError(f"{t!r} is not a tagged Struct")
        keys = {str(info.tag_field): ("tag", True)}
        for f in info.fields:
            keys[f.encode_name] = (_type_text(f.type), f.required)
        out[str(info.tag)] = keys
    return out


def wire_schema_drift(reader: dict[str, dict[str, tuple[str, bool]]],
                      models: dict[str, dict[str, tuple[str, bool]]]) -> list[str]:
    """Every difference between a reader's tick schema and the models' (:func:`tick_wire_schema`), as
    ``tag.key: ...`` lines; empty when they agree."""
    out = []
    for tag in sorted(reader.keys() | models.keys()):
        if tag not in reader:
            out.append(f"{tag}: a tick kind in models.py that the reader does not read")
            continue
        if tag not in models:
            out.append(f"{tag}: a tick kind the reader reads that models.py does not have")
            continue
        r, m = reader[tag], models[tag]
        for key in sorted(r.keys() | m.keys()):
            if key not in r:
                out.append(f"{tag}.{key}: {m[key][0]} in models.py, not read by the reader")
            elif key not in m:
                out.append(f"{tag}.{key}: read by the reader, not in models.py")
            elif r[key] != m[key]:
                (rt, rq), (mt, mq) = r[key], m[key]
                out.append(f"{tag}.{key}: models.py {mt} {'required' if mq else 'optional'}, "
                           f"the reader {rt} {'required' if rq else 'optional'}")
    return out
