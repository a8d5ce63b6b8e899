// The official TypeScript client (@durable-streams/client) against a
// Durable Streams server, run by internal/e2e/durablestreams_door_test.go:
//
//   node interop.mjs write URL N   create a text stream at URL and append
//                                  "c0\n" … with an IdempotentProducer
//   node interop.mjs read URL      print the stream's text from the start
//   node interop.mjs tail URL N     follow a JSON stream live from the
//                                  start, retrying every failure, and
//                                  print each value's n until N values
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client";

const [mode, url, n] = process.argv.slice(2);
if (mode === "write") {
  const ds = await DurableStream.create({ url, contentType: "text/plain" });
  const producer = new IdempotentProducer(ds, "interop-writer");
  for (let i = 0; i < Number(n); i++) producer.append(`c${i}\n`);
  await producer.flush();
} else if (mode === "read") {
  const res = await stream({ url, offset: "-1", live: false });
  process.stdout.write(await res.text());
} else if (mode === "tail") {
  let got = 0;
  const res = await stream({
    url,
    offset: "-1",
    live: "long-poll",
    backoffOptions: { maxRetries: Infinity, initialDelay: 50, maxDelay: 500 },
    onError: (e) => { console.error("retrying after", e?.message ?? e); return {}; }, // said on stderr
  });
  await new Promise((resolve) => {
    res.subscribeJson(async (batch) => {
      for (const item of batch.items) {
        process.stdout.write(`${item.n}\n`);
        if (++got >= Number(n)) resolve();
      }
    });
  });
  process.exit(0);
} else {
  console.error("usage: node interop.mjs write URL N | read URL | tail URL N");
  process.exit(2);
}
