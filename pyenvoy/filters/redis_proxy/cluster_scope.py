"""
Envoy's cluster-scope Redis commands (added to Envoy in 2025): SCRIPT,
SLOWLOG, CONFIG, INFO, INFO.SHARD, CLUSTER, RANDOMKEY and ROLE.

Each is planned here as Envoy's command splitter plans it: sent unchanged
to every shard and the replies combined (SCRIPT, SLOWLOG, CONFIG, INFO,
ROLE), sent to one shard and its reply passed on (CLUSTER, RANDOMKEY,
INFO.SHARD), or refused by the proxy with Envoy's error.  The combining
rules and error strings are Envoy 1.40's (checked against its binary).

What differs: pyenvoy's shards are every host of the route's cluster.
Envoy finds its shards by asking the load balancer for hash keys 0 to
16383, which does not reach every host (on a RING_HASH ring they all land
on the ring's first host), so Envoy sends these commands to fewer hosts
(docs/redis_proxy.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from pyenvoy.filters.redis_proxy.info import aggregateInfo, infoSection

#: A combination of the shards' replies: the client's reply and whether
#: it counts as a success.
Combine = Callable[[list[bytes]], tuple[bytes, bool]]

UNSUPPORTED = b"-ERR unsupported cluster scope command or invalid arguments\r\n"
NOT_SAME = b"-all responses not same\r\n"
NOT_AN_ARRAY = b"-non-array response received from shard\r\n"
NOT_AN_INTEGER = b"-non-integer response received from shard\r\n"
NEGATIVE = b"-negative value received from upstream\r\n"
#: CLUSTER subcommands Envoy passes to one shard (1.40 also has SHARDS).
CLUSTER_SUBCOMMANDS = frozenset((b"info", b"slots", b"keyslot", b"nodes", b"shards"))


def _firstError(parts: list[bytes]) -> bytes | None:
    for raw in parts:
        if raw[:1] == b"-":
            return raw
    return None


def combineSame(parts: list[bytes]) -> tuple[bytes, bool]:
    """
    Every shard must have answered the same: that answer.
    """
    error = _firstError(parts)
    if error is not None:
        return error, False
    if any(raw != parts[0] for raw in parts):
        return NOT_SAME, False
    return parts[0], True


def concatenateArrays(arrays: list[bytes]) -> bytes:
    """
    RESP arrays (a null one counts as empty) as one array of all their
    elements.
    """
    total = 0
    bodies = []
    for raw in arrays:
        eol = raw.index(b"\r\n")
        count = int(raw[1:eol])
        if count > 0:
            total += count
            bodies.append(raw[eol + 2:])
    return b"*%d\r\n" % total + b"".join(bodies)


def combineArrays(parts: list[bytes]) -> tuple[bytes, bool]:
    """
    The shards' arrays as one (CONFIG GET, SLOWLOG GET).
    """
    error = _firstError(parts)
    if error is not None:
        return error, False
    if any(raw[:1] != b"*" for raw in parts):
        return NOT_AN_ARRAY, False
    return concatenateArrays(parts), True


def combineIntegers(parts: list[bytes]) -> tuple[bytes, bool]:
    """
    The shards' integers summed (SLOWLOG LEN).
    """
    error = _firstError(parts)
    if error is not None:
        return error, False
    total = 0
    for raw in parts:
        if raw[:1] != b":":
            return NOT_AN_INTEGER, False
        value = int(raw[1:-2])
        if value < 0:
            return NEGATIVE, False
        total += value
    return b":%d\r\n" % total, True


def combineEach(parts: list[bytes]) -> tuple[bytes, bool]:
    """
    Each shard's reply as one element of an array (ROLE).
    """
    error = _firstError(parts)
    if error is not None:
        return error, False
    return b"*%d\r\n" % len(parts) + b"".join(parts), True


def _infoCombine(request: list[bytes]) -> Combine:
    section = infoSection(request)

    def combine(parts: list[bytes]) -> tuple[bytes, bool]:
        reply = aggregateInfo(parts, section)
        return reply, reply[:1] != b"-"

    return combine


@dataclass(frozen=True)
class Plan:
    """
    What to do with one cluster-scope command.

    @ivar reply: the proxy's own (error) reply, when the command goes
        nowhere.
    @ivar combine: for a command sent to every shard, how their replies
        become one.
    @ivar shard: for a command sent to one shard, its index.
    @ivar upstream: the request to send (the client's, but for INFO.SHARD).
    """

    reply: bytes | None = None
    combine: Combine | None = None
    shard: int | None = None
    upstream: list[bytes] | None = None


def plan(name: str, request: list[bytes], shards: int,
         choose: Callable[[int], int] = random.randrange) -> Plan:
    """
    Envoy's plan for the cluster-scope command C{name} (lower case), sent
    as C{request}, over C{shards} shards (at least one).  C{choose(n)}
    picks the shard of a command that goes to a random one.
    """
    sub = request[1].lower() if len(request) > 1 else b""
    if name == "script":
        return Plan(combine=combineSame)
    if name == "role":
        return Plan(combine=combineEach)
    if name == "info":
        return Plan(combine=_infoCombine(request))
    if name == "slowlog":
        combine = {b"get": combineArrays, b"len": combineIntegers,
                   b"reset": combineSame}.get(sub)
        return Plan(combine=combine) if combine is not None else Plan(reply=UNSUPPORTED)
    if name == "config":
        if sub == b"get":
            return Plan(combine=combineArrays)
        if sub in (b"set", b"resetstat", b"rewrite"):
            return Plan(combine=combineSame)
        return Plan(reply=UNSUPPORTED)
    if name == "cluster":
        if sub not in CLUSTER_SUBCOMMANDS:
            return Plan(reply=b"-ERR cluster subcommand '" + sub + b"' is not supported\r\n")
        return Plan(shard=choose(shards), upstream=request)
    if name == "randomkey":
        return Plan(shard=choose(shards), upstream=request)
    # INFO.SHARD <index> [section]: INFO [section] on that shard.
    if len(request) > 3:
        return Plan(reply=b"-wrong number of arguments for '" + request[0] + b"' command\r\n")
    try:
        index = int(request[1])
    except ValueError:
        index = -1
    if not 0 <= index <= 0xFFFF or not request[1].isdigit():
        return Plan(reply=b"-ERR invalid shard_id - must be a numeric shard index\r\n")
    if index >= shards:
        return Plan(reply=b"-ERR shard_id %d out of range (0-%d)\r\n" % (index, shards - 1))
    return Plan(shard=index, upstream=[b"INFO", *request[2:]])
