// Pages of the training app: new-run form with inline errors, run detail with live charts (Chart.js),
// run comparison, tokenizers. Server text is inserted as text, never as HTML.
(function () {
  "use strict";
  const api = (...args) => window.studio.api(...args);

  // ---- forms ------------------------------------------------------------------------------------
  function setPath(obj, path, value) {
    const parts = path.split(".");
    let node = obj;
    for (const p of parts.slice(0, -1)) node = node[p] = node[p] || {};
    node[parts[parts.length - 1]] = value;
  }
  function getPath(obj, path) {
    return path.split(".").reduce((n, p) => (n && typeof n === "object" ? n[p] : undefined), obj);
  }
  function mergeDeep(base, over) {
    const out = JSON.parse(JSON.stringify(base || {}));
    for (const [k, v] of Object.entries(over || {})) {
      out[k] = v && typeof v === "object" && !Array.isArray(v) && out[k] && typeof out[k] === "object" ? mergeDeep(out[k], v) : v;
    }
    return out;
  }
  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
    const general = form.querySelector("#form-error, p.error");
    if (general) { general.hidden = true; general.textContent = ""; }
  }
  // Show {fields: {name: [messages]}} next to the inputs; what has no input goes to the general box.
  function showErrors(form, err) {
    const body = err.body || {};
    const fields = body.fields || {};
    const rest = [];
    for (const [name, msgs] of Object.entries(fields)) {
      let slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      // model shape errors (config.model.n_heads …) show next to the model size
      if (!slot && name.startsWith("config.model.")) slot = form.querySelector('[data-error-for="config.model.preset"]');
      if (slot) {
        slot.textContent = msgs.join(" ");
        const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
        if (input) { input.setAttribute("aria-invalid", "true"); input.setAttribute("aria-describedby", slot.id || ""); }
      } else {
        rest.push(`${name}: ${msgs.join(" ")}`);
      }
    }
    const general = form.querySelector("#form-error, p.error");
    if (general && (rest.length || !Object.keys(fields).length)) {
      general.textContent = (rest.length ? rest.join(" · ") : err.message) + (body.hint ? " — " + body.hint : "");
      general.hidden = false;
    }
  }
  function readConfig(form) {
    const config = {};
    form.querySelectorAll("[data-config]").forEach((el) => {
      if (el.value === "") return;
      let v = el.value;
      if (el.dataset.type === "int") v = /^-?\d+$/.test(v.trim()) ? parseInt(v, 10) : v;
      if (el.dataset.type === "float") v = isNaN(Number(v)) ? v : Number(v);
      setPath(config, el.name.replace(/^config\./, ""), v);
    });
    return config;
  }

  // A preset's settings into the form's config fields (empty where the preset has none).
  function fillConfig(form, cfg) {
    form.querySelectorAll("[data-config]").forEach((el) => {
      const v = getPath(cfg, el.name.replace(/^config\./, ""));
      el.value = v === undefined ? "" : v;
    });
  }

  // The form's config fields merged with its "More settings" JSON; null (error shown) when that is not JSON.
  function readConfigWithExtra(form) {
    const config = readConfig(form);
    const extra = form.elements.extra.value.trim();
    if (!extra) return config;
    try { return mergeDeep(config, JSON.parse(extra)); } catch (e) {
      form.querySelector('[data-error-for="extra"]').textContent = "not valid JSON: " + e.message;
      form.elements.extra.setAttribute("aria-invalid", "true");
      return null;
    }
  }

  // A select's value as an id, or null when nothing is chosen.
  const optionalId = (el) => (el.value ? Number(el.value) : null);
  // The process fields every new-run form has (training/_run_resources.html).
  const processFields = (form) => ({
    nproc: Number(form.elements.nproc.value || 1), threads: Number(form.elements.threads.value || 0),
  });

  // On submit: read the config (null when the extra JSON is invalid), POST the body that `makeBody(config)`
  // returns to /api/runs/ and open the new run, or show the errors next to the fields.
  function submitRunOnSubmit(form, makeBody) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const config = readConfigWithExtra(form);
      if (config === null) return;
      try {
        const run = await api("POST", "/api/runs/", makeBody(config));
        location.href = `/runs/${run.id}/`;
      } catch (err) { showErrors(form, err); }
    });
  }

  function pretrainingPage() {
    const presets = JSON.parse(document.getElementById("presets-data").textContent);
    const form = document.getElementById("new-run-form");
    const presetSel = form.elements.preset;
    const fillPreset = () => fillConfig(form, presets[presetSel.value].config);
    presetSel.addEventListener("change", fillPreset);
    fillPreset();
    submitRunOnSubmit(form, (config) => ({
      kind: "pretrain", name: form.elements.name.value, config,
      dataset: optionalId(form.elements.dataset),
      tokenizer: optionalId(form.elements.tokenizer),
      parent_checkpoint: optionalId(form.elements.parent_checkpoint),
      ...processFields(form),
      gpus: form.elements.gpus.value,
    }));
    const demo = document.getElementById("demo-button");
    demo.addEventListener("click", async () => {
      demo.disabled = true;
      const error = document.getElementById("demo-error");
      error.hidden = true;
      try {
        const run = await api("POST", "/api/runs/demo/", {});
        location.href = `/runs/${run.id}/`;
      } catch (err) {
        error.textContent = err.message + (err.body && err.body.hint ? " — " + err.body.hint : "");
        error.hidden = false;
        demo.disabled = false;
      }
    });
    // statuses in the table follow the studio-wide events
    followStatuses();
    document.getElementById("compare-button").addEventListener("click", () => {
      const ids = [...document.querySelectorAll(".compare-pick:checked")].map((c) => c.value);
      location.href = "/pretraining/compare/?runs=" + ids.join(",");
    });
  }

  // ---- fine-tuning and RLHF -------------------------------------------------------------------------
  function fineTuningPage() {
    const presets = JSON.parse(document.getElementById("posttrain-presets").textContent);
    const form = document.getElementById("posttrain-form");
    const kindSel = form.elements.kind;
    const presetSel = form.elements.preset;
    if (kindSel.selectedOptions[0] && kindSel.selectedOptions[0].disabled) {
      const first = [...kindSel.options].find((o) => !o.disabled);
      if (first) kindSel.value = first.value;
    }
    function fillPreset() {
      const preset = (presets[kindSel.value] || {})[presetSel.value];
      fillConfig(form, preset ? preset.config : {});
    }
    function fillKind() {
      const kind = kindSel.value;
      presetSel.replaceChildren(...Object.entries(presets[kind] || {}).map(([key, p]) => new Option(p.label, key)));
      form.querySelectorAll("[data-kinds]").forEach((el) => {
        const on = el.dataset.kinds.split(",").includes(kind);
        el.hidden = !on;
        el.querySelectorAll("input, select").forEach((i) => { i.disabled = !on; });
      });
      fillPreset();
    }
    kindSel.addEventListener("change", fillKind);
    presetSel.addEventListener("change", fillPreset);
    fillKind();
    submitRunOnSubmit(form, (config) => ({
      kind: kindSel.value, name: form.elements.name.value, preset: presetSel.value, config, base: form.elements.base.value,
      snapshot: optionalId(form.elements.snapshot),
      reward: kindSel.value === "ppo" ? form.elements.reward.value : "",
      ...processFields(form),
    }));
    followStatuses();
  }

  // RL-health warnings from the latest points: KL runaway, entropy collapse, ratio far from 1, and
  // any health/* flag the core reports. Returns [{key, text}] for the panel.
  function healthWarnings(state, rules) {
    const out = [];
    const kl = state.last["objective/kl"];
    if (typeof kl === "number" && kl > rules.kl_max) {
      out.push({ key: "kl", text: `KL to the reference is ${kl.toFixed(2)} (above ${rules.kl_max}): the policy is running away. Raise the KL coefficient or lower the learning rate.` });
    } else if (typeof kl === "number" && kl < rules.kl_min) {
      out.push({ key: "kl-negative", text: `KL estimate is ${kl.toFixed(2)} (negative): check sampling settings and masking.` });
    }
    const ent = state.last["objective/entropy"], ent0 = state.first["objective/entropy"];
    if (typeof ent === "number" && (ent < rules.entropy_min ||
        (typeof ent0 === "number" && ent0 > 0 && ent < rules.entropy_floor * ent0))) {
      out.push({ key: "entropy", text: `Entropy fell from ${typeof ent0 === "number" ? ent0.toFixed(3) : "?"} to ${ent.toFixed(3)}: the policy is collapsing onto a few answers. Raise the KL coefficient or the temperature.` });
    }
    const ratio = state.last["val/ratio"];
    if (typeof ratio === "number" && (ratio < rules.ratio_band[0] || ratio > rules.ratio_band[1])) {
      out.push({ key: "ratio", text: `The probability ratio is ${ratio.toFixed(2)} (far from 1): updates leave the sampling policy too far. Lower the learning rate or the PPO epochs.` });
    }
    const flagKeys = { "health/kl_runaway": "kl", "health/entropy_collapse": "entropy", "health/ratio_drift": "ratio" };
    const flagTexts = { kl: "The core flags KL runaway: the policy moves away from the reference.",
      entropy: "The core flags entropy collapse.", ratio: "The core flags the probability ratio drifting from 1." };
    for (const [name, v] of Object.entries(state.last)) {
      if (!name.startsWith("health/") || typeof v !== "number" || v === 0) continue;
      const key = flagKeys[name] || name;
      if (out.some((w) => w.key === key)) continue;
      out.push({ key, text: flagTexts[key] || `${name.slice(7).replace(/_/g, " ")} (flagged by the core)` });
    }
    return out;
  }

  function followHealth() {
    const panel = document.getElementById("health");
    if (!panel) return null;
    const rules = JSON.parse(document.getElementById("health-rules").textContent);
    const state = { first: {}, last: {}, lastStep: {} };
    return (point) => {
      if (point.kind !== "train") return;
      for (const [k, v] of Object.entries(point.values)) {
        if (typeof v !== "number") continue;
        if (!(k in state.first)) state.first[k] = v;
        if (!(k in state.lastStep) || point.step >= state.lastStep[k]) { state.last[k] = v; state.lastStep[k] = point.step; }
      }
      const warnings = healthWarnings(state, rules);
      const list = panel.querySelector("ul");
      list.replaceChildren(...warnings.map((w) => {
        const li = document.createElement("li");
        li.dataset.warning = w.key;
        li.textContent = w.text;
        return li;
      }));
      panel.hidden = !warnings.length;
    };
  }

  // Send a finished policy checkpoint to a labeling project as a new candidate source (labeling's API).
  function sendToLabeling() {
    const form = document.getElementById("send-form");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const note = document.getElementById("send-status");
      const option = form.elements.checkpoint.selectedOptions[0];
      if (!option || !form.elements.project.value) { note.textContent = "Pick a checkpoint and a project."; return; }
      const button = form.querySelector("button");
      button.disabled = true;
      note.textContent = "";
      try {
        await api("POST", `/api/labeling/projects/${form.elements.project.value}/generate/`, {
          models: [{ path: option.dataset.path, name: option.dataset.name }],
          k: Number(form.elements.k.value || 2), max_new_tokens: Number(form.elements.max_new_tokens.value || 64) });
        note.textContent = `Queued: ${option.dataset.name} answers the project's open prompts; they reach the annotators as new items (progress on the project's Manage page).`;
        note.dataset.state = "queued";
      } catch (err) {
        note.textContent = err.message + (err.body && err.body.hint ? " — " + err.body.hint : "");
        note.dataset.state = "error";
      } finally { button.disabled = false; }
    });
  }

  function followStatuses() {
    const spans = document.querySelectorAll("[data-run-status]");
    if (!spans.length) return;
    api("GET", "/api/events/?limit=1").then((page) => {
      const last = page.results && page.results.length ? page.results[0].id : 0;
      window.studio.follow("/ws/events/", {
        after: last,
        onEvent: (e) => {
          if (e.kind !== "run.status" && e.kind !== "run.created") return;
          const span = document.querySelector(`[data-run-status="${e.payload.run}"]`);
          if (span && e.payload.status) { span.textContent = e.payload.status; span.className = `status status-${e.payload.status}`; }
        },
      });
    }).catch(() => {});
  }

  // ---- charts -------------------------------------------------------------------------------------
  const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7c3aed", "#be185d", "#0e7490", "#a16207", "#4b5563"];

  function makeChart(canvas, labels) {
    const chart = new Chart(canvas, {
      type: "line",
      data: { datasets: labels.map((label, i) => ({ label, data: [], borderColor: COLORS[i % COLORS.length],
        backgroundColor: COLORS[i % COLORS.length], pointRadius: label.startsWith("val") ? 3 : 0, borderWidth: 1.5,
        showLine: true, spanGaps: true })) },
      options: { animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        plugins: { legend: { display: true }, decimation: { enabled: true, algorithm: "lttb", samples: 1000 } } },
    });
    return chart;
  }

  // A chart whose datasets are keyed by step: points arriving twice (history + live) are not doubled.
  class SeriesChart {
    constructor(canvas, metrics) {
      this.canvas = canvas;
      this.metrics = metrics;
      this.chart = makeChart(canvas, metrics);
      this.pending = false;
    }
    add(point) {
      let changed = false;
      this.metrics.forEach((m, i) => {
        const v = point.values[m];
        if (typeof v !== "number") return;
        const data = this.chart.data.datasets[i].data;
        const last = data[data.length - 1];
        if (!last || point.step > last.x) data.push({ x: point.step, y: v });
        else {
          const idx = data.findIndex((d) => d.x >= point.step);
          if (data[idx].x === point.step) data[idx] = { x: point.step, y: v };
          else data.splice(idx, 0, { x: point.step, y: v });
        }
        changed = true;
      });
      if (changed) this.schedule();
    }
    truncate(step) {
      this.chart.data.datasets.forEach((d) => { d.data = d.data.filter((p) => p.x <= step); });
      this.schedule();
    }
    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.chart.update("none");
        this.canvas.dataset.points = String(this.chart.data.datasets.reduce((n, d) => n + d.data.length, 0));
      });
    }
  }

  function fmtDuration(s) {
    if (!isFinite(s) || s < 0) return "";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.round(s % 60);
    return h ? `${h} h ${m} min` : m ? `${m} min ${sec} s` : `${sec} s`;
  }

  function runDetail() {
    const root = document.getElementById("run");
    const runId = root.dataset.runId;
    const statusEl = document.getElementById("run-status");
    const live = document.getElementById("live-status");
    const cancelBtn = document.getElementById("cancel-button");
    const resumeBtn = document.getElementById("resume-button");
    const errorBox = document.getElementById("run-error");
    const actionError = document.getElementById("action-error");
    const progress = document.getElementById("run-progress");
    const progressText = document.getElementById("progress-text");
    const eta = document.getElementById("eta");
    let total = Number(root.dataset.total || 0);
    const charts = [...document.querySelectorAll("canvas[data-metrics]")].map(
      (c) => new SeriesChart(c, c.dataset.metrics.split(",")));
    window.runCharts = charts;

    function setStatus(status) {
      root.dataset.status = status;
      statusEl.textContent = status;
      statusEl.className = `status status-${status}`;
      cancelBtn.hidden = !["queued", "running"].includes(status);
      resumeBtn.hidden = !["cancelled", "interrupted", "failed"].includes(status);
    }
    function setProgress(step, values) {
      root.dataset.step = step;
      if (values && values.total_steps) total = values.total_steps;
      if (!progress) return;
      progress.max = total || 1;
      progress.value = step;
      progressText.textContent = `step ${step} / ${total}`;
      if (values && typeof values.remaining_time === "number" && root.dataset.status === "running") {
        eta.textContent = "ETA " + fmtDuration(values.remaining_time);
      } else if (root.dataset.status !== "running") eta.textContent = "";
    }
    const health = followHealth();
    sendToLabeling();
    function addPoint(p) {
      charts.forEach((c) => c.add(p));
      if (health) health(p);
      if (p.kind === "train") setProgress(p.step, p.values);
    }
    function addCheckpoint(step, path, id) {
      const body = document.getElementById("checkpoints");
      if (!body) return;
      let tr = body.querySelector(`tr[data-step="${step}"]`);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.step = step;
        for (const text of [String(step), "", "", ""]) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
        const code = document.createElement("code");
        code.textContent = path;
        tr.children[3].append(code);
        tr.append(document.createElement("td"));
        body.append(tr);
      }
      const send = document.getElementById("send-checkpoint");
      if (send && ![...send.options].some((o) => o.dataset.step === String(step))) {
        const option = new Option(`step ${step}`, id || "");
        Object.assign(option.dataset, { step: String(step), path, name: `${root.dataset.name} @ step ${step}` });
        send.prepend(option);
        send.value = option.value;
        option.selected = true;
        document.getElementById("send-section").hidden = false;
      }
      // checkpoints of chat models get their Chat link once their id is known
      if (id && root.dataset.chat === "true" && !tr.querySelector("a")) {
        const link = document.createElement("a");
        link.href = `/chat/?model=checkpoint:${id}`;
        link.textContent = "Chat";
        tr.lastElementChild.prepend(link);
      }
    }
    function showError(error) {
      if (!error || !error.code) { errorBox.hidden = true; return; }
      document.getElementById("error-code").textContent = error.code;
      document.getElementById("error-detail").textContent = error.detail || "";
      document.getElementById("error-hint").textContent = error.hint || "";
      document.getElementById("error-log").textContent = error.log_tail || "";
      errorBox.hidden = false;
    }
    async function refreshLog() {
      try {
        const data = await api("GET", `/api/runs/${runId}/log/?lines=300`);
        const pre = document.getElementById("run-log");
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = data.text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      } catch (e) { /* next time */ }
    }
    async function refreshRun() {
      const run = await api("GET", `/api/runs/${runId}/`);
      setStatus(run.status);
      showError(run.error);
      total = run.total_steps;
      setProgress(run.current_step, null);
      (run.checkpoints || []).forEach((c) => addCheckpoint(c.step, c.path, c.id));
      return run;
    }

    // history first (thinned), then live events after the id the page was rendered with
    const after = Number(root.dataset.lastEvent || 0);
    (async () => {
      if (charts.length) {
        try {
          const data = await api("GET", `/api/runs/${runId}/metrics/?max_points=2000`);
          data.results.forEach(addPoint);
        } catch (e) { /* the live stream still fills the charts */ }
      }
      window.studio.follow(`/ws/runs/${runId}/`, {
        after,
        onStatus: (s) => { live.textContent = s; live.classList.toggle("live", s === "live"); },
        onEvent: (e) => {
          const p = e.payload || {};
          if (e.kind === "run.metrics") (p.points || []).forEach(addPoint);
          else if (e.kind === "run.started") {
            if (typeof p.start_step === "number" && p.phase === root.dataset.kind && p.phase !== "tokenizer") {
              charts.forEach((c) => c.truncate(p.start_step));
            }
            if (p.total_steps) total = p.total_steps;
          } else if (e.kind === "run.checkpoint") addCheckpoint(p.step, p.path);
          else if (e.kind === "run.status") {
            setStatus(p.status);
            showError(p.error);
            refreshLog();
            if (!["queued", "running"].includes(p.status)) refreshRun();
          } else if (e.kind === "run.log") refreshLog();
        },
      });
    })();
    setInterval(() => { if (["queued", "running"].includes(root.dataset.status)) refreshLog(); }, 3000);
    document.getElementById("log-refresh").addEventListener("click", refreshLog);

    async function act(path, button) {
      actionError.textContent = "";
      button.disabled = true;
      try {
        const run = await api("POST", `/api/runs/${runId}/${path}/`);
        setStatus(run.status);
        showError(run.error);
      } catch (err) { actionError.textContent = err.message; }
      finally { button.disabled = false; }
    }
    document.getElementById("checkpoints")?.addEventListener("click", async (ev) => {
      const button = ev.target.closest("button[data-export]");
      if (!button) return;
      const note = button.parentElement.querySelector(".export-status");
      button.disabled = true;
      try {
        const art = await api("POST", `/api/checkpoints/${button.dataset.export}/export/`, { format: button.dataset.format });
        note.textContent = `exporting to ${art.path} (model ${art.id})…`;
        note.dataset.model = art.id;
        const poll = setInterval(async () => {
          const models = await api("GET", "/api/models/?limit=200");
          const found = (models.results || models).find((m) => m.id === art.id);
          if (found && found.status !== "pending") {
            clearInterval(poll);
            note.textContent = found.status === "ready" ? `exported: ${found.path}` : `export failed: ${found.info.log_tail || ""}`;
            note.dataset.status = found.status;
          }
        }, 1500);
      } catch (err) { note.textContent = err.message; }
      finally { button.disabled = false; }
    });
    cancelBtn.addEventListener("click", () => act("cancel", cancelBtn));
    resumeBtn.addEventListener("click", () => act("resume", resumeBtn));
    document.getElementById("clone-button").addEventListener("click", async () => {
      try {
        const run = await api("POST", `/api/runs/${runId}/clone/`, {});
        location.href = `/runs/${run.id}/`;
      } catch (err) { actionError.textContent = err.message; }
    });
  }

  // ---- comparison ------------------------------------------------------------------------------------
  async function comparePage() {
    const form = document.getElementById("compare-form");
    form.addEventListener("submit", () => {
      document.getElementById("compare-runs").value =
        [...form.querySelectorAll("input[name=pick]:checked")].map((c) => c.value).join(",");
      form.querySelectorAll("input[name=pick]").forEach((c) => { c.disabled = true; });
    });
    const holder = document.getElementById("compare");
    const ids = holder.dataset.runs ? holder.dataset.runs.split(",") : [];
    const names = holder.dataset.names ? holder.dataset.names.split("|") : [];
    if (!ids.length) return;
    const labels = ids.map((id, i) => `run ${id} · ${names[i] || ""}`);
    const charts = [...document.querySelectorAll("canvas[data-metric]")].map((c) => ({ metric: c.dataset.metric,
      canvas: c, chart: makeChart(c, labels) }));
    const histories = await Promise.all(ids.map((id) => api("GET", `/api/runs/${id}/metrics/?max_points=1500`)));
    histories.forEach((h, i) => {
      for (const { metric, chart } of charts) {
        chart.data.datasets[i].data = h.results.filter((p) => typeof p.values[metric] === "number")
          .map((p) => ({ x: p.step, y: p.values[metric] }));
      }
    });
    charts.forEach(({ chart, canvas }) => {
      chart.update("none");
      canvas.dataset.points = String(chart.data.datasets.reduce((n, d) => n + d.data.length, 0));
    });
  }

  // ---- tokenizers ------------------------------------------------------------------------------------
  function tokenizersPage() {
    const tform = document.getElementById("tokenizer-form");
    tform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(tform);
      try {
        const run = await api("POST", "/api/runs/", { kind: "tokenizer", name: tform.elements.name.value,
          dataset: tform.elements.dataset.value ? Number(tform.elements.dataset.value) : null, config: readConfig(tform) });
        location.href = `/runs/${run.id}/`;
      } catch (err) { showErrors(tform, err); }
    });
    const cform = document.getElementById("corpus-form");
    cform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(cform);
      const button = cform.querySelector("button");
      button.disabled = true;
      try {
        await api("POST", "/api/datasets/", { corpus: cform.elements.corpus.value,
          limit: cform.elements.limit.value ? Number(cform.elements.limit.value) : null });
        location.reload();
      } catch (err) { showErrors(cform, err); button.disabled = false; }
    });
    const uform = document.getElementById("upload-form");
    uform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(uform);
      try {
        await api("POST", "/api/datasets/upload/", new FormData(uform));
        location.reload();
      } catch (err) { showErrors(uform, err); }
    });
  }

  function tokenizerDetail() {
    const form = document.getElementById("tokenize-form");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = document.getElementById("tk-out");
      const summary = document.getElementById("tk-summary");
      out.textContent = "";
      try {
        const data = await api("POST", `/api/tokenizers/${form.dataset.tokenizer}/tokenize/`, { text: form.elements.text.value });
        summary.textContent = `${data.tokens} tokens, ${data.chars} characters, ${data.chars_per_token} characters per token` +
          (data.round_trip ? " · round trip exact" : " · round trip differs");
        data.pieces.forEach((p, i) => {
          const span = document.createElement("span");
          span.className = "tok";
          span.title = `id ${data.ids[i]}`;
          span.textContent = p;
          out.append(span);
        });
      } catch (err) { summary.textContent = err.message; }
    });
  }

  window.training = { pretrainingPage, fineTuningPage, healthWarnings, runDetail, comparePage, tokenizersPage, tokenizerDetail, showErrors, clearErrors };
})();
