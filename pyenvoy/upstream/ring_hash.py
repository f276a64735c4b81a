"""
Envoy's ketama hash ring (C{lb_policy: RING_HASH}), built entry for entry
as Envoy builds it, so a key lands on the host Envoy would pick.
"""

from __future__ import annotations

import array
import bisect
import math
from functools import partial
from typing import Any, Callable, Sequence

from pyenvoy.config.bootstrap import DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE
from pyenvoy.upstream.hashing import hostHashKey, murmurHash2, xxHash64
from pyenvoy.upstream.key_lookup import ringEntry

_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1


class Ring:
    """
    A sorted ring of C{(hash, host)} entries for one set of hosts.

    Each host gets entries at the hashes of C{"<address>_0"},
    C{"<address>_1"}, ...  Their number follows Envoy: with normalized
    weights C{w} (summing to 1) and C{minW} the smallest,
    C{scale = min(ceil(minW * minimumRingSize) / minW, maximumRingSize)};
    walking the hosts in order, a running target grows by C{scale * w}
    and entries are added while the running count is below it, so the
    lightest host gets a whole number of entries and the ring has
    C{ceil(scale)} of them in all.  A key goes to the first entry whose
    hash is at least the key, wrapping to the first entry.

    @ivar size: C{ceil(scale)}, Envoy's C{ring_hash_lb.size}.
    @ivar minHashesPerHost: the fewest entries a host got
        (C{ring_hash_lb.min_hashes_per_host}).
    @ivar maxHashesPerHost: the most entries a host got
        (C{ring_hash_lb.max_hashes_per_host}).
    """

    def __init__(self, weightedHosts: Sequence[tuple[Any, float]], minNormalizedWeight: float,
                 minimumRingSize: int = DEFAULT_MIN_RING_SIZE,
                 maximumRingSize: int = DEFAULT_MAX_RING_SIZE,
                 hashFunction: str = "XX_HASH", useHostname: bool = False) -> None:
        """
        @param weightedHosts: C{(host, normalizedWeight)} pairs in host-set
            order; the weights sum to 1.
        @param minNormalizedWeight: the smallest of those weights.
        @param hashFunction: C{"XX_HASH"} or C{"MURMUR_HASH_2"}.
        @param useHostname: hash host names instead of addresses.
        """
        self.hosts: list[Any] = []
        self.hashes: list[int] = []
        self._owners: list[int] = []
        self.size = 0
        self.minHashesPerHost = 0
        self.maxHashesPerHost = 0
        if not weightedHosts:
            return
        hashOf = murmurHash2 if hashFunction == "MURMUR_HASH_2" else xxHash64
        scale = min(math.ceil(minNormalizedWeight * minimumRingSize) / minNormalizedWeight,
                    float(maximumRingSize))
        self.size = math.ceil(scale)
        packed: list[int] = []
        current = 0.0
        target = 0.0
        fewest = self.size
        most = 0
        for index, (host, weight) in enumerate(weightedHosts):
            prefix = hostHashKey(host, useHostname).encode("utf-8") + b"_"
            target += scale * weight
            count = 0
            while current < target:
                value = hashOf(prefix + str(count).encode("ascii"))
                packed.append((value << _INDEX_BITS) | index)
                count += 1
                current += 1
            fewest = min(fewest, count)
            most = max(most, count)
            self.hosts.append(host)
        packed.sort()
        self.hashes = [p >> _INDEX_BITS for p in packed]
        self._owners = [p & _INDEX_MASK for p in packed]
        self.minHashesPerHost = fewest
        self.maxHashesPerHost = most

    def __len__(self) -> int:
        return len(self.hashes)

    def entries(self) -> list[tuple[int, Any]]:
        """
        The ring as sorted C{(hash, host)} pairs (for tests and debugging).
        """
        return [(h, self.hosts[o]) for h, o in zip(self.hashes, self._owners)]

    def keyLookup(self, hashtagging: bool) -> tuple[Callable[[bytes], int | None], list[Any]]:
        """
        A function from a Redis key to the index in L{hosts} of the host
        L{chooseHost} gives for the key's MurmurHash2, and L{hosts}.
        """
        packed = array.array("Q", self.hashes).tobytes()
        return partial(ringEntry, packed, self._owners, hashtagging), self.hosts

    def chooseHost(self, hashKey: int) -> Any:
        """
        The host of the first entry at or after C{hashKey} (an unsigned
        64-bit integer), wrapping around; C{None} on an empty ring.
        """
        hashes = self.hashes
        if not hashes:
            return None
        i = bisect.bisect_left(hashes, hashKey)
        if i == len(hashes):
            i = 0
        return self.hosts[self._owners[i]]
