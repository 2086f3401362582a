// The peer: the Node.js stack Switchboard's users would otherwise deploy, doing the same job,
// for the side-by-side benchmark (scripts/bench-compare, docs/BENCHMARKS.md).
//
// socket.io 4.8 + @socket.io/redis-adapter 8.3 (node-redis 4) + jsonwebtoken 9:
// - JWT (HS256 only) checked in the handshake; every socket joins `private-user.{sub}`;
// - `subscribe` / `unsubscribe` / `ping` as in Switchboard's README (Laravel Echo conventions);
// - Laravel ingress as laravel-echo-server does it: PSUBSCRIBE `${REDIS_PREFIX}*`, each
//   `{"event","data","socket"}` emitted on this node only as (event, channel, data);
// - `POST /api/broadcast` (through the adapter, so every node delivers) and `GET /health`.
//
// Config from the environment: PORT (6001), HOST (0.0.0.0), REDIS_URL (unset = single node,
// no Laravel ingress), REDIS_PREFIX (""), JWT_SECRET (switchboard-dev-secret), API_KEYS ("k",
// comma-separated), PING_INTERVAL / PING_TIMEOUT in ms (25000 / 20000), NODE_ID (host name).

import http from "node:http";
import os from "node:os";
import { createSecretKey, timingSafeEqual } from "node:crypto";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import jwt from "jsonwebtoken";

const PORT = Number(process.env.PORT || 6001);
const HOST = process.env.HOST || "0.0.0.0";
const REDIS_URL = process.env.REDIS_URL || "";
const REDIS_PREFIX = process.env.REDIS_PREFIX || "";
const JWT_SECRET = process.env.JWT_SECRET || "switchboard-dev-secret";
// A KeyObject made once: given a string, jsonwebtoken 9 first tries to parse it as a PEM public
// key on every verify (a thrown error each time), which cuts handshakes/s several-fold.
const JWT_KEY = createSecretKey(Buffer.from(JWT_SECRET));
const API_KEYS = (process.env.API_KEYS ?? "k")
  .split(",")
  .map((k) => k.trim())
  .filter((k) => k.length > 0)
  .map((k) => Buffer.from(k));
const PING_INTERVAL = Number(process.env.PING_INTERVAL || 25000);
const PING_TIMEOUT = Number(process.env.PING_TIMEOUT || 20000);
const NODE_ID = process.env.NODE_ID || os.hostname();
const MAX_BODY = 1e6;
const MAX_CHANNEL_LENGTH = 200;
const MAX_SUBSCRIPTIONS = 100; // the user channel included, as in Switchboard
const MAX_API_CHANNELS = 100;
const ADAPTER_KEY = "socket.io"; // @socket.io/redis-adapter's channel prefix (its default)

// ---- channels (the same rules as Switchboard's src/channel.rs) ----

