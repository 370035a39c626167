// edge chat: the browser client of the edge node (protocol v1, docs/PROTOCOL.md).
//
// Vanilla ES module, no build step, nothing fetched from outside the page's origin.
// Every string that comes from a user or the server is put in the page with
// textContent / createElement, never as HTML.

const EMOJIS = ['👍', '❤️', '😂', '🎉', '👀'];
const USER_RE = /^[A-Za-z0-9_.@-]{1,64}$/;
const ROOM_RE = /^[A-Za-z0-9_.:@-]{1,128}$/;
const HISTORY_LIMIT = 50;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;
const STABLE_MS = 5000; // a connection up this long resets the backoff
const TYPING_REFRESH_MS = 3000; // re-send `start` while typing (server ttl 5 s)
const TYPING_IDLE_MS = 2500; // no keystroke this long: `stop`
const TYPING_SHOW_MS = 6500; // a `start` never followed by `stop` is dropped after this
const PING_IDLE_MS = 20000; // silence this long: send `ping`
const PONG_TIMEOUT_MS = 8000; // no frame this long after a ping: the socket is dead
const OFFLINE_PONG_TIMEOUT_MS = 3000; // the same, probed at once when the browser goes offline
const REQUEST_TIMEOUT_MS = 15000;
const CONNECT_TIMEOUT_MS = 10000; // no `welcome` this long after opening: try again
const READ_DELAY_MS = 250;
const MAX_UNREAD = 1000;

const params = new URLSearchParams(location.search);
const serverOverride = params.get('server'); // host:port, for development
// Kept per server: a link with `?server=` never carries the token of the page's own server
// elsewhere.
const KEY = serverOverride ? `edge@${serverOverride}.` : 'edge.';
const store = {
  getItem: (k) => window.sessionStorage.getItem(KEY + k),
  setItem: (k, v) => window.sessionStorage.setItem(KEY + k, v),
  removeItem: (k) => window.sessionStorage.removeItem(KEY + k),
};

// ---------------------------------------------------------------- DOM helpers

const $ = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

/** Creates an element; `attrs` values are set as attributes (never HTML), `kids` as text or nodes. */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'testid') e.dataset.testid = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid == null || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

function fmtTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function fmtAgo(ts) {
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
  let ago;
  if (s < 45) ago = 'just now';
  else if (s < 3600) ago = `${Math.round(s / 60)} min ago`;
  else if (s < 86400) ago = `${Math.round(s / 3600)} h ago`;
  else ago = `${Math.round(s / 86400)} d ago`;
  return `${ago} (${new Date(ts).toLocaleString()})`;
}

function randomId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b); // works outside secure contexts too, unlike randomUUID
  return 'c' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function decodeJwt(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(part + '==='.slice((part.length + 3) % 4));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

function patternMatch(patterns, room) {
  return Array.isArray(patterns) && patterns.some((p) => (p.endsWith('*') ? room.startsWith(p.slice(0, -1)) : p === room));
}

function wsUrl(query) {
  const u = new URL('/ws', location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  if (serverOverride) u.host = serverOverride;
  u.search = query;
  return u.toString();
}

function apiUrl(path) {
  const u = new URL(path, location.href);
  if (serverOverride) u.host = serverOverride;
  return u.toString();
}

// ---------------------------------------------------------------- state

const state = {
  token: null,
  claims: null,
  me: null,
  limits: { max_rooms_per_conn: 64, max_body_chars: 4096 },
  ws: null,
  authed: false,
  conn: 'signed-out', // signed-out | connecting | online | reconnecting | offline | disconnected
  attempt: 0,
  retryHint: null, // ms, from a `reconnect` frame
  reconnectAt: 0,
  reconnectTimer: null,
  stableTimer: null,
  lastFrameAt: 0,
  pingSentAt: 0,
  reqSeq: 0,
  requests: new Map(), // id -> {resolve, reject, timer}
  rooms: new Map(),
  current: null,
  thread: null, // {room, root, messages: Map, nextBefore, hasOlder, loading, rootMsg}
  outbox: new Map(), // client_id -> pending send
  editing: null, // {room, seq}
  typingRoom: null,
  typingSentAt: 0,
  typingIdle: null,
  scroll: null, // 'bottom' | 'keep' for the next render
  userInfo: null,
  peerStatus: new Map(), // user -> {status, last_seen}
};

function getRoom(id) {
  let r = state.rooms.get(id);
  if (!r) {
    r = {
      id,
      dm: id.startsWith('dm:'),
      joined: false,
      joining: false,
      resume: false, // was joined when the connection dropped: resumed on the next one
      joinSince: null,
      epoch: null,
      latest: 0, // highest seq known to exist
      have: 0, // highest seq received in order (the `since` of a resume)
      counted: 0, // highest seq accounted for in `unread`
      unread: 0,
      readMark: 0,
      messages: new Map(),
      nextBefore: null,
      hasOlder: false,
      historyLoaded: false,
      historyLoading: false,
      stale: false,
      gaps: [],
      online: new Map(),
      onlineCount: null,
      typing: new Map(), // user -> timer
      readTimer: null,
      readBy: new Map(),
      deliveredBy: new Map(),
      error: null,
    };
    state.rooms.set(id, r);
  }
  return r;
}

function peerOf(roomId) {
  const [, a, b] = roomId.split(':');
  return a === state.me ? b : a;
}

function dmRoomId(peer) {
  return 'dm:' + [state.me, peer].sort().join(':');
}

function roomLabel(r) {
  return r.dm ? '@' + peerOf(r.id) : '#' + r.id;
}

// ---------------------------------------------------------------- connection

function setConn(s) {
  state.conn = s;
  render();
}

function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (!state.token) return;
  if (state.ws) detachSocket();
  // Rooms joined on the previous connection are resumed from the last seq this page holds.
  const max = state.limits.max_rooms_per_conn || 64;
  const resume = [...state.rooms.values()].filter((r) => r.resume).slice(0, max);
  for (const r of state.rooms.values()) r.resume = false;
  for (const r of resume) {
    r.joining = true;
    r.joinSince = r.have;
    r.viaResume = true;
  }
  const query = resume.length ? '?resume=' + resume.map((r) => `${encodeURIComponent(r.id)}:${r.have}`).join(',') : '';
  let ws;
  try {
    ws = new WebSocket(wsUrl(query));
  } catch (e) {
    showNotice(`Cannot open the connection: ${e.message}`);
    scheduleReconnect(null);
    return;
  }
  state.ws = ws;
  state.authed = false;
  state.connectStartedAt = Date.now();
  setConn('connecting');
  ws.onopen = () => {
    if (state.ws !== ws) return;
    // The token goes in the first frame, not the URL: it stays out of logs, and a bad one
    // is answered with an `unauthorized` error the page can show (a 401 is opaque).
    ws.send(JSON.stringify({ type: 'auth', token: state.token }));
  };
  ws.onmessage = (e) => {
    if (state.ws !== ws) return;
    state.lastFrameAt = Date.now();
    state.pingSentAt = 0;
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      return;
    }
    try {
      handleFrame(m);
    } catch (err) {
      console.error('frame handling failed', m, err);
    }
  };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    onDisconnected(e.code, e.reason || '');
  };
  ws.onerror = () => {};
}

