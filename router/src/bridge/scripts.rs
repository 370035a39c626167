//! The two Lua scripts the bridge runs, and how they are called: EVALSHA,
//! loaded with SCRIPT LOAD on first use and again after NOSCRIPT (a
//! restarted Redis forgets its scripts).
//!
//! What must stay true:
//! - Each script touches only keys of one room (all hash-tagged alike), so
//!   it runs on one Redis Cluster slot.
//! - [`PUBLISH`] validates every message before its first write: Redis does
//!   not roll back a script that fails halfway.
//! - [`PRESENCE`] changes the per-user entry count only when the lease set
//!   really changed (ZADD returned 1, ZREM returned 1), so replaying a call
//!   is harmless and each online/offline transition is reported once, to
//!   whichever caller caused it.

use std::sync::Mutex;

use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

/// Sequences and publishes one batch of one room's messages.
///
/// KEYS: seq counter, recent stream, then one dedupe key per message that has
/// a receipt, in batch order. ARGV: channel, recent_len, sharded (`1`/`0`),
/// the floor (`""`: none, `"?"`: unknown, or the shared store's highest seq),
/// the dedupe keys' time to live in ms, a notice frame (`""`: none; see below),
/// the number `x` of other channels, those `x` channels (each message is
/// published there too, after the room's channel: a DM room's users'
/// channels), then per message: frame bytes,
/// offset of the archived u64 seq, offset of the 20-byte JSON slot (both
/// 0-based), and its receipt (`""`: no dedupe key).
///
/// Returns the first seq when no message has a dedupe key: the batch got
/// `first..first + n`. Otherwise `{first, i, seq, receipt, frame, ...}`: the
/// messages not listed got consecutive seqs from `first`, in batch order;
/// each listed one (0-based index `i`) was sequenced before, by any node,
/// within the key's time to live (or earlier in this batch), and is neither
/// sequenced nor published again: its original seq and receipt come back,
/// with its frame if the stream still holds it (`""` if not).
///
/// If the stream already holds a seq at or above the counter (the counter
/// was lost while the stream survived), the counter jumps past it, so
/// stream ids, and seqs, only grow. If both are gone (a new room, or Redis
/// lost its data) and a floor is given, the counter starts at the floor; an
/// unknown floor returns 0 before any write: the caller reads the store's
/// highest seq and calls again with it. A counter started at a floor above 0
/// means Redis lost the room: the notice frame (an `epoch` event) is published
/// on the room's channel first, so members hear of it before the first
/// message of the new sequence.
pub(crate) const PUBLISH: &str = r"
local floor = ARGV[4]
if floor ~= '' and floor ~= '?' then
  local f = tonumber(floor)
  if not f or f < 0 or f ~= math.floor(f) then
    return redis.error_reply('ERR chat: bad floor')
  end
end
local ttl = tonumber(ARGV[5])
if not ttl or ttl < 1 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR chat: bad dedupe ttl')
end
local notice = ARGV[6]
local x = tonumber(ARGV[7])
if not x or x < 0 or x ~= math.floor(x) then
  return redis.error_reply('ERR chat: bad channel count')
end
local m = 8 + x
local n = (#ARGV - m + 1) / 4
if n < 1 or n ~= math.floor(n) then
  return redis.error_reply('ERR chat: bad argument count')
end
local keyof, k = {}, 2
for i = 0, n - 1 do
  local f = ARGV[m + 4 * i]
  local a, b = tonumber(ARGV[m + 1 + 4 * i]), tonumber(ARGV[m + 2 + 4 * i])
  if not a or not b or a < 0 or b < 0 or a + 8 > #f or b + 20 > #f then
    return redis.error_reply('ERR chat: seq offsets outside the frame')
  end
  if ARGV[m + 3 + 4 * i] ~= '' then
    k = k + 1
    keyof[i] = KEYS[k]
  end
end
if k ~= #KEYS then
  return redis.error_reply('ERR chat: dedupe keys do not match the receipts')
end
local cmd = 'PUBLISH'
if ARGV[3] == '1' then cmd = 'SPUBLISH' end
if floor ~= '' and redis.call('EXISTS', KEYS[1]) == 0 and not redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1] then
  if floor == '?' then return 0 end
  redis.call('SET', KEYS[1], floor)
  if notice ~= '' and tonumber(floor) > 0 then
    redis.call(cmd, ARGV[1], notice)
  end
end
local dup, seen, fresh = {}, {}, 0
for i = 0, n - 1 do
  local key = keyof[i]
  if key and (seen[key] or redis.call('EXISTS', key) == 1) then
    dup[i] = key
  else
    fresh = fresh + 1
    if key then seen[key] = true end
  end
end
local first = 0
if fresh > 0 then
  local top = redis.call('INCRBY', KEYS[1], fresh)
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  if last then
    local lseq = tonumber(string.match(last[1], '^(%d+)-'))
    if lseq and lseq > top - fresh then
      top = lseq + fresh
      redis.call('SET', KEYS[1], string.format('%d', top))
    end
  end
  first = top - fresh + 1
