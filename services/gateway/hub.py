"""The gateway's pure core: channel state, sequencing, snapshots, throttling and client queues.

No sockets and no clock: the service shell feeds it decoded bus bodies and a monotonic ``now``,
and drains each :class:`Client`'s queue onto its websocket. Everything here is synchronous, so a
snapshot and the registration of its subscriber happen atomically between two bus frames: the
snapshot carries the channel's current ``seq`` and the first update the client gets is ``seq+1``.

Tick fan-out (the ``tick_fanout`` rollout switch, docs/rollout.md): a ``price:<symbol>`` subscriber
whose user the :class:`FanoutPolicy` allows is on the tick-cadence stream (internal key ``price:SYM``,
throttled by ``price_throttle_s``); everyone else is on the poll-cadence stream (key ``poll:SYM``):
one conflated price per ``poll_cadence_s`` when it changed, ``source: "poll"`` and ``cadenceMs``.
Both streams have their own ``seq``; a client moved between them by a policy change gets a fresh
snapshot of its new stream first, so its sequence stitching restarts cleanly.

Bounds: every per-channel history is a bounded deque, remembered symbols and users are LRU-bounded,
a bar series exists only for bars the bus or the aggregator delivered (a subscription to an unknown
symbol adds nothing but a channel, forgotten when its last subscriber leaves), and each client queue
holds at most ``queue_max`` messages and ``queue_max_bytes`` bytes (price and in-progress bar updates
are conflated in place first, so a slow client always ends up with the latest value; a queue over
either bound marks the client overflowed, and the shell disconnects it).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Sequence

import time

import msgspec

from services.gateway.protocol import USER_CHANNELS, ChannelError, bar_json, parse_channel
from spx_common import models as m

_encode = msgspec.json.Encoder().encode
TERMINAL = {"invalidated", "stopped", "expired", "target2_hit", "blocked"}


def encode(msg: dict[str, Any]) -> bytes:
    """One JSON object as UTF-8 bytes (encoded once per broadcast, shared by every subscriber)."""
    return _encode(msg)


class Client:
    """One connection's subscriptions and bounded outbound queue (filled by the hub, drained by the shell)."""

    def __init__(self, cid: int, user: str | None, queue_max: int, wake: Callable[[], None] = lambda: None,
                 direct: Callable[[bytes], bool] | None = None, queue_max_bytes: int = 8 << 20):
        self.id = cid
        #: optional fast path: write at once when nothing is queued (returns False when it cannot)
        self.direct = direct
        self.user = user
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.queued_bytes = 0
        self.latency = False
        self.wake = wake
        self.subs: dict[str, str] = {}  # internal channel key -> name the client used
        self._pending: dict[int, list] = {}  # entry id -> [text, pub_ns, folded, conflation key]
        self._conflate: dict[str, int] = {}  # conflation key -> pending entry id
        self._next = 0
        self.overflowed = False
        self.high_since: float | None = None
        self.sent = 0
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, text: bytes, pub_ns: int = 0, conflate: str | None = None, seal: str | None = None) -> None:
        """Queue one encoded message. ``conflate``: replace a queued message with the same key in place.
        ``seal``: a non-conflatable message of that key's stream; later updates must queue behind it."""
        if self.overflowed:
            return
        if not self._pending and self.direct is not None:
            if self.direct(self._splice(text, pub_ns, 0, time.time_ns() if self.latency else 0)):
                self.sent += 1
                return
        if seal is not None:
            self._conflate.pop(seal, None)
        if conflate is not None:
            eid = self._conflate.get(conflate)
            entry = self._pending.get(eid) if eid is not None else None
            if entry is not None:
                self.queued_bytes += len(text) - len(entry[0])
                entry[0], entry[1] = text, pub_ns
                entry[2] += 1  # folded count
                self.conflated += 1
                return
        if len(self._pending) >= self.queue_max or self.queued_bytes + len(text) > self.queue_max_bytes:
            self.overflowed = True
            self._pending.clear()
            self._conflate.clear()
            self.queued_bytes = 0
            self.wake()
            return
        self.queued_bytes += len(text)
        self._next += 1
        self._pending[self._next] = [text, pub_ns, 0, conflate]
        if conflate is not None:
            self._conflate[conflate] = self._next
        if len(self._pending) == 1:
            self.wake()

    def clear(self) -> None:
        """Drop every queued message (the connection is closing)."""
        self._pending.clear()
        self._conflate.clear()
        self.queued_bytes = 0

    def pop(self, now_ns: int = 0) -> bytes | None:
        """Next message text (with ``conflated``/``latencyMs`` spliced in when due), or None."""
        if not self._pending:
            return None
        eid = next(iter(self._pending))
        text, pub_ns, folded, ckey = self._pending.pop(eid)
        self.queued_bytes -= len(text)
        if ckey is not None and self._conflate.get(ckey) == eid:
            del self._conflate[ckey]
        self.sent += 1
        return self._splice(text, pub_ns, folded, now_ns)

    def _splice(self, text: bytes, pub_ns: int, folded: int, now_ns: int) -> bytes:
        extra = ""
        if folded:
            extra += f',"conflated":{folded}'
        if self.latency and pub_ns and now_ns:
            extra += f',"latencyMs":{(now_ns - pub_ns) / 1e6:.3f}'
        return text[:-1] + extra.encode() + b"}" if extra else text

    def check_slow(self, now: float, slow_timeout_s: float) -> bool:
        """True when the queue has stayed above half its bound for longer than ``slow_timeout_s``."""
        if len(self._pending) > self.queue_max // 2:
            if self.high_since is None:
                self.high_since = now
            return now - self.high_since > slow_timeout_s
        self.high_since = None
        return False


