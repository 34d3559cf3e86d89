"""``DetectorEngine``: the detector host's logic with no sockets (the backtester drives it too).

Bars in -> plugin candidates -> gating -> lifecycle; ticks in -> lifecycle transitions.
Gating, in order, each refusal with a reason: the optimizer profile (family disabled or
quarantined), the diversification cap per family, and the macro-alignment kill switch
(regime/VWAP position and aggressor flow combined into a score in [-1, 1]).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from types import MappingProxyType

import msgspec

from services.detector.config import DetectorConfig
from services.detector.context import DetectorContext, freeze
from services.detector.host import PluginHost
from services.detector.lifecycle import RANK, TERMINAL, Lifecycle, Setup, geometry_ok, setup_id
from services.detector.market import SessionState, gex
from spx_common.models import IndexValue, MicroBar, SetupCandidate, SetupTransition, Trade


class DetectorEngine:
    def __init__(self, cfg: DetectorConfig, host: PluginHost) -> None:
        self.cfg = cfg
        self.host = host
        self.watched = set(cfg.symbols)
        #: plugins allowed to form setups outside the regular session (None: every plugin)
        self.extended = None if "*" in cfg.extended_hours else frozenset(cfg.extended_hours)
        #: bars outside the regular session on which no plugin ran (no plugin opted in)
        self.off_session_bars = 0
        self.lifecycle = Lifecycle(confirm_ticks=cfg.confirm_ticks, confirm_ns=cfg.confirm_ms * 1_000_000,
                                   ttl_ns=int(cfg.ttl_min * 60e9), max_active=cfg.max_active)
        self.sessions: dict[str, SessionState] = {}
        self.bars: dict[str, BarRing] = {}
        self.candidates: dict[str, SetupCandidate] = {}
        self.chain: dict | None = None
        self.gex: dict | None = None  # computed once per chain update, never per bar
        self._gex_frozen = None
        self.rolling: dict[str, Rolling] = {}
        self._config = freeze(dict(cfg.plugin_config))
        self.profile = None
        self.now_ns = 0
        #: why the market data is degraded (feed on poll cadence or down), None when it is healthy:
        #: new setups are blocked with reason ``data_degraded`` meanwhile (fail closed)
        self.degraded: str | None = None
        self._blocks: list[tuple[str, str]] = []
        #: ids of setups already published (by this session or, via restore, the previous ones), newest
        #: last, bounded: a bar evaluated again after a restart (held during warm-up, re-published by a
        #: restarted aggregator) yields the same candidate and id; it must not form the setup again
        #: once it resolved and left the lifecycle
        self.published_ids: OrderedDict[str, None] = OrderedDict()
        self.published_ids_max = max(10_000, 50 * cfg.max_active)

    # ------------------------------------------------------------------ inputs

    def on_chain(self, doc: dict) -> None:
        if isinstance(doc, dict) and isinstance(doc.get("contracts"), list):
            self.chain = doc
            self.gex = self._gex_frozen = None
            spot = doc.get("underlying")
            if not isinstance(spot, (int, float)) or spot <= 0:
                spx = self.sessions.get("I:SPX")
                spot = spx.close if spx else None
            if isinstance(spot, (int, float)) and spot > 0:
                g = gex(doc["contracts"], float(spot))
                if g is not None:
                    self.gex = {"call_wall": g["call_wall"], "put_wall": g["put_wall"],
                                "zero_gamma": g["zero_gamma"], "total": g["total"], "spot": float(spot),
                                "as_of_ns": doc.get("ts") or self.now_ns, "source": "chain open interest"}
            self._gex_frozen = freeze(self.gex)

    def on_bar(self, bar: MicroBar) -> list[SetupTransition]:
        if bar.sym not in self.watched or bar.interval != self.cfg.interval:
            return []
        self.now_ns = max(self.now_ns, bar.start_ns)
        ss, ring, roll = self._track(bar)
        state = ss.frozen_snapshot()
        state["baseline"] = MappingProxyType(roll.baseline())  # the bars BEFORE this one
        roll.add(bar)
        proxy = self.rolling.get(self.cfg.flow_proxy)
        state["flow"] = proxy.frozen_flow(self.cfg.flow_proxy) if proxy is not None else None
        state["gex"] = self._gex_frozen
        ctx = DetectorContext(bar.sym, self.now_ns, ring.snapshot(), MappingProxyType(state), self._config,
                              (bar.start_ns - ss.day_open_ns) / 60e9)
        out = []
        only = None
        if not ss.in_session(bar.start_ns):  # pre-/post-market or a closed day: opted-in plugins only
            only = self.extended
            if only is not None and not only:
                self.off_session_bars += 1
                return out
        for cand in self.host.on_bar(ctx, bar, only):
            tr = self._admit(cand, bar, state)
            if tr is not None:
                out.append(tr)
        self._blocks.extend(self.host.events.refused)
        self.host.events.refused.clear()
        return out

    def on_ticks(self, events) -> list[SetupTransition]:
        out: list[SetupTransition] = []
        for ev in events:
            t = type(ev)
            if t is Trade:
                if ev.excl:  # out of bars, out of the lifecycle (docs/microbars.md)
                    continue
                price = ev.price
            elif t is IndexValue:
                price = ev.value
            else:
                continue
            if ev.ts > self.now_ns:
                self.now_ns = ev.ts
            out.extend(self.lifecycle.on_price(ev.sym, price, ev.ts))
        return out

    def restore(self, rows: list[dict]) -> int:
        """Bring persisted, unresolved setup instances back into the lifecycle (restart).

        Each keeps its id, state, geometry, microstructure at trigger and macro score, so its next
        transition continues where the published sequence stopped and nothing already published is
        published again (transitions are forward-only). The trigger debounce restarts from zero.
        Rows of unwatched symbols or terminal states are skipped; a row with an unknown state or
        broken geometry, or beyond ``max_active``, is refused with a reason (``restore_refused``,
        ``capacity``) like any other block. Returns how many setups were restored.
        """
        n = 0
        for r in rows:
            state = r.get("state")
            if r.get("sym") not in self.watched or state in TERMINAL:
                continue
            subject = f"{r.get('setup_id')} {r.get('sym')} {state}"
            if state not in RANK:
                self.refuse("restore_refused", f"{subject}: unknown state")
                continue
            try:
                cand = msgspec.convert(
                    {"detector": r["detector"], "family": r["family"], "sym": r["sym"], "direction": r["direction"],
                     "entry_low": float(r["entry_low"]), "entry_high": float(r["entry_high"]),
                     "stop": float(r["stop"]), "targets": [float(x) for x in (r.get("targets") or [])],
                     "confidence": float(r["confidence"] if r.get("confidence") is not None else 0.5),
                     "ts": int(r["first_ns"]), "evidence": {"restored": True}}, SetupCandidate)
            except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
                self.refuse("restore_refused", f"{subject}: {(str(exc) or repr(exc)).splitlines()[0]}")
                continue
            if not all(math.isfinite(x) for x in (cand.entry_low, cand.entry_high, cand.stop, *cand.targets)) \
                    or not geometry_ok(cand):
                self.refuse("restore_refused", f"{subject}: non-finite or wrong-sided entry/stop/targets")
                continue
            if self.lifecycle.count() >= self.lifecycle.max_active:
                self.refuse("capacity", f"{subject}: not restored, {self.lifecycle.max_active} active")
                continue
            self.lifecycle.restore(Setup(r["setup_id"], cand, state=state, created_ns=cand.ts,
                                         micro=dict(r.get("microstructure_at_trigger") or r.get("microstructure") or {}),
                                         macro_score=r.get("macro_alignment_score")))
            self.now_ns = max(self.now_ns, int(r.get("last_ns") or 0))
            n += 1
        return n

    def remember(self, ids) -> None:
        """Mark setup ids as published (bounded, oldest forgotten first)."""
        seen = self.published_ids
        for sid in ids:
            seen[sid] = None
            seen.move_to_end(sid)
        while len(seen) > self.published_ids_max:
            seen.popitem(last=False)

    def warm(self, bar: MicroBar) -> None:
        """Rebuild market state and recent bars from an older closed bar without running plugins."""
        if bar.sym not in self.watched or bar.interval != self.cfg.interval:
            return
        self._track(bar)[2].add(bar)

    def _track(self, bar: MicroBar) -> tuple[SessionState, BarRing, Rolling]:
        """Fold ``bar`` into its symbol's session state and recent bars; its rolling window (not yet
        updated: on_bar reads the baseline of the bars before this one first)."""
        sym = bar.sym
        ss = self.sessions.get(sym)
        if ss is None:
            ss = self.sessions[sym] = SessionState(opening_range_min=self.cfg.opening_range_min)
        ss.on_bar(bar)
        ring = self.bars.get(sym)
        if ring is None:
            ring = self.bars[sym] = BarRing(self.cfg.bars_kept)
        ring.append(bar)
        roll = self.rolling.get(sym)
        if roll is None:
            roll = self.rolling[sym] = Rolling(self.cfg.baseline_bars, self.cfg.flow_bars)
        return ss, ring, roll

    # ------------------------------------------------------------------ gating

    def on_feed_status(self, mode: str, detail: str = "") -> None:
        """The feed's mode: ``poll`` (REST cadence, stream lost) and ``down`` degrade the data."""
        self.degraded = None if mode in ("tick", "replay") else f"feed {mode}{': ' + detail if detail else ''}"

    def _admit(self, cand: SetupCandidate, bar: MicroBar, state: dict) -> SetupTransition | None:
        if self.degraded is not None:
            return self._block("data_degraded", cand, self.degraded[:120])
        if bar.gap_fill:
            return self._block("data_degraded", cand, "gap-fill bar (no trade in the bucket)")
        if self.profile is not None and not self.profile.allows(cand.family):
            return self._block("family_quarantined", cand)
        active = sum(1 for syms in self.lifecycle.active.values() for s in syms.values()
                     if s.cand.family == cand.family)
        if active >= self.cfg.family_cap:
            return self._block("family_cap", cand)
        score = self.macro_score(cand, bar, state)
        if score < self.cfg.macro_block_below:
            return self._block("macro_misaligned", cand, f"score {score:.2f}")
        if setup_id(cand) in self.published_ids:
            return self._block("duplicate", cand, "setup already published")
        micro = {"bid_ask_imbalance": bar.bid_ask_imbalance, "aggressor_skew": _skew(bar),
                 "quote_coverage_pct": bar.quote_coverage_pct, "avg_spread_bps": bar.avg_spread_bps}
        duplicates = self.lifecycle.duplicates
        tr = self.lifecycle.add(cand, micro, score)
        if tr is None:  # the lifecycle counts which refusal it was (a duplicate is checked first)
            return self._block("duplicate" if self.lifecycle.duplicates > duplicates else "capacity", cand)
        self.candidates[tr.setup_id] = cand
        self.remember([tr.setup_id])
        if len(self.candidates) > 4 * self.cfg.max_active:
            self.candidates.pop(next(iter(self.candidates)))
        return tr

    def macro_score(self, cand: SetupCandidate, bar: MicroBar, state: dict) -> float:
        """Alignment of the candidate's direction with regime/VWAP and order flow, in [-1, 1].

        Mean of: +-1 for price above/below session VWAP (half weight unless the regime is
        trending or breakout) and the bar's aggressor skew, each signed by the direction.
        """
        sign = 1.0 if cand.direction == "long" else -1.0
        parts = []
        vwap = state.get("vwap")
        if vwap is not None:
            above = 1.0 if bar.close > vwap else -1.0
            weight = 1.0 if state.get("regime") in ("trending", "breakout") else 0.5
            parts.append(sign * above * weight)
        skew = _skew(bar)
        if skew is not None:
            parts.append(sign * skew)
        return sum(parts) / len(parts) if parts else 0.0

    def _block(self, reason: str, cand: SetupCandidate, detail: str = "") -> None:
        self._blocks.append((reason, f"{cand.detector} {cand.sym} {cand.direction} {detail}".strip()))
        return None

    def refuse(self, reason: str, subject: str) -> None:
        """Queue a refusal; the service publishes it on ``block.detector`` and counts it."""
        self._blocks.append((reason, subject))

    def drain_blocks(self) -> list[tuple[str, str]]:
        out, self._blocks = self._blocks, []
        return out

    # ------------------------------------------------------------------ market state

    def basis(self) -> float | None:
        spx, spy = self.bars.get("I:SPX"), self.bars.get("SPY")
        if not spx or not spy:
            return None
        return spx[-1].close - 10 * spy[-1].close

    def state_for(self, sym: str) -> dict:
        ss = self.sessions.get(sym)
        return ss.snapshot() if ss else {}

    def market_state(self) -> dict:
        if not self.sessions:
            return {}
        doc = {"ts": self.now_ns, "symbols": {s: self.state_for(s) for s in self.sessions}, "basis": self.basis()}
        spx = self.sessions.get("I:SPX")
        doc["regime"] = (spx or next(iter(self.sessions.values()))).regime()
        if self.chain is not None:
            spot = self.chain.get("underlying") or (spx.close if spx else None)
            if isinstance(spot, (int, float)) and spot > 0:
                doc["gex"] = gex(self.chain["contracts"], float(spot))
        return doc


