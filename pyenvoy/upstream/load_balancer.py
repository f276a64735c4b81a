"""
Load balancers: round robin, random, least request, ring hash and
Maglev, as Envoy's C{lb_policy} names them.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from zope.interface import implementer

from pyenvoy.config.bootstrap import MaglevLbConfig, RingHashLbConfig
from pyenvoy.interfaces import ILoadBalancer
from pyenvoy.upstream.hashing import LoadBalancerContext, hostHashKey
from pyenvoy.upstream.host import Host
from pyenvoy.upstream.maglev import MaglevTable
from pyenvoy.upstream.ring_hash import Ring

__all__ = ["LeastRequest", "LoadBalancerContext", "Maglev", "Random", "RingHash",
           "RoundRobin", "makeLoadBalancer"]

_MASK64 = (1 << 64) - 1


def _healthy(hosts: Sequence[Host]) -> list[Host]:
    return [h for h in hosts if h.healthy]


@implementer(ILoadBalancer)
class RoundRobin:
    """
    Weighted round robin (smooth: hosts of weight 2 come up twice as
    often, interleaved rather than in bursts).
    """

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.
        """
        self._hosts = list(hosts)
        self._current = {id(h): 0 for h in self._hosts}
        self._uniform = len({h.weight for h in self._hosts}) <= 1
        self._next = 0

    def refresh(self) -> None:
        """
        Hosts' health changed: nothing to rebuild, health is read at pick
        time.
        """

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = _healthy(self._hosts)
        if not hosts:
            return None
        if self._uniform:
            host = hosts[self._next % len(hosts)]
            self._next += 1
            return host
        total = 0
        best = None
        current = self._current
        for h in hosts:
            current[id(h)] += h.weight
            total += h.weight
            if best is None or current[id(h)] > current[id(best)]:
                best = h
        assert best is not None
        current[id(best)] -= total
        return best


@implementer(ILoadBalancer)
class Random:
    """
    Weighted random choice.
    """

    def __init__(self, hosts: Sequence[Host], rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.
        """
        self._hosts = list(hosts)

    def refresh(self) -> None:
        """
        Hosts' health changed: nothing to rebuild, health is read at pick
        time.
        """

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = _healthy(self._hosts)
        if not hosts:
            return None
        return self._rng.choices(hosts, weights=[h.weight for h in hosts])[0]


@implementer(ILoadBalancer)
class LeastRequest:
    """
    Envoy's least request: with equal weights, pick C{choiceCount} hosts
    at random and take the one with fewest active requests; with unequal
    weights, weighted random scaled down by active requests.
    """

    def __init__(self, hosts: Sequence[Host], choiceCount: int = 2,
                 rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.choiceCount = choiceCount
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.
        """
        self._hosts = list(hosts)

    def refresh(self) -> None:
        """
        Hosts' health changed: nothing to rebuild, health is read at pick
        time.
        """

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = _healthy(self._hosts)
        if not hosts:
            return None
        if len({h.weight for h in hosts}) <= 1:
            best = None
            for _ in range(self.choiceCount):
                candidate = self._rng.choice(hosts)
                if best is None or candidate.stats.rq_active < best.stats.rq_active:
                    best = candidate
            return best
        weights = [h.weight / (h.stats.rq_active + 1) for h in hosts]
        return self._rng.choices(hosts, weights=weights)[0]


class _ConsistentHash:
    """
    What RING_HASH and MAGLEV share, as Envoy's thread-aware load balancer:
    a table built from the healthy hosts and their normalized weights,
    rebuilt when the hosts or their health change, looked up with the
    context's C{hashKey} (a random 64-bit value when there is none).
    """

    def __init__(self, hosts: Sequence[Host], rng: random.Random | None,
                 scope: Any, useHostname: bool) -> None:
        self._rng = rng or random.Random()
        self._scope = scope
        self.useHostname = useHostname
        self._hosts: list[Host] = []
        self._signature: tuple[Any, ...] | None = None
        self._table: Any = None
        #: How many times the table was built (for tests and debugging).
        self.builds = 0
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set; the table is rebuilt if the healthy hosts, their
        weights or their keys changed.
        """
        self._hosts = list(hosts)
        self.refresh()

    def refresh(self) -> None:
        """
        Rebuild the table if the healthy hosts changed: a health checker
        calls this when a host's C{healthy} flips.  (C{chooseHost} also
        rebuilds when it lands on a host that has turned unhealthy.)
        """
        healthy = [h for h in self._hosts if h.healthy]
        signature = tuple((id(h), hostHashKey(h, self.useHostname), h.weight) for h in healthy)
        if signature == self._signature and self._table is not None:
            return
        self._signature = signature
        # Envoy's normalizeHostWeights: weight / sum, with the extremes.
        total = sum(h.weight for h in healthy)
        weighted = [(h, h.weight * 1.0 / total) for h in healthy]
        smallest = min((w for _, w in weighted), default=1.0)
        largest = max((w for _, w in weighted), default=0.0)
        self._table = self._build(weighted, smallest, largest)
        self.builds += 1

    def _build(self, weighted: list[tuple[Host, float]], smallest: float,
               largest: float) -> Any:
        raise NotImplementedError()

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}: the host for C{context.hashKey},
        or a random one without a key.
        """
        key = getattr(context, "hashKey", None) if context is not None else None
        h = self._rng.getrandbits(64) if key is None else key & _MASK64
        host = self._table.chooseHost(h)
        if host is not None and not host.healthy:
            self.refresh()
            host = self._table.chooseHost(h)
        return host


