package redislog

import "github.com/redis/go-redis/v9"

// scripts are loaded when a node starts, and again when Redis forgot them.
var scripts = []*redis.Script{publishScript, readScript, deleteScript, countsScript, reapScript,
	presenceAddScript, presenceRemoveScript}

// Lua shared by the scripts: pushctl's pattern match ('*' one segment,
// '>' one or more trailing segments) and applying a count change to a
// node's hash and the cluster totals.
const luaLib = `
local function split(s)
  local t = {}
  for seg in string.gmatch(s, '[^.]+') do t[#t+1] = seg end
  return t
end
local function match(p, n)
  local ps, ns = split(p), split(n)
  for i = 1, #ps do
    if ps[i] == '>' then return #ns >= i end
    if i > #ns then return false end
    if ps[i] ~= '*' and ps[i] ~= ns[i] then return false end
  end
  return #ps == #ns
end
-- node fields: c:<channel>, p:<pattern>, t (all counted subscriptions),
-- r:<pattern> (every pattern follow, internal ones too; Redis Cluster
-- only); cluster: subs[<channel>], subs['*'] (total), pats[<pattern>],
-- routes[<pattern>].
local function apply(nodekey, subs, pats, routes, f, d, nodetoo)
  if nodetoo then
    local v = redis.call('HINCRBY', nodekey, f, d)
    if v <= 0 then redis.call('HDEL', nodekey, f) end
  end
  local g, gf = subs, '*'
  local kind = string.sub(f, 1, 2)
  if kind == 'p:' then g, gf = pats, string.sub(f, 3)
  elseif kind == 'r:' then g, gf = routes, string.sub(f, 3)
  elseif kind == 'c:' then gf = string.sub(f, 3) end
  local gv = redis.call('HINCRBY', g, gf, d)
  if gv <= 0 then redis.call('HDEL', g, gf) end
end
`

// luaPublish defines publish(K, A), the body of the publish script, which
// the presence scripts run too: K = meta, stream, and on a single Redis
// also channels, subs, pats (on Redis Cluster those live in another
// slot). A = new epoch, now (µs), event, kind, data, history size, age
// cutoff (µs, 0: none), ttl (ms), origin, channel, pub/sub channel,
// history bytes (0: no bound), how to publish ("P" PUBLISH, "S"
// SPUBLISH, "SP" both). Meta fields: e epoch, s sequence, t last time, b
// retained bytes. Assigns the next sequence, appends to the stream
// (trimmed by size and age), publishes to the nodes and returns epoch,
// seq, time and, on a single Redis, the cluster's subscriber count (-1
// otherwise).
const luaPublish = `
local function publish(K, A)
local meta = redis.call('HMGET', K[1], 'e', 't', 'b')
local e, last, b = meta[1], tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
if not e then
  e, last, b = A[1], 0, 0
  redis.call('DEL', K[2])
  redis.call('HSET', K[1], 'e', e, 's', 0)
  if K[3] then redis.call('SADD', K[3], A[10]) end
end
local seq = redis.call('HINCRBY', K[1], 's', 1)
local t = tonumber(A[2])
if t < last then t = last end
local ts = string.format('%.0f', t)
local size = tonumber(A[6])
if size > 0 then
  local len = redis.call('XLEN', K[2])
  local cutoff, hb = tonumber(A[7]), tonumber(A[12])
  for i = 1, 100 do
    if len == 0 then break end
    local f = redis.call('XRANGE', K[2], '-', '+', 'COUNT', 1)
    if #f == 0 then break end
    local old = f[1][2]
    if len < size and (cutoff <= 0 or tonumber(old[2]) >= cutoff) and (hb <= 0 or b + #A[5] <= hb) then break end
    b = b - #old[8]
    redis.call('XDEL', K[2], f[1][1])
    len = len - 1
  end
  redis.call('XADD', K[2], string.format('%d-1', seq), 't', ts, 'e', A[3], 'k', A[4], 'd', A[5])
  b = b + #A[5]
  redis.call('PEXPIRE', K[2], A[8])
end
redis.call('HSET', K[1], 't', ts, 'b', b)
redis.call('PEXPIRE', K[1], A[8])
local payload = 'M ' .. e .. ' ' .. string.format('%d', seq) .. ' ' .. ts .. ' ' .. A[4] .. ' ' .. A[9] .. ' ' .. #A[3] .. '\n' .. A[3] .. A[5]
if A[13] ~= 'P' then redis.call('SPUBLISH', A[11], payload) end
if A[13] ~= 'S' then redis.call('PUBLISH', A[11], payload) end
if not K[4] then return {e, seq, ts, -1} end
local n = tonumber(redis.call('HGET', K[4], A[10]) or '0')
local pats = redis.call('HGETALL', K[5])
for i = 1, #pats, 2 do
  if match(pats[i], A[10]) then n = n + tonumber(pats[i+1]) end
end
return {e, seq, ts, n}
end
`

// publish: KEYS and ARGV as K and A of publish(), all in one round trip.
var publishScript = redis.NewScript(luaLib + luaPublish + `return publish(KEYS, ARGV)`)

