// edgefleet dashboard. No framework, no build step. Everything a device
// wrote is hostile: it only ever reaches the document through text()
// (textContent), with control and bidi characters made visible.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 1000; // rows rendered at once; "show more" adds as many
const CLIP = 160;  // characters of device text shown before "show all"

const S = {
  session: { csrf: "", read_only: true, user: "" },
  devices: new Map(), // id → row
  ids: [],            // sorted
  catalog: { releases: [], candidates: [], assignments: [], rollouts: [], malformed: [], driver: null },
  timeline: [],
  malformed: [], dropped: 0,
  staleAfter: 15 * 60 * 1000,
  skew: 0, // server time − browser time
  limit: PAGE,
  rendered: new Map(), // id → tr currently in the table
  first: true,
  snapshots: 0,
};

// ---- text: the only way device text enters the page ----

const BIDI = /[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
// C0/C1 controls become their Unicode "control picture" (ESC → ␛), bidi
// and invisible format characters a visible ⟦U+202E⟧.
function visible(s) {
  s = String(s ?? "");
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    const n = c.charCodeAt(0);
    if (n < 0x20) return String.fromCharCode(0x2400 + n);
    if (n === 0x7f) return "\u2421";
    return "\u2426";
  }).replace(BIDI, (c) => "⟦U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟧");
}

// text builds an element holding s as text, clipped at max characters
// with a button that shows the whole.
function text(tag, s, max, cls) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  const v = visible(s);
  const span = document.createElement("span");
  span.className = "t";
  if (max && v.length > max) {
    span.textContent = v.slice(0, max) + "…";
    const b = document.createElement("button");
    b.className = "clip";
    b.type = "button";
    b.textContent = "show all (" + v.length + ")";
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      const whole = span.textContent.length <= max + 1;
      span.textContent = whole ? v : v.slice(0, max) + "…";
      b.textContent = whole ? "show less" : "show all (" + v.length + ")";
      el.classList.toggle("whole", whole);
    });
    el.append(span, " ", b);
  } else {
    span.textContent = v;
    el.append(span);
  }
  return el;
}

function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const k of kids) e.append(k);
  return e;
}

// ---- formatting ----

function now() { return Date.now() + S.skew; }
function ago(t) {
  const ms = now() - Date.parse(t);
  if (!t || isNaN(ms) || t.startsWith("0001")) return "never";
  const s = Math.round(ms / 1000);
  if (s < 0) return "just now";
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 172800) return Math.floor(s / 3600) + "h ago";
  return new Date(t).toISOString().slice(0, 10);
}
function clock(t) { return t ? new Date(t).toLocaleTimeString() : "—"; }
function bytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}
function failed(a) { return a.state === "failed" || a.state === "rolled-back" || !!a.last_error; }
function offline(r) { return !r.online || now() - Date.parse(r.seen) > S.staleAfter; }
function apps(r) {
  const list = (r.status.apps || []).slice();
  for (const app of Object.keys(r.assigned || {}).sort()) {
    if (!list.some((a) => a.app === app)) list.push({ app });
  }
  return list.length ? list : [{ app: "-" }];
}
function labelText(l) { return Object.keys(l || {}).sort().map((k) => k + "=" + l[k]).join(", "); }
function progress(a) {
  const p = a.progress;
  if (!p || !(p.total > 0)) return "";
  let pct = Math.floor(Math.min(Math.max(p.done, 0), p.total) / p.total * 100);
  if (pct === 100 && p.done < p.total) pct = 99;
  return p.step + " " + pct + "%";
}
function message(a) {
  if (a.last_error) return a.last_error;
  if (a.window_opens) return "installs when its window opens " + new Date(a.window_opens).toLocaleString();
  if (a.note) return "note: " + a.note;
  if (a.rollout && a.rollout.error) return "rollout: " + a.rollout.error;
  return "";
}

// ---- fleet page ----

function filters() {
  return { text: $("f-text").value.trim().toLowerCase(), label: $("f-label").value, state: $("f-state").value, version: $("f-version").value };
}

