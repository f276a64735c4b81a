"""
A key's entry in a consistent-hash table in one call, as Envoy looks a
Redis key up: MurmurHash2 of the key (of its C{{hashtag}} with
hashtagging), then the ring's first position at or after it (wrapping
around) or the Maglev slot C{hash % size}.

redis_proxy does this for every command's key, so it is done by pyenvoy's
C extension (C{_keyhash.c}, about 0.1 us a key) when that was built.
Where it was not (no compiler at install time), the same functions run
here in Python, with the same answers and about ten times the cost;
L{ACCELERATED} says which.
"""

from __future__ import annotations

import bisect
from typing import Any

from pyenvoy.upstream.hashing import murmurHash2


def hashedPart(key: bytes) -> bytes:
    """
    What Envoy hashes of a key with hashtagging: the text between its
    first C{{} and the first C{}} after it, unless that is empty or
    missing (then the whole key).
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def _keyHash(entries: list[Any], key: bytes, hashtagging: Any) -> int:
    """
    The key's hash, with the argument checks of the C functions.
    """
    if type(entries) is not list:
        raise TypeError("the entries must be a list")
    if type(key) is not bytes:
        raise TypeError("the key must be bytes")
    return murmurHash2(hashedPart(key) if hashtagging else key)


def pythonRingEntry(hashes: bytes, entries: list[Any], hashtagging: Any, key: bytes) -> Any:
    """
    C{entries[i]} for the first ring position C{i} whose hash is at least
    the key's, wrapping to 0; C{hashes} holds the sorted ring hashes as
    native unsigned 64-bit integers.  C{None} for an empty ring.
    """
    ring = memoryview(hashes).cast("Q")
    hash = _keyHash(entries, key, hashtagging)
    if not len(ring):
        return None
    i = bisect.bisect_left(ring, hash)
    return entries[0 if i == len(ring) else i]


def pythonTableEntry(entries: list[Any], hashtagging: Any, key: bytes) -> Any:
    """
    A Maglev table's entry for the key: C{entries[hash % len(entries)]};
    C{None} for an empty table.
    """
    hash = _keyHash(entries, key, hashtagging)
    if not entries:
        return None
    return entries[hash % len(entries)]


try:
    from pyenvoy.upstream._keyhash import ringEntry, tableEntry
except ImportError:
    ringEntry, tableEntry = pythonRingEntry, pythonTableEntry
    #: Whether the C extension does the lookups.
    ACCELERATED = False
else:
    ACCELERATED = True
