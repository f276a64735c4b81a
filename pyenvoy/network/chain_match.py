"""
C{filter_chain_match}: read it, check a listener's chains, and pick a chain
for a connection the way Envoy does.

Selection is Envoy's sieve (C{FilterChainManagerImpl::findFilterChain}):
the criteria are tried in a fixed order, and at each step only the chains
with the I{most specific} value that matches survive.  There is no
backtracking: when the survivors of one step all fail a later one, the
result is the default chain (or none), never a less specific chain of an
earlier step.

Sans-I/O: no Twisted here; addresses come in as C{(host, port)} tuples.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from pyenvoy.config.reader import Section

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: C{FilterChainMatch.ConnectionSourceType} values.
SOURCE_TYPES = ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL")

_ANY_NETWORKS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class FilterChainMatch:
    """
    One chain's C{filter_chain_match}; empty fields match everything.

    @ivar destinationPort: 0 for any port.
    @ivar serverNames: lowercased; C{*.example.com} wildcards allowed.
    """

    destinationPort: int = 0
    prefixRanges: tuple[IPNetwork, ...] = ()
    serverNames: tuple[str, ...] = ()
    transportProtocol: str = ""
    applicationProtocols: tuple[str, ...] = ()
    directSourcePrefixRanges: tuple[IPNetwork, ...] = ()
    sourceType: str = "ANY"
    sourcePrefixRanges: tuple[IPNetwork, ...] = ()
    sourcePorts: tuple[int, ...] = ()

    def _normalized(self) -> tuple[Any, ...]:
        # Repeated fields compare as sets: Envoy hashes the whole message,
        # but order-only differences would still overlap on every leaf.
        return (self.destinationPort, frozenset(self.prefixRanges),
                frozenset(self.serverNames), self.transportProtocol,
                frozenset(self.applicationProtocols),
                frozenset(self.directSourcePrefixRanges), self.sourceType,
                frozenset(self.sourcePrefixRanges), frozenset(self.sourcePorts))

    def leaves(self) -> Any:
        """
        Every combination of values this match is filed under in Envoy's
        lookup tree; two chains sharing one overlap.
        """
        return itertools.product(
            (self.destinationPort,), self.prefixRanges or (None,),
            self.serverNames or ("",), (self.transportProtocol,),
            self.applicationProtocols or ("",), self.directSourcePrefixRanges or (None,),
            (self.sourceType,), self.sourcePrefixRanges or (None,),
            self.sourcePorts or (0,))


@dataclass(frozen=True)
class ConnectionFacts:
    """
    What chain selection looks at for one connection.

    @ivar local: C{(ip, port)} the client connected to.
    @ivar remote: C{(ip, port)} of the client.
    @ivar directRemote: the peer of the socket itself (the same as
        C{remote} until a PROXY-protocol filter exists).
    @ivar transportProtocol: from listener filters; C{raw_buffer} if none
        detected anything.
    """

    local: tuple[str, int] | None
    remote: tuple[str, int] | None
    serverName: str = ""
    transportProtocol: str = "raw_buffer"
    applicationProtocols: tuple[str, ...] = ()
    directRemote: tuple[str, int] | None = None


def parseCidrRanges(section: Section, name: str) -> tuple[IPNetwork, ...]:
    """
    Read a list of Envoy C{CidrRange}s (C{address_prefix}, C{prefix_len}).
    """
    out: list[IPNetwork] = []
    for sub in section.sections(name):
        prefix = sub.string("address_prefix", required=True)
        length = sub.uint32Value("prefix_len", 0)
        sub.finish()
        if prefix is None:
            continue
        try:
            address = ipaddress.ip_address(prefix)
        except ValueError:
            sub.error(f"malformed IP address: {prefix!r}", "address_prefix")
            continue
        length = length or 0
        if length > address.max_prefixlen:
            sub.error(f"must be at most {address.max_prefixlen} for {prefix!r}, got {length}",
                      "prefix_len")
            continue
        # Envoy's CidrRange keeps the network part only (10.1.2.3/8 is 10.0.0.0/8).
        out.append(ipaddress.ip_network(f"{prefix}/{length}", strict=False))
    return tuple(out)


def _serverNames(section: Section) -> tuple[str, ...]:
    out = []
    for item, path in section.items("server_names"):
        if not isinstance(item, str):
            section.problems.add(path, f"expected a string, got {item!r}")
            continue
        name = item.lower()
        if "*" in name and (not name.startswith("*.") or "*" in name[1:] or len(name) < 3):
            if name == "*":
                section.problems.add(path, "'*' is not supported in \"server_names\"; leave "
                                     "server_names out to match every name")
            else:
                section.problems.add(path, "partial wildcards are not supported in "
                                     "\"server_names\"")
            continue
        out.append(name)
    return tuple(out)


def parseFilterChainMatch(section: Section | None) -> FilterChainMatch:
    """
    Read a C{filter_chain_match} mapping (C{None}: match everything).
    """
    if section is None:
        return FilterChainMatch()
    port = section.uint32Value("destination_port", 0) or 0
    if port > 65535:
        section.error(f"must be at most 65535, got {port}", "destination_port")
        port = 0
    ports = []
    for item, path in section.items("source_ports"):
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
            section.problems.add(path, f"expected a port 1-65535, got {item!r}")
        else:
            ports.append(item)
    match = FilterChainMatch(
        destinationPort=port,
        prefixRanges=parseCidrRanges(section, "prefix_ranges"),
        serverNames=_serverNames(section),
        transportProtocol=section.string("transport_protocol", "") or "",
        applicationProtocols=tuple(section.strings("application_protocols")),
        directSourcePrefixRanges=parseCidrRanges(section, "direct_source_prefix_ranges"),
        sourceType=section.enum("source_type", SOURCE_TYPES, "ANY"),
        sourcePrefixRanges=parseCidrRanges(section, "source_prefix_ranges"),
        sourcePorts=tuple(ports),
    )
    section.finish(unsupported=("address_suffix", "suffix_len"))
    return match


def checkFilterChains(section: Section, chains: Sequence[tuple[str, FilterChainMatch]],
                      field: str = "filter_chains") -> None:
    """
    Report chains Envoy would refuse: two with the same rules, or two
    filed under the same leaf of the lookup tree.
    """
    seen: dict[tuple[Any, ...], str] = {}
    for name, match in chains:
        key = match._normalized()
        if key in seen:
            section.error(f"filter chain {name!r} has the same matching rules defined as "
                          f"{seen[key]!r}", field)
            return
        seen[key] = name
    leaves: dict[tuple[Any, ...], str] = {}
    for name, match in chains:
        for leaf in match.leaves():
            if leaf in leaves and leaves[leaf] != name:
                section.error("multiple filter chains with overlapping matching rules are "
                              f"defined ({leaves[leaf]!r} and {name!r})", field)
                return
            leaves[leaf] = name


T = TypeVar("T")
_Candidates = list[tuple[FilterChainMatch, Any]]


def _ip(address: tuple[str, int] | None) -> Any:
    if address is None:
        return None
    try:
        return ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return None


def _byPort(candidates: _Candidates, port: int | None,
            get: Callable[[FilterChainMatch], Sequence[int]]) -> _Candidates:
    if port is not None:
        exact = [c for c in candidates if port in get(c[0])]
        if exact:
            return exact
    return [c for c in candidates if not get(c[0])]


def _byPrefix(candidates: _Candidates, address: Any,
              get: Callable[[FilterChainMatch], Sequence[IPNetwork]]) -> _Candidates:
    # Longest prefix wins; a chain without ranges is 0.0.0.0/0 and ::/0.
    best: IPNetwork | None = None
    for match, _ in candidates:
        for network in get(match) or _ANY_NETWORKS:
            if address is None:
                contains = network.prefixlen == 0
            else:
                contains = network.version == address.version and address in network
            if contains and (best is None or network.prefixlen > best.prefixlen):
                best = network
    if best is None:
        return []
    return [c for c in candidates if best in (get(c[0]) or _ANY_NETWORKS)]


def _byServerName(candidates: _Candidates, serverName: str) -> _Candidates:
    if serverName:
        name = serverName.lower()
        wanted = [name]
        position = name.find(".", 1)
        while position != -1 and position < len(name) - 1:
            wanted.append("*" + name[position:])
            position = name.find(".", position + 1)
        for key in wanted:
            found = [c for c in candidates if key in c[0].serverNames]
            if found:
                return found
    return [c for c in candidates if not c[0].serverNames]


def _isSameIpOrLoopback(facts: ConnectionFacts) -> bool:
    remote = _ip(facts.remote)
    if remote is None:
        return False
    if remote.is_loopback or (remote.version == 6 and remote.ipv4_mapped is not None
                              and remote.ipv4_mapped.is_loopback):
        return True
    return remote == _ip(facts.local)


def _bySourceType(candidates: _Candidates, facts: ConnectionFacts) -> _Candidates:
    local = [c for c in candidates if c[0].sourceType == "SAME_IP_OR_LOOPBACK"]
    external = [c for c in candidates if c[0].sourceType == "EXTERNAL"]
    if local or external:
        if _isSameIpOrLoopback(facts):
            if local:
                return local
        elif external:
            return external
    return [c for c in candidates if c[0].sourceType == "ANY"]


class ChainSelector(Generic[T]):
    """
    Picks the chain for a connection among a listener's chains.
    """

    def __init__(self, chains: Sequence[tuple[FilterChainMatch, T]],
                 default: T | None = None) -> None:
        self.chains = list(chains)
        self.default = default

    def select(self, facts: ConnectionFacts) -> T | None:
        """
        The chain for C{facts}, the default chain when none matches, or
        C{None} when there is no default either.
        """
        found = self._sieve(facts)
        return found if found is not None else self.default

    def _sieve(self, facts: ConnectionFacts) -> T | None:
        localPort = facts.local[1] if facts.local is not None else None
        candidates = _byPort(self.chains, localPort, lambda m: (
            (m.destinationPort,) if m.destinationPort else ()))
        if not candidates:
            return None
        steps: list[Callable[[_Candidates], _Candidates]] = [
            lambda c: _byPrefix(c, _ip(facts.local), lambda m: m.prefixRanges),
            lambda c: _byServerName(c, facts.serverName),
            lambda c: ([x for x in c if x[0].transportProtocol == facts.transportProtocol]
                       or [x for x in c if not x[0].transportProtocol]),
            lambda c: self._byAlpn(c, facts.applicationProtocols),
            lambda c: _byPrefix(c, _ip(facts.directRemote or facts.remote),
                                lambda m: m.directSourcePrefixRanges),
            lambda c: _bySourceType(c, facts),
            lambda c: _byPrefix(c, _ip(facts.remote), lambda m: m.sourcePrefixRanges),
            lambda c: _byPort(c, facts.remote[1] if facts.remote else None,
                              lambda m: m.sourcePorts),
        ]
        for step in steps:
            candidates = step(candidates)
            if not candidates:
                return None
        return candidates[0][1]

    @staticmethod
    def _byAlpn(candidates: _Candidates, protocols: Sequence[str]) -> _Candidates:
        for protocol in protocols:
            found = [c for c in candidates if protocol in c[0].applicationProtocols]
            if found:
                return found
        return [c for c in candidates if not c[0].applicationProtocols]