function matches(r, f) {
  if (f.label) {
    const [k, v] = f.label.split("=");
    if ((r.status.labels || {})[k] !== v) return false;
  }
  const as = apps(r);
  if (f.state) {
    if (f.state === "offline") { if (!offline(r)) return false; }
    else if (f.state === "failing") { if (!as.some(failed)) return false; }
    else if (!as.some((a) => (a.state || "-") === f.state)) return false;
  }
  if (f.version && !as.some((a) => a.app + " " + (a.version || "none") === f.version)) return false;
  if (f.text) {
    const hay = [r.id, r.status.profile, r.status.cpu, labelText(r.status.labels)];
    for (const a of as) hay.push(a.app, a.version, a.target, a.state, a.last_error, a.note);
    if (!hay.some((h) => h && String(h).toLowerCase().includes(f.text))) return false;
  }
  return true;
}

function row(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  const as = apps(r);
  const off = offline(r);
  if (as.some(failed)) tr.classList.add("bad");
  if (off) tr.classList.add("off");
  const cell = (f, cls) => {
    const td = el("td", cls);
    as.forEach((a) => td.append(f(a)));
    return td;
  };
  const link = el("a", "dev");
  link.href = "#/device/" + encodeURIComponent(r.id);
  link.textContent = visible(r.id);
  tr.append(el("td", "", link));
  tr.append(text("td", labelText(r.status.labels), 80, "labels"));
  tr.append(text("td", [r.status.profile, r.status.cpu].filter(Boolean).join(" · "), 60, "wrap"));
  tr.append(cell((a) => text("div", a.app, 40)));
  tr.append(cell((a) => {
    let v = a.version || "-";
    if (a.target && a.target !== a.version) v += " → " + a.target;
    const as = (r.assigned || {})[a.app];
    if (as) v += as === a.version ? " (assigned)" : " (assigned " + as + ")";
    return text("div", v, 60);
  }));
  tr.append(cell((a) => text("div", a.state || "-", 32, "state s-" + String(a.state || "none").replace(/[^a-z-]/g, ""))));
  tr.append(cell((a) => text("div", progress(a), 40)));
  const seen = el("td", "seen");
  seen.textContent = (off ? "offline " : "") + ago(r.seen);
  tr.append(seen);
  tr.append(cell((a) => text("div", message(a), CLIP), "err"));
  return tr;
}

let renderQueued = false, fullRender = true;
const changed = new Set();
function schedule(full) {
  if (full) fullRender = true;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  renderQueued = false;
  counts();
  options();
  const f = filters();
  const tbody = document.querySelector("#fleet tbody");
  if (!fullRender) {
    for (const id of changed) {
      const old = S.rendered.get(id), r = S.devices.get(id);
      const show = r && matches(r, f);
      if (!!old !== !!show) { fullRender = true; break; }
      if (old) {
        const tr = row(r);
        old.replaceWith(tr);
        S.rendered.set(id, tr);
      }
    }
  }
  const rt = route();
  const devChanged = fullRender || (rt.page === "device" && changed.has(rt.arg));
  changed.clear();
  if (fullRender) {
    fullRender = false;
    const rows = [];
    let n = 0;
    S.rendered = new Map();
    for (const id of S.ids) {
      const r = S.devices.get(id);
      if (!matches(r, f)) continue;
      n++;
      if (rows.length < S.limit) {
        const tr = row(r);
        S.rendered.set(id, tr);
        rows.push(tr);
      }
    }
    tbody.replaceChildren(...rows);
    $("shown").textContent = n === S.ids.length ? n + " devices" : n + " of " + S.ids.length + " devices match";
    $("more").hidden = n <= rows.length;
    $("more").textContent = "show " + Math.min(PAGE, n - rows.length) + " more (" + rows.length + " of " + n + " shown)";
  }
  malformed();
  if (rt.page === "device" && devChanged) device();
  if (rt.page === "rollouts") rollouts();
  charts();
  if (S.first && S.snapshots > 0) {
    // The first render of the whole fleet (tests and the benchmark wait
    // for it).
    S.first = false;
    window.edgefleetFirstRender = performance.now();
    document.body.dataset.rendered = String(S.rendered.size);
  }
}

