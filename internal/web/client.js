// pushctl.js: the browser client of a pushctl broker. No dependencies, no
// build step: the broker serves this file as /pushctl.js (a classic script
// defining the global `pushctl`) and /pushctl.mjs (an ES module).
//
//   const p = pushctl.connect("https://push.example.com", {token});
//   const room = p.subscribe("room.7");
//   room.bind("new_message", (data, msg) => show(data));
//   await room.publish("typing", {user: "ada"});
//
// Transports: WebSocket, then Server-Sent Events, then long-poll, chosen at
// connect time and again after repeated failures. Every transport resumes
// from the last message handled, so nothing the broker still holds is lost
// across a reconnect or a transport switch, and nothing is delivered twice.

const TRANSPORTS = ["websocket", "sse", "longpoll"];
const FATAL = new Set(["token_missing", "token_invalid", "forbidden", "invalid_channel", "origin_not_allowed", "hook_denied"]);

function isPattern(name) {
  return name.split(".").some((s) => s === "*" || s === ">");
}

function matches(pattern, name) {
  const p = pattern.split("."), n = name.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return n.length > i;
    if (i >= n.length || (p[i] !== "*" && p[i] !== n[i])) return false;
  }
  return p.length === n.length;
}

function parseID(id) {
  const i = id.lastIndexOf("-");
  return { epoch: id.slice(0, i), seq: Number(id.slice(i + 1)), id };
}

// parseCursor reads what the broker hands out: "ch=<id>,…[,*=<time>]", or
// a bare id for a single channel.
function parseCursor(s, names) {
  const out = { pos: new Map(), since: "" };
  if (!s) return out;
  if (!s.includes("=")) {
    if (names.length === 1 && !isPattern(names[0])) out.pos.set(names[0], s);
    return out;
  }
  for (const part of s.split(",")) {
    const i = part.indexOf("=");
    if (i < 0) continue;
    const k = part.slice(0, i), v = part.slice(i + 1);
    if (k === "*") out.since = v;
    else out.pos.set(k, v);
  }
  return out;
}

function base64ToBytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function bytesToBase64(b) {
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return btoa(s);
}

// PushctlError is what a failed publish rejects with, and the reason of a
// "disconnected" state: a stable code (docs/errors.md) and a message.
class PushctlError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.name = "PushctlError";
    this.code = code;
    this.status = status || 0;
  }
}

