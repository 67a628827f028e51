// Socket.IO peer for bench/gateway.py: the same job as the Paxyo gateway.
// One process; per-user rooms; events arrive from other processes through
// @socket.io/redis-streams-adapter (one XREAD reader per process, like the gateway's hub).
// Env: PORT, REDIS_URL, SIO_STREAM (stream name), PAXYO_JWT_SECRET (HS256, as the gateway).
"use strict";
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

const port = Number(process.env.PORT || 3000);
const secret = process.env.PAXYO_JWT_SECRET || "";

// HS256 verification with `exp` required: the same per-connection check the gateway makes.
function verify(token) {
  if (typeof token !== "string") throw new Error("missing token");
  const [h, p, s] = token.split(".");
  if (!h || !p || !s) throw new Error("malformed token");
  const header = JSON.parse(Buffer.from(h, "base64url"));
  if (header.alg !== "HS256") throw new Error("bad alg");
  const expected = crypto.createHmac("sha256", secret).update(`${h}.${p}`).digest();
  const given = Buffer.from(s, "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new Error("bad signature");
  }
  const claims = JSON.parse(Buffer.from(p, "base64url"));
  if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now()) throw new Error("expired");
  if (!/^[1-9][0-9]{0,18}$/.test(claims.sub || "")) throw new Error("bad sub");
  return claims.sub;
}

async function main() {
  const redisClient = createClient({ url: process.env.REDIS_URL });
  await redisClient.connect();
  const io = new Server({
    adapter: createAdapter(redisClient, { streamName: process.env.SIO_STREAM || "socket.io" }),
    transports: ["websocket"],
    serveClient: false,
    maxHttpBufferSize: 4096,
  });
  io.use((socket, next) => {
    try {
      socket.data.userId = verify(socket.handshake.auth && socket.handshake.auth.token);
      next();
    } catch (err) {
      next(new Error("unauthorized"));
    }
  });
  io.on("connection", (socket) => {
    socket.join(`u:${socket.data.userId}`);
  });
  io.listen(port);
  console.log(`socket.io listening on ${port}`);
  const stop = () => io.close(() => redisClient.quit().finally(() => process.exit(0)));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