function detachSocket() {
  const ws = state.ws;
  state.ws = null;
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try {
    ws.close(1000);
  } catch {
    /* already closed */
  }
}

function onDisconnected(code, reason) {
  console.info(`edge chat: connection closed (code ${code}${reason ? ', reason ' + reason : ''})`);
  state.ws = null;
  const wasAuthed = state.authed;
  state.authed = false;
  clearTimeout(state.stableTimer);
  for (const [, q] of state.requests) {
    clearTimeout(q.timer);
    q.reject({ code: 'disconnected', message: 'connection lost' });
  }
  state.requests.clear();
  for (const r of state.rooms.values()) {
    if (r.joined || (r.joining && r.viaResume)) r.resume = true;
    r.joined = false;
    r.joining = false;
    r.viaResume = false;
    for (const t of r.typing.values()) clearTimeout(t);
    r.typing.clear();
    r.online.clear();
    r.onlineCount = null;
  }
  state.typingRoom = null;
  if (!state.token) {
    setConn('signed-out');
    return;
  }
  if (code === 1008 && !/timeout/i.test(reason)) {
    signOut(`Signed out by the server: ${reason || 'authentication failed'}`);
    return;
  }
  let hint = state.retryHint;
  state.retryHint = null;
  const m = /retry_ms=(\d+)/.exec(reason);
  if (m) hint = Number(m[1]);
  if (code === 4001 && hint == null) {
    // An operator closed the session and gave no retry_ms: stay off until the user asks.
    state.attempt = 0;
    setConn('disconnected');
    showNotice(`Disconnected by the server: ${reason || 'disconnected'}`);
    return;
  }
  if (!wasAuthed && code === 1006 && state.attempt === 0) state.attempt = 1;
  scheduleReconnect(hint);
}

/** Full-jitter exponential backoff, never sooner than the server's `retry_ms` hint. */
function scheduleReconnect(hint) {
  clearTimeout(state.reconnectTimer);
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  let delay = Math.random() * ceiling;
  if (hint != null) delay = Math.max(delay, hint);
  console.info(`edge chat: reconnecting in ${Math.round(delay)} ms (attempt ${state.attempt + 1}, backoff ceiling ${ceiling} ms, server retry_ms ${hint ?? 'none'})`);
  state.attempt = Math.min(state.attempt + 1, 16);
  state.reconnectAt = Date.now() + delay;
  state.reconnectTimer = setTimeout(connect, delay);
  setConn(navigator.onLine === false ? 'offline' : 'reconnecting');
}

function reconnectNow() {
  if (!state.token || state.ws) return;
  connect();
}

/** The socket is dead without a close (a half-open TCP connection): drop it and reconnect. */
function dropConnection(why) {
  if (!state.ws) return;
  console.warn('dropping connection:', why);
  detachSocket();
  onDisconnected(1006, '');
}

// Liveness: ping after silence; no answer in time means the socket is gone.
setInterval(() => {
  if (!state.ws) return;
  const now = Date.now();
  if (!state.authed) {
    if (now - state.connectStartedAt > CONNECT_TIMEOUT_MS) dropConnection('no welcome');
    return;
  }
  if (state.pingSentAt && now - state.pingSentAt > (state.pongTimeout || PONG_TIMEOUT_MS)) {
    dropConnection('no pong');
  } else if (!state.pingSentAt && now - state.lastFrameAt > PING_IDLE_MS) {
    state.pingSentAt = now;
    state.pongTimeout = PONG_TIMEOUT_MS;
    sendRaw({ type: 'ping' });
  }
}, 1000);

// Countdown of the next reconnect in the status.
setInterval(() => {
  if (state.reconnectTimer) renderConn();
}, 1000);

window.addEventListener('online', () => {
  if (state.token && !state.ws) {
    state.attempt = 0;
    connect();
  }
});
window.addEventListener('offline', () => {
  if (!state.ws) {
    setConn('offline');
    return;
  }
  // The socket may linger half-open: probe it now instead of waiting for the idle ping.
  if (state.authed && !state.pingSentAt) {
    state.pingSentAt = Date.now();
    state.pongTimeout = OFFLINE_PONG_TIMEOUT_MS;
    sendRaw({ type: 'ping' });
  }
});

function sendRaw(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN || !state.authed) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

/** Sends a request with an `id` and resolves with its one reply (or rejects with the error frame). */
function request(frame, timeoutMs = REQUEST_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    if (!state.authed) {
      reject({ code: 'disconnected', message: 'not connected' });
      return;
    }
    const id = 'r' + ++state.reqSeq;
    const timer = setTimeout(() => {
      state.requests.delete(id);
      reject({ code: 'timeout', message: `no answer to ${frame.type}` });
    }, timeoutMs);
    state.requests.set(id, { resolve, reject, timer });
    sendRaw({ ...frame, id });
  });
}

const RETRYABLE = new Set(['rate_limited', 'overloaded', 'unavailable']);

/** `request`, retried after `retry_ms` when the server asks for it (idempotent requests only). */
async function requestRetry(frame, tries = 4) {
  for (let i = 1; ; i++) {
    try {
      return await request(frame);
    } catch (err) {
      if (i >= tries || !RETRYABLE.has(err.code)) throw err;
      await new Promise((res) => setTimeout(res, err.retry_ms ?? 500 * i));
    }
  }
}

// ---------------------------------------------------------------- frames

function handleFrame(m) {
  const id = m.id != null ? String(m.id) : null;
  const q = id != null ? state.requests.get(id) : null;
  switch (m.type) {
    case 'welcome':
      onWelcome(m);
      break;
    case 'joined':
      onJoined(m);
      break;
    case 'message':
      onMessage(m);
      break;
    case 'update':
      onUpdate(m);
      break;
    case 'reaction':
      onReaction(m);
      break;
    case 'typing':
      onTyping(m);
      break;
    case 'presence':
      if (!q) onPresenceEvent(m);
      break;
    case 'receipt':
      onReceipt(m);
      break;
    case 'gap':
      onGap(m);
      break;
    case 'epoch':
      onEpoch(m.room, m.epoch, m.seq);
      break;
    case 'reconnect':
      // The server will close (1012/1013): come back after retry_ms, not at once.
      state.retryHint = Number(m.retry_ms) || 0;
      break;
    case 'error':
      if (!q) onUnsolicitedError(m);
      break;
    default:
      break;
  }
  if (q) {
    state.requests.delete(id);
    clearTimeout(q.timer);
    if (m.type === 'error') q.reject(m);
    else q.resolve(m);
  }
}

function onUnsolicitedError(m) {
  if (m.code === 'unauthorized' && !state.authed) {
    signOut(`Sign-in refused: ${m.message || 'bad token'}`);
    return;
  }
  // Errors without an id answer frames that carry none (typing, read, or a join of
  // ?resume=): with retry_ms, those frames wait that long before the next one.
  if (m.retry_ms != null) {
    state.quietUntil = Date.now() + Number(m.retry_ms);
    if (m.code === 'rate_limited') return;
  }
  showNotice(`${m.code}: ${m.message || ''}`);
}

