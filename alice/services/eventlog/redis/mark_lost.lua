-- The reaper's terminal entry: only on a running log, only as the next id (fencing: a
-- still-alive owner's next XADD of that id is then refused).
-- KEYS: events, meta, stop.  ARGV: id, event, data, MAXLEN cap, seq, retention ms.
local status = redis.call('HGET', KEYS[2], 'status')
if (not status) or status == 'finished' then return 0 end
local res = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], ARGV[1],
                        'e', ARGV[2], 'd', ARGV[3])
if type(res) == 'table' and res.err then return 0 end
redis.call('HSET', KEYS[2], 'status', 'finished', 'last_seq', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
