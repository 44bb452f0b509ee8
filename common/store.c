#include "store.h"

#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* Shared Lua: the deadline rule and the binding of an instance to a session. */
#define LUA_PRELUDE                                                                                \
    "local P = ARGV[1]\n"                                                                          \
    "local function deadline(created, ttl, last, idle)\n"                                          \
    "  local a = created + ttl\n"                                                                  \
    "  local b = last + idle\n"                                                                    \
    "  if a < b then return a end\n"                                                               \
    "  return b\n"                                                                                 \
    "end\n"                                                                                        \
    "local key_id = ''\n"                                                                         \
    "local function event(kind, ...)\n"                                                            \
    "  local a = {...}\n"                                                                          \
    "  if key_id ~= '' then a[#a + 1] = 'key_id' a[#a + 1] = key_id end\n"                         \
    "  redis.call('XADD', P..'events', 'MAXLEN', '~', 100000, '*', 'type', kind, 'ts', now,\n"  \
    "    unpack(a))\n"                                                                           \
    "  for i = 1, #a - 1, 2 do\n"                                                                  \
    "    if a[i] == 'tenant' then\n"                                                              \
    "      if a[i + 1] and a[i + 1] ~= '' then\n"                                                 \
    "        redis.call('XADD', P..'events:'..a[i + 1], 'MAXLEN', '~', 100000, '*', 'type',\n"  \
    "          kind, 'ts', now, unpack(a))\n"                                                    \
    "      end\n"                                                                                  \
    "      break\n"                                                                                \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "local function uncount(sk, tenant)\n"                                                      \
    "  local f = redis.call('HMGET', sk, 'use_mem', 'use_mcpu')\n"                               \
    "  if not f[1] and not f[2] then return end\n"                                               \
    "  redis.call('HINCRBY', P..'use:'..tenant, 'mem', -tonumber(f[1] or '0'))\n"               \
    "  redis.call('HINCRBY', P..'use:'..tenant, 'mcpu', -tonumber(f[2] or '0'))\n"              \
    "  redis.call('HDEL', sk, 'use_mem', 'use_mcpu')\n"                                          \
    "end\n"                                                                                       \
    "local function bind(h, tenant, source, key, tpl, ttl, idle, id, addr, host, meta)\n"          \
    "  local sk = P..'s:'..h\n"                                                                    \
    "  local old = redis.call('HMGET', sk, 'gen', 'created', 'ttl', 'idle_timeout')\n"             \
    "  local gen = tonumber(old[1] or '0') + 1\n"                                                  \
    "  local created = tonumber(old[2] or now)\n"                                                  \
    "  if old[3] then ttl = tonumber(old[3]) end\n"                                                \
    "  if old[4] then idle = tonumber(old[4]) end\n"                                               \
    "  redis.call('HSET', sk, 'tenant', tenant, 'source', source, 'key', key, 'template', tpl,\n" \
    "    'instance', id, 'addr', addr, 'host', host, 'state', 'bound', 'gen', gen,\n"             \
    "    'created', created, 'ttl', ttl, 'idle_timeout', idle, 'last_active', now)\n"             \
    "  if meta ~= nil and meta ~= '' then redis.call('HSET', sk, 'meta', meta) end\n"             \
    "  redis.call('PERSIST', sk)\n"                                                               \
    "  if host ~= '' then\n" \
    "    redis.call('HSET', P..'i:'..id, 'state', 'bound', 'session', h, 'bound', now)\n" \
    "  end\n"            \
    "  redis.call('ZADD', P..'expiry', deadline(created, ttl, now, idle), h)\n"                    \
    "  redis.call('ZADD', P..'sessions:'..tenant, created, h)\n"                                   \
    "  if gen == 1 then event('created', 'session', h, 'tenant', tenant, 'template', tpl) end\n"  \
    "  event('bound', 'session', h, 'tenant', tenant, 'instance', id, 'host', host,\n"            \
    "    'gen', tostring(gen))\n"                                                                  \
    "  if host ~= '' then redis.call('PUBLISH', P..'cmd:'..host, 'bind '..id..' '..h) end\n"                              \
    "  if gen > 1 then redis.call('PUBLISH', P..'inval', h) end\n"                                 \
    "  return gen\n"                                                                               \
    "end\n"

/* Did Redis lose its data a moment ago? P epoch is written by the schedulers once they have
 * put back what Redis lost (recover.c, reconcile.c): missing, or holding a time still ahead,
 * means a session Redis does not know may still be bound on some host. */
#define LUA_UNSETTLED                                                                              \
    "local function unsettled(P, now)\n"                                                           \
    "  local e = redis.call('GET', P..'epoch')\n"                                                  \
    "  return not e or tonumber(e) > now\n"                                                        \
    "end\n"

