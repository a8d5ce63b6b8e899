// Measures a Durable Streams server with plain fetch, the same way for
// any server: catch-up read throughput of a large stream, and live tail
// latency (an append's POST sent to a long-poll reader's reply).
//
//   node bench.mjs URL [MB] [tail-appends]
//
// URL is the server's base (http://127.0.0.1:7070); streams are made at
// URL/v1/stream/bench-*.
const base = process.argv[2];
const mb = Number(process.argv[3] ?? 100);
const appends = Number(process.argv[4] ?? 500);
if (!base) {
  console.error("usage: node bench.mjs URL [MB] [tail-appends]");
  process.exit(2);
}
const id = `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;

async function must(res, what) {
  if (res.status >= 300) throw new Error(`${what}: ${res.status} ${await res.text()}`);
  return res;
}

// Catch-up: fill a stream with MB appends of 1 MB, then read it all from -1.
const big = `${base}/v1/stream/bench-catchup-${id}`;
await must(await fetch(big, { method: "PUT", headers: { "Content-Type": "application/octet-stream" } }), "PUT");
const chunk = new Uint8Array(1000 * 1000);
for (let i = 0; i < chunk.length; i++) chunk[i] = i % 251;
for (let i = 0; i < mb; i++) {
  await must(await fetch(big, { method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: chunk }), "POST");
}
let offset = "-1";
let bytes = 0;
let requests = 0;
const t0 = performance.now();
for (;;) {
  const res = await must(await fetch(`${big}?offset=${encodeURIComponent(offset)}`), "GET");
  const body = new Uint8Array(await res.arrayBuffer());
  bytes += body.length;
  requests++;
  offset = res.headers.get("Stream-Next-Offset");
  if (res.headers.get("Stream-Up-To-Date") === "true") break;
}
const secs = (performance.now() - t0) / 1000;
if (bytes !== mb * chunk.length) throw new Error(`read ${bytes} bytes, want ${mb * chunk.length}`);

// Live tail: a long-poll reader at the tail; each append carries the time
// it was sent; the reader notes when it got it.
const tail = `${base}/v1/stream/bench-tail-${id}`;
const put = await must(await fetch(tail, { method: "PUT", headers: { "Content-Type": "text/plain" } }), "PUT");
let at = put.headers.get("Stream-Next-Offset");
const lat = [];
let done = false;
const reader = (async () => {
  while (!done) {
    const res = await fetch(`${tail}?offset=${encodeURIComponent(at)}&live=long-poll`);
    const now = performance.now();
    const text = await res.text();
    at = res.headers.get("Stream-Next-Offset") ?? at;
    for (const sent of text.split(";").filter(Boolean)) lat.push(now - Number(sent));
  }
})();
for (let i = 0; i < appends; i++) {
  const before = lat.length;
  await must(await fetch(tail, { method: "POST", headers: { "Content-Type": "text/plain" }, body: `${performance.now()};` }), "POST");
  while (lat.length === before) await new Promise((r) => setTimeout(r, 0));
}
done = true;
await fetch(tail, { method: "POST", headers: { "Content-Type": "text/plain" }, body: `${performance.now()};` });
await reader;
lat.sort((a, b) => a - b);
const pct = (p) => lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))].toFixed(2);
console.log(JSON.stringify({
  server: base,
  catchup_mb: mb,
  catchup_seconds: Number(secs.toFixed(3)),
  catchup_mb_per_s: Number((bytes / 1e6 / secs).toFixed(1)),
  catchup_requests: requests,
  tail_appends: appends,
  tail_p50_ms: Number(pct(50)),
  tail_p99_ms: Number(pct(99)),
}));
