// End-to-end browser test of the edge's web client (edge/web), in headless Chromium.
//
//   (cd web-test && npm ci)      # playwright-core only; the browser is Debian's chromium
//   EDGE_BIN=target/debug/edge node web-test/browser-test.mjs
//
// It starts its own edge (dev mode, fresh data dir, --listen 127.0.0.1:0, an API key for
// the admin route), signs two users in from two browser contexts (the page's dev sign-in
// when the node offers it, else tokens from `edge token`) and drives the page like a user:
// a refused token; room and DM chat; typing; delivered ✓ and read ✓✓ receipts; unread
// counts; an offline spell (context.setOffline) with messages missed, caught up by
// `?resume=`, and one sent meanwhile; edit, delete, reactions, a thread reply; a file link;
// HTML-looking bodies that must stay text; reload (sessionStorage) and history paging; an
// operator disconnect (4001) with and without retry_ms; a restart of the edge (drain:
// `reconnect` + 1012); last seen. Screenshots go to results/web-*.png. Exits non-zero with
// a message on the first failed check, and after TEST_TIMEOUT_MS (default 120 s) whatever
// happens; the edge is stopped (SIGTERM, then SIGKILL) in every case.
//
// Environment:
//   EDGE_BIN   (required) the edge binary
//   CHROMIUM   Chromium executable (default /usr/bin/chromium)
//   PAGE_URL   serve the page from elsewhere (development: `python3 -m http.server` in
//              edge/web); `?server=<edge addr>` is added. Default: the edge's own `/`.
//   TEST_TIMEOUT_MS  overall bound (default 120000)
//   WEB_TEST_RESULTS where screenshots go (default results/; failures under its tmp/)

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const RESULTS = process.env.WEB_TEST_RESULTS || path.resolve(HERE, '..', 'results');
const EDGE_BIN = process.env.EDGE_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OVERALL_MS = Number(process.env.TEST_TIMEOUT_MS || 120000);
const STEP_MS = 15000; // default bound of one wait

const API_KEY = randomBytes(16).toString('hex'); // the admin API's key for this run
const t0 = Date.now();
let edge = null;
let edgeLog = '';
let browser = null;
let dataDir = null;
let finished = false;

