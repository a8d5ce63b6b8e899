// The pusher-js scenario, shared by Node (run.cjs) and the browser test:
// two unmodified pusher-js clients against pushctl. It resolves with the
// list of what happened, in order, or rejects with what did not.
// Needs: Pusher, cfg {key, host, port, authEndpoint, publish(channel, event, data)}.
async function scenario(Pusher, cfg) {
  const log = [];
  const step = (s) => log.push(s);
  const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error("timed out: " + what + " after " + JSON.stringify(log))), ms));
  const wait = (what, fn) => Promise.race([new Promise(fn), deadline(10000, what)]);
  const client = (user) => new Pusher(cfg.key, {
    cluster: "pushctl", wsHost: cfg.host, wsPort: cfg.port, forceTLS: false,
    enabledTransports: ["ws"], disableStats: true,
    channelAuthorization: { endpoint: cfg.authEndpoint, transport: "ajax", params: { user: user } },
  });
  const subscribed = (ch) => wait("subscribed to " + ch.name, (resolve, reject) => {
    ch.bind("pusher:subscription_succeeded", resolve);
    ch.bind("pusher:subscription_error", (e) => reject(new Error(ch.name + ": " + JSON.stringify(e))));
  });

  const a = client("1");
  await wait("a connected", (resolve) => a.connection.bind("connected", resolve));
  step("a connected " + /^\d+\.\d+$/.test(a.connection.socket_id));
  const aNews = a.subscribe("news");
  const aDoc = a.subscribe("private-doc");
  const aRoom = a.subscribe("presence-room");
  await Promise.all([subscribed(aNews), subscribed(aDoc), subscribed(aRoom)]);
  step("a subscribed, members " + aRoom.members.count + ", me " + aRoom.members.me.id);

  const b = client("2");
  const added = wait("member_added on a", (resolve) => aRoom.bind("pusher:member_added", resolve));
  const bDoc = b.subscribe("private-doc");
  const bRoom = b.subscribe("presence-room");
  await Promise.all([subscribed(bDoc), subscribed(bRoom)]);
  const ids = [];
  bRoom.members.each((m) => ids.push(m.id + ":" + m.info.name));
  step("b subscribed, members " + ids.sort().join(","));
  const m = await added;
  step("a saw member_added " + m.id + " " + m.info.name);

  // Client events go to the others, not back to the sender.
  const typing = wait("client event on a", (resolve) => aDoc.bind("client-typing", resolve));
  let echoed = false;
  bDoc.bind("client-typing", () => { echoed = true; });
  if (!bDoc.trigger("client-typing", { who: "b" })) throw new Error("trigger refused by pusher-js");
  step("a got client-typing from " + (await typing).who);

  // A pushctl publish reaches the pusher-js subscriber.
  const headline = wait("headline", (resolve) => aNews.bind("headline", resolve));
  await cfg.publish("news", "headline", JSON.stringify({ title: "hello" }));
  step("a got headline " + (await headline).title);
  step("b echoed its own client event: " + echoed);

  // b goes away: a sees it leave; b comes back: a sees it join again.
  const removed = wait("member_removed", (resolve) => aRoom.bind("pusher:member_removed", resolve));
  b.disconnect();
  step("a saw member_removed " + (await removed).id);
  const again = wait("member_added again", (resolve) => aRoom.bind("pusher:member_added", resolve));
  const resubscribed = wait("b resubscribed", (resolve) => bRoom.bind("pusher:subscription_succeeded", resolve));
  b.connect();
  await resubscribed;
  step("a saw " + (await again).id + " again, members " + aRoom.members.count);
  a.disconnect();
  b.disconnect();
  return log;
}
if (typeof module !== "undefined") module.exports = scenario;