function chip(label, n, cls, onclick) {
  const b = el("button", "chip " + (cls || ""));
  b.type = "button";
  b.append(text("span", label, 40), el("b", "", String(n)));
  if (onclick) b.addEventListener("click", onclick);
  return b;
}

function counts() {
  let off = 0, bad = 0, rb = 0, dUsed = 0, dBack = 0;
  const vers = new Map(), states = new Map();
  for (const id of S.ids) {
    const r = S.devices.get(id);
    if (offline(r)) off++;
    for (const a of r.status.apps || []) {
      const v = a.app + " " + (a.version || "none");
      vers.set(v, (vers.get(v) || 0) + 1);
      const st = a.state || "-";
      states.set(st, (states.get(st) || 0) + 1);
      if (a.delta === "used") dUsed++;
      else if (a.delta) dBack++;
      if (a.state === "rolled-back") rb++;
      else if (failed(a)) bad++;
    }
  }
  const box = $("counts");
  const pick = (sel, v) => () => { $(sel).value = v; S.limit = PAGE; schedule(true); };
  const kids = [
    chip("devices", S.ids.length, "total", pick("f-state", "")),
    chip("offline", off, off ? "warn" : "", pick("f-state", "offline")),
    chip("failed", bad, bad ? "bad" : "", pick("f-state", "failing")),
  ];
  if (rb) kids.push(chip("rolled back", rb, "warn", pick("f-state", "rolled-back")));
  // How the last release reached the devices (deltas, SPEC.md §8.10).
  if (dUsed) kids.push(chip("took a delta", dUsed, ""));
  if (dBack) kids.push(chip("delta fell back", dBack, "warn"));
  kids.push(el("span", "sep"));
  for (const [v, n] of [...vers].sort()) kids.push(chip(v, n, "ver", pick("f-version", v)));
  kids.push(el("span", "sep"));
  for (const [s, n] of [...states].sort()) kids.push(chip(s, n, "st s-" + s.replace(/[^a-z-]/g, ""), pick("f-state", s)));
  box.replaceChildren(...kids);
}

// options refills the filter menus from what the fleet reports.
function options() {
  const labels = new Set(), states = new Set(["offline", "failing"]), vers = new Set();
  for (const r of S.devices.values()) {
    for (const [k, v] of Object.entries(r.status.labels || {})) labels.add(k + "=" + v);
    for (const a of apps(r)) { states.add(a.state || "-"); if (a.app !== "-") vers.add(a.app + " " + (a.version || "none")); }
  }
  fill($("f-label"), "any label", labels);
  fill($("f-state"), "any state", states);
  fill($("f-version"), "any version", vers);
}
function fill(sel, any, values) {
  const want = [...values].sort();
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (want.join("\n") === have.join("\n")) return;
  const cur = sel.value;
  sel.replaceChildren(new Option(any, ""), ...want.map((v) => new Option(visible(v), v)));
  sel.value = want.includes(cur) ? cur : "";
}

function malformed() {
  const box = $("malformed-box");
  box.hidden = S.dropped === 0;
  $("malformed-sum").textContent = S.dropped + " malformed device messages ignored";
  $("malformed").replaceChildren(...S.malformed.map((m) => el("li", "", text("code", m.topic, 120), ": ", text("span", m.error, CLIP))));
}

// ---- device page ----

