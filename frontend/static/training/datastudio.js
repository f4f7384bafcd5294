// Data studio pages: sources and imports, curation runs with live progress, the audit, the recipe
// editor with threshold preview and the LSH calculator. Text from the server is inserted as text.
(function () {
  "use strict";
  const api = (...args) => window.studio.api(...args);
  const { showErrors, clearErrors } = window.training;
  const BASE = "/api/datastudio";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  function checkedSources(form) {
    return Array.from(form.querySelectorAll('input[name="sources"]:checked')).map((i) => Number(i.value));
  }
  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  }
  function fmtNumber(x, digits = 1) {
    return typeof x === "number" ? x.toLocaleString(undefined, { maximumFractionDigits: digits }) : "—";
  }

  // ---- the Data page: imports and new runs --------------------------------------------------------
  function dataPage() {
    document.querySelectorAll("form.import-form").forEach((form) => {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        clearErrors(form);
        const kind = form.dataset.kind;
        const button = form.querySelector('button[type="submit"]');
        button.disabled = true;
        try {
          let body;
          if (kind === "upload") {
            body = new FormData(form);
            body.append("kind", "upload");
          } else {
            body = { kind };
            for (const input of form.querySelectorAll("input[name], select[name]")) {
              if (input.value !== "") body[input.name] = input.value;
            }
          }
          await api("POST", `${BASE}/sources/`, body);
          location.reload();
        } catch (err) {
          showErrors(form, err);
        } finally {
          button.disabled = false;
        }
      });
    });
    const form = document.getElementById("curation-form");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      try {
        const recipes = await api("GET", `${BASE}/recipes/`);
        const preset = recipes.presets[form.elements.preset.value];
        const run = await api("POST", `${BASE}/runs/`, {
          name: form.elements.name.value, sources: checkedSources(form), recipe: preset.recipe,
          workers: Number(form.elements.workers.value), shard_docs: Number(form.elements.shard_docs.value),
          output_format: form.elements.output_format.value,
        });
        location.href = `/data/runs/${run.id}/`;
      } catch (err) {
        showErrors(form, err);
      }
    });
  }

  // ---- a curation run: live progress, cancel / resume, audit charts --------------------------------
  function runPage() {
    const root = document.getElementById("curation");
    const id = Number(root.dataset.runId);
    const statusEl = document.getElementById("run-status");
    const live = document.getElementById("live-status");
    const cancel = document.getElementById("cancel-button");
    const resume = document.getElementById("resume-button");
    const actionError = document.getElementById("action-error");

    function setStatus(status) {
      const before = root.dataset.status;
      root.dataset.status = status;
      statusEl.textContent = status;
      statusEl.className = `status status-${status}`;
      cancel.hidden = !(status === "queued" || status === "running");
      resume.hidden = !["cancelled", "interrupted", "failed"].includes(status);
      document.getElementById("datasheet-link").hidden = status !== "succeeded";
      if (status === "succeeded" && before !== "succeeded" && !document.getElementById("audit")) {
        setTimeout(() => location.reload(), 300); // the audit is rendered by the server
      }
    }
    function showError(error) {
      const box = document.getElementById("run-error");
      if (!error || !error.code) { box.hidden = true; return; }
      document.getElementById("error-code").textContent = error.code;
      document.getElementById("error-detail").textContent = error.detail || "";
      document.getElementById("error-hint").textContent = error.hint || "";
      document.getElementById("error-log").textContent = error.log_tail || "";
      box.hidden = false;
    }
    function setProgress(p) {
      if (!p) return;
      const docsIn = p.docs_done ?? p.docs_in ?? 0;
      const total = p.docs_total ?? null;
      document.getElementById("p-docs").textContent = fmtNumber(docsIn, 0) + (total ? ` / ${fmtNumber(total, 0)}` : "");
      document.getElementById("p-kept").textContent = fmtNumber(p.docs_kept ?? p.docs_out ?? 0, 0);
      document.getElementById("p-rate").textContent = fmtNumber(p.docs_per_s, 1);
      let eta = p.eta_s ?? null;
      if (eta === null && total && p.docs_per_s) eta = (total - docsIn) / p.docs_per_s;
      document.getElementById("eta").textContent = p.final ? "done" : `ETA ${fmtDuration(eta)}`;
      const bar = document.getElementById("p-bar");
      if (total) { bar.max = total; bar.value = Math.min(docsIn, total); }
      if (p.shards_total) document.getElementById("p-shards").textContent = `shard ${p.shards_done} of ${p.shards_total} done`;
      if (p.mb_per_s !== undefined) document.getElementById("p-mb").textContent = fmtNumber(p.mb_per_s, 2);
      root.dataset.progressDocs = String(docsIn);
      for (const [name, c] of Object.entries(p.steps || {})) {
        const row = document.querySelector(`#step-counts tr[data-step="${CSS.escape(name.split("#")[0])}"]`);
        if (!row) continue;
        row.querySelector(".in").textContent = fmtNumber(c.docs_in, 0);
        row.querySelector(".out").textContent = fmtNumber(c.docs_out, 0);
      }
    }
    async function refresh() {
      const run = await api("GET", `${BASE}/runs/${id}/`);
      setStatus(run.status);
      setProgress(run.progress);
      showError(run.error);
    }
    window.studio.follow(`/ws/curation/${id}/`, {
      after: Number(root.dataset.lastEvent || 0),
      onStatus: (s) => { live.textContent = s; live.classList.toggle("live", s === "live"); },
      onEvent: (e) => {
        if (e.kind === "curation.progress") {
          root.dataset.liveEvents = String(Number(root.dataset.liveEvents || 0) + 1);
          setProgress(e.payload.progress);
        }
        else if (e.kind === "curation.status") {
          setStatus(e.payload.status);
          if (e.payload.error) showError(e.payload.error);
          if (["succeeded", "failed", "cancelled", "interrupted"].includes(e.payload.status)) refresh();
        }
      },
    });
    refresh();
    async function act(path, button) {
      actionError.textContent = "";
      button.disabled = true;
      try {
        const run = await api("POST", `${BASE}/runs/${id}/${path}/`);
        setStatus(run.status);
        if (path === "resume") showError(null);
      } catch (err) {
        actionError.textContent = err.message + (err.body && err.body.hint ? " — " + err.body.hint : "");
      } finally {
        button.disabled = false;
      }
    }
    cancel.addEventListener("click", () => act("cancel", cancel));
    resume.addEventListener("click", () => act("resume", resume));
    auditCharts();
    auditTrail(id);
  }

  // Page through the audit trail of one rule (with the input text) or the kept documents.
  function auditTrail(id) {
    const form = document.getElementById("trail-form");
    if (!form) return;
    const table = document.getElementById("trail");
    const body = table.querySelector("tbody");
    const more = document.getElementById("trail-more");
    let next = 0;
    async function load(reset) {
      const choice = form.elements.rule.value;
      if (reset) { body.replaceChildren(); next = 0; }
      const q = new URLSearchParams({ offset: String(next), limit: "25" });
      let path = `${BASE}/runs/${id}/documents/`;
      if (choice !== "kept") {
        const [step, rule] = choice.split(":");
        q.set("step", step);
        q.set("rule", rule);
        path = `${BASE}/runs/${id}/decisions/`;
      }
      const page = await api("GET", `${path}?${q}`);
      for (const r of page.results) {
        const text = el("details", {}, el("summary", {}, "text"), el("pre", {}, r.text ?? "(not in the inputs)"));
        body.append(choice === "kept"
          ? el("tr", {}, el("td", {}, el("code", {}, r.id)), el("td", {}, r.source ?? ""), el("td", {}, "kept"), el("td", {}, ""), el("td", {}, ""), el("td", {}, text))
          : el("tr", {}, el("td", {}, el("code", {}, r.doc_id)), el("td", {}, `${r.step} · ${r.rule}`), el("td", {}, r.action),
            el("td", {}, typeof r.value === "number" ? fmtNumber(r.value, 4) : String(r.value ?? "")), el("td", {}, JSON.stringify(r.threshold)), el("td", {}, text)));
      }
      table.hidden = false;
      next = page.next_offset;
      more.hidden = next === null;
      table.dataset.rows = String(body.children.length);
    }
    form.addEventListener("submit", (ev) => { ev.preventDefault(); load(true); });
    more.addEventListener("click", () => load(false));
  }

  function auditCharts() {
    const data = document.getElementById("report-steps");
    if (!data || !window.Chart) return;
    const steps = JSON.parse(data.textContent);
    new window.Chart(document.getElementById("chart-removed"), {
      type: "bar",
      data: {
        labels: steps.map((s) => s.name),
        datasets: [
          { label: "documents in", data: steps.map((s) => s.docs_in), backgroundColor: "#9db8e6" },
          { label: "documents out", data: steps.map((s) => s.docs_out), backgroundColor: "#1f5fbf" },
        ],
      },
      options: { maintainAspectRatio: false, animation: false, plugins: { title: { display: true, text: "Documents in and out per step" } } },
    });
    const labels = [], counts = [];
    for (const s of steps) {
      for (const [rule, n] of Object.entries(s.by_rule || {})) { labels.push(`${s.name}: ${rule}`); counts.push(n); }
    }
    if (labels.length) {
      new window.Chart(document.getElementById("chart-rules"), {
        type: "bar",
        data: { labels, datasets: [{ label: "documents dropped or changed", data: counts, backgroundColor: "#c2410c" }] },
        options: { indexAxis: "y", maintainAspectRatio: false, animation: false, plugins: { title: { display: true, text: "By rule" } } },
      });
    } else {
      document.getElementById("chart-rules").replaceWith(el("p", { class: "empty" }, "No document was dropped or changed."));
    }
    const filter = document.getElementById("rule-filter");
    filter.addEventListener("change", () => {
      document.querySelectorAll("#examples details").forEach((d) => {
        const show = !filter.value || d.dataset.key === filter.value;
        d.hidden = !show;
        if (filter.value && show) d.open = true;
      });
    });
  }

  // ---- the recipe editor: presets, validation, preview, LSH calculator -----------------------------
  function recipePage() {
    const presets = JSON.parse(document.getElementById("recipe-presets").textContent);
    const steps = JSON.parse(document.getElementById("steps-catalog").textContent);
    const form = document.getElementById("recipe-form");
    const text = document.getElementById("recipe-json");
    const ok = document.getElementById("recipe-ok");

    function loadPreset() {
      text.value = JSON.stringify(presets[form.elements.preset.value].recipe, null, 2);
    }
    form.elements.preset.addEventListener("change", loadPreset);
    loadPreset();

    function parseRecipe() {
      try {
        return JSON.parse(text.value);
      } catch (e) {
        const err = new Error("The recipe is not valid JSON.");
        err.body = { fields: { recipe: [`not JSON: ${e.message}`] } };
        throw err;
      }
    }
    document.getElementById("validate-button").addEventListener("click", async () => {
      clearErrors(form);
      ok.textContent = "";
      try {
        const out = await api("POST", `${BASE}/recipes/validate/`, { recipe: parseRecipe() });
        ok.textContent = `Valid: ${out.recipe.length} steps (${out.recipe.map((s) => s.step).join(" → ")}).`;
      } catch (err) {
        showErrors(form, err);
      }
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      try {
        const run = await api("POST", `${BASE}/runs/`, {
          recipe: parseRecipe(), sources: checkedSources(form), name: form.elements.name.value,
          workers: Number(form.elements.workers.value),
        });
        location.href = `/data/runs/${run.id}/`;
      } catch (err) {
        showErrors(form, err);
      }
    });

    // preview
    const pform = document.getElementById("preview-form");
    const fieldSelect = pform.elements.value_field;
    function fillFields() {
      const step = steps.find((s) => s.step === pform.elements.step.value);
      fieldSelect.replaceChildren(...(step ? step.previews : []).map((f) => el("option", { value: f }, f)));
    }
    pform.elements.step.addEventListener("change", fillFields);
    fillFields();
    let previewChart = null;
    pform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(pform);
      try {
        let config = {};
        if (pform.elements.config.value.trim()) {
          try { config = JSON.parse(pform.elements.config.value); } catch (e) {
            const err = new Error("The step settings are not valid JSON."); err.body = { fields: { step: [e.message] } }; throw err;
          }
        }
        const out = await api("POST", `${BASE}/preview/`, {
          step: { step: pform.elements.step.value, config }, value_field: fieldSelect.value,
          sources: checkedSources(form), sample: Number(pform.elements.sample.value),
        });
        renderPreview(out);
      } catch (err) {
        showErrors(pform, err);
      }
    });
    function renderPreview(out) {
      document.getElementById("preview-result").hidden = false;
      const cuts = out.cuts || [];
      document.getElementById("preview-summary").textContent =
        `${out.step} · ${out.value_field} on ${out.n} documents · mean ${fmtNumber(out.mean, 3)} · threshold ${JSON.stringify(out.threshold)}` +
        cuts.map((c) => ` · cut ${c.cut}: ${c.n_below} below, ${c.n_above} at or above`).join("");
      const edges = out.histogram.edges;
      const labels = out.histogram.counts.map((_, i) => `${fmtNumber(edges[i], 3)}–${fmtNumber(edges[i + 1], 3)}`);
      const colors = out.histogram.counts.map((_, i) => cuts.some((c) => edges[i + 1] <= c.cut) ? "#c2410c" : "#1f5fbf");
      const canvas = document.getElementById("chart-preview");
      if (previewChart) previewChart.destroy();
      previewChart = new window.Chart(canvas, {
        type: "bar",
        data: { labels, datasets: [{ label: `documents by ${out.value_field} (orange: below the cut)`, data: out.histogram.counts, backgroundColor: colors }] },
        options: { maintainAspectRatio: false, animation: false },
      });
      canvas.dataset.points = String(out.histogram.counts.length);
      const box = document.getElementById("preview-cuts");
      box.replaceChildren();
      for (const c of cuts) {
        const side = (title, items) => el("div", { class: "cut" }, el("h4", {}, title),
          ...(items.length ? items.map((x) => el("article", { class: "example" },
            el("header", {}, el("code", {}, x.id), ` · ${fmtNumber(x.value, 4)}`), el("pre", {}, x.text))) : [el("p", { class: "empty" }, "none in the sample")]));
        box.append(el("h3", {}, `Cut at ${c.cut}`),
          el("div", { class: "cut-sides" }, side(`Below (${c.n_below})`, c.below), side(`At or above (${c.n_above})`, c.above)));
      }
    }

    // LSH calculator
    const lform = document.getElementById("lsh-form");
    let lshChart = null;
    async function plot() {
      clearErrors(lform);
      const q = new URLSearchParams();
      for (const name of ["bands", "rows", "threshold", "optimal_for"]) {
        if (lform.elements[name].value !== "") q.set(name, lform.elements[name].value);
      }
      try {
        const out = await api("GET", `${BASE}/lsh/?${q}`);
        const curve = out.similarity.map((s, i) => ({ x: s, y: out.probability[i] }));
        const datasets = [
          { label: `${out.bands} bands × ${out.rows} rows`, data: curve, borderColor: "#1f5fbf", pointRadius: 0 },
          { label: `threshold ${out.threshold}`, data: [{ x: out.threshold, y: 0 }, { x: out.threshold, y: 1 }], borderColor: "#c2410c", borderDash: [6, 4], pointRadius: 0 },
        ];
        if (out.optimal) {
          const b = out.optimal.bands, r = out.optimal.rows;
          datasets.push({ label: `suggested ${b} × ${r}`, data: out.similarity.map((s) => ({ x: s, y: 1 - Math.pow(1 - Math.pow(s, r), b) })), borderColor: "#15803d", pointRadius: 0 });
        }
        const canvas = document.getElementById("chart-lsh");
        if (lshChart) lshChart.destroy();
        lshChart = new window.Chart(canvas, {
          type: "line", data: { datasets },
          options: { maintainAspectRatio: false, animation: false, parsing: false,
            scales: { x: { type: "linear", min: 0, max: 1, title: { display: true, text: "Jaccard similarity" } },
                      y: { min: 0, max: 1, title: { display: true, text: "P(candidate pair)" } } } },
        });
        canvas.dataset.points = String(curve.length);
        document.getElementById("lsh-summary").textContent =
          `${out.num_perm} hash functions · steepest near ${out.knee} · P(candidate) at ${out.threshold}: ${out.p_candidate_at_threshold}` +
          ` · false positive area ${out.false_positive_area} · false negative area ${out.false_negative_area}` +
          (out.optimal ? ` · suggested for ${out.optimal.num_perm} hash functions: ${out.optimal.bands} bands × ${out.optimal.rows} rows` : "");
      } catch (err) {
        showErrors(lform, err);
      }
    }
    lform.addEventListener("submit", (ev) => { ev.preventDefault(); plot(); });
    plot();
  }

  window.datastudio = { dataPage, runPage, recipePage };
})();
