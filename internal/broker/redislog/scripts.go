package redislog

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// scripts are loaded when a node starts, and again when Redis forgot them.
var scripts = []*redis.Script{publishScript, readScript, deleteScript, countsScript, reapScript,
	presenceAddScript, presenceRemoveScript, republishScript, infoScript, rebaseScript}

// rebaseScript gives a channel a new epoch (ARGV 2) when its epoch is
// still ARGV 1, keeping its sequence and history, and notes the epoch it
// retired in r (other nodes then know where they stand in the new one:
// joinLocked); it returns the epoch the channel has and the one it
// retired. A node runs it when
// Redis went back (wentBack): the positions after what Redis kept are
// being given to other messages. The epoch is in the field e and at the
// head of w (the publish script's state); a channel without w (the
// previous release wrote it last) has it in e only. The reply is
// "<epoch> <retired>" ("<epoch> " when there is none).
var rebaseScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'e', 'w', 'r')
if v[1] ~= ARGV[1] then return (v[1] or '') .. ' ' .. (v[3] or '') end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 'r', ARGV[1])
if v[2] and string.sub(v[2], 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  redis.call('HSET', KEYS[1], 'w', ARGV[2] .. string.sub(v[2], #ARGV[1] + 1))
end
return ARGV[2] .. ' ' .. ARGV[1]
`)

// Lua shared by the scripts: applying a count change to a node's hash
// and the cluster totals.
const luaLib = `
-- node fields: c:<channel>, p:<pattern>, t (all counted subscriptions),
-- r:<pattern> (every pattern follow, internal ones too; Redis Cluster
-- only); cluster: subs[<channel>], subs['*'] (total), subs['*v'] (the
-- patterns' version: changes whenever pats does), pats[<pattern>],
-- routes[<pattern>].
local function apply(nodekey, subs, pats, routes, f, d, nodetoo)
  if nodetoo then
    local v = redis.call('HINCRBY', nodekey, f, d)
    if v <= 0 then redis.call('HDEL', nodekey, f) end
  end
  local g, gf = subs, '*'
  local kind = string.sub(f, 1, 2)
  if kind == 'p:' then
    g, gf = pats, string.sub(f, 3)
    -- A new version starts from the clock, so that one a restarted
    -- Redis counts again never matches what a node cached before.
    if redis.call('HINCRBY', subs, '*v', 1) == 1 then
      local t = redis.call('TIME')
      redis.call('HSET', subs, '*v', t[1] .. string.format('%06d', t[2]))
    end
  elseif kind == 'r:' then g, gf = routes, string.sub(f, 3)
  elseif kind == 'c:' then gf = string.sub(f, 3) end
  local gv = redis.call('HINCRBY', g, gf, d)
  if gv <= 0 then redis.call('HDEL', g, gf) end
end
`

// encodeFunc is encode()'s parameters and body: the republish script
// defines it as a local function, the publish script among its helpers.
//
// encode is a batch as it goes out on Pub/Sub (the receivers'
// decodeBatch reads it): a header line "B <epoch> <first seq> <time>
// <count>", then for each message a line "<kind> <origin> <event length>
// <data length>" followed by the event and the data. The n messages are
// A[j0 + 4*i] … A[j0 + 4*i + 3]: event, kind, data, "<origin> <event
// length> <data length>". (Strings are joined with .., not
// string.format, which runs sprintf for each %s too; a message alone is
// joined in one step, without a table.)
const encodeFunc = `(e, sfirst, ts, ns, A, j0, n)
  if n == 1 then
    return 'B ' .. e .. ' ' .. sfirst .. ' ' .. ts .. ' ' .. ns .. '\n' ..
      A[j0 + 1] .. ' ' .. A[j0 + 3] .. '\n' .. A[j0] .. A[j0 + 2]
  end
  local parts = {'B ' .. e .. ' ' .. sfirst .. ' ' .. ts .. ' ' .. ns .. '\n'}
  for i = 0, n - 1 do
    local j = j0 + 4*i
    parts[#parts+1] = A[j + 1] .. ' ' .. A[j + 3] .. '\n'
    parts[#parts+1] = A[j]
    parts[#parts+1] = A[j + 2]
  end
  return table.concat(parts)
end
`

// luaEncode defines encode(), which the republish script uses.
const luaEncode = `
local function encode` + encodeFunc + `
`

// luaPublishPrelude defines what publish(K, A, flat) uses (luaPublish
// defines publish() itself, luaPublishBody is its body), which is the
// publish script (with flat: see publishScript), and which the presence
// and lifecycle scripts run too. It appends a batch of messages to one
// channel, as one step:
//
// K = meta, stream, and on Redis Cluster the sizes list. (On a single
// Redis the sizes list's key is the meta key with z for m; the Pub/Sub
// channel is the meta key without ":m", and on a single Redis the set of
// channels <prefix>{=}:channels: each argument costs Redis about 1,000
// instructions per call. On Redis Cluster the list is declared: while
// its slot moves between shards, a script whose keys are not all on one
// of them is refused before it runs (TRYAGAIN), where an undeclared key
// would fail it at that key, after its XADD.)
//
// A = 1 "<new epoch> <channel>" (read only for a new channel), 2 now
// (µs), 3 history size, 4 age cutoff (µs, 0: none), 5 ttl (ms; -1: the
// keys do not expire), 6 history bytes (0: no bound), 7 how to publish
// ("P" PUBLISH, on a single Redis; "S" SPUBLISH, "SP" both, on Redis
// Cluster), 8 "i:<node>", 9 call id ("": none), 10 count N, then N times event,
// kind, data, "<origin> <event length> <data length>"; then, when any
// message carries an idempotency key, the keys' window (ms) and N Redis
// key names, one per message ("": no key). Times (µs) are decimal strings
// without leading zeros, compared as strings.
//
// Meta fields: e epoch, s sequence, i:<node> the node's last call:
// "<call id> <first seq> <count> <time>", and w, what only publish()
// reads and writes, in one field (a hash field costs Redis about as much
// to read or write as the Lua to split it): "<e> <t> <f> <c> <o> <x>",
// and "<l> <b>" after them while the channel keeps the sizes list. e is
// the epoch again (the field e, which other scripts read, is written
// once, when the channel is made), t the last time, f the first retained
// sequence, c the bytes of the channel's messages stored so far (of this
// epoch, or since the channel was taken over from the previous release),
// o a time no retained message is older than (µs; 0: not known), x when
// the keys' expiry is to be pushed back next (µs, a quarter of the ttl
// after it last was; -1: the keys do not expire; the previous release's
// x, when it last was, is due at once), l the first sequence whose entry
// has its c, b the retained bytes. The previous release kept t, f, b, o
// and x in fields of their own (a channel it wrote last has no w); they
// are left as they were.
//
// The history is the stream's entries from f to s (entry ids are
// "<seq>-1", fields t time, e event, k kind, d data, c the channel's c
// once the entry was stored; entries the previous release stored have no
// c). The history's length is s - f + 1, so the count bound is
// arithmetic: a publish moves f past what it pushes out. The stream
// itself is trimmed a whole node at a time (MINID ~), which is cheap, and
// only when f crosses an even number (the trim costs Redis more than the
// append; the stream holds at most one entry more for it); the few
// entries before f it still holds are never read. Times never go back,
// so o says whether anything can be older than the age cutoff: the
// oldest entries are read (their t) only when something may be, and o
// becomes the time of the first one kept. The retained bytes are c minus
// the first retained entry's c, plus its length (the info script reads
// it).
//
// The sizes list is kept only while the channel is published with
// a bytes bound (history bytes > 0): "<time> <data length>" for each
// retained message, oldest first, so that what the bound pushes out is
// found without reading the stream (a publish pops the sizes of what
// leaves), and b is the retained bytes. A channel without the list that
// gets a bytes bound has it made from the stream; one with the list
// published without a bytes bound drops it once every retained entry has
// its c (l says from which one on: a channel the previous release wrote,
// whose entries lack c, keeps the list until they left).
//
// A call id makes the call idempotent: the same call sent again (a retry
// after a connection broke or Redis stalled, whether or not the first
// copy ran) returns the positions the first copy got instead of appending
// again; a copy of an older call of the node (one its node gave up on)
// appends nothing. A node sends a channel's calls one at a time, each
// with a larger id.
//
// Assigns the batch's sequences, appends to the stream, publishes the
// batch to the nodes in one message and returns epoch, first seq, time,
// -1 (where the subscriber count was: the node reads the counts with the
// same pipeline, which costs Redis less than reading them here) and a
// status: 0 appended, 1 appended before (a retry), 2 a stale copy
// (nothing done); with keys, a sixth element lists the duplicates as
// (index, seq, time) triples: messages not appended because their key
// was seen within the window (the first message's seq and time), or
// because an earlier message of the batch has their key (seq -1-j: the
// batch's j-th appended message). The others got first, first+1, … in
// order.
//
// An idempotency key's record, "<epoch> <seq> <time>", is a key of its
// own in the channel's slot that expires with the window; one left by an
// earlier epoch of the channel (deleted since) does not count.
//
// The script runs for every publish: it avoids what costs Redis most in
// Lua, redis.call (about 5,000 instructions each beyond the command's
// own work), numbers turned into strings (Redis formats a number argument
// with "%.17g", Lua a concatenated one with "%.14g": string.format's %d
// is several times cheaper) and strings into numbers (tonumber parses
// twice, arithmetic once).
const luaPublishPrelude = `
local fmt = string.format
-- helpers are the functions of the rare paths (the sizes list, keys, a
-- channel a much older version wrote), made only when one is taken: each
-- function a script defines is made again at every call.
local function helpers()
  local H = {}
  -- older reports whether time a (µs, a decimal string) is before time b,
  -- without parsing either.
  function H.older(a, b) return #a < #b or (#a == #b and a < b) end
  function H.encode` + encodeFunc + `
  -- sizeOf splits a sizes entry into time (a string) and length.
  function H.sizeOf(v)
    local sp = string.find(v, ' ', 1, true)
    return string.sub(v, 1, sp - 1), string.sub(v, sp + 1) + 0
  end
  -- sizesFrom makes the sizes list of the stream's entries from seq from
  -- on, and returns their bytes.
  function H.sizesFrom(K, Z, from)
    redis.call('DEL', Z)
    local b, start = 0, fmt('%d', from) .. '-0'
    while true do
      local all = redis.call('XRANGE', K[2], start, '+', 'COUNT', '1000')
      if #all == 0 then break end
      local vals = {}
      for j = 1, #all do
        local fl = all[j][2] -- t, time, e, event, k, kind, d, data[, c, bytes]
        local l = #fl[8]
        b = b + l
        vals[j] = fl[2] .. ' ' .. fmt('%d', l)
      end
      redis.call('RPUSH', Z, unpack(vals))
      if #all < 1000 then break end
      start = '(' .. all[#all][1]
    end
    return b
  end
  -- migrate gives a channel a much older version wrote (no f, no sizes;
  -- its stream held exactly the history) its sizes list, and returns f.
  function H.migrate(K, Z, seq)
    local one = redis.call('XRANGE', K[2], '-', '+', 'COUNT', '1')
    if #one == 0 then
      redis.call('DEL', Z)
      return seq + 1
    end
    local f = tonumber(string.match(one[1][1], '^(%d+)'))
    H.sizesFrom(K, Z, f)
    return f
  end
  -- keyRecord reads an idempotency key's record: epoch, seq, time.
  function H.keyRecord(k)
    local v = redis.call('GET', k)
    if not v then return nil end
    local pe, ps, pt = string.match(v, '^(%S+) (%d+) (%d+)$')
    return pe, tonumber(ps), pt
  end
  return H
end
`

// luaPublishBody is publish()'s body (see luaPublish): the presence and
// lifecycle scripts call publish(), the publish script runs the body as
// its own (a function costs Redis to make at every call of a script).
const luaPublishBody = `
local H -- helpers(), once needed
local Z -- the sizes list's key (the meta key, z for m), once needed
local rf = A[8] -- i:<node>
local meta = redis.call('HMGET', K[1], 's', rf, 'w')
local e, st, sfo, sc0, o, x, l, sb -- w's parts (l: the channel keeps the sizes list)
local old -- the previous release's fields
if meta[3] then
  e, st, sfo, sc0, o, x, l, sb = string.match(meta[3], '^(%S+) (%d+) (%d+) (%d+) (%d+) (%S+) ?(%d*) ?(%d*)$')
else
  -- A new channel, or one the previous release wrote last (fields e, t,
  -- f, b, x and o; no w).
  old = redis.call('HMGET', K[1], 'e', 't', 'f', 'b', 'x', 'o')
  e = old[1]
end
local id = A[9]
local ns = A[10]
local n
if ns == '1' then n = 1 else n = ns + 0 end
local win = A[11 + 4*n] -- set when messages of the batch carry keys
if win then H = helpers() end
if e and id ~= '' and meta[2] then
  local rec = meta[2]
  local sp = string.find(rec, ' ', 1, true)
  local rid = sp and string.sub(rec, 1, sp - 1)
  if rid == id then
    local _, rseq, rn, rts = string.match(rec, '^(%d+) (%d+) (%d+) (%d+)$')
    if not win then return {e, tonumber(rseq), rts, -1, 1} end
    -- Which messages were duplicates the first time: a key whose
    -- record is not one of the positions this call appended.
    local lo, hi, dups, seen = tonumber(rseq), tonumber(rseq) + tonumber(rn), {}, {}
    for i = 0, n - 1 do
      local k = A[12 + 4*n + i]
      if k ~= '' then
        local pe, ps, pt = H.keyRecord(k)
        if pe == e and (seen[k] or ps < lo or ps >= hi) then
          dups[#dups+1] = i; dups[#dups+1] = ps; dups[#dups+1] = pt
        end
        seen[k] = true
      end
    end
    return {e, lo, rts, -1, 1, dups}
  end
  if rid and (#rid > #id or (#rid == #id and rid > id)) then return {e, 0, '0', 0, 2} end
end
-- Idempotency keys: a message whose key the channel saw within the
-- window (or that repeats a key earlier in the batch) is not appended;
-- the reply lists it with the first one's position (a batch's earlier
-- message: its index as -1 - index, placed once the batch is).
local dups
if win then
  dups = {}
  local keep, seenAt = {}, {}
  for i = 0, n - 1 do
    local k = A[12 + 4*n + i]
    local dup = false
    if k ~= '' then
      if seenAt[k] then
        dups[#dups+1] = i; dups[#dups+1] = -1 - seenAt[k]; dups[#dups+1] = '0'
        dup = true
      elseif e then
        local pe, ps, pt = H.keyRecord(k)
        if pe == e then
          dups[#dups+1] = i; dups[#dups+1] = ps; dups[#dups+1] = pt
          dup = true
        end
      end
      if not dup then seenAt[k] = #keep end
    end
    if not dup then keep[#keep+1] = i end
  end
  if #keep < n then
    -- The batch without its duplicates: the same arguments, fewer messages.
    local B = {}
    for j = 1, 9 do B[j] = A[j] end
    B[10] = fmt('%d', #keep)
    for j = 1, #keep do
      for f = 0, 3 do B[11 + 4*(j-1) + f] = A[11 + 4*keep[j] + f] end
    end
    B[11 + 4*#keep] = win
    for j = 1, #keep do B[12 + 4*#keep + (j-1)] = A[12 + 4*n + keep[j]] end
    A, n, ns = B, #keep, B[10]
  end
  if n == 0 then return {e, 0, '0', -1, 0, dups} end
end
local fresh = not e
local seq, b, f, c = 0, 0, 1, 0
local refresh = fresh
local size = A[3] + 0
local hb = 0
if A[6] ~= '0' then hb = A[6] + 0 end
if fresh then
  local ch
  e, ch = string.match(A[1], '^(%S+) (.*)$')
  o, x = '0', '0'
  Z = K[3] or string.sub(K[1], 1, -2) .. 'z'
  redis.call('DEL', K[2], Z)
  -- On a single Redis (how "P"), the set of channels: the meta key is
  -- <prefix>{<channel>}:m.
  if A[7] == 'P' then redis.call('SADD', string.sub(K[1], 1, #K[1] - #ch - 4) .. '{=}:channels', ch) end
  if size > 0 and hb > 0 then l = '1' end
else
  seq = (meta[1] or 0) + 0
  if meta[3] then
    c = sc0 + 0
    if l == '' then l = nil else b = sb + 0 end
  else
    -- The previous release wrote the channel: its sizes list and bytes
    -- go on, the bytes counted from here; the list stays until its
    -- messages (stored without c) left.
    st, sfo = old[2], old[3]
    b, x, o = (old[4] or 0) + 0, old[5] or '0', old[6] or '0'
    c, l = b, fmt('%d', seq + 1)
  end
  if l or not sfo or hb > 0 then Z = K[3] or string.sub(K[1], 1, -2) .. 'z' end
  if sfo then
    f = sfo + 0
  else
    H = H or helpers()
    f = H.migrate(K, Z, seq)
    refresh = true
  end
  if not l and size > 0 and hb > 0 then
    -- A bytes bound on a channel kept without it: its sizes list is made.
    H = H or helpers()
    b = H.sizesFrom(K, Z, f)
    l, refresh = '1', true
  end
end
local ts = A[2] -- times never go back: a node with a clock behind keeps the last
if st and (#ts < #st or (#ts == #st and ts < st)) then ts = st end -- (older(), inline)
local first = seq + 1
local count = seq - f + 1 -- the history's length before the batch
if count < 0 then count = 0 end
local skip, sf, trim = 0, nil, nil
if size > 0 then
  -- Before appending, drop from the oldest end what the batch pushes
  -- out: entries over the size, older than the cutoff, or over the
  -- bytes (never the newest); messages of the batch that would go at
  -- once are not added.
  local total = count + n
  local cutoff = A[4] -- a time, or '0' (none)
  local aged = cutoff ~= '0'
  local want = total - size -- at least these go, by count
  if want > count then want = count end
  local drop = 0
  if l then
    H = H or helpers()
    for i = 0, n - 1 do b = b + #A[13 + 4*i] end
    if want == 1 then
      local v = redis.call('LPOP', Z)
      if v then
        local et, sz = H.sizeOf(v)
        b, o = b - sz, et
      end
    elseif want > 1 then
      local gone = redis.call('LPOP', Z, fmt('%d', want)) or {}
      for j = 1, #gone do
        local et, sz = H.sizeOf(gone[j])
        b, o = b - sz, et
      end
    end
  end
  if want > 0 then drop, total = want, total - want end
  if l and drop < count and (total > size or (aged and H.older(o, cutoff)) or (hb > 0 and b > hb)) then
    -- More may go, by age or bytes: read the oldest sizes until one stays.
    local k, ask = 0, 1
    while drop < count do
      local vals = redis.call('LRANGE', Z, fmt('%d', k), fmt('%d', k + ask - 1))
      if #vals == 0 then break end
      local kept = false
      for j = 1, #vals do
        local et, sz = H.sizeOf(vals[j])
        if drop >= count or not (total > size or (aged and H.older(et, cutoff)) or (hb > 0 and b > hb)) then
          o, kept = et, true
          break
        end
        b = b - sz
        total = total - 1
        drop = drop + 1
        k = k + 1
        o = et
      end
      if kept then break end
      if ask < 128 then ask = ask * 2 end
    end
    if k > 0 then redis.call('LTRIM', Z, fmt('%d', k), '-1') end
  elseif not l and drop < count and aged and (#o < #cutoff or (#o == #cutoff and o < cutoff)) then
    -- Something may be older than the cutoff: read the oldest entries'
    -- times until one stays.
    H = H or helpers()
    local start, ask = fmt('%d', f + drop) .. '-0', 2
    while drop < count do
      local es = redis.call('XRANGE', K[2], start, '+', 'COUNT', fmt('%d', ask))
      if #es == 0 then break end
      local kept = false
      for j = 1, #es do
        local et = es[j][2][2]
        o = et
        if drop >= count or not H.older(et, cutoff) then
          kept = true
          break
        end
        total = total - 1
        drop = drop + 1
      end
      if kept then break end
      start = '(' .. es[#es][1]
      if ask < 128 then ask = ask * 2 end
    end
  end
  while skip < n - 1 and (total > size or (hb > 0 and b > hb)) do
    if l then b = b - #A[13 + 4*skip] end
    total = total - 1
    skip = skip + 1
  end
  local nf = f + drop
  if drop >= count then
    nf = first + skip
    o = ts -- what is retained is this batch's
    -- A list emptied by LPOP is gone (Redis deletes an empty list): the
    -- RPUSH below makes it anew, without an expiry.
    if l and count > 0 then refresh = true end
  end
  if nf ~= f or not sfo then sf = fmt('%d', nf) end
  -- The stream is trimmed when f crosses an even number: every other
  -- publish of a full history (a trim costs Redis more than the append).
  if sf and (nf - nf % 2 > f - f % 2 or not sfo) then trim = sf .. '-0' end
  if count == 0 then refresh = true end -- the keys are new
  f = nf
  if l and hb == 0 and f >= l + 0 then
    -- No bytes bound, and every retained entry has its c: the list goes.
    redis.call('DEL', Z)
    l = nil
  end
else
  -- No history: what an earlier setting kept goes.
  if count > 0 then redis.call('DEL', K[2], Z or K[3] or string.sub(K[1], 1, -2) .. 'z') end
  b = 0
  f = first + n
  sf = fmt('%d', f)
  o = ts
  l = nil
end
local sfirst = fmt('%d', first)
local sseq, sizes, sc
if l and n > 1 then sizes = {} end
for i = 0, n - 1 do
  local j = 11 + 4*i
  seq = seq + 1
  if i == 0 then sseq = sfirst else sseq = fmt('%d', seq) end
  if size > 0 and i >= skip then
    local data = A[j + 2]
    c = c + #data
    sc = fmt('%d', c)
    if trim then
      redis.call('XADD', K[2], 'MINID', '~', trim, sseq .. '-1', 't', ts, 'e', A[j], 'k', A[j + 1], 'd', data, 'c', sc)
      trim = nil
    else
      redis.call('XADD', K[2], sseq .. '-1', 't', ts, 'e', A[j], 'k', A[j + 1], 'd', data, 'c', sc)
    end
    if sizes then
      sizes[#sizes+1] = ts .. ' ' .. fmt('%d', #data)
    elseif l then
      redis.call('RPUSH', Z, ts .. ' ' .. fmt('%d', #data))
    end
  end
end
if sizes and #sizes > 0 then redis.call('RPUSH', Z, unpack(sizes)) end
local payload
if n == 1 then -- (as encode() does)
  payload = 'B ' .. e .. ' ' .. sfirst .. ' ' .. ts .. ' 1\n' .. A[12] .. ' ' .. A[14] .. '\n' .. A[11] .. A[13]
else
  H = H or helpers()
  payload = H.encode(e, sfirst, ts, ns, A, 11, n)
end
if win then
  for j = 0, n - 1 do
    local k = A[12 + 4*n + j]
    if k ~= '' then redis.call('SET', k, e .. ' ' .. fmt('%d', first + j) .. ' ' .. ts, 'PX', win) end
  end
end
-- The expiry is pushed back when a quarter of it has passed (x says
-- when), not on every publish. A channel kept without an age limit (ttl
-- -1) does not expire: its keys are made persistent once (x = -1 says
-- they are).
local ttl = A[5]
if ttl ~= '-1' then
  refresh = refresh or #x < #A[2] or (#x == #A[2] and x < A[2])
else
  refresh = refresh or x ~= '-1'
end
if refresh then
  if ttl ~= '-1' then x = fmt('%d', A[2] + ttl * 250) else x = '-1' end
end
local w = e .. ' ' .. ts .. ' ' .. (sf or sfo) .. ' ' .. (sc or fmt('%d', c)) .. ' ' .. o .. ' ' .. x
if l then w = w .. ' ' .. l .. ' ' .. fmt('%d', b) end
local added
if fresh or id == '' then
  local fields = {'s', sseq, 'w', w}
  if fresh then
    fields[#fields+1] = 'e'; fields[#fields+1] = e
  end
  if id ~= '' then
    fields[#fields+1] = rf; fields[#fields+1] = id .. ' ' .. sfirst .. ' ' .. ns .. ' ' .. ts
  end
  added = redis.call('HSET', K[1], unpack(fields))
else
  added = redis.call('HSET', K[1], 's', sseq, 'w', w, rf, id .. ' ' .. sfirst .. ' ' .. ns .. ' ' .. ts)
end
if refresh then
  if ttl ~= '-1' then
    redis.call('PEXPIRE', K[1], A[5])
    if size > 0 then
      redis.call('PEXPIRE', K[2], A[5])
      if l then redis.call('PEXPIRE', Z, A[5]) end
    end
  else
    redis.call('PERSIST', K[1])
    redis.call('PERSIST', K[2])
    if l then redis.call('PERSIST', Z) end
  end
end
if added > 0 and not fresh and redis.call('HLEN', K[1]) > 72 then
  -- Nodes come and go: forget the calls of nodes silent for 10 minutes.
  local all = redis.call('HGETALL', K[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'i:' then
      local rts = tonumber(string.match(all[i+1], '(%d+)$') or '0')
      if rts < A[2] - 600000000 then redis.call('HDEL', K[1], all[i]) end
    end
  end
end
local ps = string.sub(K[1], 1, -3) -- the channel's Pub/Sub channel: its meta key without ":m"
if A[7] ~= 'P' then redis.call('SPUBLISH', ps, payload) end
if A[7] ~= 'S' then redis.call('PUBLISH', ps, payload) end
if win then return {e, first, ts, -1, 0, dups} end
-- (A string costs Redis less to return than a table.)
if flat then return e .. ' ' .. sfirst .. ' ' .. ts end
return {e, first, ts, -1, 0}
`

// luaPublish defines publish(K, A, flat) (and the helpers it uses).
const luaPublish = luaPublishPrelude + `
local function publish(K, A, flat)` + luaPublishBody + `end
`

// publish: KEYS and ARGV as K and A of publish(), all in one round trip.
//
// The script returns publish()'s reply, but "<epoch> <first seq> <time>"
// (a string) instead of {epoch, first seq, time, -1, 0}.
var publishScript = redis.NewScript(luaPublishPrelude + `
local K, A, flat = KEYS, ARGV, true` + luaPublishBody)

// republish: KEYS meta. ARGV Pub/Sub channel, epoch, first seq, time
// (µs), count N, then N times event, kind, data, "<origin> <event
// length> <data length>". On Redis Cluster, sends on classic Pub/Sub (where pattern
// followers listen) a batch that went out on sharded Pub/Sub only, as
// publish() sent it but with header "R" (its messages reach only the
// subscriptions that asked for history); nothing when the channel has
// another epoch now (it was deleted since). Returns 1 sent, 0 not.
var republishScript = redis.NewScript(luaEncode + `
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[2] then return 0 end
local b = encode(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV, 6, ARGV[5] + 0)
redis.call('PUBLISH', ARGV[1], 'R' .. string.sub(b, 2))
return 1
`)

// Presence lives in one hash per channel, in the channel's slot: m:<id>
// the member's info, c:<id> how many nodes hold it, h:<node>:<id> a
// node's hold, k:<node> how many members a node holds, n the member
// count, l the position ("epoch seq") of the latest presence event, o:<node>
// the node's last presence call and its reply ("<call id> <json>").
// Both scripts take KEYS presence hash then the publish keys, ARGV five
// presence arguments (the fifth the call id) then publish()'s, and return
// {0} when nothing changed or {1, publish()'s reply…}; remove's {0|1, …}
// ends with how many members the node still holds in the channel. A call
// sent again returns the first copy's reply.
const luaPresence = `
local function rest(t, from)
  local r = {}
  for i = from, #t do r[#r+1] = t[i] end
  return r
end
local function announce(p)
  local r = publish(rest(KEYS, 2), rest(ARGV, 6))
  redis.call('HSET', p, 'l', r[1] .. ' ' .. string.format('%d', r[2]))
  return r
end
local callf = 'o:' .. string.sub(ARGV[5 + 8], 3) -- (publish()'s A[8] is i:<node>)
local function replied(p)
  local rec = redis.call('HGET', p, callf)
  if not rec then return nil end
  local rid, json = string.match(rec, '^(%d+) (.*)$')
  if rid == ARGV[5] then return cjson.decode(json) end
  return nil
end
local function reply(p, r)
  redis.call('HSET', p, callf, ARGV[5] .. ' ' .. cjson.encode(r))
  -- Kept while anything is held there (n: the members or the holding
  -- nodes; r: records of subscriptions, connections or member holds),
  -- else left to expire; the connections' hash is kept always.
  local conns = '` + connsSuffix + `'
  if string.sub(p, -#conns) == conns or redis.call('HEXISTS', p, 'n') == 1 or redis.call('HEXISTS', p, 'r') == 1 then
    redis.call('PERSIST', p)
  else
    redis.call('PEXPIRE', p, ` + idleHashLifeMs + `)
  end
  return r
end
`

// A presence (or event channel's) hash where nothing is held expires
// after idleHashLife (idleHashLifeMs in Lua): its last position and its
// nodes' last calls are all it keeps then.
const (
	idleHashLife   = 24 * time.Hour
	idleHashLifeMs = "86400000"
	connsSuffix    = "{" + connectionsEvents + "}:p"
)

// presenceAdd: ARGV node, member id, info, max members, call id.
var presenceAddScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node, id = KEYS[1], ARGV[1], ARGV[2]
local again = replied(p)
if again then return again end
local hold = 'h:' .. node .. ':' .. id
if redis.call('HEXISTS', p, hold) == 1 then return reply(p, {0}) end
local c = tonumber(redis.call('HGET', p, 'c:' .. id) or '0')
if c == 0 then
  local n = tonumber(redis.call('HGET', p, 'n') or '0')
  if n >= tonumber(ARGV[4]) then return reply(p, {-1, n}) end
end
redis.call('HSET', p, hold, 1, 'c:' .. id, c + 1)
redis.call('HINCRBY', p, 'k:' .. node, 1)
if c > 0 then return reply(p, {0}) end
redis.call('HSET', p, 'm:' .. id, ARGV[3])
redis.call('HINCRBY', p, 'n', 1)
local r = announce(p)
return reply(p, {1, r[1], r[2], r[3], r[4]})
`)

// presenceRemove: ARGV node, member id, unused, unused, call id.
var presenceRemoveScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node, id = KEYS[1], ARGV[1], ARGV[2]
local again = replied(p)
if again then return again end
if redis.call('HDEL', p, 'h:' .. node .. ':' .. id) == 0 then
  return reply(p, {0, tonumber(redis.call('HGET', p, 'k:' .. node) or '0')})
end
local k = redis.call('HINCRBY', p, 'k:' .. node, -1)
if k <= 0 then redis.call('HDEL', p, 'k:' .. node) end
if redis.call('HINCRBY', p, 'c:' .. id, -1) > 0 then return reply(p, {0, k}) end
redis.call('HDEL', p, 'c:' .. id, 'm:' .. id)
if redis.call('HINCRBY', p, 'n', -1) <= 0 then redis.call('HDEL', p, 'n') end
local r = announce(p)
return reply(p, {1, r[1], r[2], r[3], r[4], k})
`)

// read: KEYS meta, stream, sizes, channels (single Redis only). ARGV
// create (0/1), new epoch, ttl (ms; -1: none), channel, mode (none, after, tail,
// all), from epoch, from seq, tail count. Returns epoch, seq, last time,
// the mode used and the history's entries (tail: newest first), or nil
// for an unknown channel without create.
var readScript = redis.NewScript(`
local meta = redis.call('HMGET', KEYS[1], 'e', 's', 'w', 't', 'f')
local e, s, t, f = meta[1], meta[2], meta[4], meta[5]
if meta[3] then t, f = string.match(meta[3], '^%S+ (%d+) (%d+)') end
f = tonumber(f or '1')
if not e then
  if ARGV[1] == '0' then return false end
  e, s, t, f = ARGV[2], '0', '0', 1
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', e, 's', '0', 'w', e .. ' 0 1 0 0 0')
  if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  if KEYS[4] then redis.call('SADD', KEYS[4], ARGV[4]) end
end
local mode = ARGV[5]
if mode == 'after' and ARGV[6] ~= e then mode = 'all' end
local lo = string.format('%d-0', f)
local entries = {}
if mode == 'after' then
  local from = tonumber(ARGV[7]) + 1
  if from < f then from = f end
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from), '+')
elseif mode == 'tail' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', lo, 'COUNT', ARGV[8])
elseif mode == 'all' then
  entries = redis.call('XRANGE', KEYS[2], lo, '+')
end
return {e, s, t, mode, entries}
`)

// info: KEYS meta, stream. Returns nil for an unknown channel, else
// epoch, seq, last time (µs), how many messages the history holds and
// their bytes: w's b while the channel keeps the sizes list (the hash's b
// if the previous release wrote it last), else w's c minus the first
// retained entry's c plus its length (see publish()). A channel a much
// older version wrote (no f) holds its history in the whole stream.
var infoScript = redis.NewScript(`
local m = redis.call('HMGET', KEYS[1], 'e', 's', 'w', 't', 'f', 'b')
if not m[1] then return false end
local s = tonumber(m[2] or '0')
local t, f, c, l, lb = m[4] or '0', m[5], nil, '', nil
if m[3] then t, f, c, l, lb = string.match(m[3], '^%S+ (%d+) (%d+) (%d+) %d+ %S+ ?(%d*) ?(%d*)$') end
local n, b = 0, tonumber(m[6] or '0')
if not f then
  n = redis.call('XLEN', KEYS[2])
else
  if s + 1 > tonumber(f) then n = s + 1 - tonumber(f) end
end
if c then
  if l ~= '' then
    b = tonumber(lb)
  else
    b = 0
    local one = {}
    if n > 0 then one = redis.call('XRANGE', KEYS[2], f .. '-0', '+', 'COUNT', '1') end
    if #one > 0 then
      local fl, ec, d = one[1][2], nil, ''
      for i = 1, #fl - 1, 2 do
        if fl[i] == 'c' then ec = fl[i + 1] elseif fl[i] == 'd' then d = fl[i + 1] end
      end
      if ec then b = tonumber(c) - tonumber(ec) + #d end
    end
  end
end
return {m[1], m[2] or '0', t, n, b}
`)

// remove: KEYS meta, stream, sizes, channels (single Redis only). ARGV
// channel, pub/sub channel, "P" (PUBLISH), "S" (SPUBLISH) or "SP" (both:
// on Redis Cluster, for the nodes following the channel by name and
// those following it only through a pattern).
var deleteScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if KEYS[4] then redis.call('SREM', KEYS[4], ARGV[1]) end
if ARGV[3] ~= 'P' then redis.call('SPUBLISH', ARGV[2], 'D') end
if ARGV[3] ~= 'S' then redis.call('PUBLISH', ARGV[2], 'D') end
return 1
`)

// counts: KEYS node hash, subs, pats, nodes, routes, reaped mark, reaping
// mark. ARGV node, now (ms), counts channel, full (1: the pairs are the
// whole state, 0: deltas), then field/value pairs. Registers the node's
// heartbeat too, and returns 1 when the node was new, or taken for dead
// since its last heartbeat (then it must send its whole state again), 2
// while another node is still reaping it (it must wait: what it would
// record again could be ended by that reap), else 0.
var countsScript = redis.NewScript(luaLib + `
local wait = redis.call('EXISTS', KEYS[7]) == 1
local back = 0
if not wait then back = redis.call('DEL', KEYS[6]) end
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
if wait then return 2 end
if back > 0 then return 1 end
return 0
`)

// reapClaim: KEYS nodes, reaped mark, reaping mark. ARGV node, cutoff
// (ms), token, life of the claim (ms). A survivor claims the reap of a
// node that stopped beating: 1 when the node is still silent (its last
// heartbeat before the cutoff) and nobody else is reaping it; the node,
// should it come back, finds the reaped mark, and waits for the reaping
// mark to go before it rejoins. Else 0.
var reapClaimScript = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) >= tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) == false then return 0 end
redis.call('SET', KEYS[2], 1, 'EX', 86400)
return 1
`)

// reapKeep: KEYS reaping mark. ARGV token, life (ms), "1" keep / "0"
// let go. Keeps (or drops) a reap's claim while it is the claimant's;
// returns 0 when it no longer is.
var reapKeepScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1
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
