"""The Lua scripts of the Redis L2: lookups, stores, unlocks, tag versions and bumps.

Each runs in one round trip, on keys that share a hash slot (so they run on
a Redis Cluster too).
"""

from __future__ import annotations

# Anything else under our keys (another Redis type, a damaged value) is read
# as missing and replaced: a key someone else wrote must cost a miss, never
# an error that takes L2 down or wedges its resource. READ is that GET: a
# WRONGTYPE reply reads as missing; any other error (an ACL refusal, say) is
# raised as it is.
_READ = """
local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    if string.find(value['err'] or '', 'WRONGTYPE', 1, true) then return false end
    return redis.call('GET', key)
  end
  return value
end
"""

# A lookup is one round trip: the resource's generation (created when
# missing), the entry if it was stored under that generation, and the
# stampede lock when there is none. A stored value is the generation
# (GENERATION_LENGTH characters, as long as a fresh one: ARGV[3]) followed by
# the entry.
LOOKUP = (
    _READ
    + """
local generation = read(KEYS[3])
if not generation or #generation ~= #ARGV[3] then
  generation = ARGV[3]
  redis.call('SET', KEYS[3], generation, 'PX', ARGV[4])
end
local value = read(KEYS[1])
if value and string.sub(value, 1, #generation) == generation then
  return {string.sub(value, #generation + 1), generation, 0}
end
if ARGV[2] == '0' then return {false, generation, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, generation, 1} end
return {false, generation, 0}
"""
)

# A store is one round trip too. With an expected generation it is
# conditional: only while the generation read before the view ran is current.
# It releases our lock either way.
PUT = (
    _READ
    + """
local generation = read(KEYS[2])
if generation and #generation ~= #ARGV[5] then generation = false end
local stored = 0
if ARGV[3] == '' and not generation then
  generation = ARGV[5]
  redis.call('SET', KEYS[2], generation, 'PX', ARGV[2])
end
if generation and (ARGV[3] == '' or generation == ARGV[3]) then
  redis.call('SET', KEYS[1], generation .. ARGV[1], 'PX', ARGV[2])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
  stored = 1
end
if ARGV[4] ~= '' and read(KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return stored
"""
)

UNLOCK = (
    _READ
    + """
if read(KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

# A tag counter starts (when missing) and restarts (when damaged) from the
# server's clock in microseconds: above whatever version it had before, so
# every process takes it for newer (they ignore older versions, which may be
# late messages). A counter recreated at 1 by INCR would be ignored everywhere.
_RESTART = """
-- TIME before a write: servers older than 5.0 need effects replication asked for.
if redis.replicate_commands then redis.replicate_commands() end
local function restart(key)
  local now = redis.call('TIME')
  local value = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', key, value)
  return value
end
"""

# The epoch and the tag counters, each created when missing (the epoch at a
# random token, counters from the clock), or replaced when damaged (an epoch
# of another length, a counter that is not an integer): the tag's entries
# are then stale, never wrong.
VERSIONS = (
    _READ
    + _RESTART
    + """
local out = {}
for index, key in ipairs(KEYS) do
  local value = read(key)
  if not value and index == 1 then
    value = ARGV[1]
    redis.call('SET', key, value)
  elseif not value then
    value = restart(key)
  elseif index == 1 and #value ~= #ARGV[1] then
    value = ARGV[1]
    redis.call('SET', key, value)
  elseif index > 1 and (not string.match(value, '^%d+$') or #value > 18) then
    value = restart(key)
  end
  out[index] = value
end
return out
"""
)

# A tag's invalidation: the counter moves to the server's clock, or one past
# it when it is already there (many in one microsecond). So a bump is above
# every version processes knew even after the counter was lost, damaged, or
# rolled back by a failover (they ignore older versions: late messages).
BUMP = (
    _READ
    + _RESTART
    + """
local current = read(KEYS[1])
local now = redis.call('TIME')
local clock = now[1] .. string.format('%06d', tonumber(now[2]))
if current and string.match(current, '^%d+$') and #current <= 18 and tonumber(current) >= tonumber(clock) then
  return redis.call('INCRBY', KEYS[1], 1)
end
redis.call('SET', KEYS[1], clock)
return tonumber(clock)
"""
)
