"""
Envoy's Maglev lookup table (C{lb_policy: MAGLEV}), filled slot for slot
as Envoy fills it, so a key lands on the host Envoy would pick.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

from pyenvoy.config.bootstrap import DEFAULT_MAGLEV_TABLE_SIZE, isPrime
from pyenvoy.upstream.hashing import hostHashKey, xxHash64
from pyenvoy.upstream.key_lookup import tableEntry


class MaglevTable:
    """
    A Maglev table (Eisenbud et al., NSDI 2016, pseudocode listing 1) of
    C{tableSize} slots, with Envoy's weighting.

    Hosts are taken in the byte order of their hash keys (C{"ip:port"}).
    Each host has a permutation of the slots: C{offset = xxHash64(key, 0)
    % M}, C{skip = xxHash64(key, 1) % (M - 1) + 1}, the j-th preference
    being C{(offset + j * skip) % M}.  Rounds go over the hosts in order;
    in round C{r} a host with normalized weight C{w} takes its next free
    preferred slot if C{r * w} has reached its target (which starts at 0
    and grows by the largest normalized weight with every slot it takes),
    so hosts fill slots in proportion to their weights.  A key goes to
    slot C{key % M}.

    @ivar table: the host of each slot.
    @ivar counts: how many slots each host got, by host, in table order.
    @ivar minEntriesPerHost: Envoy's C{maglev_lb.min_entries_per_host}.
    @ivar maxEntriesPerHost: Envoy's C{maglev_lb.max_entries_per_host}.
    """

    def __init__(self, weightedHosts: Sequence[tuple[Any, float]], maxNormalizedWeight: float,
                 tableSize: int = DEFAULT_MAGLEV_TABLE_SIZE, useHostname: bool = False) -> None:
        """
        @param weightedHosts: C{(host, normalizedWeight)} pairs; the weights
            sum to 1.
        @param maxNormalizedWeight: the largest of those weights.
        @param tableSize: a prime, the number of slots.
        @param useHostname: hash host names instead of addresses.

        @raise ValueError: if C{tableSize} is not prime.
        """
        if not isPrime(tableSize):
            raise ValueError(f"the Maglev table size must be a prime number, got {tableSize}")
        self.tableSize = tableSize
        self.table: list[Any] = []
        #: Each slot's index in L{_hosts}.
        self._slots: list[int] = []
        self._hosts: list[Any] = []
        self.counts: list[tuple[Any, int]] = []
        self.minEntriesPerHost = 0
        self.maxEntriesPerHost = 0
        if not weightedHosts:
            return
        keyed = sorted(
            ((hostHashKey(host, useHostname).encode("utf-8"), index, host, weight)
             for index, (host, weight) in enumerate(weightedHosts)),
            key=lambda entry: (entry[0], entry[1]))
        size = tableSize
        hosts = [entry[2] for entry in keyed]
        weights = [entry[3] for entry in keyed]
        offsets = [xxHash64(entry[0], 0) % size for entry in keyed]
        skips = [xxHash64(entry[0], 1) % (size - 1) + 1 for entry in keyed]
        # The next slot each host prefers: offset + next * skip, kept as a
        # running position rather than multiplied out.
        positions = list(offsets)
        targets = [0.0] * len(keyed)
        counts = [0] * len(keyed)
        slots: list[int] = [-1] * size
        filled = 0
        iteration = 1
        while filled < size:
            for i in range(len(keyed)):
                if filled >= size:
                    break
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += maxNormalizedWeight
                c = positions[i]
                skip = skips[i]
                while slots[c] >= 0:
                    c += skip
                    if c >= size:
                        c -= size
                slots[c] = i
                c += skip
                if c >= size:
                    c -= size
                positions[i] = c
                counts[i] += 1
                filled += 1
            iteration += 1
        self.table = [hosts[i] for i in slots]
        self._slots = slots
        self._hosts = hosts
        self.counts = list(zip(hosts, counts))
        self.minEntriesPerHost = min(counts)
        self.maxEntriesPerHost = max(counts)

    def keyLookup(self, hashtagging: bool) -> tuple[Callable[[bytes], int | None], list[Any]]:
        """
        A function from a Redis key to the index in the hosts that come
        with it of the host L{chooseHost} gives for the key's MurmurHash2.
        """
        return partial(tableEntry, self._slots, hashtagging), self._hosts

    def chooseHost(self, hashKey: int) -> Any:
        """
        The host in slot C{hashKey % tableSize}; C{None} for an empty table.
        """
        if not self.table:
            return None
        return self.table[hashKey % self.tableSize]
