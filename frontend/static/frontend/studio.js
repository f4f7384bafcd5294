// Small helpers shared by the studio's pages. Text from the server is always inserted as text
// (textContent), never as HTML.
(function () {
  "use strict";

  function cookie(name) {
    const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }

  // JSON bodies are encoded; a FormData body (file uploads) is sent as multipart.
  async function api(method, url, body) {
    const isForm = body instanceof FormData;
    const headers = { "X-CSRFToken": cookie("csrftoken"), Accept: "application/json" };
    if (!isForm) headers["Content-Type"] = "application/json";
    const res = await fetch(url, {
      method,
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : isForm ? body : JSON.stringify(body),
    });
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      const err = new Error((data && data.detail) || res.statusText);
      err.body = data;
      throw err;
    }
    return data;
  }

  // Follow a websocket with automatic reconnection; `after` lets the server replay what was missed.
  function follow(path, { after = 0, onEvent, onStatus }) {
    let last = after;
    let delay = 500;
    function connect() {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${proto}//${location.host}${path}?after=${last}`);
      ws.onopen = () => { delay = 500; onStatus && onStatus("live"); };
      ws.onmessage = (msg) => {
        const data = JSON.parse(msg.data);
        if (data.type === "event") { last = Math.max(last, data.id); onEvent(data); }
      };
      ws.onclose = (e) => {
        if (e.code === 4401 || e.code === 4403) { onStatus && onStatus("not allowed"); return; }
        onStatus && onStatus("reconnecting…");
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
  }

  function followActivity() {
    const list = document.getElementById("activity");
    const status = document.getElementById("live-status");
    if (!list) return;
    follow("/ws/events/", {
      after: Number(list.dataset.lastId || 0),
      onStatus: (s) => { status.textContent = s; status.classList.toggle("live", s === "live"); },
      onEvent: (e) => {
        const empty = list.querySelector(".empty");
        if (empty) empty.remove();
        const li = document.createElement("li");
        li.dataset.kind = e.kind;
        const time = document.createElement("time");
        time.dateTime = e.created_at;
        time.textContent = e.created_at.replace("T", " ").slice(0, 19);
        const code = document.createElement("code");
        code.textContent = e.kind;
        li.append(time, " ", code, " ", JSON.stringify(e.payload).slice(0, 120));
        list.prepend(li);
        while (list.children.length > 50) list.lastElementChild.remove();
      },
    });
    const button = document.getElementById("selftest");
    if (button) {
      button.addEventListener("click", async () => {
        button.disabled = true;
        try { await api("POST", "/api/system/selftest/"); }
        catch (err) { alert(err.message); }
        finally { button.disabled = false; }
      });
    }
  }

  function tokensPage() {
    const form = document.getElementById("token-form");
    const created = document.getElementById("token-created");
    const error = document.getElementById("token-error");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      try {
        const data = await api("POST", "/api/tokens/", { name: form.elements.name.value });
        document.getElementById("token-key").textContent = data.key;
        created.hidden = false;
        form.reset();
      } catch (err) {
        error.textContent = err.message + (err.body && err.body.hint ? " " + err.body.hint : "");
        error.hidden = false;
      }
    });
    document.querySelectorAll("[data-revoke]").forEach((b) => b.addEventListener("click", async () => {
      await api("DELETE", `/api/tokens/${b.dataset.revoke}/`);
      location.reload();
    }));
  }

  window.studio = { api, follow, followActivity, tokensPage };
})();