/* A tenant's limit on its sessions: a new session (no record yet) is refused while the tenant
 * has max of them (P sessions:{tenant}, which holds every session not yet ended: bound or
 * lost). A refusal writes a tenant_limit event, at most one a second per tenant and limit (P
 * limited:{tenant}:{limit}): a client that retries in a loop must not flood the streams. */
#define LUA_LIMIT                                                                                  \
    "local function limited(tenant, limit, max, h)\n"                                              \
    "  if redis.call('SET', P..'limited:'..tenant..':'..limit, '1', 'NX', 'PX', 1000) then\n"     \
    "    event('tenant_limit', 'tenant', tenant, 'limit', limit, 'max', tostring(max),\n"         \
    "      'session', h)\n"                                                                      \
    "  end\n"                                                                                     \
    "  return true\n"                                                                             \
    "end\n"                                                                                       \
    "local function over_room(tenant, mem, mcpu, max_mem, max_mcpu, h)\n"                        \
    "  if max_mem <= 0 and max_mcpu <= 0 then return nil end\n"                                   \
    "  local u = redis.call('HMGET', P..'use:'..tenant, 'mem', 'mcpu')\n"                        \
    "  if max_mem > 0 and tonumber(u[1] or '0') + mem > max_mem then\n"                           \
    "    limited(tenant, 'max_memory', max_mem, h) return 'max_memory'\n"                         \
    "  end\n"                                                                                     \
    "  if max_mcpu > 0 and tonumber(u[2] or '0') + mcpu > max_mcpu then\n"                        \
    "    limited(tenant, 'max_cpus', max_mcpu / 1000, h) return 'max_cpus'\n"                     \
    "  end\n"                                                                                     \
    "  return nil\n"                                                                              \
    "end\n"                                                                                       \
    "local function count_room(tenant, h, mem, mcpu)\n"                                           \
    "  if mem <= 0 and mcpu <= 0 then return end\n"                                              \
    "  redis.call('HINCRBY', P..'use:'..tenant, 'mem', mem)\n"                                   \
    "  redis.call('HINCRBY', P..'use:'..tenant, 'mcpu', mcpu)\n"                                 \
    "  redis.call('HSET', P..'s:'..h, 'use_mem', mem, 'use_mcpu', mcpu)\n"                       \
    "end\n"                                                                                       \
    "local function over_limit(tenant, max, h)\n"                                                  \
    "  if max <= 0 or redis.call('ZCARD', P..'sessions:'..tenant) < max then return false end\n"   \
    "  return limited(tenant, 'max_sessions', max, h)\n"                                          \
    "end\n"

