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
//   autoAck        answer every server emit that asks for an ack at once (with no
//                  arguments); default false: the test answers with "reply"
//
// Output, one JSON object per line on stdout:
//   {"type":"connect","id":..,"transport":..}   {"type":"connect_error","message":..,"data":..}
//   {"type":"disconnect","reason":..}           {"type":"event","event":..,"args":[..]}
//     (a server emit asking for an ack adds "ackRequested":true and "ackRef":N)
//   {"type":"upgrade","transport":..}           {"type":"reconnect"}
//   {"type":"ack","id":..,"args":[..]} or {"type":"ack","id":..,"error":"timeout"}
//     (or "error":"socket has been disconnected" when the socket drops first)
//   {"type":"transport","name":..}              {"type":"error","message":..}
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"emit","event":E,"args":[..],"ack":ID?}   {"cmd":"transport"}
//   {"cmd":"reply","ref":N,"args":[..]}  answers the server's ack request N
//   {"cmd":"disconnect"}   {"cmd":"connect"}   {"cmd":"exit"}
// The agent exits 0 on "exit" or when stdin closes. The plumbing is lines.mjs.

import { io } from "socket.io-client";
import { out, readConfig, reportConnection, runCommands, socketOptions } from "./lines.mjs";

const config = readConfig();
const options = socketOptions(config);
const timeout = options.timeout;

const socket = io(config.url, options);
const manager = socket.io;

reportConnection(socket);
// Server ack requests not answered yet, by the ref printed with their event.
const pendingAcks = new Map();
let nextAckRef = 0;
socket.onAny((event, ...args) => {
  // A server emit that asks for an ack arrives with a callback as its last
  // argument; it cannot be printed, so say that one was requested instead.
  const ackRequested = typeof args[args.length - 1] === "function";
  const line = { type: "event", event, args: ackRequested ? args.slice(0, -1) : args };
  if (ackRequested) {
    const callback = args[args.length - 1];
    line.ackRequested = true;
    if (config.autoAck) {
      callback();
    } else {
      line.ackRef = ++nextAckRef;
      pendingAcks.set(line.ackRef, callback);
    }
  }
  out(line);
});

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

runCommands(
  {
    emit,
    transport() {
      // A failed or closed engine still names its last transport; report
      // none unless the socket is actually connected.
      out({ type: "transport", name: socket.connected ? manager.engine.transport.name : null });
    },
    reply(cmd) {
      const callback = pendingAcks.get(cmd.ref);
      if (callback === undefined) {
        out({ type: "error", message: `no ack request ${cmd.ref}` });
        return;
      }
      pendingAcks.delete(cmd.ref);
      callback(...(Array.isArray(cmd.args) ? cmd.args : []));
    },
    disconnect: () => socket.disconnect(),
    connect: () => socket.connect(),
  },
  () => socket.disconnect(),
);
