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

// The same limit as our /echo (examples/conformance.rs): Autobahn's largest messages are 16 MiB.
const server = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 16 * 1024 * 1024 });
server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  // ws closes the connection itself (1002, 1007, ...) after a client's protocol error; the
  // event only needs a listener, or node exits.
  socket.on('error', () => {});
});
server.on('listening', () => console.log('listening'));