const CHANNEL_CHARS = /^[A-Za-z0-9\-_.:=@,;#+/]+$/;

function channelError(name) {
  if (typeof name !== "string") return "channel must be a string";
  if (name.length === 0) return "channel name is empty";
  if (Buffer.byteLength(name) > MAX_CHANNEL_LENGTH)
    return `channel name is longer than ${MAX_CHANNEL_LENGTH} bytes`;
  if (!CHANNEL_CHARS.test(name))
    return "channel name contains a character outside letters, digits and - _ . : = @ , ; # + /";
  return null;
}

function mayJoin(userId, name) {
  if (name.startsWith("private-")) return name === `private-user.${userId}`;
  return !name.startsWith("presence-");
}

// ---- authentication ----

function bearer(value) {
  if (typeof value !== "string") return null;
  const m = /^Bearer\s+(.+)$/i.exec(value.trim());
  return m ? m[1].trim() : null;
}

function handshakeToken(handshake) {
  const auth = handshake.auth || {};
  if (typeof auth.token === "string" && auth.token) return auth.token;
  const fromAuthHeaders = bearer(auth.headers && (auth.headers.Authorization || auth.headers.authorization));
  if (fromAuthHeaders) return fromAuthHeaders;
  const fromHeader = bearer(handshake.headers.authorization);
  if (fromHeader) return fromHeader;
  const q = handshake.query && handshake.query.token;
  if (typeof q === "string" && q) return q;
  return null;
}

function verifyToken(token) {
  let claims;
  try {
    claims = jwt.verify(token, JWT_KEY, { algorithms: ["HS256"], clockTolerance: 5 });
  } catch (err) {
    if (err.name === "TokenExpiredError") throw new Error("invalid token: expired");
    if (err.name === "NotBeforeError") throw new Error("invalid token: not yet valid");
    if (err.message === "invalid signature") throw new Error("invalid token: bad signature");
    if (err.message === "invalid algorithm") throw new Error("invalid token: algorithm not allowed");
    throw new Error("invalid token: malformed");
  }
  const sub = claims.sub ?? claims.userId;
  if (sub === undefined || sub === null || sub === "")
    throw new Error("invalid token: no user id (sub or userId)");
  return { userId: String(sub), role: claims.role, name: claims.name };
}

// ---- HTTP: /api/broadcast and /health ----

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function apiError(res, status, code, message) {
  sendJson(res, status, { error: { code, message } });
}

function keyAccepted(req) {
  const presented = bearer(req.headers.authorization);
  if (!presented) return false;
  const p = Buffer.from(presented);
  let ok = false;
  for (const key of API_KEYS) {
    if (key.length === p.length && timingSafeEqual(key, p)) ok = true;
  }
  return ok;
}

function readBody(req, res, done) {
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on("data", (chunk) => {
    if (tooLarge) return;
    size += chunk.length;
    if (size > MAX_BODY) {
      tooLarge = true;
      apiError(res, 413, "payload_too_large", `body is larger than ${MAX_BODY} bytes`);
      req.resume();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    if (!tooLarge) done(Buffer.concat(chunks));
  });
}

function broadcast(req, res) {
  if (!keyAccepted(req)) return apiError(res, 401, "unauthorized", "missing or wrong API key");
  readBody(req, res, (raw) => {
    let body;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      return apiError(res, 400, "bad_request", "body is not valid JSON");
    }
    if (body === null || typeof body !== "object" || Array.isArray(body))
      return apiError(res, 400, "bad_request", "body must be a JSON object");
    let channels;
    if (body.channels !== undefined) {
      if (!Array.isArray(body.channels) || body.channels.length === 0)
        return apiError(res, 400, "bad_request", "`channels` must be a non-empty array");
      channels = body.channels;
    } else if (body.channel !== undefined) {
      channels = [body.channel];
    } else {
      return apiError(res, 400, "bad_request", "`channel` or `channels` is required");
    }
    if (channels.length > MAX_API_CHANNELS)
      return apiError(res, 400, "bad_request", `at most ${MAX_API_CHANNELS} channels`);
    for (const c of channels) {
      const err = channelError(c);
      if (err) return apiError(res, 400, "bad_request", err);
    }
    if (typeof body.event !== "string" || body.event.length === 0)
      return apiError(res, 400, "bad_request", "`event` must be a non-empty string");
    const socketId = body.socket_id;
    if (socketId !== undefined && socketId !== null && typeof socketId !== "string")
      return apiError(res, 400, "bad_request", "`socket_id` must be a string or null");
    const data = body.data === undefined ? null : body.data;
    for (const channel of channels) {
      let op = io.to(channel); // through the adapter: every node delivers
      if (socketId) op = op.except(socketId);
      op.emit(body.event, channel, data);
    }
    sendJson(res, 202, { status: "accepted", channels: channels.length });
  });
}

function onRequest(req, res) {
  const path = req.url.split("?", 1)[0];
  if (path === "/health" && (req.method === "GET" || req.method === "HEAD"))
    return sendJson(res, 200, { status: "ok", node_id: NODE_ID });
  if (path === "/api/broadcast") {
    if (req.method !== "POST") return apiError(res, 405, "method_not_allowed", "use POST");
    return broadcast(req, res);
  }
  apiError(res, 404, "not_found", "no such route");
}

// ---- socket.io ----

const httpServer = http.createServer(onRequest);
const io = new Server(httpServer, {
  cors: { origin: true, credentials: true },
  maxHttpBufferSize: 1e6,
  pingInterval: PING_INTERVAL,
  pingTimeout: PING_TIMEOUT,
});

io.use((socket, next) => {
  const token = handshakeToken(socket.handshake);
  if (!token) return next(new Error("missing token"));
  try {
    socket.data.user = verifyToken(token);
    next();
  } catch (err) {
    next(err);
  }
});

// Answers as the ack when the client asked for one, else as an event (Switchboard's rule).
function reply(socket, ack, event, payload) {
  if (typeof ack === "function") ack(payload);
  else socket.emit(event, payload);
}

const KNOWN = new Set(["subscribe", "unsubscribe", "ping"]);

io.on("connection", (socket) => {
  const { userId } = socket.data.user;
  const own = `private-user.${userId}`;
  socket.join(own);
  socket.emit("subscribed", { channel: own, status: "auto" });

  socket.on("subscribe", (payload, ack) => {
    const channel = payload && payload.channel;
    const err = channelError(channel);
    if (err) return reply(socket, ack, "subscription_error", { channel, error: err });
    if (!mayJoin(userId, channel))
      return reply(socket, ack, "subscription_error", { channel, error: "forbidden" });
    if (!socket.rooms.has(channel) && socket.rooms.size - 1 >= MAX_SUBSCRIPTIONS)
      return reply(socket, ack, "subscription_error", {
        channel,
        error: `at most ${MAX_SUBSCRIPTIONS} subscriptions per socket`,
      });
    socket.join(channel);
    reply(socket, ack, "subscribed", { channel, status: "success" });
  });

  socket.on("unsubscribe", (payload, ack) => {
    const channel = payload && payload.channel;
    if (typeof channel === "string" && channel !== socket.id) socket.leave(channel);
    reply(socket, ack, "unsubscribed", { channel });
  });

  socket.on("ping", (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack === "function") ack("pong");
    else socket.emit("pong");
  });

  socket.onAny((event, ...args) => {
    if (KNOWN.has(event)) return;
    const ack = args[args.length - 1];
    if (typeof ack === "function") ack({ error: `unknown event \`${event}\`` });
  });
});