def newest_of(rows: list[dict], published: list[SetupTransition], *, within_ns: int = 24 * 3600 * 10**9,
              limit: int = 200) -> list[dict]:
    """The setups to restore: the store's unresolved rows brought up to date with the transitions
    this detector published itself (its outbox), oldest first, at most ``limit`` (the newest).

    The recorder may not have written a setup's newest transition yet (its write lag), or at all
    (it died with us): the outbox has it. Transitions only move forward, so a setup's state is the
    highest-ranked one published or stored; a setup whose published state is terminal is dropped,
    one never stored is restored from its transitions (they carry the geometry). The outbox is a
    contiguous tail of what was published, so any setup it knows, it knows up to its newest state.
    Pure: the service passes the rows and the decoded outbox frames.
    """
    out = {r["setup_id"]: dict(r) for r in rows if r.get("setup_id") is not None}
    for tr in sorted(published, key=lambda x: (x.ts, RANK.get(x.to_state, -1))):
        r = out.get(tr.setup_id)
        if r is None:
            r = out[tr.setup_id] = {
                "setup_id": tr.setup_id, "detector": tr.detector, "family": tr.family, "sym": tr.sym,
                "direction": tr.direction, "state": tr.to_state, "first_ns": tr.ts, "last_ns": tr.ts,
                "microstructure_at_trigger": None}
        elif RANK.get(tr.to_state, -1) < RANK.get(r.get("state"), -1):
            continue  # the store is ahead (only when the outbox lost part of its history)
        r["first_ns"] = min(int(r.get("first_ns") or tr.ts), tr.ts)
        r["last_ns"] = max(int(r.get("last_ns") or 0), tr.ts)
        r["state"] = tr.to_state
        for k in ("entry_low", "entry_high", "stop", "confidence", "macro_alignment_score"):
            v = getattr(tr, k)
            if v is not None:
                r[k] = v
        if tr.targets:
            r["targets"] = list(tr.targets)
        r["microstructure"] = dict(tr.microstructure)
        if tr.to_state == "triggered":
            r["microstructure_at_trigger"] = dict(tr.microstructure)
    live = [r for r in out.values() if r.get("state") not in TERMINAL]
    if not live:
        return []
    newest = max(int(r.get("last_ns") or 0) for r in live)
    live = [r for r in live if int(r.get("last_ns") or 0) >= newest - within_ns]
    live.sort(key=lambda r: (int(r.get("first_ns") or 0), str(r["setup_id"])))
    return live[-limit:]