function onWelcome(m) {
  state.authed = true;
  state.retryHint = null;
  state.quietUntil = 0;
  state.me = m.user;
  if (m.limits) state.limits = { ...state.limits, ...m.limits };
  state.lastFrameAt = Date.now();
  clearTimeout(state.stableTimer);
  state.stableTimer = setTimeout(() => {
    state.attempt = 0;
  }, STABLE_MS);
  state.reconnectTimer = null;
  setConn('online');
  flushOutbox();
  requestRetry({ type: 'sync' })
    .then(applySync)
    .catch((err) => {
      if (err.code !== 'disconnected') showNotice(`sync: ${err.code} ${err.message || ''}`);
      applySync({ rooms: [] });
    });
  // A resumed room whose join was refused (error frames of resume joins have no id)
  // is joined again by request.
  setTimeout(() => {
    for (const r of state.rooms.values()) {
      if (r.joining && r.viaResume && state.authed) {
        r.joining = false;
        r.viaResume = false;
        joinRoom(r);
      }
    }
  }, 5000);
}

function applySync(m) {
  for (const s of m.rooms || []) {
    const r = getRoom(s.room);
    r.latest = Math.max(r.latest, s.seq || 0);
    r.readMark = Math.max(r.readMark, s.read || 0);
    // The stored mark may lag the one this page just sent.
    r.unread = r.readMark >= (s.seq || 0) ? 0 : s.unread || 0;
    r.counted = Math.max(r.counted, s.seq || 0);
  }
  // Be a member of every room of the user (live messages, typing, presence everywhere).
  const budget = (state.limits.max_rooms_per_conn || 64) - 2;
  let used = [...state.rooms.values()].filter((r) => r.joined || r.joining).length;
  const saved = store.getItem('room');
  if (!state.current && saved && (ROOM_RE.test(saved))) state.current = saved;
  if (state.current) getRoom(state.current);
  for (const r of state.rooms.values()) {
    if (r.joined || r.joining || r.error) continue;
    if (used >= budget && r.id !== state.current) continue;
    used++;
    joinRoom(r);
  }
  if (!state.current && state.rooms.size) openRoom([...state.rooms.keys()].sort()[0]);
  const cur = state.current && state.rooms.get(state.current);
  if (cur && cur.unread) markReadSoon(cur); // sync's count of a room on screen
  render();
}

function joinRoom(r) {
  if (r.joined || r.joining || !state.authed) return;
  r.joining = true;
  r.viaResume = false;
  const since = r.have > 0 ? r.have : null;
  r.joinSince = since;
  const frame = { type: 'join', room: r.id };
  if (since != null) frame.since = since;
  requestRetry(frame).catch((err) => {
    r.joining = false;
    if (err.code === 'bad_request' && /already joined/i.test(err.message || '')) {
      r.joined = true;
      return;
    }
    if (err.code === 'disconnected') return;
    r.error = `${err.code}: ${err.message || ''}`;
    if (r.id === state.current) showNotice(`Cannot join ${roomLabel(r)}: ${r.error}`);
    render();
  });
  render();
}

function onJoined(m) {
  const r = getRoom(m.room);
  const first = !r.historyLoaded;
  r.joined = true;
  r.joining = false;
  r.viaResume = false;
  r.error = null;
  r.members = m.members;
  if (r.epoch != null && m.epoch != null && r.epoch !== m.epoch) {
    onEpoch(r.id, m.epoch, m.seq);
  }
  r.epoch = m.epoch;
  r.latest = Math.max(r.latest, m.seq || 0);
  // Without `since` nothing older is sent: history shows it; with `since` the catch-up follows.
  if (r.joinSince == null) r.have = Math.max(r.have, m.seq || 0);
  r.joinSince = null;
  flushOutbox(r.id);
  if (r.id === state.current) {
    if (!first) r.stale = true; // a reconnect: edits and reactions may have been missed
    roomReady(r);
  } else if (!first) {
    r.stale = true;
  }
  render();
}

/** A new epoch: the room's sequence restarted; what this page holds may be stale. */
function onEpoch(roomId, epoch, seq) {
  const r = getRoom(roomId);
  r.epoch = epoch;
  r.messages.clear();
  r.gaps = [];
  r.have = seq || 0;
  r.latest = seq || 0;
  r.historyLoaded = false;
  r.hasOlder = false;
  r.nextBefore = null;
  if (r.id === state.current && r.joined) loadHistory(r, 'latest');
  render();
}

function normalize(m, old) {
  return {
    room: m.room,
    seq: m.seq,
    msg_id: m.msg_id,
    from: m.from,
    ts: m.ts,
    body: m.deleted ? undefined : m.body,
    kind: m.kind || 'text',
    file: m.deleted ? undefined : m.file,
    reply_to: m.reply_to,
    deleted: !!m.deleted,
    edited_ts: m.edited_ts,
    reactions: m.reactions ? m.reactions.map((x) => ({ ...x })) : old ? old.reactions : [],
    replies: Math.max(m.replies || 0, old ? old.replies : 0),
    _v: old ? old._v + 1 : 0,
  };
}

/** Stores a message (a current version replaces the one held, in the same object). */
function upsert(map, m, fromHistory) {
  const old = map.get(m.seq);
  if (old) {
    const n = normalize(m, old);
    if (!fromHistory) n.reactions = old.reactions;
    Object.assign(old, n);
    return { msg: old, isNew: false };
  }
  const msg = normalize(m, null);
  map.set(m.seq, msg);
  return { msg, isNew: true };
}

/** A `message` frame; `synthetic`: made from the sender's own `ack` that came before it. */
function onMessage(m, synthetic = false) {
  if (typeof m.seq !== 'number') return;
  const r = getRoom(m.room);
  const { msg, isNew } = upsert(r.messages, m, false);
  // Frames come in seq order, so the highest one received is where a resume starts.
  if (!synthetic) r.have = Math.max(r.have, m.seq);
  r.latest = Math.max(r.latest, m.seq);
  if (isNew && msg.reply_to) {
    const root = r.messages.get(msg.reply_to);
    if (root) {
      root.replies += 1;
      root._v++;
    }
    if (state.thread && state.thread.room === r.id && state.thread.root === msg.reply_to) {
      state.thread.messages.set(msg.seq, msg);
      if (state.thread.rootMsg && state.thread.rootMsg !== root) state.thread.rootMsg.replies += 1;
    }
  }
  if (state.thread && state.thread.room === r.id && state.thread.messages.has(msg.seq)) {
    state.thread.messages.set(msg.seq, msg);
  }
  if (msg.from === state.me) {
    if (!synthetic) matchPending(r, msg);
  } else {
    const t = r.typing.get(msg.from);
    if (t) {
      clearTimeout(t);
      r.typing.delete(msg.from);
    }
  }
  if (m.seq > r.counted) {
    r.counted = m.seq;
    if (msg.from !== state.me && m.seq > r.readMark) {
      if (isVisible(r)) markReadSoon(r);
      else r.unread += 1;
    }
  }
  // A DM room this page does not hold yet: join it so it is resumed and shows typing.
  if (r.dm && !r.joined && !r.joining && state.authed) joinRoom(r);
  render();
}

function findMsgs(roomId, seq) {
  const out = new Set();
  const r = state.rooms.get(roomId);
  if (r && r.messages.has(seq)) out.add(r.messages.get(seq));
  const t = state.thread;
  if (t && t.room === roomId) {
    if (t.messages.has(seq)) out.add(t.messages.get(seq));
    if (t.rootMsg && t.rootMsg.seq === seq) out.add(t.rootMsg);
  }
  return out;
}

