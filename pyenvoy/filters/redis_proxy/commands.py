"""
redis_proxy's command table: which commands it routes, and how.

The Envoy classes (simple, eval, sum-split, MGET/MSET, transactions, local)
follow Envoy's C{supported_commands.h}; the other classes (pub/sub,
blocking, per-client SELECT, fan-out) are pyenvoy's own.  Of Envoy's 2025
additions, KEYS, SCAN, FLUSHDB, FLUSHALL and SELECT are here each
pyenvoy's way, the others as Envoy has them (L{CLUSTER_SCOPE};
docs/redis_proxy.md).
"""

from __future__ import annotations

#: Commands routed by the hash of their first argument (the key).
SIMPLE = frozenset("""
append bf.add bf.card bf.exists bf.info bf.insert bf.loadchunk bf.madd bf.mexists
bf.reserve bf.scandump bitcount bitfield bitfield_ro bitpos decr decrby dump expire
expireat expiretime geoadd geodist geohash geopos georadius_ro georadiusbymember_ro
geosearch get getbit getdel getex getrange getset hdel hexists hget hgetall hincrby
hincrbyfloat hkeys hlen hmget hmset hrandfield hscan hset hsetnx hstrlen hvals incr
incrby incrbyfloat lindex linsert llen lmove lpop lpos lpush lpushx lrange lrem lset
ltrim persist pexpire pexpireat pexpiretime pfadd pfcount pfmerge psetex pttl publish
restore rpop rpoplpush rpush rpushx sadd scard sdiff sdiffstore set setbit setex setnx
setrange sinter sinterstore sismember smembers smismember smove sort sort_ro spop
srandmember srem sscan strlen substr sunion sunionstore ttl type xack xadd xautoclaim
xclaim xdel xlen xpending xrange xrevrange xtrim zadd zcard zcount zdiff zdiffstore
zincrby zinter zinterstore zlexcount zmscore zpopmax zpopmin zrandmember zrange
zrangebylex zrangebyscore zrangestore zrank zrem zremrangebylex zremrangebyrank
zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan zscore
zunion zunionstore copy rename renamenx msetnx bitop georadius georadiusbymember
geosearchstore hexpire hexpireat hexpiretime hpersist hpexpire hpexpireat hpexpiretime hpttl
httl
""".split())

#: Commands hashed on a later argument than the first, by its index:
#: EVAL's first key (the fourth argument), OBJECT's key (the third).
KEY_INDEX = {"eval": 3, "evalsha": 3, "eval_ro": 3, "evalsha_ro": 3, "object": 2}
EVAL = frozenset(KEY_INDEX)

#: One command per key, integer replies summed.
SUM_SPLIT = frozenset(("del", "exists", "touch", "unlink"))

#: Transaction commands; the whole transaction runs on the first key's server.
TRANSACTION = frozenset(("multi", "exec", "discard", "watch", "unwatch"))

#: Answered by the proxy itself.
LOCAL = frozenset(("auth", "ping", "echo", "time", "quit", "hello", "client"))

#: pyenvoy only: blocking single-key commands, each on a dedicated connection.
BLOCKING = frozenset(("blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax"))

#: pyenvoy only: pub/sub subscriptions on dedicated connections.
SUBSCRIBE = frozenset(("subscribe", "psubscribe", "unsubscribe", "punsubscribe"))

#: pyenvoy's fan-out (Envoy's KEYS/SCAN/FLUSH* of 2025 differ): sent to
#: every shard (SCAN: one shard at a time), replies merged.
FAN_OUT = frozenset(("keys", "scan", "dbsize", "flushdb", "flushall"))

#: Envoy's cluster-scope commands (see L{cluster_scope}).
CLUSTER_SCOPE = frozenset(("script", "slowlog", "config", "info", "info.shard", "cluster",
                           "randomkey", "role"))
#: Fan-out and cluster-scope commands valid without an argument; Envoy
#: answers the others C{invalid request} (SCAN checks its own arguments).
WITHOUT_ARGUMENTS = frozenset(("info", "randomkey", "role", "dbsize", "flushdb", "flushall",
                               "scan"))

#: pyenvoy's per-client database selection (Envoy's SELECT of 2025 only
#: answers +OK).
SELECT = "select"

#: Commands that change data (Envoy's write list), for mirroring with
#: C{exclude_read_commands}.
WRITE = frozenset("""
append bitfield decr decrby del discard exec expire expireat eval evalsha geoadd getdel
hdel hincrby hincrbyfloat hmset hset hsetnx incr incrby incrbyfloat linsert lmove lpop
lpush lpushx lrem lset ltrim mset multi persist pexpire pexpireat pfadd psetex restore
rpop rpush rpushx sadd set setbit setex setnx setrange spop srem zadd zincrby touch
zpopmin zpopmax zrem zremrangebylex zremrangebyrank zremrangebyscore unlink
""".split())

#: Every command with per-command stats (Envoy creates them all up front).
WITH_STATS = (SIMPLE | EVAL | SUM_SPLIT | TRANSACTION | BLOCKING | SUBSCRIBE | FAN_OUT
              | CLUSTER_SCOPE | {"mget", "mset", SELECT, "hello"})

#: Every command the proxy knows; anything else is "unknown command".
KNOWN = WITH_STATS | LOCAL