static const char claim_src[] =
    "local now = tonumber(ARGV[7])\n" LUA_PRELUDE LUA_UNSETTLED LUA_LIMIT
    "key_id = ARGV[15] or ''\n"
    "local h, tenant, source, key, tpl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]\n"
    "local ttl, idle, stale = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])\n"
    "local s = redis.call('HMGET', P..'s:'..h, 'state', 'instance', 'addr', 'gen', 'template',\n"
    "  'tenant')\n"
    "if s[6] and s[6] ~= tenant then return {'absent', '', '', '0', ''} end\n"
    "if s[1] == 'bound' then return {'bound', s[2], s[3], s[4], ''} end\n"
    "if s[1] == 'lost' and ARGV[11] == 'fail' then return {'lost', s[2] or '', '', s[4], ''} end\n"
    "if ARGV[12] == 'lookup' then\n"
    "  if s[1] == 'lost' then return {'lost', s[2] or '', '', s[4], ''} end\n"
    "  if not s[1] and ARGV[14] == '' and unsettled(P, now) then\n"
    "    return {'unknown', '', '', '0', ''}\n"
    "  end\n"
    "  return {'absent', '', '', '0', ''}\n"
    "end\n"
    "if s[5] then tpl = s[5] end\n"
    "local max = tonumber(ARGV[16] or '') or 0\n"
    "if not s[1] and over_limit(tenant, max, h) then\n"
    "  return {'limit', 'max_sessions', '', '0', tostring(max)}\n"
    "end\n"
    /* New sessions per second: a token bucket on Redis's clock (gateways' clocks differ),
     * refilled at rate tokens a second up to burst; a new session takes one. */
    "local rate, burst = tonumber(ARGV[17] or '') or 0, tonumber(ARGV[18] or '') or 0\n"
    "if not s[1] and rate > 0 then\n"
    "  local bk = P..'rate:'..tenant..':sessions'\n"
    "  local t = redis.call('TIME')\n"
    "  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  local b = redis.call('HMGET', bk, 'tokens', 'ms')\n"
    "  local tokens, last = tonumber(b[1] or '') or burst, tonumber(b[2] or '') or ms\n"
    "  if ms > last then tokens = math.min(burst, tokens + (ms - last) * rate / 1000) end\n"
    "  if tokens < 1 then\n"
    "    limited(tenant, 'sessions_per_second', rate, h)\n"
    "    return {'limit', 'sessions_per_second', '', '0', tostring(rate)}\n"
    "  end\n"
    "  redis.call('HSET', bk, 'tokens', tostring(tokens - 1), 'ms', ms)\n"
    "  redis.call('PEXPIRE', bk, math.ceil(burst * 1000 / rate) + 1000)\n"
    "end\n"
    /* The tenant's memory and cpus: for a session that needs a sandbox (new, or lost and
     * replaced), with the template's (ARGV 21, 22) against the limits (ARGV 19, 20). */
    "local need_mem, need_mcpu = tonumber(ARGV[21] or '') or 0, tonumber(ARGV[22] or '') or 0\n"
    "local max_mem, max_mcpu = tonumber(ARGV[19] or '') or 0, tonumber(ARGV[20] or '') or 0\n"
    "if (not s[1] or s[1] == 'lost') and (ARGV[14] or '') == '' then\n"
    "  local why = over_room(tenant, need_mem, need_mcpu, max_mem, max_mcpu, h)\n"
    "  if why then return {'limit', why, '', '0', ''} end\n"
    "end\n"
    "if ARGV[14] and ARGV[14] ~= '' then\n"
    "  local lim = tonumber(ARGV[14])\n"
    "  local m = redis.call('ZRANGE', P..'static:'..tpl, 0, 0, 'WITHSCORES')\n"
    "  if m[1] and (lim == 0 or tonumber(m[2]) < lim) then\n"
    "    local addr = redis.call('HGET', P..'i:'..m[1], 'addr')\n"
    "    redis.call('ZINCRBY', P..'static:'..tpl, 1, m[1])\n"
    "    local gen = bind(h, tenant, source, key, tpl, ttl, idle, m[1], addr, '', ARGV[13])\n"
    "    return {'new', m[1], addr, tostring(gen), ''}\n"
    "  end\n"
    "  return {'empty', '', '', s[4] or '0', ''}\n"
    "end\n"
    "local hosts = redis.call('ZRANGEBYSCORE', P..'hosts', now - stale, '+inf')\n"
    "local cand = {}\n"
    "for _, hid in ipairs(hosts) do\n"
    "  local n = redis.call('LLEN', P..'pool:'..hid..':'..tpl)\n"
    "  if n > 0 then cand[#cand + 1] = {hid, n} end\n"
    "end\n"
    "table.sort(cand, function(a, b) return a[2] > b[2] end)\n"
    "for _, c in ipairs(cand) do\n"
    "  local pk = P..'pool:'..c[1]..':'..tpl\n"
    "  for _ = 1, c[2] do\n"
    "    local id = redis.call('LPOP', pk)\n"
    "    if not id then break end\n"
    "    local inst = redis.call('HMGET', P..'i:'..id, 'state', 'addr', 'host')\n"
    "    if inst[1] == 'warm' then\n"
    "      local gen = bind(h, tenant, source, key, tpl, ttl, idle, id, inst[2], inst[3],\n"
    "        ARGV[13])\n"
    "      if max_mem > 0 or max_mcpu > 0 then count_room(tenant, h, need_mem, need_mcpu) end\n"
    "      return {'new', id, inst[2], tostring(gen), inst[3]}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local best, bestfree = '', -1\n"
    "for _, hid in ipairs(hosts) do\n"
    "  local hv = redis.call('HMGET', P..'host:'..hid, 'free', 'api', 'draining')\n"
    "  local f = tonumber(hv[1] or '0')\n"
    "  if hv[2] and hv[3] ~= '1' and f > bestfree then best, bestfree = hv[2], f end\n"
    "end\n"
    "return {'empty', '', '', s[4] or '0', best}\n";

