"""
Integration tests for redis_proxy: real redis-servers, the proxy in this
process, and real clients (redis-py in a thread, txredisapi on the
reactor, redis-cli and redis-benchmark as processes) over loopback.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pyenvoy.config import load

from tests.support.net import listen, listenerPort, startServer, stat
from tests.support.redis import (
    PROTOCOL_OPTIONS, inThread, redisCli, redisProxyConfig, shardCluster, startRedisServers)


def _client(port: int, **kwargs: Any) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2, **kwargs)


def _rawExchange(port: int, data: bytes, expectClose: bool = False, wait: float = 5.0) -> bytes:
    """
    Send raw bytes, read until the peer closes or C{wait} passes without data.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        end = time.monotonic() + wait
        s.settimeout(0.5 if not expectClose else wait)
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if not expectClose:
                    break
                continue
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


class ShardingTests(TestCase):
    """
    Keys spread over real shards; split commands; ordering.
    """

    timeout = 120

    async def setUp(self) -> None:
        self.shards = await startRedisServers(self, 3)
        self.server = startServer(self, redisProxyConfig([s.port for s in self.shards]))
        self.port = listenerPort(self.server)

    async def test_keysSpreadOverEveryShard(self) -> None:
        """
        300 keys set through the proxy land on all three shards, each on
        exactly one, and read back through the proxy.
        """
        keys = [f"user:{i}".encode() for i in range(300)]

        def run() -> list[Any]:
            client = _client(self.port)
            for key in keys:
                client.set(key, key + b"!")
            return [client.get(key) for key in keys]

        values = await inThread(run)
        self.assertEqual(values, [k + b"!" for k in keys])
        held = [await inThread(s.keys) for s in self.shards]
        for shardKeys in held:
            self.assertGreater(len(shardKeys), 30)
        self.assertEqual(sum(len(h) for h in held), 300)
        self.assertEqual(set().union(*held), set(keys))
        self.assertEqual(stat(self.server, "redis.test.command.set.total"), 300)
        self.assertEqual(stat(self.server, "redis.test.command.get.success"), 300)
        # redis-py also sends CLIENT SETINFO twice per connection, which
        # the proxy acknowledges as Envoy does.
        self.assertEqual(stat(self.server, "redis.test.downstream_rq_total"), 602)
        self.assertEqual(stat(self.server, "redis.test.splitter.unsupported_command"), 0)
        self.assertEqual(stat(self.server, "redis.test.downstream_rq_active"), 0)

    async def test_crossShardMultiKey(self) -> None:
        """
        MSET/MGET/DEL/EXISTS over keys on different shards are split and
        reassembled as Envoy does.
        """
        mapping = {f"k{i}": f"v{i}" for i in range(40)}

        ok = await inThread(lambda: _client(self.port).mset(mapping))
        held = [await inThread(s.keys) for s in self.shards]
        self.assertTrue(all(h for h in held), "MSET did not reach every shard")
        self.assertEqual(set().union(*held), {k.encode() for k in mapping})

        def run() -> tuple[Any, ...]:
            client = _client(self.port)
            values = client.mget(list(mapping) + ["missing"])
            exists = client.exists(*mapping, "missing")
            deleted = client.delete(*list(mapping)[:25], "missing")
            left = client.exists(*mapping)
            return values, exists, deleted, left

        values, exists, deleted, left = await inThread(run)
        self.assertTrue(ok)
        self.assertEqual(values, [v.encode() for v in mapping.values()] + [None])
        self.assertEqual((exists, deleted, left), (40, 25, 15))
        self.assertEqual(stat(self.server, "redis.test.command.mget.success"), 1)
        self.assertEqual(stat(self.server, "redis.test.command.mset.total"), 1)

    async def test_pipelineKeepsOrder(self) -> None:
        """
        A pipeline of 600 commands over every shard, with local commands
        mixed in, gets its replies in request order.
        """
        def run() -> list[Any]:
            client = _client(self.port)
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.set(f"p{i}", i)
                pipe.incr(f"p{i}")
                pipe.ping()
                pipe.get(f"p{i}")
                pipe.echo(f"e{i}")
                pipe.mget(f"p{i}", f"p{(i + 1) % 100}")
            return pipe.execute()

        results = await inThread(run)
        self.assertEqual(len(results), 600)
        for i in range(100):
            row = results[i * 6:(i + 1) * 6]
            self.assertEqual(row[:5], [True, i + 1, True, str(i + 1).encode(), f"e{i}".encode()])
            self.assertEqual(row[5][0], str(i + 1).encode())

    async def test_envoyErrors(self) -> None:
        """
        Envoy's exact replies: unknown command, invalid request, wrong
        number of arguments, and the local PING/ECHO/TIME.
        """
        reply = await inThread(
            _rawExchange, self.port,
            b"FOO bar\r\n*1\r\n$3\r\nGET\r\n*2\r\n$4\r\nMSET\r\n$1\r\na\r\n"
            b"PING\r\nECHO hi\r\nECHO\r\n*2\r\n$3\r\nGET\r\n:1\r\n"
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n:1\r\n")
        self.assertEqual(
            reply,
            b"-ERR unknown command 'FOO', with args beginning with: bar\r\n"
            b"-invalid request\r\n"
            b"-wrong number of arguments for 'MSET' command\r\n"
            b"+PONG\r\n$2\r\nhi\r\n-invalid request\r\n-invalid request\r\n"
            b"-invalid request\r\n")
        self.assertEqual(stat(self.server, "redis.test.splitter.unsupported_command"), 1)
        self.assertEqual(stat(self.server, "redis.test.splitter.invalid_request"), 4)
        self.assertEqual(stat(self.server, "redis.test.command.set.total"), 0)
        self.assertEqual(stat(self.server, "redis.test.command.mset.error"), 1)
        seconds, micros = await inThread(lambda: _client(self.port).time())
        self.assertLess(abs(seconds - time.time()), 5)

    async def test_protocolErrorClosesOnlyThatClient(self) -> None:
        """
        Bytes that are not RESP close that client (after Envoy's reply)
        and count downstream_cx_protocol_error; other clients go on.
        """
        reply = await inThread(_rawExchange, self.port, b"*x\r\n", True)
        self.assertEqual(reply, b"-downstream protocol error\r\n")
        self.assertEqual(stat(self.server, "redis.test.downstream_cx_protocol_error"), 1)
        self.assertTrue(await inThread(lambda: _client(self.port).set("still", "up")))

    async def test_quit(self) -> None:
        """
        QUIT answers +OK after the replies before it, then closes.
        """
        reply = await inThread(_rawExchange, self.port,
                               b"SET q 1\r\nGET q\r\nQUIT\r\nGET q\r\n", True)
        self.assertEqual(reply, b"+OK\r\n$1\r\n1\r\n+OK\r\n")

    async def test_drainClosesAfterNextReply(self) -> None:
        """
        When the server drains, an idle client stays open until its next
        command is answered, then is closed and counted in
        downstream_cx_drain_close, as Envoy does; one that sends nothing
        is still open when the drain time ends, and stopping the server
        (what follows the drain) cuts it.
        """
        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(b"PING\r\n")
            self.assertEqual(s.recv(100), b"+PONG\r\n")
            return s

        def isOpen(s: socket.socket) -> bool:
            s.settimeout(0.3)
            try:
                return s.recv(100) != b""
            except socket.timeout:
                return True
            except ConnectionError:
                return False

        def exchange(s: socket.socket, data: bytes) -> bytes:
            s.settimeout(5)
            s.sendall(data)
            chunks = []
            while True:
                chunk = s.recv(100)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

        client = await inThread(connect)
        self.addCleanup(client.close)
        silent = await inThread(connect)
        self.addCleanup(silent.close)
        drained = self.server.drain()
        self.assertTrue(await inThread(isOpen, client))
        self.assertEqual(await inThread(exchange, client, b"GET d\r\n"), b"$-1\r\n")
        self.assertEqual(stat(self.server, "redis.test.downstream_cx_drain_close"), 1)
        await drained
        self.assertTrue(await inThread(isOpen, silent))
        await self.server.stopService()
        self.assertFalse(await inThread(isOpen, silent))
        self.assertEqual(stat(self.server, "redis.test.downstream_cx_drain_close"), 1)

    async def test_txredisapi(self) -> None:
        """
        txredisapi (a Twisted client) sets and reads keys on every shard.
        """
        import txredisapi

        connection = await txredisapi.Connection("127.0.0.1", self.port, reconnect=False,
                                                 convertNumbers=False)
        try:
            for i in range(30):
                await connection.set(f"tx{i}", str(i))
            values = await connection.mget([f"tx{i}" for i in range(30)])
        finally:
            await connection.disconnect()
        self.assertEqual(values, [str(i) for i in range(30)])

    async def test_redisCliAndBenchmark(self) -> None:
        """
        redis-cli works through the proxy, and redis-benchmark runs clean
        (every request answered, no error reply).
        """
        out, code = await redisCli(self, self.port, "SET", "cli", "value")
        self.assertEqual((out.strip(), code), (b"OK", 0))
        out, code = await redisCli(self, self.port, "GET", "cli")
        self.assertEqual(out.strip(), b"value")
        out, err, code = await getProcessOutputAndValue(
            "redis-benchmark", ["-h", "127.0.0.1", "-p", str(self.port), "-t", "set,get,mset",
                                "-n", "2000", "-c", "10", "-P", "4", "-r", "1000", "--csv"],
            env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(code, 0, err)
        rows = [line.split(b",")[0] for line in out.splitlines()[1:]]
        self.assertEqual(rows, [b'"SET"', b'"GET"', b'"MSET (10 keys)"'])
        self.assertEqual(stat(self.server, "redis.test.command.set.error"), 0)
        self.assertGreaterEqual(stat(self.server, "redis.test.command.get.success"), 2000)


class ExtensionTests(TestCase):
    """
    What pyenvoy adds to Envoy's redis_proxy: pub/sub, blocking commands,
    per-client SELECT, fan-out commands.
    """

    timeout = 120

    async def setUp(self) -> None:
        self.shards = await startRedisServers(self, 3)
        self.server = startServer(self, redisProxyConfig([s.port for s in self.shards]))
        self.port = listenerPort(self.server)

    async def test_pubsub(self) -> None:
        """
        A client subscribed to channels on every shard and to a pattern
        gets each message PUBLISHed through the proxy, with Redis's counts.
        """
        channels = [f"news.{i}" for i in range(6)]

        # The client object must outlive the test: redis-py closes its
        # connections (the pub/sub one too) when it is collected.
        self.subscriber = client = _client(self.port)

        def subscribe() -> tuple[Any, list[Any]]:
            pubsub = client.pubsub()
            pubsub.subscribe(*channels)
            pubsub.psubscribe("news.*")
            confirmations = []
            end = time.monotonic() + 10
            while len(confirmations) < 7 and time.monotonic() < end:
                message = pubsub.get_message(timeout=1)
                if message is not None:
                    confirmations.append(message)
            return pubsub, confirmations

        pubsub, confirmations = await inThread(subscribe)
        self.assertEqual(sorted(m["data"] for m in confirmations), list(range(1, 8)))

        def publish() -> list[int]:
            client = _client(self.port)
            return [client.publish(c, f"hello {c}") for c in channels]

        receivers = await inThread(publish)
        self.assertEqual(receivers, [2] * 6)

        def receive() -> list[Any]:
            got = []
            end = time.monotonic() + 10
            while len(got) < 12 and time.monotonic() < end:
                message = pubsub.get_message(timeout=1)
                if message is not None:
                    got.append(message)
            pubsub.close()
            return got

        got = await inThread(receive)
        direct = sorted((m["channel"], m["data"]) for m in got if m["type"] == "message")
        viaPattern = sorted((m["channel"], m["data"]) for m in got if m["type"] == "pmessage")
        expected = sorted((c.encode(), f"hello {c}".encode()) for c in channels)
        self.assertEqual(direct, expected)
        self.assertEqual(viaPattern, expected)

    async def test_blockingCommandHoldsNobody(self) -> None:
        """
        BLPOP waits on its own connection: other clients' commands to the
        same shard are answered meanwhile, and the pushed value arrives.
        """
        def blpop() -> Any:
            return _client(self.port).blpop("queue", timeout=10)

        waiting = inThread(blpop)
        await deferLater(reactor, 0.3, lambda: None)
        started = time.monotonic()
        for i in range(20):
            self.assertTrue(await inThread(lambda: _client(self.port).set("queue-side", i)))
        self.assertLess(time.monotonic() - started, 5)
        self.assertFalse(waiting.called)
        await inThread(lambda: _client(self.port).rpush("queue", "job"))
        self.assertEqual(await waiting, (b"queue", b"job"))

    async def test_selectIsPerClient(self) -> None:
        """
        A client's SELECT does not leak to other clients sharing the
        upstream connections.
        """
        def run() -> tuple[Any, ...]:
            other = _client(self.port)
            selected = _client(self.port, db=3)
            selected.set("shared-name", "in db 3")
            other.set("shared-name", "in db 0")
            return selected.get("shared-name"), other.get("shared-name")

        inDb3, inDb0 = await inThread(run)
        self.assertEqual((inDb3, inDb0), (b"in db 3", b"in db 0"))
        found = [await inThread(lambda s=s: s.client(db=3).get("shared-name"))
                 for s in self.shards]
        self.assertEqual([v for v in found if v is not None], [b"in db 3"])

    async def test_fanOut(self) -> None:
        """
        KEYS, SCAN (full iteration), DBSIZE and FLUSHDB cover every shard.
        """
        names = {f"f{i}".encode() for i in range(120)}

        def run() -> tuple[Any, ...]:
            client = _client(self.port)
            for name in names:
                client.set(name, 1)
            keys = set(client.keys("f*"))
            scanned = set(client.scan_iter(count=7))
            size = client.dbsize()
            client.flushdb()
            return keys, scanned, size, client.dbsize()

        keys, scanned, size, after = await inThread(run)
        self.assertEqual(keys, names)
        self.assertEqual(scanned, names)
        self.assertEqual((size, after), (120, 0))

    async def test_transaction(self) -> None:
        """
        MULTI/EXEC runs on the first key's shard; a command pipelined
        after EXEC sees its result.
        """
        def run() -> tuple[Any, ...]:
            client = _client(self.port)
            pipe = client.pipeline(transaction=True)
            pipe.set("{acct}:a", 10)
            pipe.incrby("{acct}:a", 5)
            pipe.set("{acct}:b", 1)
            result = pipe.execute()
            return result, client.get("{acct}:a")

        result, value = await inThread(run)
        self.assertEqual((result, value), ([True, 15, True], b"15"))
        self.assertEqual(stat(self.server, "redis.test.command.exec.total"), 1)


#: Every C{cluster.<name>.*} stat Envoy 1.40 shows for this setup (a static
#: RING_HASH cluster of redis-servers behind redis_proxy), recorded from its
#: C{/stats}; health-check, circuit-breaker and ring stats are tested
#: elsewhere.
ENVOY_CLUSTER_STATS = """
    default.total_match_count
    assignment_stale assignment_timeout_received assignment_use_cached bind_errors
    lb_healthy_panic lb_local_cluster_not_ok lb_recalculate_zone_structures
    lb_subsets_active lb_subsets_created lb_subsets_fallback lb_subsets_fallback_panic
    lb_subsets_removed lb_subsets_selected lb_zone_cluster_too_small
    lb_zone_no_capacity_left lb_zone_routing_all_directly lb_zone_routing_cross_zone
    lb_zone_routing_sampled max_host_weight membership_change membership_degraded
    membership_excluded membership_healthy membership_total original_dst_host_invalid
    redis_cluster.connection_rate_limited
    redis_cluster.max_upstream_unknown_connections_reached
    redis_cluster.upstream_commands.upstream_rq_time redis_cluster.upstream_cx_drained
    redis_cluster.upstream_resp3_hello_failure retry_or_shadow_abandoned update_attempt
    update_empty update_failure update_no_rebuild update_success upstream_cx_active
    upstream_cx_close_notify upstream_cx_connect_attempts_exceeded
    upstream_cx_connect_fail upstream_cx_connect_ms upstream_cx_connect_timeout
    upstream_cx_connect_with_0_rtt upstream_cx_destroy upstream_cx_destroy_local
    upstream_cx_destroy_local_with_active_rq upstream_cx_destroy_remote
    upstream_cx_destroy_remote_with_active_rq upstream_cx_destroy_with_active_rq
    upstream_cx_http1_total upstream_cx_http2_total upstream_cx_http3_total
    upstream_cx_idle_timeout upstream_cx_length_ms upstream_cx_max_duration_reached
    upstream_cx_max_requests upstream_cx_none_healthy upstream_cx_overflow
    upstream_cx_pool_overflow upstream_cx_preconnect_skipped upstream_cx_protocol_error
    upstream_cx_rx_bytes_buffered upstream_cx_rx_bytes_total upstream_cx_total
    upstream_cx_tx_bytes_buffered upstream_cx_tx_bytes_total
    upstream_flow_control_backed_up_total upstream_flow_control_drained_total
    upstream_flow_control_paused_reading_total
    upstream_flow_control_resumed_reading_total upstream_http3_broken
    upstream_internal_redirect_failed_total upstream_internal_redirect_succeeded_total
    upstream_queue_overloaded upstream_rq_0rtt upstream_rq_active
    upstream_rq_active_overflow upstream_rq_cancelled upstream_rq_completed
    upstream_rq_maintenance_mode upstream_rq_max_duration_reached
    upstream_rq_pending_active upstream_rq_pending_failure_eject
    upstream_rq_pending_overflow upstream_rq_pending_total
    upstream_rq_per_cx upstream_rq_per_try_idle_timeout upstream_rq_per_try_timeout
    upstream_rq_retry
    upstream_rq_retry_backoff_exponential upstream_rq_retry_backoff_ratelimited
    upstream_rq_retry_limit_exceeded upstream_rq_retry_overflow
    upstream_rq_retry_success upstream_rq_rx_reset upstream_rq_rx_reset_no_error
    upstream_rq_timeout upstream_rq_total upstream_rq_tx_reset version warming_state
""".split()


class ClusterScopeTests(TestCase):
    """
    Envoy's cluster-scope commands over three real shards: sent to every
    shard and combined (SCRIPT, CONFIG, SLOWLOG, INFO, ROLE), or to one
    (CLUSTER, RANDOMKEY, INFO.SHARD), with Envoy's errors.
    """

    timeout = 120

    async def setUp(self) -> None:
        self.shards = await startRedisServers(self, 3)
        self.server = startServer(self, redisProxyConfig([s.port for s in self.shards]))
        self.port = listenerPort(self.server)

    def _raw(self, *commands: list[bytes]) -> bytes:
        data = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a)
                                                         for a in c) for c in commands)
        return _rawExchange(self.port, data, wait=3.0)

    async def test_everyShard(self) -> None:
        """
        SCRIPT LOAD reaches every shard; CONFIG SET too, and CONFIG GET
        returns every shard's pair; SLOWLOG LEN sums; ROLE has one entry
        per shard.
        """
        def run() -> tuple[Any, ...]:
            client = _client(self.port)
            sha = client.execute_command("SCRIPT", "LOAD", "return 7")
            exists = client.execute_command("SCRIPT", "EXISTS", sha)
            client.execute_command("CONFIG", "SET", "maxmemory", "12345678")
            got = client.execute_command("CONFIG", "GET", "maxmemory")
            client.execute_command("CONFIG", "SET", "slowlog-log-slower-than", "100000000")
            reset = client.execute_command("SLOWLOG", "RESET")
            role = client.execute_command("ROLE")
            return sha, exists, got, reset, role

        sha, exists, got, reset, role = await inThread(run)
        self.assertEqual(exists, [1])
        self.assertEqual(got, [b"maxmemory", b"12345678"] * 3)
        self.assertEqual(reset, b"OK")
        self.assertEqual([r[0] for r in role], [b"master"] * 3)
        for shard in self.shards:
            direct = shard.client()
            self.assertEqual(await inThread(lambda: direct.script_exists(sha)), [True])
            self.assertEqual(await inThread(lambda: direct.config_get("maxmemory")),
                             {"maxmemory": "12345678"})
        # Entries on one shard only: the proxy's SLOWLOG LEN is their sum.
        one = self.shards[1].client()

        def logOnOneShard() -> int:
            one.config_set("slowlog-log-slower-than", 0)
            one.ping()
            one.config_set("slowlog-log-slower-than", 100000000)
            return int(one.execute_command("SLOWLOG", "LEN"))

        logged = await inThread(logOnOneShard)
        self.assertGreater(logged, 0)
        length = await inThread(lambda: _client(self.port).execute_command("SLOWLOG", "LEN"))
        self.assertEqual(length, logged)
        self.assertEqual(stat(self.server, "redis.test.command.slowlog.success"), 2)
        self.assertEqual(stat(self.server, "redis.test.command.script.total"), 2)

    async def test_info(self) -> None:
        """
        INFO is aggregated as Envoy does (cluster mode, keys summed over
        the shards); INFO.SHARD is one shard's own INFO, each index a
        different shard.
        """
        def run() -> bytes:
            client = _client(self.port)
            for i in range(30):
                client.set(f"info{i}", i)
            return self._raw([b"INFO"], [b"INFO", b"keyspace"],
                             *[[b"INFO.SHARD", b"%d" % i, b"server"] for i in range(3)])

        replies = await inThread(run)
        self.assertIn(b"# Server\r\n", replies)
        self.assertIn(b"redis_mode:cluster\r\n", replies)
        self.assertIn(b"\r\n$45\r\n# Keyspace\r\ndb0:keys=30,expires=0,avg_ttl=0\r\n\r\n$",
                      replies)
        # INFO.SHARD 0, 1, 2: each shard's own INFO, every shard once.
        self.assertEqual(replies.count(b"redis_mode:standalone"), 3)
        ports = re.findall(rb"tcp_port:(\d+)", replies)
        self.assertEqual(sorted(int(p) for p in ports), sorted(s.port for s in self.shards))

    async def test_oneShardAndErrors(self) -> None:
        """
        CLUSTER and RANDOMKEY go to one shard, replies passed on; what
        Envoy refuses gets its errors (counted as the command's errors, or
        as an invalid request), bare KEYS and SCAN included.
        """
        def run() -> bytes:
            _client(self.port).set("only-key", 1)
            return self._raw([b"RANDOMKEY"], [b"CLUSTER", b"INFO"], [b"CLUSTER", b"MEET"],
                             [b"CONFIG", b"HELP"], [b"SLOWLOG", b"HELP"], [b"SCRIPT"],
                             [b"INFO.SHARD", b"x"], [b"INFO.SHARD", b"3"],
                             [b"INFO.SHARD", b"0", b"server", b"extra"],
                             [b"KEYS"], [b"Scan"])

        replies = await inThread(run)
        self.assertRegex(replies, rb"^(\$-1|\$8\r\nonly-key)\r\n")
        self.assertIn(b"-ERR This instance has cluster support disabled\r\n"
                      b"-ERR cluster subcommand 'meet' is not supported\r\n"
                      b"-ERR unsupported cluster scope command or invalid arguments\r\n"
                      b"-ERR unsupported cluster scope command or invalid arguments\r\n"
                      b"-invalid request\r\n"
                      b"-ERR invalid shard_id - must be a numeric shard index\r\n"
                      b"-ERR shard_id 3 out of range (0-2)\r\n"
                      b"-wrong number of arguments for 'INFO.SHARD' command\r\n"
                      b"-invalid request\r\n"
                      b"-ERR wrong number of arguments for 'Scan' command\r\n", replies)
        self.assertEqual(stat(self.server, "redis.test.command.config.error"), 1)
        self.assertEqual(stat(self.server, "redis.test.splitter.invalid_request"), 2)

    async def test_envoy140Commands(self) -> None:
        """
        The other commands Envoy 1.40 knows, with its replies (recorded
        from its binary): CLIENT SETNAME/SETINFO acknowledged, other CLIENT
        subcommands refused; HELLO 2 answered as Envoy (but for the
        server's name); OBJECT routed by its key; the GEO store commands;
        a bare WATCH; FLUSHDB's first error.
        """
        def run() -> tuple[Any, ...]:
            client = _client(self.port)
            client.set("objkey", "hello")
            client.geoadd("places", [13.36, 38.11, "palermo"])
            return (client.execute_command("OBJECT", "ENCODING", "objkey"),
                    client.execute_command("GEORADIUS", "places", "13", "38", "200", "km"),
                    self._raw([b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"],
                              [b"CLIENT", b"setname", b"n"], [b"CLIENT", b"SETNAME"],
                              [b"client", b"GetName"], [b"HELLO", b"3"],
                              [b"HELLO", b"2", b"AUTH", b"u", b"p"], [b"HELLO", b"2", b"X"],
                              [b"OBJECT", b"HELP"], [b"watch"], [b"FLUSHDB", b"x"], [b"HELLO"]))

        encoding, found, replies = await inThread(run)
        self.assertEqual((encoding, found), (b"embstr", [b"palermo"]))
        # HELLO counted as Envoy counts it: three errors, then a success.
        self.assertEqual([stat(self.server, f"redis.test.command.hello.{name}")
                          for name in ("total", "success", "error")], [4, 1, 3])
        self.assertEqual(
            replies,
            b"+OK\r\n+OK\r\n-ERR wrong number of arguments for 'client|setname' command\r\n"
            b"-ERR CLIENT subcommand 'GetName' is not supported by the proxy\r\n"
            b"-NOPROTO unsupported protocol version\r\n"
            b"-ERR Client sent AUTH, but no username-password pair is set\r\n"
            b"-ERR Syntax error: unknown HELLO option 'X'\r\n"
            b"-wrong number of arguments for 'OBJECT' command\r\n"
            b"-wrong number of arguments for 'watch' command\r\n"
            b"-ERR syntax error\r\n"
            b"*14\r\n$6\r\nserver\r\n$7\r\npyenvoy\r\n$7\r\nversion\r\n$5\r\n6.0.0\r\n"
            b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:0\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
            b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n")

    async def test_envoyStatNames(self) -> None:
        """
        pyenvoy shows every cluster stat Envoy 1.40 shows for the same
        setup, and Envoy's HELLO and C{downstream_rq_noproto} stats.
        """
        await inThread(lambda: _client(self.port).ping())
        store = self.server.context.store
        missing = [name for name in ENVOY_CLUSTER_STATS
                   if store.get(f"cluster.redis.{name}") is None]
        self.assertEqual(missing, [])
        for name in ("command.hello.total", "command.hello.latency", "downstream_rq_noproto"):
            self.assertIsNotNone(store.get(f"redis.test.{name}"), name)

    async def test_shardDown(self) -> None:
        """
        A dead shard's failure is the reply of a command sent to every
        shard, as Envoy's first error.
        """
        self.shards[0].stop()
        reply = await inThread(lambda: self._raw([b"SCRIPT", b"FLUSH"]))
        self.assertEqual(reply, b"-upstream failure\r\n")
        self.assertEqual(stat(self.server, "redis.test.command.script.error"), 1)


class AuthTests(TestCase):
    """
    Downstream AUTH by the proxy and upstream AUTH to the shards.
    """

    timeout = 120

    async def test_downstreamAuth(self) -> None:
        """
        Envoy's local AUTH: NOAUTH first, wrong password refused, right one
        (and 'default' username) admitted.
        """
        shards = await startRedisServers(self, 2)
        server = startServer(self, redisProxyConfig(
            [s.port for s in shards],
            proxy={"downstream_auth_passwords": [{"inline_string": "s3cret"}]}))
        port = listenerPort(server)
        reply = await inThread(
            _rawExchange, port,
            b"GET a\r\nAUTH nope\r\nAUTH s3cret\r\nSET a 1\r\nAUTH bob s3cret\r\n"
            b"AUTH default s3cret\r\nGET a\r\n")
        self.assertEqual(
            reply,
            b"-NOAUTH Authentication required.\r\n-ERR invalid password\r\n+OK\r\n+OK\r\n"
            b"-WRONGPASS invalid username-password pair\r\n+OK\r\n$1\r\n1\r\n")

    async def test_upstreamAuth(self) -> None:
        """
        The cluster's RedisProtocolOptions password authenticates every
        upstream connection.
        """
        shards = await startRedisServers(self, 2, password="up-pw")
        options = {"envoy.filters.network.redis_proxy": {
            "@type": PROTOCOL_OPTIONS, "auth_password": {"inline_string": "up-pw"}}}
        server = startServer(self, redisProxyConfig(
            [s.port for s in shards], cluster={"typed_extension_protocol_options": options}))
        port = listenerPort(server)

        def run() -> list[Any]:
            client = _client(port)
            for i in range(20):
                client.set(f"a{i}", i)
            return client.mget([f"a{i}" for i in range(20)])

        self.assertEqual(await inThread(run), [str(i).encode() for i in range(20)])
        held = [await inThread(s.keys) for s in shards]
        self.assertTrue(all(held))


class FailureTests(TestCase):
    """
    Shards going away, timeouts, faults, redirection.
    """

    timeout = 120

    async def test_shardKilled(self) -> None:
        """
        With one shard down its keys fail with Envoy's error while the
        other shard's keys keep working; back up, its keys work again.
        """
        shards = await startRedisServers(self, 2)
        server = startServer(self, redisProxyConfig([s.port for s in shards]))
        port = listenerPort(server)
        keys = [f"s{i}" for i in range(60)]
        await inThread(lambda: [_client(port).set(k, 1) for k in keys])
        onFirst = {k.encode() for k in keys} & await inThread(shards[0].keys)
        self.assertTrue(onFirst)
        shards[0].stop()

        def probe() -> dict[str, Any]:
            import redis

            client = _client(port)
            out = {}
            for k in keys:
                try:
                    out[k] = client.get(k)
                except redis.ResponseError as e:
                    out[k] = str(e)
            return out

        results = await inThread(probe)
        for k in keys:
            if k.encode() in onFirst:
                self.assertIn(results[k], ("upstream failure", "no upstream host"))
            else:
                self.assertEqual(results[k], b"1")
        await shards[0].start()
        again = await inThread(probe)
        self.assertEqual({k for k, v in again.items() if v is None}, {k.decode() for k in onFirst})
        self.assertTrue(all(v == b"1" for k, v in again.items() if k.encode() not in onFirst))

    async def test_healthCheckEjectsDeadShard(self) -> None:
        """
        With Envoy's Redis health checker on the cluster, a killed shard
        leaves the ring (its keys go to the live shard, as under Envoy)
        and comes back once it answers PING again.
        """
        shards = await startRedisServers(self, 2)
        checks = [{"timeout": "0.5s", "interval": "0.1s", "no_traffic_interval": "0.1s",
                   "unhealthy_threshold": 1, "healthy_threshold": 1,
                   "custom_health_check": {
                       "name": "envoy.health_checkers.redis",
                       "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                 "health_checkers.redis.v3.Redis"}}}]
        server = startServer(self, redisProxyConfig([s.port for s in shards],
                                                    cluster={"health_checks": checks}))
        port = listenerPort(server)

        async def healthy(count: int) -> None:
            end = time.monotonic() + 15
            while stat(server, "cluster.redis.membership_healthy") != count:
                self.assertLess(time.monotonic(), end, f"never {count} healthy")
                await deferLater(reactor, 0.05, lambda: None)

        await healthy(2)
        keys = [f"h{i}" for i in range(40)]
        await inThread(lambda: [_client(port).set(k, "before") for k in keys])
        onFirst = {k.encode() for k in keys} & await inThread(shards[0].keys)
        self.assertTrue(onFirst)
        shards[0].stop()
        await healthy(1)
        # Every key now lives on the second shard.
        await inThread(lambda: [_client(port).set(k, "during") for k in keys])
        self.assertEqual(await inThread(shards[1].keys), {k.encode() for k in keys})
        self.assertGreater(stat(server, "cluster.redis.health_check.failure"), 0)
        await shards[0].start()
        await healthy(2)
        await inThread(lambda: [_client(port).set(k, "after") for k in keys])
        self.assertEqual(await inThread(shards[0].keys), onFirst)

    async def test_opTimeout(self) -> None:
        """
        An upstream that never answers fails the command with 'upstream
        failure' after op_timeout and counts upstream_rq_timeout.
        """
        class Silent(Protocol):
            def dataReceived(self, data: bytes) -> None:
                pass

        silentPort = listen(self, Silent)
        server = startServer(self, redisProxyConfig(
            [silentPort], proxy={"settings": {"op_timeout": "0.4s"}}))
        port = listenerPort(server)
        started = time.monotonic()
        reply = await inThread(_rawExchange, port, b"GET x\r\n", False, 5.0)
        self.assertEqual(reply, b"-upstream failure\r\n")
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(stat(server, "cluster.redis.upstream_rq_timeout"), 1)
        self.assertEqual(stat(server, "redis.test.command.get.error"), 1)

    async def test_faults(self) -> None:
        """
        An ERROR fault on GET and a DELAY fault on SET, both at 100%.
        """
        shards = await startRedisServers(self, 1)
        faults = [
            {"fault_type": "ERROR", "commands": ["GET"],
             "fault_enabled": {"default_value": {"numerator": 100}}},
            {"fault_type": "DELAY", "delay": "0.3s", "commands": ["SET"],
             "fault_enabled": {"default_value": {"numerator": 100}}},
        ]
        server = startServer(self, redisProxyConfig([shards[0].port], proxy={"faults": faults}))
        port = listenerPort(server)
        started = time.monotonic()
        reply = await inThread(_rawExchange, port, b"SET a 1\r\nGET a\r\nPING\r\n", False, 5.0)
        self.assertEqual(reply, b"+OK\r\n-Fault Injected: Error\r\n+PONG\r\n")
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        self.assertEqual(stat(server, "redis.test.command.get.error_fault"), 1)
        self.assertEqual(stat(server, "redis.test.command.set.delay_fault"), 1)

    async def test_movedAndAsk(self) -> None:
        """
        With enable_redirection, MOVED and ASK from a node are followed to
        the node they name (ASK after an ASKING), counted in the cluster's
        upstream_internal_redirect_succeeded_total; one naming a host name
        (localhost) is passed back unchanged, as Envoy does without
        dns_cache_config, and counted in upstream_internal_redirect_failed_total.
        """
        target = (await startRedisServers(self, 1))[0]
        await inThread(lambda: target.client().set("moved", "found"))
        redirects = [b"MOVED 3999 127.0.0.1:%d" % target.port,
                     b"ASK 3999 127.0.0.1:%d" % target.port,
                     b"MOVED 3999 localhost:%d" % target.port]

        class Redirector(Protocol):
            def dataReceived(self, data: bytes) -> None:
                for _ in range(data.count(b"*")):
                    self.transport.write(b"-%s\r\n" % redirects.pop(0))

        redirector = listen(self, Redirector)
        server = startServer(self, redisProxyConfig(
            [redirector], proxy={"settings": {"op_timeout": "5s",
                                              "enable_redirection": True}}))
        port = listenerPort(server)
        replies = [await inThread(_rawExchange, port, b"GET moved\r\n") for _ in range(3)]
        self.assertEqual(replies, [b"$5\r\nfound\r\n", b"$5\r\nfound\r\n",
                                   b"-MOVED 3999 localhost:%d\r\n" % target.port])
        self.assertEqual(
            [stat(server, f"cluster.redis.upstream_internal_redirect_{outcome}_total")
             for outcome in ("succeeded", "failed")], [2, 1])


    async def test_fragmentsMovedAndAsk(self) -> None:
        """
        With enable_redirection, the GETs of an MGET, the SETs of an MSET
        and the DELs of a DEL that a node answers with MOVED or ASK are
        each resent to the real server named (ASK after an ASKING), and
        the combined replies are the server's, each in its place.
        """
        target = (await startRedisServers(self, 1))[0]
        await inThread(lambda: target.client().mset({"a": "1", "b": "2"}))
        sent = []

        class Redirector(Protocol):
            def dataReceived(self, data: bytes) -> None:
                for _ in range(data.count(b"*")):
                    kind = b"ASK" if len(sent) % 2 else b"MOVED"
                    sent.append(kind)
                    self.transport.write(b"-%s 3999 127.0.0.1:%d\r\n" % (kind, target.port))

        redirector = listen(self, Redirector)
        server = startServer(self, redisProxyConfig(
            [redirector], proxy={"settings": {"op_timeout": "5s",
                                              "enable_redirection": True}}))
        port = listenerPort(server)
        reply = await inThread(_rawExchange, port,
                               b"MGET a b c\r\nMSET x 1 y 2\r\nDEL a x\r\nMGET x y a\r\n")
        self.assertEqual(reply, b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n+OK\r\n:2\r\n"
                                b"*3\r\n$-1\r\n$1\r\n2\r\n$-1\r\n")
        self.assertEqual(len(sent), 10)
        self.assertEqual(
            [stat(server, f"cluster.redis.upstream_internal_redirect_{outcome}_total")
             for outcome in ("succeeded", "failed")], [10, 0])
        self.assertEqual(await inThread(lambda: sorted(target.client().keys())), [b"b", b"y"])

class CommandStatsTests(TestCase):
    """
    enable_command_stats.
    """

    timeout = 60

    async def test_upstreamCommandStats(self) -> None:
        """
        Shard commands are counted per command as sent upstream; a shard's
        error reply counts as failure, as in Envoy.
        """
        shards = await startRedisServers(self, 2)
        server = startServer(self, redisProxyConfig(
            [s.port for s in shards],
            proxy={"settings": {"op_timeout": "5s", "enable_command_stats": True}}))
        port = listenerPort(server)
        reply = await inThread(_rawExchange, port, b"SET a 1\r\nMGET a b c\r\n")
        self.assertEqual(reply, b"+OK\r\n*3\r\n$1\r\n1\r\n$-1\r\n$-1\r\n")
        prefix = "cluster.redis.redis_cluster.upstream_commands"
        self.assertEqual(stat(server, f"{prefix}.set.total"), 1)
        self.assertEqual(stat(server, f"{prefix}.get.total"), 3)
        self.assertEqual(stat(server, f"{prefix}.get.success"), 3)
        self.assertEqual(server.context.store.get(f"{prefix}.upstream_rq_time").count, 4)
        reply = await inThread(_rawExchange, port, b"LPUSH a x\r\n")
        self.assertTrue(reply.startswith(b"-WRONGTYPE"), reply)
        self.assertEqual([stat(server, f"{prefix}.lpush.{name}")
                          for name in ("total", "success", "failure")], [1, 0, 1])


class RoutingTests(TestCase):
    """
    prefix_routes and request mirroring.
    """

    timeout = 120

    async def test_prefixRoutesAndMirror(self) -> None:
        """
        'cache:' keys go (prefix removed) to their own cluster; writes to
        the catch-all are mirrored to a third cluster, reads are not.
        """
        main, cache, mirror = await startRedisServers(self, 3)
        proxy = {"prefix_routes": {
            "routes": [{"prefix": "cache:", "remove_prefix": True, "cluster": "cache"}],
            "catch_all_route": {"cluster": "redis", "request_mirror_policy": [
                {"cluster": "mirror", "exclude_read_commands": True}]},
        }}
        server = startServer(self, redisProxyConfig(
            [main.port], proxy=proxy,
            extraClusters=[shardCluster("cache", [cache.port]),
                           shardCluster("mirror", [mirror.port])]))
        port = listenerPort(server)

        def run() -> Any:
            client = _client(port)
            client.set("cache:item", "c")
            client.set("plain", "p")
            client.get("plain")
            client.incr("counter")
            return client.get("cache:item")

        self.assertEqual(await inThread(run), b"c")
        self.assertEqual(await inThread(cache.keys), {b"item"})
        self.assertEqual(await inThread(main.keys), {b"plain", b"counter"})
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(await inThread(mirror.keys), {b"plain", b"counter"})
        self.assertEqual(await inThread(lambda: mirror.client().get("counter")), b"1")


class ExampleConfigTests(SynchronousTestCase):
    """
    The shipped example.
    """

    def test_exampleLoads(self) -> None:
        """
        etc/redis_proxy.yaml is a valid config with a RING_HASH shard cluster.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load(os.path.join(here, "etc", "redis_proxy.yaml"))
        proxy = config.listeners[0].filterChains[0].filters[0]
        self.assertEqual(proxy.name, "envoy.filters.network.redis_proxy")
        self.assertEqual(config.clusters[proxy.config.catchAll.cluster].lbPolicy, "RING_HASH")
