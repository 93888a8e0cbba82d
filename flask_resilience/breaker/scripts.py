"""The Lua scripts that decide shared circuits in Redis, each one atomic.

Every reply ends with the circuit's ``version`` (bumped on each change) and
``epoch`` (set when the state is first stored; empty while nothing is
stored). A Redis that restarts empty starts a new epoch, which tells every
process's mirror to trust the new versions although they are lower.
"""

_READ_STATE = """
local st = redis.call('HMGET', KEYS[1], 's', 'u', 'v', 'lf', 'e')
local state = st[1] or 'CLOSED'
local version = tonumber(st[3] or '0')
local epoch = st[5] or ''
"""

_CHANGE_STATE = """
local function change(new_state, until_ms)
  version = version + 1
  if epoch == '' then
    -- A state stored for the first time (or again after Redis lost it):
    -- mirrors holding versions from before compare epochs, not versions.
    local t = redis.call('TIME')
    epoch = t[1] .. '.' .. t[2]
  end
  redis.call('HSET', KEYS[1], 's', new_state, 'u', until_ms, 'v', version, 'n', 0, 'e', epoch)
  redis.call('DEL', KEYS[3])
  if new_state ~= 'OPEN' and new_state ~= 'HALF_OPEN' then
    redis.call('DEL', KEYS[2])
    redis.call('HDEL', KEYS[1], 'lf')
  end
  -- The last argument names the calling process, which mirrors the change from
  -- the reply and skips its own message (so it alone announces it as decided here).
  local message = {name = ARGV[2], s = new_state, u = until_ms, v = version, e = epoch, o = ARGV[#ARGV]}
  redis.call('PUBLISH', ARGV[1], cjson.encode(message))
  return {new_state, tostring(until_ms), version, epoch}
end
"""

# KEYS: state, window, permits. ARGV: channel, name, now, calls, failures,
# slow, failure_threshold, window_ms (0: none), slices, rate (-1: none),
# minimum_calls, slow_rate (-1: none), timeout_ms, hold_ms (-1: none), reset_timeout_ms
REPORT = (
    _READ_STATE
    + _CHANGE_STATE
    + """
if state ~= 'CLOSED' and state ~= 'METRICS_ONLY' then return {state, st[2] or '0', version, epoch} end
local now = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[8])
local slices = tonumber(ARGV[9])
local last_failure = tonumber(st[4] or '-1')
if last_failure >= 0 and now - last_failure >= tonumber(ARGV[15]) then redis.call('DEL', KEYS[2]) end
local slice = 0
if window_ms > 0 then slice = math.floor(now / (window_ms / slices)) end
local calls, failures, slow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if calls > 0 then redis.call('HINCRBY', KEYS[2], 'c' .. slice, calls) end
if failures > 0 then
  redis.call('HINCRBY', KEYS[2], 'f' .. slice, failures)
  redis.call('HSET', KEYS[1], 'lf', now)
end
if slow > 0 then redis.call('HINCRBY', KEYS[2], 's' .. slice, slow) end
local totals = {c = 0, f = 0, s = 0}
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local n = tonumber(string.sub(fields[i], 2))
  if window_ms > 0 and n <= slice - slices then
    redis.call('HDEL', KEYS[2], fields[i])
  else
    local kind = string.sub(fields[i], 1, 1)
    totals[kind] = totals[kind] + tonumber(fields[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], window_ms > 0 and window_ms or tonumber(ARGV[15]))
if state == 'METRICS_ONLY' then return {state, '0', version, epoch} end
local trip = totals.f >= tonumber(ARGV[7])
if not trip and totals.c >= tonumber(ARGV[11]) and totals.c > 0 then
  local rate, slow_rate = tonumber(ARGV[10]), tonumber(ARGV[12])
  trip = (rate >= 0 and 100 * totals.f / totals.c >= rate)
    or (slow_rate >= 0 and 100 * totals.s / totals.c >= slow_rate)
end
local hold = tonumber(ARGV[14])
if trip then return change('OPEN', now + math.max(tonumber(ARGV[13]), hold)) end
if hold >= 0 then return change('OPEN', now + hold) end
return {state, '0', version, epoch}
"""
)

# KEYS: state, window, permits. ARGV: channel, name, now, max_calls, lease_ms, token.
# Returns {admission (0 refused, 1 pass, 2 trial), state, until_ms, version, epoch}.
ACQUIRE = (
    _READ_STATE
    + _CHANGE_STATE
    + """
local now = tonumber(ARGV[3])
if state == 'FORCED_OPEN' then return {0, state, '0', version, epoch} end
if state == 'OPEN' then
  local until_ms = tonumber(st[2] or '0')
  if now < until_ms then return {0, state, st[2], version, epoch} end
  change('HALF_OPEN', 0)
  state = 'HALF_OPEN'
end
if state ~= 'HALF_OPEN' then return {1, state, '0', version, epoch} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {0, state, first[2], version, epoch}
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[6])
redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[5]))
return {2, state, '0', version, epoch}
"""
)

# KEYS: state, window, permits. ARGV: channel, name, now, token, outcome,
# success_threshold, timeout_ms, hold_ms (-1: none)
FINISH_TRIAL = (
    _READ_STATE
    + _CHANGE_STATE
    + """
local removed = redis.call('ZREM', KEYS[3], ARGV[4])
if removed == 0 or state ~= 'HALF_OPEN' or ARGV[5] == 'ignored' then
  return {state, st[2] or '0', version, epoch}
end
local now = tonumber(ARGV[3])
if ARGV[5] == 'failure' then return change('OPEN', now + math.max(tonumber(ARGV[7]), tonumber(ARGV[8]))) end
if redis.call('HINCRBY', KEYS[1], 'n', 1) < tonumber(ARGV[6]) then return {state, '0', version, epoch} end
return change('CLOSED', 0)
"""
)

# KEYS: state, window, permits. ARGV: channel, name, state, until_ms
SET_STATE = _READ_STATE + _CHANGE_STATE + "return change(ARGV[3], tonumber(ARGV[4]))\n"