class Emitter {
  constructor() { this._handlers = new Map(); }
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    if (!fn) this._handlers.delete(event);
    else if (this._handlers.has(event)) this._handlers.get(event).delete(fn);
    return this;
  }
  _emit(event, ...args) {
    for (const fn of [...(this._handlers.get(event) || [])]) {
      try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}

// Channel is one subscription: a channel name or a pattern.
class Channel extends Emitter {
  constructor(client, name) {
    super();
    this.client = client;
    this.name = name;
    this.pattern = isPattern(name);
    this._binds = new Map();
    this._all = new Set();
    this.subscribed = false;
  }
  // bind calls fn(data, message) for every message with this event name
  // ("message" when published without one).
  bind(event, fn) {
    if (!this._binds.has(event)) this._binds.set(event, new Set());
    this._binds.get(event).add(fn);
    return this;
  }
  // bindAll calls fn(event, data, message) for every message.
  bindAll(fn) { this._all.add(fn); return this; }
  // unbind removes fn from event, every handler of event, or (no
  // arguments) every handler.
  unbind(event, fn) {
    if (event === undefined) { this._binds.clear(); this._all.clear(); }
    else if (fn === undefined) this._binds.delete(event);
    else if (this._binds.has(event)) this._binds.get(event).delete(fn);
    return this;
  }
  unbindAll(fn) { if (fn) this._all.delete(fn); else this._all.clear(); return this; }
  // publish sends an event to this channel; the promise resolves with the
  // broker's ack ({id, seq, subscribers}) or rejects with a PushctlError.
  publish(event, data) {
    if (this.pattern) return Promise.reject(new PushctlError("invalid_channel", "patterns cannot be published to"));
    return this.client.publish(this.name, event, data);
  }
  unsubscribe() { this.client.unsubscribe(this.name); }
  _deliver(msg) {
    for (const fn of [...(this._binds.get(msg.event) || [])]) safeCall(fn, msg.data, msg);
    for (const fn of [...this._all]) safeCall(fn, msg.event, msg.data, msg);
  }
}

// Consumer is one durable consumer read by this client: on("gap") for
// messages it could not keep, on("error") when the broker refuses it.
class Consumer extends Emitter {
  constructor(client, name, options, handler) {
    super();
    this.client = client;
    this.name = name;
    this.options = options;
    this.handler = handler;
    this.consuming = false;
  }
  // stop ends the consuming; deliveries being handled are still answered,
  // any that arrive meanwhile are handed back. The promise resolves once
  // the broker stopped pushing (or the connection is gone).
  stop() {
    if (this.client._consumers.get(this.name) !== this) return Promise.resolve();
    this.client._consumers.delete(this.name);
    this.consuming = false;
    const t = this.client._t;
    if (!(t && t.canPublish() && t.consume)) return Promise.resolve();
    return new Promise((resolve) => {
      t.stopping.set(this.name, resolve);
      t.send({ type: "unconsume", ref: "u:" + this.name, consumer: this.name });
    });
  }
  _frame() {
    const f = { type: "consume", ref: "c:" + this.name, consumer: this.name, max: this.options.max || 1 };
    for (const k of ["channel", "ack_wait", "max_deliveries", "start"]) if (this.options[k] !== undefined) f[k] = this.options[k];
    return f;
  }
  _deliver(f) {
    let data = f.data;
    if (f.encoding === "base64" && typeof data === "string") data = base64ToBytes(data);
    const msg = { channel: f.channel, id: f.id, seq: f.seq, event: f.event || "message", data, time: f.time,
      delivery: f.delivery, deliveries: f.deliveries };
    const answer = (frame) => {
      // On whichever connection is open now: acks work on any.
      const t = this.client._t;
      if (t && t.consume && t.canPublish()) t.send(frame);
    };
    Promise.resolve().then(() => this.handler(msg.data, msg)).then(
      () => answer({ type: "ack", consumer: this.name, ids: [f.delivery] }),
      (e) => {
        const nack = { type: "nack", consumer: this.name, ids: [f.delivery] };
        if (e && typeof e.delay === "string") nack.delay = e.delay;
        answer(nack);
      });
  }
}

function safeCall(fn, ...args) {
  try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
}

// Client is a connection to one broker, over whichever transport works.
class Client extends Emitter {
  constructor(url, options) {
    super();
    const o = Object.assign({
      transports: TRANSPORTS, minBackoff: 250, maxBackoff: 15000, failuresBeforeFallback: 3,
      pollTimeout: "25s", pingInterval: 25000,
    }, options || {});
    this.options = o;
    let u = String(url || (typeof location !== "undefined" ? location.origin : "")).replace(/\/+$/, "");
    u = u.replace(/^ws(s?):/, "http$1:");
    this.url = u;
    this.transports = o.transports.filter((t) => TRANSPORTS.includes(t));
    if (!this.transports.length) throw new PushctlError("invalid_parameter", "no known transport in " + o.transports);
    this.state = "connecting";
    this.transport = "";
    this._channels = new Map(); // name -> Channel
    this._pos = new Map(); // channel -> {epoch, seq, id}: the last message handled
    this._since = new Map(); // pattern -> broker time from which unseen channels replay
    this._ti = 0;
    this._fails = 0;
    this._attempt = 0;
    this._everConnected = false;
    this._closed = false;
    this._tokenValue = typeof o.token === "string" ? o.token : "";
    this._refresh = typeof o.token === "function";
    this._t = null;
    this._timer = null;
    this._ref = 0;
    this._consumers = new Map(); // name -> Consumer
    setTimeout(() => this._connect(), 0);
  }

  // subscribe returns the Channel for a name or pattern (the same object
  // when called again).
  subscribe(name) {
    let ch = this._channels.get(name);
    if (ch) return ch;
    ch = new Channel(this, name);
    this._channels.set(name, ch);
    if (this._t) this._t.subscribe(name);
    return ch;
  }

  unsubscribe(name) {
    if (!this._channels.delete(name)) return;
    if (this._t) this._t.unsubscribe(name);
  }

  channel(name) { return this._channels.get(name); }

  // consume reads the durable consumer name (docs/consumers.md) over the
  // WebSocket transport: handler(data, msg) is called for each delivery
  // (msg.delivery, msg.deliveries: its id and how many times it came);
  // when it returns (or its promise resolves) the delivery is
  // acknowledged, when it throws (or rejects) it is refused and comes
  // again (after error.delay, such as "10s", when set). options: channel
  // (a consumer that does not exist yet is created on it), max (how many
  // deliveries are handled at once, default 1), and for a new consumer
  // ack_wait, max_deliveries, start. At least once: a delivery whose ack
  // was lost comes again.
  consume(name, options, handler) {
    if (this._consumers.has(name)) throw new PushctlError("invalid_parameter", "this client consumes " + name + " already");
    const c = new Consumer(this, name, options || {}, handler);
    this._consumers.set(name, c);
    if (this._t && this._t.consume) this._t.consume(c);
    return c;
  }

  // publish sends event with data (a string is text, a Uint8Array is
  // binary, anything else is JSON) on the transport's connection, or over
  // HTTP when the transport only receives.
  publish(channel, event, data) {
    // Behind publishes being sent again after a lost connection: in order.
    if (this._resend) return this._resend.then(() => this.publish(channel, event, data));
    if (this._t && this._t.canPublish()) return this._t.publish(channel, event, data);
    return this._httpPublish(channel, event, data);
  }

  // close ends the connection for good.
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this._t) this._t.close();
    this._t = null;
    this._setState("disconnected", { reason: "closed" });
  }

  _setState(state, extra) {
    this.state = state;
    this._emit("state", Object.assign({ state, transport: this.transport }, extra || {}));
    this._emit(state, Object.assign({ transport: this.transport }, extra || {}));
  }

  async _token() {
    if (typeof this.options.token === "function" && (this._refresh || !this._tokenValue)) {
      this._tokenValue = String(await this.options.token());
      this._refresh = false;
    }
    return this._tokenValue;
  }

  // resume is the cursor that continues names after what was handled:
  // each channel's last id, and for patterns the time for unseen channels.
  _resume(names) {
    const parts = [];
    let since = "";
    for (const [ch, p] of this._pos) {
      if (names.some((n) => n === ch || (isPattern(n) && matches(n, ch)))) parts.push(ch + "=" + p.id);
    }
    for (const n of names) {
      let s = this._since.get(n);
      // A pattern the broker has not started yet starts now: the broker
      // refuses a cursor that names channels without saying from when the
      // pattern's other channels replay (this clock's now replays nothing
      // or the last few moments, never loses).
      if (!s && isPattern(n) && parts.length) s = new Date().toISOString();
      if (s && (!since || s < since)) since = s;
    }
    parts.sort();
    if (since) parts.push("*=" + since);
    return parts.join(",");
  }

  _connect() {
    if (this._closed) return;
    let name = this.transports[this._ti];
    while (!available(name)) {
      const next = (this._ti + 1) % this.transports.length;
      if (next === 0 && this._ti !== 0 && !this.transports.some(available)) {
        this._setState("disconnected", { reason: "no_transport", error: new PushctlError("no_transport", "no transport is available in this browser") });
        return;
      }
      this._fallback(name, next, "unavailable");
      name = this.transports[this._ti];
    }
    this.transport = name;
    if (this._attempt === 0) this._setState("connecting");
    const T = { websocket: WSTransport, sse: SSETransport, longpoll: PollTransport }[name];
    this._t = new T(this);
    this._t.open();
  }

  _fallback(from, next, reason) {
    this._ti = next;
    this._fails = 0;
    this._emit("state", { state: "fallback", transport: this.transports[next], from, to: this.transports[next], reason });
    this._emit("fallback", { from, to: this.transports[next], reason });
  }

  _onOpen(t) {
    if (t !== this._t) return;
    this._fails = 0;
    this._attempt = 0;
    this._everConnected = true;
    this._setState("connected");
  }

  // _onMessage hands a message envelope to every matching subscription,
  // once: a copy that comes again (a second matching subscription, a
  // resume) is dropped by its position.
  _onMessage(t, env) {
    if (t !== this._t) return;
    const p = parseID(env.id);
    const last = this._pos.get(env.channel);
    if (last && last.epoch === p.epoch && p.seq <= last.seq) return;
    this._pos.set(env.channel, p);
    let data = env.data;
    if (env.encoding === "base64" && typeof data === "string") data = base64ToBytes(data);
    const msg = { channel: env.channel, id: env.id, seq: env.seq, event: env.event || "message", data, time: env.time };
    for (const ch of [...this._channels.values()]) {
      if (ch.name === env.channel || (ch.pattern && matches(ch.name, env.channel))) ch._deliver(msg);
    }
    this._emit("message", msg);
  }

  _onGap(t, g) {
    if (t !== this._t) return;
    this._pos.set(g.channel, parseID(g.to));
    const gap = { channel: g.channel, from: g.from, to: g.to };
    for (const ch of [...this._channels.values()]) {
      if (ch.name === g.channel || (ch.pattern && matches(ch.name, g.channel))) ch._emit("gap", gap);
    }
    this._emit("gap", gap);
  }

  // _onCursor records where a subscription starts: positions for channels
  // not seen yet, and a pattern's time (the earliest one is kept).
  _onCursor(t, cursor, names) {
    if (t !== this._t || !cursor) return;
    const c = parseCursor(cursor, names);
    for (const [ch, id] of c.pos) if (!this._pos.has(ch)) this._pos.set(ch, parseID(id));
    if (c.since) {
      for (const n of names) if (isPattern(n) && !this._since.has(n)) this._since.set(n, c.since);
    }
    for (const n of names) { const ch = this._channels.get(n); if (ch) ch.subscribed = true; }
  }

  _onUnsubscribed(t, names, code, message) {
    if (t !== this._t) return;
    for (const n of names) {
      const ch = this._channels.get(n);
      if (!ch) continue;
      ch.subscribed = false;
      if (code) ch._emit("error", new PushctlError(code, message));
    }
  }

  // _onClose: the transport ended. reason is a code (docs/errors.md) or
  // "network"; opened says whether it had connected.
  _onClose(t, reason, opened, message) {
    if (t !== this._t || this._closed) return;
    reason = reason || "network";
    this._t = null;
    if (typeof this.options.token === "function" && reason.startsWith("token_")) this._refresh = true;
    if (FATAL.has(reason) && typeof this.options.token !== "function") {
      this._setState("disconnected", { reason, error: new PushctlError(reason, message) });
      return;
    }
    const name = this.transports[this._ti];
    if (!opened && reason === "network") {
      this._fails++;
      const limit = this._everConnected ? this.options.failuresBeforeFallback : 1;
      if (this.transports.length > 1 && this._fails >= limit) {
        this._fallback(name, (this._ti + 1) % this.transports.length, reason);
      }
    }
    this._attempt++;
    const ceil = Math.min(this.options.maxBackoff, this.options.minBackoff * 2 ** Math.min(this._attempt - 1, 16));
    const delay = Math.round(ceil / 2 + Math.random() * ceil / 2);
    this._setState("reconnecting", { attempt: this._attempt, delay, reason, error: message ? new PushctlError(reason, message) : undefined });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  // _credentials: cookies go with requests to the broker's origin, and to
  // another origin of the site with withCredentials (the broker must list
  // the page's origin in --allowed-origins).
  _credentials() { return this.options.withCredentials ? "include" : "same-origin"; }

  _subURL(names, params) {
    const q = new URLSearchParams(params);
    return this.url + "/sub/" + names.map(encodeURIComponent).join(",") + "?" + q.toString();
  }

  async _httpPublish(channel, event, data, key) {
    const headers = { "Idempotency-Key": key || newKey() };
    const token = await this._token();
    if (token) headers.Authorization = "Bearer " + token;
    let body = data;
    if (data instanceof Uint8Array || data instanceof ArrayBuffer) headers["Content-Type"] = "application/octet-stream";
    else if (typeof data !== "string") { body = JSON.stringify(data === undefined ? null : data); headers["Content-Type"] = "application/json"; }
    else headers["Content-Type"] = "text/plain; charset=utf-8";
    const q = event ? "?event=" + encodeURIComponent(event) : "";
    const resp = await fetch(this.url + "/pub/" + encodeURIComponent(channel) + q, { method: "POST", headers, body, credentials: this._credentials() });
    const reply = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const e = reply.error || {};
      if (e.code === "token_expired") this._refresh = true;
      throw new PushctlError(e.code || "http_" + resp.status, e.message, resp.status);
    }
    return ackOf(reply);
  }
}