// Presence lives in one hash per channel, in the channel's slot: m:<id>
// the member's info, c:<id> how many nodes hold it, h:<node>:<id> a
// node's hold, k:<node> how many members a node holds, n the member
// count, l the position ("epoch seq") of the latest presence event.
// Both scripts take KEYS presence hash then the publish keys, ARGV four
// presence arguments then publish()'s, and return {0} when nothing
// changed or {1, publish()'s reply…}; remove's {0|1, …} ends with how
// many members the node still holds in the channel.
const luaPresence = `
local function rest(t, from)
  local r = {}
  for i = from, #t do r[#r+1] = t[i] end
  return r
end
local function announce(p)
  local r = publish(rest(KEYS, 2), rest(ARGV, 5))
  redis.call('HSET', p, 'l', r[1] .. ' ' .. string.format('%d', r[2]))
  return r
end
`

// presenceAdd: ARGV node, member id, info, max members.
var presenceAddScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node, id = KEYS[1], ARGV[1], ARGV[2]
local hold = 'h:' .. node .. ':' .. id
if redis.call('HEXISTS', p, hold) == 1 then return {0} end
local c = tonumber(redis.call('HGET', p, 'c:' .. id) or '0')
if c == 0 then
  local n = tonumber(redis.call('HGET', p, 'n') or '0')
  if n >= tonumber(ARGV[4]) then return {-1, n} end
end
redis.call('HSET', p, hold, 1, 'c:' .. id, c + 1)
redis.call('HINCRBY', p, 'k:' .. node, 1)
if c > 0 then return {0} end
redis.call('HSET', p, 'm:' .. id, ARGV[3])
redis.call('HINCRBY', p, 'n', 1)
local r = announce(p)
return {1, r[1], r[2], r[3], r[4]}
`)

// presenceRemove: ARGV node, member id, unused, unused.
var presenceRemoveScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node, id = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HDEL', p, 'h:' .. node .. ':' .. id) == 0 then
  return {0, tonumber(redis.call('HGET', p, 'k:' .. node) or '0')}
end
local k = redis.call('HINCRBY', p, 'k:' .. node, -1)
if k <= 0 then redis.call('HDEL', p, 'k:' .. node) end
if redis.call('HINCRBY', p, 'c:' .. id, -1) > 0 then return {0, k} end
redis.call('HDEL', p, 'c:' .. id, 'm:' .. id)
redis.call('HINCRBY', p, 'n', -1)
local r = announce(p)
return {1, r[1], r[2], r[3], r[4], k}
`)

// read: KEYS meta, stream, channels (single Redis only). ARGV create (0/1), new epoch, ttl
// (ms), channel, mode (none, after, tail, all), from epoch, from seq, tail
// count. Returns epoch, seq, last time, the mode used and the entries
// (tail: newest first), or nil for an unknown channel without create.
var readScript = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  if ARGV[1] == '0' then return false end
  e = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 't', 0, 'b', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[4]) end
end
local mode = ARGV[5]
if mode == 'after' and ARGV[6] ~= e then mode = 'all' end
local entries = {}
if mode == 'after' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[7] .. '-1', '+')
elseif mode == 'tail' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[8])
elseif mode == 'all' then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
end
return {e, redis.call('HGET', KEYS[1], 's'), redis.call('HGET', KEYS[1], 't'), mode, entries}
`)

// remove: KEYS meta, stream, channels (single Redis only). ARGV channel,
// pub/sub channel, "P" (PUBLISH) or "S" (SPUBLISH).
var deleteScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[1]) end
if ARGV[3] == 'S' then redis.call('SPUBLISH', ARGV[2], 'D') else redis.call('PUBLISH', ARGV[2], 'D') end
return 1
`)

// counts: KEYS node hash, subs, pats, nodes, routes, reaped mark. ARGV
// node, now (ms), counts channel, full (1: the pairs are the whole state,
// 0: deltas), then field/value pairs. Registers the node's heartbeat too,
// and returns 1 when the node was new, or taken for dead since its last
// heartbeat (then it must send its whole state again), else 0.
var countsScript = redis.NewScript(luaLib + `
local back = redis.call('DEL', KEYS[6])
back = back + redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
local changes = {}
if ARGV[4] == '1' then
  local have = redis.call('HGETALL', KEYS[1])
  for i = 1, #have, 2 do changes[have[i]] = -tonumber(have[i+1]) end
end
for i = 5, #ARGV, 2 do
  changes[ARGV[i]] = (changes[ARGV[i]] or 0) + tonumber(ARGV[i+1])
end
local any = false
for f, d in pairs(changes) do
  if d ~= 0 then apply(KEYS[1], KEYS[2], KEYS[3], KEYS[5], f, d, true); any = true end
end
if any then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
if back > 0 then return 1 end
return 0
`)

// reap: KEYS node hash, subs, pats, nodes, routes, reaped mark. ARGV node, counts channel,
// cutoff (ms). Takes a node that stopped beating out of the totals.
var reapScript = redis.NewScript(luaLib + `
local score = redis.call('ZSCORE', KEYS[4], ARGV[1])
if score and tonumber(score) >= tonumber(ARGV[3]) then return 0 end
local have = redis.call('HGETALL', KEYS[1])
for i = 1, #have, 2 do apply(KEYS[1], KEYS[2], KEYS[3], KEYS[5], have[i], -tonumber(have[i+1]), false) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
`)
