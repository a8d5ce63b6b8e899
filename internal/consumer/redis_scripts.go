package consumer

import "github.com/redis/go-redis/v9"

// The Lua scripts of consumers on Redis. Every key of consumer NAME is in
// the hash slot {c!NAME} (no channel name can hold '!', so no channel's
// keys share it), so each operation is one script, atomic on Redis
// Cluster too. KEYS, in this order for every script:
//
//	1 conf   hash: id (the consumer's incarnation), conf (its Config as
//	         JSON), created (Unix ms), next (the last entry seq given),
//	         pending, gapn, bytes, and the counters
//	2 e      hash: seq -> "<count> <size>" for a message, "g" for a gap
//	3 msg    hash: seq -> the message record (encodeEntry), or the gap
//	         as JSON {c, fe, fs, te, ts, l}
//	4 ready  zset: seqs ready for delivery, scored by seq (order)
//	5 fly    zset: seqs held by a client, scored by their deadline (ms)
//	6 delay  zset: seqs refused with a delay, scored by when they are due
//	7 dying  zset: seqs on their way to the dead-letter channel, scored by
//	         when another node may try again (the one publishing died)
//	8 cur    hash: channel -> "<epoch>-<seq>", the newest message kept
//	         (or where a channel consumer starts; "*": from the channel's
//	         first message, the channel did not exist when it was made)
//	9 og     hash: channel -> seq of its gap notice not yet delivered
//	10 lease string: the token of the node feeding the consumer
//
// ARGV, for every script: 1 the consumer's id (a script on a consumer
// deleted or created again since refuses with NOCONSUMER), 2 the Pub/Sub
// channel that wakes waiting fetches, 3 the consumer's name (the wake
// payload); then the script's own. Times are Redis's own clock (TIME), so
// that nodes whose clocks differ agree on deadlines.

const luaHead = `
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return redis.error_reply('NOCONSUMER') end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local function wake() redis.call('PUBLISH', ARGV[2], ARGV[3]) end
local function count(s)
  local e = redis.call('HGET', KEYS[2], s)
  if not e or e == 'g' then return nil end
  local c, z = string.match(e, '^(%d+) (%d+)$')
  return tonumber(c), tonumber(z)
end
-- drop removes entry s (a message) and what it weighed.
local function drop(s, size)
  redis.call('HDEL', KEYS[2], s)
  redis.call('HDEL', KEYS[3], s)
  redis.call('ZREM', KEYS[4], s)
  redis.call('ZREM', KEYS[5], s)
  redis.call('ZREM', KEYS[6], s)
  redis.call('ZREM', KEYS[7], s)
  redis.call('HINCRBY', KEYS[1], 'pending', -1)
  redis.call('HINCRBY', KEYS[1], 'bytes', -size)
end
-- due makes expired deliveries and due delays ready, and returns the
-- entries to dead-letter now: out of deliveries, or left dying by a
-- node that did not finish (retry ms later another may try again).
local function due(maxdel, retry)
  local dead, woke = {}, false
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[5], s)
    redis.call('HINCRBY', KEYS[1], 'expired', 1)
    local c = count(s)
    if not c then
    elseif c >= maxdel then
      redis.call('ZADD', KEYS[7], now + retry, s)
      table.insert(dead, {s, c, redis.call('HGET', KEYS[3], s)})
    else
      redis.call('ZADD', KEYS[4], s, s)
      woke = true
    end
  end
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[6], s)
    redis.call('ZADD', KEYS[4], s, s)
    woke = true
  end
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 1000)) do
    local c = count(s)
    if not c then
      redis.call('ZREM', KEYS[7], s)
    else
      redis.call('ZADD', KEYS[7], now + retry, s)
      table.insert(dead, {s, c, redis.call('HGET', KEYS[3], s)})
    end
  end
  return dead, woke
end
-- bulk runs cmd on key with the flat list of arguments, a few thousand
-- at a time (unpack has a limit): one command for many entries instead
-- of one each (a redis.call costs Redis about as much as a small
-- command's own work). Pairs stay whole: the step is even.
local function bulk(cmd, key, list)
  for i = 1, #list, 4000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 3999, #list)))
  end
end
-- nextAt is the earliest deadline, delay or dead-letter retry (0: none).
local function nextAt()
  local n = 0
  for k = 5, 7 do
    local r = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if #r > 0 then
      local t = tonumber(r[2])
      if n == 0 or t < n then n = t end
    end
  end
  return n
end
`

