//! The Lua scripts: each check-then-act of the fill protocol and the marks,
//! atomic in Redis. They are sent by SHA (loaded on `NOSCRIPT`, on every
//! node of a cluster).
//!
//! On Redis Cluster every key a script names must be in one slot. The lease
//! scripts name an entry and its lease, which share the entry's hash tag
//! (`store::lease`); a mark script names one key; the sweep script is called
//! once per slot with that slot's keys (`cluster::by_slot`).

use redis::Script;

/// The lease scripts. KEYS[1] is the entry, KEYS[2] its lease.
pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) fill: Script,
    pub(super) extend: Script,
    pub(super) release: Script,
    pub(super) raise_mark: Script,
    pub(super) sweep: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            // ARGV: token, lease ms, '1' if the caller saw an entry, the
            // start of that entry. Returns {entry, granted, lease ms left}.
            claim: Script::new(
                r"
local v = redis.call('GET', KEYS[1])
local seen = ARGV[4]
if v and (ARGV[3] == '0' or string.sub(v, 1, #seen) ~= seen) then
  return {v, 0, 0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {v, 1, 0}
end
return {v, 0, redis.call('PTTL', KEYS[2])}
",
            ),
            // ARGV: token, value, ttl ms.
            fill: Script::new(
                r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
",
            ),
            // KEYS[1] is the lease. ARGV: token, ttl ms.
            extend: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
            ),
            // KEYS[1] is the mark. ARGV: removed µs, expired µs, ttl ms.
            // Lua numbers are doubles: exact for µs times until 2255.
            raise_mark: Script::new(
                r"
local r, e = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local cr, ce = string.match(cur, '^(%d+) (%d+)$')
  if cr then
    r = math.max(r, tonumber(cr))
    e = math.max(e, tonumber(ce))
  end
end
local v = string.format('%d %d', r, e)
redis.call('SET', KEYS[1], v, 'PX', ARGV[3])
return v
",
            ),
            // KEYS: candidates. ARGV: created-before ms. Unlinks the
            // entries (magic bytes, then created_at u64 LE at offset 4)
            // created before it; leaves everything else.
            sweep: Script::new(
                r"
local n = 0
local before = tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  local h = redis.call('GETRANGE', k, 0, 11)
  if #h == 12 and string.byte(h, 1) == 202 and string.byte(h, 2) == 199 then
    local t = 0
    for j = 12, 5, -1 do t = t * 256 + string.byte(h, j) end
    if t < before then
      redis.call('UNLINK', k)
      n = n + 1
    end
  end
end
return n
",
            ),
            // KEYS[1] is the lease. ARGV: token.
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
            ),
        }
    }
}
