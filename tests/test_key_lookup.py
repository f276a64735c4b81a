"""
Tests for L{pyenvoy.upstream.key_lookup}: the C extension and the Python
functions give the same entries, and both the host the load balancer
itself picks for the key's MurmurHash2 (Envoy's reference hash values are
checked in tests/test_load_balancer.py, through the same C code).
"""

from __future__ import annotations

import array
import bisect
import random
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config.bootstrap import MaglevLbConfig, RingHashLbConfig
from pyenvoy.upstream import hashing, key_lookup, maglev, ring_hash
from pyenvoy.upstream.hashing import LoadBalancerContext, murmurHash2
from pyenvoy.upstream.key_lookup import hashedPart, pythonRingEntry, pythonTableEntry
from pyenvoy.upstream.load_balancer import Maglev, RingHash
from tests.test_load_balancer import hosts

try:
    from pyenvoy.upstream import _keyhash
except ImportError:  # reported by test_extensionBuilt
    _keyhash = None  # type: ignore[assignment]

#: Keys with braces where hashtagging picks a part, or not.
TAGGED = [
    b"{user1000}.following", b"{user1000}.followers", b"foo{}{bar}", b"foo{{bar}}",
    b"foo{bar}{zap}", b"{", b"}", b"}{", b"{}", b"a{b", b"a}b{c}", b"{a}", b"x{\xff\x00}y",
    b"", b"plain-key",
]

#: (name, ringEntry, tableEntry) of each implementation there is.
IMPLEMENTATIONS: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
    ("python", pythonRingEntry, pythonTableEntry)]
if _keyhash is not None:
    IMPLEMENTATIONS.append(("C", _keyhash.ringEntry, _keyhash.tableEntry))


def expectedRingIndex(hashes: list[int], key: bytes, tagging: bool) -> int:
    """
    The ring position for C{key}, straight from the definition.
    """
    value = murmurHash2(hashedPart(key) if tagging else key)
    i = bisect.bisect_left(hashes, value)
    return 0 if i == len(hashes) else i


class ExtensionTests(SynchronousTestCase):
    """
    The C extension is there and is the one in use.
    """

    def test_extensionBuilt(self) -> None:
        """
        C{make install} (C{pip install -e .}) compiled C{_keyhash}, and
        L{key_lookup} and L{murmurHash2} use it.
        """
        self.assertIsNotNone(_keyhash, "pyenvoy.upstream._keyhash was not built "
                             "(is a C compiler installed?)")
        self.assertTrue(key_lookup.ACCELERATED)
        self.assertIs(key_lookup.ringEntry, _keyhash.ringEntry)
        self.assertIs(key_lookup.tableEntry, _keyhash.tableEntry)
        self.assertIs(hashing._extensionMurmurHash2, _keyhash.murmurHash2)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80), st.integers(0, 2**64 - 1))
    def test_murmurAgrees(self, data: bytes, seed: int) -> None:
        """
        The extension's MurmurHash2 equals the Python one and libstdc++'s
        own C{_Hash_bytes} for any bytes and seed.
        """
        if _keyhash is None:
            self.fail("pyenvoy.upstream._keyhash was not built")
        value = _keyhash.murmurHash2(data, seed)
        self.assertEqual(value, hashing._pythonMurmurHash2(data, seed))
        if hashing.nativeMurmurHash2 is not None:
            self.assertEqual(value, hashing.nativeMurmurHash2(data, len(data), seed))

    def test_murmurDefaultSeed(self) -> None:
        """
        Without a seed the extension uses libstdc++'s C{STD_HASH_SEED}.
        """
        if _keyhash is None:
            self.fail("pyenvoy.upstream._keyhash was not built")
        self.assertEqual(_keyhash.murmurHash2(b"foo"), 9631199822919835226)


