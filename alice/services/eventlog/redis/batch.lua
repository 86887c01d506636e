-- The writer's batch: one script call per batch (<= 256 entries), the records in queue order.
-- ARGV[1] running TTL ms, ARGV[2] retention ms, ARGV[3] MAXLEN cap, then records:
--   'x' (or 'r': a retry), id, event, data   KEYS: events
--       XADD with the explicit id 0-<seq>; a refusal (the id is taken: another writer) fences
--       the key for the rest of the batch; a retry's refusal means it was written already.
--   'f', id, seq                              KEYS: events, meta, stop
--       the owner's end: only if its terminal entry is the stream's top and nobody finished the
--       log first (after the reaper's mark_lost the zombie owner's end changes nothing).
--   'm', n, field, value, ...                 KEYS: meta    (create, retried)
-- Returns {record number, error, ...} for the refused records.
local ttl, ret, cap = ARGV[1], ARGV[2], ARGV[3]
local k, a, rec = 1, 4, 0
local out, fenced = {}, {}
while a <= #ARGV do
  rec = rec + 1
  local kind = ARGV[a]
  if kind == 'x' or kind == 'r' then
    local key = KEYS[k]
    if not fenced[key] then
      local r = redis.pcall('XADD', key, 'MAXLEN', '~', cap, ARGV[a+1],
                            'e', ARGV[a+2], 'd', ARGV[a+3])
      if type(r) == 'table' and r.err then
        if kind == 'x' then
          fenced[key] = true
          out[#out+1] = rec
          out[#out+1] = r.err
        end
      elseif ARGV[a+1] == '0-1' then
        redis.call('PEXPIRE', key, ttl)
      end
    end
    k = k + 1
    a = a + 4
  elseif kind == 'f' then
    local events, meta, stop = KEYS[k], KEYS[k+1], KEYS[k+2]
    if not fenced[events] then
      local top = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
      if #top > 0 and top[1][1] == ARGV[a+1]
         and redis.call('HGET', meta, 'status') ~= 'finished' then
        redis.call('HSET', meta, 'status', 'finished', 'last_seq', ARGV[a+2])
        redis.call('PEXPIRE', events, ret)
        redis.call('PEXPIRE', meta, ret)
        redis.call('PEXPIRE', stop, ret)
      end
    end
    k = k + 3
    a = a + 3
  elseif kind == 'm' then
    local n = tonumber(ARGV[a+1])
    redis.call('HSET', KEYS[k], unpack(ARGV, a+2, a+1+2*n))
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
    a = a + 2 + 2*n
  else
    return redis.error_reply('bad record ' .. tostring(kind))
  end
end
return out
