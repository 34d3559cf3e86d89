"""The frame envelope: how every message crosses a ZeroMQ socket.

A frame is a two-part ZeroMQ multipart message::

    [ topic (utf-8 bytes, prefix-subscribable) , payload (msgpack) ]

and the payload is one msgpack array, decoded into :class:`Envelope`::

    [ v, type, src, session, seq, event_ns, pub_ns, body ]

=========  ===============================================================
v          protocol version (:data:`PROTOCOL_VERSION`); other versions are refused
type       message type, a key of the registry below; selects the body schema
src        publishing service name (``feed``, ``aggregator``, ...)
session    random id chosen at process start: a new one means the peer restarted
seq        per-(publisher, topic) sequence number starting at 1; gaps mean loss
event_ns   event time of the body (for a batch, its last event), ns since epoch
pub_ns     wall-clock publish time, ns since epoch (latency measurement only)
body       msgpack of the body type, decoded lazily and with schema validation
=========  ===============================================================

The body is kept as ``msgspec.Raw`` until asked for, so routers and ``spx tail``
can read headers without paying for the body.  A batch (the vendor sends arrays)
is simply a body whose schema is a list, e.g. type ``ticks`` is
``list[Trade | Quote | IndexValue]``.

``ticks`` frames, the bulk of the traffic, are the exception: every subscriber of a ``tick.``
topic decodes their body, so they are decoded in one pass with a typed envelope
(:class:`TicksEnvelope`). Skipping the body as ``Raw`` walks all of it, and then decoding it
walks it again: one pass saves ~1.1 k of ~8.9 k instructions per event in the aggregator's live
loop (docs/performance.md). Nothing changes on the wire or in what callers see: a frame that the
typed envelope refuses takes the general path, which accepts or refuses it exactly as before.

A consumer that reads ``ticks`` bodies as bytes (the aggregator's compiled core) decodes with
``lazy_ticks=True``: the header only (:class:`TicksHeader`, read by :func:`ticks_header`, the one walker of
the envelope), the body left in the payload at :attr:`Frame.body_at` until :meth:`Frame.body` is asked
for it, which validates it exactly as the other paths do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from spx_common.errors import Refused
from spx_common import models as m

PROTOCOL_VERSION = 1


class Envelope(msgspec.Struct, array_like=True):
    v: int
    type: str
    src: str
    session: str
    seq: int
    event_ns: int
    pub_ns: int
    body: msgspec.Raw


class TicksEnvelope(msgspec.Struct, array_like=True):
    """The envelope of a ``ticks`` frame with its body decoded in the same pass."""

    v: int
    type: str
    src: str
    session: str
    seq: int
    event_ns: int
    pub_ns: int
    body: list[m.MarketEvent]


class TicksHeader(msgspec.Struct, array_like=True, gc=False):
    """The header of a ``ticks`` frame decoded with ``lazy_ticks``: the body is still bytes in the payload
    (``body`` is always None here; :meth:`Frame.body` reads it)."""

    v: int
    type: str
    src: str
    session: str
    seq: int
    event_ns: int
    pub_ns: int
    body: None = None


# payload prefix of every ticks frame of this version: fixarray(8), v, fixstr "ticks"
_TICKS_HEAD = b"\x98" + msgspec.msgpack.encode(PROTOCOL_VERSION) + msgspec.msgpack.encode("ticks")
_TICKS_HEAD_LEN = len(_TICKS_HEAD)
# bytes a header value of each msgpack format takes, from its type byte: fixstr and every int format;
# 0 for str8/16/32 (the length follows); a large negative number for any other format (not a header value)
_NOT_HEADER = -(1 << 62)
_SKIP = [_NOT_HEADER] * 256
for _b in range(0x00, 0x80):
    _SKIP[_b] = 1  # positive fixint
for _b in range(0xE0, 0x100):
    _SKIP[_b] = 1  # negative fixint
for _b in range(0xA0, 0xC0):
    _SKIP[_b] = 1 + (_b & 0x1F)  # fixstr
for _b, _w in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
    _SKIP[_b] = 1 + _w  # uint8..64, int8..64
for _b in (0xD9, 0xDA, 0xDB):
    _SKIP[_b] = 0  # str8/16/32
_SKIP = tuple(_SKIP)
_STR_LEN_WIDTH = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_TICKS_HEADER_DECODER = msgspec.msgpack.Decoder(TicksHeader)


def _str8_32(payload: bytes, i: int) -> int:
    """Bytes the str8/16/32 at ``i`` takes."""
    w = _STR_LEN_WIDTH[payload[i]]
    return 1 + w + int.from_bytes(payload[i + 1:i + 1 + w], "big")


def _ticks_body_at(payload: bytes) -> int:
    """Offset of the body in a ``ticks`` payload: the body is the array's last element, so its msgpack is the
    payload's suffix after the prefix, two strings and three ints. Only finds the offset (an IndexError, or a
    negative or wrong offset, on bytes of other formats): :func:`ticks_header` has msgspec check what it
    skipped."""
    skip = _SKIP
    i = _TICKS_HEAD_LEN
    i += skip[payload[i]] or _str8_32(payload, i)  # src
    i += skip[payload[i]] or _str8_32(payload, i)  # session
    i += skip[payload[i]]  # seq
    i += skip[payload[i]]  # event_ns
    return i + skip[payload[i]]  # pub_ns


def ticks_header(payload: bytes) -> tuple[TicksHeader, int] | None:
    """The header of a ``ticks`` payload of this protocol version and where its body starts, without reading
    the body: the one reader of the envelope's header for every consumer of ``ticks`` bodies as bytes.

    :func:`_ticks_body_at` finds the offset; msgspec then decodes the header bytes before it (closed with a
    nil body) as :class:`TicksHeader`, so the header is validated exactly as the general path validates it
    (the same types, the same values), and an offset that is not the end of seven valid header fields makes
    the decode fail. None when ``payload`` is not bytes, is not a ``ticks`` payload of this version, its
    header does not decode, or no body follows."""
    if type(payload) is not bytes or not payload.startswith(_TICKS_HEAD):
        return None
    try:
        at = _ticks_body_at(payload)
        if not _TICKS_HEAD_LEN < at < len(payload):
            return None
        return _TICKS_HEADER_DECODER.decode(payload[:at] + b"\xc0"), at
    except (IndexError, msgspec.DecodeError):  # ValidationError included
        return None


class FrameError(Refused, ValueError):
    """A frame that cannot be accepted. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# type name -> body schema. Extend with :func:`register`; never reuse a name for another schema.
