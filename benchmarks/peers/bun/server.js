// The native peer: Bun.serve (uWebSockets inside: a topic tree, corked writes) with Bun's own Redis
// client, one pub/sub connection for the process, like ws4redis' hub.
//
//     bun benchmarks/peers/bun/server.js PORT REDIS_URL
//
// A websocket on /ws/<facility> joins the topic broadcast:<facility>; the first one of a topic
// subscribes the process to that Redis channel, and every message is published to the topic once.
import { RedisClient } from "bun";

const [port, redisUrl] = process.argv.slice(2);
const subscriber = new RedisClient(redisUrl);
const subscribed = new Map(); // topic -> the promise of its SUBSCRIBE

function subscribe(topic) {
  if (!subscribed.has(topic)) {
    subscribed.set(topic, subscriber.subscribe(topic, (message, channel) => server.publish(channel, message)));
  }
  return subscribed.get(topic);
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(port),
  fetch(request, server) {
    const facility = new URL(request.url).pathname.replace(/\/+$/, "").split("/").pop();
    if (server.upgrade(request, { data: { topic: `broadcast:${facility}` } })) {
      return undefined;
    }
    return new Response("websocket upgrade expected\n", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    async open(ws) {
      ws.subscribe(ws.data.topic);
      await subscribe(ws.data.topic);
    },
    message() {}, // clients only listen
  },
});

console.log(`listening on ${server.port}`);
