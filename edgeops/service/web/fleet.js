// Fleet overview: devices by presence and model version, active alerts, deployments in progress.
"use strict";
(() => {
  const { api, el, link, num, when, ago, table, setText, start, param } = EO;
  const fleet = param("fleet");
  let last = null;

  function deviceHref(d) {
    return `/ui/device.html?fleet=${encodeURIComponent(d.fleet)}&device=${encodeURIComponent(d.device)}`;
  }

  function devices() {
    if (!last) return;
    const f = document.getElementById("filter").value.trim().toLowerCase();
    const rows = last.devices
      .filter(d => !f || `${d.fleet} ${d.device} ${d.model_name} ${d.model_version}`.toLowerCase().includes(f))
      .map(d => [
        d.fleet,
        link(deviceHref(d), d.device),
        el("span", { class: d.online ? "online" : "offline", text: d.online ? "online" : "offline" }),
        d.model_name ? link(`/ui/model.html?name=${encodeURIComponent(d.model_name)}`, `${d.model_name} ${d.model_version || ""}`) : "-",
        d.agent_version || "-",
        ago(d.last_seen, last.now),
        el("span", { class: d.active_alerts ? "alerting" : "", text: String(d.active_alerts) }),
      ]);
    table("devices", ["fleet", "device", "status", "model", "agent", "last seen", "alerts"], rows, "no devices yet");
  }

  async function refresh() {
    const o = await api("/v1/views/fleet" + (fleet ? `?fleet=${encodeURIComponent(fleet)}` : ""));
    last = o;
    setText("title", fleet ? `Fleet ${fleet}` : "Fleet");
    setText("n-devices", num(o.devices.length));
    setText("n-online", num(o.online));
    setText("n-offline", num(o.offline));
    setText("n-alerts", num(o.alerts.length));
    setText("n-deployments", num(o.deployments.length));
    table("versions", ["fleet", "model", "version", "devices", "online"], o.versions.map(v => [
      v.fleet,
      v.model_name ? link(`/ui/model.html?name=${encodeURIComponent(v.model_name)}`, v.model_name) : "(none reported)",
      v.model_version || "-", num(v.devices), num(v.online),
    ]), "no devices yet");
    table("alerts", ["raised", "fleet", "device", "model", "kind", "feature", "against"], o.alerts.map(a => [
      when(a.raised), a.fleet,
      a.device === "_fleet" ? "(fleet-wide)" : link(deviceHref(a), a.device),
      `${a.model_name} ${a.model_version}`, a.kind, a.feature,
      a.reference === "deploy" ? "since deploy" : a.reference === "training" ? "training data" : "-",
    ]), "no active alerts");
    table("deployments", ["id", "fleet", "model", "state", "stage", "devices", "created"], o.deployments.map(d => [
      link(`/ui/deployment.html?id=${encodeURIComponent(d.id)}`, d.id), d.fleet,
      `${d.model_name} ${d.model_version}`, d.state, `${d.stage + 1}/${d.stage_sizes.length}`,
      Object.entries(d.devices).map(([k, n]) => `${k} ${n}`).join(", ") || "-", when(d.created),
    ]), "none in progress");
    devices();
  }

  document.getElementById("filter").addEventListener("input", devices);
  start(refresh, 5).begin();
})();
