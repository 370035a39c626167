// uWebSockets.js peer for scripts/peers/idle-peers.sh (not in CI): one thread,
// ws://127.0.0.1:PORT/ws. Accepts any upgrade at /ws (the `token` query is
// accepted but not checked or kept), sends one welcome text frame shaped like
// the edge's (loadgen counts a connection open once `"type":"welcome"`
// arrives), then does nothing for idle connections: no pings, no timeout.
// Port: first argument, else $PORT, else 9001.
const uWS = require('uwebsockets');

const port = Number(process.argv[2] || process.env.PORT || 9001);
let conns = 0;

uWS.App()
  .ws('/ws', {
    idleTimeout: 0,
    maxPayloadLength: 64 * 1024,
    upgrade: (res, req, context) => {
      req.getQuery('token'); // accepted, not verified
      res.upgrade({}, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'), context);
    },
    open: (ws) => {
      conns += 1;
      ws.send(`{"type":"welcome","user":"u","conn":"${conns}"}`, false);
    },
  })
  .listen('127.0.0.1', port, (listen) => {
    if (!listen) { console.error(`uws: cannot listen on 127.0.0.1:${port}`); process.exit(1); }
    console.error(`uws: listening on 127.0.0.1:${port}`);
  });