// newKey is a random idempotency key: a publish sent again with it (after
// its connection was lost before the ack) is stored once.
function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ackOf is what a publish resolves with.
function ackOf(a) {
  const ack = { channel: a.channel, id: a.id, seq: a.seq, subscribers: a.subscribers };
  if (a.duplicate) ack.duplicate = true;
  return ack;
}

function available(name) {
  const g = typeof globalThis !== "undefined" ? globalThis : window;
  if (name === "websocket") return typeof g.WebSocket === "function";
  if (name === "sse") return typeof g.EventSource === "function";
  return typeof g.fetch === "function";
}

// WSTransport speaks the pushctl WebSocket protocol: one connection for
// every subscription, and publishes with acks.
class WSTransport {
  constructor(c) {
    this.c = c;
    this.opened = false;
    this.ready = false;
    this.pending = new Map();
    this.stopping = new Map(); // consumer name -> resolve of its stop()
    this.ping = null;
    this.lastFrame = 0;
  }
  open() {
    const c = this.c;
    const ws = new WebSocket(c.url.replace(/^http/, "ws") + "/ws");
    this.ws = ws;
    ws.onopen = async () => {
      this.opened = true;
      this.lastFrame = Date.now();
      try {
        const token = await c._token();
        if (token) { this.send({ type: "auth", ref: "auth", token }); return; } // subscriptions follow its reply
      } catch (e) {
        this.fail("token_missing", "the token function failed: " + e);
        return;
      }
      this.start();
    };
    ws.onmessage = (e) => this.frame(e.data);
    ws.onclose = (e) => {
      clearInterval(this.ping);
      // A reason is a code, or "code: message" (the application's hook
      // refused, 4403, or did not answer, 4503).
      const m = /^([a-z_]+): ([\s\S]*)$/.exec(e.reason || "");
      const reason = m ? m[1] : e.reason || (e.code === 4001 ? "token_expired" : e.code === 1001 ? "shutting_down" : "network");
      this.end(reason, this.ready, m ? m[2] : undefined);
    };
    this.ping = setInterval(() => {
      if (Date.now() - this.lastFrame > 2 * c.options.pingInterval) { ws.close(); this.end("network", this.ready); return; }
      if (this.ready) this.send({ type: "ping" });
    }, c.options.pingInterval);
  }
  start() {
    this.ready = true;
    for (const name of this.c._channels.keys()) this.subscribe(name);
    for (const cons of this.c._consumers.values()) this.consume(cons);
    this.c._onOpen(this);
  }
  consume(cons) { if (this.ready) this.send(cons._frame()); }
  stopped(name) {
    const resolve = this.stopping.get(name);
    this.stopping.delete(name);
    if (resolve) resolve();
  }
  send(f) { if (this.ws.readyState === 1) this.ws.send(JSON.stringify(f)); }
  subscribe(name) {
    if (!this.ready) return;
    const f = { type: "subscribe", ref: "s:" + name, channels: [name] };
    if (this.c.options.echo === false) f.echo = false;
    const since = this.c._resume([name]);
    if (since) f.since = since;
    this.send(f);
  }
  unsubscribe(name) { if (this.ready) this.send({ type: "unsubscribe", channels: [name] }); }
  canPublish() { return this.ready; }
  publish(channel, event, data) {
    return new Promise((resolve, reject) => {
      const ref = "p" + (++this.c._ref);
      const key = newKey();
      const f = { type: "publish", ref, channel, idempotency_key: key };
      if (event) f.event = event;
      if (data instanceof ArrayBuffer) data = new Uint8Array(data);
      if (data instanceof Uint8Array) { f.data = bytesToBase64(data); f.encoding = "base64"; }
      else f.data = data === undefined ? null : data;
      this.pending.set(ref, { resolve, reject, channel, event, data, key });
      this.send(f);
    });
  }
  frame(text) {
    this.lastFrame = Date.now();
    let f;
    try { f = JSON.parse(text); } catch { return; }
    const c = this.c;
    switch (f.type) {
      case "message": c._onMessage(this, f); break;
      case "delivery": {
        const cons = c._consumers.get(f.consumer);
        if (cons && this === c._t) cons._deliver(f);
        else this.send({ type: "nack", consumer: f.consumer, ids: [f.delivery] }); // stopped: back at once
        break;
      }
      case "consuming": { const cons = c._consumers.get(f.consumer); if (cons) cons.consuming = true; break; }
      case "unconsumed": this.stopped(f.consumer); break;
      case "gap":
        if (f.consumer) {
          const cons = c._consumers.get(f.consumer);
          if (cons) cons._emit("gap", { channel: f.channel, from: f.from, to: f.to, lost: f.lost || 0 });
          break;
        }
        c._onGap(this, f);
        break;
      case "subscribed": c._onCursor(this, f.cursor, f.channels || []); break;
      case "unsubscribed": if (f.code) c._onUnsubscribed(this, f.channels || [], f.code, f.message); break;
      case "authenticated": this.start(); break;
      case "ack": this.settle(f.ref, null, f); break;
      case "error":
        if (f.ref === "auth") { this.fail(f.code, f.message); return; }
        if (f.ref && f.ref.startsWith("u:")) { this.stopped(f.ref.slice(2)); return; }
        if (f.ref && f.ref.startsWith("c:")) {
          const cons = c._consumers.get(f.ref.slice(2));
          if (cons) { cons.consuming = false; cons._emit("error", new PushctlError(f.code, f.message)); }
          return;
        }
        if (f.ref && f.ref.startsWith("s:")) { c._onUnsubscribed(this, [f.ref.slice(2)], f.code, f.message); return; }
        this.settle(f.ref, new PushctlError(f.code, f.message), null);
        break;
    }
  }
  settle(ref, err, ack) {
    const p = this.pending.get(ref);
    if (!p) return;
    this.pending.delete(ref);
    if (err) p.reject(err); else p.resolve(ackOf(ack));
  }
  fail(code, message) { this.closeWith(); this.end(code, this.ready, message); }
  closeWith() { try { this.ws.close(1000); } catch { /* already closed */ } }
  end(reason, opened, message) {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.ping);
    // Publishes the connection took without acking are sent again over
    // HTTP, in order, with their keys: one the broker stored is answered
    // with its first ack (duplicate), one it never got is stored now.
    for (const resolve of this.stopping.values()) resolve(); // the connection's consuming ended with it
    this.stopping.clear();
    if (this.pending.size) {
      let resend = Promise.resolve();
      for (const p of this.pending.values()) {
        resend = resend.then(() => this.c._httpPublish(p.channel, p.event, p.data, p.key).then(p.resolve, (e) =>
          p.reject(new PushctlError("connection_lost", "the connection ended before the ack and sending it again over HTTP failed (" + (e.code || e) + "); the message may or may not have been published"))));
      }
      const c = this.c;
      c._resend = resend;
      resend.then(() => { if (c._resend === resend) c._resend = null; });
    }
    this.pending.clear();
    this.c._onClose(this, reason, opened, message);
  }
  close() {
    this.ended = true;
    clearInterval(this.ping);
    this.closeWith();
    for (const p of this.pending.values()) p.reject(new PushctlError("closed", "the client was closed before the ack; the message may or may not have been published"));
    this.pending.clear();
    for (const resolve of this.stopping.values()) resolve();
    this.stopping.clear();
  }
}

