"""
Load balancers, above all RING_HASH and MAGLEV: the hashes, rings and
tables must be Envoy's bit for bit, so a key reaches the host Envoy would
pick.

Where reference values come from (none of them is computed by the code
under test):

 - xxHash64: the published XXH64 test vectors (C{""}, C{"a"}, C{"abc"}
   with seed 0), Envoy's C{test/common/common/hash_test.cc} (C{foo},
   C{bar}, ...), and Debian's C{libxxhash} 0.8 (seed 1), which a test
   also calls through C{ctypes} when it is installed.
 - MurmurHash2-64: Envoy's C{test/common/common/hash_test.cc} for short
   keys, and C{std::hash<std::string>} / C{std::_Hash_bytes} of GNU
   libstdc++ (g++ 12.2) for keys of 8 bytes and more and for another seed.
 - Rings and Maglev tables: the expected rings and slot assignments
   written out in Envoy's C{ring_hash_lb_test.cc} and C{maglev_lb_test.cc}
   (tests C{Basic}, C{BasicWithMurmur2}, C{BasicWithHostName},
   C{Weighted}).  They were also checked side by side against Envoy 1.40
   (redis_proxy and tcp_proxy C{hash_policy} over real sockets, 0
   mismatches in 21,000 keys); that check is not part of this suite.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
from collections import Counter
from typing import Any, Sequence

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config import parse
from pyenvoy.config.bootstrap import MaglevLbConfig, RingHashLbConfig, isPrime
from pyenvoy.stats import Store
from pyenvoy.upstream.cluster import Cluster
from pyenvoy.upstream.hashing import (
    STD_HASH_SEED, LoadBalancerContext, canonicalAddress, hashKeyForString, hostHashKey,
    murmurHash2, xxHash64)
from pyenvoy.upstream.host import Host
from pyenvoy.upstream.load_balancer import (
    LeastRequest, Maglev, Random, RingHash, RoundRobin, makeLoadBalancer)
from pyenvoy.upstream.maglev import MaglevTable
from pyenvoy.upstream.ring_hash import Ring
from tests.test_config import C0, ConfigTestCase, bootstrap, cluster

MAX64 = 2**64 - 1


def hosts(*ports: int, address: str = "127.0.0.1", weights: Sequence[int] = ()) -> list[Host]:
    """
    Hosts at C{address} on each of C{ports}, weight 1 unless C{weights}.
    """
    return [Host((address, port), weights[i] if weights else 1)
            for i, port in enumerate(ports)]


def ctx(key: int | None) -> LoadBalancerContext:
    """
    A context carrying hash key C{key}.
    """
    return LoadBalancerContext(hashKey=key)


def keys(n: int) -> list[int]:
    """
    C{n} hash keys, as filters would compute them from strings.
    """
    return [hashKeyForString(f"client-{i}") for i in range(n)]


def placement(lb: Any, hashKeys: Sequence[int]) -> list[Host]:
    """
    The host C{lb} picks for each key.
    """
    return [lb.chooseHost(ctx(k)) for k in hashKeys]


def _libxxhash() -> Any:
    name = ctypes.util.find_library("xxhash")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.XXH64.restype = ctypes.c_uint64
    lib.XXH64.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
    return lib


class XxHash64Tests(SynchronousTestCase):
    """
    L{xxHash64} and L{hashKeyForString} are XXH64.
    """

    def test_specVectors(self) -> None:
        """
        The published XXH64 vectors for C{""}, C{"a"} and C{"abc"}, seed 0.
        """
        self.assertEqual(xxHash64(b""), 0xEF46DB3751D8E999)
        self.assertEqual(xxHash64(b"a"), 0xD24EC4F1A98C6E5B)
        self.assertEqual(xxHash64(b"abc"), 0x44BC2CF5AD770999)

    def test_envoyVectors(self) -> None:
        """
        The values Envoy's C{hash_test.cc} expects of C{HashUtil::xxHash64}.
        """
        self.assertEqual(xxHash64("foo"), 3728699739546630719)
        self.assertEqual(xxHash64("bar"), 5234164152756840025)
        self.assertEqual(xxHash64("foo\nbar"), 8917841378505826757)
        self.assertEqual(xxHash64("lyft"), 4400747396090729504)
        self.assertEqual(xxHash64(""), 17241709254077376921)

    def test_seed(self) -> None:
        """
        A seed changes the hash as libxxhash's C{XXH64(..., seed)} does
        (Maglev's skip uses seed 1).
        """
        self.assertEqual(xxHash64(b"", 1), 0xD5AFBA1336A3BE4B)
        self.assertEqual(xxHash64(b"127.0.0.1:90", 0), 0xB6E9805BF4890ED5)
        self.assertEqual(xxHash64(b"127.0.0.1:90", 1), 0x151EAA9A12EBFFF5)

    def test_againstLibxxhash(self) -> None:
        """
        Where the C library is installed, it agrees on assorted inputs.
        """
        lib = _libxxhash()
        if lib is None:
            raise self.skipTest("libxxhash is not installed")
        rng = random.Random(7)
        for length in list(range(0, 70)) + [255, 1024]:
            data = bytes(rng.getrandbits(8) for _ in range(length))
            for seed in (0, 1, STD_HASH_SEED, MAX64):
                self.assertEqual(xxHash64(data, seed), lib.XXH64(data, len(data), seed))

    def test_hashKeyForString(self) -> None:
        """
        A filter's key for a string is its xxHash64 with seed 0, as Envoy's
        C{source_ip} hash policy computes it of C{"10.0.0.1"}.
        """
        self.assertEqual(hashKeyForString("10.0.0.1"), 0xED16CB68C786E3D7)
        self.assertEqual(hashKeyForString(b"10.0.0.1"), 0xED16CB68C786E3D7)
        self.assertEqual(hashKeyForString("foo"), 3728699739546630719)

    def test_strIsUtf8(self) -> None:
        """
        A C{str} is hashed as its UTF-8 bytes.
        """
        self.assertEqual(xxHash64("café"), xxHash64("café".encode("utf-8")))
        self.assertEqual(murmurHash2("café"), murmurHash2("café".encode("utf-8")))


class MurmurHash2Tests(SynchronousTestCase):
    """
    L{murmurHash2} is libstdc++'s 64-bit MurmurHash2, as Envoy uses it.
    """

    def test_envoyVectors(self) -> None:
        """
        The values Envoy's C{hash_test.cc} expects of
        C{MurmurHash::murmurHash2} (seed C{STD_HASH_SEED}).
        """
        self.assertEqual(murmurHash2("foo"), 9631199822919835226)
        self.assertEqual(murmurHash2("bar"), 11474628671133349555)
        self.assertEqual(murmurHash2("foo\nbar"), 16306510975912980159)
        self.assertEqual(murmurHash2("lyft"), 12847078931730529320)
        self.assertEqual(murmurHash2(""), 6142509188972423790)

    def test_longKeys(self) -> None:
        """
        Keys of whole 8-byte words and more match libstdc++'s
        C{std::hash<std::string>} (values printed by a g++ 12.2 program).
        """
        self.assertEqual(murmurHash2("12345678"), 10113836418918046885)
        self.assertEqual(murmurHash2("127.0.0.1:6379_0"), 29135719191603804)
        self.assertEqual(murmurHash2("10.0.0.1:80_1023"), 15789037270009152486)
        self.assertEqual(murmurHash2("a somewhat longer key: 0123456789abcdef!"),
                         7379310250588420376)

    def test_seed(self) -> None:
        """
        Another seed gives libstdc++'s C{std::_Hash_bytes(data, len, seed)}.
        """
        self.assertEqual(murmurHash2("foo", 1234567), 7885719389020925756)
        self.assertEqual(murmurHash2("", 1234567), 3262297425279115551)
        self.assertEqual(murmurHash2("a somewhat longer key: 0123456789abcdef!", 1234567),
                         17670208577785575131)

    def test_defaultSeed(self) -> None:
        """
        The default seed is libstdc++'s C{0xc70f6907}.
        """
        self.assertEqual(STD_HASH_SEED, 0xC70F6907)
        self.assertEqual(murmurHash2("lyft", STD_HASH_SEED), murmurHash2("lyft"))


class HostKeyTests(SynchronousTestCase):
    """
    What a hash load balancer hashes to place a host.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 host is C{ip:port}.
        """
        self.assertEqual(hostHashKey(Host(("10.0.0.1", 6379))), "10.0.0.1:6379")

    def test_ipv6Canonical(self) -> None:
        """
        An IPv6 host is C{[ip]:port} with the IP as Envoy prints it, however
        the config spelled it.
        """
        self.assertEqual(canonicalAddress("0:0:0:0:0:0:0:1", 80), "[::1]:80")
        self.assertEqual(canonicalAddress("2001:DB8:0:0::1", 443), "[2001:db8::1]:443")

    def test_name(self) -> None:
        """
        A name that is not an IP is kept as it is.
        """
        self.assertEqual(canonicalAddress("redis.local", 6379), "redis.local:6379")

    def test_hostname(self) -> None:
        """
        With C{use_hostname_for_hashing} the host's name is the key.
        """
        self.assertEqual(hostHashKey(Host(("10.0.0.1", 80), 1, "web-1"), True), "web-1")


class RingTests(SynchronousTestCase):
    """
    L{Ring} and L{RingHash} build and search Envoy's ring.
    """

    # Envoy's ring_hash_lb_test.cc "Basic": 127.0.0.1:90..95, minimum ring
    # size 12, xxHash: (port, position) in ring order.
    ENVOY_BASIC = [
        (94, 833437586790550860), (92, 928266305478181108), (90, 1033482794131418490),
        (95, 3551244743356806947), (93, 3851675632748031481), (91, 5583722120771150861),
        (91, 6311230543546372928), (93, 7700377290971790572), (95, 13144177310400110813),
        (92, 13444792449719432967), (94, 15516499411664133160), (90, 16117243373044804889),
    ]

    def test_envoyBasicRing(self) -> None:
        """
        Six hosts, minimum 12: Envoy's ring, entry for entry, and its stats.
        """
        lb = RingHash(hosts(*range(90, 96)), RingHashLbConfig(12))
        ring = lb.ring
        self.assertEqual([(h.address[1], v) for v, h in ring.entries()], self.ENVOY_BASIC)
        self.assertEqual((ring.size, ring.minHashesPerHost, ring.maxHashesPerHost), (12, 2, 2))

    def test_envoyBasicLookups(self) -> None:
        """
        Envoy's lookups on that ring: 0 and 2**64-1 wrap to the first entry
        (:94), a key equal to an entry takes it, one past it the next.
        """
        lb = RingHash(hosts(*range(90, 96)), RingHashLbConfig(12))
        port = lambda k: lb.chooseHost(ctx(k)).address[1]  # noqa: E731
        self.assertEqual(port(0), 94)
        self.assertEqual(port(MAX64), 94)
        self.assertEqual(port(3551244743356806947), 95)
        self.assertEqual(port(3551244743356806948), 93)
        self.assertEqual(port(16117243373044804880), 90)

    def test_envoyMurmurRing(self) -> None:
        """
        Envoy's C{BasicWithMurmur2} ring: 127.0.0.1:80..85, minimum 12,
        C{hash_function: MURMUR_HASH_2}.
        """
        lb = RingHash(hosts(*range(80, 86)), RingHashLbConfig(12, hashFunction="MURMUR_HASH_2"))
        self.assertEqual([(h.address[1], v) for v, h in lb.ring.entries()], [
            (85, 1358027074129602068), (83, 4361834613929391114), (84, 7224494972555149682),
            (81, 7701421856454313576), (82, 8649315368077433379), (84, 8739448859063030639),
            (81, 9887544217113020895), (82, 10150910876324007731), (83, 15168472011420622455),
            (80, 15427156902705414897), (85, 16375050414328759093), (80, 17613279263364193813),
        ])
        port = lambda k: lb.chooseHost(ctx(k)).address[1]  # noqa: E731
        self.assertEqual(port(1358027074129602069), 83)
        self.assertEqual(port(10150910876324007730), 82)

    def test_envoyHostnameRing(self) -> None:
        """
        Envoy's ring for hosts named C{"90"}..C{"95"} placed by hostname.
        """
        named = [Host(("127.0.0.1", p), 1, str(p)) for p in range(90, 96)]
        lb = RingHash(named, RingHashLbConfig(12), useHostname=True)
        self.assertEqual([v for v, _ in lb.ring.entries()][:3],
                         [1975508444536362413, 2376063919839173711, 2386806903309390596])
        self.assertEqual(lb.chooseHost(ctx(7225015537174310577)).hostname, "92")
        self.assertEqual(lb.chooseHost(ctx(6803900775736438537)).hostname, "93")

    def test_entriesAreAddressUnderscoreIndex(self) -> None:
        """
        A host's entries are the hashes of C{"<ip:port>_0"}, C{"_1"}, ...
        """
        lb = RingHash(hosts(90, 91), RingHashLbConfig(8))
        mine = sorted(v for v, h in lb.ring.entries() if h.address[1] == 90)
        self.assertEqual(mine, sorted(xxHash64(f"127.0.0.1:90_{i}") for i in range(4)))

    def test_defaultSize(self) -> None:
        """
        By default the lightest host gets a whole number of entries and the
        ring has at least 1024: three equal hosts get 342 each.
        """
        lb = RingHash(hosts(1, 2, 3))
        self.assertEqual((lb.ring.size, len(lb.ring)), (1026, 1026))
        self.assertEqual(Counter(h for _, h in lb.ring.entries()).most_common()[-1][1], 342)

    def test_weightedCounts(self) -> None:
        """
        Weights 1:2 give 342 and 684 entries (scale 1026).
        """
        lb = RingHash(hosts(1, 2, weights=(1, 2)))
        counts = Counter(h.address[1] for _, h in lb.ring.entries())
        self.assertEqual(counts, {1: 342, 2: 684})
        self.assertEqual((lb.ring.minHashesPerHost, lb.ring.maxHashesPerHost), (342, 684))

    def test_maximumRingSize(self) -> None:
        """
        C{maximum_ring_size} caps the ring; fractional shares are handed out
        by running sums, as in Envoy's example (4 hosts, 6 entries: 2, 1, 2,
        1).
        """
        lb = RingHash(hosts(1, 2, 3, 4), RingHashLbConfig(1024, 6))
        counts = Counter(h.address[1] for _, h in lb.ring.entries())
        self.assertEqual([counts[p] for p in (1, 2, 3, 4)], [2, 1, 2, 1])
        self.assertEqual(lb.ring.size, 6)

    def test_lookupWraps(self) -> None:
        """
        A key above the last entry goes to the first; an empty ring has no
        host.
        """
        ring = Ring([(Host(("10.0.0.1", 1)), 1.0)], 1.0, 4)
        last = ring.hashes[-1]
        self.assertIs(ring.chooseHost(last + 1), ring.chooseHost(0))
        self.assertIsNone(Ring([], 1.0).chooseHost(5))

    def test_sticky(self) -> None:
        """
        A key goes to the same host every time, and after a rebuild from the
        same hosts.
        """
        ks = keys(500)
        first = RingHash(hosts(1, 2, 3, weights=(1, 2, 3)))
        again = RingHash(hosts(1, 2, 3, weights=(1, 2, 3)))
        self.assertEqual(placement(first, ks), placement(first, ks))
        self.assertEqual([h.address for h in placement(first, ks)],
                         [h.address for h in placement(again, ks)])

    def test_distribution(self) -> None:
        """
        Weights 1:2 send about a third and two thirds of the keys.
        """
        lb = RingHash(hosts(1, 2, weights=(1, 2)))
        counts = Counter(h.address[1] for h in placement(lb, keys(20000)))
        self.assertLess(abs(counts[1] / 20000 - 1 / 3), 0.05, counts)
        self.assertLess(abs(counts[2] / 20000 - 2 / 3), 0.05, counts)

    def test_removingAHostMovesItsShare(self) -> None:
        """
        Taking one of five hosts away moves its keys and only about a fifth
        of all keys.
        """
        ks = keys(10000)
        five = hosts(1, 2, 3, 4, 5)
        lb = RingHash(five)
        before = placement(lb, ks)
        lb.setHosts(five[:4])
        after = placement(lb, ks)
        moved = sum(1 for b, a in zip(before, after) if a is not b)
        self.assertTrue(all(a is not five[4] for a in after))
        self.assertTrue(0.12 < moved / len(ks) < 0.30, moved)
        onRemoved = sum(1 for b in before if b is five[4])
        self.assertLessEqual(onRemoved, moved)

    def test_noKeyIsRandom(self) -> None:
        """
        Without a hash key (no context, or C{hashKey=None}) the pick is
        random, spread over the hosts.
        """
        lb = RingHash(hosts(1, 2, 3), rng=random.Random(1))
        picks = Counter(lb.chooseHost(None).address[1] for _ in range(300))
        picks.update(lb.chooseHost(ctx(None)).address[1] for _ in range(300))
        self.assertEqual(set(picks), {1, 2, 3})
        self.assertTrue(min(picks.values()) > 100, picks)

    def test_noHosts(self) -> None:
        """
        No hosts, no host.
        """
        self.assertIsNone(RingHash([]).chooseHost(ctx(1)))


class MaglevTests(SynchronousTestCase):
    """
    L{MaglevTable} and L{Maglev} fill and read Envoy's table.
    """

    def test_envoyBasicTable(self) -> None:
        """
        Envoy's C{Basic} table: 127.0.0.1:90..95 in 7 slots.
        """
        six = hosts(*range(90, 96))
        lb = Maglev(six, MaglevLbConfig(7))
        self.assertEqual([six.index(h) for h in placement(lb, range(21))],
                         [2, 4, 0, 1, 5, 0, 3] * 3)
        self.assertEqual((lb.table.minEntriesPerHost, lb.table.maxEntriesPerHost), (1, 2))

    def test_envoyHostnameTable(self) -> None:
        """
        Envoy's C{BasicWithHostName} table: hosts named C{"90"}..C{"95"}.
        """
        named = [Host(("127.0.0.1", p), 1, str(p)) for p in range(90, 96)]
        lb = Maglev(named, MaglevLbConfig(7), useHostname=True)
        self.assertEqual([named.index(h) for h in placement(lb, range(7))],
                         [2, 5, 0, 3, 4, 1, 0])

    def test_envoyWeightedTable(self) -> None:
        """
        Envoy's C{Weighted} table: weights 1 and 2 in 17 slots.
        """
        two = hosts(90, 91, weights=(1, 2))
        lb = Maglev(two, MaglevLbConfig(17))
        self.assertEqual([two.index(h) for h in placement(lb, range(17))],
                         [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1])
        self.assertEqual((lb.table.minEntriesPerHost, lb.table.maxEntriesPerHost), (6, 11))

    def test_orderDoesNotMatter(self) -> None:
        """
        Hosts are taken in key order, so a shuffled host list fills the same
        table (Envoy's C{BasicStability}).
        """
        six = hosts(*range(90, 96))
        shuffled = six[:]
        random.Random(3).shuffle(shuffled)
        self.assertEqual(Maglev(six, MaglevLbConfig(7)).table.table,
                         Maglev(shuffled, MaglevLbConfig(7)).table.table)

    def test_fillCountsFollowWeights(self) -> None:
        """
        In the default 65537 slots, weights 1:2:3 fill 1/6, 2/6 and 3/6 of
        the table (to within one slot).
        """
        lb = Maglev(hosts(1, 2, 3, weights=(1, 2, 3)))
        counts = {h.address[1]: n for h, n in lb.table.counts}
        self.assertEqual(sum(counts.values()), 65537)
        for port, weight in ((1, 1), (2, 2), (3, 3)):
            self.assertLessEqual(abs(counts[port] - 65537 * weight / 6), 1, counts)

    def test_equalFill(self) -> None:
        """
        Equal weights fill equal shares, the first hosts one slot more.
        """
        lb = Maglev(hosts(1, 2, 3))
        self.assertEqual(sorted(n for _, n in lb.table.counts), [21845, 21846, 21846])

    def test_sticky(self) -> None:
        """
        A key goes to the same host after a rebuild from the same hosts.
        """
        ks = keys(500)
        a = Maglev(hosts(1, 2, 3, 4))
        b = Maglev(hosts(1, 2, 3, 4))
        self.assertEqual([h.address for h in placement(a, ks)],
                         [h.address for h in placement(b, ks)])

    def test_removingAHostMovesLittle(self) -> None:
        """
        Taking one of five hosts away moves its keys and few others.
        """
        ks = keys(10000)
        five = hosts(1, 2, 3, 4, 5)
        lb = Maglev(five)
        before = placement(lb, ks)
        lb.setHosts(five[:4])
        after = placement(lb, ks)
        moved = sum(1 for b, a in zip(before, after) if a is not b)
        self.assertTrue(all(a is not five[4] for a in after))
        self.assertTrue(0.15 < moved / len(ks) < 0.30, moved)

    def test_notPrime(self) -> None:
        """
        A table size that is not prime is refused.
        """
        self.assertRaises(ValueError, MaglevTable, [], 1.0, 65536)

    def test_noKeyIsRandom(self) -> None:
        """
        Without a hash key the pick is random.
        """
        lb = Maglev(hosts(1, 2, 3), MaglevLbConfig(7), rng=random.Random(2))
        picks = Counter(lb.chooseHost(None).address[1] for _ in range(300))
        self.assertEqual(set(picks), {1, 2, 3})

    def test_noHosts(self) -> None:
        """
        No hosts, no host.
        """
        self.assertIsNone(Maglev([]).chooseHost(ctx(1)))


class HealthTests(SynchronousTestCase):
    """
    Hash load balancers place only healthy hosts, as Envoy builds its
    tables from the healthy host set.
    """

    def check(self, lb: Any, five: list[Host]) -> None:
        """
        Turn the third of C{five} hosts unhealthy and back, checking where
        C{lb} sends keys meanwhile.
        """
        ks = keys(3000)
        before = placement(lb, ks)
        builds = lb.builds
        five[2].healthy = False
        during = placement(lb, ks)
        self.assertNotIn(five[2], during)
        self.assertEqual(lb.builds, builds + 1)
        stayed = [(b, d) for b, d in zip(before, during) if b is not five[2]]
        others = sum(1 for b, d in stayed if d is not b)
        # The other hosts' keys mostly stay (the ring gives each remaining
        # host more entries, which take some keys from the others).
        self.assertLess(others / len(stayed), 0.2)
        five[2].healthy = True
        lb.refresh()
        self.assertEqual(placement(lb, ks), before)

    def test_ringSkipsUnhealthy(self) -> None:
        """
        A host that turns unhealthy gets no keys (the ring is rebuilt the
        first time it is picked); healthy again and refreshed, the ring is
        as before.
        """
        five = hosts(1, 2, 3, 4, 5)
        self.check(RingHash(five), five)

    def test_maglevSkipsUnhealthy(self) -> None:
        """
        Likewise for Maglev.
        """
        five = hosts(1, 2, 3, 4, 5)
        self.check(Maglev(five, MaglevLbConfig(65537)), five)

    def test_noRebuildForSameHosts(self) -> None:
        """
        Setting the same hosts again (a DNS refresh) does not rebuild.
        """
        three = hosts(1, 2, 3)
        lb = Maglev(three)
        lb.setHosts(list(three))
        lb.refresh()
        self.assertEqual(lb.builds, 1)

    def test_allUnhealthy(self) -> None:
        """
        With no healthy host and panic mode disabled (threshold 0) there is
        no host.
        """
        two = hosts(1, 2)
        lb = RingHash(two, panicThreshold=0)
        for h in two:
            h.healthy = False
        lb.refresh()
        self.assertIsNone(lb.chooseHost(ctx(7)))

    def test_allUnhealthyPanics(self) -> None:
        """
        With no healthy host and Envoy's default threshold (50%), the ring
        is in panic mode and built over every host, as Envoy's.
        """
        two = hosts(1, 2)
        lb = RingHash(two)
        for h in two:
            h.healthy = False
        lb.refresh()
        self.assertTrue(lb.panic)
        ks = keys(200)
        self.assertEqual([h.address for h in placement(lb, ks)],
                         [h.address for h in placement(RingHash(hosts(1, 2)), ks)])


class FactoryTests(SynchronousTestCase):
    """
    L{makeLoadBalancer} and L{Cluster} make the policy the config names.
    """

    def test_policies(self) -> None:
        """
        Each C{lb_policy} name gives its load balancer.
        """
        for policy, kind in (("ROUND_ROBIN", RoundRobin), ("RANDOM", Random),
                             ("LEAST_REQUEST", LeastRequest), ("RING_HASH", RingHash),
                             ("MAGLEV", Maglev)):
            self.assertIsInstance(makeLoadBalancer(policy, hosts(1)), kind)

    def test_clusterRingHash(self) -> None:
        """
        A RING_HASH cluster uses its C{ring_hash_lb_config} and keeps Envoy's
        C{cluster.<name>.ring_hash_lb.*} gauges.
        """
        config = parse(bootstrap(clusters=[cluster(
            endpoints=[("127.0.0.1", p) for p in range(90, 96)], lb_policy="RING_HASH",
            ring_hash_lb_config={"minimum_ring_size": 12})])).clusters["backend"]
        store = Store()
        c = Cluster(config, store, MemoryReactorClock())
        self.assertIsInstance(c.lb, RingHash)
        self.assertEqual(c.lb.chooseHost(ctx(0)).address, ("127.0.0.1", 94))
        self.assertEqual(
            [store.get(f"cluster.backend.ring_hash_lb.{name}").value  # type: ignore[union-attr]
             for name in ("size", "min_hashes_per_host", "max_hashes_per_host")],
            [12, 2, 2])

    def test_clusterMaglev(self) -> None:
        """
        A MAGLEV cluster uses its C{maglev_lb_config} and keeps Envoy's
        C{cluster.<name>.maglev_lb.*} gauges.
        """
        config = parse(bootstrap(clusters=[cluster(
            endpoints=[("127.0.0.1", p) for p in range(90, 96)], lb_policy="MAGLEV",
            maglev_lb_config={"table_size": 7})])).clusters["backend"]
        store = Store()
        c = Cluster(config, store, MemoryReactorClock())
        self.assertIsInstance(c.lb, Maglev)
        self.assertEqual([h.address[1] for h in placement(c.lb, range(7))],
                         [92, 94, 90, 91, 95, 90, 93])
        self.assertEqual(
            store.get("cluster.backend.maglev_lb.max_entries_per_host").value,  # type: ignore
            2)
        self.assertIsNone(store.get("cluster.backend.ring_hash_lb.size"))

    def test_otherPoliciesIgnoreKeys(self) -> None:
        """
        Round robin takes a context with a key and ignores it.
        """
        lb = RoundRobin(hosts(1, 2))
        self.assertEqual([lb.chooseHost(ctx(5)).address[1] for _ in range(4)], [1, 2, 1, 2])

    def test_roundRobinGoesOnAfterNewHostSet(self) -> None:
        """
        The same hosts again (a DNS cluster's every refresh) or a changed
        set do not restart the rotation at the first host, as Envoy never
        resets its round-robin index; weighted hosts keep their credit.
        """
        same = hosts(1, 2)
        lb = RoundRobin(same)
        picks = []
        for _ in range(4):
            picks.append(lb.chooseHost(None).address[1])
            lb.setHosts(list(same))
        self.assertEqual(picks, [1, 2, 1, 2])
        weighted = hosts(1, 2)
        weighted[0].weight = 3
        lb = RoundRobin(weighted)
        picks = []
        for _ in range(8):
            picks.append(lb.chooseHost(None).address[1])
            lb.setHosts(list(weighted))
        self.assertEqual(picks.count(1), 6)
        self.assertEqual(picks.count(2), 2)


class LbConfigTests(ConfigTestCase):
    """
    C{ring_hash_lb_config}, C{maglev_lb_config} and
    C{common_lb_config.consistent_hashing_lb_config} as Envoy reads them.
    """

    def clusterConfig(self, **extra: Any) -> Any:
        """
        The one cluster of a config with C{extra} fields.
        """
        return parse(bootstrap(clusters=[cluster(**extra)])).clusters["backend"]

    def test_defaults(self) -> None:
        """
        Envoy's defaults: ring 1024..8M entries with xxHash, Maglev 65537
        slots.
        """
        c = self.clusterConfig(lb_policy="RING_HASH")
        self.assertEqual(c.ringHashLbConfig, RingHashLbConfig(1024, 8388608, "XX_HASH"))
        self.assertEqual(c.maglevLbConfig, MaglevLbConfig(65537))
        self.assertFalse(c.useHostnameForHashing)

    def test_ringHashFields(self) -> None:
        """
        The ring's sizes (bare or as C{{value: N}}) and hash function.
        """
        c = self.clusterConfig(lb_policy="RING_HASH", ring_hash_lb_config={
            "minimum_ring_size": {"value": 64}, "maximumRingSize": "128",
            "hash_function": "MURMUR_HASH_2"})
        self.assertEqual(c.ringHashLbConfig, RingHashLbConfig(64, 128, "MURMUR_HASH_2"))

    def test_maglevFields(self) -> None:
        """
        The Maglev table size.
        """
        c = self.clusterConfig(lb_policy="MAGLEV", maglev_lb_config={"table_size": 5000011})
        self.assertEqual(c.maglevLbConfig, MaglevLbConfig(5000011))

    def test_minimumAboveMaximum(self) -> None:
        """
        With RING_HASH, C{minimum_ring_size} may not exceed
        C{maximum_ring_size}.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH", ring_hash_lb_config={
                "minimum_ring_size": 20, "maximum_ring_size": 10})]),
            f"{C0}.ring_hash_lb_config.minimum_ring_size",
            "minimum_ring_size (20) > maximum_ring_size (10)")

    def test_minimumAboveMaximumUnused(self) -> None:
        """
        As in Envoy, the bounds are only compared when the ring is used.
        """
        c = self.clusterConfig(ring_hash_lb_config={"minimum_ring_size": 20,
                                                    "maximum_ring_size": 10})
        self.assertEqual(c.lbPolicy, "ROUND_ROBIN")

    def test_ringTooLarge(self) -> None:
        """
        Ring sizes are limited to 8M (8388608) entries.
        """
        self.assertErrors(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH", ring_hash_lb_config={
                "minimum_ring_size": 8388609, "maximum_ring_size": 2**33})]), [
                (f"{C0}.ring_hash_lb_config.minimum_ring_size",
                 "must be at most 8388608, got 8388609"),
                (f"{C0}.ring_hash_lb_config.maximum_ring_size", "must be at most 8388608"),
            ])

    def test_zeroMinimum(self) -> None:
        """
        A minimum of 0 (an empty ring in Envoy) is refused.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH",
                                        ring_hash_lb_config={"minimum_ring_size": 0})]),
            f"{C0}.ring_hash_lb_config.minimum_ring_size", "must be at least 1")

    def test_badHashFunction(self) -> None:
        """
        Only XX_HASH and MURMUR_HASH_2 are hash functions.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH",
                                        ring_hash_lb_config={"hash_function": "SHA1"})]),
            f"{C0}.ring_hash_lb_config.hash_function",
            "expected one of XX_HASH, MURMUR_HASH_2, got the string 'SHA1'")

    def test_unknownRingField(self) -> None:
        """
        An unknown field of C{ring_hash_lb_config} is reported.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH",
                                        ring_hash_lb_config={"use_std_hash": True})]),
            f"{C0}.ring_hash_lb_config.use_std_hash", "unknown field 'use_std_hash'")

    def test_tableNotPrime(self) -> None:
        """
        With MAGLEV the table size must be prime; the error offers the next
        prime.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="MAGLEV",
                                        maglev_lb_config={"table_size": 65536})]),
            f"{C0}.maglev_lb_config.table_size",
            "must be a prime number, got 65536 (the next prime is 65537")

    def test_tableTooLarge(self) -> None:
        """
        Maglev tables are limited to 5000011 slots.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="MAGLEV",
                                        maglev_lb_config={"table_size": 5000101})]),
            f"{C0}.maglev_lb_config.table_size", "must be at most 5000011, got 5000101")

    def test_oneLbConfig(self) -> None:
        """
        The C{*_lb_config} fields are a oneof: only one may be set.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH",
                                        ring_hash_lb_config={}, maglev_lb_config={})]),
            C0, "only one of ring_hash_lb_config, maglev_lb_config may be set")

    def test_useHostnameForHashing(self) -> None:
        """
        C{use_hostname_for_hashing} is read for STRICT_DNS clusters.
        """
        c = self.clusterConfig(
            type="STRICT_DNS", lb_policy="MAGLEV",
            common_lb_config={"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}})
        self.assertTrue(c.useHostnameForHashing)

    def test_useHostnameForHashingStatic(self) -> None:
        """
        As Envoy, C{use_hostname_for_hashing} is refused for a STATIC
        cluster.
        """
        self.assertError(
            bootstrap(clusters=[cluster(lb_policy="RING_HASH", common_lb_config={
                "consistent_hashing_lb_config": {"use_hostname_for_hashing": True}})]),
            f"{C0}.common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
            "only allowed for STRICT_DNS clusters, not STATIC ones")

    def test_commonLbConfigUnsupported(self) -> None:
        """
        The rest of C{common_lb_config} is not supported yet.
        """
        self.assertErrors(
            bootstrap(clusters=[cluster(lb_policy="MAGLEV", common_lb_config={
                "zone_aware_lb_config": {},
                "consistent_hashing_lb_config": {"hash_balance_factor": 150}})]), [
                (f"{C0}.common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
                 "not supported by pyenvoy yet"),
                (f"{C0}.common_lb_config.zone_aware_lb_config", "not supported by pyenvoy yet"),
            ])

    def test_isPrime(self) -> None:
        """
        The primality check behind the table size rule.
        """
        self.assertEqual([n for n in range(20) if isPrime(n)], [2, 3, 5, 7, 11, 13, 17, 19])
        self.assertTrue(isPrime(65537))
        self.assertTrue(isPrime(5000011))
        self.assertFalse(isPrime(65539 * 3))