let devFetch = 0;
async function device() {
  const id = route().arg;
  const my = ++devFetch;
  let d;
  try {
    const res = await fetch("/api/devices/" + encodeURIComponent(id), { headers: { Accept: "application/json" } });
    if (!res.ok) { $("dev-title").textContent = visible(await res.text()); return; }
    d = await res.json();
  } catch (e) { return; }
  if (my !== devFetch) return;
  const r = d.row, st = r.status;
  $("dev-title").replaceChildren(text("span", r.id, 80), " ", el("span", offline(r) ? "pill off" : "pill on", offline(r) ? "offline" : "online"));
  const facts = [["Profile", st.profile], ["CPU", st.cpu], ["Agent", st.agent_version], ["Channel", st.channel],
    ["Labels", labelText(st.labels)], ["Broker", st.broker], ["Last seen", ago(r.seen) + " (" + new Date(r.seen).toLocaleString() + ")"]];
  $("dev-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", "", k), text("dd", v || "—", 200)]));
  $("dev-apps").tBodies[0].replaceChildren(...apps(r).map((a) => {
    const tr = document.createElement("tr");
    if (failed(a)) tr.className = "bad";
    tr.append(text("td", a.app), text("td", a.version || "-", 80), text("td", a.sequence || ""), text("td", a.state || "-", 32),
      text("td", a.target || "", 80), text("td", progress(a)), text("td", a.rollout ? a.rollout.id + " " + a.rollout.phase : "", 100),
      text("td", (r.assigned || {})[a.app] || ""));
    const msg = el("td", "err");
    // The device page shows every message whole.
    for (const m of [a.last_error, a.note && "note: " + a.note, a.delta && "delta: " + a.delta, a.rollout && a.rollout.error && "rollout: " + a.rollout.error]) if (m) msg.append(text("div", m, 0, "whole"));
    tr.append(msg);
    return tr;
  }));
  $("dev-history").tBodies[0].replaceChildren(...d.history.slice().reverse().map((h) => {
    const tr = document.createElement("tr");
    tr.append(el("td", "", new Date(h.time).toLocaleString()), el("td", "", h.event || (h.online ? "" : "offline")));
    const td = el("td");
    for (const a of h.apps || []) {
      let s = a.app + " " + (a.version || "-") + " " + (a.state || "");
      if (a.target) s += " → " + a.target;
      if (a.last_error) s += ": " + a.last_error;
      td.append(text("div", s, CLIP));
    }
    tr.append(td);
    return tr;
  }));
}

// ---- releases and rollouts page ----

function rollouts() {
  const c = S.catalog;
  const d = c.driver;
  $("driver").textContent = !d ? "No rollout driver has run on this broker: 'edgefleet broker' drives by default, or run 'edgefleet rollout drive'." :
    d.online ? visible("Rollout driver " + d.instance + " on " + (d.host || "?") + " online since " + new Date(d.since).toLocaleString() + ".") :
      visible("Rollout driver GONE since " + new Date(d.time).toLocaleString() + ": nothing advances or halts until one runs again.");
  $("driver").className = d && d.online ? "muted" : "warnline";
  const box = $("rollouts");
  if (!c.rollouts.length) { box.replaceChildren(el("p", "muted", "No rollouts on the broker.")); }
  else box.replaceChildren(...c.rollouts.map(rolloutCard));
  const rel = (x, dev) => {
    const tr = document.createElement("tr");
    tr.append(text("td", dev ? x.device : x.channel + (x.cand ? " (rollout candidate)" : ""), 60), text("td", x.app), text("td", x.version, 60), text("td", String(x.sequence)),
      text("td", x.profile), text("td", bytes(x.payload_size)));
    if (!dev) tr.append(text("td", String(x.chunks)));
    tr.append(text("td", x.signature, 80, x.signature.startsWith("unverified") ? "bad" : ""));
    return tr;
  };
  $("releases").tBodies[0].replaceChildren(...c.releases.map((x) => rel(x)), ...c.candidates.map((x) => rel(Object.assign({ cand: true }, x))));
  const as = c.assignments.slice(0, 500);
  $("assignments").tBodies[0].replaceChildren(...(as.length ? as.map((x) => rel(x, true)) : [el("tr", "", el("td", "muted", "none"))]));
  if (c.assignments.length > as.length) $("assignments").tBodies[0].append(el("tr", "", el("td", "muted", (c.assignments.length - as.length) + " more")));
  $("cat-malformed").replaceChildren(...(c.malformed.length ? c.malformed.map((m) => el("li", "", text("code", m.topic || "(topic)", 120), ": ", text("span", m.error, CLIP))) : [el("li", "muted", "none")]));
}