static const char bind_src[] =
    "local now = tonumber(ARGV[7])\n" LUA_PRELUDE LUA_LIMIT
    "key_id = ARGV[14] or ''\n"
    "local h, tenant, source, key, tpl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]\n"
    "local ttl, idle = tonumber(ARGV[8]), tonumber(ARGV[9])\n"
    "local id, addr, host = ARGV[10], ARGV[11], ARGV[12]\n"
    "local s = redis.call('HMGET', P..'s:'..h, 'state', 'instance', 'addr', 'gen', 'tenant')\n"
    "if s[1] == 'bound' or (s[5] and s[5] ~= tenant) then\n"
    "  redis.call('HSET', P..'i:'..id, 'state', 'warm')\n"
    "  redis.call('RPUSH', P..'pool:'..host..':'..tpl, id)\n"
    "  if s[1] ~= 'bound' then return {'absent', '', '', '0'} end\n"
    "  return {'bound', s[2], s[3], s[4]}\n"
    "end\n"
    "if not s[1] and over_limit(tenant, tonumber(ARGV[15] or '') or 0, h) then\n"
    "  redis.call('HSET', P..'i:'..id, 'state', 'warm')\n"
    "  redis.call('RPUSH', P..'pool:'..host..':'..tpl, id)\n"
    "  return {'limit', 'max_sessions', '', '0'}\n"
    "end\n"
    "local max_mem, max_mcpu = tonumber(ARGV[16] or '') or 0, tonumber(ARGV[17] or '') or 0\n"
    "local need_mem, need_mcpu = tonumber(ARGV[18] or '') or 0, tonumber(ARGV[19] or '') or 0\n"
    "local why = (not s[1] or s[1] == 'lost') and\n"
    "  over_room(tenant, need_mem, need_mcpu, max_mem, max_mcpu, h)\n"
    "if why then\n"
    "  redis.call('HSET', P..'i:'..id, 'state', 'warm')\n"
    "  redis.call('RPUSH', P..'pool:'..host..':'..tpl, id)\n"
    "  return {'limit', why, '', '0'}\n"
    "end\n"
    "local gen = bind(h, tenant, source, key, tpl, ttl, idle, id, addr, host, ARGV[13])\n"
    "if max_mem > 0 or max_mcpu > 0 then count_room(tenant, h, need_mem, need_mcpu) end\n"
    "return {'new', id, addr, tostring(gen)}\n";

/* Activity only sets last_active: two calls per session where keeping the expiry zset exact
 * took three (HMGET of four fields, HSET, ZADD), and a call from Lua costs Redis microseconds
 * on this path that runs for every active session every activity_flush. The expiry score stays
 * a lower bound of the deadline; the reaper's release (reason expired) recomputes the deadline
 * from last_active and re-files a session that is still active (common/README.md). */
static const char touch_src[] =
    "local P, now = ARGV[1], tonumber(ARGV[2])\n" LUA_UNSETTLED
    "local out, u = {}, nil\n"
    "for i = 3, #ARGV do\n"
    "  local sk = P..'s:'..ARGV[i]\n"
    "  local s = redis.call('HMGET', sk, 'state', 'gen')\n"
    "  if s[1] == 'bound' then\n"
    "    redis.call('HSET', sk, 'last_active', now)\n"
    "    out[#out + 1] = tonumber(s[2]) or 1\n"
    "  elseif not s[1] then\n"
    "    if u == nil then u = unsettled(P, now) end\n" /* one GET per call, not per session */
    "    out[#out + 1] = u and -1 or 0\n"
    "  else\n"
    "    out[#out + 1] = 0\n"
    "  end\n"
    "end\n"
    "return out\n";

static const char update_src[] =
    "local now = tonumber(ARGV[6])\n" LUA_PRELUDE
    "key_id = ARGV[7] or ''\n"
    "local sk = P..'s:'..ARGV[2]\n"
    "local s = redis.call('HMGET', sk, 'tenant', 'created', 'ttl', 'idle_timeout',\n"
    "  'last_active', 'state', 'host', 'instance')\n"
    "if not s[1] or s[1] ~= ARGV[3] then return {'absent'} end\n"
    "local eg = ARGV[8] or ''\n"
    "if eg ~= '' then\n"
    "  if eg == 'null' then redis.call('HDEL', sk, 'egress')\n"
    "  else redis.call('HSET', sk, 'egress', eg) end\n"
    "  if s[6] == 'bound' and s[7] and s[7] ~= '' and s[8] then\n"
    "    redis.call('PUBLISH', P..'cmd:'..s[7], 'egress '..s[8]..' '..ARGV[2])\n"
    "  end\n"
    "  event('egress_updated', 'session', ARGV[2], 'tenant', s[1], 'egress', eg)\n"
    "end\n"
    "local ttl, idle = tonumber(s[3]), tonumber(s[4])\n"
    "if ARGV[4] ~= '' then ttl = tonumber(ARGV[4]) end\n"
    "if ARGV[5] ~= '' then idle = tonumber(ARGV[5]) end\n"
    "redis.call('HSET', sk, 'ttl', ttl, 'idle_timeout', idle)\n"
    "local d = deadline(tonumber(s[2]), ttl, tonumber(s[5]), idle)\n"
    "redis.call('ZADD', P..'expiry', d, ARGV[2])\n"
    "if ARGV[4] ~= '' or ARGV[5] ~= '' then\n"
    "  event('updated', 'session', ARGV[2], 'tenant', s[1], 'ttl', tostring(ttl),\n"
    "    'idle_timeout', tostring(idle))\n"
    "end\n"
    "return {'ok', tostring(d)}\n";

