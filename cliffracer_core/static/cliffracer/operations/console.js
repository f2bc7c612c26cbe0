// The operations console's pages (docs/console.md): live tables, the RPC console, the event
// tail. Plain browser JavaScript, no build step and no library.
"use strict";

(function () {
  // Live tables: fetch the page's JSON every few seconds and swap in its rendered fragments.
  function startPolling(root) {
    const url = root.dataset.pollUrl;
    const seconds = Number(root.dataset.pollSeconds || 5);
    const chartSeconds = Number(root.dataset.chartsSeconds || 0);
    const state = root.querySelector("[data-poll-state]");
    let lastCharts = Date.now();
    let busy = false;

    async function poll() {
      if (busy || document.hidden) return;
      busy = true;
      const withCharts = chartSeconds > 0 && Date.now() - lastCharts >= chartSeconds * 1000;
      const target = new URL(url, window.location.href);
      if (withCharts) target.searchParams.set("charts", "1");
      try {
        const response = await fetch(target, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        const body = await response.json().catch(() => null);
        if (!response.ok) {
          const message = body && body.error ? body.error.message : response.statusText;
          throw new Error(`${response.status} ${message}`);
        }
        for (const [name, html] of Object.entries(body.fragments || {})) {
          const slot = root.querySelector(`[data-fragment="${name}"]`);
          // An open <details> (a schema being read) survives the swap.
          if (slot) replaceKeepingOpen(slot, html);
        }
        if (withCharts) lastCharts = Date.now();
        const badge = document.querySelector("[data-fragment-state]");
        if (badge && body.service) {
          badge.textContent = body.service.state;
          badge.className = `cliffracer-state cliffracer-state-${body.service.state}`;
        }
        if (state) {
          state.textContent = `Live: updated ${new Date().toLocaleTimeString()}, every ${seconds} seconds.`;
          state.classList.remove("errornote-inline");
        }
      } catch (error) {
        if (state) {
          state.textContent = `Not updated since ${new Date().toLocaleTimeString()}: ${error.message}`;
          state.classList.add("errornote-inline");
        }
      } finally {
        busy = false;
      }
    }

    setInterval(poll, seconds * 1000);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) poll();
    });
  }

  function replaceKeepingOpen(slot, html) {
    const open = new Set(
      Array.from(slot.querySelectorAll("details[open] summary"), (summary) => summary.textContent)
    );
    slot.innerHTML = html;
    for (const summary of slot.querySelectorAll("details summary")) {
      if (open.has(summary.textContent)) summary.parentElement.open = true;
    }
  }

  // The RPC console: POST the body to the gateway with the session and the CSRF token.
  function startRpcConsole(form) {
    const examples = JSON.parse(document.getElementById("rpc-examples").textContent);
    const select = form.elements.endpoint;
    const body = form.elements.body;
    const result = document.querySelector("[data-rpc-result]");
    const summary = result.querySelector("[data-rpc-summary]");
    const reply = result.querySelector("[data-rpc-reply]");

    function prefill() {
      body.value = examples[select.value] || "{}";
    }
    select.addEventListener("change", prefill);
    prefill();

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      result.hidden = false;
      let data;
      try {
        data = JSON.parse(body.value || "{}");
      } catch (error) {
        summary.textContent = `The body is not JSON: ${error.message}`;
        summary.className = "errornote";
        reply.textContent = "";
        return;
      }
      const url = form.dataset.gateway.replace(/METHOD$/, encodeURIComponent(select.value));
      summary.textContent = `Calling ${select.value}…`;
      summary.className = "";
      reply.textContent = "";
      const started = performance.now();
      try {
        const response = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            Accept: "application/json",
            "X-CSRFToken": form.elements.csrfmiddlewaretoken.value,
          },
          body: JSON.stringify(data),
        });
        const elapsed = performance.now() - started;
        const text = await response.text();
        let parsed = null;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch (error) {
          parsed = text;
        }
        const correlation = response.headers.get("X-Correlation-ID") || "–";
        const timing = `${elapsed.toFixed(1)} ms, correlation id ${correlation}`;
        if (response.ok) {
          summary.textContent = `${response.status} OK in ${timing}`;
          summary.className = "cliffracer-ok";
        } else {
          const error = parsed && parsed.error ? parsed.error : {};
          summary.textContent =
            `Error ${error.code || response.status} ${error.type || ""}: ` +
            `${error.message || response.statusText} (${timing})`;
          summary.className = "errornote";
        }
        reply.textContent = typeof parsed === "string" ? parsed : JSON.stringify(parsed, null, 2);
      } catch (error) {
        summary.textContent = `The call failed: ${error.message}`;
        summary.className = "errornote";
      }
    });
  }

  // The event tail: /ws/events/ with the session cookie; subscribe to one subject pattern.
  function startEventTail(form) {
    const stop = form.querySelector("[data-tail-stop]");
    const state = form.querySelector("[data-tail-state]");
    const rows = document.querySelector("[data-tail-events]");
    const MAX_ROWS = 200;
    let socket = null;

    function say(text, refused) {
      state.textContent = text;
      state.className = refused ? "errornote-inline" : "quiet";
    }

    function close() {
      if (socket) {
        socket.onclose = null;
        socket.close(1000);
        socket = null;
      }
      stop.disabled = true;
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      close();
      const subject = form.elements.subject.value.trim();
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      socket = new WebSocket(`${scheme}//${window.location.host}${form.dataset.socketPath}`);
      stop.disabled = false;
      say("Connecting…");
      socket.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        if (frame.type === "ready") {
          socket.send(JSON.stringify({ type: "subscribe", id: "tail", subject }));
        } else if (frame.type === "subscribed") {
          say(`Listening on ${subject}.`);
        } else if (frame.type === "event") {
          addRow(frame);
        } else if (frame.type === "dropped") {
          say(`Listening on ${subject}; ${frame.count} events were dropped (too fast to show).`);
        } else if (frame.type === "error") {
          const error = frame.error || {};
          say(`Refused (${error.code} ${error.type}): ${error.message}`, true);
        }
      };
      socket.onclose = (closing) => {
        socket = null;
        stop.disabled = true;
        if (closing.code === 4401) {
          say("Refused (4401): the socket is not signed in; reload the page and sign in.", true);
        } else {
          say(`Closed (${closing.code}${closing.reason ? `: ${closing.reason}` : ""}).`, closing.code !== 1000);
        }
      };
    });

    stop.addEventListener("click", () => {
      close();
      say("Stopped.");
    });

    function addRow(frame) {
      const row = document.createElement("tr");
      const cells = [
        new Date().toLocaleTimeString(),
        frame.subject,
        frame.correlation_id || "–",
        typeof frame.data === "string" ? frame.data : JSON.stringify(frame.data),
      ];
      for (const [index, text] of cells.entries()) {
        const cell = document.createElement("td");
        const inner = document.createElement(index === 3 ? "pre" : index === 0 ? "span" : "code");
        inner.textContent = text;
        cell.appendChild(inner);
        row.appendChild(cell);
      }
      rows.prepend(row);
      while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const root of document.querySelectorAll("[data-poll-url]")) startPolling(root);
    const rpc = document.querySelector("[data-rpc-console]");
    if (rpc) startRpcConsole(rpc);
    const tail = document.querySelector("[data-event-tail]");
    if (tail) startEventTail(tail);
  });
})();
