"""
C{envoy.filters.udp_listener.udp_proxy}: relay datagrams between
downstream peers and the hosts of a cluster, one upstream socket per
session, with Envoy's sessions, idle timeout, load balancing and stats.

A session is keyed by the downstream peer (the local address is the
listener's own); it holds one UDP socket connected to its upstream host,
so every reply read from that socket belongs to that peer and is written
back to it from the listener's socket.  Datagrams pass through as they
are: never split, merged or copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.logger import Logger

from pyenvoy.config.bootstrap import ParseContext, UdpSocketConfig, parseUdpSocketConfig
from pyenvoy.config.reader import Section
from pyenvoy.stats import Counter, Store
from pyenvoy.upstream.cluster import Cluster
from pyenvoy.upstream.cluster_manager import ConnectStatus

log = Logger()

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"

#: Envoy's default session idle timeout.
DEFAULT_IDLE_TIMEOUT = 60.0

#: How many times per idle_timeout the session table is swept.
IDLE_CHECKS = 8

#: With C{prefer_gro} (Envoy's default for upstream sockets) Envoy reads up
#: to this many times C{max_rx_datagram_size} in one receive, so a single
#: larger datagram still arrives whole.
GRO_DATAGRAMS_PER_RECEIVE = 16

_UNSUPPORTED = (
    "use_original_src_ip", "access_log", "proxy_access_log", "access_log_options",
    "session_filters", "tunneling_config",
)


@dataclass(frozen=True)
class HashPolicy:
    """
    One C{hash_policies[]} entry: hash the peer's IP, or a fixed key.
    """

    sourceIp: bool = False
    key: str | None = None


@dataclass(frozen=True)
class UdpProxyConfig:
    """
    A validated C{UdpProxyConfig} message.

    @ivar cluster: the cluster sessions go to (C{cluster}, or the
        C{matcher}'s C{on_no_match} route).
    """

    statPrefix: str
    cluster: str
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT
    usePerPacketLoadBalancing: bool = False
    hashPolicy: HashPolicy | None = None
    upstreamSocketConfig: UdpSocketConfig = UdpSocketConfig(preferGro=True)

    @property
    def upstreamMaxDatagramSize(self) -> int:
        """
        The largest reply read whole from an upstream socket; a larger one
        is dropped and counted (C{sess_rx_datagrams_dropped}).
        """
        socketConfig = self.upstreamSocketConfig
        if socketConfig.preferGro:
            return socketConfig.maxRxDatagramSize * GRO_DATAGRAMS_PER_RECEIVE
        return socketConfig.maxRxDatagramSize


class UdpProxyStats:
    """
    Envoy's C{udp.<stat_prefix>.*} stats (C{ALL_UDP_PROXY_DOWNSTREAM_STATS}),
    as attributes named like them.
    """

    def __init__(self, store: Store, statPrefix: str) -> None:
        scope = store.scope(f"udp.{statPrefix}")
        self.downstream_sess_no_route = scope.counter("downstream_sess_no_route")
        self.downstream_sess_rx_bytes = scope.counter("downstream_sess_rx_bytes")
        self.downstream_sess_rx_datagrams = scope.counter("downstream_sess_rx_datagrams")
        self.downstream_sess_rx_errors = scope.counter("downstream_sess_rx_errors")
        self.downstream_sess_total = scope.counter("downstream_sess_total")
        self.downstream_sess_tx_bytes = scope.counter("downstream_sess_tx_bytes")
        self.downstream_sess_tx_datagrams = scope.counter("downstream_sess_tx_datagrams")
        self.downstream_sess_tx_errors = scope.counter("downstream_sess_tx_errors")
        self.idle_timeout = scope.counter("idle_timeout")
        self.session_filter_config_missing = scope.counter("session_filter_config_missing")
        self.downstream_sess_active = scope.gauge("downstream_sess_active")


class UdpClusterStats:
    """
    Envoy's C{cluster.<name>.udp.*} stats (C{ALL_UDP_PROXY_UPSTREAM_STATS}),
    plus the cluster's byte counters a session adds to.  (The tunnel
    counters stay at zero: pyenvoy has no UDP tunnelling.)
    """

    def __init__(self, store: Store, cluster: Cluster) -> None:
        scope = store.scope(f"cluster.{cluster.config.statName}.udp")
        self.sess_rx_datagrams = scope.counter("sess_rx_datagrams")
        self.sess_rx_datagrams_dropped = scope.counter("sess_rx_datagrams_dropped")
        self.sess_rx_errors = scope.counter("sess_rx_errors")
        self.sess_tx_datagrams = scope.counter("sess_tx_datagrams")
        self.sess_tx_errors = scope.counter("sess_tx_errors")
        self.sess_tunnel_success = scope.counter("sess_tunnel_success")
        self.sess_tunnel_failure = scope.counter("sess_tunnel_failure")
        self.sess_tunnel_buffer_overflow = scope.counter("sess_tunnel_buffer_overflow")
        stats: Any = cluster.stats  # ClusterStats sets its counters by name
        self.upstream_cx_rx_bytes_total: Counter = stats.upstream_cx_rx_bytes_total
        self.upstream_cx_tx_bytes_total: Counter = stats.upstream_cx_tx_bytes_total


class ActiveSession:
    """
    One downstream peer's session: its upstream host and the socket
    connected to it.

    @ivar activity: bumped by every datagram either way; the idle sweep
        compares it with what it saw last time (C{seen}).
    @ivar lastActive: when the sweep last saw the session active (its
        creation, at first).
    """

    __slots__ = ("proxy", "key", "peer", "cluster", "host", "socket", "activity", "seen",
                 "lastActive", "closed", "_send", "_sendto", "_udp", "_stats", "_limit")

    def __init__(self, proxy: "UdpProxyFilter", key: Any, peer: tuple[str, int],
                 cluster: Any, host: Any) -> None:
        self.proxy = proxy
        self.key = key
        self.peer = peer
        self.cluster = cluster
        self.host = host
        # The datagram that opens the session is forwarded next: seen already.
        self.activity = 0
        self.seen = 1
        self.lastActive = proxy.reactor.seconds()
        self.closed = False
        self._udp = proxy.clusterStats(cluster)
        self._stats = proxy.stats
        self._limit = proxy.config.upstreamMaxDatagramSize
        self._sendto = proxy.callbacks.sendto
        self.socket = proxy.callbacks.openUpstream(host.address, self._limit + 1, self)
        self._send = self.socket.send

    def forward(self, data: bytes) -> None:
        """
        Send a downstream datagram to the upstream host.
        """
        self.activity += 1
        try:
            self._send(data)
        except OSError:
            self._udp.sess_tx_errors.value += 1
            return
        udp = self._udp
        udp.sess_tx_datagrams.value += 1
        udp.upstream_cx_tx_bytes_total.value += len(data)

    def upstreamDatagram(self, data: bytes) -> None:
        """
        A reply from the upstream host: back to the peer, from the
        listener's socket.
        """
        self.activity += 1
        size = len(data)
        udp = self._udp
        if size > self._limit:
            udp.sess_rx_datagrams_dropped.value += 1
            return
        udp.sess_rx_datagrams.value += 1
        udp.upstream_cx_rx_bytes_total.value += size
        stats = self._stats
        try:
            self._sendto(data, self.peer)
        except OSError:
            stats.downstream_sess_tx_errors.value += 1
            return
        stats.downstream_sess_tx_bytes.value += size
        stats.downstream_sess_tx_datagrams.value += 1

    def upstreamReadError(self, reason: Exception) -> None:
        """
        Reading the upstream socket failed (an ICMP port unreachable, most
        often): count it; the session lives on, as in Envoy.
        """
        self._udp.sess_rx_errors.value += 1

    def upstreamLost(self) -> None:
        """
        The upstream socket can no longer be read: end the session.
        """
        self.proxy.removeSession(self)

    def close(self) -> None:
        """
        Close the upstream socket.
        """
        if not self.closed:
            self.closed = True
            self.socket.close()


class UdpProxyFilter:
    """
    The udp_proxy of one listener: its session table and idle sweep.

    @ivar callbacks: the listener: C{sendto(data, peer)} (raises
        C{OSError} when the datagram cannot be sent),
        C{openUpstream(address, readSize, receiver)} and C{reactor}.
    @ivar sessions: the live sessions, by peer (by C{(peer, host)} with
        per-packet load balancing).
    """

    def __init__(self, config: UdpProxyConfig, context: Any, callbacks: Any) -> None:
        self.config = config
        self.callbacks = callbacks
        self.reactor = context.reactor
        self.store = context.store
        self.clusterManager = context.clusterManager
        self.stats = UdpProxyStats(context.store, config.statPrefix)
        self.sessions: dict[Any, ActiveSession] = {}
        self._clusterStats: dict[str, UdpClusterStats] = {}
        self._sweepTimer: Any = None
        self._tick = config.idleTimeout / IDLE_CHECKS
        self._lbContext = _contextMaker(config.hashPolicy)
        self._closed = False
        cluster = self.clusterManager.get(config.cluster)
        if cluster is not None:
            self.clusterStats(cluster)
        self._unsubscribe = self.clusterManager.onHostsRemoved(
            config.cluster, self._hostsRemoved)
        if config.usePerPacketLoadBalancing:
            self.onData = self._onDataPerPacket  # type: ignore[method-assign]

    def clusterStats(self, cluster: Any) -> UdpClusterStats:
        """
        The C{cluster.<name>.udp.*} stats of C{cluster}.
        """
        stats = self._clusterStats.get(cluster.name)
        if stats is None:
            stats = self._clusterStats[cluster.name] = UdpClusterStats(self.store, cluster)
        return stats

    # -- datagrams from downstream ---------------------------------------------------

    def onData(self, data: bytes, peer: tuple[str, int]) -> None:
        """
        A datagram from C{peer}: to its session's host, opening the
        session first if it is new.
        """
        session = self.sessions.get(peer)
        if session is None:
            session = self._openSession(peer)
            if session is None:
                return
        elif not session.host.healthy:
            session = self._replaceUnhealthy(session)
            if session is None:
                return
        stats = self.stats
        stats.downstream_sess_rx_bytes.value += len(data)
        stats.downstream_sess_rx_datagrams.value += 1
        session.forward(data)

    def _onDataPerPacket(self, data: bytes, peer: tuple[str, int]) -> None:
        """
        L{onData} with C{use_per_packet_load_balancing}: a host for every
        datagram; sessions are per (peer, host).
        """
        if self._closed:
            return
        status, cluster, host = self.clusterManager.chooseUdpHost(
            self.config.cluster, self._lbContext(peer))
        if host is None:
            if status is ConnectStatus.NO_CLUSTER:
                self.stats.downstream_sess_no_route.value += 1
            return
        key = (peer, host)
        session = self.sessions.get(key)
        if session is None:
            if not self.clusterManager.admitUdpSession(cluster):
                return
            session = self._startSession(key, peer, cluster, host)
            if session is None:
                return
        stats = self.stats
        stats.downstream_sess_rx_bytes.value += len(data)
        stats.downstream_sess_rx_datagrams.value += 1
        session.forward(data)

    def onReceiveError(self) -> None:
        """
        Reading the listener socket failed.
        """
        self.stats.downstream_sess_rx_errors.value += 1

    # -- sessions ----------------------------------------------------------------------

    def _openSession(self, peer: tuple[str, int]) -> ActiveSession | None:
        if self._closed:
            return None
        status, cluster, host = self.clusterManager.openUdpSession(
            self.config.cluster, self._lbContext(peer))
        if status is not ConnectStatus.STARTED:
            if status is ConnectStatus.NO_CLUSTER:
                self.stats.downstream_sess_no_route.value += 1
            return None
        return self._startSession(peer, peer, cluster, host)

    def _startSession(self, key: Any, peer: tuple[str, int], cluster: Any,
                      host: Any) -> ActiveSession | None:
        """
        Make the session (its breaker slot already taken) and its socket.
        """
        try:
            session = ActiveSession(self, key, peer, cluster, host)
        except OSError as e:
            self.clusterManager.closeUdpSession(cluster)
            self.clusterStats(cluster).sess_tx_errors.value += 1
            log.warn("udp_proxy {prefix}: cannot open a socket to {host}: {reason}",
                     prefix=self.config.statPrefix, host=host.addressString, reason=e)
            return None
        self.sessions[key] = session
        stats = self.stats
        stats.downstream_sess_total.value += 1
        stats.downstream_sess_active.value += 1
        if self._sweepTimer is None:
            self._sweepTimer = self.reactor.callLater(self._tick, self._sweep)
        return session

    def _replaceUnhealthy(self, session: ActiveSession) -> ActiveSession | None:
        """
        The session's host went unhealthy: move the peer to another host if
        the load balancer offers a healthy one (as Envoy does), else stay.
        """
        host = session.cluster.lb.chooseHost(self._lbContext(session.peer))
        if host is None or not host.healthy or host is session.host:
            return session
        cluster = session.cluster
        self.removeSession(session)
        if not self.clusterManager.admitUdpSession(cluster):
            return None
        return self._startSession(session.key, session.peer, cluster, host)

    def removeSession(self, session: ActiveSession) -> None:
        """
        End C{session}: close its socket, free its breaker slot.
        """
        if self.sessions.get(session.key) is not session:
            return
        del self.sessions[session.key]
        session.close()
        self.clusterManager.closeUdpSession(session.cluster)
        self.stats.downstream_sess_active.value -= 1

    def _hostsRemoved(self, cluster: Any, hosts: list[Any]) -> None:
        """
        Hosts left the cluster: their sessions end at once (Envoy's member
        update callback).
        """
        gone = {id(h) for h in hosts}
        for session in [s for s in self.sessions.values() if id(s.host) in gone]:
            self.removeSession(session)

    def _sweep(self) -> None:
        # Activity is read off each session's counter a few times per
        # timeout, so the data path pays nothing for the idle timer (no
        # clock read, no timer reset per datagram); a session expires
        # between idle_timeout and idle_timeout plus one tick
        # (idle_timeout / IDLE_CHECKS) after its last datagram.
        self._sweepTimer = None
        now = self.reactor.seconds()
        deadline = now - self.config.idleTimeout + 1e-9
        expired = []
        for session in self.sessions.values():
            if session.activity != session.seen:
                session.seen = session.activity
                session.lastActive = now
            elif session.lastActive <= deadline:
                expired.append(session)
        if expired:
            self.stats.idle_timeout.value += len(expired)
            for session in expired:
                self.removeSession(session)
        if self.sessions and not self._closed:
            self._sweepTimer = self.reactor.callLater(self._tick, self._sweep)

    def close(self) -> None:
        """
        The listener is going away: end every session.
        """
        self._closed = True
        if self._sweepTimer is not None and self._sweepTimer.active():
            self._sweepTimer.cancel()
        self._sweepTimer = None
        for session in list(self.sessions.values()):
            self.removeSession(session)
        self._unsubscribe()


def _contextMaker(policy: HashPolicy | None) -> Callable[[tuple[str, int]], Any]:
    """
    The load-balancer context for a peer under C{policy}: C{None} without
    a policy; a hash of the peer's IP (xxHash64 of its text, as Envoy) or
    of the fixed key otherwise.
    """
    if policy is None:
        return lambda peer: None
    from pyenvoy.upstream.hashing import LoadBalancerContext, hashKeyForString

    if policy.key is not None:
        fixed = LoadBalancerContext(hashKey=hashKeyForString(policy.key))
        return lambda peer: fixed
    cache: dict[str, Any] = {}

    def sourceIp(peer: tuple[str, int]) -> Any:
        ip = peer[0]
        context = cache.get(ip)
        if context is None:
            if len(cache) >= 65536:
                cache.clear()
            context = cache[ip] = LoadBalancerContext(hashKey=hashKeyForString(ip))
        return context

    return sourceIp


class UdpProxyFactory:
    """
    Parses C{UdpProxyConfig} and makes the filter of each listener.
    """

    def parseConfig(self, section: Section, context: ParseContext) -> UdpProxyConfig:
        """
        Validate a C{UdpProxyConfig} C{typed_config}.
        """
        statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
        which = section.oneOf("cluster", "matcher")
        cluster = None
        if which == "cluster":
            cluster = context.requireCluster(section, "cluster")
        elif which == "matcher":
            cluster = self._parseMatcher(section.section("matcher"), context)
        idle = section.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT)
        if idle is not None and idle < 0.001:
            section.error("must be at least 1ms", "idle_timeout")
            idle = None
        perPacket = section.boolean("use_per_packet_load_balancing")
        if section.raw.get("use_original_src_ip") is False:
            section.ignore("use_original_src_ip")
        hashPolicy = self._parseHashPolicies(section)
        upstream = parseUdpSocketConfig(section.section("upstream_socket_config"),
                                        preferGro=True)
        if section.raw.get("session_filters") == []:
            section.ignore("session_filters")
        section.finish(unsupported=_UNSUPPORTED)
        return UdpProxyConfig(
            statPrefix=statPrefix, cluster=cluster or "", idleTimeout=idle or DEFAULT_IDLE_TIMEOUT,
            usePerPacketLoadBalancing=perPacket, hashPolicy=hashPolicy,
            upstreamSocketConfig=upstream,
        )

    def _parseMatcher(self, section: Section | None, context: ParseContext) -> str | None:
        """
        The C{matcher} form: only C{on_no_match} with a C{Route} action
        (every datagram to one cluster) is supported.
        """
        if section is None:
            return None
        onNoMatch = section.section("on_no_match", required=True)
        section.finish(unsupported=("matcher_list", "matcher_tree"))
        if onNoMatch is None:
            return None
        action = onNoMatch.section("action", required=True)
        onNoMatch.finish(unsupported=("matcher", "keep_matching"))
        if action is None:
            return None
        action.string("name", required=True, nonEmpty=True)
        typed = action.section("typed_config", required=True)
        action.finish()
        if typed is None:
            return None
        typeURL = typed.string("@type", required=True)
        if typeURL is not None and typeURL != ROUTE_TYPE_URL:
            typed.error(f"unknown udp_proxy action @type {typeURL!r}; known: {ROUTE_TYPE_URL}",
                        "@type")
            return None
        cluster = context.requireCluster(typed, "cluster")
        typed.finish()
        return cluster

    def _parseHashPolicies(self, section: Section) -> HashPolicy | None:
        policies = section.sections("hash_policies")
        if len(policies) > 1:
            section.error("at most one hash policy is allowed", "hash_policies")
        policy = None
        for sub in policies[:1]:
            which = sub.oneOf("source_ip", "key")
            if which == "source_ip":
                if sub.boolean("source_ip") is not True:
                    sub.error("must be true", "source_ip")
                policy = HashPolicy(sourceIp=True)
            elif which == "key":
                key = sub.string("key", required=True, nonEmpty=True)
                if key:
                    policy = HashPolicy(key=key)
            sub.finish()
        return policy

    def createFilterFactory(self, config: UdpProxyConfig, context: Any) -> Any:
        """
        A maker of the listener's L{UdpProxyFilter}, given the listener
        as callbacks.
        """
        return lambda callbacks: UdpProxyFilter(config, context, callbacks)


factory = UdpProxyFactory()
