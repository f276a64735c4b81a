"""
Load balancers: round robin, random, least request, ring hash and
Maglev, as Envoy's C{lb_policy} names them.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from zope.interface import implementer

from pyenvoy.config.bootstrap import MaglevLbConfig, RingHashLbConfig
from pyenvoy.interfaces import ILoadBalancer
from pyenvoy.upstream.hashing import LoadBalancerContext, hostHashKey
from pyenvoy.upstream.host import Host
from pyenvoy.upstream.maglev import MaglevTable
from pyenvoy.upstream.ring_hash import Ring

__all__ = ["DEFAULT_PANIC_THRESHOLD", "LeastRequest", "LoadBalancerContext", "Maglev", "Random",
           "RingHash", "RoundRobin", "inPanic", "makeLoadBalancer"]

_MASK64 = (1 << 64) - 1


#: Envoy's default C{common_lb_config.healthy_panic_threshold} (percent).
DEFAULT_PANIC_THRESHOLD = 50


def _healthy(hosts: Sequence[Host]) -> list[Host]:
    return [h for h in hosts if h.healthy]


def inPanic(hosts: Sequence[Host], threshold: float) -> bool:
    """
    Whether a host set is in Envoy's panic mode, where the load balancer
    uses every host because too few are healthy.

    As Envoy's C{LoadBalancerBase} (one priority level): the level's
    availability is C{min(100, 140 * healthy // total)} (the default
    overprovisioning factor of 1.4); at 100 there is no panic; below it,
    panic when the healthy percentage is under C{threshold}.  A threshold
    of 0 disables panic mode; an empty set is never in panic.
    """
    total = len(hosts)
    if total == 0 or threshold <= 0:
        return False
    healthy = sum(1 for h in hosts if h.healthy)
    if min(100, 140 * healthy // total) >= 100:
        return False
    return 100.0 * healthy / total < threshold


class _HealthAware:
    """
    What every load balancer shares about health: the host set, and
    whether it is in panic mode (re-evaluated by L{refresh}, which the
    cluster calls whenever membership or a host's health changes).

    Outside panic, only healthy hosts are picked (health is read at pick
    time, so a host flipped without a refresh is still skipped); in
    panic, every host is, and C{cluster.<name>.lb_healthy_panic} counts
    each such pick.
    """

    _hosts: list[Host]
    panic = False
    panicThreshold: float = DEFAULT_PANIC_THRESHOLD
    _panicCounter: Any = None

    def _setPanic(self, threshold: float, scope: Any) -> None:
        self.panicThreshold = threshold
        self._panicCounter = scope.counter("lb_healthy_panic") if scope is not None else None

    def _evaluatePanic(self) -> None:
        self.panic = inPanic(self._hosts, self.panicThreshold)

    def _candidates(self) -> list[Host]:
        if self.panic:
            if self._panicCounter is not None:
                self._panicCounter.inc()
            return self._hosts
        return _healthy(self._hosts)


@implementer(ILoadBalancer)
class RoundRobin(_HealthAware):
    """
    Weighted round robin (smooth: hosts of weight 2 come up twice as
    often, interleaved rather than in bursts).
    """

    def __init__(self, hosts: Sequence[Host], panicThreshold: float = DEFAULT_PANIC_THRESHOLD,
                 scope: Any = None) -> None:
        self._setPanic(panicThreshold, scope)
        self._next = 0
        self._current: dict[int, int] = {}
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.  The rotation goes on where it was, as
        Envoy's never resets its index: a DNS cluster gets its host list
        again on every refresh, which must not send the next pick back to
        the first host.
        """
        self._hosts = list(hosts)
        current = self._current
        self._current = {id(h): current.get(id(h), 0) for h in self._hosts}
        self._uniform = len({h.weight for h in self._hosts}) <= 1
        self.refresh()

    def refresh(self) -> None:
        """
        Hosts' health changed: re-evaluate panic mode.
        """
        self._evaluatePanic()

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = self._candidates()
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
class Random(_HealthAware):
    """
    Weighted random choice.
    """

    def __init__(self, hosts: Sequence[Host], rng: random.Random | None = None,
                 panicThreshold: float = DEFAULT_PANIC_THRESHOLD, scope: Any = None) -> None:
        self._rng = rng or random.Random()
        self._setPanic(panicThreshold, scope)
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.
        """
        self._hosts = list(hosts)
        self.refresh()

    def refresh(self) -> None:
        """
        Hosts' health changed: re-evaluate panic mode.
        """
        self._evaluatePanic()

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = self._candidates()
        if not hosts:
            return None
        return self._rng.choices(hosts, weights=[h.weight for h in hosts])[0]


@implementer(ILoadBalancer)
class LeastRequest(_HealthAware):
    """
    Envoy's least request: with equal weights, pick C{choiceCount} hosts
    at random and take the one with fewest active requests; with unequal
    weights, weighted random scaled down by active requests.
    """

    def __init__(self, hosts: Sequence[Host], choiceCount: int = 2,
                 rng: random.Random | None = None,
                 panicThreshold: float = DEFAULT_PANIC_THRESHOLD, scope: Any = None) -> None:
        self._rng = rng or random.Random()
        self.choiceCount = choiceCount
        self._setPanic(panicThreshold, scope)
        self.setHosts(hosts)

    def setHosts(self, hosts: Sequence[Host]) -> None:
        """
        Take a new host set.
        """
        self._hosts = list(hosts)
        self.refresh()

    def refresh(self) -> None:
        """
        Hosts' health changed: re-evaluate panic mode.
        """
        self._evaluatePanic()

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}.
        """
        hosts = self._candidates()
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


class _ConsistentHash(_HealthAware):
    """
    What RING_HASH and MAGLEV share, as Envoy's thread-aware load balancer:
    a table built from the healthy hosts (all hosts in panic mode) and
    their normalized weights, rebuilt when the hosts or their health
    change, looked up with the context's C{hashKey} (a random 64-bit value
    when there is none).
    """

    def __init__(self, hosts: Sequence[Host], rng: random.Random | None,
                 scope: Any, useHostname: bool,
                 panicThreshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self._rng = rng or random.Random()
        self._scope = scope
        self.useHostname = useHostname
        self._setPanic(panicThreshold, scope)
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
        Rebuild the table if the hosts it is built from changed: the
        cluster calls this when membership or a host's health changes.
        (C{chooseHost} also rebuilds when it lands on a host that has
        turned unhealthy without a refresh.)  As Envoy, the table holds
        the healthy hosts, or every host in panic mode.
        """
        self._evaluatePanic()
        healthy = list(self._hosts) if self.panic else [h for h in self._hosts if h.healthy]
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

    def keyLookup(self, hashtagging: bool) -> tuple[Callable[[bytes], int | None], list[Host]]:
        """
        The current table's lookup of a Redis key (bytes) as a function
        to an index in the list of hosts that comes with it (C{None} for
        an empty table): L{chooseHost} with the key's MurmurHash2 (of its
        C{{hashtag}} with C{hashtagging}), without the health check and
        panic counting, in one C call (L{pyenvoy.upstream.key_lookup}).
        Valid until the table is rebuilt (L{builds} moves).
        """
        return self._table.keyLookup(hashtagging)  # type: ignore[no-any-return]

    def chooseHost(self, context: Any) -> Host | None:
        """
        See L{ILoadBalancer.chooseHost}: the host for C{context.hashKey},
        or a random one without a key.
        """
        key = getattr(context, "hashKey", None) if context is not None else None
        h = self._rng.getrandbits(64) if key is None else key & _MASK64
        host = self._table.chooseHost(h)
        if host is not None and not host.healthy and not self.panic:
            self.refresh()
            host = self._table.chooseHost(h)
        if self.panic and host is not None and self._panicCounter is not None:
            self._panicCounter.inc()
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
                 useHostname: bool = False,
                 panicThreshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self.config = config or RingHashLbConfig()
        if scope is not None:
            ring = scope.scope("ring_hash_lb")
            self._gauges = (ring.gauge("size"), ring.gauge("min_hashes_per_host"),
                            ring.gauge("max_hashes_per_host"))
        super().__init__(hosts, rng, scope, useHostname, panicThreshold)

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
                 useHostname: bool = False,
                 panicThreshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self.config = config or MaglevLbConfig()
        if scope is not None:
            maglev = scope.scope("maglev_lb")
            self._gauges = (maglev.gauge("min_entries_per_host"),
                            maglev.gauge("max_entries_per_host"))
        super().__init__(hosts, rng, scope, useHostname, panicThreshold)

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
                     scope: Any = None,
                     panicThreshold: float = DEFAULT_PANIC_THRESHOLD) -> Any:
    """
    The load balancer for an C{lb_policy} name.

    @param ringHash: C{ring_hash_lb_config}, for RING_HASH.
    @param maglev: C{maglev_lb_config}, for MAGLEV.
    @param useHostname: place hosts by hostname rather than address
        (C{use_hostname_for_hashing}), for RING_HASH and MAGLEV.
    @param scope: the cluster's stats scope (C{cluster.<name>}), where the
        hash load balancers keep Envoy's C{ring_hash_lb.*} /
        C{maglev_lb.*} gauges and every load balancer counts
        C{lb_healthy_panic}.
    @param panicThreshold: C{common_lb_config.healthy_panic_threshold}
        in percent (see L{inPanic}).
    """
    t = panicThreshold
    if policy == "RANDOM":
        return Random(hosts, panicThreshold=t, scope=scope)
    if policy == "LEAST_REQUEST":
        return LeastRequest(hosts, choiceCount, panicThreshold=t, scope=scope)
    if policy == "RING_HASH":
        return RingHash(hosts, ringHash, scope=scope, useHostname=useHostname, panicThreshold=t)
    if policy == "MAGLEV":
        return Maglev(hosts, maglev, scope=scope, useHostname=useHostname, panicThreshold=t)
    return RoundRobin(hosts, panicThreshold=t, scope=scope)
