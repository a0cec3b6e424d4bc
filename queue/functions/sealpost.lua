#!lua name=sealpost
--[[
The queue's Redis Functions library, and the only place that knows how
things are stored: the C side (queue/) passes keys and arguments and reads
replies. Every key a function touches is passed in KEYS, and all of one
call's keys carry one hash tag (a shard's {mq:<s>}, {sealpost:auth},
{sealpost:crypto} or {sealpost:dkim}), so each call stays in one slot (Redis
Cluster) and is atomic. Time comes from the server.

Keys of shard T = {mq:<s>}:
  T:due   zset  job id -> due time (ms)
  T:lease zset  job id -> lease deadline (ms)
  T:held  zset  job id -> time held
  T:meta  hash  <jid>:tok fencing token, <jid>:own owner, <jid>:exp lease expiries,
                <jid>:hold, <jid>:del an operator's hold or delete, waiting for the lease end
  T:m:<mid>  hash envelope: sender, params (MAIL parameters), received, info, bodies,
             open (jobs not done), open:<v> (jobs not done that send variant v)
  T:b:<mid>:<v> string body variant v, sealed (crypto/seal.c)
  T:j:<jid>  hash mid, domain, rcpts (LF-separated), attempts, last_error, body (variant);
             jid = <mid>.<v>.<n>
  T:log   stream trace of each message: accepted, each recipient's outcome, operators' acts
  T:st    hash  counters
  T:dom   hash  domain -> queued jobs
  T:age   zset  message id -> received time (ms), while it has open jobs
  T:dq    zset  each job by domain and age (see dq_member)
  T:w:<mid>  string a withdrawn message's tombstone, expiring: an enqueue of it is a no-op
  T:enc   hash  recipients accepted per minute by the kind of copy they got (see count_copies)

SMTP users (queue/users.c), all in the slot of {sealpost:auth}:
  {sealpost:auth}:users  hash name -> argon2id;  :cram  hash name -> CRAM-MD5 secret
  {sealpost:auth}:fail:<client>  login attempts not taken back, expiring with the window
                                 (the client is its IPv4 address, or its IPv6 /64)

The key directory (a:<address>, k:<id>, ...) and the sealing keys' checks,
under {sealpost:crypto}: see key_lookup and seal_check.

The DKIM signing keys (d:<domain>, domains, version), under {sealpost:dkim}:
see dkim_put.

Each function's KEYS are listed once, on its "-- KEYS:" line, by the names
above (m, b, j, a, k: the keys named after a message, body, job, address or
fingerprint). "x..." is a run of such keys, one per item; "[x, y]" a group
that is there or not. queue/schema.c declares the same lists for the C side,
and tests/unit/test_queue.c checks that the two agree.
]]

local WAKE_CHANNEL = 'sealpost:wake'

-- Entries kept in each shard's trace log (T:log), for `queue trace`.
local LOG_MAX = '10000'

-- (Numbers given to redis.call are formatted with %.14g on every call, which
-- costs more than many a command: the constants and times the hot paths
-- pass are strings already, LOG_MAX among them.)
local function trace(log, mid, jid, rcpt, event, detail)
  redis.call('XADD', log, 'MAXLEN', '~', LOG_MAX, '*', 'mid', mid, 'job', jid, 'rcpt', rcpt,
             'event', event, 'detail', detail)
end

-- T:dq, a sorted set with every score 0, holds "domain TAB received TAB jid"
-- for each job: in lexical order, the first member of a domain is its
-- oldest job, which the `top` report reads without scanning the queue.
local function dq_member(domain, received, jid)
  return domain .. '\t' .. string.format('%015d', tonumber(received) or 0) .. '\t' .. jid
end

-- A job id is <mid>.<v>.<n> (queue/schema.c makes them): its message's id,
-- 32 hex digits, the body variant it sends and its number in the message.
-- Returns the message id and the variant (a number), or nil for anything else.
local function job_id(jid)
  local mid, v = string.match(jid, '^([0-9a-f]+)%.(%d+)%.%d+$')
  if not mid or #mid ~= 32 then return nil end
  return mid, tonumber(v)
end

-- The reply to a call whose KEYS or ARGV are not what this library takes:
-- a node running other code than the library loaded.
local function mismatch(name)
  return redis.error_reply('ERR ' .. name .. ': arguments do not match this library')
end

-- The server's time in ms, as a number and as its decimal string, made
-- from TIME's strings (seconds, microseconds) without formatting a number.
local function now_ms()
  local t = redis.call('TIME')
  local s = t[1] .. string.sub('00000' .. t[2], -6, -4)
  return tonumber(s), s
end