function onUpdate(m) {
  for (const msg of findMsgs(m.room, m.seq)) {
    if (m.deleted) {
      msg.deleted = true;
      msg.body = undefined;
      msg.file = undefined;
      msg.reactions = [];
    } else {
      msg.body = m.body;
    }
    msg.edited_ts = m.edited_ts;
    msg._v++;
  }
  if (state.editing && state.editing.room === m.room && state.editing.seq === m.seq && m.deleted) state.editing = null;
  render();
}

function onReaction(m) {
  for (const msg of findMsgs(m.room, m.seq)) {
    let e = msg.reactions.find((x) => x.emoji === m.emoji);
    if (m.op === 'add') {
      if (!e) {
        e = { emoji: m.emoji, count: 0, me: false };
        msg.reactions.push(e);
      }
      e.count += 1;
      if (m.user === state.me) e.me = true;
    } else if (e) {
      e.count -= 1;
      if (m.user === state.me) e.me = false;
      if (e.count <= 0) msg.reactions = msg.reactions.filter((x) => x !== e);
    }
    msg._v++;
  }
  render();
}

function onTyping(m) {
  if (m.user === state.me) return;
  const r = getRoom(m.room);
  clearTimeout(r.typing.get(m.user));
  if (m.state === 'start') {
    r.typing.set(
      m.user,
      setTimeout(() => {
        r.typing.delete(m.user);
        render();
      }, TYPING_SHOW_MS),
    );
  } else {
    r.typing.delete(m.user);
  }
  render();
}

function onPresenceEvent(m) {
  if (!m.room) return;
  const r = getRoom(m.room);
  if (m.user) {
    const had = r.online.has(m.user);
    if (m.status === 'online') r.online.set(m.user, r.online.get(m.user) ?? m.last_seen ?? Date.now());
    else r.online.delete(m.user);
    if (r.onlineCount != null && had !== r.online.has(m.user)) r.onlineCount += had ? -1 : 1;
    if (r.onlineCount != null) r.onlineCount = Math.max(r.online.size, r.onlineCount);
    state.peerStatus.set(m.user, { status: m.status, last_seen: m.last_seen });
  } else if (m.count != null) {
    r.onlineCount = m.count; // a big room: only the count is pushed
  }
  render();
}

function onReceipt(m) {
  const r = getRoom(m.room);
  const users = Array.isArray(m.users) ? m.users : m.user ? [m.user] : [];
  const marks = m.status === 'read' ? r.readBy : r.deliveredBy;
  for (const u of users) {
    marks.set(u, Math.max(marks.get(u) || 0, m.seq));
    if (u === state.me && m.status === 'read') {
      // Read on another of the user's connections.
      r.readMark = Math.max(r.readMark, m.seq);
      if (r.readMark >= r.counted) r.unread = 0;
    }
  }
  render();
}

function onGap(m) {
  const r = getRoom(m.room);
  r.gaps.push({ from: m.from, to: m.to });
  r.have = Math.max(r.have, m.to);
  render();
}

// ---------------------------------------------------------------- rooms

function openRoom(id) {
  if (!ROOM_RE.test(id)) {
    showNotice(`Not a valid room id: ${id}`);
    return;
  }
  if (state.current && state.current !== id) {
    stopTyping();
    // What was on screen in the room being left was seen: its pending read goes now.
    const old = state.rooms.get(state.current);
    if (old && old.readTimer) markRead(old);
  }
  if (state.thread && state.thread.room !== id) state.thread = null;
  const changed = state.current !== id;
  state.current = id;
  store.setItem('room', id);
  const r = getRoom(id);
  r.error = null;
  if (changed) {
    state.scroll = 'bottom';
    state.userInfo = null;
  }
  if (!r.joined && !r.joining) joinRoom(r);
  else if (r.joined) roomReady(r);
  render();
}

/** The open room is joined: load what it needs. */
function roomReady(r) {
  if (!r.historyLoaded && !r.historyLoading) loadHistory(r, 'latest');
  else if (r.stale && !r.historyLoading) loadHistory(r, 'refresh');
  requestRetry({ type: 'presence', room: r.id })
    .then((p) => {
      r.online = new Map((p.online || []).map((u) => [u.user, u.since]));
      r.onlineCount = p.count;
      render();
    })
    .catch(() => {});
  if (r.dm) lookupUser(peerOf(r.id), false);
  if (state.thread && state.thread.room === r.id && r.stale) loadThread(false);
  markReadSoon(r);
}

function loadHistory(r, mode) {
  if (r.historyLoading || !state.authed) return;
  const frame = { type: 'history', room: r.id, limit: HISTORY_LIMIT };
  if (mode === 'older') {
    if (r.nextBefore == null) return;
    frame.before = r.nextBefore;
    state.scroll = 'keep';
  }
  r.historyLoading = true;
  render();
  requestRetry(frame)
    .then((p) => {
      for (const m of p.messages || []) upsert(r.messages, m, true);
      for (const m of p.messages || []) r.latest = Math.max(r.latest, m.seq);
      if (mode === 'latest' || (mode === 'refresh' && !r.historyLoaded)) {
        r.nextBefore = p.next_before ?? null;
        r.hasOlder = p.next_before != null;
        if (mode === 'latest') state.scroll = 'bottom';
      } else if (mode === 'older') {
        r.nextBefore = p.next_before ?? null;
        r.hasOlder = p.next_before != null && (p.messages || []).length > 0;
      }
      r.historyLoaded = true;
      r.stale = false;
      markReadSoon(r);
    })
    .catch((err) => {
      if (err.code !== 'disconnected') showNotice(`history: ${err.code} ${err.message || ''}`);
    })
    .finally(() => {
      r.historyLoading = false;
      render();
    });
}

function isVisible(r) {
  return r.id === state.current && document.visibilityState === 'visible';
}

/** Reads are paced a little (a burst of messages makes one `read`), per room. */
function markReadSoon(r) {
  if (r.readTimer) return;
  r.readTimer = setTimeout(() => markRead(r), READ_DELAY_MS);
}

/** The open, visible room's latest message is read: move the read mark (forward only). */
function markRead(r) {
  clearTimeout(r.readTimer);
  r.readTimer = null;
  if (!isVisible(r)) return;
  if (r.unread) {
    r.unread = 0;
    render();
  }
  if (!state.authed) return; // sent when the room is ready again
  const quiet = (state.quietUntil || 0) - Date.now();
  if (quiet > 0) {
    r.readTimer = setTimeout(() => markRead(r), quiet);
    return;
  }
  const seq = Math.max(r.latest, r.have);
  if (seq > r.readMark) {
    r.readMark = seq;
    sendRaw({ type: 'read', room: r.id, seq });
  }
}

document.addEventListener('visibilitychange', () => {
  const r = state.current && state.rooms.get(state.current);
  if (r && document.visibilityState === 'visible') markReadSoon(r);
});

// ---------------------------------------------------------------- threads