function rolloutCard(r) {
  const card = el("article", "rollout st-" + r.state);
  card.dataset.id = r.id;
  const h = el("h3");
  h.append(text("span", r.app + " " + r.version, 80), el("span", "muted", " seq " + r.sequence + " on channel "), text("span", r.channel),
    el("span", "muted", " · " + r.select + " · "), el("span", "pill state-" + r.state, r.state.toUpperCase()));
  card.append(h, el("div", "muted", "rollout " + r.id + " · started " + new Date(r.created).toLocaleString() + " · updated " + ago(r.updated)));
  if (r.reason) card.append(text("p", r.reason, 0, "reason"));
  const c = r.counts;
  const bar = el("div", "bar");
  const seg = (n, cls, title) => { if (n > 0) { const s = el("span", cls); s.style.flexGrow = String(n); s.title = title + ": " + n; bar.append(s); } };
  seg(c.done, "done", "done"); seg(c.failed, "failed", "failed"); seg(c.pending, "pending", "pending"); seg(c.waiting, "waiting", "waiting");
  seg(c.skipped, "skipped", "skipped"); seg(Math.max(c.selected - c.members, 0), "out", "not yet in a wave");
  card.append(bar, el("div", "counts-line", `${c.selected} selected · ${c.members} in the cut: ${c.done} done, ${c.failed} failed, ${c.pending} pending, ${c.waiting} waiting, ${c.skipped} skipped`));
  const t = el("table", "waves");
  t.append(el("thead", "", el("tr", "", el("th", "", "Wave"), el("th", "", "Size"), el("th", "", "Devices"), el("th", "", "Started"), el("th", "", "Status"))));
  const tb = el("tbody");
  (r.waves || []).forEach((w, i) => {
    tb.append(el("tr", "w-" + w.status, el("td", "", String(i + 1)), el("td", "", w.spec), el("td", "", String(w.size)),
      el("td", "", w.started ? clock(w.started) : "—"), el("td", "", w.status === "current" ? r.state : w.status)));
  });
  t.append(tb);
  card.append(t, el("div", "muted", `halts when more than ${+(r.max_failures * 100).toFixed(2)}% of ${r.min_executed}+ reporting devices fail · bake ${r.bake_seconds}s · device timeout ${r.device_timeout_seconds}s`));
  if (r.failures && r.failures.length) {
    const ul = el("ul", "failures");
    for (const f of r.failures) ul.append(el("li", "", text("span", f.device), " (wave " + f.wave + "): ", text("span", f.reason, CLIP)));
    card.append(el("h4", "", "Failed devices"), ul);
  }
  if (!S.session.read_only) {
    const acts = el("div", "actions");
    const verbs = r.state === "running" ? ["pause", "abort"] : r.state === "paused" ? ["resume", "abort"] : r.state === "halted" ? ["abort"] : [];
    for (const v of verbs) {
      const b = el("button", v === "abort" ? "danger" : "", v[0].toUpperCase() + v.slice(1));
      b.type = "button";
      b.dataset.action = v;
      b.addEventListener("click", () => confirmAction(v, r));
      acts.append(b);
    }
    card.append(acts);
  }
  return card;
}

const WHAT = {
  pause: (r) => `Pause rollout ${r.id}? No further device starts ${r.app} ${r.version} until it is resumed.`,
  resume: (r) => `Resume rollout ${r.id}? Devices in the cut go on installing ${r.app} ${r.version}; device timeouts and the bake restart.`,
  abort: (r) => `Abort rollout ${r.id}? Its candidates are cleared; devices that committed ${r.version} keep it. This cannot be undone.`,
};

