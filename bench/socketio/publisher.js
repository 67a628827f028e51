// Publisher for the Socket.IO side of bench/gateway.py: a server-less Socket.IO instance
// with the redis-streams adapter, emitting `io.to("u:<user>").emit(...)` at a steady rate.
// node-redis pipelines the XADDs issued in one tick, as the Python publisher pipelines its own.
// Args: --rate N --seconds S --users U --first-user F --first-id I --seed K
//       --start-at EPOCH_MS --win-start EPOCH_US --win-end EPOCH_US   Env: REDIS_URL, SIO_STREAM
// Prints {"sent": N, "in_window": M, "seconds": S}: M events carry a bench_ts inside the window.
"use strict";
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = Number(process.argv[i + 1]);
const { rate, seconds, users } = args;
const firstUser = args["first-user"] || 1;
const firstId = args["first-id"] || 1;
const TICK_MS = 2;

let seed = (args.seed || 1) >>> 0;
function rand() { // xorshift32: reproducible user choice
  seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
}
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

async function main() {
  const redisClient = createClient({ url: process.env.REDIS_URL });
  await redisClient.connect();
  const io = new Server({ adapter: createAdapter(redisClient, { streamName: process.env.SIO_STREAM || "socket.io" }) });
  const total = Math.round(rate * seconds);
  const winStart = args["win-start"] || 0;
  const winEnd = args["win-end"] || Number.MAX_SAFE_INTEGER;
  const startAt = args["start-at"] || 0;
  if (startAt > Date.now()) await new Promise((r) => setTimeout(r, startAt - Date.now()));
  const start = performance.now();
  let sent = 0;
  let inWindow = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      for (; sent < due; sent++) {
        const userId = firstUser + Math.floor(rand() * users);
        const id = firstId + sent;
        const ts = nowUs();
        if (ts >= winStart && ts < winEnd) inWindow++;
        io.to(`u:${userId}`).emit("order.updated", {
          type: "order.updated", id: String(id).padStart(16, "0"), order_id: 100000 + id,
          user_id: userId, status: "Partial", previous_status: "In progress", remains: 700,
          quantity: 1000, refund: "7.00", balance: "22.00", at: "2025-12-14T19:15:02Z",
          bench_ts: ts,
        });
      }
      if (sent >= total) resolve(); else setTimeout(tick, TICK_MS);
    };
    tick();
  });
  await new Promise((r) => setTimeout(r, 200)); // let the last pipelined XADDs flush
  console.log(JSON.stringify({ sent, in_window: inWindow, seconds: (performance.now() - start) / 1000 }));
  io.close();
  await redisClient.quit();
  process.exit(0);
}

main().catch((err) => { console.error(err); process.exit(1); });