_REGISTRY: dict[str, Any] = {
    "ticks": list[m.MarketEvent],
    "bar": m.MicroBar,
    "bars": list[m.MicroBar],
    "feed_status": m.FeedStatus,
    "heartbeat": m.Heartbeat,
    "watermark": m.Watermark,
    "setup_candidate": m.SetupCandidate,
    "setup_transition": m.SetupTransition,
    "recommendation": m.ContractRecommendation,
    "exit_advice": m.ExitAdvice,
    "order": m.Order,
    "fill": m.Fill,
    "position": m.Position,
    "coach": m.CoachEvent,
    "coach_feedback": m.CoachFeedback,
    "block": m.BlockEvent,
    "reply": m.Reply,
    # free-form documents (market state, control requests, config reloads): a string-keyed map
    "doc": dict[str, Any],
}
_DECODERS: dict[str, msgspec.msgpack.Decoder] = {}
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope)
_TICKS_DECODER = msgspec.msgpack.Decoder(TicksEnvelope)
_ENCODER = msgspec.msgpack.Encoder()


def register(type_name: str, schema: Any) -> None:
    """Register a body schema for ``type_name`` (idempotent for the same schema)."""
    existing = _REGISTRY.get(type_name)
    if existing is not None and existing != schema:
        raise ValueError(f"message type {type_name!r} is already registered with another schema")
    _REGISTRY[type_name] = schema
    _DECODERS.pop(type_name, None)


def registered_types() -> dict[str, Any]:
    return dict(_REGISTRY)


def _decoder(type_name: str) -> msgspec.msgpack.Decoder:
    dec = _DECODERS.get(type_name)
    if dec is None:
        schema = _REGISTRY.get(type_name)
        if schema is None:
            raise FrameError("unknown_type", f"unknown message type {type_name!r}")
        dec = _DECODERS[type_name] = msgspec.msgpack.Decoder(schema)
    return dec


def encode_body(body: Any) -> bytes:
    return _ENCODER.encode(body)


def encode_payload(
    type_name: str, body: Any, *, src: str, session: str, seq: int, event_ns: int, pub_ns: int | None = None
) -> bytes:
    """Encode one payload frame. ``body`` may be a Struct, a list of Structs or builtins.

    One pass: the envelope array as a tuple with the body inline is byte for byte what
    :class:`Envelope` with the body pre-encoded as ``Raw`` gives, without the second encode and copy."""
    return _ENCODER.encode((PROTOCOL_VERSION, type_name, src, session, seq, event_ns,
                            time.time_ns() if pub_ns is None else pub_ns, body))