@implementer(ILoadBalancer)
class RingHash(_ConsistentHash):
    """
    Envoy's RING_HASH: a ketama ring (L{Ring}) of the healthy hosts.

    Stats, when given a cluster's stats scope: C{ring_hash_lb.size},
    C{ring_hash_lb.min_hashes_per_host}, C{ring_hash_lb.max_hashes_per_host}.
    """

    def __init__(self, hosts: Sequence[Host], config: RingHashLbConfig | None = None,
                 rng: random.Random | None = None, scope: Any = None,
                 useHostname: bool = False) -> None:
        self.config = config or RingHashLbConfig()
        if scope is not None:
            ring = scope.scope("ring_hash_lb")
            self._gauges = (ring.gauge("size"), ring.gauge("min_hashes_per_host"),
                            ring.gauge("max_hashes_per_host"))
        super().__init__(hosts, rng, scope, useHostname)

    @property
    def ring(self) -> Ring:
        """
        The current ring.
        """
        return self._table

    def _build(self, weighted: list[tuple[Host, float]], smallest: float,
               largest: float) -> Ring:
        c = self.config
        ring = Ring(weighted, smallest, c.minimumRingSize, c.maximumRingSize, c.hashFunction,
                    self.useHostname)
        if self._scope is not None and weighted:
            size, fewest, most = self._gauges
            size.set(ring.size)
            fewest.set(ring.minHashesPerHost)
            most.set(ring.maxHashesPerHost)
        return ring


@implementer(ILoadBalancer)
class Maglev(_ConsistentHash):
    """
    Envoy's MAGLEV: a Maglev lookup table (L{MaglevTable}) of the healthy
    hosts.

    Stats, when given a cluster's stats scope:
    C{maglev_lb.min_entries_per_host}, C{maglev_lb.max_entries_per_host}.
    """

    def __init__(self, hosts: Sequence[Host], config: MaglevLbConfig | None = None,
                 rng: random.Random | None = None, scope: Any = None,
                 useHostname: bool = False) -> None:
        self.config = config or MaglevLbConfig()
        if scope is not None:
            maglev = scope.scope("maglev_lb")
            self._gauges = (maglev.gauge("min_entries_per_host"),
                            maglev.gauge("max_entries_per_host"))
        super().__init__(hosts, rng, scope, useHostname)

    @property
    def table(self) -> MaglevTable:
        """
        The current table.
        """
        return self._table

    def _build(self, weighted: list[tuple[Host, float]], smallest: float,
               largest: float) -> MaglevTable:
        table = MaglevTable(weighted, largest, self.config.tableSize, self.useHostname)
        if self._scope is not None and weighted:
            fewest, most = self._gauges
            fewest.set(table.minEntriesPerHost)
            most.set(table.maxEntriesPerHost)
        return table


def makeLoadBalancer(policy: str, hosts: Sequence[Host], choiceCount: int = 2, *,
                     ringHash: RingHashLbConfig | None = None,
                     maglev: MaglevLbConfig | None = None, useHostname: bool = False,
                     scope: Any = None) -> Any:
    """
    The load balancer for an C{lb_policy} name.

    @param ringHash: C{ring_hash_lb_config}, for RING_HASH.
    @param maglev: C{maglev_lb_config}, for MAGLEV.
    @param useHostname: place hosts by hostname rather than address
        (C{use_hostname_for_hashing}), for RING_HASH and MAGLEV.
    @param scope: the cluster's stats scope (C{cluster.<name>}), where the
        hash load balancers keep Envoy's C{ring_hash_lb.*} /
        C{maglev_lb.*} gauges.
    """
    if policy == "RANDOM":
        return Random(hosts)
    if policy == "LEAST_REQUEST":
        return LeastRequest(hosts, choiceCount)
    if policy == "RING_HASH":
        return RingHash(hosts, ringHash, scope=scope, useHostname=useHostname)
    if policy == "MAGLEV":
        return Maglev(hosts, maglev, scope=scope, useHostname=useHostname)
    return RoundRobin(hosts)
