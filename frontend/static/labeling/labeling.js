// Labeling pages: annotate (keyboard-first), manage (import, live quality, snapshots), reports.
// Model and user text is always inserted with textContent, never as HTML.
(function () {
  "use strict";
  const api = (...a) => window.studio.api(...a);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function errorText(err) {
    const b = err.body || {};
    return (b.detail || err.message) + (b.hint ? " " + b.hint : "");
  }

  function token() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function pct(x) { return x === null || x === undefined ? "—" : Math.round(x * 100) + "%"; }
  function num(x, d) { return x === null || x === undefined ? "—" : Number(x).toFixed(d === undefined ? 2 : d); }

  // ---- annotate ------------------------------------------------------------------------------
  function annotatePage() {
    const task = document.getElementById("task");
    const projectId = task.dataset.project;
    const status = document.getElementById("task-status");
    const body = document.getElementById("task-body");
    const form = document.getElementById("answer-form");
    const error = document.getElementById("answer-error");
    const help = document.getElementById("help");
    const corrected = document.getElementById("corrected");
    const submitBtn = document.getElementById("submit");
    let current = null;
    let ranking = [];
    let touched = false; // the annotator has answered something on this item (a pre-fill never overwrites it)
    let visibleMs = 0, visibleSince = null, busy = false, timer = null, lockEnd = 0;
    let lastActivity = 0, lastHeartbeat = 0, heartbeat = null;
    for (const kind of ["keydown", "pointerdown", "input", "wheel"]) document.addEventListener(kind, () => { lastActivity = Date.now(); }, { passive: true });

    // While the annotator works on an item (activity since the last beat, page visible), extend the
    // lock every third of the lock time, so that a long answer does not lose its item.
    function startHeartbeat(a) {
      clearInterval(heartbeat);
      lastHeartbeat = Date.now();
      const every = Math.max(5, Math.min(60, a.lock_ttl_seconds / 3)) * 1000;
      heartbeat = setInterval(async () => {
        if (!current || current.assignment !== a.assignment || document.hidden || lastActivity <= lastHeartbeat) return;
        lastHeartbeat = Date.now();
        try {
          const r = await api("POST", `/api/labeling/assignments/${a.assignment}/extend/`);
          if (current && current.assignment === a.assignment) { lockEnd = new Date(r.expires_at).getTime(); task.dataset.lockExtended = r.expires_at; }
        } catch (err) { clearInterval(heartbeat); }
      }, every);
    }

    function startClock() { visibleMs = 0; visibleSince = document.hidden ? null : performance.now(); }
    function elapsed() { return Math.round(visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince)); }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden && visibleSince !== null) { visibleMs += performance.now() - visibleSince; visibleSince = null; }
      else if (!document.hidden && visibleSince === null) visibleSince = performance.now();
    });

    function showError(msg) { error.textContent = msg; error.hidden = !msg; }

    function renderPrompt(messages) {
      const box = document.getElementById("prompt");
      box.replaceChildren();
      for (const m of messages) {
        box.append(el("div", { class: "turn turn-" + m.role }, el("span", { class: "role", text: m.role }), el("div", { class: "text", text: m.content })));
      }
    }

    function renderResponses(a) {
      const box = document.getElementById("responses");
      box.replaceChildren();
      box.classList.toggle("two", a.responses.length === 2);
      a.responses.forEach((r, i) => {
        const head = el("h3", { id: "resp-" + r.id + "-title", text: (a.task_type === "pairwise" ? "Answer " + r.label : "Answer " + (i + 1)) + "  [" + (i + 1) + "]" });
        box.append(el("article", { class: "response", "data-response": r.id, "aria-labelledby": head.id }, head, el("div", { class: "text", text: r.text })));
      });
    }

    function renderRatings(a) {
      const grid = document.getElementById("rating-grid");
      grid.replaceChildren();
      a.responses.forEach((r, i) => {
        for (const c of a.criteria) {
          const id = `rate-${r.id}-${c}`;
          const sel = el("select", { id, "data-response": r.id, "data-criterion": c, required: true }, el("option", { value: "", text: "—" }));
          for (let v = 1; v <= a.likert_max; v++) sel.append(el("option", { value: String(v), text: String(v) }));
          grid.append(el("div", { class: "rating" }, el("label", { for: id, text: `Answer ${i + 1}: ${c} (1–${a.likert_max})` }), sel));
        }
      });
    }

    function updateRanking() {
      const out = document.getElementById("ranking-output");
      out.textContent = ranking.length ? ranking.map((id) => "Answer " + (current.responses.findIndex((r) => r.id === id) + 1)).join(" > ") : "none yet";
    }

    // ---- the models' pre-annotations (only when the project shows them) ----
    const suggestionsMode = task.dataset.preAnnotations || "hidden";
    const suggestionsBox = document.getElementById("suggestions");
    const SHOWN_NOTE = "Imported from another tool's models; they can be wrong. Judge the answers yourself.";
    const PREFILLED_NOTE = "Your answer starts from the marked suggestion: change it if you disagree. Nothing is sent until you submit.";

    function prefillForm(p) {
      if (p.choice) { const input = form.querySelector(`input[name=choice][value=${p.choice}]`); if (!input) return false; input.checked = true; }
      else if (p.ranking) { ranking = p.ranking.filter((id) => current.responses.some((r) => r.id === id)); updateRanking(); }
      else if (p.ratings) {
        for (const [rid, crit] of Object.entries(p.ratings)) {
          for (const [c, v] of Object.entries(crit)) {
            const sel = [...document.querySelectorAll("#rating-grid select")].find((s) => s.dataset.response === rid && s.dataset.criterion === c);
            if (sel) sel.value = String(v);
          }
        }
      } else return false;
      return true;
    }

    function renderSuggestions(res) {
      const list = document.getElementById("suggestion-list");
      const prefilled = res.prefill && !touched && prefillForm(res.prefill);
      list.replaceChildren(...res.suggestions.map((s, i) => {
        const item = el("li", { class: "suggestion" + (prefilled && res.prefill.suggestion === i ? " prefilled" : "") }, el("span", { class: "summary", text: s.summary }));
        if (prefilled && res.prefill.suggestion === i) item.append(" ", el("span", { class: "badge", text: "pre-filled" }));
        if (s.comment) item.append(el("p", { class: "comment", text: "Comment: " + s.comment }));
        for (const [q, v] of Object.entries(s.values || {})) item.append(el("p", { class: "value", text: `${q}: ${v}` }));
        return item;
      }));
      document.getElementById("suggestions-note").textContent = prefilled ? PREFILLED_NOTE : SHOWN_NOTE;
      task.dataset.prefilled = prefilled ? "1" : "0";
      suggestionsBox.hidden = res.suggestions.length === 0;
    }

    async function loadSuggestions(a) {
      if (suggestionsMode === "hidden" || !suggestionsBox) return;
      try {
        const res = await api("GET", `/api/labeling/assignments/${a.assignment}/suggestions/`);
        if (current && current.assignment === a.assignment) renderSuggestions(res);
      } catch (err) { /* the task works without them */ }
      finally { if (current && current.assignment === a.assignment) task.dataset.suggestions = String(a.assignment); }
    }

    function show(a) {
      current = a; ranking = []; touched = false;
      form.reset(); showError("");
      if (suggestionsBox) { suggestionsBox.hidden = true; document.getElementById("suggestion-list").replaceChildren(); delete task.dataset.prefilled; }
      renderPrompt(a.prompt); renderResponses(a);
      document.getElementById("pairwise-controls").hidden = a.task_type !== "pairwise";
      document.getElementById("strength-row").hidden = !a.allow_strength;
      document.getElementById("ranking-controls").hidden = a.task_type !== "ranking";
      document.getElementById("rating-controls").hidden = a.task_type !== "rating";
      document.getElementById("corrected-optional").textContent = a.task_type === "correction" ? "(required)" : "(optional)";
      if (a.task_type === "rating") renderRatings(a);
      if (a.task_type === "ranking") updateRanking();
      if (a.task_type === "correction") corrected.value = a.responses[0] ? a.responses[0].text : "";
      status.hidden = true; body.hidden = false;
      task.dataset.assignment = a.assignment;
      startClock();
      clearInterval(timer);
      lockEnd = new Date(a.expires_at).getTime();
      startHeartbeat(a);
      const timerEl = document.getElementById("lock-timer");
      timer = setInterval(() => {
        const left = Math.max(0, Math.round((lockEnd - Date.now()) / 1000));
        timerEl.textContent = left > 0 ? `lock: ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left` : "lock expired: press S to skip or reload";
      }, 1000);
      document.getElementById("main").focus({ preventScroll: true });
      loadSuggestions(a);
    }

    async function next() {
      current = null; body.hidden = true; status.hidden = false; status.textContent = "Loading the next item…";
      try {
        const a = await api("POST", `/api/labeling/projects/${projectId}/next/`);
        if (!a.assignment) { status.textContent = a.detail; task.dataset.done = a.reason; return; }
        show(a);
      } catch (err) { status.textContent = errorText(err); }
    }

    function collect() {
      const data = { assignment: current.assignment, client_token: current.token, time_on_task_ms: elapsed() };
      if (current.task_type === "pairwise") {
        const c = form.querySelector("input[name=choice]:checked");
        if (!c) throw new Error("Choose A (1), B (2), tie (0) or both bad (9) first.");
        data.choice = c.value;
        const s = document.getElementById("strength").value;
        if (s !== "") data.strength = Number(s);
      } else if (current.task_type === "ranking") {
        if (ranking.length !== current.responses.length) throw new Error("Rank every answer: press their numbers from best to worst.");
        data.ranking = ranking.slice();
      } else if (current.task_type === "rating") {
        data.ratings = {};
        for (const sel of document.querySelectorAll("#rating-grid select")) {
          if (!sel.value) { sel.focus(); throw new Error("Rate every answer on every criterion."); }
          (data.ratings[sel.dataset.response] = data.ratings[sel.dataset.response] || {})[sel.dataset.criterion] = Number(sel.value);
        }
      }
      if (corrected.value.trim() && (current.task_type === "correction" || corrected.value !== (current.responses[0] || {}).text)) data.corrected_text = corrected.value;
      return data;
    }

    async function submit() {
      if (!current || busy) return;
      let data;
      try { data = collect(); } catch (e) { showError(e.message); return; }
      busy = true; submitBtn.disabled = true;
      current.token = current.token || token();
      data.client_token = current.token;
      try {
        data.next = true;  // submit and lock the next item in one round trip
        const j = await api("POST", "/api/labeling/judgements/", data);
        const count = document.getElementById("judged-count");
        count.textContent = String(Number(count.textContent) + 1);
        addRecent(j, true);
        if (j.next && j.next.assignment) show(j.next);
        else if (j.next) { current = null; body.hidden = true; status.hidden = false; status.textContent = j.next.detail; task.dataset.done = j.next.reason; }
        else await next();
      } catch (err) {
        showError(errorText(err));
        if (err.body && ["lock_expired", "skipped", "already_submitted", "not_your_item"].includes(err.body.code)) setTimeout(next, 1500);
      } finally { busy = false; submitBtn.disabled = false; }
    }

    async function skip() {
      if (!current || busy) return;
      busy = true;
      try { await api("POST", `/api/labeling/assignments/${current.assignment}/skip/`); await next(); }
      catch (err) { showError(errorText(err)); }
      finally { busy = false; }
    }

    function describe(j) {
      if (j.choice) return { a: "A better", b: "B better", tie: "tie", both_bad: "both bad" }[j.choice] + (j.strength !== null && j.strength !== undefined ? ` (${j.strength > 0 ? "+" : ""}${j.strength})` : "");
      if (j.ranking && j.ranking.length) return "ranking " + j.ranking.join(" > ");
      if (j.ratings && Object.keys(j.ratings).length) return "ratings " + JSON.stringify(j.ratings);
      return j.corrected_text ? "correction" : "—";
    }

    function addRecent(j, prepend) {
      const tbody = document.getElementById("recent");
      const answer = el("td", { text: describe(j) });
      const cell = el("td");
      if (j.choice) {
        const sel = el("select", { "aria-label": `Change judgement on item ${j.item}` });
        for (const [v, l] of [["a", "A better"], ["b", "B better"], ["tie", "Tie"], ["both_bad", "Both bad"]]) sel.append(el("option", { value: v, text: l }));
        sel.value = j.choice;
        const btn = el("button", { type: "button", class: "secondary", text: "Save change" });
        btn.addEventListener("click", async () => {
          try { const u = await api("PATCH", `/api/labeling/judgements/${j.id}/`, { choice: sel.value }); answer.textContent = describe(u) + " (edited)"; }
          catch (err) { answer.textContent = errorText(err); }
        });
        cell.append(sel, " ", btn);
      }
      const row = el("tr", { "data-judgement": j.id }, el("td", { text: "#" + j.item }), answer, el("td", { text: j.created_at.replace("T", " ").slice(0, 19) }), cell);
      if (prepend) tbody.prepend(row); else tbody.append(row);
      while (tbody.children.length > 10) tbody.lastElementChild.remove();
    }

    function choose(value) {
      const input = form.querySelector(`input[name=choice][value=${value}]`);
      if (input) { input.checked = true; touched = true; showError(""); }
    }

    document.addEventListener("keydown", (ev) => {
      if (ev.defaultPrevented || ev.altKey || ev.metaKey) return;
      const target = ev.target;
      const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text") || target.isContentEditable);
      if (help.open) { if (ev.key === "?" || ev.key === "Escape") { help.close(); ev.preventDefault(); } return; }
      if (document.getElementById("report-dialog").open) return;
      if (typing) {
        if (ev.key === "Enter" && ev.ctrlKey) { ev.preventDefault(); submit(); }
        if (ev.key === "Escape") target.blur();
        return;
      }
      if (ev.ctrlKey) return;
      if (ev.key === "?") { ev.preventDefault(); help.showModal(); return; }
      if (!current) return;
      if (ev.key === "Enter" && target.tagName !== "BUTTON" && target.tagName !== "A" && target.tagName !== "SELECT") { ev.preventDefault(); submit(); return; }
      if (ev.key === "s" || ev.key === "S") { ev.preventDefault(); skip(); return; }
      if (current.task_type === "pairwise") {
        const map = { "1": "a", "2": "b", "0": "tie", "9": "both_bad" };
        if (map[ev.key]) { ev.preventDefault(); choose(map[ev.key]); }
      } else if (current.task_type === "ranking") {
        const k = Number(ev.key);
        if (k >= 1 && k <= current.responses.length) {
          const id = current.responses[k - 1].id;
          if (!ranking.includes(id)) ranking.push(id);
          touched = true; updateRanking(); ev.preventDefault();
        } else if (ev.key === "Backspace") { ranking.pop(); touched = true; updateRanking(); ev.preventDefault(); }
      }
    });
    form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
    form.addEventListener("change", () => { touched = true; }); // a click on a choice, a rating, the strength
    document.getElementById("skip").addEventListener("click", skip);
    document.getElementById("help-button").addEventListener("click", () => help.showModal());

    // reports from annotators
    const dialog = document.getElementById("report-dialog");
    const rform = document.getElementById("report-form");
    document.getElementById("report-button").addEventListener("click", () => {
      if (!current) return;
      const sel = document.getElementById("r-response");
      sel.replaceChildren(...current.responses.map((r, i) => el("option", { value: r.id, text: "Answer " + (current.task_type === "pairwise" ? r.label : i + 1) })));
      document.getElementById("report-status").textContent = "";
      dialog.showModal();
    });
    document.getElementById("report-cancel").addEventListener("click", () => dialog.close());
    rform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = rform.elements;
      const body = { response: Number(f.response.value), item: current.item, category: f.category.value, severity: f.severity.value, description: f.description.value, source: "annotator" };
      if (f.category.value === "bias" && f.bias_kind.value) body.bias_kind = f.bias_kind.value;
      try { const r = await api("POST", "/api/labeling/reports/", body); document.getElementById("report-status").textContent = `Report #${r.id} sent to the moderators.`; setTimeout(() => dialog.close(), 800); rform.reset(); }
      catch (err) { document.getElementById("report-status").textContent = errorText(err); }
    });

    api("GET", `/api/labeling/judgements/?project=${projectId}&limit=10`).then((page) => (page.results || page).forEach((j) => addRecent(j, false))).catch(() => {});
    next();
  }

  // ---- manage --------------------------------------------------------------------------------
  function managePage() {
    const root = document.getElementById("manage");
    const pid = root.dataset.project;
    const liveStatus = document.getElementById("live-status");

    function row(...cells) { return el("tr", {}, ...cells.map((c) => el("td", { text: c === null || c === undefined ? "—" : String(c) }))); }

    async function refresh() {
      let q;
      try { q = await api("GET", `/api/labeling/projects/${pid}/quality/`); } catch (err) { return; }
      const counts = document.getElementById("progress-counts");
      const p = q.progress;
      counts.replaceChildren(...[["Items", p.items, "items"], ["Complete", p.complete_items, "complete"], ["Judgements", p.judgements, "judgements"],
        ["Target", p.target_judgements, "target"], ["Gold items", p.gold_items, "gold"], ["Locked now", p.active_locks, "locks"]].map(([l, v, k]) =>
        el("li", { class: "count" }, el("span", { class: "value", "data-count": k, text: String(v) }), el("span", { class: "label", text: l }))));
      const alpha = document.getElementById("alpha");
      const entries = Object.entries(q.alpha);
      alpha.replaceChildren(...(entries.length ? entries.map(([k, v]) => el("li", { text: `${k}: ${num(v, 3)}` })) : [el("li", { class: "empty", text: "Not enough overlapping judgements yet." })]));
      document.getElementById("annotators").replaceChildren(...q.annotators.map((a) => row(a.username, a.judgements, pct(a.agreement), a.gold_accuracy === undefined ? "—" : pct(a.gold_accuracy) + (a.gold_status && a.gold_status !== "ok" ? " (" + a.gold_status + ")" : ""),
        pct(a.left_pick_rate), pct(a.longer_pick_rate), a.median_time_ms ? (a.median_time_ms / 1000).toFixed(1) + " s" : "—", (a.flags || []).join(", ") || "none")));
      document.getElementById("adjudication").replaceChildren(...q.adjudication.slice(0, 20).map((r) => row("#" + r.item, JSON.stringify(r.votes), pct(r.agreement))));
      document.getElementById("leaderboard").replaceChildren(...q.leaderboard.map((r) => row(r.model, num(r.rating, 0), `${num(r.ci_low, 0)} – ${num(r.ci_high, 0)}`, r.battles)));
    }

    let pending = null;
    function refreshSoon() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 1000); }
    window.studio.follow(`/ws/labeling/projects/${pid}/`, {
      after: Number(root.dataset.lastEvent || 0),
      onStatus: (s) => { liveStatus.textContent = s; liveStatus.classList.toggle("live", s === "live"); },
      onEvent: () => refreshSoon(),
    });
    refresh();

    const iform = document.getElementById("import-form");
    iform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = document.getElementById("import-result");
      const file = document.getElementById("import-file").files[0];
      const jsonl = file ? await file.text() : document.getElementById("import-text").value;
      out.replaceChildren(el("p", { text: "Importing…" }));
      let res;
      try { res = await api("POST", `/api/labeling/projects/${pid}/import/`, { jsonl, on_error: document.getElementById("import-on-error").value }); }
      catch (err) { res = err.body || { detail: err.message, errors: [] }; }
      const parts = [];
      if (res.stored === false) parts.push(el("p", { class: "error", text: res.detail }));
      else {
        parts.push(el("p", { text: `Stored ${res.prompts} prompts, ${res.responses} responses, ${res.items} items, ${res.judgements} judgements.` }));
        // the tools' model output (Argilla suggestions, Label Studio predictions) is never a judgement
        parts.push(el("p", { id: "import-suggestions", text: `Model suggestions / predictions: ${res.suggested_responses} candidate responses (source: the named model), ${res.pre_annotations} pre-annotations kept with their prompts (not judgements).` }));
      }
      if (res.errors && res.errors.length) parts.push(el("ul", { class: "errors" }, ...res.errors.slice(0, 100).map((e) => el("li", { text: `line ${e.line}: ${e.message}` }))));
      out.replaceChildren(...parts);
      refresh();
    });

    const sform = document.getElementById("settings-form");
    sform.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const st = document.getElementById("settings-status");
      const select = document.getElementById("pre-annotations");
      try {
        const p = await api("PATCH", `/api/labeling/projects/${pid}/`, { pre_annotations: select.value });
        select.value = p.pre_annotations;
        st.textContent = "Saved: " + select.options[select.selectedIndex].text + ".";
      } catch (err) { st.textContent = errorText(err); }
    });

    document.getElementById("snapshot-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const st = document.getElementById("snapshot-status");
      try { const s = await api("POST", "/api/labeling/snapshots/", { project: Number(pid), note: document.getElementById("snap-note").value }); st.textContent = `Created ${s.label}.`; location.reload(); }
      catch (err) { st.textContent = errorText(err); }
    });
  }

  // ---- reports -------------------------------------------------------------------------------
  function reportsPage() {
    document.querySelectorAll("form.moderate").forEach((form) => {
      const err = form.querySelector(".error");
      form.querySelectorAll("button[data-action]").forEach((b) => b.addEventListener("click", async () => {
        const body = { note: form.elements.note.value, corrected_text: form.elements.corrected_text.value };
        try { await api("POST", `/api/labeling/reports/${form.dataset.report}/${b.dataset.action}/`, body); location.reload(); }
        catch (e) { err.textContent = errorText(e); err.hidden = false; }
      }));
    });
  }

  // ---- home ----------------------------------------------------------------------------------
  function homePage() {
    const form = document.getElementById("project-form");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = form.elements, err = document.getElementById("project-error");
      const body = { name: f.name.value, task_type: f.task_type.value, overlap: Number(f.overlap.value), guidelines: f.guidelines.value,
        pre_annotations: f.pre_annotations.value,
        criteria: f.criteria.value.split(",").map((s) => s.trim()).filter(Boolean) };
      try { const p = await api("POST", "/api/labeling/projects/", body); location.href = `/labeling/${p.id}/manage/`; }
      catch (e) { err.textContent = errorText(e); err.hidden = false; }
    });
  }

  window.labeling = { annotatePage, managePage, reportsPage, homePage };
})();
