/*
 * The demo page: log in as a demo user, show the balance and orders, place test orders and
 * move them at the provider simulator; order and balance events arrive over the WebSocket
 * (PaxyoRealtime, /paxyo-realtime.js) and update the page in place. The webhook panel polls
 * GET /demo/webhooks: what the demo's receiver got from the sender, server to server.
 */
(function () {
  "use strict";

  var TERMINAL = { completed: true, partial: true, canceled: true };
  var TOAST_MS = 8000;
  var MAX_TOASTS = 4;
  var WEBHOOK_POLL_MS = 2000;
  var WEBHOOKS_SHOWN = 12;
  var LAST_ID_KEY = "paxyo-realtime:last-id:"; // the client's own localStorage key

  var userId = null;
  var realtime = null;
  var rows = {}; // order id -> {tr, order}
  var webhookTimer = null;
  var shownDeliveries = null; // event id -> true, to highlight new ones (none on the first view)

  function $(id) { return document.getElementById(id); }

  function request(method, path, body) {
    return fetch(path, {
      method: method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) throw new Error(data && data.error ? data.error : response.statusText);
        return data;
      });
    });
  }

  // -- money stays a decimal string, added exactly (never a float) -------------------------

  function addMoney(a, b) {
    var places = Math.max(decimals(a), decimals(b));
    var text = (units(a, places) + units(b, places)).toString().padStart(places + 1, "0");
    return places ? text.slice(0, -places) + "." + text.slice(-places) : text;
  }
  function decimals(x) { var i = String(x).indexOf("."); return i < 0 ? 0 : String(x).length - i - 1; }
  function units(x, places) {
    var parts = String(x).split(".");
    return BigInt(parts[0] + (parts[1] || "").padEnd(places, "0"));
  }
  function positive(x) { return /[1-9]/.test(String(x)); }

  // -- rendering -----------------------------------------------------------------------------

  function setBalance(balance) {
    var el = $("balance");
    if (balance == null) { el.textContent = "–"; return; }
    if (el.textContent === "$" + balance) return;
    el.textContent = "$" + balance;
    el.classList.remove("flash");
    void el.offsetWidth; // restart the highlight
    el.classList.add("flash");
    setTimeout(function () { el.classList.remove("flash"); }, 1200);
  }

  function cell(tr, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    if (text != null) td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function renderRow(order) {
    var tr = document.createElement("tr");
    tr.dataset.orderId = order.id;
    cell(tr, "#" + order.id);
    var status = document.createElement("span");
    status.className = "status";
    cell(tr).appendChild(status);
    cell(tr, null, "num remains");
    cell(tr, "$" + order.charge, "num");
    cell(tr, null, "num refunded");
    var actions = cell(tr, null, "actions");
    [["cancel", "Cancel"], ["partial", "Partial"], ["complete", "Complete"]].forEach(function (a) {
      var button = document.createElement("button");
      button.type = "button";
      button.dataset.action = a[0];
      button.textContent = a[1];
      button.addEventListener("click", function () { simulate(order.id, a[0], button); });
      actions.appendChild(button);
    });
    rows[order.id] = { tr: tr, order: order };
    fillRow(order.id);
    return tr;
  }

  function fillRow(id) {
    var row = rows[id];
    var order = row.order;
    var status = row.tr.querySelector(".status");
    status.textContent = order.status;
    status.dataset.status = order.status.toLowerCase();
    row.tr.querySelector(".remains").textContent = order.remains + " / " + order.quantity;
    row.tr.querySelector(".refunded").textContent = "$" + order.refunded;
    if (TERMINAL[order.status.toLowerCase()] === true) { // final: nothing left to press
      var actions = row.tr.querySelector(".actions");
      if (!actions.querySelector(".final")) {
        actions.textContent = "";
        var text = document.createElement("span");
        text.className = "final muted small";
        text.textContent = "final";
        actions.appendChild(text);
      }
    }
  }

  function renderOrders(orders) {
    var body = $("orders").querySelector("tbody");
    body.textContent = "";
    rows = {};
    orders.forEach(function (order) { body.appendChild(renderRow(order)); });
    $("empty").hidden = orders.length > 0;
  }

  function toast(text, kind) {
    var el = document.createElement("div");
    el.className = "toast" + (kind ? " " + kind : "");
    el.textContent = text;
    var box = $("toasts");
    box.appendChild(el);
    while (box.children.length > MAX_TOASTS) box.firstChild.remove();
    setTimeout(function () { el.remove(); }, TOAST_MS);
  }

  function note(text) { $("note").textContent = text; }

  // -- data ----------------------------------------------------------------------------------

  function reloadOrders() {
    if (userId == null) return Promise.resolve();
    var forUser = userId;
    return request("GET", "/demo/users/" + forUser + "/orders").then(function (data) {
      if (forUser !== userId) return;
      setBalance(data.balance);
      renderOrders(data.orders);
    }, function (error) { note("Could not load orders: " + error.message); });
  }

  function onOrder(event) {
    // Toast what the user cares about: money back and finished orders, not every step (an
    // order's own placement or falling remains just update its row).
    var status = event.status.toLowerCase();
    if (positive(event.refund)) {
      toast("Order #" + event.order_id + " " + status + ": $" + event.refund + " refunded", "refund");
    } else if (status === "completed" && event.previous_status !== event.status) {
      toast("Order #" + event.order_id + " completed", "done");
    }
    setBalance(event.balance);
    var row = rows[event.order_id];
    if (!row) { reloadOrders(); return; } // placed elsewhere: fetch it
    row.order.status = event.status;
    if (event.remains != null) row.order.remains = event.remains;
    row.order.refunded = addMoney(row.order.refunded, event.refund);
    fillRow(event.order_id);
    row.tr.classList.remove("changed");
    void row.tr.offsetWidth;
    row.tr.classList.add("changed");
  }

  function onBalance(event) {
    setBalance(event.balance);
    toast("Balance updated: $" + event.balance);
  }

  // -- webhook deliveries (server to server) ---------------------------------------------------

  function pollWebhooks() {
    return request("GET", "/demo/webhooks").then(renderWebhooks, function () { /* next time */ });
  }

  function renderWebhooks(data) {
    var body = $("webhooks").querySelector("tbody");
    var fresh = {};
    body.textContent = "";
    data.deliveries.slice(0, WEBHOOKS_SHOWN).forEach(function (d) {
      var tr = document.createElement("tr");
      tr.dataset.eventId = d.event_id;
      if (d.order_id != null) tr.dataset.orderId = d.order_id;
      if (d.user_id === userId) tr.className = "mine";
      if (shownDeliveries && !shownDeliveries[d.event_id]) tr.classList.add("changed");
      fresh[d.event_id] = true;
      cell(tr, new Date(d.received_at).toLocaleTimeString(), "num");
      cell(tr, d.event_id + (d.deliveries > 1 ? " (×" + d.deliveries + ")" : ""), "num small");
      cell(tr, d.type);
      cell(tr, d.user_id == null ? "" : String(d.user_id));
      cell(tr, d.order_id == null ? "" : "#" + d.order_id);
      cell(tr, d.status || "", "wh-status");
      cell(tr, d.refund && positive(d.refund) ? "$" + d.refund : "–", "num wh-refund");
      cell(tr, d.balance == null ? "" : "$" + d.balance, "num");
      body.appendChild(tr);
    });
    shownDeliveries = fresh;
    $("no-webhooks").hidden = data.deliveries.length > 0;
    $("webhooks").hidden = data.deliveries.length === 0;
    $("refused").textContent = data.refused ? data.refused + " refused (bad signature or body)." : "";
  }

  function watchWebhooks() {
    $("webhooks-card").hidden = false;
    if (webhookTimer == null) {
      pollWebhooks();
      webhookTimer = setInterval(pollWebhooks, WEBHOOK_POLL_MS);
    }
  }

  function onStatus(state) {
    var pill = $("connection");
    pill.dataset.state = state;
    pill.textContent = state;
  }

  // -- actions -------------------------------------------------------------------------------

  function login(id) {
    if (realtime) realtime.close();
    realtime = null;
    userId = id;
    document.querySelectorAll("button.user").forEach(function (b) {
      b.classList.toggle("active", Number(b.dataset.user) === id);
    });
    return request("POST", "/demo/login", { user_id: id }).then(function (data) {
      if (userId !== id) return;
      $("who").textContent = "logged in as user " + id;
      $("account").hidden = false;
      $("orders-card").hidden = false;
      if (data.poll_interval) $("poll").textContent = "every " + data.poll_interval + " s";
      watchWebhooks();
      note("");
      // Every demo run starts with a new database, so an event id remembered from an earlier
      // run means nothing now: start fresh (the hello then asks for a reload over HTTP).
      try { localStorage.removeItem(LAST_ID_KEY + id); } catch (e) { /* no storage */ }
      reloadOrders();
      realtime = PaxyoRealtime.connect({
        token: data.token,
        onHello: function (hello) { setBalance(hello.balance); },
        onOrder: onOrder,
        onBalance: onBalance,
        onReload: reloadOrders,
        onStatus: onStatus,
      });
    }, function (error) { note("Login failed: " + error.message); });
  }

  function simulate(orderId, action, button) {
    button.disabled = true;
    request("POST", "/demo/orders/" + orderId + "/simulate", { action: action }).then(
      function (reply) {
        note("Simulator: order #" + orderId + " is now " + reply.status + " at the provider; " +
             "the next status check picks it up.");
      },
      function (error) {
        button.disabled = false;
        note("Simulate failed: " + error.message);
      });
  }

  function placeOrder(event) {
    event.preventDefault();
    var button = $("place-button");
    button.disabled = true;
    request("POST", "/demo/orders", {
      user_id: userId, quantity: Number($("quantity").value), service: Number($("service").value),
    }).then(function (order) {
      note("Placed order #" + order.id + " (provider order " + order.provider_order_id + ").");
      if (!rows[order.id]) {
        var body = $("orders").querySelector("tbody");
        body.insertBefore(renderRow(order), body.firstChild);
        $("empty").hidden = true;
      }
    }, function (error) {
      note("Order not placed: " + error.message);
    }).then(function () { button.disabled = false; });
  }

  function showCharge() { // $10.00 per 1000 is one cent a unit
    var cents = Math.max(0, Math.floor(Number($("quantity").value) || 0));
    $("charge").textContent = "$" + Math.floor(cents / 100) + "." + String(cents % 100).padStart(2, "0");
  }

  document.querySelectorAll("button.user").forEach(function (button) {
    button.addEventListener("click", function () { login(Number(button.dataset.user)); });
  });
  $("place").addEventListener("submit", placeOrder);
  $("quantity").addEventListener("input", showCharge);
  showCharge();
})();