@dataclass(slots=True)
class Frame:
    """A received frame: header fields plus lazily decoded, validated body.

    ``env`` is an :class:`Envelope` (body kept as ``msgspec.Raw``), for a ``ticks`` frame a
    :class:`TicksEnvelope` whose body is already decoded, or with ``lazy_ticks`` a :class:`TicksHeader`
    whose body is ``payload[body_at:]``, not decoded; read the body with :meth:`body` and its msgpack with
    :meth:`raw_body`, not through ``env.body``.
    """

    topic: str
    env: Envelope | TicksEnvelope | TicksHeader
    payload: bytes = b""  # the payload as received
    body_at: int = -1  # with a TicksHeader: where the body starts in ``payload``
    _taken: bool = False  # the TicksEnvelope's decoded body was handed out by body()

    @property
    def type(self) -> str:
        return self.env.type

    @property
    def seq(self) -> int:
        return self.env.seq

    @property
    def event_ns(self) -> int:
        return self.env.event_ns

    @property
    def pub_ns(self) -> int:
        return self.env.pub_ns

    @property
    def src(self) -> str:
        return self.env.src

    @property
    def session(self) -> str:
        return self.env.session

    def body(self) -> Any:
        """Decode and validate the body against its registered schema (raises FrameError).

        Every call returns a new object, as if decoded anew (the first call of a ``ticks`` frame
        decoded without ``lazy_ticks`` returns the body decoded with the envelope)."""
        env = self.env
        t = type(env)
        if t is TicksEnvelope:
            if not self._taken:
                self._taken = True
                return env.body
            return _decoder("ticks").decode(self.raw_body())
        try:
            if t is TicksHeader:
                return _decoder("ticks").decode(memoryview(self.payload)[self.body_at:])
            return _decoder(env.type).decode(env.body)
        except msgspec.ValidationError as exc:
            raise FrameError("schema", f"{self.env.type} body from {self.env.src}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise FrameError("garbage", f"{self.env.type} body from {self.env.src}: {exc}") from exc

    def raw_body(self) -> bytes | msgspec.Raw:
        """The body's msgpack, as it arrived (not decoded, not validated)."""
        env = self.env
        t = type(env)
        if t is TicksHeader:
            return self.payload[self.body_at:]
        if t is TicksEnvelope:
            return self.payload[_ticks_body_at(self.payload):]
        return env.body


def decode_frames(parts: list[bytes], lazy_ticks: bool = False) -> Frame:
    """Decode a multipart message's header. Raises :class:`FrameError` with a reason label.

    ``lazy_ticks``: a ``ticks`` payload whose header parses is not decoded further (:class:`TicksHeader`,
    body at :attr:`Frame.body_at`); its body is validated when :meth:`Frame.body` is called."""
    if len(parts) != 2:
        raise FrameError("frames", f"expected 2 parts (topic, payload), got {len(parts)}")
    try:
        topic = parts[0].decode()
    except UnicodeDecodeError as exc:
        raise FrameError("garbage", "topic is not utf-8") from exc
    payload = parts[1]
    if type(payload) is bytes and payload.startswith(_TICKS_HEAD):
        if lazy_ticks:
            head = ticks_header(payload)
            if head is not None:
                return Frame(topic, head[0], payload, head[1])
        try:
            return Frame(topic, _TICKS_DECODER.decode(payload), payload)
        except msgspec.DecodeError:  # ValidationError included: the general path below refuses it or not
            pass
    if not payload or not (0x90 <= payload[0] <= 0x9F or payload[0] in (0xDC, 0xDD)):
        raise FrameError("garbage", f"payload on {topic!r} is not a msgpack array")
    try:
        env = _ENVELOPE_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise FrameError("schema", f"envelope on {topic!r}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise FrameError("garbage", f"envelope on {topic!r}: {exc}") from exc
    if env.v != PROTOCOL_VERSION:
        raise FrameError("version", f"protocol version {env.v} on {topic!r} (this build speaks {PROTOCOL_VERSION})")
    return Frame(topic, env, payload)


def check_codec() -> None:
    """Fail fast at start-up if the codec cannot round-trip a sample frame."""
    sample = [m.Trade(sym="SPY", price=1.0, size=1, ts=1), m.Quote(sym="SPY", bid=1, ask=1.01, ts=2)]
    payload = encode_payload("ticks", sample, src="selftest", session="x", seq=1, event_ns=2)
    frame = decode_frames([b"tick.SPY", payload])
    if frame.body() != sample:
        raise RuntimeError("codec self-test failed: round trip changed the sample frame")