function confirmAction(verb, r) {
  const dlg = $("confirm");
  $("confirm-text").textContent = visible(WHAT[verb](r));
  $("confirm-yes").textContent = verb[0].toUpperCase() + verb.slice(1) + " " + r.id;
  $("confirm-yes").dataset.action = verb;
  dlg.onclose = null;
  $("confirm-no").onclick = () => dlg.close();
  $("confirm-yes").onclick = async () => {
    dlg.close();
    try {
      const res = await fetch("/api/rollouts/" + verb, {
        method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": S.session.csrf },
        body: JSON.stringify({ rollout: r.id }), credentials: "same-origin",
      });
      const body = await res.text();
      if (!res.ok) return toast(verb + " refused: " + body, true);
      const j = JSON.parse(body);
      toast("rollout " + j.id + " is " + j.state + ": " + j.reason, false);
    } catch (e) { toast(verb + " failed: " + e, true); }
  };
  dlg.showModal();
}

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = visible(msg);
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 15000 : 6000);
}

// ---- versions over time (inline SVG) ----

const COLORS = ["#4e79a7", "#59a14f", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1", "#9c755f", "#bab0ac", "#ff9da7", "#86bcb6"];
const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, txt) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (txt !== undefined) e.textContent = txt;
  return e;
}

function charts() {
  const p = route().page;
  if (p === "fleet") chart($("chart-fleet"));
  if (p === "rollouts") chart($("chart-rollouts"));
}

function chart(box) {
  const pts = S.timeline;
  if (pts.length === 0) { box.replaceChildren(el("p", "muted", "No samples yet.")); return; }
  const W = 900, H = 220, L = 44, R = 10, T = 10, B = 24;
  const keys = [...new Set(pts.flatMap((p) => Object.keys(p.v)))].sort();
  const t0 = Date.parse(pts[0].t), t1 = Math.max(now(), Date.parse(pts[pts.length - 1].t) + 1000);
  let ymax = 1;
  for (const p of pts) ymax = Math.max(ymax, Object.values(p.v).reduce((a, b) => a + b, 0), p.failed);
  const x = (t) => L + (Date.parse(t) - t0) / (t1 - t0) * (W - L - R);
  const y = (n) => T + (1 - n / ymax) * (H - T - B);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "devices per version over time, and failures" });
  for (let i = 0; i <= 4; i++) {
    const n = Math.round(ymax * i / 4);
    s.append(svg("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid" }), svg("text", { x: L - 6, y: y(n) + 4, "text-anchor": "end" }, String(n)));
  }
  // Stacked steps: each version's band from the versions below it.
  const base = pts.map(() => 0);
  keys.forEach((k, ki) => {
    const top = [], bottom = [];
    pts.forEach((p, i) => {
      const xa = x(p.t), xb = i + 1 < pts.length ? x(pts[i + 1].t) : W - R;
      const lo = base[i], hi = lo + (p.v[k] || 0);
      top.push(`${xa},${y(hi)}`, `${xb},${y(hi)}`);
      bottom.unshift(`${xb},${y(lo)}`, `${xa},${y(lo)}`);
      base[i] = hi;
    });
    const poly = svg("polygon", { points: top.concat(bottom).join(" "), fill: COLORS[ki % COLORS.length], "fill-opacity": "0.85" });
    poly.append(svg("title", {}, visible(k)));
    s.append(poly);
  });
  const fl = [];
  pts.forEach((p, i) => {
    const xa = x(p.t), xb = i + 1 < pts.length ? x(pts[i + 1].t) : W - R;
    fl.push(`${xa},${y(p.failed)}`, `${xb},${y(p.failed)}`);
  });
  s.append(svg("polyline", { points: fl.join(" "), class: "failline" }));
  // Where each rollout's waves started.
  for (const r of S.catalog.rollouts || []) {
    (r.waves || []).forEach((w, i) => {
      if (!w.started || Date.parse(w.started) < t0) return;
      const xw = x(w.started);
      const line = svg("line", { x1: xw, x2: xw, y1: T, y2: H - B, class: "wave" });
      line.append(svg("title", {}, visible(r.app + " " + r.version + " wave " + (i + 1) + " (" + w.spec + ") started " + clock(w.started))));
      s.append(line, svg("text", { x: xw + 3, y: T + 10, class: "wavelabel" }, visible(r.version + " w" + (i + 1))));
    });
  }
  s.append(svg("text", { x: L, y: H - 6 }, clock(pts[0].t)), svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
  const legend = el("div", "legend");
  keys.forEach((k, ki) => {
    const sw = el("span", "sw");
    sw.style.background = COLORS[ki % COLORS.length];
    const last = pts[pts.length - 1].v[k] || 0;
    legend.append(el("span", "", sw, text("span", k, 40), " " + last));
  });
  legend.append(el("span", "", el("span", "sw failsw"), "failed " + pts[pts.length - 1].failed));
  box.replaceChildren(s, legend);
}