static const char release_src[] =
    "local now = tonumber(ARGV[5])\n" LUA_PRELUDE
    "key_id = ARGV[6] or ''\n"
    "local h, reason = ARGV[2], ARGV[4]\n"
    "local sk = P..'s:'..h\n"
    "local s = redis.call('HMGET', sk, 'tenant', 'instance', 'host', 'created', 'ttl',\n"
    "  'idle_timeout', 'last_active', 'state')\n"
    "if not s[1] or (ARGV[3] ~= '' and s[1] ~= ARGV[3]) then\n"
    "  if reason == 'expired' then redis.call('ZREM', P..'expiry', h) end\n"
    "  return {'absent'}\n"
    "end\n"
    "if reason == 'expired' then\n"
    "  local d = deadline(tonumber(s[4]), tonumber(s[5]), tonumber(s[7]), tonumber(s[6]))\n"
    "  if d > now then redis.call('ZADD', P..'expiry', d, h) return {'alive', tostring(d)} end\n"
    "  event('expiring', 'session', h, 'tenant', s[1], 'instance', s[2] or '')\n"
    "end\n"
    "uncount(sk, s[1])\n"
    "redis.call('DEL', sk)\n"
    "redis.call('ZREM', P..'expiry', h)\n"
    "redis.call('ZREM', P..'sessions:'..s[1], h)\n"
    "for _, a in ipairs(redis.call('SMEMBERS', sk..':aliases')) do\n"
    "  redis.call('DEL', P..'a:'..a)\n"
    "  redis.call('PUBLISH', P..'inval', a)\n"
    "end\n"
    "redis.call('DEL', sk..':aliases')\n"
    "local inst, host = s[2] or '', s[3] or ''\n"
    "if inst ~= '' and host == '' then\n"
    "  local tpl = redis.call('HGET', P..'i:'..inst, 'template')\n"
    "  if tpl and redis.call('ZSCORE', P..'static:'..tpl, inst) then\n"
    "    redis.call('ZINCRBY', P..'static:'..tpl, -1, inst)\n"
    "  end\n"
    "elseif inst ~= '' and s[8] == 'bound' then\n"
    "  local ik = P..'i:'..inst\n"
    "  if redis.call('HGET', ik, 'session') == h then\n"
    "    redis.call('HSET', ik, 'state', 'releasing')\n"
    "    redis.call('PUBLISH', P..'cmd:'..host, 'destroy '..inst)\n"
    "  end\n"
    "end\n"
    "redis.call('PUBLISH', P..'inval', h)\n"
    "event(reason, 'session', h, 'tenant', s[1], 'instance', inst)\n"
    "return {'released', inst, host}\n";

/* An instance is gone: its record, its pool entry, and its session marked lost. */
#define LUA_LOST_ONE                                                                               \
    "local function lost_one(id, reason)\n"                                                        \
    "  local ik = P..'i:'..id\n"                                                                   \
    "  local i = redis.call('HMGET', ik, 'host', 'template', 'session', 'state')\n"                \
    "  redis.call('DEL', ik)\n"                                                                    \
    "  if not i[1] then return '' end\n"                                                           \
    "  redis.call('LREM', P..'pool:'..i[1]..':'..(i[2] or ''), 0, id)\n"                           \
    "  local h = i[3] or ''\n"                                                                     \
    "  if h ~= '' then\n"                                                                          \
    "    local sk = P..'s:'..h\n"                                                                  \
    "    local cur = redis.call('HMGET', sk, 'instance', 'tenant')\n"                              \
    "    if cur[1] == id then\n"                                                                   \
    "      redis.call('HSET', sk, 'state', 'lost', 'addr', '')\n"                                  \
    "      uncount(sk, cur[2] or '')\n"                                                            \
    "      redis.call('PUBLISH', P..'inval', h)\n"                                                 \
    "      for _, a in ipairs(redis.call('SMEMBERS', sk..':aliases')) do\n"                        \
    "        redis.call('PUBLISH', P..'inval', a)\n"                                               \
    "      end\n"                                                                                  \
    "      event('lost', 'session', h, 'tenant', cur[2] or '', 'instance', id, 'host', i[1],\n"   \
    "        'reason', reason)\n"                                                                  \
    "      return h\n"                                                                             \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  event('lost', 'session', '', 'instance', id, 'host', i[1], 'reason', reason)\n"            \
    "  return ''\n"                                                                                \
    "end\n"

static const char lost_src[] =
    "local now = tonumber(ARGV[3])\n" LUA_PRELUDE LUA_LOST_ONE
    "return lost_one(ARGV[2], ARGV[4])\n";