class BarRing:
    """The newest ``maxlen`` closed bars of one symbol, oldest first (a list trimmed in halves: appending is
    O(1) amortised). :meth:`snapshot` is the tuple a plugin context carries, one copy per bar."""

    __slots__ = ("maxlen", "_buf")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._buf: list[MicroBar] = []

    def append(self, bar: MicroBar) -> None:
        buf = self._buf
        buf.append(bar)
        if len(buf) >= 2 * self.maxlen:
            del buf[:-self.maxlen]

    def snapshot(self) -> tuple[MicroBar, ...]:
        buf = self._buf
        return tuple(buf[-self.maxlen:] if len(buf) > self.maxlen else buf)

    def __len__(self) -> int:
        return min(len(self._buf), self.maxlen)

    def __iter__(self):
        return iter(self.snapshot())

    def __getitem__(self, i: int) -> MicroBar:
        if -len(self) <= i < 0:  # the newest bars (basis(), warm-up checks) without a copy
            return self._buf[i]
        return self.snapshot()[i]


class Rolling:
    """O(1) rolling sums over the last closed bars of one symbol (bounded deques).

    ``baseline``: mean volume and mean range over the last ``baseline_bars`` bars.
    ``flow``: intraday flow pressure over the last ``flow_bars`` bars — aggressor delta volume
    from microstructure when the bars carry it, else a bar-direction proxy (volume signed by
    close - open), labelled so plugins can say which one they used.
    """

    __slots__ = ("nb", "nf", "base", "fl", "vol", "rng", "delta", "aggr", "micro", "signed", "fvol", "adds",
                 "_flow")

    def __init__(self, baseline_bars: int, flow_bars: int) -> None:
        self.nb, self.nf = baseline_bars, flow_bars
        self.base: deque = deque()
        self.fl: deque = deque()
        self.vol = self.rng = 0.0
        self.delta = self.aggr = self.signed = self.fvol = 0.0
        self.micro = 0
        self.adds = 0  # bars added so far (what frozen_flow's memo was built at)
        self._flow: tuple[int, str, MappingProxyType] | None = None

    def add(self, bar: MicroBar) -> None:
        self.adds += 1
        v, r = bar.volume, bar.high - bar.low
        self.base.append((v, r))
        self.vol += v
        self.rng += r
        if len(self.base) > self.nb:
            ov, orr = self.base.popleft()
            self.vol -= ov
            self.rng -= orr
        bv, sv = bar.buy_volume, bar.sell_volume
        has = bv is not None and sv is not None
        d, a = (bv - sv, bv + sv) if has else (0.0, 0.0)
        sg = v if bar.close > bar.open else -v if bar.close < bar.open else 0.0
        self.fl.append((d, a, has, sg, v))
        self.delta += d
        self.aggr += a
        self.micro += has
        self.signed += sg
        self.fvol += v
        if len(self.fl) > self.nf:
            od, oa, oh, osg, ov = self.fl.popleft()
            self.delta -= od
            self.aggr -= oa
            self.micro -= oh
            self.signed -= osg
            self.fvol -= ov

    def baseline(self) -> dict:
        n = len(self.base)
        return {"bars": n, "volume_avg": self.vol / n if n else None, "range_avg": self.rng / n if n else None}

    def frozen_flow(self, sym: str) -> MappingProxyType:
        """:meth:`flow` read-only, built once per bar added (every symbol's context reads the proxy's flow)."""
        memo = self._flow
        if memo is None or memo[0] != self.adds or memo[1] != sym:
            memo = self._flow = (self.adds, sym, MappingProxyType(self.flow(sym)))
        return memo[2]

    def flow(self, sym: str) -> dict:
        n = len(self.fl)
        if n and self.micro == n and self.aggr > 0:
            pressure, source = self.delta / self.aggr, "intraday aggressor delta volume"
        elif self.fvol > 0:
            pressure, source = self.signed / self.fvol, "bar-direction volume proxy (no microstructure)"
        else:
            pressure, source = None, "none"
        if pressure is not None:
            pressure = max(-1.0, min(1.0, pressure))
        return {"sym": sym, "bars": n, "pressure": pressure, "source": source, "delta_volume": self.delta,
                "volume": self.fvol}


def _skew(bar: MicroBar) -> float | None:
    """Aggressor skew in [-1, 1]: (buy - sell) / (buy + sell), null without microstructure."""
    if bar.buy_volume is None or bar.sell_volume is None:
        return None
    tot = bar.buy_volume + bar.sell_volume
    return (bar.buy_volume - bar.sell_volume) / tot if tot > 0 else None