function openThread(roomId, seq) {
  const r = getRoom(roomId);
  state.thread = { room: roomId, root: seq, messages: new Map(), nextBefore: null, hasOlder: false, loading: false, rootMsg: r.messages.get(seq) || null };
  for (const m of r.messages.values()) if (m.reply_to === seq) state.thread.messages.set(m.seq, m);
  if (!state.thread.rootMsg) {
    requestRetry({ type: 'history', room: roomId, before: seq + 1, limit: 1 })
      .then((p) => {
        const m = (p.messages || []).find((x) => x.seq === seq);
        if (m && state.thread && state.thread.root === seq) {
          state.thread.rootMsg = r.messages.get(seq) || normalize(m, null);
          render();
        }
      })
      .catch(() => {});
  }
  loadThread(false);
  render();
  setTimeout(() => $('thread-input')?.focus(), 0);
}

function loadThread(older) {
  const t = state.thread;
  if (!t || t.loading || !state.authed) return;
  const frame = { type: 'history', room: t.room, thread: t.root, limit: HISTORY_LIMIT };
  if (older) frame.before = t.nextBefore;
  t.loading = true;
  requestRetry(frame)
    .then((p) => {
      const r = getRoom(t.room);
      for (const m of p.messages || []) {
        if (r.messages.has(m.seq)) {
          upsert(r.messages, m, true);
          t.messages.set(m.seq, r.messages.get(m.seq));
        } else {
          upsert(t.messages, m, true);
        }
      }
      t.nextBefore = p.next_before ?? null;
      t.hasOlder = p.next_before != null && (!older || (p.messages || []).length > 0);
    })
    .catch((err) => {
      if (err.code !== 'disconnected') showNotice(`thread: ${err.code} ${err.message || ''}`);
    })
    .finally(() => {
      t.loading = false;
      render();
    });
}

// ---------------------------------------------------------------- sending

function queueSend(r, { body, reply_to, file }) {
  const p = {
    client_id: randomId(),
    room: r.id,
    to: r.dm ? peerOf(r.id) : null,
    body,
    kind: file ? 'file' : 'text',
    file,
    reply_to,
    from: state.me,
    ts: Date.now(),
    state: 'pending',
    seq: null,
    attempts: 0,
    inflight: false,
    error: null,
    _v: 0,
  };
  state.outbox.set(p.client_id, p);
  state.scroll = 'bottom';
  trySend(p);
  render();
}

function canSend(p) {
  return state.authed && (p.to != null || getRoom(p.room).joined);
}

function trySend(p) {
  if (p.inflight || p.state !== 'pending' || !canSend(p)) return;
  p.inflight = true;
  p.attempts += 1;
  const frame = { type: 'send', body: p.body, client_id: p.client_id };
  if (p.to != null) frame.to = p.to;
  else frame.room = p.room;
  if (p.reply_to != null) frame.reply_to = p.reply_to;
  if (p.file) {
    frame.kind = 'file';
    frame.file = p.file;
  }
  request(frame).then(
    (ack) => {
      p.inflight = false;
      settleSend(p, ack);
    },
    (err) => {
      p.inflight = false;
      if (err.code === 'disconnected') return; // sent again (same client_id) once reconnected
      if ((RETRYABLE.has(err.code) || err.code === 'timeout') && p.attempts < 4) {
        setTimeout(() => trySend(p), err.retry_ms ?? 1000);
        return;
      }
      p.state = 'failed';
      p.seq = null;
      p.error = `${err.code}${err.message ? ': ' + err.message : ''}`;
      p._v++;
      render();
    },
  );
}

function flushOutbox(roomId) {
  for (const p of state.outbox.values()) {
    if (roomId == null || p.room === roomId) trySend(p);
  }
}

/** The message's own frame came (perhaps before its ack): the pending copy is hidden. */
function matchPending(r, msg) {
  for (const p of state.outbox.values()) {
    if (p.room === r.id && p.seq == null && p.inflight && p.body === msg.body && p.kind === msg.kind && (p.reply_to ?? null) === (msg.reply_to ?? null)) {
      p.seq = msg.seq;
      return;
    }
  }
}

function settleSend(p, ack) {
  state.outbox.delete(p.client_id);
  const r = getRoom(ack.room);
  if (!r.messages.has(ack.seq)) {
    // The ack came first: show the message now; its frame replaces it when it comes.
    const m = { type: 'message', room: ack.room, seq: ack.seq, msg_id: ack.msg_id, from: state.me, ts: ack.ts, body: p.body, kind: p.kind, file: p.file, reply_to: p.reply_to };
    onMessage(m, true);
  }
  r.latest = Math.max(r.latest, ack.seq);
  r.counted = Math.max(r.counted, ack.seq);
  render();
}

function retrySend(clientId) {
  const p = state.outbox.get(clientId);
  if (!p) return;
  p.state = 'pending';
  p.error = null;
  p.attempts = 0;
  p._v++;
  trySend(p);
  render();
}

function discardSend(clientId) {
  state.outbox.delete(clientId);
  render();
}

// ---------------------------------------------------------------- typing

function onComposerInput(r, value) {
  if (!r || !r.joined) return;
  if (!value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (now < (state.quietUntil || 0)) return; // the server asked for a pause (retry_ms)
  if (state.typingRoom !== r.id || now - state.typingSentAt > TYPING_REFRESH_MS) {
    if (state.typingRoom && state.typingRoom !== r.id) stopTyping();
    if (sendRaw({ type: 'typing', room: r.id, state: 'start' })) {
      state.typingRoom = r.id;
      state.typingSentAt = now;
    }
  }
  clearTimeout(state.typingIdle);
  state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(state.typingIdle);
  if (state.typingRoom) {
    sendRaw({ type: 'typing', room: state.typingRoom, state: 'stop' });
    state.typingRoom = null;
    state.typingSentAt = 0;
  }
}

// ---------------------------------------------------------------- message actions

function canModify(r, msg) {
  if (msg.deleted) return false;
  if (msg.from === state.me) return true;
  return !r.dm && patternMatch(state.claims?.moderator, r.id);
}

function toggleReaction(r, msg, emoji) {
  const mine = msg.reactions.find((x) => x.emoji === emoji && x.me);
  request({ type: 'react', room: r.id, seq: msg.seq, emoji, op: mine ? 'remove' : 'add' }).catch((err) => showNotice(`react: ${err.code} ${err.message || ''}`));
}

function saveEdit(r, msg, body) {
  if (!body.trim()) return;
  request({ type: 'edit', room: r.id, seq: msg.seq, body })
    .then(() => {
      state.editing = null;
      render();
    })
    .catch((err) => showNotice(`edit: ${err.code} ${err.message || ''}`));
}

function deleteMessage(r, msg) {
  request({ type: 'delete', room: r.id, seq: msg.seq }).catch((err) => showNotice(`delete: ${err.code} ${err.message || ''}`));
}

function lookupUser(user, show = true) {
  if (!USER_RE.test(user)) return;
  requestRetry({ type: 'presence', user })
    .then((p) => {
      state.peerStatus.set(user, { status: p.status, last_seen: p.last_seen });
      if (show) state.userInfo = user;
      render();
    })
    .catch((err) => {
      if (show) showNotice(`presence: ${err.code} ${err.message || ''}`);
    });
}

function describeUser(user) {
  const s = state.peerStatus.get(user);
  if (!s) return '';
  if (s.status === 'online') return `${user} is online`;
  return s.last_seen ? `${user} was last seen ${fmtAgo(s.last_seen)}` : `${user} has never been seen`;
}

// ---------------------------------------------------------------- rendering

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    try {
      renderNow();
    } catch (err) {
      console.error('render failed', err);
    }
  });
}