static const char hostdown_src[] =
    "local now = tonumber(ARGV[3])\n" LUA_PRELUDE LUA_LOST_ONE
    "local host = ARGV[2]\n"
    "local beat = redis.call('ZSCORE', P..'hosts', host)\n"
    "if not beat or tonumber(beat) > now - tonumber(ARGV[4]) then return -1 end\n"
    "local ids = redis.call('SMEMBERS', P..'host:'..host..':instances')\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local tpl = redis.call('HGET', P..'i:'..id, 'template')\n"
    "  if tpl then redis.call('DEL', P..'pool:'..host..':'..tpl) end\n"
    "  if lost_one(id, 'host_down') ~= '' then n = n + 1 end\n"
    "end\n"
    "redis.call('DEL', P..'host:'..host..':instances', P..'host:'..host..':mark', P..'host:'..host)\n"
    "redis.call('ZREM', P..'hosts', host)\n"
    "event('host_down', 'host', host, 'instances', tostring(#ids), 'sessions', tostring(n),\n"
    "  'last_heartbeat', beat)\n"
    "return n\n";

static const char resolve_src[] =
    "local P = ARGV[1]\n"
    "local h = redis.call('GET', P..'a:'..ARGV[2])\n"
    "if not h then return {'absent'} end\n"
    "local s = redis.call('HMGET', P..'s:'..h, 'state', 'instance', 'addr', 'gen', 'tenant')\n"
    "if s[1] ~= 'bound' or s[5] ~= ARGV[3] then return {'absent'} end\n"
    "return {'bound', s[2], s[3], s[4], h}\n";

static const char alias_src[] =
    "local P = ARGV[1]\n"
    "local sk = P..'s:'..ARGV[3]\n"
    "if redis.call('EXISTS', sk) == 0 then return 0 end\n"
    "redis.call('SET', P..'a:'..ARGV[2], ARGV[3])\n"
    "redis.call('SADD', sk..':aliases', ARGV[2])\n"
    "return 1\n";

static const char static_src[] =
    "local P, tpl, now = ARGV[1], ARGV[2], ARGV[3]\n"
    "local zk = P..'static:'..tpl\n"
    "local keep = {}\n"
    "for i = 4, #ARGV - 1, 2 do\n"
    "  local id, addr = ARGV[i], ARGV[i + 1]\n"
    "  keep[id] = true\n"
    "  redis.call('HSET', P..'i:'..id, 'addr', addr, 'template', tpl, 'state', 'static',\n"
    "    'host', '', 'started', now, 'driver', 'static')\n"
    "  redis.call('ZADD', zk, 'NX', 0, id)\n"
    "end\n"
    "for _, id in ipairs(redis.call('ZRANGE', zk, 0, -1)) do\n"
    "  if not keep[id] then redis.call('ZREM', zk, id) end\n"
    "end\n"
    "return redis.call('ZCARD', zk)\n";

/* One instance as its scheduler knows it, written back after Redis lost (some of) its data. */
static const char reconcile_src[] =
    "local now = tonumber(ARGV[10])\n" LUA_PRELUDE
    "local host, id, tpl, addr, st, h = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]\n"
    "local ik = P..'i:'..id\n"
    "redis.call('SADD', P..'host:'..host..':instances', id)\n"
    "local cur = redis.call('HMGET', ik, 'state', 'session')\n"
    "redis.call('HSET', ik, 'host', host, 'addr', addr, 'template', tpl, 'started', ARGV[8],\n"
    "  'pid', ARGV[9], 'driver', ARGV[12])\n"
    "if st == 'warm' then\n"
    "  if cur[1] == 'bound' or cur[1] == 'releasing' then return {'claimed', cur[2] or ''} end\n"
    "  redis.call('HSET', ik, 'state', 'warm')\n"
    "  local pk = P..'pool:'..host..':'..tpl\n"
    "  redis.call('LREM', pk, 0, id)\n"
    "  redis.call('RPUSH', pk, id)\n"
    "  return {'warm', ''}\n"
    "end\n"
    "if st ~= 'bound' then\n"
    "  if not cur[1] then redis.call('HSET', ik, 'state', st) end\n"
    "  return {st, ''}\n"
    "end\n"
    "if cur[1] == 'releasing' then return {'released', ''} end\n"
    "local sk = P..'s:'..h\n"
    "local s = redis.call('HMGET', sk, 'state', 'instance')\n"
    "if s[1] == 'bound' and s[2] == id then\n"
    "  redis.call('HSET', ik, 'state', 'bound', 'session', h)\n"
    "  return {'bound', ''}\n"
    "end\n"
    "redis.call('HSET', ik, 'state', 'releasing', 'session', h)\n"
    "if s[1] then return {'taken', s[2] or ''} end\n"
    "redis.call('HSET', sk, 'state', 'lost', 'template', tpl, 'instance', id, 'addr', '',\n"
    "  'host', host, 'gen', ARGV[10])\n"
    "redis.call('PEXPIRE', sk, ARGV[11])\n"
    "event('lost', 'session', h, 'instance', id, 'host', host, 'reason', 'redis lost the session')\n"
    "redis.call('PUBLISH', P..'inval', h)\n"
    "return {'vanished', ''}\n";