function log(...args) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s]`, ...args);
}

class Failure extends Error {}
function fail(msg) {
  throw new Failure(msg);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}

// ------------------------------------------------------------------ the edge

/** Starts the edge on `listen` (a fresh data dir the first time); resolves with its address. */
function startEdge(listen = '127.0.0.1:0') {
  dataDir ??= mkdtempSync(path.join(tmpdir(), 'edge-web-test-'));
  const args = ['serve', '--listen', listen, '--data-dir', dataDir, '--cores', '2'];
  log(`starting ${EDGE_BIN} ${args.join(' ')}`);
  edge = spawn(EDGE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGE_API_KEYS: API_KEY } });
  edge.stderr.on('data', (d) => {
    edgeLog += d;
    if (edgeLog.length > 200000) edgeLog = edgeLog.slice(-100000);
  });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Failure(`the edge printed no "ws://ADDR/ws" line within 20 s; stdout: ${out}; stderr tail: ${edgeLog.slice(-2000)}`)), 20000);
    edge.stdout.on('data', (d) => {
      out += d;
      const m = /ws:\/\/([^/\s]+)\/ws/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    const me = edge;
    edge.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (!finished && !me.stopping) reject(new Failure(`the edge exited early (code ${code}, signal ${sig}); stderr tail: ${edgeLog.slice(-3000)}`));
    });
    edge.on('error', (e) => reject(new Failure(`cannot run EDGE_BIN ${EDGE_BIN}: ${e.message}`)));
  });
}

async function stopEdge() {
  if (!edge || edge.exitCode != null || edge.signalCode != null) return;
  const exited = new Promise((res) => edge.once('exit', res));
  edge.stopping = true;
  edge.kill('SIGTERM');
  const t = setTimeout(() => {
    log('the edge did not stop within 5 s of SIGTERM: SIGKILL');
    edge.kill('SIGKILL');
  }, 5000);
  await Promise.race([exited, new Promise((res) => setTimeout(res, 7000))]);
  clearTimeout(t);
}

/**
 * Whether something still accepts connections on `addr`: the listener of an exited edge
 * can outlive its process for a moment (its io_uring is torn down after the exit). The
 * restart below does not wait for it: `edge serve` itself waits up to 2 s for a listener
 * that goes away before refusing the address, and this test checks that it does.
 */
async function portAccepts(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  return new Promise((res) => {
    const sock = net.connect({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      res(true);
    });
    sock.once('error', () => res(false));
  });
}

function mintToken(user) {
  return new Promise((resolve, reject) => {
    execFile(EDGE_BIN, ['token', '--user', user, '--data-dir', dataDir], { timeout: 10000 }, (err, stdout, stderr) => {
      if (err) reject(new Failure(`edge token --user ${user} failed: ${err.message} ${stderr}`));
      else resolve(stdout.trim().split('\n').pop().trim());
    });
  });
}

// ------------------------------------------------------------------ page helpers

const sel = (id) => `[data-testid="${id}"]`;

/** Polls `fn` until it returns a truthy value; fails with `what` (and the last value seen). */
async function waitFor(what, fn, timeout = STEP_MS, diag = null) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = `error: ${e.message}`;
    }
    if (Date.now() > end) {
      if (diag) last = { last, diag: await diag() };
      fail(`timed out after ${timeout} ms waiting for: ${what}\n  last seen: ${JSON.stringify(last)?.slice(0, 3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The messages a page shows in a list (`messages` or `thread-messages`), read from the DOM. */
function timeline(page, list = 'messages') {
  return page.evaluate((list) => {
    const root = document.querySelector(`[data-testid="${list}"]`);
    return [...root.querySelectorAll(':scope > [data-testid="message"]')].map((li) => ({
      seq: li.dataset.seq ? Number(li.dataset.seq) : null,
      from: li.dataset.from,
      status: li.dataset.status || null,
      deleted: li.dataset.deleted === 'true',
      body: li.querySelector('[data-testid="msg-body"]')?.textContent ?? null,
      edited: !!li.querySelector('[data-testid="msg-edited"]'),
      mark: li.querySelector('[data-testid="msg-status"]')?.textContent ?? null,
      reactions: [...li.querySelectorAll('[data-testid="reaction"]')].map((b) => ({ emoji: b.dataset.emoji, count: Number(b.dataset.count) })),
      replies: Number(li.querySelector('[data-testid="msg-replies"]')?.dataset.count || 0),
    }));
  }, list);
}

async function findMsg(page, body, list = 'messages') {
  return (await timeline(page, list)).find((m) => m.body === body);
}

/** The `message` element of `body` in the main list (for clicking its controls). */
function msgLocator(page, body) {
  const exact = new RegExp(`^${body.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  return page.locator(`${sel('messages')} > ${sel('message')}`).filter({ has: page.locator(sel('msg-body'), { hasText: exact }) });
}

async function screenshot(page, name) {
  const file = path.join(RESULTS, `web-${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot ${path.relative(path.resolve(HERE, '..'), file)}`);
}

async function connState(page) {
  return page.getAttribute(sel('conn-status'), 'data-state');
}

async function sendText(page, text) {
  await page.fill(sel('composer-input'), text);
  await page.press(sel('composer-input'), 'Enter');
}

async function openRoomByName(page, room) {
  await page.fill(sel('join-room-input'), room);
  await page.click(sel('join-room-btn'));
  await waitFor(`${room} open`, async () => (await page.textContent(sel('room-title'))) === `#${room}`);
}

async function clickRoom(page, roomId, label) {
  await page.click(`${sel('room-item')}[data-room="${roomId}"]`);
  await waitFor(`${roomId} open`, async () => (await page.textContent(sel('room-title'))) === label);
}

/** The unread count a room's entry shows (null: none), read in one go (it is re-rendered). */
function unreadBadge(page, roomId) {
  return page.evaluate((roomId) => {
    const item = [...document.querySelectorAll('[data-testid="room-item"]')].find((b) => b.dataset.room === roomId);
    return item?.querySelector('[data-testid="unread-badge"]')?.textContent.trim() ?? null;
  }, roomId);
}

// ------------------------------------------------------------------ the run

async function main() {
  check(EDGE_BIN, 'EDGE_BIN is required: the edge binary to test (e.g. EDGE_BIN=target/debug/edge)');
  mkdirSync(RESULTS, { recursive: true });
  const addr = await startEdge();
  log(`edge listening on ${addr}`);

  // Which page, and how users sign in.
  let pageUrl;
  if (process.env.PAGE_URL) {
    const u = new URL(process.env.PAGE_URL);
    u.searchParams.set('server', addr);
    pageUrl = u.toString();
  } else {
    pageUrl = `http://${addr}/`;
    const res = await fetch(pageUrl).catch((e) => fail(`GET ${pageUrl} failed: ${e.message}`));
    const text = await res.text();
    check(res.ok && text.includes('app.js'), `the edge does not serve the page at / (HTTP ${res.status}); set PAGE_URL to test a page served elsewhere`);
  }
  let devSignIn = false;
  if (!process.env.PAGE_URL) {
    const res = await fetch(`http://${addr}/api/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: 'probe' }) }).catch(() => null);
    devSignIn = !!res && res.status === 200;
    if (res && res.status === 200) {
      const j = await res.json();
      check(typeof j.token === 'string' && j.user === 'probe', `POST /api/dev/token answered 200 without {token, user}: ${JSON.stringify(j)}`);
    }
  }
  log(`page ${pageUrl}; sign-in by ${devSignIn ? 'the page\'s dev sign-in (POST /api/dev/token)' : 'tokens minted with `edge token`'}`);

  const token = async (user) => {
    if (!devSignIn) return mintToken(user);
    const res = await fetch(`http://${addr}/api/dev/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
    return (await res.json()).token;
  };

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  const problems = [];
  const consoleLines = new Map(); // user -> console lines of the page
  const sockets = new Map(); // user -> [{url, frames}] of the page's WebSockets
  async function newUser(name) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10000); // a single action; the waits below have their own bounds
    const page = await context.newPage();
    page.on('dialog', (d) => {
      problems.push(`${name}: a ${d.type()} dialog fired: ${d.message()}`);
      d.dismiss().catch(() => {});
    });
    page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
    consoleLines.set(name, []);
    sockets.set(name, []);
    page.on('websocket', (ws) => {
      const entry = { url: ws.url(), frames: [] };
      sockets.get(name).push(entry);
      ws.on('framereceived', (f) => entry.frames.push(String(f.payload)));
    });
    page.on('console', (m) => {
      consoleLines.get(name).push(m.text());
      if (m.type() === 'error' && !/WebSocket connection to|ERR_INTERNET_DISCONNECTED/.test(m.text())) problems.push(`${name}: console error: ${m.text()}`);
    });
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (!['data:', 'about:'].includes(u.protocol) && u.host !== new URL(pageUrl).host && u.host !== addr) problems.push(`${name}: the page fetched another origin: ${r.url()}`);
    });
    await page.goto(pageUrl);
    if (devSignIn) {
      await page.fill(sel('dev-user'), name);
      await page.click(sel('dev-signin'));
    } else {
      await page.fill(sel('token-input'), await mintToken(name));
      await page.click(sel('token-signin'));
    }
    await waitFor(`${name} signed in and online`, async () => (await connState(page)) === 'online' && (await page.textContent(sel('me'))) === name);
    return { name, context, page };
  }

  // ---- 0. a token the server refuses (a valid JWT shape, a wrong signature)
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('dialog', (d) => {
      problems.push(`mallory: a dialog fired: ${d.message()}`);
      d.dismiss().catch(() => {});
    });
    await page.goto(pageUrl);
    const good = await token('mallory');
    const bad = good.slice(0, -4) + (good.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    await page.fill(sel('token-input'), bad);
    await page.click(sel('token-signin'));
    await waitFor('a refused token brings the sign-in form back with the reason', async () => (await page.isVisible(sel('signin-view'))) && (await page.isVisible(sel('signin-error'))) && /refused|signed out/i.test(await page.textContent(sel('signin-error'))));
    const kept = await page.evaluate(() => Object.keys(sessionStorage).filter((k) => k.endsWith('token')));
    check(kept.length === 0, `a refused token stayed in sessionStorage: ${kept}`);
    log(`a bad token is refused: "${await page.textContent(sel('signin-error'))}"`);
    await context.close();
  }

  const alice = await newUser('alice');
  const bob = await newUser('bob');
  const A = alice.page;
  const B = bob.page;
  log('alice and bob are signed in');

  // ---- 1. a room: both join, chat, presence, typing, read receipt
  await openRoomByName(A, 'lobby');
  await openRoomByName(B, 'lobby');
  await waitFor('alice sees bob in the online list of #lobby', () => A.locator(`${sel('online-user')}[data-user="bob"]`).count());
  await sendText(A, 'hello bob');
  const hello = await waitFor('bob sees "hello bob" from alice', async () => {
    const m = await findMsg(B, 'hello bob');
    return m && m.from === 'alice' && m.seq > 0 && m;
  });
  await sendText(B, 'hi alice');
  await waitFor('alice sees "hi alice" from bob', async () => (await findMsg(A, 'hi alice'))?.from === 'bob');
  await waitFor('alice\'s "hello bob" is confirmed (no pending copy left)', async () => {
    const t = await timeline(A);
    return t.filter((m) => m.body === 'hello bob').length === 1 && !t.some((m) => m.status === 'pending' || m.status === 'failed');
  });
  // Read receipt: bob has #lobby open, so alice's message turns ✓✓.
  await waitFor('alice sees ✓✓ (read by bob) on "hello bob"', async () => {
    const m = await findMsg(A, 'hello bob');
    return m && m.status === 'read' && m.mark === '✓✓';
  });
  log(`room chat ok (seq ${hello.seq}), read receipt ✓✓ shown`);

  // Typing: bob types without sending; alice sees it, then sees it stop.
  await B.click(sel('composer-input'));
  await B.keyboard.type('I am typing', { delay: 40 });
  await waitFor('alice sees "bob is typing…"', async () => (await A.textContent(sel('typing'))).includes('bob is typing'));
  await screenshot(A, '1-room-typing');
  await B.fill(sel('composer-input'), '');
  await B.dispatchEvent(sel('composer-input'), 'input');
  await waitFor('alice\'s typing indicator clears after bob stops', async () => (await A.textContent(sel('typing'))) === '', 10000);
  log('typing indicator ok');

  // ---- 2. a DM, unread counts, ✓ delivered before ✓✓ read
  await B.fill(sel('dm-user-input'), 'alice');
  await B.click(sel('dm-open-btn'));
  const dm = 'dm:alice:bob';
  await waitFor('bob has the DM with alice open', async () => (await B.textContent(sel('room-title'))) === '@alice');
  await sendText(B, 'psst alice, a DM');
  await waitFor('alice gets the DM in her room list with 1 unread', async () => (await unreadBadge(A, dm)) === '1');
  // Bob looks at the DM, not #lobby: alice's next lobby message is delivered, not read.
  await sendText(A, 'are you there?');
  await waitFor('alice sees ✓ (delivered, not read) on "are you there?"', async () => {
    const m = await findMsg(A, 'are you there?');
    return m && m.status === 'delivered' && m.mark === '✓';
  });
  await waitFor('bob sees 1 unread in #lobby', async () => (await unreadBadge(B, 'lobby')) === '1');
  await screenshot(B, '2-dm-unread');
  await clickRoom(B, 'lobby', '#lobby');
  await waitFor('"are you there?" turns ✓✓ once bob opens #lobby', async () => (await findMsg(A, 'are you there?'))?.status === 'read');
  await waitFor('bob\'s #lobby unread badge clears', async () => (await unreadBadge(B, 'lobby')) === null);
  await clickRoom(A, dm, '@bob');
  await waitFor('alice sees bob\'s DM', async () => (await findMsg(A, 'psst alice, a DM'))?.from === 'bob');
  await waitFor('alice\'s DM unread badge clears', async () => (await unreadBadge(A, dm)) === null);
  await sendText(A, 'dm answer from alice');
  await clickRoom(B, dm, '@alice');
  await waitFor('bob sees alice\'s DM answer', async () => (await findMsg(B, 'dm answer from alice'))?.from === 'alice');
  log('DM ok, unread counts ok, ✓ delivered then ✓✓ read ok');
  await clickRoom(A, 'lobby', '#lobby');
  await clickRoom(B, 'lobby', '#lobby');
  await waitFor('no unread left on the DM the users saw before switching away', async () => (await unreadBadge(A, dm)) === null && (await unreadBadge(B, dm)) === null);

  // ---- 3. offline: bob drops off; alice writes; bob writes too (queued); bob comes back
  const bobHad = Math.max(...(await timeline(B)).map((m) => m.seq || 0));
  const bobSockets = sockets.get('bob').length;
  await bob.context.setOffline(true);
  await waitFor('bob\'s page notices it is offline', async () => (await connState(B)) !== 'online', 15000);
  const missed = [1, 2, 3, 4, 5].map((i) => `missed while offline ${i}`);
  for (const text of missed) await sendText(A, text);
  await waitFor('alice\'s 5 messages are acked', async () => {
    const t = await timeline(A);
    return missed.every((b) => t.some((m) => m.body === b && m.seq));
  });
  await sendText(B, 'written while offline');
  await waitFor('bob\'s offline message shows as pending', async () => (await findMsg(B, 'written while offline'))?.status === 'pending');
  await screenshot(B, '3-offline-pending');
  await bob.context.setOffline(false);
  await waitFor('bob reconnects', async () => (await connState(B)) === 'online', 40000);
  await waitFor('bob sees the 5 missed messages, in order, once each, and his queued one sent', async () => {
    const t = await timeline(B);
    const seqs = t.filter((m) => m.seq).map((m) => m.seq);
    const ordered = seqs.every((s, i) => i === 0 || s > seqs[i - 1]);
    const idx = missed.map((b) => t.findIndex((m) => m.body === b));
    const once = missed.every((b) => t.filter((m) => m.body === b).length === 1);
    const mine = t.filter((m) => m.body === 'written while offline');
    return ordered && once && idx.every((x, i) => x >= 0 && (i === 0 || x > idx[i - 1])) && mine.length === 1 && mine[0].seq && !t.some((m) => m.status === 'pending');
  }, 20000);
  // The catch-up came by `?resume=lobby:<last seq bob had>`: `joined` (no id), then the missed messages.
  {
    // (attempts made while offline failed: the one that got a `welcome` counts)
    const resumed = sockets.get('bob').slice(bobSockets).find((w) => new URL(w.url).searchParams.get('resume') && w.frames.some((f) => f.includes('"welcome"')));
    check(resumed, `bob's page reconnected without ?resume=: ${JSON.stringify(sockets.get('bob').slice(bobSockets).map((w) => w.url))}`);
    const entries = new URL(resumed.url).searchParams.get('resume').split(',');
    check(entries.includes(`lobby:${bobHad}`), `bob's resume= does not name lobby:${bobHad} (the last seq he had): ${entries}`);
    const frames = resumed.frames.map((f) => JSON.parse(f));
    const joinedAt = frames.findIndex((f) => f.type === 'joined' && f.room === 'lobby' && f.id == null);
    const caught = frames.filter((f, i) => i > joinedAt && f.type === 'message' && f.room === 'lobby' && missed.includes(f.body)).map((f) => f.body);
    check(joinedAt >= 0 && caught.join('|') === missed.join('|'), `bob's resumed socket did not carry joined + the 5 missed messages in order: ${JSON.stringify(frames.slice(0, 12))}`);
    log(`resume=${entries.join(',')} caught up ${caught.length} messages`);
  }
  await waitFor('alice gets bob\'s queued message once', async () => (await timeline(A)).filter((m) => m.body === 'written while offline' && m.from === 'bob').length === 1);
  await waitFor('bob, back with #lobby open, reads what he missed: alice sees ✓✓ on "missed while offline 5"', async () => (await findMsg(A, missed[4]))?.status === 'read');
  await screenshot(B, '4-caught-up');
  log('offline catch-up ok (missed messages in order, no duplicates; the queued send delivered once)');

  // ---- 4. edit, delete, reaction, thread reply
  await sendText(A, 'edit me');
  await sendText(A, 'delete me');
  await waitFor('bob has both messages to change', async () => (await findMsg(B, 'edit me')) && (await findMsg(B, 'delete me')));
  const editTarget = msgLocator(A, 'edit me');
  await editTarget.locator(sel('msg-edit')).click();
  await A.fill(sel('edit-input'), 'edited text');
  await A.click(sel('edit-save'));
  await waitFor('bob sees the edit with "(edited)"', async () => (await findMsg(B, 'edited text'))?.edited === true);
  check(!(await findMsg(B, 'edit me')), 'bob still shows the old body "edit me"');
  const delTarget = msgLocator(A, 'delete me');
  await delTarget.locator(sel('msg-delete')).click();
  await waitFor('bob sees "delete me" become a tombstone', async () => {
    const t = await timeline(B);
    return !t.some((m) => m.body === 'delete me') && t.some((m) => m.deleted && m.from === 'alice' && m.body === 'This message was deleted');
  });
  await msgLocator(B, 'edited text').locator(`${sel('react-add')}[data-emoji="🎉"]`).click();
  await waitFor('alice sees bob\'s 🎉 reaction', async () => {
    const m = await findMsg(A, 'edited text');
    return m && m.reactions.some((r) => r.emoji === '🎉' && r.count === 1);
  });
  // A reaction taken back: bob adds 👍 and clicks his own 👍 again (op remove).
  await msgLocator(B, 'edited text').locator(`${sel('react-add')}[data-emoji="👍"]`).click();
  await waitFor('alice sees bob\'s 👍', async () => (await findMsg(A, 'edited text'))?.reactions.some((r) => r.emoji === '👍'));
  await msgLocator(B, 'edited text').locator(`${sel('reaction')}[data-emoji="👍"]`).click();
  await waitFor('alice sees bob\'s 👍 taken back, his 🎉 kept', async () => {
    const m = await findMsg(A, 'edited text');
    return m && !m.reactions.some((r) => r.emoji === '👍') && m.reactions.some((r) => r.emoji === '🎉' && r.count === 1);
  });
  // Thread: alice opens the thread of "hello bob"; bob replies in it.
  await msgLocator(A, 'hello bob').locator(sel('msg-thread')).click();
  await waitFor('alice\'s thread panel opens', () => A.isVisible(sel('thread-panel')));
  await msgLocator(B, 'hello bob').locator(sel('msg-thread')).click();
  await B.fill(sel('thread-input'), 'a reply in the thread');
  await B.click(sel('thread-send'));
  await waitFor('alice sees the reply in her open thread', async () => (await findMsg(A, 'a reply in the thread', 'thread-messages'))?.from === 'bob');
  await waitFor('the root shows "1 reply" to alice', async () => (await findMsg(A, 'hello bob'))?.replies === 1);
  await screenshot(A, '5-edit-delete-react-thread');
  await A.click(sel('thread-close'));
  // The thread's history: bob closes and reopens it (history with `thread`).
  await B.click(sel('thread-close'));
  await msgLocator(B, 'hello bob').locator(sel('msg-replies')).click();
  await waitFor('bob\'s thread history holds the reply', async () => (await findMsg(B, 'a reply in the thread', 'thread-messages'))?.from === 'bob');
  await B.click(sel('thread-close'));
  log('edit, delete, reaction and thread reply seen by the other user');

  // ---- 5. a file link, and bodies that must stay text
  await A.click(sel('file-toggle'));
  await A.fill(sel('file-url'), 'https://files.example/report.pdf');
  await A.fill(sel('file-name'), 'report <b>Q3</b>.pdf');
  await A.click(sel('file-send'));
  await waitFor('bob sees the file link', async () => {
    const a = B.locator(`${sel('messages')} a${sel('file-link')}`);
    return (await a.count()) === 1 && (await a.getAttribute('href')) === 'https://files.example/report.pdf' && (await a.textContent()) === 'report <b>Q3</b>.pdf';
  });
  const xss = ['<img src=x onerror=alert(1)>', '<script>alert(1)</script>', '<svg onload=alert(1)></svg><a href="javascript:alert(1)">x</a>'];
  for (const body of xss) await sendText(A, body);
  await waitFor('bob shows the HTML-looking bodies as literal text', async () => {
    const t = await timeline(B);
    return xss.every((b) => t.some((m) => m.body === b));
  });
  await B.waitForTimeout(500);
  const injected = await B.evaluate(() => document.querySelectorAll('[data-testid="messages"] img, [data-testid="messages"] script, [data-testid="messages"] svg, [data-testid="messages"] b, [data-testid="messages"] a[href^="javascript"]').length);
  check(injected === 0, `${injected} element(s) were injected from message bodies into bob's page`);
  check(!problems.some((p) => p.includes('dialog')), `a dialog fired: ${problems.join('; ')}`);
  await B.evaluate(() => {
    const sc = document.querySelector('[data-testid="scroller"]');
    sc.scrollTop = sc.scrollHeight;
  });
  await screenshot(B, '6-xss-as-text');
  log('file link ok; HTML bodies rendered as text, nothing injected, no dialog');

  // ---- 6. reload keeps the session; history pages with "load older"
  const before = (await timeline(A)).filter((m) => m.seq).length;
  for (let i = 1; i <= 50 - before + 10; i++) {
    await sendText(A, `filler ${i}`);
    await A.waitForTimeout(30); // a user's pace, well under the per-connection message rate
  }
  const last = `filler ${50 - before + 10}`;
  await waitFor('alice\'s filler messages are acked', async () => (await findMsg(A, last))?.seq > 0, 20000);
  const total = (await timeline(A)).filter((m) => m.seq).length;
  await B.reload();
  await waitFor('bob is still signed in after a reload (sessionStorage) and back in #lobby', async () => (await connState(B)) === 'online' && (await B.textContent(sel('room-title'))) === '#lobby');
  await waitFor('bob\'s reloaded #lobby shows the newest 50 messages and a "load older" control', async () => {
    const t = await timeline(B);
    return t.length === 50 && t[49].body === last && (await B.isVisible(sel('load-older')));
  });
  await waitFor(`bob pages back to all ${total} messages, in order, with the start of the room shown`, async () => {
    // A page served from the ring may name a next_before whose page is empty: page on.
    const more = B.locator(sel('load-older'));
    if ((await more.isVisible()) && (await more.isEnabled())) await more.click({ timeout: 1000 }).catch(() => {});
    const t = await timeline(B);
    const seqs = t.map((m) => m.seq);
    return t.length === total && seqs.every((s, i) => i === 0 || s > seqs[i - 1]) && t[0].body === 'hello bob' && (await B.isVisible(sel('history-start')));
  });
  await waitFor('the reloaded room bob is looking at shows no unread count', async () => (await unreadBadge(B, 'lobby')) === null);
  const reacted = await findMsg(B, 'edited text');
  check(reacted?.reactions.some((r) => r.emoji === '🎉' && r.count === 1), `history does not show the 🎉 reaction on "edited text": ${JSON.stringify(reacted)}`);
  log(`reload kept the session; history paged ${total} messages with load older`);

  // ---- 7. an operator disconnects bob (close 4001): with retry_ms he comes back after it,
  //         without it he stays off until he asks
  {
    const admin = (body) =>
      fetch(`http://${addr}/api/admin/users/bob/disconnect`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body: JSON.stringify(body) });
    const from = consoleLines.get('bob').length; // before the call: the page may act before it returns
    const res = await admin({ reason: 'moved', retry_ms: 800 });
    if (res.status === 404) {
      log('SKIP operator disconnect: this edge has no /api/admin/users/{user}/disconnect');
    } else {
      const answer = await res.text();
      check(res.ok, `POST /api/admin/users/bob/disconnect answered ${res.status}: ${answer}`);
      await waitFor(`bob's page closes on 4001 and comes back after the given retry_ms (the API answered ${answer})`, async () => {
        const lines = consoleLines.get('bob').slice(from);
        const planned = lines.map((l) => /reconnecting in (\d+) ms .*server retry_ms (\d+)\)/.exec(l)).find(Boolean);
        return lines.some((l) => l.includes('code 4001, reason moved')) && planned && Number(planned[2]) === 800 && Number(planned[1]) >= 800 && (await connState(B)) === 'online';
      }, STEP_MS, async () => ({
        console: consoleLines.get('bob').slice(from),
        state: await connState(B),
        sockets: sockets.get('bob').slice(-3).map((w) => ({ url: w.url, frames: w.frames.length, last: w.frames.slice(-3) })),
      }));
      const socketsBefore = sockets.get('bob').length;
      const res2 = await admin({ reason: 'kicked' });
      check(res2.ok, `POST /api/admin/users/bob/disconnect answered ${res2.status}`);
      await waitFor('bob\'s page says it was disconnected, with the reason', async () => (await connState(B)) === 'disconnected' && (await B.textContent(sel('error'))).includes('kicked'));
      await B.waitForTimeout(2000);
      check(sockets.get('bob').length === socketsBefore && (await connState(B)) === 'disconnected', 'bob\'s page reconnected by itself after a disconnect without retry_ms');
      await screenshot(B, '7-disconnected-by-operator');
      await B.click(sel('reconnect-now'));
      await waitFor('bob reconnects when he asks', async () => (await connState(B)) === 'online');
      await sendText(A, 'after the kick');
      await waitFor('bob, back, gets new messages', async () => (await findMsg(B, 'after the kick'))?.from === 'alice');
      await waitFor('the room bob is looking at shows no unread count', async () => (await unreadBadge(B, 'lobby')) === null);
      log('operator disconnect ok: 4001 with retry_ms honoured; without it the page waits for the user');
    }
  }

  // ---- 8. the edge restarts (SIGTERM: `reconnect` with retry_ms, close 1012): both pages come back
  const sinceRestart = { alice: consoleLines.get('alice').length, bob: consoleLines.get('bob').length };
  await stopEdge();
  log('edge stopped (SIGTERM); starting it again on the same address and data dir');
  if (await portAccepts(addr)) log(`${addr} still accepts connections after the edge exited: restarting at once`);
  check((await startEdge(addr)) === addr, 'the restarted edge listens elsewhere');
  for (const [who, page] of [['alice', A], ['bob', B]]) {
    await waitFor(`${who} reconnects to the restarted edge`, async () => (await connState(page)) === 'online', 40000);
    const lines = consoleLines.get(who).slice(sinceRestart[who]);
    const closed = lines.find((l) => /connection closed \(code 1012/.test(l));
    const planned = lines.map((l) => /reconnecting in (\d+) ms .*server retry_ms (\d+)\)/.exec(l)).find(Boolean);
    check(closed, `${who}'s page did not see the drain close 1012: ${JSON.stringify(lines)}`);
    check(planned && Number(planned[1]) >= Number(planned[2]), `${who}'s page did not wait the server's retry_ms before reconnecting: ${JSON.stringify(lines)}`);
    log(`${who}: closed 1012 on drain, waited ${planned[1]} ms (server retry_ms ${planned[2]}) before reconnecting`);
  }
  await sendText(A, 'after the restart');
  await waitFor('bob gets a message sent after the restart, and his #lobby has no duplicates', async () => {
    const t = await timeline(B);
    const seqs = t.map((m) => m.seq);
    return t.some((m) => m.body === 'after the restart' && m.from === 'alice') && new Set(seqs).size === seqs.length && seqs.every((x, i) => i === 0 || x > seqs[i - 1]);
  });
  log('restart ok');

  // ---- 9. last seen: bob leaves
  await bob.context.close();
  await waitFor('bob leaves alice\'s online list', async () => (await A.locator(`${sel('online-user')}[data-user="bob"]`).count()) === 0, 15000);
  await msgLocator(A, 'hi alice').locator(sel('msg-from')).click();
  await waitFor('alice sees when bob was last seen', async () => /bob was last seen/.test(await A.textContent(sel('user-info'))));
  await screenshot(A, '8-last-seen');
  log(`last seen ok: "${await A.textContent(sel('user-info'))}"`);

  check(problems.length === 0, `problems seen in the pages:\n  ${problems.join('\n  ')}`);
}