class FanoutPolicy:
    """Who gets tick-cadence prices: ``all``, ``none``, or a comma-separated allow-list of users.
    Connections without a token only get tick cadence under ``all``."""

    def __init__(self, value: str = "all") -> None:
        text = str(value).strip()
        self.value = text
        if text.lower() in ("all", "*", ""):
            self.mode, self.users = "all", frozenset()
        elif text.lower() == "none":
            self.mode, self.users = "none", frozenset()
        else:
            self.mode = "users"
            self.users = frozenset(u.strip() for u in text.split(",") if u.strip())

    def allows(self, user: str | None) -> bool:
        if self.mode == "all":
            return True
        return self.mode == "users" and user is not None and user in self.users

    def __repr__(self) -> str:
        return f"FanoutPolicy({self.value!r})"


@dataclass(slots=True)
class Channel:
    name: str  # the name clients use
    seq: int = 0
    subs: set = field(default_factory=set)


@dataclass(slots=True)
class BarSeries:
    bars: deque
    current: dict | None = None
    #: the closed bars as JSON, encoded once per change (a full 1s history is ~290 KB: re-encoding it for
    #: every snapshot cost ~2 ms a subscription, which a client subscribing in a loop turned into a stall)
    bars_json: bytes | None = None

    def encoded_bars(self) -> bytes:
        if self.bars_json is None:
            self.bars_json = _encode(list(self.bars))
        return self.bars_json