// ---- Redis: adapter (pub + sub) and Laravel ingress (a third client) ----

const redisClients = [];

function globEscape(s) {
  return s.replace(/[\\*?[\]]/g, "\\$&");
}

async function startRedis() {
  const onError = (which) => (err) => console.error(`peer ${NODE_ID}: redis ${which}: ${err.message}`);
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const laravel = pub.duplicate();
  pub.on("error", onError("pub"));
  sub.on("error", onError("sub"));
  laravel.on("error", onError("laravel"));
  redisClients.push(pub, sub, laravel);
  await Promise.all([pub.connect(), sub.connect(), laravel.connect()]);
  io.adapter(createAdapter(pub, sub, { key: ADAPTER_KEY }));

  // laravel-echo-server's ingress: every node receives the PUBLISH itself, so emit locally
  // only (through the adapter each message would be delivered once per node).
  await laravel.pSubscribe(`${globEscape(REDIS_PREFIX)}*`, (message, redisChannel) => {
    if (REDIS_PREFIX === "" && redisChannel.startsWith(ADAPTER_KEY)) return; // adapter traffic
    let msg;
    try {
      msg = JSON.parse(message);
    } catch {
      return;
    }
    if (!msg || typeof msg.event !== "string") return;
    const channel = redisChannel.slice(REDIS_PREFIX.length);
    let op = io.local.to(channel);
    if (typeof msg.socket === "string" && msg.socket) op = op.except(msg.socket);
    op.emit(msg.event, channel, msg.data === undefined ? null : msg.data);
  });
}

if (REDIS_URL) await startRedis();

httpServer.listen(PORT, HOST, () => {
  console.error(
    `peer ${NODE_ID}: listening on ${HOST}:${PORT}, ` +
      (REDIS_URL
        ? `redis ${REDIS_URL} (adapter + Laravel ingress on "${REDIS_PREFIX}*")`
        : "no redis (single node, no Laravel ingress)"),
  );
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(0), 2000).unref();
  io.close(() => {
    Promise.allSettled(redisClients.map((c) => c.quit())).then(() => process.exit(0));
  });
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