// diagnose asks the broker why a stream could not be opened (EventSource
// hides the status): a long-poll that answers at once with the error.
async function diagnose(c, names) {
  try {
    const token = await c._token();
    const params = { poll: "0s" };
    if (token) params.token = token;
    const resp = await fetch(c._subURL(names, params), { credentials: c._credentials() });
    if (resp.ok) return { code: "network" };
    const e = (await resp.json()).error || {};
    return { code: e.code || "network", message: e.message };
  } catch {
    return { code: "network" };
  }
}

// SSETransport receives over one EventSource for every subscription and
// publishes over HTTP. A change of subscriptions reopens it from the cursor.
class SSETransport {
  constructor(c) { this.c = c; this.opened = false; }
  async open() {
    const c = this.c;
    const names = [...c._channels.keys()];
    this.names = names;
    if (!names.length) { this.opened = true; c._onOpen(this); return; } // nothing to receive yet
    const params = { onmessage: "1" };
    const since = c._resume(names);
    if (since) params.since = since;
    let token;
    try { token = await c._token(); } catch (e) { c._onClose(this, "token_missing", false, String(e)); return; }
    if (token) params.token = token;
    if (this.closed) return;
    const es = new EventSource(c._subURL(names, params), { withCredentials: !!c.options.withCredentials });
    this.es = es;
    es.onopen = () => { this.opened = true; c._onOpen(this); };
    es.onmessage = (e) => { try { c._onMessage(this, JSON.parse(e.data)); } catch { /* not an envelope */ } };
    es.addEventListener("pushctl-start", (e) => c._onCursor(this, e.data, names));
    es.addEventListener("pushctl-gap", (e) => c._onGap(this, JSON.parse(e.data)));
    es.addEventListener("pushctl-error", (e) => {
      let err = {};
      try { err = JSON.parse(e.data); } catch { /* keep empty */ }
      this.end(err.code || "network", err.message);
    });
    es.onerror = async () => {
      if (this.closed) return;
      es.close(); // we reconnect ourselves, from our own cursor
      const d = this.opened ? { code: "network" } : await diagnose(c, names);
      this.end(d.code, d.message);
    };
  }
  subscribe() { this.reopen(); }
  unsubscribe() { this.reopen(); }
  reopen() {
    if (this.closed) return;
    this.close();
    const next = new SSETransport(this.c);
    this.c._t = next;
    next.open();
  }
  canPublish() { return false; }
  end(code, message) {
    if (this.closed) return;
    this.closed = true;
    if (this.es) this.es.close();
    this.c._onClose(this, code, this.opened, message);
  }
  close() { this.closed = true; if (this.es) this.es.close(); }
}

