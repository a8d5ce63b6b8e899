// The pushctl web console: channels with live counts, a tail with filter
// and details, and a publish box, all through pushctl.js and the broker's
// own HTTP API. Nothing is loaded from anywhere else.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_MESSAGES = 500;
  let token = sessionStorage.getItem("pushctl-token") || "";
  let client = null;
  let tailing = [];
  let shown = []; // messages, newest first
  const previous = new Map(); // channel -> {published, at}

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function askToken(why) {
    $("token-why").textContent = why;
    $("token-form").hidden = false;
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("pushctl-token", token);
    $("token-form").hidden = true;
    reconnect();
    refreshChannels();
  });

  function setState(s) {
    const el = $("state");
    el.dataset.state = s.state;
    let text = s.state;
    if (s.state === "connected") text = "connected over " + s.transport;
    if (s.state === "reconnecting") text = "reconnecting (" + (s.reason || "network") + "), attempt " + s.attempt;
    if (s.state === "fallback") text = "falling back to " + s.to;
    if (s.state === "disconnected") text = "disconnected: " + (s.reason || "");
    el.textContent = text;
    if (s.reason && s.reason.startsWith("token_")) askToken("The broker refused the token (" + s.reason + "). Enter one that may subscribe.");
  }

  function reconnect() {
    if (client) client.close();
    client = pushctl.connect(location.origin, { token: () => token });
    client.on("state", setState);
    client.on("gap", (g) => note("Some messages of " + g.channel + " are no longer held by the broker (" + g.from + " to " + g.to + ")."));
    for (const name of tailing) subscribe(name);
  }

  function subscribe(name) {
    const ch = client.subscribe(name);
    ch.bindAll((event, data, msg) => add(msg));
    ch.on("error", (err) => note(name + ": " + err.code + ": " + err.message));
  }

  function note(text) { $("tail-note").textContent = text; }

  // Channels, refreshed every 2 seconds.
  async function refreshChannels() {
    let resp;
    try {
      resp = await fetch("/channels", { headers: authHeaders(), cache: "no-store" });
    } catch {
      $("channels-note").textContent = "The broker cannot be reached.";
      return;
    }
    if (resp.status === 401 || resp.status === 403) {
      $("channels-note").textContent = "Listing channels needs a token that may subscribe to everything (>).";
      if (!token || resp.status === 401) askToken("Listing channels needs a token that may subscribe to >.");
      return;
    }
    const { channels } = await resp.json();
    const now = performance.now();
    const body = $("channels").tBodies[0];
    const rows = [];
    for (const c of channels) {
      const prev = previous.get(c.channel);
      const rate = prev && now > prev.at ? ((c.published - prev.published) * 1000) / (now - prev.at) : 0;
      previous.set(c.channel, { published: c.published, at: now });
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const b = document.createElement("button");
      b.className = "chan";
      b.type = "button";
      b.textContent = c.channel;
      b.setAttribute("aria-label", "Tail " + c.channel);
      b.addEventListener("click", () => { $("tail-channels").value = c.channel; tail(); $("pub-channel").value = c.channel; });
      name.append(b);
      tr.append(name, cell(c.subscribers), cell(c.messages), cell(c.published), cell(rate.toFixed(1)));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $("channels-note").textContent = channels.length ? "" : "No channels yet: publish to one below.";
  }

  function cell(v) {
    const td = document.createElement("td");
    td.textContent = String(v);
    return td;
  }

  // Tail.
  function tail() {
    const names = $("tail-channels").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (!names.length) return;
    for (const n of tailing) client.unsubscribe(n);
    tailing = names;
    shown = [];
    render();
    for (const n of names) subscribe(n);
    note("Tailing " + names.join(", ") + ".");
  }
  $("tail-form").addEventListener("submit", (e) => { e.preventDefault(); tail(); });
  $("filter").addEventListener("input", render);

  function preview(data) {
    if (data instanceof Uint8Array) return "<" + data.length + " bytes>";
    return typeof data === "string" ? data : JSON.stringify(data);
  }

  function add(msg) {
    shown.unshift(msg);
    if (shown.length > MAX_MESSAGES) shown.length = MAX_MESSAGES;
    render();
  }

  function render() {
    const f = $("filter").value.toLowerCase();
    const items = [];
    for (const m of shown) {
      const text = preview(m.data);
      if (f && !(m.channel + " " + m.event + " " + text).toLowerCase().includes(f)) continue;
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "msg";
      const t = document.createElement("time");
      t.dateTime = m.time;
      t.textContent = (m.time || "").slice(11, 23);
      const ch = document.createElement("span");
      ch.className = "ch";
      ch.textContent = m.channel;
      const ev = document.createElement("span");
      ev.className = "ev";
      ev.textContent = m.event;
      b.append(t, " ", ch, " ", ev, " ", text);
      b.addEventListener("click", () => detail(m));
      li.append(b);
      items.push(li);
    }
    $("messages").replaceChildren(...items);
  }

  function detail(m) {
    const meta = $("detail-meta");
    meta.replaceChildren();
    for (const [k, v] of [["channel", m.channel], ["event", m.event], ["id", m.id], ["time", m.time]]) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      meta.append(dt, dd);
    }
    let body;
    if (m.data instanceof Uint8Array) body = Array.from(m.data, (x) => x.toString(16).padStart(2, "0")).join(" ");
    else if (typeof m.data === "string") body = m.data;
    else body = JSON.stringify(m.data, null, 2);
    $("detail-body").textContent = body;
    $("detail").hidden = false;
    $("detail-h").focus();
  }
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("detail").hidden = true; });

  // Publish.
  $("pub-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("pub-result");
    const raw = $("pub-data").value;
    let data = raw;
    if (/^\s*[[{]/.test(raw)) {
      try { data = JSON.parse(raw); } catch { out.className = "bad"; out.textContent = "Data starts like JSON but is not valid JSON."; return; }
    }
    try {
      const ack = await client.publish($("pub-channel").value.trim(), $("pub-event").value.trim(), data);
      out.className = "";
      out.textContent = "Published " + ack.id + " to " + ack.subscribers + " subscriber" + (ack.subscribers === 1 ? "" : "s") + ".";
    } catch (err) {
      out.className = "bad";
      out.textContent = (err.code || "error") + ": " + err.message;
      if (err.code && err.code.startsWith("token_")) askToken("Publishing needs a token that grants it.");
    }
  });

  reconnect();
  refreshChannels();
  setInterval(refreshChannels, 2000);
})();
