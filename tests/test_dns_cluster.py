"""
STRICT_DNS and LOGICAL_DNS clusters on a memory reactor with a scripted
resolver: hosts follow the answers, re-resolved every dns_refresh_rate.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pyenvoy.config import parse
from pyenvoy.stats import Store
from pyenvoy.upstream.cluster import Cluster


@implementer(IHostnameResolver)
class ScriptedResolver:
    """
    Answers every lookup with the addresses in C{self.answer} (IP strings).
    """

    def __init__(self) -> None:
        self.answer: list[str] = []
        self.lookups = 0

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.lookups += 1
        receiver.resolutionBegan(None)
        for ip in self.answer:
            kind = IPv6Address if ":" in ip else IPv4Address
            if addressTypes is None or kind in addressTypes:
                receiver.addressResolved(kind("TCP", ip, portNumber))
        receiver.resolutionComplete()
        return None


def dnsCluster(kind: str, **extra: Any) -> tuple[Cluster, ScriptedResolver, MemoryReactorClock]:
    """
    A started cluster of C{kind} for 'backend.example:5000'.
    """
    raw = {"static_resources": {"clusters": [dict({
        "name": "dns", "type": kind, "dns_refresh_rate": "2s",
        "load_assignment": {"cluster_name": "dns", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "backend.example", "port_value": 5000}}}}]}]},
    }, **extra)]}}
    reactor = MemoryReactorClock()
    resolver = ScriptedResolver()
    reactor.installNameResolver(resolver)
    cluster = Cluster(parse(raw).clusters["dns"], Store(), reactor)
    return cluster, resolver, reactor


class DnsClusterTests(SynchronousTestCase):
    """
    Hosts come from DNS and are refreshed.
    """

    def test_strictDnsUsesEveryAddressAndRefreshes(self) -> None:
        """
        Every resolved address is a host; after dns_refresh_rate the new
        answer replaces them and membership_change is counted.
        """
        cluster, resolver, reactor = dnsCluster("STRICT_DNS")
        resolver.answer = ["10.0.0.1", "10.0.0.2"]
        cluster.start()
        self.assertEqual([h.address for h in cluster.hosts],
                         [("10.0.0.1", 5000), ("10.0.0.2", 5000)])
        resolver.answer = ["10.0.0.3"]
        reactor.advance(1.9)
        self.assertEqual(len(cluster.hosts), 2)
        reactor.advance(0.1)
        self.assertEqual([h.address for h in cluster.hosts], [("10.0.0.3", 5000)])
        self.assertEqual(resolver.lookups, 2)
        self.assertEqual(cluster.stats.membership_change.value, 2)
        self.assertEqual(cluster.stats.update_success.value, 2)
        cluster.stop()

    def test_unchangedAnswerKeepsHostStats(self) -> None:
        """
        The same answer again keeps the same Host objects (and their stats)
        and counts update_no_rebuild.
        """
        cluster, resolver, reactor = dnsCluster("STRICT_DNS")
        resolver.answer = ["10.0.0.1"]
        cluster.start()
        host = cluster.hosts[0]
        host.stats.cx_total = 7
        reactor.advance(2)
        self.assertIs(cluster.hosts[0], host)
        self.assertEqual(cluster.stats.update_no_rebuild.value, 1)
        # As Envoy 1.40: every resolution's hosts are matched again.
        self.assertEqual(cluster.stats.default_total_match_count.value, 2)
        cluster.stop()

    def test_logicalDnsUsesFirstAddressOnly(self) -> None:
        """
        LOGICAL_DNS keeps only the first address of the answer.
        """
        cluster, resolver, reactor = dnsCluster("LOGICAL_DNS")
        resolver.answer = ["10.0.0.9", "10.0.0.8"]
        cluster.start()
        self.assertEqual([h.address for h in cluster.hosts], [("10.0.0.9", 5000)])
        cluster.stop()

    def test_autoPrefersIpv6(self) -> None:
        """
        dns_lookup_family AUTO uses the IPv6 answers when there are any.
        """
        cluster, resolver, reactor = dnsCluster("STRICT_DNS")
        resolver.answer = ["10.0.0.1", "fd00::1"]
        cluster.start()
        self.assertEqual([h.address for h in cluster.hosts], [("fd00::1", 5000)])
        cluster.stop()

    def test_v4OnlyAsksForIpv4(self) -> None:
        """
        dns_lookup_family V4_ONLY drops IPv6 answers.
        """
        cluster, resolver, reactor = dnsCluster("STRICT_DNS", dns_lookup_family="V4_ONLY")
        resolver.answer = ["10.0.0.1", "fd00::1"]
        cluster.start()
        self.assertEqual([h.address for h in cluster.hosts], [("10.0.0.1", 5000)])
        cluster.stop()

    def test_emptyAnswerLeavesNoHosts(self) -> None:
        """
        A name that resolves to nothing leaves no hosts and counts update_empty.
        """
        cluster, resolver, reactor = dnsCluster("STRICT_DNS")
        cluster.start()
        self.assertEqual(cluster.hosts, [])
        self.assertEqual(cluster.stats.update_empty.value, 1)
        self.assertIsNone(cluster.lb.chooseHost(None))
        cluster.stop()
