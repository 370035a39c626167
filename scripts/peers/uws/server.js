// uWebSockets.js peer for scripts/peers/idle-peers.sh and fanout-peers.sh (not in CI): one
// thread, ws://127.0.0.1:PORT/ws (port: first argument, else $PORT, else 9001). Any upgrade
// at /ws is accepted. Each gets one welcome frame shaped like the edge's; with `?room=` it
// then joins that room as the edge does and keeps the token's `sub` (decoded, not verified)
// as its user; without, it keeps no state and gets nothing else (no pings, no timeout), as
// idle-peers.sh measured it. Enough protocol for `loadgen fanout`, with the edge's field
// names and order (edge/src/protocol/server.rs):
//   join {room}       -> joined {room, seq, epoch, members}; subscribes to the room's topic
//   send {room, body} -> the room's next seq: one `message` rendered once and app.publish'ed
//                        to every member (sender included), then `ack` {room, seq, msg_id, ts}
// A request's `id` is echoed. No store, history, rate limits or permessage-deflate.
const uWS = require('uwebsockets');

const port = Number(process.argv[2] || process.env.PORT || 9001);
const rooms = new Map(); // room id -> { seq, members }
let conns = 0, msgs = 0;
const app = uWS.App();
const q = JSON.stringify;
const idOf = (m) => (m.id === undefined ? '' : `"id":${q(m.id)},`);
const error = (ws, id, code, message) => ws.send(`{"type":"error",${id}"code":"${code}","message":${q(message)}}`, false);

function sub(token) {
  try { return String(JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).sub); } catch { return 'u'; }
}

function join(ws, room, id) {
  const me = ws.getUserData();
  me.rooms = me.rooms || new Set(); // made at the first join: idle connections carry none
  if (typeof room !== 'string' || me.rooms.has(room)) return error(ws, id, 'bad_request', 'invalid room or already joined');
  const r = rooms.get(room) || rooms.set(room, { seq: 0, members: 0 }).get(room);
  r.members += 1; me.rooms.add(room); ws.subscribe(room);
  ws.send(`{"type":"joined",${id}"room":${q(room)},"seq":${r.seq},"epoch":1,"members":${r.members}}`, false);
}

function send(ws, m, id) {
  if (!ws.getUserData().rooms?.has(m.room)) return error(ws, id, 'forbidden', 'not a member of the room');
  const r = rooms.get(m.room);
  const seq = ++r.seq, ts = Date.now(), msgId = `uws-0-${(++msgs).toString(16)}`, room = q(m.room);
  app.publish(m.room, `{"type":"message","room":${room},"seq":${seq},"msg_id":"${msgId}","from":${q(ws.getUserData().user || 'u')},"ts":${ts},"body":${q(String(m.body))},"kind":"text"}`, false);
  ws.send(`{"type":"ack",${id}"room":${room},"seq":${seq},"msg_id":"${msgId}","ts":${ts}}`, false);
}

app.ws('/ws', {
  idleTimeout: 0,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024, // uWS skips a subscriber above this; the default 64 KiB could drop messages
  upgrade: (res, req, context) => {
    // Only `?room=` connections keep a user (for `from`): idle ones stay as small as before.
    const room = req.getQuery('room'), token = req.getQuery('token') || '';
    const data = room ? { user: sub(token), room, rooms: null } : {};
    res.upgrade(data, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => {
    conns += 1;
    ws.send(`{"type":"welcome","user":${q(ws.getUserData().user || 'u')},"conn":"${conns}"}`, false);
    if (ws.getUserData().room) join(ws, ws.getUserData().room, '');
  },
  message: (ws, data) => {
    let m;
    try { m = JSON.parse(Buffer.from(data).toString()); } catch { return error(ws, '', 'bad_request', 'not JSON'); }
    if (m.type === 'send') send(ws, m, idOf(m));
    else if (m.type === 'join') join(ws, m.room, idOf(m));
    else error(ws, idOf(m), 'bad_request', 'unsupported');
  },
  close: (ws) => { for (const room of ws.getUserData().rooms || []) rooms.get(room).members -= 1; },
}).listen('127.0.0.1', port, (listen) => {
  if (!listen) { console.error(`uws: cannot listen on 127.0.0.1:${port}`); process.exit(1); }
  console.error(`uws: listening on 127.0.0.1:${port}`);
});
