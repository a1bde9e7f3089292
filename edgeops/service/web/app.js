// The dashboard's shared parts: the token, calls to the API, tables, charts, polling.
// Every value from the service is put in the page as text (textContent), never as markup.
"use strict";

const EO = (() => {
  const KEY = "edgeops.token";
  const charts = {};  // key -> uPlot instance (the browser tests read their data)
  window.edgeopsCharts = charts;

  // A token in the fragment (#token=...) is kept for this tab and taken out of the address.
  const m = /(?:^|[#&])token=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function token() { return sessionStorage.getItem(KEY); }

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const resp = await fetch(path, { ...options, headers, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) throw new Unauthorized((body && body.error) || "a token is needed");
    if (!resp.ok) throw new Error((body && body.error) || `HTTP ${resp.status}`);
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function link(href, text) { return el("a", { href }, text); }

  function num(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "-";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return x.toLocaleString("en");
    const a = Math.abs(x);
    return a >= 1000 ? x.toFixed(0) : a >= 1 ? x.toFixed(2) : x.toPrecision(digits);
  }

  function when(t) {
    if (t === null || t === undefined) return "-";
    const d = new Date(t * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19);
  }

  function ago(t, now) {
    if (t === null || t === undefined) return "-";
    const s = Math.max(0, (now || Date.now() / 1000) - t);
    if (s < 120) return `${s.toFixed(0)} s ago`;
    if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} d ago`;
  }

  // Replace the rows of <table id=...> (its header is built once); cells are text or nodes.
  function table(id, headers, rows, empty = "none") {
    const t = document.getElementById(id);
    if (!t.tHead) {
      const tr = el("tr");
      for (const h of headers) tr.append(el("th", { text: h }));
      t.createTHead().append(tr);
    }
    const body = el("tbody");
    if (!rows.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: headers.length, text: empty })));
    }
    for (const r of rows) {
      const tr = el("tr");
      for (const c of r) tr.append(c instanceof Node ? el("td", {}, c) : el("td", { text: c ?? "-" }));
      body.append(tr);
    }
    for (const old of [...t.tBodies]) old.remove();
    t.append(body);
  }

  function setText(id, text) {
    const n = document.getElementById(id);
    if (n) n.textContent = text;
  }

  // A uPlot chart in the element with id `where`, made once and given new data after.
  function chart(key, where, title, series, data, opts = {}) {
    const box = document.getElementById(where);
    const width = Math.max(320, Math.min(box.clientWidth || 600, 900));
    let u = charts[key];
    const shape = series.map(s => s.label).join("|");
    if (u && u._shape !== shape) { u.destroy(); delete charts[key]; u = undefined; }
    const x = { time: true, auto: !opts.x };
    if (!u) {
      const holder = el("div", { class: "chart", "data-chart": key });
      box.append(holder);
      u = new uPlot({
        title, width, height: opts.height || 220,
        scales: { x },
        series: [{}, ...series],
        axes: [{ space: 90 }, { label: opts.unit || "", size: 60 }],
        legend: { live: false },
      }, data, holder);
      u._shape = shape;
      charts[key] = u;
    } else {
      u.setData(data);
    }
    if (opts.x) u.setScale("x", { min: opts.x[0], max: opts.x[1] });
    if (u.root.querySelector(".u-title")) u.root.querySelector(".u-title").textContent = title;
    return u;
  }

  function dropCharts(prefix, keep) {
    for (const k of Object.keys(charts)) {
      if (k.startsWith(prefix) && !keep.has(k)) {
        charts[k].root.parentElement.remove();
        charts[k].destroy();
        delete charts[k];
      }
    }
  }

  function showLogin(message) {
    document.getElementById("main").hidden = true;
    const box = document.getElementById("login");
    box.hidden = false;
    setText("login-error", message || "");
  }

  function setupLogin(onDone) {
    const form = document.getElementById("login-form");
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const value = document.getElementById("token").value.trim();
      sessionStorage.setItem(KEY, value);
      try {
        await whoami();
        document.getElementById("login").hidden = true;
        document.getElementById("main").hidden = false;
        document.getElementById("token").value = "";
        onDone();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        showLogin(e.message);
      }
    });
    document.getElementById("logout").addEventListener("click", ev => {
      ev.preventDefault();
      sessionStorage.removeItem(KEY);
      showLogin("signed out");
    });
  }

  let me = null;
  async function whoami() {
    me = await api("/v1/whoami");
    setText("whoami", `${me.name} (${me.role})`);
    return me;
  }

  function may(role) {
    const order = ["read", "deploy", "admin"];
    return me !== null && order.indexOf(me.role) >= order.indexOf(role);
  }

  // Run `refresh` now and every `seconds` (no reload); a 401 shows the login form.
  function start(refresh, seconds = 5) {
    const every = Number(new URLSearchParams(location.search).get("every")) || seconds;
    let timer = null;
    async function tick() {
      clearTimeout(timer);
      try {
        await refresh();
        setText("error", "");
        setText("updated", "updated " + new Date().toLocaleTimeString("en-GB"));
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
        timer = setTimeout(tick, every * 1000);
      } catch (e) {
        if (e instanceof Unauthorized) { showLogin(e.message); return; }
        setText("error", e.message);
        timer = setTimeout(tick, every * 1000);
      }
    }
    async function begin() {
      try { await whoami(); } catch (e) {
        if (e instanceof Unauthorized) { showLogin(e.message); return; }
        setText("error", e.message);
      }
      document.getElementById("main").hidden = false;
      tick();
    }
    setupLogin(begin);
    return { begin, tick };
  }

  function param(name) { return new URLSearchParams(location.search).get(name); }

  return { api, el, link, num, when, ago, table, setText, chart, dropCharts, start, param, may };
})();
