// A deployment: stages, each device's state, live progress, the gates' decisions, abort.
"use strict";
(() => {
  const { api, el, link, num, when, table, setText, start, param, may } = EO;
  const id = param("id");
  let state = null;

  async function refresh() {
    const d = await api(`/v1/deployments/${encodeURIComponent(id)}`);
    state = d.state;
    setText("title", `Deployment ${d.id}`);
    document.getElementById("summary").replaceChildren(
      link(`/ui/model.html?name=${encodeURIComponent(d.model_name)}`, `${d.model_name} ${d.model_version}`),
      ` to fleet ${d.fleet} · `, el("strong", { id: "state", text: d.state }),
      d.reason ? ` (${d.reason})` : "",
      ` · stage ${d.stage + 1} of ${d.stage_sizes.length} · trigger: ${d.trigger}`,
    );
    const total = d.device_states.length;  // (target.size is the bundle's bytes)
    const done = d.tally.decided;
    const bar = document.getElementById("bar");
    bar.style.width = total ? `${Math.round((100 * done) / total)}%` : "0%";
    bar.className = "bar " + d.state;
    setText("progress-text",
      `${done} of ${total} devices decided: ${d.tally.committed} committed, ${d.tally.failed} failed, ` +
      `${d.tally.undecided} waiting` + (d.bake_until ? ` · baking until ${when(d.bake_until)}` : ""));
    const perStage = {};
    for (const s of d.device_states) {
      const k = perStage[s.stage] || (perStage[s.stage] = {});
      k[s.state] = (k[s.state] || 0) + 1;
    }
    table("stages", ["stage", "devices (cumulative)", "percent", "states", "now"], d.stage_sizes.map((n, i) => [
      String(i + 1), num(n), num(d.policy.stages[i]),
      Object.entries(perStage[i] || {}).map(([k, c]) => `${k} ${c}`).join(", ") || "-",
      i === d.stage && d.state === "running" ? "current" : i < d.stage ? "passed" : "",
    ]), "no stages");
    table("history", ["time", "state", "what happened"], d.history.map(([t, s, what]) => [when(t), s, what]), "nothing yet");
    table("devices", ["device", "stage", "state", "from", "sent", "decided", "reason"], d.device_states.map(s => [
      link(`/ui/device.html?fleet=${encodeURIComponent(d.fleet)}&device=${encodeURIComponent(s.device)}`, s.device),
      String(s.stage + 1), s.state, s.from_version || "-", when(s.sent), when(s.decided), s.reason || "",
    ]), "no devices");
    document.getElementById("abort").hidden = !(may("deploy") && d.state === "running");
  }

  async function abort() {
    if (!confirm(`Abort deployment ${id} and roll back the devices it updated?`)) return;
    try {
      const d = await api(`/v1/deployments/${encodeURIComponent(id)}/abort`, { method: "POST" });
      setText("abort-result", `now ${d.state}`);
    } catch (e) {
      setText("abort-result", e.message);
    }
    run.tick();
  }

  if (!id) { setText("error", "no deployment given (?id=ID)"); return; }
  const run = start(refresh, 3);
  document.getElementById("abort").addEventListener("click", abort);
  run.begin();
})();