// createScript: ARGV 4 a new id, 5 the config JSON, 6 a channel whose
// cursor starts at 7 (none when 6 is empty). Returns {id, conf, created
// ms}: the new consumer's, or the existing one's.
var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  local tm = redis.call('TIME')
  local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  redis.call('HSET', KEYS[1], 'id', ARGV[4], 'conf', ARGV[5], 'created', now, 'next', 0, 'pending', 0, 'gapn', 0, 'bytes', 0)
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[8], ARGV[6], ARGV[7]) end
end
return redis.call('HMGET', KEYS[1], 'id', 'conf', 'created')
`)

// getScript: the consumer's {id, conf, created}, or nils.
var getScript = redis.NewScript(`return redis.call('HMGET', KEYS[1], 'id', 'conf', 'created')`)

// dropScript deletes every key of the consumer; 1 when it existed.
var dropScript = redis.NewScript(`
local n = redis.call('EXISTS', KEYS[1])
redis.call('DEL', unpack(KEYS))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
`)

// infoScript: {conf hash as pairs, in flight, dying, cursor as pairs,
// the lease holder or false}.
var infoScript = redis.NewScript(luaHead + `
return {redis.call('HGETALL', KEYS[1]), redis.call('ZCARD', KEYS[5]), redis.call('ZCARD', KEYS[7]), redis.call('HGETALL', KEYS[8]), redis.call('GET', KEYS[10])}
`)

// leaseScript: ARGV 4 token, 5 ttl ms. 1 taken or renewed, 0 another's.
var leaseScript = redis.NewScript(luaHead + `
local v = redis.call('GET', KEYS[10])
if not v then
  redis.call('SET', KEYS[10], ARGV[4], 'PX', ARGV[5])
  return 1
end
if v == ARGV[4] then
  redis.call('PEXPIRE', KEYS[10], ARGV[5])
  return 1
end
return 0
`)

// unleaseScript: ARGV 4 token; drops the lease when it is the caller's.
var unleaseScript = redis.NewScript(`
if redis.call('GET', KEYS[10]) == ARGV[4] then redis.call('DEL', KEYS[10]) end
return 0
`)

// appendScript keeps what the broker committed, once: ARGV 4 the lease
// token (NOLEASE when another node holds it), 5 max pending, 6 max
// pending bytes, then 7 fields per item: kind ("m" a message, "g" a gap
// the broker reported), channel, epoch, seq (the message's, or the gap's
// end), size (a gap: the messages lost, -1 unknown), record (a message),
// from "<epoch> <seq>" (a gap). A message or gap at or before the
// channel's cursor (same epoch) was kept already and is skipped, so the
// script run twice keeps everything once. Returns how many
// items changed the consumer.
var appendScript = redis.NewScript(luaHead + `
if redis.call('GET', KEYS[10]) ~= ARGV[4] then return redis.error_reply('NOLEASE') end
local maxp, maxb = tonumber(ARGV[5]), tonumber(ARGV[6])
local st = redis.call('HMGET', KEYS[1], 'pending', 'gapn', 'bytes', 'next')
local pending, gapn, bytes, nxt = tonumber(st[1]), tonumber(st[2]), tonumber(st[3]), tonumber(st[4]) or 0
local n = 0
-- What the batch's messages write, written together at the end: their
-- e and msg fields and their ready entries (gaps are written at once:
-- a later lost message may join one).
local es, ms, rs = {}, {}, {}
-- Each channel's cursor as the batch moves it (read once, written once):
-- epoch, seq as a number and as given.
local ce, cs, cq, moved = {}, {}, {}, {}
local function newGap(ch, fe, fs, te, ts, lost)
  nxt = nxt + 1
  local s = nxt
  redis.call('HSET', KEYS[2], s, 'g')
  redis.call('HSET', KEYS[3], s, cjson.encode({c = ch, fe = fe, fs = fs, te = te, ts = ts, l = lost}))
  redis.call('ZADD', KEYS[4], s, s)
  redis.call('HINCRBY', KEYS[1], 'gaps', 1)
  gapn = gapn + 1
  return s
