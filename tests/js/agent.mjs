// A real socket.io-client, scripted by the Rust integration tests over JSON lines.
//
// Usage: node agent.mjs '<json config>'
//
// Config (argv[2]):
//   url            server origin, e.g. "http://127.0.0.1:6001" (required; a namespace
//                  may be appended: "http://127.0.0.1:6001/notifications")
//   path           Engine.IO path, default "/socket.io/"
//   transports     e.g. ["websocket"] or ["polling"]; default: client default
//   upgrade        allow polling → websocket upgrade; default: client default (true)
//   auth, query, extraHeaders   passed to io() as they are
//   localAddress   source IP for every connection (polling and websocket), e.g. "127.0.0.2"
//   reconnection   default false, so a test sees exactly the disconnects it caused
//   reconnectionDelay, reconnectionDelayMax   passed to io() when present
//   timeout        ms for the connection attempt and for acks, default 5000
//
// Output, one JSON object per line on stdout:
//   {"type":"connect","id":..,"transport":..}   {"type":"connect_error","message":..,"data":..}
//   {"type":"disconnect","reason":..}           {"type":"event","event":..,"args":[..]}
//   {"type":"upgrade","transport":..}           {"type":"reconnect"}
//   {"type":"ack","id":..,"args":[..]} or {"type":"ack","id":..,"error":"timeout"}
//     (or "error":"socket has been disconnected" when the socket drops first)
//   {"type":"transport","name":..}              {"type":"error","message":..}
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"emit","event":E,"args":[..],"ack":ID?}   {"cmd":"transport"}
//   {"cmd":"disconnect"}   {"cmd":"connect"}   {"cmd":"exit"}
// The agent exits 0 on "exit" or when stdin closes.

import http from "node:http";
import readline from "node:readline";
import { io } from "socket.io-client";

// stdout is a pipe to the test; on Linux pipe writes are synchronous, so a line
// printed right before process.exit() is not lost.
function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(message) {
  out({ type: "error", message });
  process.exit(2);
}

let config;
try {
  config = JSON.parse(process.argv[2] ?? "");
} catch (err) {
  fail(`config (argv[2]) is not JSON: ${err.message}`);
}
if (typeof config?.url !== "string") {
  fail("config.url is required");
}

const timeout = config.timeout ?? 5000;
const options = {
  path: config.path ?? "/socket.io/",
  // Every agent is its own client: never share a Manager (and its connection)
  // between sockets of the same process.
  forceNew: true,
  reconnection: config.reconnection ?? false,
  timeout,
};
for (const key of [
  "transports",
  "upgrade",
  "auth",
  "query",
  "extraHeaders",
  "reconnectionDelay",
  "reconnectionDelayMax",
]) {
  if (config[key] !== undefined) options[key] = config[key];
}
if (config.localAddress) {
  // engine.io-client hands `agent` to both xmlhttprequest-ssl (polling) and ws
  // (websocket), so one Agent pins the source address of every connection;
  // tests use this to look like distinct clients to nginx's hash $remote_addr.
  options.agent = new http.Agent({ localAddress: config.localAddress, keepAlive: true });
}

const socket = io(config.url, options);
const manager = socket.io;

socket.on("connect", () => {
  out({ type: "connect", id: socket.id, transport: manager.engine?.transport?.name ?? null });
});
socket.on("connect_error", (err) => {
  out({ type: "connect_error", message: err.message, data: err.data ?? null });
});
socket.on("disconnect", (reason) => {
  out({ type: "disconnect", reason });
});
socket.onAny((event, ...args) => {
  // A server emit that asks for an ack arrives with a callback as its last
  // argument; it cannot be printed, so say that one was requested instead.
  const ackRequested = typeof args[args.length - 1] === "function";
  const line = { type: "event", event, args: ackRequested ? args.slice(0, -1) : args };
  if (ackRequested) line.ackRequested = true;
  out(line);
});

// The Engine.IO socket is replaced on every (re)connection, so hook each new one.
manager.on("open", () => {
  manager.engine.on("upgrade", (transport) => {
    out({ type: "upgrade", transport: transport.name });
  });
});
manager.on("reconnect", () => out({ type: "reconnect" }));

function emit(cmd) {
  const args = Array.isArray(cmd.args) ? cmd.args : [];
  if (cmd.event === undefined) {
    out({ type: "error", message: "emit needs an event" });
    return;
  }
  if (cmd.ack === undefined) {
    socket.emit(cmd.event, ...args);
    return;
  }
  socket.timeout(timeout).emit(cmd.event, ...args, (err, ...reply) => {
    if (err) {
      // The client rejects a pending ack either on its timer or when the socket
      // disconnects first; keep the two apart for the test.
      const error = err.message === "operation has timed out" ? "timeout" : err.message;
      out({ type: "ack", id: cmd.ack, error });
    } else {
      out({ type: "ack", id: cmd.ack, args: reply });
    }
  });
}

let exiting = false;
function exit() {
  if (exiting) return;
  exiting = true;
  socket.disconnect();
  // Give the DISCONNECT packet / close frame a moment to leave before the
  // process ends, so the server sees a clean client disconnect.
  setTimeout(() => process.exit(0), 100);
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  if (line.trim() === "") return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: `command is not JSON: ${err.message}: ${line}` });
    return;
  }
  switch (cmd.cmd) {
    case "emit":
      emit(cmd);
      break;
    case "transport":
      // A failed or closed engine still names its last transport; report
      // none unless the socket is actually connected.
      out({ type: "transport", name: socket.connected ? manager.engine.transport.name : null });
      break;
    case "disconnect":
      socket.disconnect();
      break;
    case "connect":
      socket.connect();
      break;
    case "exit":
      exit();
      break;
    default:
      out({ type: "error", message: `unknown command: ${line}` });
  }
});
// The test dropped (or closed) our stdin: nobody is listening any more.
input.on("close", exit);

process.on("uncaughtException", (err) => {
  out({ type: "error", message: `uncaught: ${err.stack ?? err}` });
  process.exit(1);
});