class Throttle:
    """Per-key leading-edge throttle that always delivers the latest value (pure; caller gives ``now``)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_sent: dict[str, float] = {}
        self.held: dict[str, Any] = {}

    def offer(self, key: str, value: Any, now: float) -> bool:
        """True: send ``value`` now. False: it is held (replacing any older held value) until :meth:`due`."""
        if now - self.last_sent.get(key, float("-inf")) >= self.interval_s:
            self.last_sent[key] = now
            self.held.pop(key, None)
            return True
        self.held[key] = value
        return False

    def next_due(self, key: str) -> float:
        return self.last_sent.get(key, 0.0) + self.interval_s

    def due(self, now: float) -> list[tuple[str, Any]]:
        """Held values whose window has ended (their key's window restarts now)."""
        out = []
        for key in [k for k in self.held if now - self.last_sent.get(k, float("-inf")) >= self.interval_s - 1e-9]:
            out.append((key, self.held.pop(key)))
            self.last_sent[key] = now
        if len(self.last_sent) > 50_000:  # bounded: forget keys idle for a long time
            for k in [k for k, t in self.last_sent.items() if now - t > 60 and k not in self.held]:
                del self.last_sent[k]
        return out


class Hub:
    """Channel state and fan-out. See the module docstring."""

    def __init__(self, *, price_throttle_s: float = 0.25, history_bars: int = 600, max_symbols: int = 20_000,
                 max_channels_per_client: int = 64, keep_setups: int = 200, keep_user_items: int = 100,
                 max_users: int = 1000, poll_cadence_s: float = 1.0, fanout: str = "all") -> None:
        self.history_bars = history_bars
        self.poll_cadence_s = poll_cadence_s
        self.fanout = FanoutPolicy(fanout)
        self._poll_keys: set[str] = set()  # poll-cadence price channels that may have subscribers
        self._poll_sent: dict[str, int] = {}  # symbol -> ts of the price last sent at poll cadence
        self.poll_broadcasts = 0
        self.fanout_moves = 0
        self.max_symbols = max_symbols
        self.max_channels_per_client = max_channels_per_client
        self.keep_setups = keep_setups
        self.keep_user_items = keep_user_items
        self.max_users = max_users
        self.throttle = Throttle(price_throttle_s)
        self.channels: dict[str, Channel] = {}
        self.prices: OrderedDict[str, dict] = OrderedDict()
        self._price_source: dict[str, str] = {}
        self.series: OrderedDict[str, BarSeries] = OrderedDict()
        self.setups: OrderedDict[str, dict] = OrderedDict()
        self.market: dict | None = None
        self.user_data: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.status: dict | None = None
        self.mode = "tick"
        self.price_broadcasts = 0
        self.messages_out = 0

    # ------------------------------------------------------------------ channels and subscriptions

    def _channel(self, key: str, name: str) -> Channel:
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = Channel(name)
            if len(self.channels) > 4 * self.max_symbols:
                for k in [k for k, c in self.channels.items() if not c.subs][: self.max_symbols]:
                    del self.channels[k]
        return ch

    def key_for(self, client: Client, name: str) -> str:
        """Internal channel key of ``name`` for ``client`` (user channels are per user); raises ChannelError."""
        kind, args = parse_channel(name)
        if kind in USER_CHANNELS:
            if client.user is None:
                raise ChannelError("unauthorized", f"channel {name!r} needs a token: connect to /ws?token=<spx token USER>")
            return f"{kind}@{client.user}"
        if kind == "price" and not self.fanout.allows(client.user):
            return f"poll:{args[0]}"
        return name

    def subscribe(self, client: Client, name: str) -> None:
        """Queue the channel's snapshot to ``client`` and register it for the updates that follow."""
        key = self.key_for(client, name)
        if key in client.subs:
            return
        if len(client.subs) >= self.max_channels_per_client:
            raise ChannelError("too_many_channels", f"at most {self.max_channels_per_client} channels per connection")
        self._attach(client, key, name)

    def _attach(self, client: Client, key: str, name: str) -> None:
        """Queue the snapshot of channel ``key`` to ``client`` and add it to the channel's subscribers."""
        ch = self._channel(key, name)
        series = self.series.get(key) if key.startswith("microbar:") else None
        if series is not None:  # the cached closed bars spliced in: no re-encoding per subscriber
            last = series.current or (series.bars[-1] if series.bars else None)
            head = encode({"channel": name, "type": "snapshot", "seq": ch.seq, "source": self._source(key),
                           "ts": last["startNs"] if last else None})
            client.push(b"".join((head[:-1], b',"data":{"bars":', series.encoded_bars(), b',"current":',
                                  _encode(series.current), b"}}")), seal=key)
            ch.subs.add(client)
            client.subs[key] = name
            return
        data, ts = self._snapshot(key)
        msg = {"channel": name, "type": "snapshot", "seq": ch.seq, "source": self._source(key), "ts": ts,
               "data": data}
        if key.startswith("poll:"):
            msg["cadenceMs"] = self.poll_cadence_s * 1000
            self._poll_keys.add(key)
        client.push(encode(msg), seal=key)
        ch.subs.add(client)
        client.subs[key] = name

    def unsubscribe(self, client: Client, name: str) -> bool:
        try:
            key = self.key_for(client, name)
        except ChannelError:
            return False
        if key not in client.subs and name.startswith("price:"):
            key = f"poll:{name[6:]}" if key == name else name  # subscribed under the other fan-out stream
        if client.subs.pop(key, None) is None:
            return False
        self._leave(key, client)
        return True

    def _leave(self, key: str, client: Client) -> None:
        """``client`` leaves channel ``key``; a channel that never carried data is forgotten with its
        last subscriber (junk names cost nothing once their subscribers are gone)."""
        ch = self.channels.get(key)
        if ch is not None:
            ch.subs.discard(client)
            if not ch.subs and ch.seq == 0:
                del self.channels[key]

    def drop_user_channels(self, client: Client) -> list[str]:
        """Unsubscribe every user-scoped channel (token expired); return the names dropped."""
        names = [name for key, name in client.subs.items() if "@" in key]
        for name in names:
            self.unsubscribe(client, name)
        return names

    def remove(self, client: Client) -> None:
        for key in list(client.subs):
            self._leave(key, client)
        client.subs.clear()

    def subscribers(self, key: str) -> int:
        ch = self.channels.get(key)
        return len(ch.subs) if ch else 0

    # ------------------------------------------------------------------ tick fan-out switch

    def set_fanout(self, value: str) -> int:
        """Apply a new ``tick_fanout`` policy: move every price subscriber whose stream changes to its
        new stream (with a fresh snapshot). Returns the number of subscriptions moved."""
        self.fanout = FanoutPolicy(value)
        moves = []
        for key, ch in self.channels.items():
            if not ch.subs or not (key.startswith("price:") or key.startswith("poll:")):
                continue
            sym = key.partition(":")[2]
            for client in ch.subs:
                want = f"price:{sym}" if self.fanout.allows(client.user) else f"poll:{sym}"
                if want != key:
                    moves.append((client, key, want))
        for client, old, new in moves:
            name = client.subs.pop(old, f"price:{old.partition(':')[2]}")
            self.channels[old].subs.discard(client)
            self._attach(client, new, name)
        self.fanout_moves += len(moves)
        return len(moves)

    def fanout_counts(self) -> dict[str, int]:
        """Price subscriptions per stream: ``{"tick": n, "poll": n}``."""
        out = {"tick": 0, "poll": 0}
        for key, ch in self.channels.items():
            if key.startswith("price:"):
                out["tick"] += len(ch.subs)
            elif key.startswith("poll:"):
                out["poll"] += len(ch.subs)
        return out

    def poll_prices(self) -> int:
        """The poll-cadence tick (call every ``poll_cadence_s``): send each poll-stream symbol's latest
        price when it changed since the last poll send. Returns the number of prices sent."""
        sent = 0
        for key in list(self._poll_keys):
            ch = self.channels.get(key)
            sym = key[5:]
            if ch is None or not ch.subs:
                self._poll_keys.discard(key)
                self._poll_sent.pop(sym, None)
                continue
            last = self.prices.get(sym)
            if last is None or self._poll_sent.get(sym) == last["ts"]:
                continue
            self._poll_sent[sym] = last["ts"]
            data = {k: v for k, v in last.items() if k != "_trade"}
            self.broadcast(key, ch.name, data, data["ts"], 0, "poll", conflate=True,
                           extra={"cadenceMs": self.poll_cadence_s * 1000})
            sent += 1
        self.poll_broadcasts += sent
        return sent

    def _source(self, key: str) -> str:
        if key.startswith("poll:"):
            return "poll"
        if key.startswith("price:"):
            return self._price_source.get(key[6:], "tick")
        return "poll" if self.mode == "poll" else "tick"

    def broadcast(self, key: str, name: str, data: Any, ts: int | None, pub_ns: int, source: str,
                  conflate: bool = False, extra: dict | None = None) -> int:
        """Assign the channel's next seq and queue one encoded update to every subscriber."""
        ch = self.channels.get(key)
        if ch is None:
            ch = self._channel(key, name)
        ch.seq += 1
        if not ch.subs:
            return ch.seq
        msg = {"channel": ch.name, "type": "update", "seq": ch.seq, "source": source, "ts": ts, "data": data}
        if extra:
            msg.update(extra)
        text = encode(msg)
        if conflate:
            for client in ch.subs:
                client.push(text, pub_ns, conflate=key)
        else:
            for client in ch.subs:
                client.push(text, pub_ns, seal=key)
        self.messages_out += len(ch.subs)
        return ch.seq

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self, key: str) -> tuple[Any, int | None]:
        if key.startswith("price:") or key.startswith("poll:"):
            last = self.prices.get(key.partition(":")[2])
            data = {k: v for k, v in last.items() if k != "_trade"} if last else None
            return data, data["ts"] if data else None
        if key.startswith("microbar:"):
            s = self.series.get(key)
            if s is None:
                return {"bars": [], "current": None}, None
            last = s.current or (s.bars[-1] if s.bars else None)
            return {"bars": list(s.bars), "current": s.current}, last["startNs"] if last else None
        if key == "setups":
            items = list(self.setups.values())
            return {"setups": items}, items[-1]["ts"] if items else None
        if key == "snapshot":
            return self.market, (self.market or {}).get("ts")
        if key == "status":
            return self.status, None
        kind, _, user = key.partition("@")
        store = self.user_data.get(user, {})
        if kind == "positions":
            items = list(store.get("positions", {}).values())
        else:
            items = list(store.get(kind, ()))
        return {"events" if kind == "coach" else kind: items}, items[-1]["ts"] if items else None

    # ------------------------------------------------------------------ ingest (bus bodies)

    def on_ticks(self, sym: str, events: Sequence[m.Trade | m.Quote | m.IndexValue], pub_ns: int, now: float) -> bool:
        """Fold a tick batch into the symbol's last price; returns True when a window is now held.

        The price is the last trade (or index value) ever seen, else the mid of the last two-sided quote;
        bid and ask are the last quote's. Only the batch's newest trade and quotes matter, so it is read
        from the end (a 100-event SPY batch usually stops after a few steps). The stored dict is updated
        in place: every reader copies it.
        """
        if not events:
            return False
        prices = self.prices
        data = prices.get(sym)
        if data is None:
            if len(prices) >= self.max_symbols:
                old, _ = prices.popitem(last=False)
                self._price_source.pop(old, None)
            data = prices[sym] = {"sym": sym, "price": None, "bid": None, "ask": None, "size": None, "ts": 0,
                                  "_trade": False}
        else:
            prices.move_to_end(sym)
        px = trade = quote = two_sided = None  # newest: trade or index value, trade, quote, two-sided quote
        for ev in reversed(events):
            t = type(ev)
            if t is m.Quote:
                if quote is None:
                    quote = ev
                if two_sided is None and ev.bid > 0 and ev.ask > 0:
                    two_sided = ev
            else:
                if px is None:
                    px = ev
                if trade is None and t is m.Trade:
                    trade = ev
            if trade is not None and quote is not None:
                break
        if quote is not None:
            data["bid"], data["ask"] = quote.bid, quote.ask
        if px is not None:
            data["price"] = px.price if px is trade else px.value
            data["_trade"] = True
        elif two_sided is not None and not data["_trade"]:
            data["price"] = round((two_sided.bid + two_sided.ask) / 2, 4)
        if trade is not None:
            data["size"] = trade.size
        last = events[-1]
        data["ts"] = last.ts
        self._price_source[sym] = "poll" if last.source == "poll" else "tick"
        key = f"price:{sym}"
        if not self.subscribers(key):
            return False
        if self.throttle.offer(sym, pub_ns, now):
            self._send_price(sym, pub_ns)
            return False
        return True

    def _send_price(self, sym: str, pub_ns: int) -> None:
        data = {k: v for k, v in self.prices[sym].items() if k != "_trade"}
        key = f"price:{sym}"
        self.broadcast(key, key, data, data["ts"], pub_ns, self._price_source.get(sym, "tick"), conflate=True)
        self.price_broadcasts += 1

    def flush_prices(self, now: float) -> None:
        """Send held prices whose throttle window ended (always the latest price of the symbol)."""
        for sym, pub_ns in self.throttle.due(now):
            if sym in self.prices:
                self._send_price(sym, pub_ns)

    def next_price_due(self) -> float | None:
        if not self.throttle.held:
            return None
        return min(self.throttle.next_due(k) for k in self.throttle.held)

    def on_bar(self, bar: m.MicroBar, pub_ns: int) -> None:
        key = f"microbar:{bar.sym}:{bar.interval}"
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = BarSeries(deque(maxlen=self.history_bars))
            if len(self.series) > self.max_symbols:
                self.series.popitem(last=False)
        data = bar_json(bar)
        if bar.closed:
            if s.bars and s.bars[-1]["startNs"] >= bar.start_ns:
                if s.bars[-1]["startNs"] == bar.start_ns:
                    s.bars[-1] = data  # a correction of the last closed bar
                    s.bars_json = None
            else:
                s.bars.append(data)
                s.bars_json = None
            if s.current is not None and s.current["startNs"] <= bar.start_ns:
                s.current = None
        else:
            s.current = data
        source = "poll" if bar.source == "poll" else "tick"
        self.broadcast(key, key, data, bar.start_ns, pub_ns, source, conflate=not bar.closed)

    def has_history(self, key: str) -> bool:
        s = self.series.get(key)
        return bool(s and s.bars)

    def seed_bars(self, key: str, bars: list[m.MicroBar], current: m.MicroBar | None) -> int:
        """Merge history from the aggregator's query API into a series (closed bars are identified by
        their start, so bars the gateway already has from the stream are kept and none is doubled).
        Returns the number of bars added. Clients are not notified: call before subscribing them. An
        empty answer (a symbol the aggregator does not know) adds no series."""
        s = self.series.get(key)
        if s is None:
            if not bars and current is None:
                return 0
            s = self.series[key] = BarSeries(deque(maxlen=self.history_bars))
            if len(self.series) > self.max_symbols:
                self.series.popitem(last=False)
        have = {b["startNs"] for b in s.bars}
        merged = list(s.bars) + [bar_json(b) for b in bars if b.closed and b.start_ns not in have]
        merged.sort(key=lambda b: b["startNs"])
        added = len(merged) - len(s.bars)
        s.bars = deque(merged[-self.history_bars:], maxlen=self.history_bars)
        s.bars_json = None
        last_start = s.bars[-1]["startNs"] if s.bars else -1
        if s.current is None and current is not None and not current.closed and current.start_ns > last_start:
            s.current = bar_json(current)
        if s.current is not None and s.current["startNs"] <= last_start:
            s.current = None
        return added

    def on_transition(self, t: m.SetupTransition, pub_ns: int) -> None:
        data = msgspec.to_builtins(t)
        self.setups[t.setup_id] = data
        self.setups.move_to_end(t.setup_id)
        while len(self.setups) > self.keep_setups:
            self.setups.popitem(last=False)
        self.broadcast("setups", "setups", data, t.ts, pub_ns, self._source("setups"))

    def on_market(self, doc: dict, event_ns: int, pub_ns: int) -> None:
        self.market = dict(doc)
        self.market.setdefault("ts", event_ns)
        self.broadcast("snapshot", "snapshot", self.market, event_ns, pub_ns, self._source("snapshot"))

    def on_user(self, kind: str, user: str, body: m.CoachEvent | m.Position | m.Order | m.Fill, pub_ns: int,
                extra: dict | None = None) -> None:
        """A user-scoped body for channel ``kind`` (coach, positions, orders, fills); ``extra`` fields are
        added to its JSON (a position's greeks)."""
        store = self.user_data.get(user)
        if store is None:
            store = self.user_data[user] = {}
            if len(self.user_data) > self.max_users:
                self.user_data.popitem(last=False)
        self.user_data.move_to_end(user)
        data = msgspec.to_builtins(body)
        if extra:
            data.update(extra)
        if kind == "positions":
            pos = store.setdefault("positions", OrderedDict())
            pos[body.option_symbol] = data
            while len(pos) > self.keep_user_items:
                pos.popitem(last=False)
        else:
            store.setdefault(kind, deque(maxlen=self.keep_user_items)).append(data)
        self.broadcast(f"{kind}@{user}", kind, data, body.ts, pub_ns, self._source(kind))

    def coach_feedback(self, user: str, event_id: str, action: str) -> tuple[dict, str, bool] | None:
        """Record ``user``'s answer to their coach alert ``event_id`` (only alerts still held for them:
        the newest ``keep_user_items``): ``(event, recorded action, first)``, or None when ``event_id`` is
        not one of this user's. The first answer is final; it is kept on the held event (``feedback``), so
        a later ``coach`` snapshot shows which alerts were answered."""
        for event in self.user_data.get(user, {}).get("coach", ()):
            if event.get("id") == event_id:
                recorded = event.get("feedback")
                if recorded is not None:
                    return event, recorded, False
                event["feedback"] = action
                return event, action, True
        return None

    def on_status(self, data: dict) -> None:
        self.status = data
        self.broadcast("status", "status", data, None, 0, self._source("status"))