// ---- routing and live updates ----

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = h.split("/");
  if (page === "device" && rest.length) return { page: "device", arg: decodeURIComponent(rest.join("/")) };
  if (page === "rollouts") return { page: "rollouts" };
  return { page: "fleet" };
}

function show() {
  const p = route().page;
  for (const name of ["fleet", "device", "rollouts"]) $("page-" + name).hidden = name !== p;
  $("nav-fleet").classList.toggle("on", p !== "rollouts");
  $("nav-rollouts").classList.toggle("on", p === "rollouts");
  schedule(true);
}

function apply(m) {
  if (m.now) S.skew = Date.parse(m.now) - Date.now();
  if (m.type === "snapshot") {
    S.snapshots++;
    S.devices = new Map(m.devices.map((r) => [r.id, r]));
    S.ids = m.devices.map((r) => r.id);
    S.timeline = m.timeline || [];
    S.staleAfter = m.stale_after_ms || S.staleAfter;
    schedule(true);
  } else {
    let added = false;
    for (const r of m.devices) {
      if (!S.devices.has(r.id)) added = true;
      S.devices.set(r.id, r);
      changed.add(r.id);
    }
    for (const id of m.removed || []) { S.devices.delete(id); changed.add(id); added = true; }
    if (added) S.ids = [...S.devices.keys()].sort();
    if (m.point) {
      S.timeline.push(m.point);
      if (S.timeline.length > 2000) S.timeline.shift();
    }
    schedule(added);
  }
  if (m.catalog) S.catalog = m.catalog;
  if (m.malformed) S.malformed = m.malformed;
  if (m.dropped !== undefined) S.dropped = m.dropped;
  if (m.connection) {
    const c = m.connection;
    $("broker").textContent = c.connected ? "broker " + visible(c.broker) : "broker connection lost" + (c.error ? ": " + visible(c.error) : "") + " (retrying)";
    $("broker").className = c.connected ? "pill on" : "pill off";
  }
}

function connect() {
  const es = new EventSource("/events");
  es.onopen = () => { $("live").textContent = "live"; $("live").className = "pill on"; };
  es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "pill off"; };
  es.onmessage = (e) => {
    try { apply(JSON.parse(e.data)); } catch (err) { console.error("dashboard event", err); }
  };
}

async function start() {
  try {
    const res = await fetch("/api/session");
    S.session = await res.json();
    S.staleAfter = S.session.stale_after_ms || S.staleAfter;
  } catch (e) { /* read-only until the session loads */ }
  $("who").textContent = (S.session.user ? visible(S.session.user) : "") + (S.session.read_only ? " · read-only" : "");
  document.body.classList.toggle("read-only", !!S.session.read_only);
  for (const id of ["f-text", "f-label", "f-state", "f-version"]) $(id).addEventListener("input", () => { S.limit = PAGE; schedule(true); });
  $("more").addEventListener("click", () => { S.limit += PAGE; schedule(true); });
  window.addEventListener("hashchange", show);
  setInterval(() => {
    for (const [id, tr] of S.rendered) {
      const r = S.devices.get(id), td = tr.querySelector("td.seen");
      if (r && td) td.textContent = (offline(r) ? "offline " : "") + ago(r.seen);
    }
  }, 5000);
  show();
  connect();
}

start();
