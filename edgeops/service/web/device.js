// One device over time: traffic, latency p50/p95, each feature's drift checks against their
// threshold and noise floor, the alert timeline, events, models and deployments.
"use strict";
(() => {
  const { api, el, link, num, when, ago, table, setText, chart, dropCharts, start, param } = EO;
  const device = param("device");
  const fleet = param("fleet");
  const picked = {};  // drift chart key -> the test shown

  function gaps(xs) { return xs.map(x => (x === null ? null : x)); }

  const dots = { show: true, size: 4 };

  function driftChart(s, x) {
    const key = `drift:${s.model_version}:${s.reference}:${s.kind}:${s.feature}`;
    const names = s.tests.map(t => t.test);
    if (!names.length) return null;
    const test = names.includes(picked[key]) ? picked[key] : names[0];
    const ts = s.tests.find(t => t.test === test);
    const against = s.reference === "deploy" ? " since deploy" : s.reference === "training" ? " vs training data" : "";
    const title = `${s.feature} (${s.kind}, ${s.model_version}${against}): ${test}`;
    const box = `box-${key}`;
    if (!document.getElementById(box)) {
      const sel = el("select", { class: "test", "data-key": key });
      const holder = el("div", { id: box, class: "drift-chart" }, names.length > 1 ? sel : null);
      document.getElementById("drift-charts").append(holder);
      sel.addEventListener("change", () => { picked[key] = sel.value; refreshNow(); });
    }
    const sel = document.getElementById(box).querySelector("select");
    if (sel) {
      sel.replaceChildren(...names.map(n => el("option", { value: n, selected: n === test ? "selected" : null, text: n })));
    }
    chart(key, box, title, [
      { label: test, stroke: "#1f77b4", width: 2, spanGaps: true, points: dots },
      { label: "threshold", stroke: "#d62728", dash: [6, 4], spanGaps: true, points: dots },
      { label: "noise floor", stroke: "#7f7f7f", dash: [2, 3], spanGaps: true, points: dots },
    ], [s.t, gaps(ts.value), gaps(ts.threshold), gaps(ts.floor)], { height: 180, x });
    return key;
  }

  let refreshNow = () => {};

  async function refresh() {
    const hours = document.getElementById("hours").value;
    const q = new URLSearchParams({ hours });
    if (fleet) q.set("fleet", fleet);
    const v = await api(`/v1/views/devices/${encodeURIComponent(device)}?${q}`);
    const d = v.device;
    setText("title", `Device ${d.fleet}/${d.device}`);
    const summary = document.getElementById("summary");
    summary.replaceChildren(
      el("span", { class: d.online ? "online" : "offline", text: d.online ? "online" : "offline" }),
      ` · model `,
      d.model_name ? link(`/ui/model.html?name=${encodeURIComponent(d.model_name)}`, `${d.model_name} ${d.model_version || ""}`) : "-",
      ` · agent ${d.agent_version || "-"} · boot ${d.boot || "-"} · last seen ${ago(d.last_seen, v.now)}`,
    );
    setText("bucket", `one point per ${num(v.bucket_s / 60)} min`);
    const a = v.activity;
    const x = [v.since, v.now];
    chart("activity:traffic", "activity-charts", "Predictions/s, errors and bad inputs per bucket", [
      { label: "predictions/s", stroke: "#2ca02c", width: 2, points: dots },
      { label: "errors", stroke: "#d62728" },
      { label: "bad inputs", stroke: "#ff7f0e" },
    ], [a.t, a.predictions_per_s, a.errors, a.bad_inputs], { x });
    chart("activity:latency", "activity-charts", "Latency (ms, merged histograms)", [
      { label: "p50 ms", stroke: "#1f77b4", width: 2, spanGaps: true, points: dots },
      { label: "p95 ms", stroke: "#9467bd", width: 2, spanGaps: true, points: dots },
    ], [a.t, gaps(a.p50_ms), gaps(a.p95_ms)], { unit: "ms", x });
    const keep = new Set();
    for (const s of v.drift) {
      const k = driftChart(s, x);
      if (k) keep.add(k);
    }
    dropCharts("drift:", keep);
    for (const box of [...document.querySelectorAll(".drift-chart")]) {
      if (!keep.has(box.id.slice(4))) box.remove();
    }
    if (!v.drift.length) setText("drift-charts", "no drift evaluation in this span");
    else {
      const note = document.getElementById("drift-charts").firstChild;
      if (note && note.nodeType === Node.TEXT_NODE) note.remove();
    }
    table("alerts", ["raised", "cleared", "model", "kind", "feature", "against", "why cleared"], v.alerts.map(x => [
      when(x.raised),
      x.cleared === null ? el("span", { class: "alerting", text: "active" }) : when(x.cleared),
      `${x.model_name} ${x.model_version}`, x.kind, x.feature,
      x.reference === "deploy" ? "since deploy" : x.reference === "training" ? "training data" : "-",
      x.cleared_reason || "",
    ]), "no alert in this span");
    table("events", ["sent", "kind", "level", "message"], v.events.map(e => [
      when(e.sent), e.kind, e.level, e.message,
    ]), "no events");
    table("models", ["model", "version", "first window", "last window", "windows"], v.models.map(m => [
      m.model_name || "-", m.model_version || "-", when(m.first), when(m.last), num(m.windows),
    ]), "no windows in this span");
    table("deployments", ["deployment", "to", "from", "device state", "deployment state", "decided", "reason"], v.deployments.map(x => [
      link(`/ui/deployment.html?id=${encodeURIComponent(x.id)}`, x.id),
      `${x.model_name} ${x.model_version}`, x.from_version || "-", x.state, x.deployment_state,
      when(x.decided), x.reason || "",
    ]), "none");
  }

  if (!device) { setText("error", "no device given (?device=ID)"); return; }
  const hours = param("hours");
  const select = document.getElementById("hours");
  if (hours && ![...select.options].some(o => o.value === hours)) {
    select.append(el("option", { value: hours, text: `${hours} hours` }));
  }
  if (hours) select.value = hours;
  const run = start(refresh, 5);
  refreshNow = run.tick;
  document.getElementById("hours").addEventListener("change", run.tick);
  run.begin();
})();
