// node run.js KEY HOST PORT AUTH_URL PUB_URL: runs scenario.js in Node.
const Pusher = require("pusher-js");
const scenario = require("./scenario.js");
const [key, host, port, authEndpoint, pubURL] = process.argv.slice(2);
const publish = async (channel, event, data) => {
  const r = await fetch(pubURL + "/pub/" + channel, { method: "POST", headers: { "X-Pushctl-Event": event }, body: data });
  if (!r.ok) throw new Error("publish: " + r.status + " " + (await r.text()));
};
scenario(Pusher, { key, host, port: Number(port), authEndpoint, publish }).then(
  (log) => { for (const l of log) console.log(l); process.exit(0); },
  (err) => { console.error(String(err && err.stack || err)); process.exit(1); });