function renderNow() {
  const signedIn = !!state.token;
  $('signin-view').hidden = signedIn;
  $('chat-view').hidden = !signedIn;
  $('signout').hidden = !signedIn;
  $('me').textContent = signedIn ? state.me || state.claims?.sub || '' : '';
  renderConn();
  if (!signedIn) return;
  renderRooms();
  renderRoom();
  renderThread();
  renderSide();
  let total = 0;
  for (const r of state.rooms.values()) total += r.unread;
  document.title = total ? `(${total >= MAX_UNREAD ? MAX_UNREAD + '+' : total}) edge chat` : 'edge chat';
}

function renderConn() {
  const el = $('conn-status');
  el.dataset.state = state.conn;
  let text = state.conn;
  if ((state.conn === 'reconnecting' || state.conn === 'offline') && state.reconnectTimer) {
    const s = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
    text = `${state.conn === 'offline' ? 'offline' : 'disconnected'}: retrying in ${s}s`;
  }
  if (state.conn === 'disconnected') text = 'disconnected by the server';
  el.textContent = serverOverride ? `${text} · ${serverOverride}` : text;
  $('reconnect-now').hidden = !(state.token && !state.ws);
}

function unreadText(n) {
  return n >= MAX_UNREAD ? `${MAX_UNREAD}+` : String(n);
}

function renderRooms() {
  const list = $('room-list');
  const rooms = [...state.rooms.values()].sort((a, b) => (a.dm - b.dm) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  reconcile(
    list,
    rooms.map((r) => ({
      key: r.id,
      v: [r.unread, r.id === state.current, r.joined, r.error ? 1 : 0, state.me].join('|'),
      build: () =>
        h(
          'li',
          {},
          h(
            'button',
            { type: 'button', testid: 'room-item', 'data-room': r.id, 'aria-current': r.id === state.current ? 'true' : 'false', title: r.error || r.id, onclick: () => openRoom(r.id) },
            h('span', { class: 'name' }, roomLabel(r)),
            r.unread > 0 ? h('span', { class: 'badge', testid: 'unread-badge' }, unreadText(r.unread)) : null,
          ),
        ),
    })),
  );
}

/** Keyed update of a list: rebuilds only the items whose version changed, keeps order. */
function reconcile(list, items) {
  const existing = new Map();
  for (const e of [...list.children]) existing.set(e.dataset.key, e);
  let prev = null;
  for (const it of items) {
    let e = existing.get(it.key);
    existing.delete(it.key);
    if (!e || e.dataset.v !== it.v) {
      const n = it.build();
      n.dataset.key = it.key;
      n.dataset.v = it.v;
      if (e) e.replaceWith(n);
      e = n;
    }
    const want = prev ? prev.nextSibling : list.firstChild;
    if (want !== e) list.insertBefore(e, want);
    prev = e;
  }
  for (const e of existing.values()) e.remove();
}

function ownStatus(r, msg) {
  if (msg.from !== state.me || msg.deleted) return null;
  let read = false;
  let delivered = false;
  for (const [u, s] of r.readBy) if (u !== state.me && s >= msg.seq) read = true;
  for (const [u, s] of r.deliveredBy) if (u !== state.me && s >= msg.seq) delivered = true;
  return read ? 'read' : delivered ? 'delivered' : 'sent';
}

function readersOf(r, seq) {
  return [...r.readBy].filter(([u, s]) => u !== state.me && s >= seq).map(([u]) => u);
}

const STATUS_MARK = { sent: 'sent', delivered: '✓', read: '✓✓' };
const STATUS_TITLE = { sent: 'sent', delivered: 'delivered', read: 'read' };

function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

function renderBody(msg) {
  if (msg.deleted) return h('div', { class: 'body', testid: 'msg-body' }, 'This message was deleted');
  if (msg.kind === 'file' && msg.file) {
    const href = safeUrl(msg.file.url);
    const name = msg.file.name || msg.file.url;
    const link = href
      ? h('a', { class: 'filelink', testid: 'file-link', href, target: '_blank', rel: 'noopener noreferrer nofollow' }, name)
      : h('span', { class: 'filelink', testid: 'file-link' }, `${name} (${msg.file.url})`);
    const parts = [link];
    if (msg.file.size) parts.push(h('span', { class: 'muted' }, ` ${msg.file.size} bytes`));
    if (msg.body && msg.body !== msg.file.name) parts.push(h('div', {}, msg.body));
    return h('div', { class: 'body', testid: 'msg-body' }, parts);
  }
  return h('div', { class: 'body', testid: 'msg-body' }, msg.body ?? '');
}

function snippet(text, n = 60) {
  if (text == null) return '';
  return text.length > n ? text.slice(0, n) + '…' : text;
}

function buildMessage(r, msg, ctx) {
  const mine = msg.from === state.me;
  const status = ownStatus(r, msg);
  const editing = state.editing && state.editing.room === r.id && state.editing.seq === msg.seq && ctx !== 'root';
  const li = h('li', {
    class: `msg${mine ? ' mine' : ''}${msg.deleted ? ' deleted' : ''}`,
    testid: 'message',
    'data-seq': msg.seq,
    'data-from': msg.from,
    'data-status': status,
    'data-deleted': msg.deleted ? 'true' : null,
  });
  const meta = h(
    'div',
    { class: 'meta' },
    h('button', { type: 'button', class: 'from', testid: 'msg-from', title: 'last seen', onclick: () => lookupUser(msg.from) }, msg.from),
    h('time', { datetime: new Date(msg.ts).toISOString(), title: new Date(msg.ts).toLocaleString() }, fmtTime(msg.ts)),
    msg.edited_ts && !msg.deleted ? h('span', { testid: 'msg-edited', title: new Date(msg.edited_ts).toLocaleString() }, '(edited)') : null,
  );
  li.append(meta);
  if (msg.reply_to && ctx === 'main') {
    const root = r.messages.get(msg.reply_to);
    const label = root ? `↪ reply to ${root.from}: ${root.deleted ? '(deleted)' : snippet(root.body ?? root.file?.name)}` : `↪ reply to #${msg.reply_to}`;
    li.append(h('button', { type: 'button', class: 'reply-ref', testid: 'msg-reply-ref', onclick: () => openThread(r.id, msg.reply_to) }, label));
  }
  if (editing) {
    const ta = h('textarea', { testid: 'edit-input', rows: 2, 'aria-label': 'edit message' });
    ta.value = msg.body ?? '';
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        saveEdit(r, msg, ta.value);
      } else if (e.key === 'Escape') {
        state.editing = null;
        render();
      }
    });
    li.append(
      h(
        'div',
        { class: 'edit-box' },
        ta,
        h('button', { type: 'button', testid: 'edit-save', onclick: () => saveEdit(r, msg, ta.value) }, 'Save'),
        h('button', { type: 'button', testid: 'edit-cancel', onclick: () => { state.editing = null; render(); } }, 'Cancel'),
      ),
    );
    setTimeout(() => ta.focus(), 0);
  } else {
    li.append(renderBody(msg));
  }
  if (!msg.deleted && msg.reactions.length) {
    li.append(
      h(
        'div',
        { class: 'reactions', testid: 'reactions' },
        msg.reactions.map((x) =>
          h('button', { type: 'button', class: x.me ? 'me' : null, testid: 'reaction', 'data-emoji': x.emoji, 'data-count': x.count, title: x.me ? 'remove your reaction' : 'react', onclick: () => toggleReaction(r, msg, x.emoji) }, `${x.emoji} ${x.count}`),
        ),
      ),
    );
  }
  const foot = h('div', { class: 'foot' });
  if (msg.replies > 0 && ctx === 'main') {
    foot.append(h('button', { type: 'button', class: 'link', testid: 'msg-replies', 'data-count': msg.replies, onclick: () => openThread(r.id, msg.seq) }, `${msg.replies} ${msg.replies === 1 ? 'reply' : 'replies'}`));
  }
  if (status) {
    const readers = status === 'read' ? readersOf(r, msg.seq) : [];
    foot.append(h('span', { class: 'status', testid: 'msg-status', 'data-status': status, title: readers.length ? `read by ${readers.join(', ')}` : STATUS_TITLE[status] }, STATUS_MARK[status]));
  }
  li.append(foot);
  if (!msg.deleted && ctx !== 'root') {
    const actions = h('div', { class: 'actions' });
    for (const e of EMOJIS) actions.append(h('button', { type: 'button', testid: 'react-add', 'data-emoji': e, title: `react ${e}`, onclick: () => toggleReaction(r, msg, e) }, e));
    if (ctx === 'main') actions.append(h('button', { type: 'button', testid: 'msg-thread', title: 'reply in thread', onclick: () => openThread(r.id, msg.seq) }, 'Reply'));
    if (canModify(r, msg)) {
      actions.append(h('button', { type: 'button', testid: 'msg-edit', onclick: () => { state.editing = { room: r.id, seq: msg.seq }; render(); } }, 'Edit'));
      actions.append(h('button', { type: 'button', testid: 'msg-delete', onclick: () => deleteMessage(r, msg) }, 'Delete'));
    }
    li.append(actions);
  }
  return li;
}

