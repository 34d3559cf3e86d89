// SPX Command Center dashboard: one websocket, plain canvas, render at most once per animation frame.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const $ = (id) => document.getElementById(id);
  const state = {
    sym: params.get("sym") || "SPY", interval: params.get("interval") || "1s",
    bars: [], current: null, price: null, market: null, setups: new Map(), coach: [], positions: new Map(),
    status: null, mode: "-", updates: 0, rate: 0, lastTickAt: 0, seq: {}, gaps: 0, renders: 0, dirty: true,
  };
  const MAX_BARS = 600;
  $("sym").value = state.sym; $("interval").value = state.interval;
  let ws = null, retry = 500;

  function channels() {
    const ch = [`price:${state.sym}`, `microbar:${state.sym}:${state.interval}`, "setups", "snapshot", "status"];
    if (token) ch.push("coach", "positions");
    return ch;
  }

  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 500; setConn(true); ws.send(JSON.stringify({ op: "subscribe", channels: channels() })); };
    ws.onclose = () => { setConn(false); setTimeout(connect, retry); retry = Math.min(retry * 2, 10000); };
    ws.onmessage = (ev) => { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  }

  function setConn(up) { const c = $("conn"); c.textContent = up ? "live" : "disconnected"; c.className = "pill " + (up ? "up" : "down"); }

  function resubscribe(oldSym, oldInterval) {
    if (!ws || ws.readyState !== 1) return;
    ws.send(JSON.stringify({ op: "unsubscribe", channels: [`price:${oldSym}`, `microbar:${oldSym}:${oldInterval}`] }));
    state.bars = []; state.current = null; state.price = null; state.dirty = true;
    ws.send(JSON.stringify({ op: "subscribe", channels: [`price:${state.sym}`, `microbar:${state.sym}:${state.interval}`] }));
  }
  $("sym").onchange = (e) => { const o = state.sym; state.sym = e.target.value.trim().toUpperCase(); resubscribe(o, state.interval); };
  $("interval").onchange = (e) => { const o = state.interval; state.interval = e.target.value; resubscribe(state.sym, o); };

  function onMessage(m) {
    if (m.type === "welcome") { $("user").textContent = m.data.user ? `user ${m.data.user}` : "no token"; return; }
    if (m.type === "error") { console.warn("gateway error", m.data); return; }
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
      if (ch !== `microbar:${state.sym}:${state.interval}`) return;
      if (m.type === "snapshot") { state.bars = d.bars.slice(-MAX_BARS); state.current = d.current; }
      else addBar(d);
      if (!state.price) state.mode = m.source;  // the price channel's source and cadence win
      state.updates++;
    } else if (ch === "setups") {
      if (m.type === "snapshot") { state.setups.clear(); d.setups.forEach((s) => state.setups.set(s.setup_id, s)); }
      else state.setups.set(d.setup_id, d);
      renderSetups();
    } else if (ch === "snapshot") { state.market = d; }
    else if (ch === "status") { state.status = d; renderStatus(); }
    else if (ch === "coach") {
      if (m.type === "snapshot") state.coach = d.events.slice(); else state.coach.push(d);
      state.coach = state.coach.slice(-50); renderCoach();
    } else if (ch === "positions") {
      if (m.type === "snapshot") { state.positions.clear(); d.positions.forEach((p) => state.positions.set(p.option_symbol, p)); }
      else state.positions.set(d.option_symbol, d);
      renderPositions();
    }
    state.dirty = true;
  }

  function addBar(b) {
    const last = state.bars[state.bars.length - 1];
    if (b.closed) {
      if (last && last.startNs === b.startNs) state.bars[state.bars.length - 1] = b;
      else if (!last || b.startNs > last.startNs) state.bars.push(b);
      if (state.bars.length > MAX_BARS) state.bars.splice(0, state.bars.length - MAX_BARS);
      if (state.current && state.current.startNs <= b.startNs) state.current = null;
    } else state.current = b;
  }

  const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const fmt = (x, n = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(n));

  function renderSetups() {
    const rows = [...state.setups.values()].sort((a, b) => b.ts - a.ts).slice(0, 30);
    $("setups").tBodies[0].innerHTML = rows.map((s) =>
      `<tr data-setup-id="${esc(s.setup_id)}" data-state="${esc(s.to_state)}"><td>${esc(s.family)} <span class="muted">${esc(s.setup_id)}</span></td>` +
      `<td class="${esc(s.direction)}">${esc(s.direction)}</td><td>${esc(s.to_state)}</td><td>${fmt(s.price)}</td></tr>`).join("");
  }
  function renderCoach() {
    $("coach").innerHTML = state.coach.slice().reverse().map((e) =>
      `<li class="${esc(e.severity)}" data-kind="${esc(e.kind)}"><b>${esc(e.kind)}</b> ${esc(e.message)}</li>`).join("") ||
      '<li class="muted">no alerts yet</li>';
  }
  function renderPositions() {
    let total = 0;
    $("positions").tBodies[0].innerHTML = [...state.positions.values()].map((p) => {
      const pnl = (p.realized_pnl || 0) + (p.unrealized_pnl || 0); total += pnl;
      return `<tr><td>${esc(p.option_symbol)}</td><td>${p.quantity}</td><td>${fmt(p.avg_price)}</td><td class="${pnl >= 0 ? "long" : "short"}">${fmt(pnl)}</td></tr>`;
    }).join("");
    $("pnl").textContent = `total ${fmt(total)}`;
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

  setInterval(() => { state.rate = state.updates; state.updates = 0; }, 1000);

  // ---------------------------------------------------------------- chart (plain canvas)
  const canvas = $("chart"), ctx = canvas.getContext("2d");

  function levels() {
    const out = [], mk = state.market;
    if (!mk) return out;
    const add = (name, v) => { if (typeof v === "number" && isFinite(v)) out.push([name, v]); };
    const lv = mk.levels;
    if (Array.isArray(lv)) lv.forEach((l) => add(l.name || l.kind || "level", l.price ?? l.value));
    else if (lv && typeof lv === "object") Object.entries(lv).forEach(([k, v]) => add(k, typeof v === "object" && v ? v.price : v));
    return out.slice(0, 30);
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const bars = state.current ? state.bars.concat([state.current]) : state.bars;
    const axisW = 64, plotW = w - axisW, slot = 8, n = Math.max(1, Math.min(bars.length, Math.floor(plotW / slot)));
    const view = bars.slice(-n);
    canvas.dataset.bars = String(state.bars.length);
    canvas.dataset.lastClose = view.length ? String(view[view.length - 1].close) : "";
    $("chart-title").textContent = `${state.sym} ${state.interval}`;
    $("last-price").textContent = state.price ? fmt(state.price.price) : "-";
    if (!view.length) {
      ctx.fillStyle = "#6b7a8c"; ctx.fillText("waiting for bars…", 12, 20); return;
    }
    // session VWAP over the bars we hold (volume-weighted bar VWAPs)
    let pv = 0, vol = 0; const vwap = [];
    for (const b of bars) { const v = b.volume || 0, p = b.vwap ?? b.close; pv += p * v; vol += v; vwap.push(vol ? pv / vol : p); }
    const vwapView = vwap.slice(-n), lv = levels();
    canvas.dataset.levels = lv.map((l) => l[0]).join(",");
    let lo = Infinity, hi = -Infinity;
    for (const b of view) { lo = Math.min(lo, b.low); hi = Math.max(hi, b.high); }
    for (const v of vwapView) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const pad = (hi - lo) * 0.08 || 0.5; lo -= pad; hi += pad;
    const y = (p) => h - 16 - ((p - lo) / (hi - lo)) * (h - 28);
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#1c2430"; ctx.fillStyle = "#6b7a8c"; ctx.lineWidth = 1;
    for (let i = 0; i <= 5; i++) {
      const p = lo + ((hi - lo) * i) / 5, yy = Math.round(y(p)) + 0.5;
      ctx.beginPath(); ctx.moveTo(0, yy); ctx.lineTo(plotW, yy); ctx.stroke(); ctx.fillText(p.toFixed(2), plotW + 4, yy + 4);
    }
    for (const [name, p] of lv) {
      if (p < lo || p > hi) continue;
      const yy = Math.round(y(p)) + 0.5;
      ctx.strokeStyle = "#7a5cff"; ctx.setLineDash([4, 4]); ctx.beginPath(); ctx.moveTo(0, yy); ctx.lineTo(plotW, yy); ctx.stroke();
      ctx.setLineDash([]); ctx.fillStyle = "#a48cff"; ctx.fillText(name, 4, yy - 3);
    }
    const x0 = plotW - view.length * slot;
    view.forEach((b, i) => {
      const x = x0 + i * slot + slot / 2, up = b.close >= b.open;
      ctx.strokeStyle = ctx.fillStyle = up ? "#4cc38a" : "#ef6b6b";
      ctx.globalAlpha = b.closed ? 1 : 0.6;
      ctx.beginPath(); ctx.moveTo(Math.round(x) + 0.5, y(b.high)); ctx.lineTo(Math.round(x) + 0.5, y(b.low)); ctx.stroke();
      const top = y(Math.max(b.open, b.close)), bh = Math.max(1, Math.abs(y(b.open) - y(b.close)));
      ctx.fillRect(Math.round(x - slot / 2 + 1), top, slot - 2, bh);
    });
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "#f0b429"; ctx.lineWidth = 1.5; ctx.beginPath();
    vwapView.forEach((v, i) => { const x = x0 + i * slot + slot / 2; i ? ctx.lineTo(x, y(v)) : ctx.moveTo(x, y(v)); });
    ctx.stroke(); ctx.fillStyle = "#f0b429"; ctx.fillText("VWAP", 4, 12);
    if (state.price && state.price.price != null && state.price.price >= lo && state.price.price <= hi) {
      const yy = Math.round(y(state.price.price)) + 0.5;
      ctx.strokeStyle = "#d8dee6"; ctx.lineWidth = 1; ctx.setLineDash([2, 3]);
      ctx.beginPath(); ctx.moveTo(0, yy); ctx.lineTo(plotW, yy); ctx.stroke(); ctx.setLineDash([]);
    }
  }

  function frame() {
    if (state.dirty) {
      state.dirty = false;
      draw();
      state.renders++;
      canvas.dataset.renders = String(state.renders);
    }
    $("badge-mode").textContent = state.mode;
    $("badge-rate").textContent = String(state.rate);
    $("badge-age").textContent = state.lastTickAt ? `${((performance.now() - state.lastTickAt) / 1000).toFixed(1)}s` : "-";
    requestAnimationFrame(frame);
  }
  window.addEventListener("resize", () => { state.dirty = true; });
  requestAnimationFrame(frame);
  connect();
})();
