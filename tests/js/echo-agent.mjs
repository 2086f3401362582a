// A real Laravel Echo client (laravel-echo 2.x, broadcaster "socket.io" over
// socket.io-client 4.x), scripted by the Rust integration tests over JSON lines
// (tests/support/echo.rs). The plumbing is shared with agent.mjs: lines.mjs.
//
// Usage: node echo-agent.mjs '<json config>'
//
// What Echo 2.x puts on the wire (dist/echo.js, SocketIoConnector and friends):
//   connect      io(host, echoOptions): Echo hands ALL its options to socket.io-client, so
//                Echo's `auth` ({headers: {Authorization: "Bearer <token>"}}, which
//                `bearerToken` fills in) is also socket.io's CONNECT payload:
//                  40{"headers":{"Authorization":"Bearer <jwt>"}}
//                That is how the token reaches the server (it reads auth.token, else
//                auth.headers.Authorization, else the handshake's header or ?token=).
//   subscribe    Echo.channel / .private / .join emit, once per channel name:
//                  42["subscribe",{"channel":"private-orders.1","auth":{"headers":{..}}}]
//                (Echo.private(x) subscribes "private-x", Echo.join(x) "presence-x")
//   unsubscribe  Echo.leave(x) emits it for each of x, private-x and presence-x it holds:
//                  42["unsubscribe",{"channel":"private-orders.1","auth":{..}}]
//   whisper      .whisper("typing", data) on a private or presence channel:
//                  42["client event",{"channel":"private-chat.1","event":"client-typing","data":{..}}]
//   events in    42["<event>","<channel>",<data>]: .listen("OrderShipped") waits for
//                "App\\Events\\OrderShipped" (the default namespace); ".raw.name" for
//                "raw.name"; .listenForWhisper("typing") for "client-typing".
//   presence in  42["presence:subscribed","presence-x",[{user_id,user_info},..]] → here(user_infos)
//                42["presence:joining","presence-x",{user_id,user_info}]    → joining(user_info)
//                42["presence:leaving","presence-x",{user_id,user_info}]    → leaving(user_info)
//   Echo's socket.io channels ignore .error(): a refused subscribe is only visible as a
//   raw `subscription_error` event, which the catch-all below prints.
//
// Config (argv[2]):
//   url          server origin, e.g. "http://127.0.0.1:6001" (Echo's `host`; required)
//   token        a JWT: sent as Echo's bearerToken, i.e. auth.headers.Authorization
//   auth         Echo's auth object as it is (instead of `token`)
//   namespace    Echo's event namespace, default "App.Events"
//   path, transports, upgrade, query, extraHeaders, localAddress, reconnection,
//   reconnectionDelay, reconnectionDelayMax, timeout: as in agent.mjs
//
// Output, one JSON object per line on stdout (channel = the full name Echo subscribed,
// e.g. "private-orders.1"; event = as the test named it in `listen`):
//   {"type":"connect","id":..,"transport":..}  {"type":"connect_error","message":..,"data":..}
//   {"type":"disconnect","reason":..}          {"type":"upgrade","transport":..}  {"type":"reconnect"}
//   {"type":"event","channel":..,"event":..,"data":..}
//   {"type":"whisper","channel":..,"event":..,"data":..}
//   {"type":"here","channel":..,"members":[..]}   {"type":"joining","channel":..,"member":..}
//   {"type":"leaving","channel":..,"member":..}
//   {"type":"raw","event":..,"args":[..]}   every event the socket receives (subscribed,
//                                           subscription_error, broadcasts, …)
//   {"type":"socketId","id":..}             {"type":"error","message":..}
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"channel","channel":"news","listen":["Evt",".raw.name"]}    Echo.channel(..).listen(..)
//   {"cmd":"private","channel":"orders.1","listen":[..]}              Echo.private(..).listen(..)
//   {"cmd":"join","channel":"chat.1"}            Echo.join(..).here(..).joining(..).leaving(..)
//   {"cmd":"whisper","channel":"chat.1","kind":"private"|"presence","event":"typing","data":{..}}
//   {"cmd":"listenForWhisper","channel":"chat.1","kind":"private"|"presence","event":"typing"}
//   {"cmd":"leave","channel":"chat.1"}   {"cmd":"socketId"}
//   {"cmd":"disconnect"}   {"cmd":"connect"}   {"cmd":"exit"}
// The agent exits 0 on "exit" or when stdin closes.

import Echo from "laravel-echo";
import { io } from "socket.io-client";
import { out, readConfig, reportConnection, runCommands, socketOptions } from "./lines.mjs";

const config = readConfig();
const options = {
  ...socketOptions(config),
  broadcaster: "socket.io",
  // No window.io in node: hand Echo the client explicitly.
  client: io,
  host: config.url,
};
if (config.namespace !== undefined) options.namespace = config.namespace;
if (config.token !== undefined) options.bearerToken = config.token;

const echo = new Echo(options);
const socket = echo.connector.socket;

reportConnection(socket);
socket.onAny((event, ...args) => {
  out({ type: "raw", event, args });
});

// Echo's channel object for `kind`; asking for it subscribes on first use,
// exactly as an application's Echo.private(..) call would.
function channelOf(kind, name) {
  switch (kind) {
    case "public":
      return echo.channel(name);
    case "private":
      return echo.private(name);
    case "presence":
      return echo.join(name);
    default:
      throw new Error(`unknown channel kind ${JSON.stringify(kind)}`);
  }
}

function listen(kind) {
  return (cmd) => {
    const channel = channelOf(kind, cmd.channel);
    for (const event of cmd.listen ?? []) {
      channel.listen(event, (data) => {
        out({ type: "event", channel: channel.name, event, data });
      });
    }
  };
}

runCommands(
  {
    channel: listen("public"),
    private: listen("private"),
    join(cmd) {
      const channel = echo.join(cmd.channel);
      channel
        .here((members) => out({ type: "here", channel: channel.name, members }))
        .joining((member) => out({ type: "joining", channel: channel.name, member }))
        .leaving((member) => out({ type: "leaving", channel: channel.name, member }));
    },
    whisper(cmd) {
      channelOf(cmd.kind, cmd.channel).whisper(cmd.event, cmd.data ?? null);
    },
    listenForWhisper(cmd) {
      const channel = channelOf(cmd.kind, cmd.channel);
      channel.listenForWhisper(cmd.event, (data) => {
        out({ type: "whisper", channel: channel.name, event: cmd.event, data });
      });
    },
    leave: (cmd) => echo.leave(cmd.channel),
    socketId: () => out({ type: "socketId", id: echo.socketId() ?? null }),
    disconnect: () => echo.disconnect(),
    connect: () => socket.connect(),
  },
  () => echo.disconnect(),
);
