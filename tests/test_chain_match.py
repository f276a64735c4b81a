"""
Tests for L{pyenvoy.network.chain_match}: Envoy's filter chain sieve and
the config checks on C{filter_chain_match}.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.config.reader import Problems, Section
from pyenvoy.network.chain_match import (
    ChainSelector,
    ConnectionFacts,
    FilterChainMatch,
    parseFilterChainMatch,
)
from pyenvoy.network.connection import unmapAddresses
from pyenvoy.stats import sanitizeName
from tests.support.net import Client, Echo, connect, listen, listenerPort, startServer, stat
from tests.support.net import tcpProxyConfig

L0 = "static_resources.listeners[0]"


def match(**raw: Any) -> FilterChainMatch:
    """
    Parse a C{filter_chain_match} mapping that must be valid.
    """
    problems = Problems()
    result = parseFilterChainMatch(Section(raw, "m", problems))
    problems.raiseIfAny()
    return result


def facts(local: tuple[str, int] = ("10.0.0.1", 443), remote: tuple[str, int] = ("10.9.9.9", 5555),
          **extra: Any) -> ConnectionFacts:
    """
    A connection to C{local} from C{remote}.
    """
    return ConnectionFacts(local=local, remote=remote, **extra)


def cidr(prefix: str, length: int) -> dict[str, Any]:
    """
    A C{CidrRange} mapping.
    """
    return {"address_prefix": prefix, "prefix_len": length}


class SelectorTests(SynchronousTestCase):
    """
    L{ChainSelector} follows Envoy's sieve, most specific first.
    """

    def select(self, chains: dict[str, dict[str, Any]], connection: ConnectionFacts,
               default: str | None = None) -> str | None:
        """
        The name of the chain picked among C{chains} (name → match).
        """
        selector = ChainSelector([(match(**m), name) for name, m in chains.items()], default)
        return selector.select(connection)

    def test_destinationPort(self) -> None:
        """
        An exact destination port beats a chain without one.
        """
        chains = {"any": {}, "443": {"destination_port": 443}}
        self.assertEqual(self.select(chains, facts()), "443")
        self.assertEqual(self.select(chains, facts(local=("10.0.0.1", 80))), "any")

    def test_noBacktrackingFromPort(self) -> None:
        """
        A chain naming the port that then fails sends the connection to the
        default chain, never to a port-less chain.
        """
        chains = {"any": {}, "443tls": {"destination_port": 443, "transport_protocol": "tls"}}
        self.assertEqual(self.select(chains, facts(), default="default"), "default")
        self.assertIsNone(self.select(chains, facts()))

    def test_noBacktrackingFromServerName(self) -> None:
        """
        A matching server name wins even if its chain then fails on transport.
        """
        chains = {"any": {}, "sni": {"server_names": ["a.test"], "transport_protocol": "tls"}}
        connection = facts(serverName="a.test", transportProtocol="raw_buffer")
        self.assertIsNone(self.select(chains, connection))

    def test_prefixRanges(self) -> None:
        """
        The longest destination prefix wins; no range is 0.0.0.0/0.
        """
        chains = {"any": {}, "ten": {"prefix_ranges": [cidr("10.0.0.0", 8)]},
                  "narrow": {"prefix_ranges": [cidr("10.0.0.0", 24)]}}
        self.assertEqual(self.select(chains, facts()), "narrow")
        self.assertEqual(self.select(chains, facts(local=("10.1.0.1", 1))), "ten")
        self.assertEqual(self.select(chains, facts(local=("192.168.0.1", 1))), "any")
        self.assertEqual(self.select(chains, facts(local=("::1", 1))), "any")

    def test_serverNames(self) -> None:
        """
        Exact name, then the longest wildcard suffix, then chains without names.
        """
        chains = {"exact": {"server_names": ["www.example.com"]},
                  "wild": {"server_names": ["*.example.com"]},
                  "com": {"server_names": ["*.com"]}, "any": {}}
        self.assertEqual(self.select(chains, facts(serverName="www.example.com")), "exact")
        self.assertEqual(self.select(chains, facts(serverName="WWW.Example.com")), "exact")
        self.assertEqual(self.select(chains, facts(serverName="api.example.com")), "wild")
        self.assertEqual(self.select(chains, facts(serverName="a.b.example.com")), "wild")
        self.assertEqual(self.select(chains, facts(serverName="example.com")), "com")
        self.assertEqual(self.select(chains, facts(serverName="example.org")), "any")
        self.assertEqual(self.select(chains, facts()), "any")

    def test_serverNamesLowercased(self) -> None:
        """
        Configured names are lowercased.
        """
        self.assertEqual(match(server_names=["A.Test"]).serverNames, ("a.test",))

    def test_transportProtocol(self) -> None:
        """
        An exact transport protocol beats a chain without one.
        """
        chains = {"plain": {"transport_protocol": "raw_buffer"},
                  "tls": {"transport_protocol": "tls"}}
        self.assertEqual(self.select(chains, facts(transportProtocol="tls")), "tls")
        self.assertEqual(self.select(chains, facts()), "plain")

    def test_applicationProtocols(self) -> None:
        """
        The first client ALPN value some chain names wins.
        """
        chains = {"h2": {"application_protocols": ["h2"]},
                  "http1": {"application_protocols": ["http/1.1"]}, "any": {}}
        self.assertEqual(
            self.select(chains, facts(applicationProtocols=("http/1.1", "h2"))), "http1")
        self.assertEqual(self.select(chains, facts(applicationProtocols=("x", "h2"))), "h2")
        self.assertEqual(self.select(chains, facts(applicationProtocols=("x",))), "any")

    def test_directSourcePrefixRanges(self) -> None:
        """
        The direct source (the socket's peer) is matched by longest prefix.
        """
        chains = {"near": {"direct_source_prefix_ranges": [cidr("10.9.0.0", 16)]}}
        self.assertEqual(self.select(chains, facts()), "near")
        self.assertIsNone(self.select(chains, facts(remote=("11.0.0.1", 1))))

    def test_sourceType(self) -> None:
        """
        SAME_IP_OR_LOOPBACK and EXTERNAL beat ANY for the connections they fit.
        """
        chains = {"local": {"source_type": "SAME_IP_OR_LOOPBACK"},
                  "external": {"source_type": "EXTERNAL"}}
        self.assertEqual(self.select(chains, facts(remote=("127.0.0.1", 1))), "local")
        self.assertEqual(self.select(chains, facts(remote=("10.0.0.1", 1))), "local")
        self.assertEqual(self.select(chains, facts()), "external")
        onlyLocal = {"local": {"source_type": "SAME_IP_OR_LOOPBACK"}, "any": {}}
        self.assertEqual(self.select(onlyLocal, facts()), "any")

    def test_sourcePrefixRanges(self) -> None:
        """
        The client's address is matched by longest prefix.
        """
        chains = {"a": {"source_prefix_ranges": [cidr("10.9.9.0", 24)]},
                  "b": {"source_prefix_ranges": [cidr("10.0.0.0", 8)]}}
        self.assertEqual(self.select(chains, facts()), "a")
        self.assertEqual(self.select(chains, facts(remote=("10.1.1.1", 1))), "b")

    def test_sourcePorts(self) -> None:
        """
        An exact source port beats chains without source ports.
        """
        chains = {"port": {"source_ports": [5555, 6666]}, "any": {}}
        self.assertEqual(self.select(chains, facts()), "port")
        self.assertEqual(self.select(chains, facts(remote=("10.9.9.9", 1))), "any")

    def test_defaultChain(self) -> None:
        """
        The default chain takes what nothing matches.
        """
        chains = {"tls": {"transport_protocol": "tls"}}
        self.assertEqual(self.select(chains, facts(), default="default"), "default")


class ConfigTests(SynchronousTestCase):
    """
    C{filter_chain_match} in a bootstrap: accepted fields and Envoy's errors.
    """

    def bootstrap(self, *matches: dict[str, Any] | None) -> dict[str, Any]:
        """
        One listener with one echo chain per match.
        """
        chains = []
        for index, m in enumerate(matches):
            chain: dict[str, Any] = {"name": f"c{index}",
                                     "filters": [{"name": "envoy.filters.network.echo"}]}
            if m is not None:
                chain["filter_chain_match"] = m
            chains.append(chain)
        return {"static_resources": {"listeners": [{
            "name": "l", "filter_chains": chains,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}]}}

    def errors(self, *matches: dict[str, Any] | None) -> list[tuple[str, str]]:
        """
        The config errors of L{bootstrap}.
        """
        with self.assertRaises(ConfigErrors) as caught:
            parse(self.bootstrap(*matches))
        return [(e.path, e.message) for e in caught.exception.errors]

    def test_allFields(self) -> None:
        """
        Every supported field parses into the chain's match.
        """
        parsed = parse(self.bootstrap({
            "destination_port": 443, "prefix_ranges": [cidr("10.1.2.3", 8)],
            "server_names": ["a.test", "*.b.test"], "transport_protocol": "tls",
            "application_protocols": ["h2"], "source_type": "EXTERNAL",
            "direct_source_prefix_ranges": [cidr("::1", 128)],
            "source_prefix_ranges": [cidr("192.168.0.0", 16)], "source_ports": [1, 2]}))
        m = parsed.listeners[0].filterChains[0].match
        self.assertEqual(m.destinationPort, 443)
        self.assertEqual([str(n) for n in m.prefixRanges], ["10.0.0.0/8"])
        self.assertEqual(m.serverNames, ("a.test", "*.b.test"))
        self.assertEqual(m.sourceType, "EXTERNAL")
        self.assertEqual(m.sourcePorts, (1, 2))
        self.assertEqual([str(n) for n in m.directSourcePrefixRanges], ["::1/128"])

    def test_manyChains(self) -> None:
        """
        Several chains with different matches are accepted.
        """
        parsed = parse(self.bootstrap(None, {"transport_protocol": "tls"},
                                      {"server_names": ["a.test"]}))
        self.assertEqual(len(parsed.listeners[0].filterChains), 3)

    def test_sameRules(self) -> None:
        """
        Two chains with the same match are refused with Envoy's message.
        """
        self.assertIn(
            (f"{L0}", "filter chain 'c1' has the same matching rules defined as 'c0'"),
            [(p.rsplit(".", 1)[0], m) for p, m in self.errors(
                {"server_names": ["a.test"]}, {"server_names": ["a.test"]})])

    def test_overlapping(self) -> None:
        """
        Chains sharing one value of a repeated field overlap.
        """
        [(path, message)] = self.errors({"server_names": ["a.test", "b.test"]},
                                        {"server_names": ["b.test"]})
        self.assertIn("multiple filter chains with overlapping matching rules", message)

    def test_partialWildcard(self) -> None:
        """
        C{*w.example.com} is refused at load.
        """
        [(path, message)] = self.errors({"server_names": ["*w.example.com"]})
        self.assertEqual(path, f"{L0}.filter_chains[0].filter_chain_match.server_names[0]")
        self.assertIn("partial wildcards are not supported", message)

    def test_bareWildcard(self) -> None:
        """
        A bare C{*} is refused at load.
        """
        [(path, message)] = self.errors({"server_names": ["*"]})
        self.assertIn("'*' is not supported", message)

    def test_badCidr(self) -> None:
        """
        A prefix length longer than the address is refused.
        """
        [(path, message)] = self.errors({"prefix_ranges": [cidr("10.0.0.0", 33)]})
        self.assertIn("must be at most 32", message)

    def test_suffixUnsupported(self) -> None:
        """
        C{address_suffix} is refused as unimplemented, as in Envoy.
        """
        [(path, message)] = self.errors({"address_suffix": "1.2.3.4"})
        self.assertIn("not supported by pyenvoy yet", message)

    def test_badSourceType(self) -> None:
        """
        An unknown source_type is refused.
        """
        [(path, message)] = self.errors({"source_type": "LOCAL"})
        self.assertIn("expected one of ANY", message)


def _dualStack() -> bool:
    """
    Whether a socket bound to C{::} with the OS defaults takes IPv4
    connections on loopback (Linux C{bindv6only=0}) and C{::1} works.
    """
    try:
        server = socket.socket(socket.AF_INET6)
    except OSError:
        return False
    with server:
        try:
            server.bind(("::", 0))
            server.listen(2)
            port = server.getsockname()[1]
            for host in ("127.0.0.1", "::1"):
                with socket.create_connection((host, port), timeout=2):
                    pass
        except OSError:
            return False
    return True


class DualStackTests(TestCase):
    """
    On a C{::} listener an IPv4 client's addresses are IPv4, as Envoy
    records them on a socket that is not v6-only.
    """

    def test_unmapAddresses(self) -> None:
        """
        Only a v4-mapped local address turns the pair into IPv4.
        """
        self.assertEqual(unmapAddresses(("::ffff:10.1.2.3", 5), ("::ffff:127.0.0.1", 80)),
                         (("10.1.2.3", 5), ("127.0.0.1", 80)))
        self.assertEqual(unmapAddresses(("::ffff:10.1.2.3", 5), ("::1", 80)),
                         (("::ffff:10.1.2.3", 5), ("::1", 80)))
        self.assertEqual(unmapAddresses(("2001:db8::1", 5), ("2001:db8::2", 80)),
                         (("2001:db8::1", 5), ("2001:db8::2", 80)))

    async def test_ipv4ClientMatchesIpv4Ranges(self) -> None:
        """
        An IPv4 client of a C{::} listener matches IPv4 C{prefix_ranges}
        and C{source_prefix_ranges}; an IPv6 client on the same port does
        not, and counts C{no_filter_chain_match}.
        """
        if not _dualStack():
            raise SkipTest("no dual-stack IPv6 on loopback")
        raw = tcpProxyConfig([listen(self, Echo)])
        listener = raw["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["address"] = "::"
        listener["filter_chains"][0]["filter_chain_match"] = {
            "prefix_ranges": [cidr("127.0.0.0", 8)],
            "source_prefix_ranges": [cidr("127.0.0.0", 8)]}
        server = startServer(self, raw)
        port = listenerPort(server)
        noMatch = sanitizeName(server.context.listeners[0].listener.statRoot
                               + ".no_filter_chain_match")
        client = await connect(port)
        client.transport.write(b"ping")
        deadline = time.monotonic() + 5
        while (client.data() != b"ping" and not client.closed.called
               and time.monotonic() < deadline):
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client.data(), b"ping")
        self.assertEqual(stat(server, noMatch), 0)
        client.transport.loseConnection()
        await client.closed
        client6 = Client()
        await connectProtocol(TCP6ClientEndpoint(reactor, "::1", port), client6)
        deadline = time.monotonic() + 5
        while not client6.closed.called and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(client6.closed.called)
        self.assertEqual(stat(server, noMatch), 1)