// ------------------------------------------------------------------ bounded run

async function cleanup() {
  finished = true;
  if (browser) await browser.close().catch(() => {});
  await stopEdge();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
}

const overall = setTimeout(async () => {
  console.error(`FAIL: the test did not finish within ${OVERALL_MS} ms`);
  setTimeout(() => process.exit(1), 10000).unref(); // even if cleanup hangs
  await cleanup().catch(() => {});
  process.exit(1);
}, OVERALL_MS);

// However this process ends (an exception, a closed stdout), it takes its edge along.
process.on('exit', () => {
  if (edge && edge.exitCode == null && edge.signalCode == null) edge.kill('SIGKILL');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, async () => {
    await cleanup().catch(() => {});
    process.exit(130);
  });
}

main().then(
  async () => {
    clearTimeout(overall);
    await cleanup();
    log('PASS: browser end-to-end test');
    process.exit(0);
  },
  async (err) => {
    clearTimeout(overall);
    console.error(`FAIL: ${err instanceof Failure ? err.message : err.stack || err}`);
    if (edgeLog) {
      const file = path.join(RESULTS, 'tmp', 'web-edge-stderr.log');
      try {
        mkdirSync(path.dirname(file), { recursive: true });
        writeFileSync(file, edgeLog);
        console.error(`(the edge's stderr is in ${file})`);
      } catch {
        /* results dir missing */
      }
    }
    if (browser) {
      for (const ctx of browser.contexts()) {
        for (const [i, p] of ctx.pages().entries()) await p.screenshot({ path: path.join(RESULTS, 'tmp', `web-failure-${browser.contexts().indexOf(ctx)}-${i}.png`) }).catch(() => {});
      }
    }
    setTimeout(() => process.exit(1), 10000).unref();
    await cleanup().catch(() => {});
    process.exit(1);
  },
);
