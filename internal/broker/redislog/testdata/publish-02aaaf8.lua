-- The publish script of pushctl at commit 02aaaf8 (the release before
-- the sizes list became optional), kept so that tests can write a
-- channel exactly as that release did and check that this one takes it
-- over. Its arguments are those of publish() then, but a message's fourth
-- is "<origin> <event length>", without the data's length.

-- sizeOf splits a sizes entry into time (a string) and length.
local function sizeOf(v)
  local sp = string.find(v, ' ', 1, true)
  return string.sub(v, 1, sp - 1), string.sub(v, sp + 1) + 0
end
local function int(v) return string.format('%d', v) end
-- older reports whether time a (µs, a decimal string) is before time b,
-- without parsing either.
local function older(a, b) return #a < #b or (#a == #b and a < b) end
-- encode is a batch as it goes out on Pub/Sub (the receivers'
-- decodeBatch reads it): a header line "B <epoch> <first seq> <time>
-- <count>", then for each message a line "<kind> <origin> <event length>
-- <data length>" followed by the event and the data. The n messages are
-- A[j0 + 4*i] … A[j0 + 4*i + 3]: event, kind, data, "<origin> <event
-- length>"; the data lengths as strings, when the caller has them, are
-- dl1 (n is 1) or dls[1..n]. (Strings are joined with .., not string.format, which runs
-- sprintf for each %s too; a message alone is joined in one step,
-- without a table.)
local function encode(e, sfirst, ts, ns, A, j0, n, dl1, dls)
  if n == 1 then
    local data = A[j0 + 2]
    return 'B ' .. e .. ' ' .. sfirst .. ' ' .. ts .. ' ' .. ns .. '\n' ..
      A[j0 + 1] .. ' ' .. A[j0 + 3] .. ' ' .. (dl1 or int(#data)) .. '\n' .. A[j0] .. data
  end
  local parts = {'B ' .. e .. ' ' .. sfirst .. ' ' .. ts .. ' ' .. ns .. '\n'}
  for i = 0, n - 1 do
    local j = j0 + 4*i
    local data = A[j + 2]
    parts[#parts+1] = A[j + 1] .. ' ' .. A[j + 3] .. ' ' .. (dls and dls[i + 1] or int(#data)) .. '\n'
    parts[#parts+1] = A[j]
    parts[#parts+1] = data
  end
  return table.concat(parts)
end
-- migrate gives a channel an older version wrote (no f, no sizes; its
-- stream held exactly the history) its sizes list, and returns f.
local function migrate(K, seq)
  redis.call('DEL', K[3])
  local all = redis.call('XRANGE', K[2], '-', '+')
  if #all == 0 then return seq + 1 end
  local vals = {}
  for j = 1, #all do
    local fl = all[j][2] -- t, time, e, event, k, kind, d, data
    vals[#vals+1] = fl[2] .. ' ' .. #fl[8]
    if #vals == 1000 or j == #all then
      redis.call('RPUSH', K[3], unpack(vals))
      vals = {}
    end
  end
  return tonumber(string.match(all[1][1], '^(%d+)'))
end
-- keyRecord reads an idempotency key's record: epoch, seq, time.
local function keyRecord(k)
  local v = redis.call('GET', k)
  if not v then return nil end
  local pe, ps, pt = string.match(v, '^(%S+) (%d+) (%d+)$')
  return pe, tonumber(ps), pt
end
local function publish(K, A)
local rf = 'i:' .. A[10]
local meta = redis.call('HMGET', K[1], 'e', 's', 't', 'b', 'x', rf, 'f', 'o')
local e = meta[1]
local id = A[11]
local ns = A[12]
local n = ns + 0
local win = A[13 + 4*n] -- set when messages of the batch carry keys
if e and id ~= '' and meta[6] then
  local rec = meta[6]
  local sp = string.find(rec, ' ', 1, true)
  local rid = sp and string.sub(rec, 1, sp - 1)
  if rid == id then
    local _, rseq, rn, rts = string.match(rec, '^(%d+) (%d+) (%d+) (%d+)$')
    if not win then return {e, tonumber(rseq), rts, -1, 1} end
    -- Which messages were duplicates the first time: a key whose
    -- record is not one of the positions this call appended.
    local lo, hi, dups, seen = tonumber(rseq), tonumber(rseq) + tonumber(rn), {}, {}
    for i = 0, n - 1 do
      local k = A[14 + 4*n + i]
      if k ~= '' then
        local pe, ps, pt = keyRecord(k)
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
    local k = A[14 + 4*n + i]
    local dup = false
    if k ~= '' then
      if seenAt[k] then
        dups[#dups+1] = i; dups[#dups+1] = -1 - seenAt[k]; dups[#dups+1] = '0'
        dup = true
      elseif e then
        local pe, ps, pt = keyRecord(k)
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
    for j = 1, 11 do B[j] = A[j] end
    B[12] = int(#keep)
    for j = 1, #keep do
      for f = 0, 3 do B[13 + 4*(j-1) + f] = A[13 + 4*keep[j] + f] end
    end
    B[13 + 4*#keep] = win
    for j = 1, #keep do B[14 + 4*#keep + (j-1)] = A[14 + 4*n + keep[j]] end
    A, n, ns = B, #keep, B[12]
  end
  if n == 0 then return {e, 0, '0', -1, 0, dups} end
end
local fresh = not e
local seq, b, x, f = 0, 0, 0, 1
local o = meta[8] or '0'
local refresh = fresh
if fresh then
  e, o = A[1], '0'
  redis.call('DEL', K[2], K[3])
  if K[4] then redis.call('SADD', K[4], A[6]) end
else
  seq = (meta[2] or 0) + 0
  b = (meta[4] or 0) + 0
  x = (meta[5] or 0) + 0
  if meta[7] then
    f = meta[7] + 0
  else
    f = migrate(K, seq)
    refresh = true
  end
end
local ts = A[2] -- times never go back: a node with a clock behind keeps the last
if meta[3] and older(ts, meta[3]) then ts = meta[3] end
local first = seq + 1
local size = A[3] + 0
local count = seq - f + 1 -- the history's length before the batch
if count < 0 then count = 0 end
local skip, trim = 0, nil
if size > 0 then
  -- Before appending, drop from the oldest end what the batch pushes
  -- out: entries over the size, older than the cutoff, or over the
  -- bytes (never the newest); messages of the batch that would go at
  -- once are not added.
  local nb = 0
  for i = 0, n - 1 do nb = nb + #A[15 + 4*i] end
  b = b + nb
  local total = count + n
  local cutoff, hb = A[4], 0 -- cutoff: a time, or '0' (none)
  local aged = cutoff ~= '0'
  if A[8] ~= '0' then hb = A[8] + 0 end
  local want = total - size -- at least these go, by count
  if want > count then want = count end
  local drop = 0
  if want > 0 then
    if want == 1 then
      local v = redis.call('LPOP', K[3])
      if v then
        local et, l = sizeOf(v)
        b, o = b - l, et
      end
    else
      local gone = redis.call('LPOP', K[3], int(want)) or {}
      for j = 1, #gone do
        local et, l = sizeOf(gone[j])
        b, o = b - l, et
      end
    end
    drop, total = want, total - want
  end
  if drop < count and (total > size or (aged and older(o, cutoff)) or (hb > 0 and b > hb)) then
    -- More may go, by age or bytes: read the oldest sizes until one stays.
    local k, ask = 0, 1
    while drop < count do
      local vals = redis.call('LRANGE', K[3], int(k), int(k + ask - 1))
      if #vals == 0 then break end
      local kept = false
      for j = 1, #vals do
        local et, l = sizeOf(vals[j])
        if drop >= count or not (total > size or (aged and older(et, cutoff)) or (hb > 0 and b > hb)) then
          o, kept = et, true
          break
        end
        b = b - l
        total = total - 1
        drop = drop + 1
        k = k + 1
        o = et
      end
      if kept then break end
      if ask < 128 then ask = ask * 2 end
    end
    if k > 0 then redis.call('LTRIM', K[3], int(k), '-1') end
  end
  while skip < n - 1 and (total > size or (hb > 0 and b > hb)) do
    b = b - #A[15 + 4*skip]
    total = total - 1
    skip = skip + 1
  end
  local nf = f + drop
  if drop >= count then
    nf = first + skip
    o = ts -- what is retained is this batch's
  end
  if nf > f then trim = string.format('%d-0', nf) end
  if count == 0 then refresh = true end -- the sizes list is new
  f = nf
else
  -- No history: what an earlier setting kept goes.
  if count > 0 then redis.call('DEL', K[2], K[3]) end
  b = 0
  f = first + n
  o = ts
end
local sfirst = int(first)
local sseq, sizes, dl, dls
if n > 1 then sizes, dls = {}, {} end
for i = 0, n - 1 do
  local j = 13 + 4*i
  seq = seq + 1
  if i == 0 then sseq = sfirst else sseq = int(seq) end
  local data = A[j + 2]
  dl = int(#data)
  if dls then dls[i + 1] = dl end
  if size > 0 and i >= skip then
    local ev, kind = A[j], A[j + 1]
    if trim then
      redis.call('XADD', K[2], 'MINID', '~', trim, sseq .. '-1', 't', ts, 'e', ev, 'k', kind, 'd', data)
      trim = nil
    else
      redis.call('XADD', K[2], sseq .. '-1', 't', ts, 'e', ev, 'k', kind, 'd', data)
    end
    if sizes then
      sizes[#sizes+1] = ts .. ' ' .. dl
    else
      redis.call('RPUSH', K[3], ts .. ' ' .. dl)
    end
  end
end
if sizes and #sizes > 0 then redis.call('RPUSH', K[3], unpack(sizes)) end
local payload = encode(e, sfirst, ts, ns, A, 13, n, dl, dls)
if win then
  for j = 0, n - 1 do
    local k = A[14 + 4*n + j]
    if k ~= '' then redis.call('SET', k, e .. ' ' .. int(first + j) .. ' ' .. ts, 'PX', win) end
  end
end
local fields = {'s', sseq, 't', ts, 'b', int(b), 'f', int(f)}
if fresh then
  fields[#fields+1] = 'e'; fields[#fields+1] = e
end
if o ~= (meta[8] or '0') then
  fields[#fields+1] = 'o'; fields[#fields+1] = o
end
if id ~= '' then
  fields[#fields+1] = rf; fields[#fields+1] = id .. ' ' .. sfirst .. ' ' .. ns .. ' ' .. ts
end
-- The expiry is pushed back when a quarter of it has passed, not on
-- every publish. A channel kept without an age limit (ttl -1) does not
-- expire: its keys are made persistent once (x = -1 says they are).
local ttl, now = A[5] + 0, A[2] + 0
if ttl > 0 then
  refresh = refresh or now - x > ttl * 250
else
  refresh = refresh or x >= 0
end
if refresh then
  fields[#fields+1] = 'x'
  if ttl > 0 then fields[#fields+1] = A[2] else fields[#fields+1] = '-1' end
end
local added = redis.call('HSET', K[1], unpack(fields))
if refresh then
  if ttl > 0 then
    redis.call('PEXPIRE', K[1], A[5])
    if size > 0 then
      redis.call('PEXPIRE', K[2], A[5])
      redis.call('PEXPIRE', K[3], A[5])
    end
  else
    redis.call('PERSIST', K[1])
    redis.call('PERSIST', K[2])
    redis.call('PERSIST', K[3])
  end
end
if added > 0 and not fresh and redis.call('HLEN', K[1]) > 72 then
  -- Nodes come and go: forget the calls of nodes silent for 10 minutes.
  local all = redis.call('HGETALL', K[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'i:' then
      local rts = tonumber(string.match(all[i+1], '(%d+)$') or '0')
      if rts < now - 600000000 then redis.call('HDEL', K[1], all[i]) end
    end
  end
end
if A[9] ~= 'P' then redis.call('SPUBLISH', A[7], payload) end
if A[9] ~= 'S' then redis.call('PUBLISH', A[7], payload) end
if win then return {e, first, ts, -1, 0, dups} end
return {e, first, ts, -1, 0}
end
return publish(KEYS, ARGV)
