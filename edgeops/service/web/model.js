// A model's versions: lineage, fidelity from the bundle's conversion report, where each runs.
"use strict";
(() => {
  const { api, el, link, num, when, table, setText, start, param } = EO;
  const name = param("name");

  async function refresh() {
    const m = await api(`/v1/views/models/${encodeURIComponent(name)}`);
    setText("title", `Model ${m.name}`);
    table("versions", [
      "version", "registered", "parent", "run", "format", "test accuracy", "agreement",
      "accuracy drop (points)", "min SNR dB", "conversion", "size ratio", "bundle bytes", "devices",
    ], m.versions.map(v => [
      v.version, when(v.registered), v.lineage.parent || "-", v.lineage.run || "-",
      `${v.lineage.format || "-"} ${v.lineage.mode || ""}`.trim(), num(v.lineage.accuracy),
      num(v.fidelity && v.fidelity.agreement), num(v.fidelity && v.fidelity.accuracy_drop_points),
      num(v.fidelity && v.fidelity.min_snr_db),
      (v.conversion && v.conversion.status) || "-", num(v.conversion && v.conversion.size_ratio),
      num(v.bundle_size),
      Object.entries(v.devices).map(([f, n]) => `${f}: ${n}`).join(", ") || "-",
    ]), "no versions");
    const box = document.getElementById("running");
    box.replaceChildren(...m.versions.map(v => el("div", { class: "running" },
      el("h3", { text: `${m.name} ${v.version}` }),
      v.running_on.length
        ? el("p", {}, ...v.running_on.flatMap((fd, i) => {
            const [f, d] = [fd.slice(0, fd.indexOf("/")), fd.slice(fd.indexOf("/") + 1)];
            const a = link(`/ui/device.html?fleet=${encodeURIComponent(f)}&device=${encodeURIComponent(d)}`, fd);
            return i ? [", ", a] : [a];
          }))
        : el("p", { class: "note", text: "no device runs it" }),
    )));
  }

  if (!name) { setText("error", "no model given (?name=NAME)"); return; }
  start(refresh, 10).begin();
})();