function buildPending(p) {
  const failed = p.state === 'failed';
  const li = h('li', { class: `msg mine pending${failed ? ' failed' : ''}`, testid: 'message', 'data-status': failed ? 'failed' : 'pending', 'data-client-id': p.client_id, 'data-from': p.from });
  li.append(h('div', { class: 'meta' }, h('span', { class: 'from', testid: 'msg-from' }, p.from || ''), h('time', {}, fmtTime(p.ts))));
  li.append(renderBody({ ...p, deleted: false }));
  const foot = h('div', { class: 'foot' });
  if (failed) {
    foot.append(
      h('span', { class: 'status', testid: 'msg-status', 'data-status': 'failed', title: p.error }, `failed (${p.error})`),
      h('button', { type: 'button', class: 'link', testid: 'msg-retry', onclick: () => retrySend(p.client_id) }, 'Retry'),
      h('button', { type: 'button', class: 'link', testid: 'msg-discard', onclick: () => discardSend(p.client_id) }, 'Discard'),
    );
  } else {
    foot.append(h('span', { class: 'status', testid: 'msg-status', 'data-status': 'pending', title: 'sending' }, state.authed ? 'sending…' : 'waiting for connection…'));
  }
  li.append(foot);
  return li;
}

function messageItems(r, msgs, ctx, pendingFilter) {
  const items = [];
  for (const m of msgs) {
    items.push({ order: m.seq, key: 'm' + m.seq, v: [m._v, ownStatus(r, m), state.editing?.room === r.id && state.editing?.seq === m.seq, r.messages.get(m.reply_to)?._v ?? '', state.me].join('|'), build: () => buildMessage(r, m, ctx) });
  }
  if (ctx === 'main') {
    for (const g of r.gaps) {
      items.push({ order: g.from - 0.5, key: `g${g.from}-${g.to}`, v: '0', build: () => h('li', { class: 'gapnote', testid: 'gap' }, `messages ${g.from}–${g.to} are no longer available`) });
    }
  }
  items.sort((a, b) => a.order - b.order);
  for (const p of state.outbox.values()) {
    if (p.room === r.id && p.seq == null && pendingFilter(p)) {
      items.push({ order: Infinity, key: 'p' + p.client_id, v: [p._v, p.state, state.authed].join('|'), build: () => buildPending(p) });
    }
  }
  return items;
}

function renderRoom() {
  const r = state.current ? state.rooms.get(state.current) : null;
  const list = $('messages');
  const sc = $('scroller');
  if (list.dataset.room !== (r ? r.id : '')) {
    list.replaceChildren();
    list.dataset.room = r ? r.id : '';
  }
  $('room-title').textContent = r ? roomLabel(r) : 'No room open';
  $('composer-input').disabled = !r;
  $('send-btn').disabled = !r;
  if (!r) {
    $('peer-status').textContent = '';
    $('online-count').textContent = '';
    $('typing').textContent = '';
    $('load-older').hidden = true;
    $('history-start').hidden = true;
    return;
  }
  $('peer-status').textContent = r.dm ? describeUser(peerOf(r.id)) : r.joining ? 'joining…' : r.error || '';
  $('online-count').textContent = r.onlineCount != null ? `${r.onlineCount} online` : '';
  $('load-older').hidden = !(r.historyLoaded && r.hasOlder);
  $('load-older').disabled = r.historyLoading;
  $('history-start').hidden = !(r.historyLoaded && !r.hasOlder);

  const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 60;
  const before = sc.scrollHeight;
  const msgs = [...r.messages.values()];
  reconcile(list, messageItems(r, msgs, 'main', () => true));
  if (state.scroll === 'keep') sc.scrollTop += sc.scrollHeight - before;
  else if (state.scroll === 'bottom' || atBottom) sc.scrollTop = sc.scrollHeight;
  state.scroll = null;

  const typists = [...r.typing.keys()];
  $('typing').textContent =
    typists.length === 0 ? '' : typists.length === 1 ? `${typists[0]} is typing…` : typists.length <= 3 ? `${typists.join(', ')} are typing…` : `${typists.length} people are typing…`;
}

function renderThread() {
  const panel = $('thread-panel');
  const t = state.thread;
  panel.hidden = !t;
  if (!t) return;
  const r = getRoom(t.room);
  const rootBox = $('thread-root');
  const root = r.messages.get(t.root) || t.rootMsg;
  const rootKey = root ? `${root.seq}|${root._v}|${ownStatus(r, root)}` : 'none';
  if (rootBox.dataset.v !== rootKey) {
    rootBox.dataset.v = rootKey;
    rootBox.replaceChildren(root ? h('ol', { class: 'messages' }, buildMessage(r, root, 'root')) : h('p', { class: 'muted' }, `message #${t.root}`));
  }
  $('thread-load-older').hidden = !t.hasOlder;
  const list = $('thread-messages');
  const key = `${t.room}:${t.root}`;
  if (list.dataset.thread !== key) {
    list.replaceChildren();
    list.dataset.thread = key;
  }
  reconcile(list, messageItems(r, [...t.messages.values()], 'thread', (p) => p.reply_to === t.root));
  list.scrollTop = list.scrollHeight;
}