-- Writes one message: envelope, sealed body variants, and its jobs, due at
-- due (now unless given). Each job is one destination domain and one body
-- variant; the envelope counts open jobs in all ('open') and per variant
-- ('open:<v>'), so a variant's body goes when its last job is done, and the
-- envelope with the last. k and a: as enqueue's KEYS and ARGV.
local function store_message(k, a, now, due, mac, env)
  due = due or now
  local nb, n = tonumber(a[6]), tonumber(a[7])
  if not nb or not n or nb < 1 or n < 1 or #k ~= 7 + nb + n or #a ~= 7 + nb + 4 * n then
    return mismatch('enqueue')
  end
  for i = 1, n do -- all checked before the first write: an error leaves nothing behind
    local at = 7 + nb + 4 * (i - 1)
    local v = tonumber(a[at + 4])
    if not v or v < 0 or v >= nb then
      return redis.error_reply('ERR body variant out of range')
    end
    local mid, named = job_id(a[at + 1])
    if mid ~= a[1] or named ~= v then
      return redis.error_reply('ERR job id does not name its message and variant')
    end
  end
  local jids, count, open = {}, 0, {}
  for i = 1, n do
    local at = 7 + nb + 4 * (i - 1)
    local v = tonumber(a[at + 4])
    jids[i] = a[at + 1]
    open[v] = (open[v] or 0) + 1
    for _ in string.gmatch(a[at + 3], '[^\n]+') do count = count + 1 end
  end
  local lens = {}
  for v = 1, nb do lens[v] = tostring(#a[7 + v]) end
  -- the envelope in one write: its fields, its MAC, and the open jobs per variant
  local fields = {'sender', a[3], 'params', a[4], 'received', now, 'info', a[5],
                  'bodies', a[6], 'open', a[7], 'jobs', table.concat(jids, ' '),
                  'lens', table.concat(lens, ' ')}
  if mac and mac ~= '' then
    fields[#fields + 1], fields[#fields + 2] = 'mac', mac
    fields[#fields + 3], fields[#fields + 4] = 'env', env
  end
  for v, c in pairs(open) do
    fields[#fields + 1], fields[#fields + 2] = 'open:' .. v, tostring(c)
  end
  redis.call('HSET', k[1], unpack(fields))
  for v = 1, nb do
    redis.call('SET', k[7 + v], a[7 + v])
  end
  for i = 1, n do
    local at = 7 + nb + 4 * (i - 1)
    local jid, domain, rcpts = a[at + 1], a[at + 2], a[at + 3]
    redis.call('HSET', k[7 + nb + i], 'mid', a[1], 'domain', domain, 'rcpts', rcpts,
               'attempts', '0', 'body', a[at + 4])
    redis.call('ZADD', k[7], '0', dq_member(domain, now, jid))
    redis.call('ZADD', k[2], due, jid)
    redis.call('HINCRBY', k[4], domain, '1')
  end
  redis.call('ZADD', k[5], now, a[1])
  trace(k[6], a[1], '', '', 'accepted', count .. ' recipients, ' .. nb .. ' bodies; ' .. a[5])
  redis.call('HINCRBY', k[3], 'enqueued', '1')
  redis.call('PUBLISH', WAKE_CHANNEL, a[2])
  return 'ok'
end

-- A late enqueue's jobs wait this long before a worker may claim them.
local LATE_GRACE_MS = 10000

-- T:enc counts, per minute of the server's clock, the recipients whose
-- message was stored by the kind of copy they get, for the status page's
-- shares of the last ten minutes. It is a ring of COPY_MINUTES slots: field
-- '<slot>' holds the minute the slot counts, '<slot>:<kind>' its recipients;
-- a later minute that takes a slot over clears it first. So the hash has a
-- fixed size and needs no expiry, and one field per kind is raised per call.
local COPY_KINDS = {'openpgp', 'smime', 'passthrough', 'plain'}
local COPY_MINUTES = 10

local function count_copies(enc, now, counts)
  local minute = math.floor(now / 60000)
  local slot = tostring(minute % COPY_MINUTES)
  if tonumber(redis.call('HGET', enc, slot)) ~= minute then
    local fields = {slot, minute}
    for _, kind in ipairs(COPY_KINDS) do
      fields[#fields + 1] = slot .. ':' .. kind
      fields[#fields + 1] = 0
    end
    redis.call('HSET', enc, unpack(fields))
  end
  for i, kind in ipairs(COPY_KINDS) do
    if counts[i] > 0 then redis.call('HINCRBY', enc, slot .. ':' .. kind, counts[i]) end
  end
end

-- The four counts at the end of enqueue's ARGV, taken off it; nil when
-- they are not counts.
local function take_counts(args)
  local counts = {}
  for i = #COPY_KINDS, 1, -1 do
    local c = tonumber(table.remove(args))
    if not c or c < 0 or c ~= math.floor(c) then return nil end
    counts[i] = c
  end
  return counts
end

-- KEYS: m, due, st, dom, age, log, dq, w, enc, b..., j...
--   (b: one per body variant, 0 first; j: one per job)
-- ARGV: mid, shard, sender, params, info, nb (bodies), n (jobs), the nb bodies,
--       then per job: jid, domain, rcpts, v (its body variant); then the
--       envelope's MAC and the recipients it covers (env: lines
--       "addr TAB variant TAB params"; both '' for none); then the deadline: ms on the ingress's realtime clock after which it has given
--       up on the reply (its client got 451), or 0; last, how many
--       recipients get an OpenPGP copy, an S/MIME copy, the message as the
--       sender encrypted it (passthrough), and a plain one (see count_copies).
-- 'duplicate' when the message is stored already; 'withdrawn', storing
-- nothing, when the ingress withdrew it first (its withdraw overtook it on
-- another connection: see withdraw). A call run after its deadline (Redis
-- was stalled with it in its input) is stored all the same, since the two
-- clocks may differ, but its jobs come due only LATE_GRACE_MS later, so that
-- the withdrawal which is on its way finds them unclaimed even while a
-- worker is waiting: at worst, with clocks apart by more than the ingress's
-- margin, a message is delivered that much later.
local function enqueue(keys, args)
  local counts = take_counts(args)
  local deadline = tonumber(table.remove(args))
  local env, mac = table.remove(args), table.remove(args)
  if not counts or not deadline or not mac then return mismatch('enqueue') end
  if redis.call('EXISTS', keys[1], keys[8]) > 0 then -- one call for the common case: neither
    if redis.call('EXISTS', keys[1]) == 1 then return 'duplicate' end
    trace(keys[6], args[1], '', '', 'withdrawn', 'came after its withdrawal: not stored')
    return 'withdrawn'
  end
  local enc = table.remove(keys, 9)
  table.remove(keys, 8) -- store_message takes the keys without w and enc
  local now, now_s = now_ms()
  local late = deadline > 0 and now > deadline
  local stored = store_message(keys, args, now_s, late and now + LATE_GRACE_MS or now_s, mac, env)
  if stored == 'ok' then count_copies(enc, now, counts) end
  if late and stored == 'ok' then
    trace(keys[6], args[1], '', '', 'late', (now - deadline) .. ' ms after the ingress gave up: '
          .. 'held back ' .. LATE_GRACE_MS .. ' ms for its withdrawal')
    redis.call('HINCRBY', keys[3], 'late', 1)
  end
  return stored
end

-- KEYS: due, lease, meta, held, st
-- ARGV: owner, lease_ms, max, max_expiries
-- Returns {next_ms, {jid, token, ...}}
local function claim(keys, args)
  local now = now_ms()
  local lease_ms, max, max_exp = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  for _, jid in ipairs(redis.call('ZRANGEBYSCORE', keys[2], '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', keys[2], jid)
    redis.call('HDEL', keys[3], jid .. ':own')
    -- An operator's hold or delete waited for this lease: a held job goes
    -- to held now; one to delete waits there for `queue delete` to finish it.
    local flagged = redis.call('HEXISTS', keys[3], jid .. ':hold') == 1
                    or redis.call('HEXISTS', keys[3], jid .. ':del') == 1
    redis.call('HDEL', keys[3], jid .. ':hold')
    if flagged then
      redis.call('ZADD', keys[4], now, jid)
    elseif redis.call('HINCRBY', keys[3], jid .. ':exp', 1) >= max_exp then
      redis.call('ZADD', keys[4], now, jid)
      redis.call('HINCRBY', keys[5], 'poisoned', 1)
    else
      redis.call('ZADD', keys[1], now, jid)
      redis.call('HINCRBY', keys[5], 'lease_expired', 1)
    end
  end
  local out = {}
  for _, jid in ipairs(redis.call('ZRANGEBYSCORE', keys[1], '-inf', now, 'LIMIT', 0, max)) do
    redis.call('ZREM', keys[1], jid)
    redis.call('ZADD', keys[2], now + lease_ms, jid)
    out[#out + 1] = jid
    out[#out + 1] = redis.call('HINCRBY', keys[3], jid .. ':tok', 1)
    redis.call('HSET', keys[3], jid .. ':own', args[1])
  end
  local next_ms = -1
  for _, k in ipairs({keys[1], keys[2]}) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] then
      local d = math.max(0, tonumber(first[2]) - now)
      if next_ms < 0 or d < next_ms then next_ms = d end
    end
  end
  return {next_ms, out}
end

-- The lease's deadline (a string, ms) when jid's lease is held with token;
-- else false.
local function lease_valid(keys, jid, token)
  return redis.call('HGET', keys[3], jid .. ':tok') == token
     and redis.call('ZSCORE', keys[2], jid)
end

-- KEYS: j, m, b, meta
--   (b: the job's body, whose variant its id names)
-- ARGV: jid.  Returns {job fields, envelope fields, body, flag} or nil; flag is what an
-- operator asked while the job was leased ('hold', 'delete' or ''): the
-- worker then sends nothing and completes, and complete does the rest.
local function fetch(keys, args)
  local job = redis.call('HGETALL', keys[1])
  if #job == 0 then return nil end
  local flag = ''
  if redis.call('HEXISTS', keys[4], args[1] .. ':del') == 1 then
    flag = 'delete'
  elseif redis.call('HEXISTS', keys[4], args[1] .. ':hold') == 1 then
    flag = 'hold'
  end
  return {job, redis.call('HGETALL', keys[2]), redis.call('GET', keys[3]), flag}
end

-- KEYS: due, lease, meta, j
-- ARGV: jid, token
-- A leased job whose hash is gone (deleted by an operator): drop its lease
-- and bookkeeping, or it would count lease expiries and end up held.
local function forget(keys, args)
  if not lease_valid(keys, args[1], args[2]) then return 'stale' end
  if redis.call('EXISTS', keys[4]) == 1 then return 'exists' end
  redis.call('ZREM', keys[2], args[1])
  redis.call('HDEL', keys[3], args[1] .. ':tok', args[1] .. ':own', args[1] .. ':exp')
  return 'ok'
end

-- KEYS: due, lease, meta
-- ARGV: jid, token, lease_ms[, keep_ms]
-- With more than keep_ms of the lease left, only checks it (writing nothing,
-- so the reply waits for no fsync of this call's own): the check before a
-- delivery's final dot, which renews only a lease past its half.
local function extend(keys, args)
  local deadline = lease_valid(keys, args[1], args[2])
  if not deadline then return 'stale' end
  local now, keep = now_ms(), tonumber(args[4]) or 0
  if keep > 0 and tonumber(deadline) - now > keep then return 'ok' end
  redis.call('ZADD', keys[2], 'XX', now + tonumber(args[3]), args[1])
  return 'ok'
end

-- Removes a job that is done or deleted: its hash, its counts, and the
-- message's body and envelope with their last job.
-- k: {meta, st, dom, j, m, b (variant v), age, dq}
local function drop_job(k, jid, domain, v)
  local mid = job_id(jid)
  redis.call('ZREM', k[8], dq_member(domain, redis.call('HGET', k[5], 'received'), jid))
  redis.call('DEL', k[4])
  redis.call('HDEL', k[1], jid .. ':tok', jid .. ':own', jid .. ':exp', jid .. ':hold',
             jid .. ':del')
  if redis.call('HINCRBY', k[3], domain, -1) <= 0 then
    redis.call('HDEL', k[3], domain)
  end
  if redis.call('HINCRBY', k[5], 'open:' .. v, -1) <= 0 then
    redis.call('DEL', k[6])
  end
  if redis.call('HINCRBY', k[5], 'open', -1) <= 0 then
    redis.call('DEL', k[5])
    redis.call('ZREM', k[7], mid)
  end
end

-- KEYS: due, lease, meta, st, dom, j, m, b, age, log, held, dq, [m, b, j]
--   (b: the job's body; [m, b, j]: the bounce's envelope, body and job, when there is one)
-- ARGV: jid, token, pending (LF-separated; empty: done), delay_ms, error, domain, shard,
--       outcomes (lines "rcpt TAB event TAB reply", for the trace log)
--       [, bounce mid, bounce info, bounce body, bounce jid, bounce domain, bounce rcpt,
--          delay notice ('1': the job is marked warned, so it warns once),
--          bounce MAC, bounce env (as enqueue's)]
-- A bounce for the recipients that failed in this attempt is written in the
-- same call, in this shard (its id was chosen to hash here), so a failure is
-- never recorded without its bounce, nor bounced twice. An operator's hold
-- or delete of the leased job takes effect here.
local function complete(keys, args)
  if (#keys ~= 12 or #args ~= 8) and (#keys ~= 15 or #args ~= 17) then
    return mismatch('complete')
  end
  local jid = args[1]
  if not lease_valid(keys, jid, args[2]) then return 'stale' end
  -- The body key (keys[8]) was named after the variant in the job id.
  local mid, named = job_id(jid)
  if not mid then return redis.error_reply('ERR complete: malformed job id') end
  local v = tonumber(redis.call('HGET', keys[6], 'body')) or named
  if named ~= v then
    return redis.error_reply('ERR job id and body variant disagree')
  end
  local now = now_ms()
  local deleted = redis.call('HEXISTS', keys[3], jid .. ':del') == 1
  if #keys == 15 and not deleted then -- first: its checks fail before anything is written
    local stored = store_message(
      {keys[13], keys[1], keys[4], keys[5], keys[9], keys[10], keys[12], keys[14], keys[15]},
      {args[9], args[7], '', '', args[10], 1, 1, args[11], args[12], args[13], args[14], 0}, now,
      nil, args[16], args[17])
    if type(stored) == 'table' and stored.err then return stored end
    redis.call('HINCRBY', keys[4], 'bounced', 1)
  end
  redis.call('ZREM', keys[2], jid)
  redis.call('HDEL', keys[3], jid .. ':own', jid .. ':exp')
  for rcpt, event, reply in string.gmatch(args[8], '([^\t\n]*)\t([^\t\n]*)\t([^\n]*)') do
    trace(keys[10], mid, jid, rcpt, event, reply)
  end
  if args[3] ~= '' and not deleted then
    redis.call('HSET', keys[6], 'rcpts', args[3], 'last_error', args[5])
    if #keys == 15 and args[15] == '1' then redis.call('HSET', keys[6], 'warned', 1) end
    redis.call('HINCRBY', keys[6], 'attempts', 1)
    redis.call('HINCRBY', keys[4], 'deferred', 1)
    if redis.call('HDEL', keys[3], jid .. ':hold') == 1 then
      redis.call('ZADD', keys[11], now, jid)
      trace(keys[10], mid, jid, '', 'held', 'by an operator, at lease end')
      return 'held'
    end
    redis.call('ZADD', keys[1], now + tonumber(args[4]), jid)
    -- Workers learn the new due time by claiming; this tells them to look.
    redis.call('PUBLISH', WAKE_CHANNEL, args[7])
    return 'deferred'
  end
  if deleted then trace(keys[10], mid, jid, '', 'deleted', 'by an operator, at lease end') end
  drop_job({keys[3], keys[4], keys[5], keys[6], keys[7], keys[8], keys[9], keys[12]}, jid,
           args[6], v)
  redis.call('HINCRBY', keys[4], deleted and 'deleted' or 'completed', 1)
  return 'done'
end

-- KEYS: lease, meta, held, st, log
-- ARGV: jid, token, why
-- A worker found the job's envelope or body does not match its MAC (or has
-- none, or one under a sealing key it lacks): nothing was sent. The job is
-- held, counted and logged; only fixing the data, then a release, sends it,
-- since the next attempt checks again.
local function job_tampered(keys, args)
  if #keys ~= 5 or #args ~= 3 then return mismatch('job_tampered') end
  local jid = args[1]
  if redis.call('HGET', keys[2], jid .. ':tok') ~= args[2]
     or not redis.call('ZSCORE', keys[1], jid) then
    return 'stale'
  end
  local mid = job_id(jid) or ''
  redis.call('ZREM', keys[1], jid)
  redis.call('HDEL', keys[2], jid .. ':own', jid .. ':exp', jid .. ':hold')
  redis.call('ZADD', keys[3], now_ms(), jid)
  redis.call('HINCRBY', keys[4], 'tampered', 1)
  trace(keys[5], mid, jid, '', 'tampered', 'held: ' .. args[3])
  return 'held'
end

-- job_op's wish for a leased job, noted in T:meta (keys[4]) as <jid>:hold
-- or <jid>:del, and done when the lease ends.
local function at_lease_end(keys, mid, jid, flag, reply)
  redis.call('HSET', keys[4], jid .. ':' .. flag, 1)
  trace(keys[11], mid, jid, '', flag == 'del' and 'delete' or 'hold',
        'asked while leased: at lease end')
  return reply
end

-- An operator's hold, release, retry or delete of one job (queue/admin.c).
-- A job a worker holds is left to it: a hold or delete is noted in T:meta
-- and done when its lease ends (complete, or a worker that reclaims it).
-- KEYS: due, lease, held, meta, st, dom, j, m, b, age, log, dq
--   (b: the job's body, whose variant its id names)
-- ARGV: op, jid, shard.  Returns what happened, in words.
local function job_op(keys, args)
  if #keys ~= 12 or #args ~= 3 then return mismatch('job_op') end
  local op, jid = args[1], args[2]
  local mid, named = job_id(jid)
  if not mid or redis.call('EXISTS', keys[7]) == 0 then return 'no such job' end
  local now = now_ms()
  local leased = redis.call('ZSCORE', keys[2], jid)
  local held = redis.call('ZSCORE', keys[3], jid)
  if op == 'hold' then
    if held then return 'already held' end
    if leased then return at_lease_end(keys, mid, jid, 'hold', 'held at lease end') end
    redis.call('ZREM', keys[1], jid)
    redis.call('ZADD', keys[3], now, jid)
    trace(keys[11], mid, jid, '', 'held', 'by an operator')
    return 'held'
  elseif op == 'release' or op == 'retry' then
    local done = op == 'release' and 'released' or 'retried'
    if leased then
      if redis.call('HDEL', keys[4], jid .. ':hold') == 1 then
        trace(keys[11], mid, jid, '', done, 'hold called off before lease end')
        return done
      end
      return 'being delivered'
    end
    if held then
      redis.call('ZREM', keys[3], jid)
      -- a poison count starts over; what was asked while it was leased is
      -- superseded by this (the operator's latest word)
      redis.call('HDEL', keys[4], jid .. ':exp', jid .. ':hold', jid .. ':del')
    elseif op == 'release' then
      return 'not held'
    end
    redis.call('ZADD', keys[1], now, jid)
    redis.call('PUBLISH', WAKE_CHANNEL, args[3])
    trace(keys[11], mid, jid, '', done, 'by an operator: due now')
    return done
  elseif op == 'delete' then
    if leased then return at_lease_end(keys, mid, jid, 'del', 'deleted at lease end') end
    redis.call('ZREM', keys[1], jid)
    redis.call('ZREM', keys[3], jid)
    local domain = redis.call('HGET', keys[7], 'domain') or ''
    local v = tonumber(redis.call('HGET', keys[7], 'body')) or named
    trace(keys[11], mid, jid, '', 'deleted', 'by an operator')
    drop_job({keys[4], keys[5], keys[6], keys[7], keys[8], keys[9], keys[10], keys[12]}, jid,
             domain, v)
    redis.call('HINCRBY', keys[5], 'deleted', 1)
    return 'deleted'
  end
  return redis.error_reply('ERR unknown operation ' .. op)
end

-- The ingress answered 451 to an enqueue whose reply never came (a timeout,
-- a connection lost, too few replicas), or the client left before its 250:
-- the message may be stored, and the client sends it again. Withdraws it
-- unless a worker has claimed one of its jobs (the job leased now or before,
-- or done and gone): then it stays, and is delivered. Otherwise a tombstone
-- stays for ARGV ttl seconds, whether the message was there or not: this
-- call may come on a new connection before the enqueue it chases on an old
-- one, which then stores nothing.
-- KEYS: m, due, held, meta, st, dom, age, log, dq, w, b..., j...
--   (b: one per body variant, 0 first; j: one per job, as the enqueue named them)
-- ARGV: mid, nb (bodies), ttl (s).  Returns 'withdrawn', 'claimed' or
-- 'gone' (nothing stored: not yet, or delivered in full already).
local function withdraw(keys, args)
  local nb, ttl = tonumber(args[2]), tonumber(args[3])
  local n = #keys - 10 - (nb or 0)
  if #args ~= 3 or not nb or nb < 1 or n < 1 or not ttl or ttl < 1 then
    return mismatch('withdraw')
  end
  local mid = args[1]
  if redis.call('EXISTS', keys[1]) == 0 then
    redis.call('SET', keys[10], 1, 'EX', ttl)
    return 'gone'
  end
  local env = redis.call('HMGET', keys[1], 'jobs', 'bodies')
  local jids = {}
  for jid in string.gmatch(env[1] or '', '%S+') do jids[#jids + 1] = jid end
  if tonumber(env[2]) ~= nb or #jids ~= n then return mismatch('withdraw') end
  for i, jid in ipairs(jids) do
    local jkey = keys[10 + nb + i]
    if string.sub(jkey, -(#jid + 3)) ~= ':j:' .. jid then return mismatch('withdraw') end
    if redis.call('EXISTS', jkey) == 0 or redis.call('HEXISTS', keys[4], jid .. ':tok') == 1 then
      trace(keys[8], mid, jid, '', 'withdraw_refused', 'too late: a worker has claimed it')
      return 'claimed'
    end
  end
  for i, jid in ipairs(jids) do
    local jkey = keys[10 + nb + i]
    local job = redis.call('HMGET', jkey, 'domain', 'body')
    local v = tonumber(job[2]) or 0
    redis.call('ZREM', keys[2], jid)
    redis.call('ZREM', keys[3], jid)
    drop_job({keys[4], keys[5], keys[6], jkey, keys[1], keys[11 + v], keys[7], keys[9]}, jid,
             job[1] or '', v)
  end
  redis.call('SET', keys[10], 1, 'EX', ttl)
  redis.call('HINCRBY', keys[5], 'withdrawn', 1)
  trace(keys[8], mid, '', '', 'withdrawn', 'by the ingress: its client got no 250 for it')
  return 'withdrawn'
end

-- KEYS: dom, dq
-- Returns {domain, queued jobs, oldest job's received ms (0: unknown), ...}
local function top(keys, args)
  local out = {}
  local dom = redis.call('HGETALL', keys[1])
  for i = 1, #dom, 2 do
    local first = redis.call('ZRANGEBYLEX', keys[2], '[' .. dom[i] .. '\t', '(' .. dom[i] .. '\n',
                             'LIMIT', 0, 1)
    local received = first[1] and tonumber(string.match(first[1], '\t(%d+)\t')) or 0
    out[#out + 1] = dom[i]
    out[#out + 1] = tonumber(dom[i + 1])
    out[#out + 1] = received
  end
  return out
end

-- KEYS: log
-- ARGV: how many.  The newest trace entries that report a failure (bounced
-- or expired), newest first: {ms-id, mid, rcpt, event, detail, ...}
local function recent(keys, args)
  local want, out = tonumber(args[1]), {}
  local entries = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 500)
  for _, e in ipairs(entries) do
    local f = {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    if f.event == 'bounced' or f.event == 'expired' then
      for _, v in ipairs({e[1], f.mid or '', f.rcpt or '', f.event, f.detail or ''}) do
        out[#out + 1] = v
      end
      if #out >= 5 * want then break end
    end
  end
  return out
end

-- KEYS: enc
-- Returns {openpgp, smime, passthrough, plain}: the recipients of the
-- messages stored in this minute and the nine before it, by the kind of copy.
local function copy_shares(keys, args)
  local minute = math.floor(now_ms() / 60000)
  local ring = redis.call('HGETALL', keys[1])
  local f = {}
  for i = 1, #ring, 2 do f[ring[i]] = ring[i + 1] end
  local out = {0, 0, 0, 0}
  for slot = 0, COPY_MINUTES - 1 do
    local at = tonumber(f[tostring(slot)])
    if at and at > minute - COPY_MINUTES and at <= minute then
      for i, kind in ipairs(COPY_KINDS) do
        out[i] = out[i] + (tonumber(f[slot .. ':' .. kind]) or 0)
      end
    end
  end
  return out
end

-- KEYS: due, lease, held, age
-- Returns {due now, due later, leased, held, messages, oldest received ms or -1, now ms}
local function stats(keys, args)
  local now = now_ms()
  local oldest = redis.call('ZRANGE', keys[4], 0, 0, 'WITHSCORES')
  return {redis.call('ZCOUNT', keys[1], '-inf', now),
          redis.call('ZCOUNT', keys[1], '(' .. now, '+inf'),
          redis.call('ZCARD', keys[2]), redis.call('ZCARD', keys[3]), redis.call('ZCARD', keys[4]),
          tonumber(oldest[2] or -1), now}
end

-- KEYS: users, cram, fail, macs
-- ARGV: name, limit, window_s, want_cram ('1' or '0')
-- Returns {argon2id hash or '', CRAM-MD5 secret or '', attempts before this one,
--          the hash's tag or '', the secret's tag or ''} (the tags: user_tag).
-- An attempt counts from its start, so parallel sessions cannot all guess
-- before any failure is recorded, and a client that hangs up mid-check has
-- still spent one; auth_uncount takes back one that succeeded, or that was
-- never checked. Past the limit
-- nothing is looked up and nothing more is counted. The count lives for a
-- fixed window from the first attempt.
local function auth_begin(keys, args)
  local before = tonumber(redis.call('GET', keys[3]) or '0')
  if before >= tonumber(args[2]) then return {'', '', before, '', ''} end
  if redis.call('INCR', keys[3]) == 1 then
    redis.call('EXPIRE', keys[3], tonumber(args[3]))
  end
  local cram, cram_tag = '', ''
  if args[4] == '1' then
    cram = redis.call('HGET', keys[2], args[1]) or ''
    cram_tag = redis.call('HGET', keys[4], 'c:' .. args[1]) or ''
  end
  return {redis.call('HGET', keys[1], args[1]) or '', cram, before,
          redis.call('HGET', keys[4], 'h:' .. args[1]) or '', cram_tag}
end

-- KEYS: fail
local function auth_uncount(keys, args)
  if redis.call('DECR', keys[1]) <= 0 then redis.call('DEL', keys[1]) end
  return 'ok'
end

-- KEYS: users, cram, macs
-- ARGV: name, argon2id hash[, CRAM-MD5 secret]
-- Adds or replaces a user. Without a secret any old one goes, in the same
-- call: a user is never seen with a new hash and an old secret. The old
-- tags go too (an old hash and its tag put back would log in): the user
-- cannot log in until user_tag has tagged the new ones.
local function user_set(keys, args)
  if #args ~= 2 and #args ~= 3 then return mismatch('user_set') end
  redis.call('HDEL', keys[3], 'h:' .. args[1], 'c:' .. args[1])
  redis.call('HSET', keys[1], args[1], args[2])
  if args[3] then
    redis.call('HSET', keys[2], args[1], args[3])
  else
    redis.call('HDEL', keys[2], args[1])
  end
  return 'ok'
end

-- KEYS: users, cram, macs
-- ARGV: name.  Returns 1 when the user was there, 0 when not.
local function user_delete(keys, args)
  redis.call('HDEL', keys[3], 'h:' .. args[1], 'c:' .. args[1])
  redis.call('HDEL', keys[2], args[1])
  return redis.call('HDEL', keys[1], args[1])
end

-- KEYS: users, cram
-- Returns {{name, 1 when it has a CRAM-MD5 secret, else 0}, ...}. Unsorted:
-- Lua compares strings by the server's locale, the command line by bytes.
local function user_list(keys, args)
  local out = {}
  for _, name in ipairs(redis.call('HKEYS', keys[1])) do
    out[#out + 1] = {name, redis.call('HEXISTS', keys[2], name)}
  end
  return out
end

-- KEYS: users, cram, macs
-- ARGV: name, hash, its tag, CRAM-MD5 secret ('' for none), its tag ('' for none)
-- Stores the tags the command line made (seal_mac over the name and the
-- hash, and over the name and the secret) in macs as h:<name> and c:<name>,
-- when the user is still stored with that hash and secret; else 'changed'
-- with nothing written. Nodes let no user log in whose tag does not hold.
local function user_tag(keys, args)
  if #args ~= 5 then return mismatch('user_tag') end
  if (redis.call('HGET', keys[1], args[1]) or '') ~= args[2]
     or (redis.call('HGET', keys[2], args[1]) or '') ~= args[4] then
    return 'changed'
  end
  redis.call('HSET', keys[3], 'h:' .. args[1], args[3])
  if args[4] ~= '' then
    redis.call('HSET', keys[3], 'c:' .. args[1], args[5])
  else
    redis.call('HDEL', keys[3], 'c:' .. args[1])
  end
  return 'ok'
end

-- KEYS: users, cram
-- Returns {name, hash, CRAM-MD5 secret or '', ...} for every user: what
-- `sealpost users authenticate` tags.
local function user_records(keys, args)
  local out = {}
  for _, name in ipairs(redis.call('HKEYS', keys[1])) do
    out[#out + 1] = name
    out[#out + 1] = redis.call('HGET', keys[1], name)
    out[#out + 1] = redis.call('HGET', keys[2], name) or ''
  end
  return out
end

-- KEYS: sealcheck
-- ARGV: key id, check value.
-- The first check stored for a key id stays; every node compares its own.
local function seal_check(keys, args)
  redis.call('HSETNX', keys[1], args[1], args[2])
  return redis.call('HGET', keys[1], args[1])
end

-- The key directory (queue/keys.c), all under {sealpost:crypto}:
--   a:<address> hash fpr, expires, data: the OpenPGP key that address's mail is
--                encrypted to; smime_fpr, smime_expires, smime_data: its S/MIME
--                certificate. Either set, both or none: the node chooses
--                (crypto/keydir.c) by the preference and by which is usable.
--   k:<id>       hash addrs (LF-separated), expires, data, imported (Unix time),
--                method ('smime' for a certificate; absent or 'openpgp': an
--                OpenPGP key, as every key stored before certificates was), and
--                for a certificate subject, issuer, serial (for `keys list`).
--                id: an OpenPGP fingerprint, or a certificate's SHA-256.
--   keys         set of ids;  policy  hash address or domain -> policy
--   prefer       hash address or domain -> 'openpgp' or 'smime', for an address
--                with both
--   version      counter, raised by every change: nodes drop their caches when it moves
--   expiry_openpgp, expiry_smime  zset id -> expires (Unix time; +inf: never), every
--                stored key of that method: the directory's size and what expires
--                soon, for the status page, without reading every key
-- Nodes read it with key_lookup and key_version; `sealpost keys` writes it
-- with key_put, key_delete, policy_set and prefer_set (below).

-- The fields of a:<address> that hold a key of method m.
local function address_fields(m)
  if m == 'smime' then return 'smime_fpr', 'smime_expires', 'smime_data' end
  return 'fpr', 'expires', 'data'
end

-- KEYS: a, policy, prefer, version, disc, miss, dversion, dmiss
-- ARGV: address, domain.
-- Returns {version, fpr, expires, data, address policy, domain policy,
--          smime_fpr, smime_expires, smime_data, address prefer, domain prefer,
--          dversion, the discovered key's fpr, expires, data, source, found,
--          checked, tag, the miss ('until kind tag') or false, and the domain's}.
local function key_lookup(keys, args)
  local k = redis.call('HMGET', keys[1], 'fpr', 'expires', 'data', 'smime_fpr',
                       'smime_expires', 'smime_data')
  local version = redis.call('GET', keys[4]) or '0'
  local d = redis.call('HMGET', keys[5], 'fpr', 'expires', 'data', 'source', 'found',
                       'checked', 'tag')
  return {version, k[1], k[2], k[3], redis.call('HGET', keys[2], args[1]),
          redis.call('HGET', keys[2], args[2]), k[4], k[5], k[6],
          redis.call('HGET', keys[3], args[1]), redis.call('HGET', keys[3], args[2]),
          redis.call('GET', keys[7]) or '0', d[1], d[2], d[3], d[4], d[5], d[6], d[7],
          redis.call('GET', keys[6]), redis.call('GET', keys[8])}
end

-- KEYS: version, dversion
-- Returns {version, dversion}.
local function key_version(keys, args)
  return {redis.call('GET', keys[1]) or '0', redis.call('GET', keys[2]) or '0'}
end

-- Discovered keys (discovery/, issue 16), beside the operator's directory
-- and never in its index: what a node or `sealpost keys lookup` found for an
-- address by WKD or a keyserver, each entry with its own tag (made by the
-- finder under the sealing key, checked at every use), and the misses:
--   disc:<address> hash fpr, expires, data, source ('wkd', 'keyserver'),
--                  url, found (Unix time this fingerprint was first filed),
--                  checked (last looked up), tag
--   miss:<address> 'until kind tag': nothing found ('none'), or the look-up
--                  failed ('error'), until then (it expires then)
--   dmiss:<domain> the same for a domain without WKD (no host, no policy file)
--   dversion       counter, raised by every discovered key or miss filed
--   dindex         zset address -> checked, every discovered key

-- KEYS: disc, miss, dversion, dindex
-- ARGV: address, fpr, expires, data, source, url, found, checked, tag, change
--       (what the last refresh found of another fingerprint, '' for nothing).
-- Files a discovered key, replacing the address's one and its miss.
local function disc_put(keys, args)
  redis.call('HSET', keys[1], 'fpr', args[2], 'expires', args[3], 'data', args[4],
             'source', args[5], 'url', args[6], 'found', args[7], 'checked', args[8],
             'tag', args[9])
  if args[10] and args[10] ~= '' then redis.call('HSET', keys[1], 'change', args[10]) end
  redis.call('DEL', keys[2])
  redis.call('ZADD', keys[4], args[8], args[1])
  redis.call('INCR', keys[3])
  return 'ok'
end

-- KEYS: miss, dversion
-- ARGV: until (Unix time), kind ('none', 'error'), tag.
-- Files a miss, gone at until.
local function disc_miss(keys, args)
  redis.call('SET', keys[1], args[1] .. ' ' .. args[2] .. ' ' .. args[3], 'EXAT', args[1])
  redis.call('INCR', keys[2])
  return 'ok'
end

-- KEYS: dmiss, dversion
-- ARGV: as disc_miss: a miss for a whole domain, which has no WKD at all.
local function disc_domain_miss(keys, args)
  return disc_miss(keys, args)
end

-- KEYS: disc, miss, dversion, dindex
-- ARGV: address.
-- Forgets what was discovered for an address: 'deleted', or 'none' when
-- there was nothing.
local function disc_delete(keys, args)
  local n = redis.call('DEL', keys[1], keys[2])
  redis.call('ZREM', keys[4], args[1])
  if n > 0 then redis.call('INCR', keys[3]) end
  return n > 0 and 'deleted' or 'none'
end

-- KEYS: dindex
-- Returns every address with a discovered key, oldest check first.
local function disc_addresses(keys, args)
  return redis.call('ZRANGE', keys[1], 0, -1)
end

-- KEYS: disc
-- Returns {fpr, expires, data, source, url, found, checked, tag, change} of one.
local function disc_get(keys, args)
  return redis.call('HMGET', keys[1], 'fpr', 'expires', 'data', 'source', 'url', 'found',
                    'checked', 'tag', 'change')
end

-- KEYS: dindex
-- ARGV: before, now (Unix times), max.
-- Takes up to max addresses whose key was last checked at or before
-- before, for the calling node to look up again: their score becomes now,
-- so no other node takes them meanwhile. Returns them.
local function disc_due(keys, args)
  local due = redis.call('ZRANGEBYSCORE', keys[1], '-inf', args[1], 'LIMIT', 0, args[3])
  for _, a in ipairs(due) do redis.call('ZADD', keys[1], args[2], a) end
  return due
end

-- The lines of an LF-separated list (a stored key's addresses).
local function lines(text)
  local out = {}
  for line in string.gmatch(text or '', '[^\n]+') do out[#out + 1] = line end
  return out
end

local function as_set(list)
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  return set
end

-- True when the two lists hold the same strings, each as often as it likes.
local function same_set(a, b)
  local sa, sb = as_set(a), as_set(b)
  for v in pairs(sa) do if not sb[v] then return false end end
  for v in pairs(sb) do if not sa[v] then return false end end
  return true
end

-- t[from..to] as a list (unpack has a limit on how many it returns).
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end

-- A stored key's {addrs, expires, imported, data, method, subject, issuer,
-- serial} (method 'openpgp' when the field is absent), or nil when it has no data.
local function stored_key(k)
  local f = redis.call('HMGET', k, 'addrs', 'expires', 'imported', 'data', 'method', 'subject',
                       'issuer', 'serial')
  if not f[4] then return nil end
  f[5] = f[5] or 'openpgp'
  return f
end

-- Files id in the expiry index of its method (zsets: expiry_openpgp,
-- expiry_smime), out of the other's.
local function index_expiry(zsets, id, method, expires)
  local own, other = zsets[1], zsets[2]
  if method == 'smime' then own, other = other, own end
  local e = tonumber(expires) or 0
  redis.call('ZADD', own, e > 0 and e or '+inf', id)
  redis.call('ZREM', other, id)
end

-- KEYS: expiry_openpgp, expiry_smime, k...
-- ARGV: the ids of the k keys.
-- Files the keys stored before the expiry index existed (the node that
-- finds the index short calls it, see queue/keys.c); a key gone meanwhile is
-- skipped. Returns how many were filed.
local function key_index(keys, args)
  if #keys ~= 2 + #args then return mismatch('key_index') end
  local filed = 0
  for i, id in ipairs(args) do
    local f = redis.call('HMGET', keys[2 + i], 'expires', 'method', 'data')
    if f[3] then
      index_expiry(keys, id, f[2] or 'openpgp', f[1])
      filed = filed + 1
    end
  end
  return filed
end

-- KEYS: keys, expiry_openpgp, expiry_smime
-- ARGV: horizon (s), max.
-- Returns {stored ids, OpenPGP keys, certificates, expired already, expiring,
--          then for up to max of those expiring within horizon, soonest
--          first: id, method, expires}. Both indexes are read by score:
-- O(log n) and the keys listed, however large the directory.
local function key_summary(keys, args)
  local horizon, max = tonumber(args[1]), tonumber(args[2])
  -- a negative LIMIT count would answer the whole index
  if not horizon or not max or horizon < 0 or max < 0 or max > 1000 then
    return mismatch('key_summary')
  end
  local now = math.floor(now_ms() / 1000)
  local soon = {}
  local expired, expiring = 0, 0
  for i, method in ipairs({'openpgp', 'smime'}) do
    local z = keys[1 + i]
    expired = expired + redis.call('ZCOUNT', z, '-inf', '(' .. now)
    expiring = expiring + redis.call('ZCOUNT', z, now, now + horizon)
    local got = redis.call('ZRANGEBYSCORE', z, now, now + horizon, 'WITHSCORES', 'LIMIT', 0, max)
    for j = 1, #got, 2 do soon[#soon + 1] = {got[j], method, tonumber(got[j + 1])} end
  end
  table.sort(soon, function(x, y) return x[3] < y[3] or (x[3] == y[3] and x[1] < y[1]) end)
  local out = {redis.call('SCARD', keys[1]), redis.call('ZCARD', keys[2]),
               redis.call('ZCARD', keys[3]), expired, expiring}
  for j = 1, math.min(#soon, max) do
    for _, v in ipairs(soon[j]) do out[#out + 1] = v end
  end
  return out
end

-- KEYS: k...
-- Returns each key's addresses (LF-separated; '' when it is gone).
local function key_addresses(keys, args)
  local out = {}
  for i, k in ipairs(keys) do out[i] = redis.call('HGET', k, 'addrs') or '' end
  return out
end

-- KEYS: k
-- Returns {addresses (LF-separated), expires, imported (Unix time), data, method,
--          subject, issuer, serial} (the last three nil for an OpenPGP key), or nil.
local function key_get(keys, args)
  return stored_key(keys[1])
end

-- KEYS: keys
-- Returns the id of every stored key and certificate.
local function key_fprs(keys, args)
  return redis.call('SMEMBERS', keys[1])
end

-- Files address under the most recently imported of the other keys of
-- method m (others, with their ids fprs) that lists it, if any: with two
-- keys for one address, deleting the newer leaves the older in charge, as
-- `keys list` shows it. A certificate never stands in for an OpenPGP key,
-- nor the other way round: each method has its own fields.
local function relink(akey, address, others, fprs, m)
  local best, best_fpr
  for i, k in ipairs(others) do
    local f = stored_key(k)
    if f and f[5] == m and as_set(lines(f[1]))[address]
       and (not best or (tonumber(f[3]) or 0) > (tonumber(best[3]) or 0)) then
      best, best_fpr = f, fprs[i]
    end
  end
  if best then
    local ffpr, fexp, fdata = address_fields(m)
    redis.call('HSET', akey, ffpr, best_fpr, fexp, best[2] or '0', fdata, best[4])
  end
end

-- Drops address -> fpr (method m) when the address still points at fpr (a
-- later import of another key for it wins), and files it under another key
-- of m that lists it. The other method's fields stay.
local function unlink(akey, address, fpr, others, fprs, m)
  local ffpr, fexp, fdata = address_fields(m)
  if redis.call('HGET', akey, ffpr) == fpr then
    redis.call('HDEL', akey, ffpr, fexp, fdata)
    relink(akey, address, others, fprs, m)
  end
end

-- key_put and key_delete touch the keys of the addresses a key loses and
-- read every other stored key to relink them, so their callers name all of
-- those in KEYS, as they found them just before. Whether the directory is
-- still as they found it: the addresses the key has and does not keep are
-- those dropped, and the other keys' fingerprints (when there are any to
-- relink) are fprs.
local function directory_as_read(keys, fpr, kept, dropped, fprs)
  local losing = {}
  for _, a in ipairs(lines(redis.call('HGET', keys[1], 'addrs'))) do
    if not kept[a] then losing[#losing + 1] = a end
  end
  if not same_set(losing, dropped) then return false end
  if #dropped == 0 then return true end
  local now = {}
  for _, f in ipairs(redis.call('SMEMBERS', keys[2])) do
    if f ~= fpr then now[#now + 1] = f end
  end
  return same_set(now, fprs)
end

-- KEYS: k, keys, version, expiry_openpgp, expiry_smime, a..., a..., k...
--   (the key's own; a: one per address it has, then one per address it
--   had before and has no more; k: when there are such, one per other stored key)
-- ARGV: id, expires, data, n (addresses), m (dropped addresses), method
--       ('openpgp' or 'smime'), subject, issuer, serial ('' for OpenPGP),
--       the n addresses, the m dropped ones, the other keys' ids
-- Stores (or replaces) a key or certificate under each of its addresses, in
-- its method's fields; an address it lost goes to another of the same
-- method that lists it. Returns 'ok', or 'changed' with nothing written
-- when the directory changed since the caller read it (it reads again and
-- retries). The version moves: nodes see it at once.
local function key_put(keys, args)
  local n, m = tonumber(args[4]), tonumber(args[5])
  local p = #args - 9 - (n or 0) - (m or 0)
  local method = args[6]
  if not n or not m or p < 0 or #keys ~= 5 + n + m + p or (m == 0 and p > 0)
     or (method ~= 'openpgp' and method ~= 'smime') then
    return mismatch('key_put')
  end
  local fpr = args[1]
  local addresses, dropped = slice(args, 10, 9 + n), slice(args, 10 + n, 9 + n + m)
  local fprs, others = slice(args, 10 + n + m, #args), slice(keys, 6 + n + m, #keys)
  if not directory_as_read(keys, fpr, as_set(addresses), dropped, fprs) then
    return 'changed'
  end
  for i = 1, m do
    unlink(keys[5 + n + i], dropped[i], fpr, others, fprs, method)
  end
  redis.call('HSET', keys[1], 'addrs', table.concat(addresses, '\n'), 'expires', args[2],
             'imported', redis.call('TIME')[1], 'data', args[3], 'method', method)
  if method == 'smime' then
    redis.call('HSET', keys[1], 'subject', args[7], 'issuer', args[8], 'serial', args[9])
  end
  local ffpr, fexp, fdata = address_fields(method)
  for i = 1, n do
    redis.call('HSET', keys[5 + i], ffpr, fpr, fexp, args[2], fdata, args[3])
  end
  redis.call('SADD', keys[2], fpr)
  index_expiry({keys[4], keys[5]}, fpr, method, args[2])
  redis.call('INCR', keys[3])
  return 'ok'
end

-- KEYS: k, keys, version, expiry_openpgp, expiry_smime, a..., k...
--   (the key's own; a: one per address it is stored under; k: when it has
--   any, one per other stored key)
-- ARGV: id, n (addresses), the n addresses, the other keys' ids
-- Deletes a key or certificate; each of its addresses goes to the most
-- recently imported other one of its method that lists it. Returns 1 when
-- it was there, 0 when not, or 'changed' as key_put.
local function key_delete(keys, args)
  local n = tonumber(args[2])
  local p = #args - 2 - (n or 0)
  if not n or p < 0 or #keys ~= 5 + n + p or (n == 0 and p > 0) then
    return mismatch('key_delete')
  end
  local fpr = args[1]
  local addresses = slice(args, 3, 2 + n)
  local fprs, others = slice(args, 3 + n, #args), slice(keys, 6 + n, #keys)
  if not directory_as_read(keys, fpr, {}, addresses, fprs) then return 'changed' end
  local found = redis.call('EXISTS', keys[1])
  local method = redis.call('HGET', keys[1], 'method') or 'openpgp'
  for i = 1, n do
    unlink(keys[5 + i], addresses[i], fpr, others, fprs, method)
  end
  redis.call('DEL', keys[1])
  redis.call('SREM', keys[2], fpr)
  redis.call('ZREM', keys[4], fpr)
  redis.call('ZREM', keys[5], fpr)
  redis.call('INCR', keys[3])
  return found
end

-- Sets field of hash h (a policy or a preference) to value, or removes it
-- when there is none; the version moves.
local function setting_set(h, version, field, value)
  if value then
    redis.call('HSET', h, field, value)
  else
    redis.call('HDEL', h, field)
  end
  redis.call('INCR', version)
  return 'ok'
end

-- KEYS: policy, version
-- ARGV: address or domain[, policy]: without one, its policy goes.
local function policy_set(keys, args)
  return setting_set(keys[1], keys[2], args[1], args[2])
end

-- KEYS: prefer, version
-- ARGV: address or domain[, 'openpgp' or 'smime']: without one, its preference goes.
local function prefer_set(keys, args)
  if args[2] and args[2] ~= 'openpgp' and args[2] ~= 'smime' then
    return redis.error_reply('ERR prefer_set: not openpgp or smime: ' .. args[2])
  end
  return setting_set(keys[1], keys[2], args[1], args[2])
end

-- KEYS: policy, prefer
-- Returns {{address or domain, policy, ...}, {address or domain, preference, ...}}.
local function policy_list(keys, args)
  return {redis.call('HGETALL', keys[1]), redis.call('HGETALL', keys[2])}
end

-- The directory's authentication (issue 18): the command line that writes
-- it keeps an index of every entry nodes trust, and seals the index:
--   macs    hash  entry -> tag: 'a:<address>:<method>' (the address's key of
--           that method), 'k:<id>' (a stored key), 'p:<name>' (a policy),
--           'r:<name>' (a preference); each tag a MAC over the entry's name
--           and content, made by the command line under the sealing key
--   dirmac  hash  version (the directory's version the index was sealed at),
--           tag (a MAC over that version and the whole index, sorted)
-- Redis cannot make or check a tag: nodes check them (crypto/keydir.c), and
-- answer 451 when a tag, the index or its version does not hold.

-- KEYS: version, macs, dirmac, keys, policy, prefer
-- Returns {version, the version sealed at or '', the index's tag or '',
--          entries stored (keys, policies and preferences), {entry, tag, ...}}.
local function key_directory(keys, args)
  local sealed = redis.call('HMGET', keys[3], 'version', 'tag')
  local stored = redis.call('SCARD', keys[4]) + redis.call('HLEN', keys[5])
                 + redis.call('HLEN', keys[6])
  return {redis.call('GET', keys[1]) or '0', sealed[1] or '', sealed[2] or '', stored,
          redis.call('HGETALL', keys[2])}
end

-- KEYS: version, macs, dirmac
-- ARGV: the version the caller read the directory at, the version to seal
--       it at (that one, or above it: `keys authenticate` moves it, so that
--       every node reads the index again), the index's tag, then entry,
--       tag, ... (the whole index)
-- Replaces the index and its seal when the directory is still at the
-- version read; else 'changed' with nothing written (the caller reads again).
local function key_seal(keys, args)
  local read, new = tonumber(args[1]), tonumber(args[2])
  if #args % 2 ~= 1 or not read or not new or new < read then return mismatch('key_seal') end
  if tonumber(redis.call('GET', keys[1]) or '0') ~= read then return 'changed' end
  redis.call('DEL', keys[2])
  for i = 4, #args, 2 do redis.call('HSET', keys[2], args[i], args[i + 1]) end
  if new ~= read then redis.call('SET', keys[1], args[2]) end
  redis.call('HSET', keys[3], 'version', args[2], 'tag', args[3])
  return 'ok'
end

-- The DKIM signing keys (queue/dkim.c), all under {sealpost:dkim}:
--   d:<domain>  hash per selector S: S:algorithm ('ed25519' or 'rsa'),
--               S:created (Unix time), S:record (the TXT record's text),
--               S:key (the private key as PEM, sealed by the command line
--               under the cluster key: never in clear here); and
--               active:<algorithm> -> the selector that signs with it
--   domains     set of every domain with a key
--   version     counter, raised by every change: workers reload when it moves
-- `sealpost dkim` writes it with dkim_put, dkim_delete and dkim_activate;
-- workers read it with dkim_version, dkim_domains and dkim_get.

-- Selectors one domain may hold per algorithm: the old and the new of a rotation.
local DKIM_PER_ALGORITHM = 2

local function dkim_algorithm_known(a)
  return a == 'ed25519' or a == 'rsa'
end

-- The selectors stored in hash d with their algorithms: {selector = algorithm}.
local function dkim_selectors(d)
  local out = {}
  local flat = redis.call('HGETALL', d)
  for i = 1, #flat, 2 do
    local selector = string.match(flat[i], '^(.+):algorithm$')
    if selector then out[selector] = flat[i + 1] end
  end
  return out
end

-- Whether a domain or a selector name is made of lower-case letters, digits,
-- dots and hyphens only, 1..253 of them. The command line checks the whole
-- syntax; this keeps out, whoever calls, a ':' (the hash's fields are
-- "<selector>:<field>", and a selector "a:key" would read as another's
-- field) and whatever would break a worker's log line or metric label.
local function dkim_name_ok(name)
  return #name >= 1 and #name <= 253 and string.find(name, '^[a-z0-9.-]+$') ~= nil
end

-- KEYS: d, domains, version
-- ARGV: domain, selector, algorithm, record, sealed key[, tag]
-- (the tag: seal_mac over the other five, made by the command line and kept
-- as S:tag; workers use no key whose tag does not hold, issue 18)
-- Stores a new selector; an error, with nothing written, when the domain or
-- the selector is not a name (dkim_name_ok). It becomes the active one of its algorithm when
-- the domain has none, else it waits, inactive, for dkim_activate. Returns
-- 'active' or 'inactive', or with nothing written 'exists' (the selector is
-- stored already) or 'full' (two of its algorithm are).
local function dkim_put(keys, args)
  if (#args ~= 5 and #args ~= 6) or not dkim_algorithm_known(args[3]) then
    return mismatch('dkim_put')
  end
  local selector, algorithm = args[2], args[3]
  if not dkim_name_ok(args[1]) then
    return redis.error_reply('ERR dkim_put: the domain is not lower-case letters, digits, ' ..
                             'dots and hyphens')
  end
  if not dkim_name_ok(selector) then
    return redis.error_reply('ERR dkim_put: the selector is not lower-case letters, digits, ' ..
                             'dots and hyphens')
  end
  local stored = dkim_selectors(keys[1])
  if stored[selector] then return 'exists' end
  local same = 0
  for _, a in pairs(stored) do
    if a == algorithm then same = same + 1 end
  end
  if same >= DKIM_PER_ALGORITHM then return 'full' end
  redis.call('HSET', keys[1], selector .. ':algorithm', algorithm,
             selector .. ':created', redis.call('TIME')[1], selector .. ':record', args[4],
             selector .. ':key', args[5])
  if args[6] then redis.call('HSET', keys[1], selector .. ':tag', args[6]) end
  local active = redis.call('HSETNX', keys[1], 'active:' .. algorithm, selector) == 1
  redis.call('SADD', keys[2], args[1])
  redis.call('INCR', keys[3])
  return active and 'active' or 'inactive'
end

-- KEYS: d, domains, version
-- ARGV: domain, selector
-- Deletes a selector; when it was the active one of its algorithm, the
-- algorithm has none until dkim_activate names one (a key the operator has
-- not published yet must not start signing by itself). The domain leaves
-- domains with its last selector. Returns 1 when it was there, 0 when not.
local function dkim_delete(keys, args)
  if #args ~= 2 then return mismatch('dkim_delete') end
  local selector = args[2]
  local algorithm = redis.call('HGET', keys[1], selector .. ':algorithm')
  if not algorithm then return 0 end
  redis.call('HDEL', keys[1], selector .. ':algorithm', selector .. ':created',
             selector .. ':record', selector .. ':key', selector .. ':tag')
  if redis.call('HGET', keys[1], 'active:' .. algorithm) == selector then
    redis.call('HDEL', keys[1], 'active:' .. algorithm)
  end
  if redis.call('EXISTS', keys[1]) == 0 then redis.call('SREM', keys[2], args[1]) end
  redis.call('INCR', keys[3])
  return 1
end

-- KEYS: d, version
-- ARGV: selector
-- Makes a stored selector the active one of its algorithm (the other one
-- of that algorithm stays stored, inactive). Returns 1, or 0 when there is
-- no such selector; the version moves only when the active one changed.
local function dkim_activate(keys, args)
  if #args ~= 1 then return mismatch('dkim_activate') end
  local algorithm = redis.call('HGET', keys[1], args[1] .. ':algorithm')
  if not algorithm then return 0 end
  if redis.call('HGET', keys[1], 'active:' .. algorithm) ~= args[1] then
    redis.call('HSET', keys[1], 'active:' .. algorithm, args[1])
    redis.call('INCR', keys[2])
  end
  return 1
end

-- KEYS: domains
-- Returns every domain with a key, unsorted.
local function dkim_domains(keys, args)
  return redis.call('SMEMBERS', keys[1])
end

-- KEYS: d, version
-- ARGV: selector, sealed key as the caller read it, tag
-- Stores the selector's tag (`sealpost dkim authenticate`) when its sealed
-- key is still the one read, and moves the version so workers reload; 1, or
-- 0 with nothing written.
local function dkim_tag(keys, args)
  if #args ~= 3 then return mismatch('dkim_tag') end
  if redis.call('HGET', keys[1], args[1] .. ':key') ~= args[2] then return 0 end
  redis.call('HSET', keys[1], args[1] .. ':tag', args[3])
  redis.call('INCR', keys[2])
  return 1
end

-- KEYS: d
-- Returns {selector, algorithm, created, 1 when active else 0, record,
--          sealed key, tag or '', ...}, seven per selector, unsorted; {} for
-- a domain without keys.
local function dkim_get(keys, args)
  local out = {}
  for selector, algorithm in pairs(dkim_selectors(keys[1])) do
    local f = redis.call('HMGET', keys[1], selector .. ':created', selector .. ':record',
                         selector .. ':key', 'active:' .. algorithm, selector .. ':tag')
    out[#out + 1] = selector
    out[#out + 1] = algorithm
    out[#out + 1] = f[1] or '0'
    out[#out + 1] = f[4] == selector and 1 or 0
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3] or ''
    out[#out + 1] = f[5] or ''
  end
  return out
end

-- KEYS: version
local function dkim_version(keys, args)
  return redis.call('GET', keys[1]) or '0'
end

redis.register_function('enqueue', enqueue)
-- allow-oom: a Redis at maxmemory refuses every other write, and withdraw
-- frees memory (or, before its enqueue, writes a tombstone that keeps out
-- one far larger).
redis.register_function{function_name = 'withdraw', callback = withdraw, flags = {'allow-oom'}}
redis.register_function('claim', claim)
redis.register_function{function_name = 'fetch', callback = fetch, flags = {'no-writes'}}
redis.register_function('extend', extend)
redis.register_function{function_name = 'stats', callback = stats, flags = {'no-writes'}}
redis.register_function('forget', forget)
redis.register_function('complete', complete)
redis.register_function('job_tampered', job_tampered)
redis.register_function('job_op', job_op)
redis.register_function{function_name = 'top', callback = top, flags = {'no-writes'}}
redis.register_function{function_name = 'recent', callback = recent, flags = {'no-writes'}}
redis.register_function('auth_begin', auth_begin)
redis.register_function('auth_uncount', auth_uncount)
redis.register_function('user_set', user_set)
redis.register_function('user_delete', user_delete)
redis.register_function{function_name = 'user_list', callback = user_list, flags = {'no-writes'}}
redis.register_function('user_tag', user_tag)
redis.register_function{function_name = 'user_records', callback = user_records,
                        flags = {'no-writes'}}
redis.register_function('seal_check', seal_check)
redis.register_function{function_name = 'key_lookup', callback = key_lookup,
                        flags = {'no-writes'}}
redis.register_function('disc_put', disc_put)
redis.register_function('disc_miss', disc_miss)
redis.register_function('disc_domain_miss', disc_domain_miss)
redis.register_function('disc_delete', disc_delete)
redis.register_function('disc_due', disc_due)
redis.register_function{function_name = 'disc_addresses', callback = disc_addresses,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'disc_get', callback = disc_get, flags = {'no-writes'}}
redis.register_function{function_name = 'key_version', callback = key_version,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'key_get', callback = key_get, flags = {'no-writes'}}
redis.register_function{function_name = 'key_fprs', callback = key_fprs, flags = {'no-writes'}}
redis.register_function('key_put', key_put)
redis.register_function('key_index', key_index)
redis.register_function{function_name = 'key_summary', callback = key_summary,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'key_addresses', callback = key_addresses,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'copy_shares', callback = copy_shares,
                        flags = {'no-writes'}}
redis.register_function('key_delete', key_delete)
redis.register_function('policy_set', policy_set)
redis.register_function('prefer_set', prefer_set)
redis.register_function{function_name = 'policy_list', callback = policy_list,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'key_directory', callback = key_directory,
                        flags = {'no-writes'}}
redis.register_function('key_seal', key_seal)
redis.register_function('dkim_put', dkim_put)
redis.register_function('dkim_delete', dkim_delete)
redis.register_function('dkim_activate', dkim_activate)
redis.register_function('dkim_tag', dkim_tag)
redis.register_function{function_name = 'dkim_domains', callback = dkim_domains,
                        flags = {'no-writes'}}
redis.register_function{function_name = 'dkim_get', callback = dkim_get, flags = {'no-writes'}}
redis.register_function{function_name = 'dkim_version', callback = dkim_version,
                        flags = {'no-writes'}}
