// SPX Command Center dashboard: one websocket, TradingView Lightweight Charts (vendored, served by the
// gateway), chart updates applied at most once per animation frame. Times are US/Eastern, from event time.
"use strict";
(function () {
  const LWC = window.LightweightCharts;
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const $ = (id) => document.getElementById(id);
  const ET = "America/New_York";
  const USER_CHANNELS = ["coach", "positions", "orders", "fills"];
  const fmtClock = new Intl.DateTimeFormat("en-GB", { timeZone: ET, hourCycle: "h23", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const fmtHm = new Intl.DateTimeFormat("en-GB", { timeZone: ET, hourCycle: "h23", hour: "2-digit", minute: "2-digit" });
  const fmtDate = new Intl.DateTimeFormat("en-CA", { timeZone: ET, year: "numeric", month: "2-digit", day: "2-digit" });
  const fmtDay = new Intl.DateTimeFormat("en-US", { timeZone: ET, weekday: "short", month: "short", day: "numeric" });
  const msOf = (ns) => Number(ns) / 1e6;
  const etTime = (ns) => fmtClock.format(new Date(msOf(ns)));
  const etDate = (ns) => fmtDate.format(new Date(msOf(ns)));
  const STATE_WORDS = {
    forming: "forming", ready: "ready to enter", triggered: "triggered", target1_hit: "target 1 hit",
    target2_hit: "target 2 hit", invalidated: "invalidated", stopped: "stopped out", expired: "expired", blocked: "blocked",
  };

  const state = {
    sym: (params.get("sym") || "SPY").toUpperCase(), interval: params.get("interval") || "1s",
    bars: [], current: null, price: null, market: null, setups: new Map(), setupFirst: new Map(), selected: null,
    coach: [], positions: new Map(), orders: new Map(), fills: [], status: null, user: null,
    mode: "-", updates: 0, rate: 0, lastTickAt: 0, seq: {}, gaps: 0, renders: 0,
    dirty: true, reset: true, pending: [], eventNs: 0, vwap: null, tickLabels: [],
  };
  const MAX_BARS = 5000;
  $("sym").value = state.sym; $("interval").value = state.interval;
  let ws = null, retry = 500;

  // ---------------------------------------------------------------- formatting
  const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const fmt = (x, n = 2) => (x === null || x === undefined || !isFinite(x) ? "-" : Number(x).toFixed(n));
  const fmtInt = (x) => (x === null || x === undefined ? "-" : Math.round(x).toLocaleString("en-US"));
  const words = (s) => String(s ?? "").replace(/_/g, " ");
  // long numbers in server sentences get separators: "+100900 delta" -> "+100,900 delta"
  const prettyNumbers = (text) => String(text ?? "").replace(/([+-]?)(\d{5,})(\.\d+)?/g,
    (m, sign, int, frac) => sign + Number(int).toLocaleString("en-US") + (frac ? frac.slice(0, 3) : ""));
  function age(ns) {
    if (!ns || !state.eventNs) return "-";
    const s = Math.max(0, Math.round((state.eventNs - ns) / 1e9));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  }
  // O:SPXW261207C05880000 -> "SPXW 12/07 5880 C"
  function contract(sym) {
    const m = /^(?:O:)?([A-Z]+)(\d{2})(\d{2})(\d{2})([CP])(\d{8})$/.exec(sym || "");
    return m ? `${m[1]} ${m[3]}/${m[4]} ${Number(m[6]) / 1000} ${m[5]}` : String(sym ?? "");
  }

  // ---------------------------------------------------------------- websocket
  function barChannels(sym = state.sym, iv = state.interval) {
    // 1 m bars: the aggregator names its intervals as configured ("1m" or "60s"); take whichever exists
    return iv === "1m" ? [`microbar:${sym}:1m`, `microbar:${sym}:60s`] : [`microbar:${sym}:${iv}`];
  }
  function publicChannels() { return [`price:${state.sym}`, ...barChannels(), "setups", "snapshot", "status"]; }
  function send(doc) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(doc)); }

  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 500; setConn(true); send({ op: "subscribe", channels: publicChannels() }); };
    ws.onclose = () => { setConn(false); setTimeout(connect, retry); retry = Math.min(retry * 2, 10000); };
    ws.onmessage = (ev) => { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  }
  function setConn(up) { const c = $("conn"); c.textContent = up ? "connected" : "disconnected"; c.className = "pill " + (up ? "up" : "down"); }

  function resubscribe(oldSym, oldInterval) {
    send({ op: "unsubscribe", channels: [`price:${oldSym}`, ...barChannels(oldSym, oldInterval)] });
    state.bars = []; state.current = null; state.price = null; state.reset = true; state.dirty = true;
    chartEl.dataset.bars = "0"; chartEl.dataset.volumeBars = "0";
    applyMarket();  // the new symbol's levels and session VWAP from the last market state
    send({ op: "subscribe", channels: [`price:${state.sym}`, ...barChannels()] });
  }
  $("sym").onchange = (e) => { const o = state.sym; state.sym = e.target.value.trim().toUpperCase(); resubscribe(o, state.interval); renderSetups(); };
  $("interval").onchange = (e) => { const o = state.interval; state.interval = e.target.value; resubscribe(state.sym, o); };

  function onMessage(m) {
    if (m.type === "welcome") { onWelcome(m.data); return; }
    if (m.type === "flatten") { onFlattenResult(m.data); return; }
    if (m.type === "feedback") { onFeedback(m.data); return; }
    if (m.type === "error") {
      console.warn("gateway error", m.data);
      if (m.data && String(m.data.id || "").startsWith("flatten")) {
        inFlight.clear(); renderPositions(); renderFlattenAll();
        showFlatten(`flatten failed: ${m.data.message}`, "short");
      }
      return;
    }
    if (m.type !== "snapshot" && m.type !== "update") return;
    const prev = state.seq[m.channel];
    if (m.type === "update" && prev !== undefined && m.seq !== prev + 1 && !m.conflated) state.gaps++;
    state.seq[m.channel] = m.seq;
    const ch = m.channel, d = m.data;
    if (ch.startsWith("price:")) {
      if (ch !== `price:${state.sym}` || !d) return;
      state.price = d; state.lastTickAt = performance.now(); state.updates++;
      state.mode = m.cadenceMs ? `${m.source} ${m.cadenceMs / 1000}s` : m.source;  // poll-cadence fallback (tick_fanout)
    } else if (ch.startsWith("microbar:")) {
      if (!barChannels().includes(ch)) return;
      if (m.type === "snapshot") {
        if (!d.bars.length && !d.current && state.bars.length) return;  // the other 1 m name: nothing there
        state.bars = d.bars.slice(-MAX_BARS); state.current = d.current; state.reset = true;
      } else addBar(d);
      if (!state.price) state.mode = m.source;  // the price channel's source and cadence win
      state.updates++;
    } else if (ch === "setups") {
      if (m.type === "snapshot") { state.setups.clear(); d.setups.forEach(addSetup); } else addSetup(d);
      renderSetups();
    } else if (ch === "snapshot") { state.market = d; applyMarket(); }
    else if (ch === "status") { state.status = d; renderStatus(); }
    else if (ch === "coach") {
      if (m.type === "snapshot") state.coach = d.events.slice(); else state.coach.push(d);
      state.coach = state.coach.slice(-100); renderCoach();
    } else if (ch === "positions") {
      if (m.type === "snapshot") { state.positions.clear(); d.positions.forEach((p) => state.positions.set(p.option_symbol, p)); }
      else state.positions.set(d.option_symbol, d);
      renderPositions();
    } else if (ch === "orders") {
      if (m.type === "snapshot") { state.orders.clear(); d.orders.forEach((o) => state.orders.set(o.order_id, o)); }
      else state.orders.set(d.order_id, d);
      renderOrders();
    } else if (ch === "fills") {
      if (m.type === "snapshot") state.fills = d.fills.slice(); else state.fills.push(d);
      state.fills = state.fills.slice(-100); renderOrders();
    }
    state.dirty = true;
  }

  function onWelcome(d) {
    state.user = d.user || null;
    $("user").textContent = state.user ? `user ${state.user}` : "no token";
    if (state.user) send({ op: "subscribe", channels: USER_CHANNELS });
    else $("coach").innerHTML = '<li class="muted" id="coach-hint">coach, positions and orders need a token: open this page as /?token=… (spx token USER)</li>';
    $("flatten-all").hidden = !state.user;
  }

  function addBar(b) {
    const last = state.bars[state.bars.length - 1];
    if (b.closed) {
      if (last && last.startNs === b.startNs) state.bars[state.bars.length - 1] = b;
      else if (!last || b.startNs > last.startNs) state.bars.push(b);
      else return;  // older than what the chart holds
      if (state.bars.length > MAX_BARS) { state.bars.splice(0, state.bars.length - MAX_BARS); state.reset = true; }
      if (state.current && state.current.startNs <= b.startNs) state.current = null;
    } else {
      if (last && b.startNs < last.startNs) return;
      state.current = b;
    }
    state.pending.push(b);
  }
  function addSetup(s) {
    if (!state.setupFirst.has(s.setup_id)) state.setupFirst.set(s.setup_id, s.ts);
    else state.setupFirst.set(s.setup_id, Math.min(state.setupFirst.get(s.setup_id), s.ts));
    const prev = state.setups.get(s.setup_id);
    // a transition carries its own levels; keep the last known ones when one leaves them out
    state.setups.set(s.setup_id, prev ? { ...prev, ...Object.fromEntries(Object.entries(s).filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))) } : s);
    if (s.ts > state.eventNs) state.eventNs = s.ts;
  }

  // ---------------------------------------------------------------- chart
  const chartEl = $("chart");
  const seen = new Set();
  function tickLabel(t, type) {
    const d = new Date(t * 1000);
    let label;
    if (type === LWC.TickMarkType.Year) label = String(d.getUTCFullYear());
    else if (type === LWC.TickMarkType.Month || type === LWC.TickMarkType.DayOfMonth) label = fmtDay.format(d);
    else if (type === LWC.TickMarkType.TimeWithSeconds) label = fmtClock.format(d);
    else label = fmtHm.format(d);
    if (!seen.has(label)) { seen.add(label); state.tickLabels.push(label); if (state.tickLabels.length > 60) seen.delete(state.tickLabels.shift()); }
    return label;
  }
  const chart = LWC.createChart(chartEl, {
    autoSize: true,
    layout: { background: { type: "solid", color: "#0b0f14" }, textColor: "#9fb0c3", fontSize: 11, attributionLogo: true,
              panes: { separatorColor: "#2b3542", enableResize: true } },
    grid: { vertLines: { color: "#141b24" }, horzLines: { color: "#141b24" } },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    rightPriceScale: { borderColor: "#2b3542" },
    timeScale: { borderColor: "#2b3542", timeVisible: true, secondsVisible: true, rightOffset: 6, tickMarkFormatter: tickLabel },
    localization: { timeFormatter: (t) => `${fmtDay.format(new Date(t * 1000))} ${fmtClock.format(new Date(t * 1000))} ET` },
  });
  const candles = chart.addSeries(LWC.CandlestickSeries, {
    upColor: "#4cc38a", downColor: "#ef6b6b", borderVisible: false, wickUpColor: "#4cc38a", wickDownColor: "#ef6b6b" });
  const vwapLine = chart.addSeries(LWC.LineSeries, {
    color: "#f0b429", lineWidth: 2, priceLineVisible: false, lastValueVisible: true, crosshairMarkerVisible: false, title: "VWAP" });
  // volume pane, stacked from zero: all volume (grey, neutral shows) >= buy + sell (red, sell shows) >= buy (green)
  const volOpts = { priceFormat: { type: "volume" }, priceLineVisible: false, lastValueVisible: false };
  const volAll = chart.addSeries(LWC.HistogramSeries, { ...volOpts, color: "#4b5563" }, 1);
  const volSell = chart.addSeries(LWC.HistogramSeries, { ...volOpts, color: "#c24d4d" }, 1);
  const volBuy = chart.addSeries(LWC.HistogramSeries, { ...volOpts, color: "#2f9e6b" }, 1);
  try { chart.panes()[1].setStretchFactor(0.28); chart.panes()[0].setStretchFactor(1); } catch (e) { /* older build */ }
  window.spxDashboard = { chart, state };  // for the browser console and the browser tests

  const tsec = (b) => Math.floor(Number(b.startNs) / 1e9);
  const candle = (b) => ({ time: tsec(b), open: b.open, high: b.high, low: b.low, close: b.close,
                           color: b.closed ? undefined : (b.close >= b.open ? "#2d7a56" : "#9a4545") });
  function vols(b) {
    const t = tsec(b), buy = b.buyVolume ?? 0, sell = b.sellVolume ?? 0;
    return [{ time: t, value: b.volume || 0 }, { time: t, value: buy + sell }, { time: t, value: buy }];
  }
  const barsByTime = new Map();

  function syncChart() {
    const all = state.current ? state.bars.concat([state.current]) : state.bars;
    if (state.reset) {
      state.reset = false; state.pending = [];
      barsByTime.clear(); all.forEach((b) => barsByTime.set(tsec(b), b));
      candles.setData(all.map(candle));
      const v = all.map(vols);
      volAll.setData(v.map((x) => x[0])); volSell.setData(v.map((x) => x[1])); volBuy.setData(v.map((x) => x[2]));
      vwapLine.setData([]);
      if (all.length) chart.timeScale().scrollToRealTime();
    } else {
      for (const b of state.pending) {
        barsByTime.set(tsec(b), b);
        candles.update(candle(b));
        const [a, s, u] = vols(b);
        volAll.update(a); volSell.update(s); volBuy.update(u);
      }
      state.pending = [];
    }
    const last = all[all.length - 1];
    if (last) {
      const endNs = Number(last.startNs) + (last.closed === false ? 0 : intervalNs());
      if (endNs > state.eventNs) state.eventNs = endNs;
      if (state.vwap !== null) vwapLine.update({ time: tsec(last), value: state.vwap });
    }
    chartEl.dataset.bars = String(state.bars.length);
    chartEl.dataset.volumeBars = String(all.filter((b) => (b.volume || 0) > 0).length);
    chartEl.dataset.lastClose = last ? String(last.close) : "";
    $("chart-empty").hidden = all.length > 0;
    $("chart-empty").textContent = state.interval === "1m"
      ? "no 1 m bars yet: the aggregator publishes the intervals in [aggregator] intervals (1m or 60s)"
      : "waiting for bars…";
    drawSetupLines();
  }
  function intervalNs() { return { "1s": 1e9, "5s": 5e9, "1m": 60e9 }[state.interval] || 1e9; }

  // crosshair: OHLCV and the bar's microstructure
  const tip = $("tooltip");
  chart.subscribeCrosshairMove((p) => {
    const b = p && p.time !== undefined ? barsByTime.get(p.time) : null;
    if (!b || !p.point) { tip.hidden = true; return; }
    const row = (k, v) => `<tr><th>${k}</th><td>${v}</td></tr>`;
    tip.innerHTML = `<div class="tip-time">${etDate(b.startNs)} ${etTime(b.startNs)} ET${b.closed === false ? " (forming)" : ""}</div><table>` +
      row("O H L C", `${fmt(b.open)} ${fmt(b.high)} ${fmt(b.low)} ${fmt(b.close)}`) +
      row("volume", `${fmtInt(b.volume)} <span class="muted">(${fmtInt(b.trades)} trades)</span>`) +
      row("buy / sell", `<span class="long">${fmtInt(b.buyVolume)}</span> / <span class="short">${fmtInt(b.sellVolume)}</span>`) +
      row("delta vol", fmtInt(b.deltaVolume)) + row("bar VWAP", fmt(b.vwap)) +
      row("bid/ask imb.", fmt(b.bidAskImbalance, 3)) + row("spread", `${fmt(b.avgSpreadBps, 1)} bps`) +
      row("quote cov.", b.quoteCoveragePct == null ? "-" : `${fmt(b.quoteCoveragePct, 0)}%`) + "</table>";
    tip.hidden = false;
    const box = chartEl.getBoundingClientRect();
    const x = p.point.x + 16 + 220 > box.width ? p.point.x - 236 : p.point.x + 16;
    tip.style.left = `${chartEl.offsetLeft + Math.max(0, x)}px`; tip.style.top = `${chartEl.offsetTop + Math.max(0, p.point.y - 20)}px`;
  });

  // levels (opening range, prior day, generic) and the server's session VWAP, from the market state
  let levelLines = [];
  function marketFor(sym) {
    const mk = state.market; if (!mk) return null;
    if (mk.symbols && typeof mk.symbols === "object") return mk.symbols[sym] || mk.symbols[`I:${sym}`] || null;
    return mk;
  }
  function levels() {
    const out = [], mk = state.market, sm = marketFor(state.sym);
    const add = (name, v) => { if (typeof v === "number" && isFinite(v)) out.push([name, v]); };
    const lv = mk && mk.levels;
    if (Array.isArray(lv)) lv.forEach((l) => add(l.name || l.kind || "level", l.price ?? l.value));
    else if (lv && typeof lv === "object") Object.entries(lv).forEach(([k, v]) => add(k, typeof v === "object" && v ? v.price : v));
    if (sm && sm !== mk) {
      const or = sm.opening_range || {}; add("ORH", or.high); add("ORL", or.low);
      const pd = sm.prior_day || {}; add("PDH", pd.high); add("PDL", pd.low); add("PDC", pd.close);
    }
    return out.slice(0, 30);
  }
  function applyMarket() {
    levelLines.forEach((l) => candles.removePriceLine(l));
    const lv = levels();
    levelLines = lv.map(([name, price]) => candles.createPriceLine({ price, color: "#7a5cff", lineWidth: 1, lineStyle: LWC.LineStyle.Dashed, axisLabelVisible: true, title: name }));
    chartEl.dataset.levels = lv.map((l) => l[0]).join(",");
    const sm = marketFor(state.sym);
    const v = sm && typeof sm.vwap === "number" ? sm.vwap : null;
    state.vwap = v;
    chartEl.dataset.vwap = v === null ? "" : String(v);
    $("vwap-label").textContent = `session VWAP ${v === null ? "-" : fmt(v)}`;
  }

  // the selected setup's entry / stop / targets on the chart
  let setupLines = [];
  function drawSetupLines() {
    setupLines.forEach((l) => candles.removePriceLine(l)); setupLines = [];
    let s = state.selected ? state.setups.get(state.selected) : null;
    if (!s) s = [...state.setups.values()].filter((x) => x.sym === state.sym).sort((a, b) => b.ts - a.ts)[0];
    if (!s || s.sym !== state.sym) { chartEl.dataset.setupLines = ""; $("selected-setup").textContent = ""; return; }
    const line = (price, title, color, style) => { if (typeof price === "number") setupLines.push(candles.createPriceLine({ price, color, lineWidth: 2, lineStyle: style, axisLabelVisible: true, title })); };
    line(s.entry_low, "entry", "#4aa3ff", LWC.LineStyle.Solid);
    if (s.entry_high !== s.entry_low) line(s.entry_high, "entry", "#4aa3ff", LWC.LineStyle.Solid);
    line(s.stop, "stop", "#ef6b6b", LWC.LineStyle.Solid);
    (s.targets || []).forEach((t, i) => line(t, `T${i + 1}`, "#4cc38a", LWC.LineStyle.Dotted));
    chartEl.dataset.setupLines = [...new Set(setupLines.map((l) => l.options().title))].join(",");
    chartEl.dataset.setupId = s.setup_id;
    $("selected-setup").textContent = `${s.detector} ${s.direction} · ${STATE_WORDS[s.to_state] || words(s.to_state)}`;
  }

  // ---------------------------------------------------------------- panels
  function renderSetups() {
    const rows = [...state.setups.values()].sort((a, b) => b.ts - a.ts).slice(0, 40);
    const lv = (x) => fmt(x);
    $("setups").tBodies[0].innerHTML = rows.map((s) => {
      const entry = s.entry_low == null ? "-" : (s.entry_high != null && s.entry_high !== s.entry_low ? `${lv(s.entry_low)}–${lv(s.entry_high)}` : lv(s.entry_low));
      const sel = s.setup_id === (chartEl.dataset.setupId || state.selected) ? " selected" : "";
      return `<tr class="setup${sel}" data-setup-id="${esc(s.setup_id)}" data-state="${esc(s.to_state)}" data-sym="${esc(s.sym)}" title="${esc(s.reason)} · id ${esc(s.setup_id)}">` +
        `<td><time>${etTime(s.ts)}</time></td><td><b>${esc(s.sym)}</b></td><td>${esc(s.detector)}</td>` +
        `<td class="${esc(s.direction)}">${esc(s.direction)}</td><td>${esc(STATE_WORDS[s.to_state] || words(s.to_state))}</td>` +
        `<td>${age(state.setupFirst.get(s.setup_id))}</td><td>${entry}</td><td class="short">${lv(s.stop)}</td>` +
        `<td class="long">${(s.targets || []).map(lv).join(" / ") || "-"}</td></tr>`;
    }).join("") || '<tr><td class="muted" colspan="9">no setups yet</td></tr>';
  }
  $("setups").onclick = (e) => {
    const tr = e.target.closest("tr[data-setup-id]"); if (!tr) return;
    state.selected = tr.dataset.setupId;
    const s = state.setups.get(state.selected);
    if (s && s.sym !== state.sym) { $("sym").value = s.sym; $("sym").onchange({ target: $("sym") }); }
    drawSetupLines(); renderSetups();
  };
  // Each alert can be acknowledged (useful) or dismissed (noise) once: the coach's acknowledgment-rate
  // gate (coach_alert_ack_rate) counts these answers.
  function renderCoach() {
    $("coach").innerHTML = state.coach.slice().reverse().sort((a, b) => b.ts - a.ts).map((e) => {
      const answer = e.feedback
        ? `<span class="answer ${esc(e.feedback)}">${e.feedback === "ack" ? "✓ useful" : "✗ noise"}</span>`
        : e.id ? `<span class="answer"><button class="ack" data-event-id="${esc(e.id)}" title="useful">✓</button>` +
          `<button class="dismiss" data-event-id="${esc(e.id)}" title="noise">✗</button></span>` : "";
      return `<li class="${esc(e.severity)}" data-kind="${esc(e.kind)}" data-ts="${esc(e.ts)}" data-event-id="${esc(e.id || "")}" ` +
        `data-feedback="${esc(e.feedback || "")}"><time>${etTime(e.ts)}</time> ` +
        `<b>${esc(words(e.kind))}</b> ${esc(prettyNumbers(e.message))} ${answer}</li>`;
    }).join("") || '<li class="muted">no alerts yet</li>';
  }
  $("coach").onclick = (ev) => {
    const btn = ev.target.closest("button[data-event-id]"); if (!btn) return;
    btn.disabled = true;
    send({ op: btn.classList.contains("ack") ? "ack" : "dismiss", eventId: btn.dataset.eventId, id: `fb-${btn.dataset.eventId}` });
  };
  function onFeedback(d) {
    for (const e of state.coach) if (e.id === d.eventId) e.feedback = d.action;
    renderCoach();
  }
  function renderPositions() {
    let total = 0;
    $("positions").tBodies[0].innerHTML = [...state.positions.values()].map((p) => {
      const pnl = (p.realized_pnl || 0) + (p.unrealized_pnl || 0); total += pnl;
      const mark = p.mark ?? (p.unrealized_pnl != null && p.quantity ? p.avg_price + p.unrealized_pnl / (p.quantity * 100) : null);
      const delta = p.delta == null ? "-" : fmtInt(p.delta * p.quantity * 100);
      const gamma = p.gamma == null ? "-" : fmt(p.gamma * p.quantity * 100, 1);
      const open = p.quantity !== 0;
      return `<tr data-symbol="${esc(p.option_symbol)}" data-quantity="${p.quantity}" title="${esc(p.option_symbol)}"><td>${esc(contract(p.option_symbol))}</td>` +
        `<td>${p.quantity}</td><td>${fmt(p.avg_price)}</td><td>${fmt(mark)}</td><td class="${pnl >= 0 ? "long" : "short"}">${fmt(pnl)}</td>` +
        `<td>${delta}</td><td>${gamma}</td><td>${p.iv == null ? "-" : fmt(p.iv * 100, 1) + "%"}</td>` +
        `<td>${open && state.user ? flattenHtml(p.option_symbol) : ""}</td></tr>`;
    }).join("") || '<tr><td class="muted" colspan="9">no positions</td></tr>';
    $("pnl").textContent = `total ${fmt(total)}`;
  }
  function flattenHtml(symbol) {
    const f = flattenButton(symbol);
    return `<button class="${f.cls}" data-symbol="${esc(symbol)}"${f.disabled ? " disabled" : ""}>${f.label}</button>`;
  }
  // a stop order has no limit price: show its trigger ("stop 1.20"); a stop-limit shows both
  function orderPrice(o) {
    const hasStop = o.stop !== null && o.stop !== undefined;
    const hasPrice = o.price !== null && o.price !== undefined;
    if (hasStop && hasPrice) return `${fmt(o.price)} (stop ${fmt(o.stop)})`;
    if (hasStop) return `stop ${fmt(o.stop)}`;
    return fmt(o.price);
  }
  function renderOrders() {
    const orders = [...state.orders.values()].sort((a, b) => b.ts - a.ts).slice(0, 15);
    $("orders").tBodies[0].innerHTML = orders.map((o) =>
      `<tr data-order-id="${esc(o.order_id)}" data-status="${esc(o.status)}"><td><time>${etTime(o.ts)}</time></td><td>${esc(contract(o.option_symbol))}</td>` +
      `<td>${esc(words(o.side))}</td><td>${o.quantity}</td><td>${esc(o.type)}</td><td class="order-price">${orderPrice(o)}</td><td>${esc(words(o.status))}</td></tr>`).join("") ||
      '<tr><td class="muted" colspan="7">no orders</td></tr>';
    $("fills").tBodies[0].innerHTML = state.fills.slice().reverse().slice(0, 15).map((f) =>
      `<tr data-order-id="${esc(f.order_id)}"><td><time>${etTime(f.ts)}</time></td><td>${esc(contract(f.option_symbol))}</td>` +
      `<td>${esc(words(f.side))}</td><td>${f.quantity}</td><td>${fmt(f.price)}</td></tr>`).join("") ||
      '<tr><td class="muted" colspan="5">no fills</td></tr>';
  }

  // flatten: the first click arms the button for 5 s ("Confirm flatten?"), the second sends op: flatten;
  // the armed state lives here, not in the button, so a position update re-rendering the row keeps it
  let flattenSeq = 0;
  const armed = new Map();  // symbol ("*" = all) -> armed until (ms)
  const inFlight = new Set();
  const isArmed = (key) => (armed.get(key) || 0) > performance.now();
  function flattenButton(key) {
    const label = isArmed(key) ? "Confirm flatten?" : key === "*" ? "Flatten all" : "Flatten";
    return { label, cls: isArmed(key) ? "flatten armed" : "flatten", disabled: inFlight.has(key) };
  }
  function renderFlattenAll() {
    const b = $("flatten-all"), f = flattenButton("*");
    b.textContent = f.label; b.className = f.cls; b.disabled = f.disabled;
  }
  function showFlatten(text, cls) { const r = $("flatten-result"); r.textContent = text; r.className = cls || "muted"; }
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("button.flatten"); if (!btn || btn.disabled) return;
    const key = btn.dataset.symbol || "*";
    if (!isArmed(key)) {
      armed.set(key, performance.now() + 5000);
      setTimeout(() => { renderPositions(); renderFlattenAll(); }, 5050);
    } else {
      armed.delete(key); inFlight.add(key);
      const symbol = key === "*" ? null : key;
      send(symbol ? { op: "flatten", symbol, id: `flatten-${++flattenSeq}` } : { op: "flatten", id: `flatten-${++flattenSeq}` });
      delete $("flatten-result").dataset.ok;
      showFlatten(`flattening ${symbol ? contract(symbol) : "all positions"}…`);
    }
    renderPositions(); renderFlattenAll();
  });
  function onFlattenResult(d) {
    const what = d.symbol ? contract(d.symbol) : "all positions";
    // an exit waits for its resting protective stop's cancel: say it is closing, not "0 orders queued"
    const n = d.orders.length, closing = (d.closing || []).length, stops = d.stopsCancelled || 0;
    const queued = n ? `${n} exit order${n === 1 ? "" : "s"} queued`
      : closing ? `closing ${closing} position${closing === 1 ? "" : "s"}` : "0 exit orders queued";
    const first = stops ? ` (${stops} protective stop${stops === 1 ? "" : "s"} cancelled first)` : "";
    const text = d.ok ? `flatten ${what}: ${queued}${first}`
      : `flatten ${what}: refused: ${d.blocked.join("; ")}` + (n ? ` (${n} queued)` : "");
    showFlatten(text, d.ok ? "long" : "short");
    $("flatten-result").dataset.ok = String(d.ok);
    inFlight.delete(d.symbol || "*");
    renderPositions(); renderFlattenAll();
  }

  function feedBadge(f) {
    const b = $("feed-badge");
    if (!f) { b.textContent = "FEED -"; b.dataset.mode = "-"; b.className = "pill feed"; return; }
    let text;
    if (f.mode === "replay") {
      // the session's date: the feed's own field when it has one, else the bars' event time (the feed's
      // status before its first event is stamped with the wall clock), else the status' event time
      const date = f.replayDate || f.sessionDate || (state.eventNs ? etDate(state.eventNs) : f.eventTs ? etDate(f.eventTs) : "");
      const speedM = /(?:^|\s)(x\s?[\d.]+|max)\b/i.exec(f.detail || "");
      const speed = f.speed ? `×${f.speed}` : speedM ? speedM[1].replace(/^x\s?/i, "×") : "";
      text = `REPLAY ${date} ${speed}`.trim();
    } else if (f.mode === "tick" && f.source && f.source !== "live") text = f.badge;  // LIVE only on a vendor
    else if (f.mode === "tick") text = `LIVE ${f.detail || "massive"}`.trim();
    else if (f.mode === "poll") text = "POLL (REST fallback)";
    else text = "FEED DOWN";
    const title = [f.detail, f.source && `source ${f.source}`, f.runId && `run ${f.runId}`].filter(Boolean).join(" · ");
    b.textContent = text; b.dataset.mode = f.mode; b.dataset.source = f.source || ""; b.title = title; b.className = `pill feed ${f.mode}`;
    // availability of the session so far (SLO > 99.5%), beside the source badge, outlined red below the SLO
    const a = $("feed-availability");
    const pct = f.availabilityPct;
    a.hidden = pct == null;
    a.textContent = pct == null ? "" : `prices ${fmt(pct, 2)}%`;
    a.dataset.availability = pct == null ? "" : String(pct);
    a.title = pct == null ? "" : `prices flowed ${fmt(pct, 3)}% of the ${f.availabilityDay} session so far` +
      (f.longestGapS ? `; longest gap ${f.longestGapS} s from ${etTime(f.longestGapStartNs)} ET` : "; no gap") +
      " (SLO > 99.5%)";
    a.classList.toggle("below-slo", pct != null && pct < 99.5);
  }
  function renderStatus() {
    const s = state.status; if (!s) return;
    // every service the gateway expects, heard or not: green when healthy, red with the reason otherwise
    $("services").innerHTML = Object.entries(s.services).map(([name, v]) => {
      const ok = v.healthy !== undefined ? v.healthy : v.alive;
      return `<div class="svc ${ok ? "ok" : "dead"}" data-service="${esc(name)}" data-state="${esc(v.state)}" ` +
        `title="${esc(v.detail)}"><span class="dot">●</span> ${esc(name)} <span class="muted">${esc(v.state)}</span>` +
        (ok ? "" : ` <span class="reason">${esc(v.reason || "no heartbeat")}</span>`) + "</div>";
    }).join("") +
      (s.feed ? `<div class="muted">feed ${esc(s.feed.mode)} · ${fmt(s.feed.eventsPerS, 0)} ev/s</div>` : "");
    feedBadge(s.feed);
    renderSwitches(s.switches || {});
  }
  // Rollout switches: the value each running service applies (from heartbeats); a switch whose
  // services disagree (a reload still under way, or a service that missed it) shows every value.
  function renderSwitches(byService) {
    const bySwitch = new Map();
    for (const [svc, flags] of Object.entries(byService)) {
      for (const [name, value] of Object.entries(flags)) {
        if (!bySwitch.has(name)) bySwitch.set(name, new Map());
        const vals = bySwitch.get(name), key = String(value);
        if (!vals.has(key)) vals.set(key, []);
        vals.get(key).push(svc);
      }
    }
    $("switches").tBodies[0].innerHTML = [...bySwitch.entries()].sort().map(([name, vals]) => {
      const mixed = vals.size > 1;
      const value = [...vals.keys()].join(" / ");
      const who = mixed ? [...vals.entries()].map(([v, svcs]) => `${v}: ${svcs.sort().join(",")}`).join("; ")
        : `all ${[...vals.values()][0].length}`;
      return `<tr data-switch="${esc(name)}" data-value="${esc(value)}" class="${mixed ? "warning" : ""}">` +
        `<td>${esc(name)}</td><td><b>${esc(value)}</b></td><td class="muted">${esc(who)}</td></tr>`;
    }).join("") || '<tr><td class="muted" colspan="3">no heartbeat yet</td></tr>';
  }

  setInterval(() => { state.rate = state.updates; state.updates = 0; renderSetups(); }, 1000);

  // DOM writes only when the text changes: an unchanged write still invalidates style and layout, and
  // four of them every frame kept the main thread busy on an idle page (benchmarks/dashboard.py)
  function put(el, key, value) { if (el[key] !== value) el[key] = value; }
  function putData(el, key, value) { if (el.dataset[key] !== value) el.dataset[key] = value; }
  let badgeAt = 0;
  function frame(now) {
    if (state.dirty) {
      state.dirty = false;
      syncChart();
      state.renders++;
      chartEl.dataset.renders = String(state.renders);
      put($("chart-title"), "textContent", `${state.sym} ${state.interval}`);
      put($("last-price"), "textContent", state.price ? fmt(state.price.price) : "-");
      if (state.eventNs) {
        put($("clock"), "textContent", `${fmtDay.format(new Date(msOf(state.eventNs)))} ${etDate(state.eventNs).slice(0, 4)} · ${etTime(state.eventNs)} ET`);
        putData($("clock"), "date", etDate(state.eventNs));
      }
    }
    putData(chartEl, "timeLabels", state.tickLabels.join("|"));  // the chart's own renders add labels
    if (now - badgeAt >= 250) {  // the diagnostics badge: four times a second is enough for a person
      badgeAt = now;
      put($("badge-mode"), "textContent", state.mode);
      put($("badge-rate"), "textContent", String(state.rate));
      put($("badge-age"), "textContent", state.lastTickAt ? `${((performance.now() - state.lastTickAt) / 1000).toFixed(1)}s` : "-");
    }
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
  connect();
})();
