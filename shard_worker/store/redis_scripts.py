"""Server-side scripts of the Valkey/Redis room store (Lua, run atomically).

Every write of a shard is one call of ``APPLY`` per room, made conditional on
the shard still holding the room's lease: a deposed owner (paused, cut off by
a partition, or just slow) finds another owner or another fencing token in
the lease and its whole batch for that room is refused, never half-applied.

Key layout of one room (``P`` = ``<prefix>r:{<room id>}:``, one hash tag so a
room's keys stay together on a Redis Cluster slot)::

    P lease     hash   owner, node, epoch, shard ("slot.incarnation"), token   (PX = lease TTL)
    P fence     string fencing counter, +1 on every takeover, never reset
    P meta      hash   next_client_no, write_seq, assign_ctr, member_ctr
    P devices   hash   device id -> client number
    P devorder  zset   device id, score = assignment order
    P globals   hash   name -> packed (writer, seq, value)
    P cvdev     set    devices that have client variables
    P cv:<dev>  hash   name -> packed (writer, seq, value)
    P objects   hash   object id -> owner
    P objposes  hash   object id -> packed (seq, 13 pose bytes)
    P members   hash   device id -> packed (flags, node, epoch, identity)
    P memorder  zset   device id, score = member creation order
    <prefix>rooms  set of room ids with durable state

``cv:<dev>`` keys are derived inside the script from the room prefix: fine on
a single Valkey/Redis server, which is what the cluster shares.
"""

from __future__ import annotations

# KEYS: lease, fence. ARGV: owner, node, epoch, shard, ttl_ms.
# -> {1, token} granted | {0, pttl_ms, holder} busy.
# A holder with our node id is dead if it is of another node epoch (the node
# restarted: node ids are unique among live nodes) or of our own shard slot
# and incarnation, "k.i" (the supervisor restarts a crashed shard only after
# it is gone). A live older incarnation of the slot (a reload in progress)
# is waited for like any other holder.
ACQUIRE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'node', 'epoch', 'shard', 'token')
if cur[1] then
  if cur[1] == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    return {1, tonumber(cur[5])}
  end
  local dead = (cur[2] == ARGV[2]) and ((cur[3] ~= ARGV[3]) or (cur[4] == ARGV[4]))
  if not dead then
    return {0, redis.call('PTTL', KEYS[1]), cur[1]}
  end
end
local tok = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[2], 'epoch', ARGV[3],
           'shard', ARGV[4], 'token', tok)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, tok}
"""

# KEYS: lease_1, fence_1, .. lease_n, fence_n.
# ARGV: owner, node, epoch, shard, ttl_ms, token_1 .. token_n.
# -> indexes (1-based) of the rooms whose lease is lost. A lease that merely
# expired (nobody took over: the fence still shows our token) is taken back.
RENEW = """
local lost = {}
for i = 1, #KEYS / 2 do
  local lease, fence, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[5 + i]
  local holder = redis.call('HMGET', lease, 'owner', 'token')
  if holder[1] == ARGV[1] and holder[2] == token then
    redis.call('PEXPIRE', lease, ARGV[5])
  elseif not holder[1] and redis.call('GET', fence) == token then
    redis.call('HSET', lease, 'owner', ARGV[1], 'node', ARGV[2], 'epoch', ARGV[3],
               'shard', ARGV[4], 'token', token)
    redis.call('PEXPIRE', lease, ARGV[5])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS: lease. ARGV: owner. Deletes the lease only if it is ours.
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, fence, meta, devices, devorder, globals, cvdev, objects,
#       objposes, members, memorder, rooms.
# ARGV: owner, node, epoch, shard, token, ttl_ms, room_id, cv_prefix, then
#       the records, each an op letter followed by its fields:
#   D dev no next | X dev | G name blob seq | C dev name blob seq
#   c dev name all | O id owner | P id blob | M dev blob | m dev | R
# -> 1 applied, 0 refused (lease lost to another owner or token).
APPLY = """
local holder = redis.call('HMGET', KEYS[1], 'owner', 'token')
if holder[1] then
  if holder[1] ~= ARGV[1] or holder[2] ~= ARGV[5] then return 0 end
else
  -- Our lease expired while the store was out of reach. Nobody took the
  -- room over if the fencing counter still shows our token: take it back.
  if redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[2], 'epoch', ARGV[3],
             'shard', ARGV[4], 'token', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
local cvp = ARGV[8]
local function bump(seq)
  local cur = tonumber(redis.call('HGET', KEYS[3], 'write_seq') or '0')
  if tonumber(seq) > cur then redis.call('HSET', KEYS[3], 'write_seq', seq) end
end
local i = 9
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op ~= 'R' then redis.call('SADD', KEYS[12], ARGV[7]) end
  if op == 'D' then
    local dev, no = ARGV[i + 1], ARGV[i + 2]
    if redis.call('HGET', KEYS[4], dev) ~= no then
      redis.call('HSET', KEYS[4], dev, no)
      redis.call('ZADD', KEYS[5], redis.call('HINCRBY', KEYS[3], 'assign_ctr', 1), dev)
    end
    redis.call('HSET', KEYS[3], 'next_client_no', ARGV[i + 3])
    i = i + 4
  elseif op == 'X' then
    local dev = ARGV[i + 1]
    redis.call('HDEL', KEYS[4], dev)
    redis.call('ZREM', KEYS[5], dev)
    redis.call('DEL', cvp .. dev)
    redis.call('SREM', KEYS[7], dev)
    i = i + 2
  elseif op == 'G' then
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 2])
    bump(ARGV[i + 3])
    i = i + 4
  elseif op == 'C' then
    redis.call('HSET', cvp .. ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    redis.call('SADD', KEYS[7], ARGV[i + 1])
    bump(ARGV[i + 4])
    i = i + 5
  elseif op == 'c' then
    if ARGV[i + 3] == '1' then
      redis.call('DEL', cvp .. ARGV[i + 1])
      redis.call('SREM', KEYS[7], ARGV[i + 1])
    else
      redis.call('HDEL', cvp .. ARGV[i + 1], ARGV[i + 2])
      if redis.call('EXISTS', cvp .. ARGV[i + 1]) == 0 then
        redis.call('SREM', KEYS[7], ARGV[i + 1])
      end
    end
    i = i + 4
  elseif op == 'O' then
    redis.call('HSET', KEYS[8], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'P' then
    redis.call('HSET', KEYS[9], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'M' then
    if redis.call('HSET', KEYS[10], ARGV[i + 1], ARGV[i + 2]) == 1 then
      redis.call('ZADD', KEYS[11], redis.call('HINCRBY', KEYS[3], 'member_ctr', 1), ARGV[i + 1])
    end
    i = i + 3
  elseif op == 'm' then
    redis.call('HDEL', KEYS[10], ARGV[i + 1])
    redis.call('ZREM', KEYS[11], ARGV[i + 1])
    i = i + 2
  elseif op == 'R' then
    for _, dev in ipairs(redis.call('SMEMBERS', KEYS[7])) do
      redis.call('DEL', cvp .. dev)
    end
    redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9],
               KEYS[10], KEYS[11])
    redis.call('SREM', KEYS[12], ARGV[7])
    i = i + 1
  else
    return redis.error_reply('unknown record op ' .. tostring(op))
  end
end
return 1
"""
