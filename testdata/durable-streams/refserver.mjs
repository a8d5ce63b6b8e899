// Starts the Node reference server (@durable-streams/server) on a free
// loopback port and prints its URL; used for side-by-side figures.
import { DurableStreamTestServer } from "@durable-streams/server";

const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", compression: false });
const url = await server.start();
console.log(url);
process.on("SIGTERM", async () => { await server.stop(); process.exit(0); });