/* An event the gateway writes itself (exec): both streams, as the scripts' events. */
static const char event_src[] =
    "local now = tonumber(ARGV[2])\n" LUA_PRELUDE
    "local kv = {}\n"
    "for i = 5, #ARGV do kv[#kv + 1] = ARGV[i] end\n"
    "event(ARGV[4], 'tenant', ARGV[3], unpack(kv))\n"
    "return 1\n";

/* Which of the given bound sessions have been idle for their pause_after. */
static const char idle_src[] =
    "local P, now = ARGV[1], tonumber(ARGV[2])\n"
    "local out = {}\n"
    "for i = 3, #ARGV - 2, 3 do\n"
    "  local s = redis.call('HMGET', P..'s:'..ARGV[i], 'state', 'instance', 'last_active',\n"
    "    'paused')\n"
    "  local idle = 0\n"
    "  if s[1] == 'bound' and s[2] == ARGV[i + 1] and not s[4] and\n"
    "     now - tonumber(s[3] or now) >= tonumber(ARGV[i + 2]) then idle = 1 end\n"
    "  out[#out + 1] = idle\n"
    "end\n"
    "return out\n";

/* Shared by PAUSED and RESUMED: the session's record when it is bound to instance id. */
#define LUA_PAUSE_PRELUDE                                                                          \
    "local now = tonumber(ARGV[4])\n" LUA_PRELUDE "key_id = ARGV[6] or ''\n"                       \
    "local h, id, why = ARGV[2], ARGV[3], ARGV[5]\n"                                              \
    "local sk = P..'s:'..h\n"                                                                      \
    "local s = redis.call('HMGET', sk, 'state', 'instance', 'tenant', 'template', 'host',\n"      \
    "  'paused')\n"

static const char paused_src[] =
    LUA_PAUSE_PRELUDE
    "if s[1] ~= 'bound' or s[2] ~= id then return 0 end\n"
    "redis.call('HSET', sk, 'paused', now)\n"
    "redis.call('HSET', P..'i:'..id, 'paused', now)\n"
    "event('paused', 'session', h, 'tenant', s[3], 'template', s[4], 'instance', id,\n"
    "  'host', s[5] or '', 'reason', why)\n"
    "return 1\n";

static const char resumed_src[] =
    LUA_PAUSE_PRELUDE
    "redis.call('HDEL', P..'i:'..id, 'paused')\n"
    "if s[2] ~= id or not s[6] then return -1 end\n"
    "local d = now - tonumber(s[6])\n"
    "if d < 0 then d = 0 end\n"
    "redis.call('HDEL', sk, 'paused')\n"
    "redis.call('HINCRBY', sk, 'paused_ms', d)\n"
    "if s[1] == 'bound' then redis.call('HSET', sk, 'last_active', now) end\n"
    "event('resumed', 'session', h, 'tenant', s[3], 'template', s[4], 'instance', id,\n"
    "  'host', s[5] or '', 'reason', why, 'paused_ms', tostring(d))\n"
    "return d\n";

/* Usage (issue 17): per tenant and hour a hash of "<h>|<template>|<metric>" counters, with
 * the hour in P u:{tenant} (a zset, score = the hour) and the session ids in ...:ids. */
static const char usage_src[] =
    "local P, now, ret = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local hour = math.floor(now / 3600000) * 3600000\n"
    "local i, out = 4, {}\n"
    "while i + 1 <= #ARGV do\n"
    "  local h, n = ARGV[i], tonumber(ARGV[i + 1])\n"
    "  i = i + 2\n"
    "  local s = redis.call('HMGET', P..'s:'..h, 'tenant', 'template', 'key')\n"
    "  out[#out + 1] = s[1] or false\n" /* false: a nil reply */
    "  out[#out + 1] = s[1] and (s[2] or '') or false\n"
    "  if s[1] then\n"
    "    local k = P..'u:'..s[1]..':'..hour\n"
    "    local pre = h..'|'..(s[2] or '')..'|'\n"
    "    for j = 0, n - 1 do\n"
    "      local f, v = pre..ARGV[i + 2 * j], tonumber(ARGV[i + 2 * j + 1])\n"
    "      if ARGV[i + 2 * j] == 'mem_peak' then\n"
    "        if v > tonumber(redis.call('HGET', k, f) or '0') then redis.call('HSET', k, f, v) end\n"
    "      else\n"
    "        redis.call('HINCRBY', k, f, v)\n"
    "      end\n"
    "    end\n"
    "    redis.call('HSETNX', k..':ids', h, s[3] or '')\n"
    "    redis.call('PEXPIRE', k, ret)\n"
    "    redis.call('PEXPIRE', k..':ids', ret)\n"
    "    local z = P..'u:'..s[1]\n"
    "    redis.call('ZADD', z, hour, hour)\n"
    "    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - ret)\n"
    "    redis.call('PEXPIRE', z, ret)\n"
    "  end\n"
    "  i = i + 2 * n\n"
    "end\n"
    "return out\n";

