// The JSON-lines plumbing shared by agent.mjs (plain socket.io-client) and
// echo-agent.mjs (Laravel Echo): config from argv[2], one JSON object per line
// on stdout, commands as JSON lines on stdin, exit when stdin closes.
// The Rust side of the same conventions is tests/support/json_lines.rs.

import http from "node:http";
import readline from "node:readline";

// stdout is a pipe to the test; on Linux pipe writes are synchronous, so a line
// printed right before process.exit() is not lost.
export function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export function fail(message) {
  out({ type: "error", message });
  process.exit(2);
}

// The JSON config in argv[2]; `url` is required.
export function readConfig() {
  let config;
  try {
    config = JSON.parse(process.argv[2] ?? "");
  } catch (err) {
    fail(`config (argv[2]) is not JSON: ${err.message}`);
  }
  if (typeof config?.url !== "string") {
    fail("config.url is required");
  }
  return config;
}

// Options for io() from the config keys both agents document.
export function socketOptions(config) {
  const options = {
    path: config.path ?? "/socket.io/",
    // Every agent is its own client: never share a Manager (and its connection)
    // between sockets of the same process.
    forceNew: true,
    reconnection: config.reconnection ?? false,
    timeout: config.timeout ?? 5000,
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
  return options;
}

// Prints the socket's connection lines: connect, connect_error, disconnect,
// upgrade and reconnect.
export function reportConnection(socket) {
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
  // The Engine.IO socket is replaced on every (re)connection, so hook each new one.
  manager.on("open", () => {
    manager.engine.on("upgrade", (transport) => {
      out({ type: "upgrade", transport: transport.name });
    });
  });
  manager.on("reconnect", () => out({ type: "reconnect" }));
}

// Runs `handlers[cmd.cmd](cmd)` for every command line on stdin. "exit", and
// the end of stdin (the test dropped the agent), call `disconnect` and end the
// process a moment later.
export function runCommands(handlers, disconnect) {
  let exiting = false;
  function exit() {
    if (exiting) return;
    exiting = true;
    disconnect();
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
    if (cmd.cmd === "exit") {
      exit();
    } else if (Object.hasOwn(handlers, cmd.cmd)) {
      try {
        handlers[cmd.cmd](cmd);
      } catch (err) {
        // A bad command (say, an unknown channel kind) is the test's mistake:
        // say so and keep going, so the test fails with its own message.
        out({ type: "error", message: `${cmd.cmd}: ${err.message}` });
      }
    } else {
      out({ type: "error", message: `unknown command: ${line}` });
    }
  });
  input.on("close", exit);

  process.on("uncaughtException", (err) => {
    out({ type: "error", message: `uncaught: ${err.stack ?? err}` });
    process.exit(1);
  });
  // A rejected promise nobody awaited is as much a crash of the agent as a throw.
  process.on("unhandledRejection", (reason) => {
    out({ type: "error", message: `unhandled rejection: ${reason?.stack ?? reason}` });
    process.exit(1);
  });
}
