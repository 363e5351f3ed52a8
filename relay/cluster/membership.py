"""Node membership in the shared store: register, refresh, read the view.

Each node keeps ``<prefix>node:<id>`` (its registration, JSON) alive with a
short TTL and refreshes it every second; ``<prefix>nodes`` (a sorted set
scored by expiry time, store clock) lists them. One server-side script does a
whole refresh in one round trip: it drops expired nodes, refreshes ours, bumps
the shared generation counter when the set of nodes changed, and returns the
generation and every live registration. So all nodes name the same membership
with the same generation number, and clocks of the nodes never matter.

Node ids are unique among live nodes: a node whose id is held by another live
incarnation is refused (:class:`NodeIdConflict`) and must wait for that
registration to expire (a crashed node stops refreshing, so it does within
the TTL) or stop.
"""

from __future__ import annotations

import orjson
import redis

from relay.cluster.view import ClusterView, NodeInfo

__all__ = ["Membership", "NodeIdConflict", "node_number"]

# KEYS: nodes zset, generation counter.
# ARGV: node key prefix, node id, registration JSON, ttl ms, epoch, leaving.
# -> {-1, holder JSON} when a live node of another epoch holds our id,
#    else {generation, now_ms, registration JSON ...}.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed = false
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. id)
  changed = true
end
local mykey = ARGV[1] .. ARGV[2]
local held = redis.call('GET', mykey)
if held then
  local ok, holder = pcall(cjson.decode, held)
  if ok and tostring(holder['epoch']) ~= ARGV[5] then
    return {-1, held}
  end
end
-- A changed registration (a node scaled its shards) is a new view too.
if held and held ~= ARGV[3] and ARGV[6] ~= '1' then changed = true end
if ARGV[6] == '1' then
  redis.call('DEL', mykey)
  if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then changed = true end
else
  redis.call('SET', mykey, ARGV[3], 'PX', ARGV[4])
  if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2]) == 1 then changed = true end
end
if changed then redis.call('INCR', KEYS[2]) end
local gen = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = {gen, now}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
for _, id in ipairs(ids) do
  local reg = redis.call('GET', ARGV[1] .. id)
  if reg then out[#out + 1] = reg end
end
return out
"""


# KEYS: node number map, counter. ARGV: node id. -> the node id's number (1-based, stable).
_NUMBER = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then return tonumber(n) end
n = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], n)
return n
"""


def node_number(r: redis.Redis, node_id: str, prefix: str = "nsr:") -> int:
    """The small number that tags this node's client identities (stable per node id)."""
    number = int(r.eval(_NUMBER, 2, prefix + "nodenums", prefix + "nodenum:ctr", node_id))
    if not 0 < number < 65536:
        raise ValueError(f"node number {number} out of range: too many node ids in this cluster")
    return number


class NodeIdConflict(Exception):
    """Another live node incarnation holds this node id."""

    def __init__(self, node_id: str, holder: dict) -> None:
        super().__init__(
            f"node id {node_id!r} is held by a live node (epoch {holder.get('epoch')}, "
            f"endpoints {holder.get('endpoints')}); pick another --node-id or stop that node"
        )
        self.holder = holder


class Membership:
    """This node's registration; one call per refresh, one round trip each.

    Not thread-safe: one agent thread owns it.
    """

    def __init__(self, r: redis.Redis, info: NodeInfo, *, prefix: str = "nsr:", ttl: float = 3.0) -> None:
        self.r = r
        self.info = info
        self.prefix = prefix
        self.ttl_ms = max(100, int(ttl * 1000))
        self._refresh = r.register_script(_REFRESH)

    def refresh(self, *, leaving: bool = False) -> ClusterView:
        """Register (or deregister) and return the current view.

        Raises :class:`NodeIdConflict`, or redis errors when unreachable.
        """
        info = self.info
        reply = self._refresh(
            keys=[self.prefix + "nodes", self.prefix + "view:gen"],
            args=[self.prefix + "node:", info.node_id, orjson.dumps(info.to_dict()), self.ttl_ms,
                  str(info.epoch), "1" if leaving else "0"],
        )
        if int(reply[0]) == -1:
            raise NodeIdConflict(info.node_id, orjson.loads(reply[1]))
        nodes = tuple(sorted(NodeInfo.from_dict(orjson.loads(raw)) for raw in reply[2:]))
        return ClusterView(int(reply[0]), nodes)

    def leave(self) -> None:
        """Deregister at once (graceful stop): the others need not wait the TTL."""
        self.refresh(leaving=True)
