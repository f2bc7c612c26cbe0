// The live page (/live/): log in with a username and password, then follow orders over
// /ws/events/. Operators and staff (orders.view_all_orders) subscribe to orders.*; a customer
// subscribes to notifications.user.<own id> and places orders with a "call" frame to
// orders.create_order. The tokens live in this script's memory only: a reload logs out.
"use strict";

(() => {
  const MAX_LOG_ENTRIES = 200;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  // Renew the access token this long before it expires; the server closes the socket (4401)
  // when the token it was given expires.
  const REFRESH_MARGIN_S = 60;
  // Some proxies close a socket that says nothing for a minute.
  const KEEPALIVE_MS = 25000;
  // A socket that stayed up this long starts the backoff afresh when it closes; one closed
  // sooner (refused at once, say) keeps doubling it.
  const STABLE_MS = 10000;
  const CLOSE_NOT_AUTHENTICATED = 4401;
  const CLOSE_REASONS = {
    4400: "too many bad frames",
    4429: "the page fell behind its events",
    1001: "the server went away",
    1006: "the connection was lost",
    1012: "the server restarted",
  };
  // Statuses only move forward, so a late or stale report never undoes a newer one.
  const STATUS_RANK = { pending_payment: 0, paid: 1, payment_failed: 1, cancelled: 1 };

  const $ = (id) => document.getElementById(id);

  // Everything about the signed-in user, in memory only (never localStorage).
  let session = null; // {access, refresh, claims, user}
  let connection = null; // {socket, ready, subscribed, sessionUser}
  let attempt = 0;
  let reconnectTimer = null;
  let refreshTimer = null;
  let keepaliveTimer = null;
  let nextId = 1;
  const pendingCalls = new Map(); // call id -> {resolve, reject}
  const orderRows = new Map(); // order id -> {row, status}

  // Tokens

  function claimsOf(token) {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) =>
      c.charCodeAt(0),
    );
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  async function postJson(url, body) {
    // No cookies: the page's identity is its token, never an admin session of the browser.
    return fetch(url, {
      method: "POST",
      credentials: "omit",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
  }

  async function logIn(event) {
    event.preventDefault();
    showLoginMessage("");
    const form = event.target;
    form.querySelector("button").disabled = true;
    try {
      const response = await postJson("/api/auth/token/", {
        username: $("username").value,
        password: $("password").value,
      });
      if (response.ok) {
        $("password").value = "";
        startSession(await response.json());
      } else if (response.status === 401) {
        showLoginMessage("Wrong username or password.");
      } else if (response.status === 429) {
        showLoginMessage("Too many attempts; wait a minute and try again.");
      } else {
        showLoginMessage(`Logging in failed (HTTP ${response.status}).`);
      }
    } catch {
      showLoginMessage("The server cannot be reached.");
    } finally {
      form.querySelector("button").disabled = false;
    }
  }

  function startSession(tokens) {
    session = { access: tokens.access, refresh: tokens.refresh, claims: claimsOf(tokens.access) };
    attempt = 0;
    $("login-panel").hidden = true;
    $("app").hidden = false;
    scheduleRefresh();
    connect();
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const seconds = session.claims.exp - Date.now() / 1000 - REFRESH_MARGIN_S;
    refreshTimer = setTimeout(refreshAccess, Math.max(5, seconds) * 1000);
  }

  // Trade the refresh token for a new access token and hand it to the open socket, which
  // then lives on. Answers "renewed", "refused" (log in again) or "unreachable".
  async function refreshAccess() {
    const current = session;
    if (!current) return "refused";
    clearTimeout(refreshTimer);
    let response;
    try {
      response = await postJson("/api/auth/token/refresh/", { refresh: current.refresh });
    } catch {
      refreshTimer = setTimeout(refreshAccess, 10000);
      return "unreachable";
    }
    if (current !== session) return "refused"; // logged out meanwhile
    // Refused: the socket closes with 4401 when the access token expires.
    if (!response.ok) return response.status >= 500 ? "unreachable" : "refused";
    const tokens = await response.json();
    session.access = tokens.access;
    session.refresh = tokens.refresh || session.refresh;
    session.claims = claimsOf(tokens.access);
    scheduleRefresh();
    if (connection && connection.ready) send({ type: "auth", token: session.access });
    return "renewed";
  }

  // The socket

  async function connect() {
    clearTimeout(reconnectTimer);
    if (!session) return;
    if (session.claims.exp - Date.now() / 1000 < REFRESH_MARGIN_S) {
      const renewal = await refreshAccess();
      if (renewal === "refused") {
        signOut("Your session expired; log in again.");
        return;
      }
      if (renewal === "unreachable") {
        retryLater("the server cannot be reached");
        return;
      }
      if (!session) return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws/events/`);
    const current = { socket, ready: false, readyAt: 0, subscribed: false, sessionUser: null };
    connection = current;
    setConnection("connecting", "Connecting…");
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: session.access }));
    socket.onmessage = (message) => {
      if (connection === current) receive(current, message.data);
    };
    socket.onclose = (event) => {
      if (connection === current) closed(current, event);
    };
  }

  // Send a frame on the open socket; false when there is none to send it on.
  function send(frame) {
    if (!connection || connection.socket.readyState !== WebSocket.OPEN) return false;
    connection.socket.send(JSON.stringify(frame));
    return true;
  }

  function receive(current, text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "ready":
        ready(current, frame.user);
        break;
      case "subscribed":
        setSubscription(frame.id, "subscribed", "subscribed");
        break;
      case "event":
        showEvent(frame);
        break;
      case "reply":
      case "error":
        settle(frame);
        break;
      case "dropped":
        logNote(`${frame.count} events were dropped while the page was behind.`);
        loadOrders();
        break;
    }
  }

  function ready(current, user) {
    if (user.username !== session.claims.username) {
      // The browser's admin session cookie signed the socket in as someone else; the auth
      // frame that follows is then refused (a socket has one user).
      current.sessionUser = user.username;
      return;
    }
    current.ready = true;
    current.readyAt = current.readyAt || Date.now();
    session.user = user;
    setConnection("connected", `Connected as ${user.username}`);
    $("who-name").textContent = `${user.username} (${user.groups.join(", ") || "no groups"})`;
    $("who").hidden = false;
    if (current.subscribed) return; // a renewed token: the same socket, already set up
    current.subscribed = true;
    $("subscriptions").replaceChildren();
    for (const subject of subjectsFor(user)) {
      const id = `sub-${subject}`;
      addSubscription(id, subject);
      send({ type: "subscribe", id, subject });
    }
    clearInterval(keepaliveTimer);
    keepaliveTimer = setInterval(() => {
      if (connection === current && current.ready) send({ type: "ping" });
    }, KEEPALIVE_MS);
    $("order-panel").hidden = !isCustomer(user);
    // Whatever happened while the socket was down is in the database: read it again.
    loadOrders();
    if (isCustomer(user)) loadStock();
  }

  function closed(current, event) {
    connection = null;
    clearInterval(keepaliveTimer);
    failPendingCalls();
    if (!session) return;
    if (event.code === CLOSE_NOT_AUTHENTICATED) {
      signOut(
        current.sessionUser
          ? `This browser is logged in to the admin as ${current.sessionUser}, and the ` +
              "socket takes that session: log out of the admin, or use a private window."
          : "The server refused your credentials (expired or revoked); log in again.",
      );
      return;
    }
    if (current.readyAt && Date.now() - current.readyAt > STABLE_MS) attempt = 0;
    retryLater(CLOSE_REASONS[event.code] || `closed with code ${event.code}`);
  }

  // Connect again after a backoff that doubles with each failed attempt.
  function retryLater(reason) {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    // Jitter, so that many pages do not all come back at the same moment after a restart.
    const wait = Math.round(delay / 2 + (Math.random() * delay) / 2);
    attempt += 1;
    const text = `Disconnected (${reason}); reconnecting in ${(wait / 1000).toFixed(1)} s`;
    setConnection("reconnecting", text);
    logNote(`${text}.`);
    for (const item of $("subscriptions").children) {
      item.dataset.state = "pending";
      item.querySelector(".state").textContent = "waiting for the connection";
    }
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, wait);
  }

  function signOut(message) {
    const current = connection;
    session = null;
    connection = null;
    clearTimeout(reconnectTimer);
    clearTimeout(refreshTimer);
    clearInterval(keepaliveTimer);
    failPendingCalls();
    if (current) current.socket.close(1000, "logged out");
    orderRows.clear();
    $("orders").tBodies[0].replaceChildren();
    $("orders-empty").hidden = false;
    $("log").replaceChildren();
    $("subscriptions").replaceChildren();
    $("order-result").hidden = true;
    $("email").value = "";
    $("who").hidden = true;
    $("app").hidden = true;
    $("login-panel").hidden = false;
    setConnection("signed-out", "Signed out");
    showLoginMessage(message);
    $("username").focus();
  }

  // Who sees what

  function seesAllOrders(user) {
    return user.is_superuser || user.permissions.includes("orders.view_all_orders");
  }

  function isCustomer(user) {
    return !seesAllOrders(user) && user.permissions.includes("orders.add_order");
  }

  function subjectsFor(user) {
    return seesAllOrders(user) ? ["orders.*"] : [`notifications.user.${user.id}`];
  }

  // Calls

  function call(service, method, data) {
    return new Promise((resolve, reject) => {
      if (!connection || !connection.ready) {
        reject({ code: 503, type: "not_connected", message: "The page is not connected." });
        return;
      }
      const id = `call-${nextId++}`;
      pendingCalls.set(id, { resolve, reject });
      if (!send({ type: "call", id, service, method, data })) {
        pendingCalls.delete(id);
        reject({ code: 503, type: "not_connected", message: "The page is not connected." });
      }
    });
  }

  function settle(frame) {
    const pending = pendingCalls.get(frame.id);
    if (pending) {
      pendingCalls.delete(frame.id);
      if (frame.type === "reply") pending.resolve(frame);
      else pending.reject(frame.error);
    } else if (frame.type === "error" && typeof frame.id === "string" && frame.id.startsWith("sub-")) {
      setSubscription(frame.id, "error", `refused: ${frame.error.message}`);
    } else if (frame.type === "error") {
      logNote(`Error from the server: ${frame.error.message}`);
    }
  }

  function failPendingCalls() {
    for (const pending of pendingCalls.values()) {
      pending.reject({
        code: 503,
        type: "connection_lost",
        message: "The connection closed before the reply came; the order may have been placed.",
      });
    }
    pendingCalls.clear();
  }

  function describeError(error) {
    let text = `${error.message} (${error.code} ${error.type})`;
    const details = error.details;
    if (Array.isArray(details)) {
      text += ": " + details.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    } else if (details && Array.isArray(details.short)) {
      text += ": " + details.short
        .map((line) => `${line.sku}: ${line.requested} requested, ${line.available} available`)
        .join("; ");
    } else if (details) {
      text += `: ${JSON.stringify(details)}`;
    }
    return text;
  }

  // Placing an order (customers)

  async function loadStock() {
    const select = $("sku");
    try {
      const reply = await call("inventory", "get_stock", { skus: [] });
      // What is chosen now, not before the reply: the user may have picked meanwhile.
      const chosen = select.value;
      const options = reply.data.items.map((item) => {
        const option = new Option(
          `${item.sku}: ${item.name}, ${item.price} (${item.quantity_available} available)`,
          item.sku,
        );
        option.disabled = item.quantity_available < 1;
        return option;
      });
      select.replaceChildren(...options);
      if (chosen && options.some((option) => option.value === chosen)) select.value = chosen;
    } catch (error) {
      select.replaceChildren(new Option(`The stock cannot be read: ${error.message}`, ""));
    }
  }

  async function placeOrder(event) {
    event.preventDefault();
    const form = event.target;
    const button = $("place-order");
    const email = $("email").value.trim();
    const data = {
      customer_id: Number(session.user.id),
      customer_email: email,
      lines: [{ sku: $("sku").value, quantity: Number($("quantity").value) }],
      payment_token: form.elements.payment_token.value,
    };
    button.disabled = true;
    showResult("pending", "Placing the order…");
    try {
      const reply = await call("orders", "create_order", data);
      const placed = reply.data;
      showOrder({ ...placed, customer_id: data.customer_id, customer_email: email });
      showResult(
        "placed",
        `Order ${placed.order_id} placed: ${placed.status}, total ${placed.total} ` +
          `(correlation id ${reply.correlation_id}).`,
        { orderId: placed.order_id, correlationId: reply.correlation_id },
      );
      loadStock();
    } catch (error) {
      showResult("error", describeError(error), { correlationId: error.correlation_id });
    } finally {
      button.disabled = false;
    }
  }

  function showResult(outcome, text, { orderId = "", correlationId = "" } = {}) {
    const result = $("order-result");
    result.dataset.outcome = outcome;
    result.dataset.orderId = orderId;
    result.dataset.correlationId = correlationId;
    result.textContent = text;
    result.hidden = false;
  }

  // The orders table

  async function loadOrders() {
    const current = session;
    if (!current) return;
    let page;
    try {
      const response = await fetch("/api/orders/?limit=50", {
        credentials: "omit",
        headers: { Authorization: `Bearer ${current.access}`, Accept: "application/json" },
      });
      if (!response.ok) return; // the table still fills from events
      page = await response.json();
    } catch {
      return;
    }
    if (current !== session) return;
    for (const order of page.results) {
      showOrder({ ...order, order_id: order.id });
    }
    const email = $("email");
    if (!email.value && page.results.length) email.value = page.results[0].customer_email;
  }

  function showOrder(order) {
    const id = Number(order.order_id);
    if (!Number.isInteger(id)) return;
    let entry = orderRows.get(id);
    if (!entry) {
      const row = document.createElement("tr");
      row.dataset.orderId = id;
      for (const name of ["id", "customer", "total", "status", "updated"]) {
        const cell = row.insertCell();
        cell.className = name;
        cell.textContent = "–";
      }
      row.cells[0].textContent = `#${id}`;
      entry = { row, status: null };
      orderRows.set(id, entry);
      // Newest (highest id) first.
      const body = $("orders").tBodies[0];
      const after = [...body.rows].find((other) => Number(other.dataset.orderId) < id);
      body.insertBefore(row, after || null);
      $("orders-empty").hidden = true;
    }
    const { row } = entry;
    if (order.customer_email) {
      row.cells[1].textContent = `${order.customer_email} (${order.customer_id})`;
    }
    if (order.total !== undefined) row.cells[2].textContent = order.total;
    const status = order.status;
    if (status && (entry.status === null || rank(status) >= rank(entry.status))) {
      const changed = entry.status !== null && entry.status !== status;
      entry.status = status;
      const cell = row.cells[3];
      cell.textContent = status.replace(/_/g, " ");
      cell.dataset.status = status;
      row.cells[4].textContent = clock(new Date());
      if (changed) {
        // Restart the highlight animation.
        cell.classList.remove("changed");
        void cell.offsetWidth;
        cell.classList.add("changed");
      }
    }
  }

  function rank(status) {
    return STATUS_RANK[status] ?? 0;
  }

  // The event log

  function showEvent(frame) {
    const data = frame.data;
    let summary = "";
    if (data && typeof data === "object") {
      if (data.order_id !== undefined && data.status) {
        showOrder(data);
        summary = `order #${data.order_id}: ${data.status.replace(/_/g, " ")}`;
      }
      if (data.message) summary = data.message;
    }
    const item = document.createElement("li");
    item.className = "event";
    item.dataset.subject = frame.subject;
    item.dataset.correlationId = frame.correlation_id || "";
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = clock(now);
    const subject = document.createElement("code");
    subject.className = "subject";
    subject.textContent = frame.subject;
    const text = document.createElement("span");
    text.className = "summary";
    text.textContent = summary;
    const correlation = document.createElement("span");
    correlation.className = "correlation-id";
    correlation.title = "correlation id";
    correlation.textContent = frame.correlation_id || "no correlation id";
    const details = document.createElement("details");
    const label = document.createElement("summary");
    label.textContent = "data";
    const body = document.createElement("pre");
    body.textContent = JSON.stringify(data, null, 2);
    details.append(label, body);
    item.append(time, subject, text, correlation, details);
    prependLog(item);
  }

  function logNote(text) {
    const item = document.createElement("li");
    item.className = "note";
    const time = document.createElement("time");
    time.textContent = clock(new Date());
    item.append(time, ` ${text}`);
    prependLog(item);
  }

  function prependLog(item) {
    const log = $("log");
    log.prepend(item);
    while (log.children.length > MAX_LOG_ENTRIES) log.lastElementChild.remove();
  }

  // Small views

  function clock(date) {
    const time = date.toLocaleTimeString([], { hour12: false });
    return `${time}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  }

  function setConnection(state, text) {
    const element = $("connection");
    element.dataset.state = state;
    element.textContent = text;
  }

  function showLoginMessage(text) {
    const element = $("login-error");
    element.textContent = text;
    element.hidden = !text;
  }

  function addSubscription(id, subject) {
    const item = document.createElement("li");
    item.dataset.id = id;
    item.dataset.subject = subject;
    item.dataset.state = "pending";
    const code = document.createElement("code");
    code.textContent = subject;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = "subscribing…";
    item.append(code, " ", state);
    $("subscriptions").append(item);
  }

  function setSubscription(id, state, text) {
    for (const item of $("subscriptions").children) {
      if (item.dataset.id === id) {
        item.dataset.state = state;
        item.querySelector(".state").textContent = text;
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", logIn);
    $("order-form").addEventListener("submit", placeOrder);
    $("logout").addEventListener("click", () => signOut(""));
    $("username").focus();
  });
})();
