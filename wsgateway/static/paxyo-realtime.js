/*
 * Paxyo Realtime browser client. Plain JavaScript, no build step.
 *
 *   const rt = PaxyoRealtime.connect({
 *     url: "/ws",             // default: /ws on this page's host, ws: or wss: like the page
 *     token: "<JWT>",         // from the panel
 *     lastId: "...",          // optional; default: remembered in localStorage per user
 *     getToken: () => fetch("/token").then(r => r.text()),  // optional: refresh a token
 *     onHello(hello) {}, onOrder(event) {}, onBalance(event) {},
 *     onReload() {},          // history could not fill the gap: reload state over HTTP
 *     onStatus(state) {},     // "connecting" | "connected" | "reconnecting" | "unauthorized" | "closed"
 *   });
 *   rt.close();
 *
 * Event ids are zero-padded, so a longer or (same length) larger string is a later event.
 * Events at or below the last one seen are ignored, so a replay overlapping what was already
 * shown changes nothing. Reconnects use exponential backoff with full jitter (500 ms base,
 * 30 s cap), reset after each successful hello. Close code 4001 (or a refused handshake when
 * getToken is given) asks for a new token; 4400 is final; every other close reconnects.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root);
  if (typeof module === "object" && module && module.exports) {
    module.exports = api;
  }
  if (root) {
    root.PaxyoRealtime = api;
  }
})(typeof window !== "undefined" ? window : typeof globalThis !== "undefined" ? globalThis : this,
  function (root) {
  "use strict";

  var BASE_DELAY_MS = 500;
  var MAX_DELAY_MS = 30000;
  var CLOSE_UNAUTHORIZED = 4001;
  var CLOSE_BAD_REQUEST = 4400;
  var STORAGE_PREFIX = "paxyo-realtime:last-id:";

  function noop() {}

  function isLater(a, b) {
    if (!b) return true;
    if (a.length !== b.length) return a.length > b.length;
    return a > b;
  }

  function socketUrl(url) {
    var loc = root && root.location;
    var scheme = loc && loc.protocol === "https:" ? "wss:" : "ws:";
    if (!url) url = "/ws";
    if (/^wss?:\/\//i.test(url)) return url;
    if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, "ws");
    if (!loc) throw new Error("PaxyoRealtime: give an absolute url outside a browser");
    return scheme + "//" + loc.host + (url.charAt(0) === "/" ? url : "/" + url);
  }

  function userOf(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var sub = JSON.parse(root.atob(part)).sub;
      return sub ? String(sub) : null;
    } catch (e) {
      return null;
    }
  }

  function storage() {
    try {
      return root && root.localStorage ? root.localStorage : null;
    } catch (e) {
      return null;
    }
  }

  function connect(options) {
    options = options || {};
    var base = socketUrl(options.url);
    var token = options.token;
    var onHello = options.onHello || noop;
    var onOrder = options.onOrder || noop;
    var onBalance = options.onBalance || noop;
    var onReload = options.onReload || noop;
    var onStatus = options.onStatus || noop;
    var onEvent = options.onEvent || noop;
    var userId = options.userId != null ? String(options.userId) : userOf(token);
    var lastId = options.lastId || load();
    var socket = null;
    var timer = null;
    var attempt = 0;
    var stopped = false;
    var state = null;

    function key() {
      return userId ? STORAGE_PREFIX + userId : null;
    }

    function load() {
      var store = storage();
      try {
        return store && key() ? store.getItem(key()) : null;
      } catch (e) {
        return null;
      }
    }

    function remember(id) {
      lastId = id;
      var store = storage();
      try {
        if (store && key()) {
          if (id) store.setItem(key(), id);
          else store.removeItem(key());
        }
      } catch (e) { /* storage full or denied: keep it in memory */ }
    }

    function setStatus(next) {
      if (next === state) return;
      state = next;
      onStatus(next);
    }

    function open() {
      timer = null;
      if (stopped) return;
      setStatus(attempt ? "reconnecting" : "connecting");
      var url = base + (base.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(token);
      if (lastId) url += "&last_id=" + encodeURIComponent(lastId);
      var ws = new root.WebSocket(url);
      var opened = false;
      socket = ws;
      ws.onopen = function () {
        opened = true;
        console.log("WebSocket connected");
      };
      ws.onmessage = function (message) {
        if (ws === socket) receive(message.data);
      };
      ws.onerror = noop; // onclose follows and decides
      ws.onclose = function (event) {
        if (ws !== socket) return;
        socket = null;
        closed(event.code, opened);
      };
    }

    function receive(data) {
      var message;
      try {
        message = JSON.parse(data);
      } catch (e) {
        return;
      }
      if (!message || typeof message !== "object") return;
      if (message.type === "hello") {
        hello(message);
        return;
      }
      if (typeof message.id !== "string") return; // e.g. {"type":"pong"}
      if (lastId && !isLater(message.id, lastId)) return; // already seen
      remember(message.id);
      if (message.type === "order.updated") onOrder(message);
      else if (message.type === "balance.updated") onBalance(message);
      else onEvent(message);
    }

    function hello(message) {
      attempt = 0;
      if (message.user_id != null && String(message.user_id) !== userId) {
        userId = String(message.user_id);
      }
      setStatus("connected");
      if (!message.recovered) {
        // The gap could not be replayed: start over from the server's latest id.
        remember(message.last_id || null);
      }
      onHello(message);
      if (!message.recovered) onReload();
    }

    function closed(code, opened) {
      if (stopped) {
        setStatus("closed");
        return;
      }
      if (code === CLOSE_BAD_REQUEST) {
        stopped = true;
        setStatus("closed");
        return;
      }
      if (code === CLOSE_UNAUTHORIZED || (!opened && options.getToken)) {
        refreshToken(code === CLOSE_UNAUTHORIZED);
        return;
      }
      schedule();
    }

    function refreshToken(final) {
      if (final) setStatus("unauthorized");
      if (!options.getToken) {
        stopped = true;
        return;
      }
      var waitFor = schedule;
      Promise.resolve()
        .then(function () { return options.getToken(); })
        .then(function (fresh) {
          if (stopped) return;
          if (fresh) {
            token = fresh;
            var user = options.userId != null ? String(options.userId) : userOf(fresh);
            if (user && user !== userId) {
              userId = user;
              lastId = load();
            }
            waitFor();
          } else if (final) {
            stopped = true;
          } else {
            waitFor();
          }
        }, function () {
          if (stopped) return;
          if (final) setStatus("unauthorized");
          waitFor();
        });
    }

    function schedule() {
      if (stopped || timer) return;
      var ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, attempt));
      attempt += 1;
      setStatus("reconnecting");
      timer = setTimeout(open, Math.floor(Math.random() * ceiling));
    }

    open();

    return {
      close: function () {
        stopped = true;
        if (timer) clearTimeout(timer);
        timer = null;
        if (socket) {
          var ws = socket;
          socket = null;
          ws.close(1000);
        }
        setStatus("closed");
      },
      get lastId() {
        return lastId;
      },
      get state() {
        return state;
      },
    };
  }

  return { connect: connect, isLater: isLater };
});