// PollTransport long-polls for every subscription and publishes over HTTP.
class PollTransport {
  constructor(c) { this.c = c; this.opened = false; this.ctrl = null; }
  async open() {
    const c = this.c;
    while (!this.closed) {
      const names = [...c._channels.keys()];
      if (!names.length) {
        if (!this.opened) { this.opened = true; c._onOpen(this); }
        await new Promise((r) => { this.wake = r; });
        continue;
      }
      // The first poll answers at once: it says where the stream starts.
      const params = { poll: this.opened ? c.options.pollTimeout : "0s" };
      const since = c._resume(names);
      if (since) params.since = since;
      let reply, resp;
      try {
        const token = await c._token();
        if (token) params.token = token;
        this.ctrl = new AbortController();
        resp = await fetch(c._subURL(names, params), { signal: this.ctrl.signal, cache: "no-store", credentials: c._credentials() });
        reply = await resp.json();
      } catch (e) {
        if (this.closed) return;
        if (this.restart) { this.restart = false; continue; }
        this.end("network");
        return;
      }
      if (this.closed) return;
      if (!resp.ok) {
        const e = reply.error || {};
        this.end(e.code || "network", e.message);
        return;
      }
      if (!this.opened) { this.opened = true; c._onOpen(this); }
      for (const ev of reply.events || []) {
        if (ev.type === "gap") c._onGap(this, ev); else c._onMessage(this, ev);
      }
      c._onCursor(this, reply.cursor, names);
      if (reply.error) { this.end(reply.error.code, reply.error.message); return; }
    }
  }
  subscribe() { this.poke(); }
  unsubscribe() { this.poke(); }
  poke() {
    if (this.wake) { const w = this.wake; this.wake = null; w(); return; }
    if (this.ctrl) { this.restart = true; this.ctrl.abort(); }
  }
  canPublish() { return false; }
  end(code, message) {
    if (this.closed) return;
    this.closed = true;
    this.c._onClose(this, code, this.opened, message);
  }
  close() { this.closed = true; if (this.ctrl) this.ctrl.abort(); if (this.wake) this.wake(); }
}

// connect starts a client. options: token (a string, or a function
// returning one or a promise of one, called again when the broker says it
// expired), transports (default ["websocket", "sse", "longpoll"]),
// minBackoff/maxBackoff (ms), failuresBeforeFallback, pollTimeout, and
// echo: false to not get this client's own publishes back (WebSocket).
function connect(url, options) { return new Client(url, options); }

const pushctl = { connect, Client, Channel, PushctlError, matches, version: "1" };
