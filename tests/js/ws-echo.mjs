// A WebSocket echo on the `ws` package (npm), the yardstick for scripts/autobahn --with-ws:
// the Autobahn 9.* performance cases run against it and against our `/echo`, on the same
// machine, and the script compares their times.
//
// Usage: node ws-echo.mjs PORT   (prints "listening" once it accepts connections)
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ws-echo.mjs PORT');
  process.exit(2);
}

// The same limits as our /echo (examples/conformance.rs): messages up to 16 MiB, Autobahn's
// largest, in any number of fragments (ws 8.21 refuses more than 16,384 by default, and
// 9.3.1 and 9.4.1 send 65,536).
const server = new WebSocketServer({
  host: '127.0.0.1',
  port,
  maxPayload: 16 * 1024 * 1024,
  maxFragments: 0,
});
server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  // ws closes the connection itself (1002, 1007, ...) after a client's protocol error; the
  // event only needs a listener, or node exits.
  socket.on('error', () => {});
});
server.on('listening', () => console.log('listening'));