static const char execs_src[] =
    "local now = tonumber(ARGV[3])\n" LUA_PRELUDE LUA_LIMIT
    "local tenant, lease, max, id, op = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]),\n"
    "  ARGV[6], ARGV[7]\n"
    "local k = P..'execs:'..tenant\n"
    "if op == 'end' then redis.call('ZREM', k, id) return 1 end\n"
    "if op == 'renew' then\n"
    "  redis.call('ZADD', k, 'XX', now + lease, id)\n"
    "  redis.call('PEXPIRE', k, lease)\n"
    "  return 1\n"
    "end\n"
    "redis.call('ZREMRANGEBYSCORE', k, '-inf', now)\n"
    "if max > 0 and redis.call('ZCARD', k) >= max then\n"
    "  limited(tenant, 'max_execs', max, ARGV[8] or '')\n"
    "  return 0\n"
    "end\n"
    "redis.call('ZADD', k, now + lease, id)\n"
    "redis.call('PEXPIRE', k, lease)\n"
    "return 1\n";

static const char *const sources[CM_SCRIPT_COUNT] = {
    [CM_SCRIPT_CLAIM] = claim_src,     [CM_SCRIPT_BIND] = bind_src,
    [CM_SCRIPT_TOUCH] = touch_src,     [CM_SCRIPT_UPDATE] = update_src,
    [CM_SCRIPT_RELEASE] = release_src, [CM_SCRIPT_LOST] = lost_src,
    [CM_SCRIPT_RESOLVE] = resolve_src, [CM_SCRIPT_ALIAS] = alias_src,
    [CM_SCRIPT_STATIC] = static_src,   [CM_SCRIPT_RECONCILE] = reconcile_src,
    [CM_SCRIPT_IDLE] = idle_src,       [CM_SCRIPT_PAUSED] = paused_src,
    [CM_SCRIPT_RESUMED] = resumed_src, [CM_SCRIPT_EVENT] = event_src,
    [CM_SCRIPT_USAGE] = usage_src,      [CM_SCRIPT_EXECS] = execs_src,
    [CM_SCRIPT_HOSTDOWN] = hostdown_src,
};
static const char *const names[CM_SCRIPT_COUNT] = {
    [CM_SCRIPT_CLAIM] = "claim",     [CM_SCRIPT_BIND] = "bind",
    [CM_SCRIPT_TOUCH] = "touch",     [CM_SCRIPT_UPDATE] = "update",
    [CM_SCRIPT_RELEASE] = "release", [CM_SCRIPT_LOST] = "lost",
    [CM_SCRIPT_RESOLVE] = "resolve", [CM_SCRIPT_ALIAS] = "alias",
    [CM_SCRIPT_STATIC] = "static",   [CM_SCRIPT_RECONCILE] = "reconcile",
    [CM_SCRIPT_IDLE] = "idle",       [CM_SCRIPT_PAUSED] = "paused",
    [CM_SCRIPT_RESUMED] = "resumed", [CM_SCRIPT_EVENT] = "event",
    [CM_SCRIPT_USAGE] = "usage",        [CM_SCRIPT_EXECS] = "execs",
    [CM_SCRIPT_HOSTDOWN] = "hostdown",
};
static char shas[CM_SCRIPT_COUNT][41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void compute_shas(void)
{
    for (int i = 0; i < CM_SCRIPT_COUNT; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)sources[i], strlen(sources[i]), md);
        for (int j = 0; j < SHA_DIGEST_LENGTH; j++)
            snprintf(shas[i] + 2 * j, 3, "%02x", md[j]);
    }
}

const char *cm_store_script_source(enum cm_script s)
{
    return sources[s];
}

const char *cm_store_script_sha(enum cm_script s)
{
    pthread_once(&sha_once, compute_shas);
    return shas[s];
}

const char *cm_store_script_name(enum cm_script s)
{
    return names[s];
}
