"""
The hashes Envoy's consistent-hash load balancers and filters use, bit
for bit: xxHash64 and libstdc++'s 64-bit MurmurHash2.

Filters compute a 64-bit key (L{hashKeyForString} for a source IP or a
configured key, L{murmurHash2} for a Redis key) and hand it to
C{ILoadBalancer.chooseHost} in a L{LoadBalancerContext}.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import socket
import struct
from dataclasses import dataclass
from typing import Any

import xxhash

_MASK = (1 << 64) - 1

#: The seed libstdc++'s C{std::hash<std::string>} passes to its 64-bit
#: MurmurHash2, and so Envoy's C{MurmurHash::STD_HASH_SEED}.
STD_HASH_SEED = 0xC70F6907

# MurmurHash2-64's multiplier (the "m" of Austin Appleby's MurmurHash64A).
_MUL = 0xC6A4A7935BD1E995

_WORDS = struct.Struct("<Q")


@dataclass(frozen=True)
class LoadBalancerContext:
    """
    What a filter tells the load balancer about the connection (or
    session, or request) it picks a host for.

    Any object with a C{hashKey} attribute will do; C{None} as a context
    means "no hash key".

    @ivar hashKey: a 64-bit hash the filter computed (from a source IP, a
        configured key, a Redis key, ...), or C{None}.  RING_HASH and MAGLEV
        send equal keys to the same host; without a key they pick at random,
        as Envoy does.  Other policies ignore it.
    """

    hashKey: int | None = None


def _asBytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def xxHash64(data: bytes | str, seed: int = 0) -> int:
    """
    XXH64 of C{data} (a C{str} is hashed as its UTF-8 bytes), as Envoy's
    C{HashUtil::xxHash64}.

    @return: an unsigned 64-bit integer.
    """
    return xxhash.xxh64_intdigest(_asBytes(data), seed)


def hashKeyForString(s: bytes | str) -> int:
    """
    The hash key Envoy computes for a string: xxHash64 with seed 0.  This is
    what C{hash_policy} C{source_ip} (of the address without port, e.g.
    C{"10.0.0.1"}) and udp_proxy's C{key} feed the load balancer.
    """
    return xxhash.xxh64_intdigest(_asBytes(s), 0)


def _shiftMix(v: int) -> int:
    return v ^ (v >> 47)


def _pythonMurmurHash2(data: bytes | str, seed: int = STD_HASH_SEED) -> int:
    """
    L{murmurHash2} in pure Python.

    Little-endian 8-byte words are each mixed (multiply, shift-xor,
    multiply) into a state seeded with C{seed ^ (len * m)}; the 1-7 tail
    bytes are folded in as one little-endian integer; two final mixes
    finish it.

    @return: an unsigned 64-bit integer.
    """
    buf = _asBytes(data)
    length = len(buf)
    aligned = length & ~7
    h = (seed ^ (length * _MUL)) & _MASK
    for (word,) in _WORDS.iter_unpack(buf[:aligned]):
        word = (_shiftMix((word * _MUL) & _MASK) * _MUL) & _MASK
        h = ((h ^ word) * _MUL) & _MASK
    if length & 7:
        tail = int.from_bytes(buf[aligned:], "little")
        h = ((h ^ tail) * _MUL) & _MASK
    h = (_shiftMix(h) * _MUL) & _MASK
    return _shiftMix(h)


def _libstdcxxHashBytes() -> Any:
    """
    libstdc++'s own C{std::_Hash_bytes} through ctypes, when it can be
    loaded: the very function L{murmurHash2} reproduces (and Envoy copies),
    about twice as fast as the Python version even with the call overhead.
    Only on 64-bit, where C{size_t} is the 64 bits the hash is defined on.
    """
    if ctypes.sizeof(ctypes.c_size_t) != 8:
        return None
    try:
        name = ctypes.util.find_library("stdc++")
        function = ctypes.CDLL(name or "libstdc++.so.6")._ZSt11_Hash_bytesPKvmm
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
    function.restype = ctypes.c_size_t
    if function(b"foo", 3, STD_HASH_SEED) != _pythonMurmurHash2(b"foo"):
        return None
    return function


#: libstdc++'s C{_Hash_bytes(data, len(data), seed)} or C{None}: what
#: L{murmurHash2} calls for bytes, for a hot path that has bytes already and
#: wants none of L{murmurHash2}'s argument handling.
nativeMurmurHash2: Any = _libstdcxxHashBytes()

try:
    # pyenvoy's own C extension (see key_lookup), when it was built.
    from pyenvoy.upstream._keyhash import murmurHash2 as _extensionMurmurHash2
except ImportError:
    _extensionMurmurHash2 = None


def murmurHash2(data: bytes | str, seed: int = STD_HASH_SEED) -> int:
    """
    The 64-bit MurmurHash2 of libstdc++'s C{_Hash_bytes}, which Envoy's
    C{MurmurHash::murmurHash2} reproduces: ring hash with
    C{hash_function: MURMUR_HASH_2} and redis_proxy's key hashing use it
    with the default seed.  Computed by pyenvoy's C extension for bytes
    when it was built, else by libstdc++ itself when it is loadable, else
    in Python (L{_pythonMurmurHash2}); all agree.

    @return: an unsigned 64-bit integer.
    """
    buf = _asBytes(data)
    if _extensionMurmurHash2 is not None and type(buf) is bytes:
        return _extensionMurmurHash2(buf, seed)  # type: ignore[no-any-return]
    if nativeMurmurHash2 is not None:
        return nativeMurmurHash2(buf, len(buf), seed)  # type: ignore[no-any-return]
    return _pythonMurmurHash2(buf, seed)


def canonicalAddress(host: str, port: int) -> str:
    """
    C{ip:port} (C{[ip]:port} for IPv6) with the IP written as Envoy writes
    it (C{inet_ntop}: lower case, zeros compressed), whatever spelling the
    config used.  A name that is not an IP is kept as it is.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        text = socket.inet_ntop(family, packed)
        return f"[{text}]:{port}" if family == socket.AF_INET6 else f"{text}:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hostHashKey(host: Any, useHostname: bool = False) -> str:
    """
    The string a consistent-hash load balancer hashes to place C{host}:
    its address as Envoy prints it (C{"10.0.0.1:6379"}), or its hostname
    with C{useHostname}.
    """
    if useHostname:
        return str(host.hostname)
    address, port = host.address
    return canonicalAddress(address, port)