end
for i = 7, #ARGV, 7 do
  local kind, ch, ep, sq = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  -- An item the cursor is at or past already (same epoch) was kept: the
  -- same script run again (a reply go-redis did not read) keeps it once.
  if ce[ch] == nil then
    local cur = redis.call('HGET', KEYS[8], ch)
    ce[ch] = false
    if cur then
      local e, q = string.match(cur, '^(.*)-(%d+)$')
      ce[ch], cs[ch] = e, tonumber(q)
    end
  end
  local q = tonumber(sq)
  if not (ce[ch] == ep and cs[ch] >= q) then
    n = n + 1
    if not moved[ch] then moved[#moved+1] = ch; moved[ch] = true end
    ce[ch], cs[ch], cq[ch] = ep, q, sq
    if kind == 'm' then
      local size = tonumber(ARGV[i+4])
      if pending + gapn >= maxp or bytes + size > maxb then
        -- Not kept: counted, in the channel's open gap notice when it
        -- ends just before this message, else in a new one.
        redis.call('HINCRBY', KEYS[1], 'lost', 1)
        local joined = false
        local g = redis.call('HGET', KEYS[9], ch)
        if g and redis.call('HGET', KEYS[2], g) == 'g' then
          local j = cjson.decode(redis.call('HGET', KEYS[3], g))
          if j.te == ep and tonumber(j.ts) + 1 == q then
            j.ts = sq
            j.l = tostring(tonumber(j.l) + 1)
            redis.call('HSET', KEYS[3], g, cjson.encode(j))
            joined = true
          end
        end
        if not joined then
          redis.call('HSET', KEYS[9], ch, newGap(ch, ep, tostring(q - 1), ep, sq, '1'))
        end
      else
        -- (Numbers given to redis.call are formatted with %.17g, and
        -- joined with %.14g: a string made once with %d costs less.)
        nxt = nxt + 1
        local s = string.format('%d', nxt)
        es[#es+1] = s; es[#es+1] = '0 ' .. ARGV[i+4]
        ms[#ms+1] = s; ms[#ms+1] = ARGV[i+5]
        rs[#rs+1] = s; rs[#rs+1] = s
        pending = pending + 1
        bytes = bytes + size
      end
    else
      local fe, fs = string.match(ARGV[i+6], '^(%S*) (%d+)$')
      local lost = ARGV[i+4]
      if tonumber(lost) > 0 then redis.call('HINCRBY', KEYS[1], 'lost', lost) else lost = '0' end
      newGap(ch, fe, fs, ep, sq, lost)
    end
  end
end
bulk('HSET', KEYS[2], es)
bulk('HSET', KEYS[3], ms)
bulk('ZADD', KEYS[4], rs)
if #moved > 0 then
  local curs = {}
  for _, ch in ipairs(moved) do
    curs[#curs+1] = ch; curs[#curs+1] = ce[ch] .. '-' .. cq[ch]
  end
  bulk('HSET', KEYS[8], curs)
end
redis.call('HSET', KEYS[1], 'pending', pending, 'gapn', gapn, 'bytes', bytes, 'next', nxt)
if n > 0 then wake() end
return n
`)

// fetchScript: ARGV 4 max, 5 ack wait ms, 6 max deliveries, 7 max in
// flight, 8 dead-letter retry ms, 9 a token naming this fetch: what it
// takes is noted (conf field lastfetch: "<token> <seq> <count> …") so
// that a fetch whose reply was lost can give it back
// (givebackFetchScript). Returns {deliveries, dead, next, now}:
// deliveries {seq, count, record} (count 0: a gap notice, its JSON),
// dead {seq, count, record} for the caller to publish to the dead-letter
// channel, next the earliest deadline (ms, 0: none), now Redis's clock.
var fetchScript = redis.NewScript(luaHead + `
local max, ackwait, maxdel, maxfly, retry = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local dead = due(maxdel, retry)
local out, taken = {}, {}
local fly = redis.call('ZCARD', KEYS[5])
local delivered, redelivered = 0, 0
-- Messages taken are written together at the end: out of ready, their
-- new counts, into fly, and their records read (want: their places in
-- out). The ready set is read a chunk at a time, in order, from after
-- the last entry looked at.
local unready, counts, flying, want = {}, {}, {}, {}
local last, stop = nil, false
local deadline = string.format('%d', now + ackwait)
while #out < max and not stop do
  local ask = math.min(max - #out, 1000)
  local r
  if last then
    r = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. last, '+inf', 'LIMIT', 0, ask)
  else
    r = redis.call('ZRANGE', KEYS[4], 0, ask - 1)
  end
  if #r == 0 then break end
  local es = redis.call('HMGET', KEYS[2], unpack(r))
  for j = 1, #r do
    local s, e = r[j], es[j]
    if not e then
      unready[#unready+1] = s
    elseif e == 'g' then
      redis.call('ZREM', KEYS[4], s)
      local rec = redis.call('HGET', KEYS[3], s)
      redis.call('HDEL', KEYS[2], s)
      redis.call('HDEL', KEYS[3], s)
      redis.call('HINCRBY', KEYS[1], 'gapn', -1)
      local ch = cjson.decode(rec).c
      if redis.call('HGET', KEYS[9], ch) == s then redis.call('HDEL', KEYS[9], ch) end
      out[#out+1] = {s, 0, rec}
    else
      if fly >= maxfly then stop = true; break end
      if maxfly == 1 then
        -- ordered: an earlier message waiting for its delay goes first
        local before = false
        for _, d in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
          if tonumber(d) < tonumber(s) then before = true end
        end
        if before then stop = true; break end
      end
      unready[#unready+1] = s
      local cs, z = string.match(e, '^(%d+) (%d+)$')
      local c = 1
      if cs == '0' then
        counts[#counts+1] = s; counts[#counts+1] = '1 ' .. z
      else
        c = tonumber(cs) + 1
        counts[#counts+1] = s; counts[#counts+1] = string.format('%d', c) .. ' ' .. z
      end
      flying[#flying+1] = deadline; flying[#flying+1] = s
      fly = fly + 1
      delivered = delivered + 1
      if c > 1 then redelivered = redelivered + 1 end
      out[#out+1] = {s, c, false}
      want[#want+1] = #out
      taken[#taken+1] = s .. ' ' .. string.format('%d', c)
    end
    last = s
    if #out >= max then break end
  end
end
bulk('ZREM', KEYS[4], unready)
bulk('HSET', KEYS[2], counts)
bulk('ZADD', KEYS[5], flying)
for i = 1, #want, 1000 do
  local seqs = {}
  for k = i, math.min(i + 999, #want) do seqs[#seqs+1] = out[want[k]][1] end
  local recs = redis.call('HMGET', KEYS[3], unpack(seqs))
  for k = 1, #seqs do out[want[i + k - 1]][3] = recs[k] end
end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[1], 'delivered', delivered)
  redis.call('HINCRBY', KEYS[1], 'redelivered', redelivered)
  redis.call('HSET', KEYS[1], 'lastfetch', ARGV[9] .. ' ' .. table.concat(taken, ' '))
end
return {out, dead, nextAt(), now}
`)

// tickScript is fetch's expiry alone, run by the node feeding the
// consumer at the deadlines: ARGV 4 max deliveries, 5 retry ms. Returns
// {dead, next, now}.
var tickScript = redis.NewScript(luaHead + `
local dead, woke = due(tonumber(ARGV[4]), tonumber(ARGV[5]))
if woke then wake() end
return {dead, nextAt(), now}
`)

// ackScript: ARGV 4 max in flight, then seq, count pairs. Returns the
// messages removed. Any delivery there was of a message acknowledges it
// (a late worker's too): the entry has been delivered and at least the
// id's count of times. An id naming a delivery that never was (kept from
// before the consumer was deleted and made again, whose entry numbers
// start at 1 again) removes nothing. A dying one is the dead-letter
// channel's already.
var ackScript = redis.NewScript(luaHead + `
local full = redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[4])
-- Each id once (the smallest count it is named with: any delivery of
-- the message acknowledges it), then looked up a chunk at a time.
local ids, least, at = {}, {}, {}
for i = 5, #ARGV, 2 do
  local s, c = ARGV[i], tonumber(ARGV[i+1])
  local k = at[s]
  if not k then
    ids[#ids+1] = s
    least[#ids] = c
    at[s] = #ids
  elseif c < least[k] then
    least[k] = c
  end
end
local gone, size = {}, 0
for i = 1, #ids, 1000 do
  local chunk = {unpack(ids, i, math.min(i + 999, #ids))}
  local es = redis.call('HMGET', KEYS[2], unpack(chunk))
  local dying = redis.call('ZMSCORE', KEYS[7], unpack(chunk))
  for k = 1, #chunk do
    local e = es[k]
    if e and e ~= 'g' and not dying[k] then
      local c, z = string.match(e, '^(%d+) (%d+)$')
      c = tonumber(c)
      if c > 0 and c >= least[i + k - 1] then
        gone[#gone+1] = chunk[k]
        size = size + tonumber(z)
      end
    end
  end
end
local n = #gone
if n > 0 then
  -- As drop() for each (none of them is dying).
  bulk('HDEL', KEYS[2], gone)
  bulk('HDEL', KEYS[3], gone)
  bulk('ZREM', KEYS[4], gone)
  bulk('ZREM', KEYS[5], gone)
  bulk('ZREM', KEYS[6], gone)
  redis.call('HINCRBY', KEYS[1], 'pending', -n)
  redis.call('HINCRBY', KEYS[1], 'bytes', -size)
  redis.call('HINCRBY', KEYS[1], 'acked', n)
  if full then wake() end
end
return n
`)

// nackScript: ARGV 4 seq, 5 count, 6 delay ms, 7 max deliveries, 8 retry
// ms. Returns {0} (not the current delivery), {1} (delivered again), or
// {2, record} (out of deliveries: the caller publishes it to the
// dead-letter channel).
var nackScript = redis.NewScript(luaHead + `
local s = ARGV[4]
local c = count(s)
if not c or c ~= tonumber(ARGV[5]) or not redis.call('ZSCORE', KEYS[5], s) then return {0} end
redis.call('ZREM', KEYS[5], s)
redis.call('HINCRBY', KEYS[1], 'nacked', 1)
local delay = tonumber(ARGV[6])
if c >= tonumber(ARGV[7]) then
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[8]), s)
  return {2, redis.call('HGET', KEYS[3], s)}
elseif delay > 0 then
  redis.call('ZADD', KEYS[6], now + delay, s)
else
  redis.call('ZADD', KEYS[4], s, s)
end
wake()
return {1}
`)

// buriedScript: ARGV 4 seq, published to the dead-letter channel: it
// goes, counted. 1 when this call removed it.
var buriedScript = redis.NewScript(luaHead + `
local s = ARGV[4]
if not redis.call('ZSCORE', KEYS[7], s) then return 0 end
local c, z = count(s)
if not c then
  redis.call('ZREM', KEYS[7], s)
  return 0
end
drop(s, z)
redis.call('HINCRBY', KEYS[1], 'dead_lettered', 1)
return 1
`)

// luaGiveback gives back deliveries taken but never handed out (a list
// seq, count, …): those still in flight with that count are ready again,
// not counted.
const luaGiveback = `
local function giveback(list)
  local n = 0
  for i = 1, #list, 2 do
    local s = list[i]
    local c, z = count(s)
    if c and c == tonumber(list[i+1]) and redis.call('ZSCORE', KEYS[5], s) then
      redis.call('ZREM', KEYS[5], s)
      redis.call('HSET', KEYS[2], s, (c - 1) .. ' ' .. z)
      redis.call('ZADD', KEYS[4], s, s)
      redis.call('HINCRBY', KEYS[1], 'delivered', -1)
      if c > 1 then redis.call('HINCRBY', KEYS[1], 'redelivered', -1) end
      n = n + 1
    end
  end
  if n > 0 then wake() end
  return n
end
`

// givebackScript: ARGV 4… seq, count pairs of deliveries taken but never
// handed out.
var givebackScript = redis.NewScript(luaHead + luaGiveback + `
return giveback({unpack(ARGV, 4)})
`)

// givebackFetchScript: ARGV 4 the token of a fetch whose reply was lost:
// what it took (when it ran, and no fetch ran after it) is given back.
// Running it again does nothing more (the note is gone).
var givebackFetchScript = redis.NewScript(luaHead + luaGiveback + `
local v = redis.call('HGET', KEYS[1], 'lastfetch')
if not v then return 0 end
local list = {}
for w in string.gmatch(v, '%S+') do table.insert(list, w) end
if list[1] ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[1], 'lastfetch')
table.remove(list, 1)
return giveback(list)
`)

var redisScripts = []*redis.Script{createScript, getScript, dropScript, infoScript, leaseScript, unleaseScript,
	appendScript, fetchScript, tickScript, ackScript, nackScript, buriedScript, givebackScript, givebackFetchScript}