end
local seq = first
for i = 0, n - 1 do
  if not dup[i] then
    local f = ARGV[m + 4 * i]
    local a, b = tonumber(ARGV[m + 1 + 4 * i]), tonumber(ARGV[m + 2 + 4 * i])
    f = string.sub(f, 1, a) .. struct.pack('<I8', seq) .. string.sub(f, a + 9)
    f = string.sub(f, 1, b) .. string.format('%20d', seq) .. string.sub(f, b + 21)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-0', seq), 'f', f)
    redis.call(cmd, ARGV[1], f)
    for c = 8, 7 + x do
      redis.call(cmd, ARGV[c], f)
    end
    if keyof[i] then
      redis.call('SET', keyof[i], string.format('%d ', seq) .. ARGV[m + 3 + 4 * i], 'PX', ttl)
    end
    seq = seq + 1
  end
end
if k == 2 then return first end
local out = {first}
for i = 0, n - 1 do
  if dup[i] then
    local v = redis.call('GET', dup[i]) or ''
    local s, receipt = string.match(v, '^(%d+) (.*)$')
    local frame = ''
    if s then
      local e = redis.call('XRANGE', KEYS[2], s .. '-0', s .. '-0')[1]
      if e then frame = e[2][2] end
    end
    out[#out + 1] = i
    out[#out + 1] = tonumber(s) or 0
    out[#out + 1] = receipt or ''
    out[#out + 1] = frame
  end
end
return out
";

/// Presence leases of one room.
///
/// KEYS: lease zset (`user|node` scored by expiry ms), users hash (`user ->
/// "<entries>:<since_ms>"`). ARGV: mode (`ops` or `list`), lease_ms, node,
/// then for `ops` pairs of op (`+` join/renew, `-` leave) and user.
/// Always sweeps expired leases first (Redis server time). Returns the
/// transitions as a flat list `user, node, online(1/0), ...`; `list`
/// returns `{transitions, HGETALL users}`.
pub(crate) const PRESENCE: &str = r"
local zk, hk = KEYS[1], KEYS[2]
local mode, lease, node = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function note(user, who, online)
  out[#out + 1] = user
  out[#out + 1] = who
  out[#out + 1] = online
end
local function count(user, delta)
  local n, since = 0, now
  local v = redis.call('HGET', hk, user)
  if v then
    local a, b = string.match(v, '^(%d+):(%d+)$')
    n, since = tonumber(a) or 0, tonumber(b) or now
  end
  n = n + delta
  if n <= 0 then
    redis.call('HDEL', hk, user)
  else
    redis.call('HSET', hk, user, string.format('%d:%d', n, since))
  end
  return n
end
local expired = redis.call('ZRANGEBYSCORE', zk, '-inf', now)
for _, m in ipairs(expired) do
  redis.call('ZREM', zk, m)
  local user, who = string.match(m, '^(.*)|([^|]*)$')
  if user and count(user, -1) <= 0 then note(user, who, '0') end
end
if mode == 'list' then
  return {out, redis.call('HGETALL', hk)}
end
for i = 4, #ARGV - 1, 2 do
  local op, user = ARGV[i], ARGV[i + 1]
  local m = user .. '|' .. node
  if op == '+' then
    if redis.call('ZADD', zk, now + lease, m) == 1 and count(user, 1) == 1 then note(user, node, '1') end
  elseif redis.call('ZREM', zk, m) == 1 and count(user, -1) <= 0 then
    note(user, node, '0')
  end
end
if redis.call('ZCARD', zk) > 0 then
  redis.call('PEXPIRE', zk, lease * 2)
  redis.call('PEXPIRE', hk, lease * 2)
end
return out
";

/// A script called by its SHA, loaded on demand.
#[derive(Debug)]
pub(crate) struct Script {
    lua: &'static str,
    sha: Mutex<Option<String>>,
}

impl Script {
    pub(crate) const fn new(lua: &'static str) -> Self {
        Self {
            lua,
            sha: Mutex::new(None),
        }
    }

    fn cached(&self) -> Option<String> {
        self.sha.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn load(&self, client: &Client) -> Result<String, RedisError> {
        let sha: String = if client.is_clustered() {
            client.script_load_cluster(self.lua).await?
        } else {
            client.script_load(self.lua).await?
        };
        *self.sha.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sha.clone());
        Ok(sha)
    }

    /// EVALSHA, loading the script first if needed and once more on NOSCRIPT.
    pub(crate) async fn call(&self, client: &Client, keys: Vec<String>, args: Vec<Value>) -> Result<Value, RedisError> {
        let sha = match self.cached() {
            Some(sha) => sha,
            None => self.load(client).await?,
        };
        match client.evalsha(sha, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let sha = self.load(client).await?;
                client.evalsha(sha, keys, args).await
            }
            other => other,
        }
    }
}