function renderSide() {
  const r = state.current ? state.rooms.get(state.current) : null;
  const list = $('online-list');
  const users = r ? [...r.online].sort((a, b) => a[1] - b[1]).map(([u]) => u) : [];
  reconcile(
    list,
    users.map((u) => ({
      key: u,
      v: '1',
      build: () => h('li', {}, h('button', { type: 'button', testid: 'online-user', 'data-user': u, title: 'last seen', onclick: () => lookupUser(u) }, u)),
    })),
  );
  $('user-info').textContent = state.userInfo ? describeUser(state.userInfo) : '';
}

let noticeTimer = null;
function showNotice(text) {
  const n = $('error');
  n.textContent = text;
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    n.hidden = true;
  }, 8000);
}

// ---------------------------------------------------------------- sign-in

function signIn(token) {
  token = token.trim();
  const claims = decodeJwt(token);
  if (!claims || !claims.sub) {
    signinError('That does not look like a JWT.');
    return;
  }
  state.token = token;
  state.claims = claims;
  state.me = claims.sub;
  store.setItem('token', token);
  $('signin-error').hidden = true;
  state.attempt = 0;
  render();
  connect();
}

function signOut(message) {
  const ws = state.ws;
  state.token = null;
  store.removeItem('token');
  store.removeItem('room');
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (ws) detachSocket();
  state.authed = false;
  for (const [, q] of state.requests) clearTimeout(q.timer);
  state.requests.clear();
  state.rooms.clear();
  state.outbox.clear();
  state.current = null;
  state.thread = null;
  state.me = null;
  state.claims = null;
  state.conn = 'signed-out';
  $('messages').replaceChildren();
  $('messages').dataset.room = '';
  if (message) signinError(message);
  render();
}

function signinError(text) {
  const e = $('signin-error');
  e.textContent = text;
  e.hidden = false;
}

async function devSignIn(user) {
  if (!USER_RE.test(user)) {
    signinError('A user name is 1–64 of A–Z a–z 0–9 _ . @ -');
    return;
  }
  let res;
  try {
    res = await fetch(apiUrl('/api/dev/token'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
  } catch (e) {
    devUnavailable();
    signinError(`Dev sign-in is not reachable (${e.message}); paste a token.`);
    return;
  }
  if (res.status === 404) {
    devUnavailable();
    return;
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  if (!res.ok || !body || typeof body.token !== 'string') {
    const why = body?.error?.message ?? body?.message;
    signinError(`Dev sign-in failed: HTTP ${res.status}${why ? ': ' + why : ''}`);
    return;
  }
  signIn(body.token);
}

function devUnavailable() {
  store.setItem('nodev', '1');
  $('dev-signin-form').hidden = true;
  $('dev-unavailable').hidden = false;
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('dev-signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    devSignIn($('dev-user').value.trim());
  });
  $('token-signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token-input').value);
  });
  $('signout').addEventListener('click', () => signOut(null));
  $('reconnect-now').addEventListener('click', () => {
    state.attempt = 0;
    reconnectNow();
  });

  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('join-room-input');
    const name = input.value.trim().replace(/^#/, '');
    if (!ROOM_RE.test(name)) {
      showNotice('A room id is 1–128 of A–Z a–z 0–9 _ . : @ -');
      return;
    }
    input.value = '';
    openRoom(name);
  });
  $('dm-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('dm-user-input');
    const peer = input.value.trim().replace(/^@/, '');
    if (!USER_RE.test(peer) || !state.me) {
      showNotice('A user id is 1–64 of A–Z a–z 0–9 _ . @ -');
      return;
    }
    input.value = '';
    openRoom(dmRoomId(peer));
  });

  const composer = $('composer-input');
  const submit = () => {
    const r = state.current && state.rooms.get(state.current);
    const body = composer.value;
    if (!r || !body.trim()) return;
    if ([...body].length > (state.limits.max_body_chars || 4096)) {
      showNotice(`A message is at most ${state.limits.max_body_chars} characters.`);
      return;
    }
    composer.value = '';
    stopTyping();
    queueSend(r, { body });
  };
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  composer.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  composer.addEventListener('input', () => onComposerInput(state.current && state.rooms.get(state.current), composer.value));
  composer.addEventListener('blur', () => {
    if (!composer.value.trim()) stopTyping();
  });

  $('file-toggle').addEventListener('click', () => {
    const f = $('file-form');
    f.hidden = !f.hidden;
    if (!f.hidden) $('file-url').focus();
  });
  $('file-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const r = state.current && state.rooms.get(state.current);
    if (!r) return;
    const url = $('file-url').value.trim();
    if (!safeUrl(url)) {
      showNotice('The file link must be an http(s) URL.');
      return;
    }
    let name = $('file-name').value.trim();
    if (!name) name = decodeURIComponent(new URL(url, location.href).pathname.split('/').pop() || '') || url;
    const ext = (name.split('.').pop() || '').toLowerCase();
    const mime = MIME[ext] || 'application/octet-stream';
    $('file-url').value = '';
    $('file-name').value = '';
    $('file-form').hidden = true;
    // The size is not known without fetching the file (the page fetches nothing from elsewhere): 0.
    queueSend(r, { body: name, file: { url, name, size: 0, mime } });
  });

  const threadInput = $('thread-input');
  const threadSubmit = () => {
    const t = state.thread;
    const body = threadInput.value;
    if (!t || !body.trim()) return;
    threadInput.value = '';
    stopTyping();
    queueSend(getRoom(t.room), { body, reply_to: t.root });
  };
  $('thread-composer').addEventListener('submit', (e) => {
    e.preventDefault();
    threadSubmit();
  });
  threadInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      threadSubmit();
    }
  });
  threadInput.addEventListener('input', () => onComposerInput(state.thread && getRoom(state.thread.room), threadInput.value));
  $('thread-close').addEventListener('click', () => {
    state.thread = null;
    render();
  });
  $('thread-load-older').addEventListener('click', () => loadThread(true));

  $('load-older').addEventListener('click', () => {
    const r = state.current && state.rooms.get(state.current);
    if (r) loadHistory(r, 'older');
  });
  $('scroller').addEventListener('scroll', () => {
    const sc = $('scroller');
    const r = state.current && state.rooms.get(state.current);
    if (r && sc.scrollTop < 30 && r.hasOlder && !r.historyLoading && sc.scrollHeight > sc.clientHeight) loadHistory(r, 'older');
    if (r && sc.scrollHeight - sc.scrollTop - sc.clientHeight < 60) markReadSoon(r);
  });
}

const MIME = {
  pdf: 'application/pdf',
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  gif: 'image/gif',
  webp: 'image/webp',
  svg: 'image/svg+xml',
  txt: 'text/plain',
  md: 'text/markdown',
  csv: 'text/csv',
  json: 'application/json',
  zip: 'application/zip',
  mp4: 'video/mp4',
  mp3: 'audio/mpeg',
};

function start() {
  wire();
  if (store.getItem('nodev')) devUnavailable();
  const saved = store.getItem('token');
  if (saved) signIn(saved);
  else render();
}

start();
