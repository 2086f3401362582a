// socket.io-client in a real headless Chromium, on a page of another origin than the node:
// the CORS answers as a browser reads them, over long-polling (every request cross-origin).
// Scripted by tests/operator_access.rs.
//
// Usage: node cors-browser.mjs '<json config>'
//
// Config (argv[2]):
//   url              the node's origin, e.g. "http://127.0.0.1:6001" (required)
//   token            the JWT the client connects with (required)
//   withCredentials  socket.io-client's option (default false, as in socket.io-client)
//   chromium         the browser binary, default "/usr/bin/chromium"
//   timeout          ms the connection may take, default 10000
//
// Serves a page and socket.io.min.js from its own http://127.0.0.1:<port>, connects from it
// with `transports: ["polling"]`, subscribes to `news` (a POST, then the ack on a GET), and
// prints one line, then exits:
//   {"type":"result","origin":..,"connected":bool,"ack":..,"error":..}
//   {"type":"error","message":..}     the browser could not run the check

import http from "node:http";
import { readFileSync } from "node:fs";
import { launchChromium } from "./browser.mjs";
import { out, readConfig } from "./lines.mjs";

const config = readConfig();
const timeout = config.timeout ?? 10000;
const client = readFileSync(
  new URL("./node_modules/socket.io-client/dist/socket.io.min.js", import.meta.url),
);

// The page's own origin: another port than the node's, so every poll is cross-origin.
const server = http.createServer((req, res) => {
  if (req.url === "/socket.io.min.js") {
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(client);
  } else {
    res.writeHead(200, { "content-type": "text/html" });
    res.end('<!doctype html><title>app</title><script src="/socket.io.min.js"></script>');
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await launchChromium(config, timeout);
try {
  const page = await browser.newPage();
  await page.goto(`${origin}/`);
  const result = await page.evaluate(
    ({ url, token, withCredentials, timeout }) =>
      new Promise((resolve) => {
        const socket = io(url, {
          transports: ["polling"],
          auth: { token },
          withCredentials,
          forceNew: true,
          reconnection: false,
        });
        const done = (answer) => {
          socket.close();
          resolve(answer);
        };
        setTimeout(() => done({ connected: false, error: "timeout" }), timeout);
        socket.on("connect_error", (err) => done({ connected: false, error: err.message }));
        socket.on("connect", () => {
          socket.emit("subscribe", { channel: "news" }, (ack) =>
            done({ connected: true, ack }),
          );
        });
      }),
    { url: config.url, token: config.token, withCredentials: !!config.withCredentials, timeout },
  );
  out({ type: "result", origin, ...result });
} catch (err) {
  out({ type: "error", message: err.message });
} finally {
  await browser.close();
  server.close();
}
