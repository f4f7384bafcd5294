// Chat playground: tokens stream over /ws/chat/ from the model-serving worker; thumbs up/down, reports
// to the moderators' queue, and a blind A/B compare mode whose votes are stored as preferences.
(function () {
  "use strict";
  const api = (...args) => window.studio.api(...args);
  const models = JSON.parse(document.getElementById("chat-models").textContent);
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const sendBtn = document.getElementById("chat-send");
  const stopBtn = document.getElementById("chat-stop");
  const status = document.getElementById("chat-status");
  const modelSel = document.getElementById("chat-model");
  const compare = document.getElementById("compare-mode");
  const dialog = document.getElementById("report-dialog");

  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && [...modelSel.options].some((o) => o.value === wanted)) modelSel.value = wanted;

  let history = [];          // [{role, content}] of the single-model conversation
  let ws = null;
  let nextId = 1;
  const pending = new Map(); // client id -> {onMessage}

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws/chat/`);
    ws.onopen = () => { status.textContent = "ready"; status.classList.add("live"); };
    ws.onclose = (e) => {
      status.classList.remove("live");
      status.textContent = e.code === 4401 ? "sign in to chat" : "reconnecting…";
      for (const p of pending.values()) p.onMessage({ type: "error", detail: "connection lost" });
      pending.clear();
      if (e.code !== 4401) setTimeout(connect, 1000);
    };
    ws.onmessage = (msg) => {
      const data = JSON.parse(msg.data);
      const p = pending.get(String(data.id));
      if (!p) return;
      p.onMessage(data);
      if (data.type === "done" || data.type === "error") pending.delete(String(data.id));
    };
  }
  connect();

  function sampling() {
    const v = (id) => document.getElementById(id).value;
    return { max_new_tokens: Number(v("s-max")), temperature: Number(v("s-temp")), top_p: Number(v("s-topp")),
      top_k: v("s-topk") ? Number(v("s-topk")) : null, repetition_penalty: Number(v("s-rep")) };
  }
  function withSystem(messages) {
    const system = document.getElementById("s-system").value.trim();
    return system ? [{ role: "system", content: system }, ...messages] : messages;
  }

  // Ask one model; returns a promise of {text, model} and streams into `el`.
  function ask(modelRef, messages, el) {
    return new Promise((resolve) => {
      const id = String(nextId++);
      const body = el.querySelector(".body");
      const stats = el.querySelector(".stats");
      let text = "";
      pending.set(id, { onMessage: (m) => {
        if (m.type === "loading") stats.textContent = "loading the model…";
        else if (m.type === "started") { stats.textContent = "…"; el.dataset.model = m.model; }
        else if (m.type === "token") { text += m.text; body.textContent = text; el.dataset.tokens = String(Number(el.dataset.tokens || 0) + 1); }
        else if (m.type === "done") {
          text = m.text || text.trim();
          body.textContent = text;
          const s = m.stats || {};
          stats.textContent = [m.stopped ? "stopped" : "", s.tokens != null ? `${s.tokens} tokens` : "",
            s.ttft_s != null ? `first token ${(s.ttft_s * 1000).toFixed(0)} ms` : "",
            s.tokens_per_s ? `${s.tokens_per_s} tokens/s` : ""].filter(Boolean).join(" · ");
          el.dataset.done = "true";
          resolve({ text, model: modelRef });
        } else if (m.type === "error") {
          stats.textContent = "";
          body.textContent = text;
          const err = document.createElement("p");
          err.className = "error";
          err.textContent = m.detail + (m.hint ? " — " + m.hint : "");
          el.append(err);
          el.dataset.done = "error";
          resolve({ text, model: modelRef, error: true });
        }
      } });
      ws.send(JSON.stringify({ type: "generate", id, model: modelRef, messages, sampling: sampling() }));
      el.dataset.requestId = id;
    });
  }

  function bubble(role, label) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = label;
    const body = document.createElement("div");
    body.className = "body";
    const stats = document.createElement("div");
    stats.className = "stats";
    li.append(who, body, stats);
    return li;
  }

  function feedbackButtons(el, modelRef, messages, getText) {
    const bar = document.createElement("div");
    bar.className = "actions";
    const up = document.createElement("button");
    up.type = "button"; up.className = "secondary"; up.textContent = "👍"; up.setAttribute("aria-label", "Good answer");
    const down = document.createElement("button");
    down.type = "button"; down.className = "secondary"; down.textContent = "👎"; down.setAttribute("aria-label", "Bad answer");
    const report = document.createElement("button");
    report.type = "button"; report.className = "secondary"; report.textContent = "Report";
    const note = document.createElement("span");
    note.className = "stats";
    async function rate(value, button) {
      try {
        await api("POST", "/api/chat/feedback/", { model: modelRef, messages, response_text: getText(), rating: value });
        up.setAttribute("aria-pressed", String(value === 1));
        down.setAttribute("aria-pressed", String(value === -1));
        note.textContent = "thanks";
      } catch (err) { note.textContent = err.message; }
    }
    up.addEventListener("click", () => rate(1, up));
    down.addEventListener("click", () => rate(-1, down));
    report.addEventListener("click", () => {
      const rform = document.getElementById("report-form");
      rform.reset();
      dialog.returnValue = "";
      dialog.onclose = async () => {
        if (dialog.returnValue !== "send") return;
        const category = rform.elements.category.value;
        try {
          const fb = await api("POST", "/api/chat/feedback/", { model: modelRef, messages, response_text: getText(),
            rating: -1, report_category: category, bias_kind: category === "bias" ? rform.elements.bias_kind.value : "",
            report_text: rform.elements.text.value });
          note.textContent = fb.labeling_report_id ? `reported (report ${fb.labeling_report_id})` : "reported";
          el.dataset.reported = "true";
        } catch (err) { note.textContent = err.message; }
      };
      dialog.showModal();
    });
    bar.append(up, down, report, note);
    el.append(bar);
  }

  function setBusy(busy) {
    sendBtn.disabled = busy;
    stopBtn.disabled = !busy;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
    input.value = "";
    const user = bubble("user", "You");
    user.querySelector(".body").textContent = text;
    log.append(user);
    setBusy(true);
    if (!compare.checked) {
      if (!modelSel.value) { setBusy(false); return; }
      history.push({ role: "user", content: text });
      const messages = withSystem(history.slice());
      const el = bubble("assistant", modelSel.options[modelSel.selectedIndex].text);
      log.append(el);
      const result = await ask(modelSel.value, messages, el);
      history.push({ role: "assistant", content: result.text });
      if (!result.error) feedbackButtons(el, modelSel.value, messages, () => result.text);
    } else {
      // two different models, shown as A and B without their names
      const refs = models.map((m) => m.ref);
      if (refs.length < 2) { setBusy(false); alert("Compare mode needs at least two models."); return; }
      const a = refs[Math.floor(Math.random() * refs.length)];
      let b = a;
      while (b === a) b = refs[Math.floor(Math.random() * refs.length)];
      const messages = withSystem([{ role: "user", content: text }]);
      const pair = document.createElement("li");
      pair.className = "pair";
      const ea = bubble("assistant", "Model A");
      const eb = bubble("assistant", "Model B");
      pair.append(ea, eb);
      log.append(pair);
      const [ra, rb] = await Promise.all([ask(a, messages, ea), ask(b, messages, eb)]);
      const votes = document.createElement("li");
      votes.className = "votes";
      for (const [value, label] of [["a", "A is better"], ["b", "B is better"], ["tie", "Tie"], ["both_bad", "Both are bad"]]) {
        const button = document.createElement("button");
        button.type = "button"; button.className = "secondary"; button.textContent = label; button.dataset.vote = value;
        button.addEventListener("click", async () => {
          try {
            await api("POST", "/api/chat/votes/", { messages, model_a: a, model_b: b, response_a: ra.text,
              response_b: rb.text, vote: value });
            votes.textContent = `Thanks. A was ${models.find((m) => m.ref === a).name}, B was ${models.find((m) => m.ref === b).name}.`;
          } catch (err) { alert(err.message); }
        });
        votes.append(button);
      }
      log.append(votes);
    }
    setBusy(false);
  });

  stopBtn.addEventListener("click", () => {
    for (const id of pending.keys()) ws.send(JSON.stringify({ type: "stop", id }));
  });
  document.getElementById("chat-clear").addEventListener("click", () => { history = []; log.textContent = ""; });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
})();