class LookupTests(SynchronousTestCase):
    """
    L{ringEntry} and L{tableEntry}, in C and in Python.
    """

    def test_hashedPart(self) -> None:
        """
        Envoy's hashtag rule: between the first C{{} and the first C{}}
        after it, when that is not empty.
        """
        self.assertEqual(hashedPart(b"{user1000}.following"), b"user1000")
        self.assertEqual(hashedPart(b"foo{}{bar}"), b"foo{}{bar}")
        self.assertEqual(hashedPart(b"foo{{bar}}"), b"{bar")
        self.assertEqual(hashedPart(b"foo{bar}{zap}"), b"bar")
        self.assertEqual(hashedPart(b"a}b{c}"), b"c")
        self.assertEqual(hashedPart(b"a{b"), b"a{b")

    def test_ringMatchesDefinition(self) -> None:
        """
        For random rings and keys (tagged or not), each implementation
        returns the entry of the first hash at or after the key's hash.
        """
        rng = random.Random(7)
        for size in (1, 2, 3, 16, 1024):
            hashes = sorted(rng.getrandbits(64) for _ in range(size))
            packed = array.array("Q", hashes).tobytes()
            entries = [f"entry{i}" for i in range(size)]
            keys = TAGGED + [rng.randbytes(rng.randrange(40)) for _ in range(300)]
            for name, ringEntry, _ in IMPLEMENTATIONS:
                for tagging in (False, True):
                    for key in keys:
                        self.assertEqual(
                            ringEntry(packed, entries, tagging, key),
                            entries[expectedRingIndex(hashes, key, tagging)],
                            (name, size, tagging, key))

    def test_ringEdges(self) -> None:
        """
        A key hashing past the last entry wraps to the first; one exactly
        on an entry gets that entry.
        """
        for name, ringEntry, _ in IMPLEMENTATIONS:
            value = murmurHash2(b"k")
            below = array.array("Q", [value - 1]).tobytes()
            self.assertEqual(ringEntry(below, ["first"], False, b"k"), "first", name)
            ring = array.array("Q", [1, value, value + 1]).tobytes()
            self.assertEqual(ringEntry(ring, ["a", "b", "c"], False, b"k"), "b", name)
            self.assertEqual(ringEntry(ring, ["a", "b", "c"], True, b"k"), "b", name)

    def test_tableMatchesDefinition(self) -> None:
        """
        Each implementation returns C{entries[hash % len(entries)]}.
        """
        rng = random.Random(8)
        entries = list(range(65537))
        keys = TAGGED + [rng.randbytes(rng.randrange(40)) for _ in range(300)]
        for name, _, tableEntry in IMPLEMENTATIONS:
            for tagging in (False, True):
                for key in keys:
                    value = murmurHash2(hashedPart(key) if tagging else key)
                    self.assertEqual(tableEntry(entries, tagging, key), value % 65537,
                                     (name, tagging, key))

    def test_empty(self) -> None:
        """
        An empty ring or table has no entry: C{None}.
        """
        for name, ringEntry, tableEntry in IMPLEMENTATIONS:
            self.assertIsNone(ringEntry(b"", [], False, b"key"), name)
            self.assertIsNone(tableEntry([], True, b"key"), name)

    def test_badArguments(self) -> None:
        """
        A key that is not bytes, or entries that are not a list, or fewer
        entries than ring positions, raise (the filter's general path then
        answers the command).
        """
        ring = array.array("Q", [1, 2]).tobytes()
        for name, ringEntry, tableEntry in IMPLEMENTATIONS:
            self.assertRaises(TypeError, ringEntry, ring, [0, 1], False, "key")
            self.assertRaises(TypeError, tableEntry, [0, 1], False, "key")
            self.assertRaises(TypeError, ringEntry, ring, [0, 1], False, None)
            self.assertRaises(TypeError, tableEntry, (0, 1), False, b"key")
            # Any key but one hashing to 0 lands on position 1.
            wide = array.array("Q", [0, 2**64 - 1]).tobytes()
            self.assertRaises(IndexError, ringEntry, wide, [0], False, b"a")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=48), st.booleans())
    def test_implementationsAgree(self, key: bytes, tagging: bool) -> None:
        """
        C and Python give the same ring and table entries for any key.
        """
        if len(IMPLEMENTATIONS) < 2:
            self.fail("pyenvoy.upstream._keyhash was not built")
        ring = sorted(random.Random(len(key)).getrandbits(64) for _ in range(64))
        packed = array.array("Q", ring).tobytes()
        entries = list(range(64))
        results = {(ringEntry(packed, entries, tagging, key), tableEntry(entries, tagging, key))
                   for _, ringEntry, tableEntry in IMPLEMENTATIONS}
        self.assertEqual(len(results), 1)


class LoadBalancerKeyLookupTests(SynchronousTestCase):
    """
    A load balancer's C{keyLookup} lands every key on the host its
    C{chooseHost} gives for the key's MurmurHash2, as Envoy's redis_proxy
    picks it.
    """

    def check(self, lb: Any) -> None:
        rng = random.Random(9)
        keys = TAGGED + [b"key:%012d" % rng.randrange(100000) for _ in range(2000)]
        for tagging in (False, True):
            lookup, table = lb.keyLookup(tagging)
            for key in keys:
                value = murmurHash2(hashedPart(key) if tagging else key)
                self.assertIs(table[lookup(key)], lb.chooseHost(LoadBalancerContext(value)),
                              (tagging, key))

    def test_ringHash(self) -> None:
        """
        RING_HASH (the default xxHash ring, and a MurmurHash2 one).
        """
        self.check(RingHash(hosts(6379, 6380, 6381)))
        self.check(RingHash(hosts(6379, 6380, weights=[1, 3]),
                            RingHashLbConfig(64, hashFunction="MURMUR_HASH_2")))

    def test_maglev(self) -> None:
        """
        MAGLEV, with Envoy's default table and a small one.
        """
        self.check(Maglev(hosts(6379, 6380, 6381)))
        self.check(Maglev(hosts(6379, 6380), MaglevLbConfig(tableSize=7)))

    def test_pythonFallback(self) -> None:
        """
        Without the extension (its functions replaced by the Python ones,
        as when it was not built) the tables land every key alike.
        """
        self.patch(ring_hash, "ringEntry", pythonRingEntry)
        self.patch(maglev, "tableEntry", pythonTableEntry)
        self.check(RingHash(hosts(6379, 6380, 6381)))
        self.check(Maglev(hosts(6379, 6380), MaglevLbConfig(tableSize=7)))

    def test_emptyCluster(self) -> None:
        """
        No host: the lookup answers C{None}.
        """
        for lb in (RingHash([]), Maglev([])):
            lookup, table = lb.keyLookup(False)
            self.assertIsNone(lookup(b"key"))
            self.assertEqual(table, [])
