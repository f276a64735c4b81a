"""
Load balancers: round robin, random and least request, as Envoy's
C{lb_policy} names them.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from zope.interface import implementer

from pyenvoy.interfaces import ILoadBalancer
from pyenvoy.upstream.host import Host


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


def makeLoadBalancer(policy: str, hosts: Sequence[Host], choiceCount: int = 2) -> Any:
    """
    The load balancer for an C{lb_policy} name.
    """
    if policy == "RANDOM":
        return Random(hosts)
    if policy == "LEAST_REQUEST":
        return LeastRequest(hosts, choiceCount)
    return RoundRobin(hosts)
