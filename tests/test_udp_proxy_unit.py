"""
udp_proxy on fake datagram transports and a clock: the session table,
idle expiry, circuit breaker, host removal, load balancing and hash
stickiness, error counting; and its config, good and bad.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.filters.udp_proxy import UdpProxyFilter
from pyenvoy.server import ServerContext
from pyenvoy.upstream.host import Host

UDP_PROXY = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"

L0 = "static_resources.listeners[0]"
TC = f"{L0}.listener_filters[0].typed_config"

HOSTS = (("10.0.0.1", 53), ("10.0.0.2", 53), ("10.0.0.3", 53))


def udpProxyConfig(proxy: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None,
                   listener: dict[str, Any] | None = None,
                   hosts: tuple[tuple[str, int], ...] = HOSTS[:1]) -> dict[str, Any]:
    """
    A bootstrap with one UDP listener ("udp", 127.0.0.1 port 0) whose
    udp_proxy (stat_prefix "dns") sends to cluster "backend" of C{hosts}.
    """
    typed = {"@type": UDP_PROXY, "stat_prefix": "dns", "cluster": "backend"}
    typed.update(proxy or {})
    typed = {k: v for k, v in typed.items() if v is not None}
    listenerConfig: dict[str, Any] = {
        "name": "udp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0,
                                       "protocol": "UDP"}},
        "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy",
                              "typed_config": typed}],
    }
    listenerConfig.update(listener or {})
    clusterConfig: dict[str, Any] = {
        "name": "backend",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}
            for a, p in hosts]}]},
    }
    clusterConfig.update(cluster or {})
    return {"static_resources": {"listeners": [listenerConfig], "clusters": [clusterConfig]}}


class FakeUpstream:
    """
    A session's upstream socket: records what is sent, fails on demand,
    and lets the test deliver replies.
    """

    def __init__(self, address: tuple[str, int], readSize: int, receiver: Any) -> None:
        self.address = address
        self.readSize = readSize
        self.receiver = receiver
        self.sent: list[bytes] = []
        self.closed = False
        self.error: OSError | None = None

    def send(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True

    def reply(self, data: bytes) -> None:
        """
        A datagram from the upstream host arrives.
        """
        self.receiver.upstreamDatagram(data)


class FakeListener:
    """
    The listener side of udp_proxy: records datagrams sent to peers and
    the upstream sockets opened.
    """

    def __init__(self, reactor: Clock) -> None:
        self.reactor = reactor
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.upstreams: list[FakeUpstream] = []
        self.error: OSError | None = None
        self.openError: OSError | None = None

    def sendto(self, data: bytes, peer: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((data, peer))

    def openUpstream(self, address: tuple[str, int], readSize: int,
                     receiver: Any) -> FakeUpstream:
        if self.openError is not None:
            raise self.openError
        upstream = FakeUpstream(address, readSize, receiver)
        self.upstreams.append(upstream)
        return upstream


class ProxyOnClock:
    """
    The udp_proxy of C{raw}'s first listener on a L{Clock}, with fake
    sockets.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.clock = Clock()
        bootstrap = parse(raw)
        self.context = ServerContext(bootstrap, self.clock)
        filterConfig = bootstrap.listeners[0].listenerFilters[0]
        self.config = filterConfig.config
        self.listener = FakeListener(self.clock)
        make = filterConfig.factory.createFilterFactory(filterConfig.config, self.context)
        self.proxy: UdpProxyFilter = make(self.listener)
        self.cluster = self.context.clusterManager.get("backend")

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        """
        A datagram from C{peer} reaches the listener.
        """
        self.proxy.onData(data, peer)

    def upstreamFor(self, peer: tuple[str, int]) -> FakeUpstream:
        """
        The upstream socket of C{peer}'s (sticky) session.
        """
        return self.proxy.sessions[peer].socket

    def stat(self, name: str) -> int:
        """
        A counter's or gauge's value (0 if never created).
        """
        found = self.context.store.get(name)
        return 0 if found is None else found.value


PEER_A = ("192.0.2.1", 40001)
PEER_B = ("192.0.2.2", 40002)


class SessionTableTests(SynchronousTestCase):
    """
    One session per downstream peer, one upstream socket per session.
    """

    def test_sessionPerPeer(self) -> None:
        """
        Two peers get two sessions with their own upstream socket; a
        peer's next datagram reuses its session.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a1", PEER_A)
        proxy.send(b"b1", PEER_B)
        proxy.send(b"a2", PEER_A)
        self.assertEqual(len(proxy.listener.upstreams), 2)
        self.assertEqual(proxy.upstreamFor(PEER_A).sent, [b"a1", b"a2"])
        self.assertEqual(proxy.upstreamFor(PEER_B).sent, [b"b1"])
        self.assertEqual(proxy.upstreamFor(PEER_A).address, ("10.0.0.1", 53))
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_total"), 2)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_active"), 2)

    def test_repliesGoToTheirPeer(self) -> None:
        """
        A reply read on a session's socket is sent to that session's peer,
        whole and unchanged.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"qa", PEER_A)
        proxy.send(b"qb", PEER_B)
        proxy.upstreamFor(PEER_B).reply(b"rb")
        proxy.upstreamFor(PEER_A).reply(b"ra" * 700)
        self.assertEqual(proxy.listener.sent, [(b"rb", PEER_B), (b"ra" * 700, PEER_A)])

    def test_stats(self) -> None:
        """
        Datagrams and bytes are counted under Envoy's names, both ways.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"12345", PEER_A)
        proxy.send(b"123", PEER_A)
        proxy.upstreamFor(PEER_A).reply(b"1234567")
        expected = {
            "udp.dns.downstream_sess_rx_datagrams": 2,
            "udp.dns.downstream_sess_rx_bytes": 8,
            "udp.dns.downstream_sess_tx_datagrams": 1,
            "udp.dns.downstream_sess_tx_bytes": 7,
            "cluster.backend.udp.sess_tx_datagrams": 2,
            "cluster.backend.udp.sess_rx_datagrams": 1,
            "cluster.backend.upstream_cx_tx_bytes_total": 8,
            "cluster.backend.upstream_cx_rx_bytes_total": 7,
            "cluster.backend.udp.sess_tx_errors": 0,
            "cluster.backend.udp.sess_rx_errors": 0,
        }
        self.assertEqual({name: proxy.stat(name) for name in expected}, expected)

    def test_statsExistAtZero(self) -> None:
        """
        Every udp.<prefix>.* and cluster.<name>.udp.* stat is there before
        any traffic, as Envoy creates them with the filter.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        names = {stat.name for stat in proxy.context.store}
        for name in ("downstream_sess_no_route", "downstream_sess_rx_errors",
                     "downstream_sess_tx_errors", "idle_timeout", "downstream_sess_active"):
            self.assertIn(f"udp.dns.{name}", names)
        for name in ("sess_rx_datagrams", "sess_rx_datagrams_dropped", "sess_rx_errors",
                     "sess_tx_datagrams", "sess_tx_errors"):
            self.assertIn(f"cluster.backend.udp.{name}", names)

    def test_altStatName(self) -> None:
        """
        The cluster's udp stats live under its alt_stat_name.
        """
        proxy = ProxyOnClock(udpProxyConfig(cluster={"alt_stat_name": "resolvers"}))
        proxy.send(b"x", PEER_A)
        self.assertEqual(proxy.stat("cluster.resolvers.udp.sess_tx_datagrams"), 1)

    def test_sessionHoldsBreakerSlot(self) -> None:
        """
        A session counts as a connection of its cluster while it lives.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"x", PEER_A)
        proxy.send(b"x", PEER_B)
        self.assertEqual(proxy.cluster.activeConnections, 2)

    def test_upstreamReadSize(self) -> None:
        """
        Upstream sockets read up to 16 x max_rx_datagram_size with
        prefer_gro (Envoy's default for them), plus one byte to see a
        longer datagram; max_rx_datagram_size alone without it.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"x", PEER_A)
        self.assertEqual(proxy.upstreamFor(PEER_A).readSize, 1500 * 16 + 1)
        proxy = ProxyOnClock(udpProxyConfig({"upstream_socket_config": {
            "max_rx_datagram_size": 9000, "prefer_gro": False}}))
        proxy.send(b"x", PEER_A)
        self.assertEqual(proxy.upstreamFor(PEER_A).readSize, 9001)

    def test_longReplyDropped(self) -> None:
        """
        A reply longer than the upstream receive size is dropped and
        counted, not cut short.
        """
        proxy = ProxyOnClock(udpProxyConfig({"upstream_socket_config": {
            "max_rx_datagram_size": 100, "prefer_gro": False}}))
        proxy.send(b"x", PEER_A)
        proxy.upstreamFor(PEER_A).reply(b"y" * 101)
        proxy.upstreamFor(PEER_A).reply(b"y" * 100)
        self.assertEqual(proxy.listener.sent, [(b"y" * 100, PEER_A)])
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_rx_datagrams_dropped"), 1)
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_rx_datagrams"), 1)

    def test_closeEndsSessions(self) -> None:
        """
        When the listener closes, every session's socket closes and its
        breaker slot is given back.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"x", PEER_A)
        proxy.send(b"x", PEER_B)
        proxy.proxy.close()
        self.assertTrue(all(u.closed for u in proxy.listener.upstreams))
        self.assertEqual(proxy.cluster.activeConnections, 0)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_active"), 0)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])
        proxy.send(b"x", PEER_A)
        self.assertEqual(len(proxy.listener.upstreams), 2)


class IdleTimeoutTests(SynchronousTestCase):
    """
    Idle sessions expire; a datagram either way keeps a session alive.
    """

    def test_defaultIsSixtySeconds(self) -> None:
        """
        Without idle_timeout a quiet session expires after Envoy's 60s.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.5] * 118)
        self.assertIn(PEER_A, proxy.proxy.sessions)
        proxy.clock.pump([0.5] * 18)
        self.assertNotIn(PEER_A, proxy.proxy.sessions)

    def test_quietSessionExpires(self) -> None:
        """
        A session with no datagram for idle_timeout ends: its socket
        closes, idle_timeout is counted, its breaker slot is freed.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "10s"}))
        proxy.send(b"x", PEER_A)
        upstream = proxy.upstreamFor(PEER_A)
        proxy.clock.pump([0.25] * 36)
        self.assertFalse(upstream.closed)
        proxy.clock.pump([0.25] * 10)
        self.assertTrue(upstream.closed)
        self.assertEqual(proxy.proxy.sessions, {})
        self.assertEqual(proxy.stat("udp.dns.idle_timeout"), 1)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_active"), 0)
        self.assertEqual(proxy.cluster.activeConnections, 0)
        self.assertEqual(proxy.clock.getDelayedCalls(), [])

    def test_downstreamDatagramPostpones(self) -> None:
        """
        A datagram from the peer restarts the idle clock.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "10s"}))
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.25] * 32)
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.25] * 36)
        self.assertIn(PEER_A, proxy.proxy.sessions)
        proxy.clock.pump([0.25] * 10)
        self.assertNotIn(PEER_A, proxy.proxy.sessions)

    def test_upstreamDatagramPostpones(self) -> None:
        """
        A reply from the upstream restarts the idle clock too.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "10s"}))
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.25] * 32)
        proxy.upstreamFor(PEER_A).reply(b"y")
        proxy.clock.pump([0.25] * 36)
        self.assertIn(PEER_A, proxy.proxy.sessions)

    def test_newDatagramAfterExpiryOpensNewSession(self) -> None:
        """
        A peer that comes back after its session expired gets a new one.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "1s"}))
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.25] * 8)
        proxy.send(b"y", PEER_A)
        self.assertEqual(len(proxy.listener.upstreams), 2)
        self.assertEqual(proxy.upstreamFor(PEER_A).sent, [b"y"])
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_total"), 2)

    def test_oneTimerForAllSessions(self) -> None:
        """
        The idle sweep is one timer, whatever the number of sessions.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "10s"}))
        for port in range(100):
            proxy.send(b"x", ("192.0.2.9", 1000 + port))
        self.assertEqual(len(proxy.clock.getDelayedCalls()), 1)


class CircuitBreakerTests(SynchronousTestCase):
    """
    Sessions count against the cluster's max_connections.
    """

    def breakers(self, maxConnections: int) -> dict[str, Any]:
        return {"circuit_breakers": {"thresholds": [{"max_connections": maxConnections}]}}

    def test_overflowDropsNewPeer(self) -> None:
        """
        Past max_connections a new peer's datagram is dropped and
        upstream_cx_overflow counted; existing sessions go on.
        """
        proxy = ProxyOnClock(udpProxyConfig(cluster=self.breakers(1)))
        proxy.send(b"a", PEER_A)
        proxy.send(b"b", PEER_B)
        proxy.send(b"a2", PEER_A)
        self.assertEqual(list(proxy.proxy.sessions), [PEER_A])
        self.assertEqual(proxy.upstreamFor(PEER_A).sent, [b"a", b"a2"])
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_overflow"), 1)
        self.assertEqual(proxy.stat("cluster.backend.circuit_breakers.default.cx_open"), 1)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_total"), 1)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_rx_datagrams"), 2)

    def test_expiryMakesRoom(self) -> None:
        """
        Once a session expires, its slot takes a new peer.
        """
        proxy = ProxyOnClock(udpProxyConfig({"idle_timeout": "1s"}, cluster=self.breakers(1)))
        proxy.send(b"a", PEER_A)
        proxy.clock.pump([0.25] * 8)
        proxy.send(b"b", PEER_B)
        self.assertEqual(list(proxy.proxy.sessions), [PEER_B])
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_overflow"), 0)

    def test_socketFailureFreesSlot(self) -> None:
        """
        When the upstream socket cannot be opened, the datagram is dropped,
        counted as a send error, and the breaker slot given back.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.listener.openError = OSError(24, "Too many open files")
        proxy.send(b"a", PEER_A)
        self.assertEqual(proxy.proxy.sessions, {})
        self.assertEqual(proxy.cluster.activeConnections, 0)
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_tx_errors"), 1)
        self.flushLoggedErrors()


class HostTests(SynchronousTestCase):
    """
    Sessions follow their cluster's membership and health.
    """

    def test_noHealthyHost(self) -> None:
        """
        With no healthy host, the datagram is dropped and
        upstream_cx_none_healthy counted; no slot stays taken.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        for host in proxy.cluster.hosts:
            host.healthy = False
        proxy.send(b"a", PEER_A)
        self.assertEqual(proxy.proxy.sessions, {})
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_none_healthy"), 1)
        self.assertEqual(proxy.cluster.activeConnections, 0)

    def test_hostRemovedDropsItsSessions(self) -> None:
        """
        A host that leaves the cluster takes its sessions with it; other
        hosts' sessions stay.
        """
        proxy = ProxyOnClock(udpProxyConfig(hosts=HOSTS[:2]))
        proxy.send(b"a", PEER_A)
        proxy.send(b"b", PEER_B)
        hostA = proxy.proxy.sessions[PEER_A].host
        upstreamA = proxy.upstreamFor(PEER_A)
        keep = [h for h in proxy.cluster.hosts if h is not hostA]
        proxy.cluster.setHosts([Host(h.address, h.weight) for h in keep])
        self.assertEqual(list(proxy.proxy.sessions), [PEER_B])
        self.assertTrue(upstreamA.closed)
        self.assertEqual(proxy.cluster.activeConnections, 1)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_active"), 1)
        proxy.send(b"a2", PEER_A)
        self.assertIsNot(proxy.proxy.sessions[PEER_A].host, hostA)

    def test_unhealthyHostReplaced(self) -> None:
        """
        When a session's host turns unhealthy and another is healthy, the
        peer's next datagram opens a session to that one (as in Envoy).
        """
        proxy = ProxyOnClock(udpProxyConfig(hosts=HOSTS[:2]))
        proxy.send(b"a", PEER_A)
        old = proxy.proxy.sessions[PEER_A]
        old.host.healthy = False
        proxy.send(b"a2", PEER_A)
        new = proxy.proxy.sessions[PEER_A]
        self.assertIsNot(new, old)
        self.assertIsNot(new.host, old.host)
        self.assertTrue(old.socket.closed)
        self.assertEqual(new.socket.sent, [b"a2"])
        self.assertEqual(proxy.cluster.activeConnections, 1)

    def test_unhealthyHostKeptWithoutBetter(self) -> None:
        """
        When no other host is healthy, the session stays on its host.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a", PEER_A)
        session = proxy.proxy.sessions[PEER_A]
        session.host.healthy = False
        proxy.send(b"a2", PEER_A)
        self.assertIs(proxy.proxy.sessions[PEER_A], session)
        self.assertEqual(session.socket.sent, [b"a", b"a2"])


class ErrorTests(SynchronousTestCase):
    """
    Send and receive errors are counted and never end a session.
    """

    def test_portUnreachableOnSend(self) -> None:
        """
        An ICMP port unreachable reported on send counts
        cluster.<name>.udp.sess_tx_errors; the session lives on.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a", PEER_A)
        upstream = proxy.upstreamFor(PEER_A)
        upstream.error = ConnectionRefusedError(111, "Connection refused")
        proxy.send(b"b", PEER_A)
        upstream.error = None
        proxy.send(b"c", PEER_A)
        self.assertEqual(upstream.sent, [b"a", b"c"])
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_tx_errors"), 1)
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_tx_datagrams"), 2)
        self.assertFalse(upstream.closed)

    def test_portUnreachableOnReceive(self) -> None:
        """
        An ICMP error reported on the upstream socket's read counts
        cluster.<name>.udp.sess_rx_errors; the session lives on.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a", PEER_A)
        session = proxy.proxy.sessions[PEER_A]
        session.upstreamReadError(ConnectionRefusedError(111, "Connection refused"))
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_rx_errors"), 1)
        self.assertIs(proxy.proxy.sessions[PEER_A], session)
        proxy.upstreamFor(PEER_A).reply(b"late")
        self.assertEqual(proxy.listener.sent, [(b"late", PEER_A)])

    def test_downstreamSendError(self) -> None:
        """
        A reply the listener cannot send counts downstream_sess_tx_errors.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a", PEER_A)
        proxy.listener.error = BlockingIOError(11, "Resource temporarily unavailable")
        proxy.upstreamFor(PEER_A).reply(b"r")
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_tx_errors"), 1)
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_tx_datagrams"), 0)
        self.assertEqual(proxy.stat("cluster.backend.udp.sess_rx_datagrams"), 1)

    def test_upstreamLostEndsSession(self) -> None:
        """
        A socket that can no longer be read ends its session.
        """
        proxy = ProxyOnClock(udpProxyConfig())
        proxy.send(b"a", PEER_A)
        proxy.proxy.sessions[PEER_A].upstreamLost()
        self.assertEqual(proxy.proxy.sessions, {})
        self.assertEqual(proxy.cluster.activeConnections, 0)


class LoadBalancingTests(SynchronousTestCase):
    """
    Sticky sessions, per-packet load balancing, and hash policies on
    RING_HASH and MAGLEV clusters.
    """

    def test_stickyByDefault(self) -> None:
        """
        Every datagram of a session goes to the host picked for its first.
        """
        proxy = ProxyOnClock(udpProxyConfig(hosts=HOSTS))
        for _ in range(6):
            proxy.send(b"x", PEER_A)
        self.assertEqual(len(proxy.listener.upstreams), 1)
        self.assertEqual(len(proxy.upstreamFor(PEER_A).sent), 6)

    def test_perPacket(self) -> None:
        """
        With use_per_packet_load_balancing, round robin picks a host per
        datagram; sessions are per (peer, host) and are reused.
        """
        proxy = ProxyOnClock(udpProxyConfig({"use_per_packet_load_balancing": True},
                                            hosts=HOSTS[:2]))
        for index in range(4):
            proxy.send(b"%d" % index, PEER_A)
        upstreams = proxy.listener.upstreams
        self.assertEqual(len(upstreams), 2)
        self.assertEqual([u.sent for u in upstreams], [[b"0", b"2"], [b"1", b"3"]])
        self.assertEqual({u.address for u in upstreams}, set(HOSTS[:2]))
        self.assertEqual(proxy.stat("udp.dns.downstream_sess_total"), 2)
        upstreams[1].reply(b"r")
        self.assertEqual(proxy.listener.sent, [(b"r", PEER_A)])

    def test_perPacketBreaker(self) -> None:
        """
        Per-packet sessions count against max_connections too.
        """
        proxy = ProxyOnClock(udpProxyConfig(
            {"use_per_packet_load_balancing": True}, hosts=HOSTS[:2],
            cluster={"circuit_breakers": {"thresholds": [{"max_connections": 1}]}}))
        for index in range(4):
            proxy.send(b"%d" % index, PEER_A)
        self.assertEqual([u.sent for u in proxy.listener.upstreams], [[b"0", b"2"]])
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_overflow"), 2)

    def test_perPacketExpiry(self) -> None:
        """
        Per-packet sessions expire like sticky ones.
        """
        proxy = ProxyOnClock(udpProxyConfig({"use_per_packet_load_balancing": True,
                                             "idle_timeout": "1s"}, hosts=HOSTS[:2]))
        proxy.send(b"x", PEER_A)
        proxy.send(b"x", PEER_A)
        proxy.clock.pump([0.25] * 8)
        self.assertEqual(proxy.proxy.sessions, {})
        self.assertEqual(proxy.stat("udp.dns.idle_timeout"), 2)
        self.assertEqual(proxy.cluster.activeConnections, 0)

    def hashed(self, policy: str, hashPolicy: dict[str, Any],
               perPacket: bool = False) -> ProxyOnClock:
        return ProxyOnClock(udpProxyConfig(
            {"hash_policies": [hashPolicy], "use_per_packet_load_balancing": perPacket},
            cluster={"lb_policy": policy}, hosts=HOSTS))

    def hostOf(self, proxy: ProxyOnClock, peer: tuple[str, int]) -> tuple[str, int]:
        proxy.send(b"x", peer)
        return proxy.proxy.sessions[peer].host.address

    def test_sourceIpSticksAcrossPorts(self) -> None:
        """
        With hash_policies source_ip, every port of one client IP lands
        on the same host (RING_HASH and MAGLEV).
        """
        for policy in ("RING_HASH", "MAGLEV"):
            proxy = self.hashed(policy, {"source_ip": True})
            for index in range(20):
                ip = f"198.51.100.{index}"
                hosts = {self.hostOf(proxy, (ip, port)) for port in (1000, 2000, 3000)}
                self.assertEqual(len(hosts), 1, (policy, ip, hosts))

    def test_sourceIpSpreads(self) -> None:
        """
        Different client IPs spread over the hosts.
        """
        for policy in ("RING_HASH", "MAGLEV"):
            proxy = self.hashed(policy, {"source_ip": True})
            hosts = {self.hostOf(proxy, (f"198.51.100.{index}", 5000)) for index in range(60)}
            self.assertEqual(hosts, set(HOSTS), policy)

    def test_sourceIpIsEnvoysHash(self) -> None:
        """
        The key is xxHash64 of the IP text, as Envoy computes it, so a
        client lands where Envoy would put it.
        """
        from pyenvoy.upstream.hashing import LoadBalancerContext, hashKeyForString

        proxy = self.hashed("MAGLEV", {"source_ip": True})
        for index in range(10):
            ip = f"203.0.113.{index}"
            expected = proxy.cluster.lb.chooseHost(
                LoadBalancerContext(hashKey=hashKeyForString(ip)))
            self.assertEqual(self.hostOf(proxy, (ip, 7)), expected.address)

    def test_keySendsEveryoneToOneHost(self) -> None:
        """
        With hash_policies key, every client goes to the key's host.
        """
        for policy in ("RING_HASH", "MAGLEV"):
            proxy = self.hashed(policy, {"key": "rtp-session-1"})
            hosts = {self.hostOf(proxy, (f"198.51.100.{index}", 9)) for index in range(30)}
            self.assertEqual(len(hosts), 1, policy)

    def test_perPacketWithHashSticks(self) -> None:
        """
        Per-packet load balancing with a source_ip hash still sends every
        datagram of a client to one host.
        """
        proxy = self.hashed("RING_HASH", {"source_ip": True}, perPacket=True)
        for _ in range(10):
            proxy.send(b"x", PEER_A)
        self.assertEqual(len(proxy.listener.upstreams), 1)
        self.assertEqual(len(proxy.listener.upstreams[0].sent), 10)

    def test_withoutHashPolicyRingHashIsRandom(self) -> None:
        """
        Without a hash policy a hash load balancer picks at random (as
        Envoy does), so clients still spread.
        """
        proxy = ProxyOnClock(udpProxyConfig(cluster={"lb_policy": "MAGLEV"}, hosts=HOSTS))
        hosts = {self.hostOf(proxy, ("198.51.100.1", 1000 + i)) for i in range(60)}
        self.assertEqual(hosts, set(HOSTS))


class ConfigTests(SynchronousTestCase):
    """
    The udp_proxy YAML Envoy takes is accepted; what pyenvoy lacks is
    refused by name.
    """

    def errors(self, raw: dict[str, Any]) -> list[tuple[str, str]]:
        e = self.assertRaises(ConfigErrors, parse, raw)
        return [(error.path, error.message) for error in e.errors]

    def assertError(self, raw: dict[str, Any], path: str, fragment: str) -> None:
        errors = self.errors(raw)
        self.assertEqual(len(errors), 1, errors)
        self.assertEqual(errors[0][0], path)
        self.assertIn(fragment, errors[0][1])

    def test_defaults(self) -> None:
        """
        Envoy's defaults: idle 60s, sticky, no hash, upstream 1500 with
        GRO, listener 1500.
        """
        bootstrap = parse(udpProxyConfig())
        listener = bootstrap.listeners[0]
        config = listener.listenerFilters[0].config
        self.assertTrue(listener.isUdp)
        self.assertEqual(listener.downstreamSocketConfig.maxRxDatagramSize, 1500)
        self.assertEqual((config.statPrefix, config.cluster, config.idleTimeout),
                         ("dns", "backend", 60.0))
        self.assertFalse(config.usePerPacketLoadBalancing)
        self.assertIsNone(config.hashPolicy)
        self.assertEqual(config.upstreamSocketConfig.maxRxDatagramSize, 1500)
        self.assertTrue(config.upstreamSocketConfig.preferGro)

    def test_envoyExample(self) -> None:
        """
        The example of Envoy's udp_proxy documentation, matcher form and
        socket configs included, loads as it is.
        """
        raw = udpProxyConfig({
            "cluster": None, "idle_timeout": "5s", "use_per_packet_load_balancing": True,
            "hash_policies": [{"source_ip": True}],
            "upstream_socket_config": {"max_rx_datagram_size": 9000, "prefer_gro": True},
            "matcher": {"on_no_match": {"action": {
                "name": "route", "typed_config": {"@type": ROUTE, "cluster": "backend"}}}},
        }, listener={"udp_listener_config": {"downstream_socket_config": {
            "max_rx_datagram_size": 9000}}}, cluster={"lb_policy": "RING_HASH"})
        listener = parse(raw).listeners[0]
        config = listener.listenerFilters[0].config
        self.assertEqual(config.cluster, "backend")
        self.assertEqual(config.idleTimeout, 5.0)
        self.assertTrue(config.usePerPacketLoadBalancing)
        self.assertEqual(config.upstreamSocketConfig.maxRxDatagramSize, 9000)
        self.assertTrue(config.hashPolicy.sourceIp)
        self.assertEqual(listener.downstreamSocketConfig.maxRxDatagramSize, 9000)

    def test_camelCaseAndWrappers(self) -> None:
        """
        proto3 JSON names and C{{value: N}} wrappers work as in Envoy.
        """
        raw = udpProxyConfig({"stat_prefix": None, "statPrefix": "dns",
                              "idleTimeout": {"seconds": 3},
                              "upstreamSocketConfig": {"maxRxDatagramSize": {"value": 4000},
                                                       "preferGro": {"value": False}}})
        config = parse(raw).listeners[0].listenerFilters[0].config
        self.assertEqual(config.idleTimeout, 3.0)
        self.assertEqual(config.upstreamMaxDatagramSize, 4000)

    def test_keyPolicy(self) -> None:
        """
        A key hash policy keeps its key.
        """
        config = parse(udpProxyConfig({"hash_policies": [{"key": "k1"}]})
                       ).listeners[0].listenerFilters[0].config
        self.assertEqual(config.hashPolicy.key, "k1")

    def test_falseOriginalSrcIpAccepted(self) -> None:
        """
        use_original_src_ip: false is the default, so it is accepted.
        """
        parse(udpProxyConfig({"use_original_src_ip": False}))

    def test_unsupportedFields(self) -> None:
        """
        Envoy's fields pyenvoy does not implement are named as such.
        """
        for name, value in [("use_original_src_ip", True),
                            ("session_filters", [{"name": "x"}]),
                            ("tunneling_config", {"proxy_host": "h"}),
                            ("access_log", []), ("proxy_access_log", []),
                            ("access_log_options", {})]:
            self.assertError(udpProxyConfig({name: value}), f"{TC}.{name}",
                             f"field {name!r} is not supported by pyenvoy yet")

    def test_unknownField(self) -> None:
        """
        A misspelt field is unknown.
        """
        self.assertError(udpProxyConfig({"idle_timout": "1s"}), f"{TC}.idle_timout",
                         "unknown field 'idle_timout'")

    def test_statPrefixRequired(self) -> None:
        """
        stat_prefix is required.
        """
        self.assertError(udpProxyConfig({"stat_prefix": None}), TC,
                         "missing required field 'stat_prefix'")

    def test_routeRequired(self) -> None:
        """
        One of cluster or matcher is required, and only one.
        """
        self.assertError(udpProxyConfig({"cluster": None}), TC,
                         "one of cluster, matcher is required")
        matcher = {"on_no_match": {"action": {
            "name": "route", "typed_config": {"@type": ROUTE, "cluster": "backend"}}}}
        self.assertError(udpProxyConfig({"matcher": matcher}), TC,
                         "only one of cluster, matcher may be set")

    def test_unknownCluster(self) -> None:
        """
        A cluster that does not exist is reported where it is named.
        """
        self.assertError(udpProxyConfig({"cluster": "nope"}), f"{TC}.cluster",
                         "unknown cluster 'nope'")
        matcher = {"on_no_match": {"action": {
            "name": "route", "typed_config": {"@type": ROUTE, "cluster": "nope"}}}}
        self.assertError(udpProxyConfig({"cluster": None, "matcher": matcher}),
                         f"{TC}.matcher.on_no_match.action.typed_config.cluster",
                         "unknown cluster 'nope'")

    def test_matcherTreeUnsupported(self) -> None:
        """
        Matching on source or destination (matcher_list, matcher_tree) is
        not supported yet, and says so.
        """
        matcher = {"matcher_tree": {"input": {}}, "on_no_match": {"action": {
            "name": "route", "typed_config": {"@type": ROUTE, "cluster": "backend"}}}}
        self.assertError(udpProxyConfig({"cluster": None, "matcher": matcher}),
                         f"{TC}.matcher.matcher_tree",
                         "field 'matcher_tree' is not supported by pyenvoy yet")

    def test_matcherWrongAction(self) -> None:
        """
        An action other than udp_proxy's Route is refused.
        """
        matcher = {"on_no_match": {"action": {
            "name": "route", "typed_config": {"@type": "type.googleapis.com/x.Y",
                                              "cluster": "backend"}}}}
        self.assertError(udpProxyConfig({"cluster": None, "matcher": matcher}),
                         f"{TC}.matcher.on_no_match.action.typed_config.@type",
                         "unknown udp_proxy action @type 'type.googleapis.com/x.Y'")

    def test_badHashPolicies(self) -> None:
        """
        At most one hash policy, with exactly one of source_ip (true) or
        a non-empty key.
        """
        self.assertError(udpProxyConfig({"hash_policies": [{"source_ip": True}, {"key": "a"}]}),
                         f"{TC}.hash_policies", "at most one hash policy")
        self.assertError(udpProxyConfig({"hash_policies": [{"source_ip": False}]}),
                         f"{TC}.hash_policies[0].source_ip", "must be true")
        self.assertError(udpProxyConfig({"hash_policies": [{"key": ""}]}),
                         f"{TC}.hash_policies[0].key", "must not be empty")
        self.assertError(udpProxyConfig({"hash_policies": [{}]}),
                         f"{TC}.hash_policies[0]", "one of source_ip, key is required")

    def test_badIdleTimeout(self) -> None:
        """
        idle_timeout must be a duration of at least 1ms.
        """
        self.assertError(udpProxyConfig({"idle_timeout": "0s"}), f"{TC}.idle_timeout",
                         "must be at least 1ms")
        self.assertError(udpProxyConfig({"idle_timeout": "soon"}), f"{TC}.idle_timeout",
                         "expected a duration")

    def test_badDatagramSize(self) -> None:
        """
        max_rx_datagram_size is 1 to 65535, upstream and downstream.
        """
        self.assertError(
            udpProxyConfig({"upstream_socket_config": {"max_rx_datagram_size": 65536}}),
            f"{TC}.upstream_socket_config.max_rx_datagram_size", "must be less than 65536")
        self.assertError(
            udpProxyConfig(listener={"udp_listener_config": {"downstream_socket_config": {
                "max_rx_datagram_size": 0}}}),
            f"{L0}.udp_listener_config.downstream_socket_config.max_rx_datagram_size",
            "must be at least 1")

    def test_quicUnsupported(self) -> None:
        """
        QUIC listener options are refused by name.
        """
        self.assertError(udpProxyConfig(listener={"udp_listener_config": {"quic_options": {}}}),
                         f"{L0}.udp_listener_config.quic_options",
                         "field 'quic_options' is not supported by pyenvoy yet")

    def test_udpListenerTakesNoFilterChains(self) -> None:
        """
        A UDP listener with filter chains is refused.
        """
        raw = udpProxyConfig(listener={"filter_chains": [{"filters": [{
            "name": "envoy.filters.network.echo", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}]}]})
        self.assertError(raw, f"{L0}.filter_chains", "a UDP listener takes no filter chains")

    def test_udpListenerNeedsUdpProxy(self) -> None:
        """
        A UDP listener without listener filters is refused.
        """
        self.assertError(udpProxyConfig(listener={"listener_filters": []}),
                         f"{L0}.listener_filters", "needs the "
                         "'envoy.filters.udp_listener.udp_proxy' listener filter")

    def test_udpListenerOneFilter(self) -> None:
        """
        Two UDP listener filters are refused.
        """
        raw = udpProxyConfig()
        filters = raw["static_resources"]["listeners"][0]["listener_filters"]
        filters.append(filters[0])
        self.assertError(raw, f"{L0}.listener_filters", "exactly one listener filter")

    def test_tcpListenerFilterOnUdp(self) -> None:
        """
        A TCP listener filter on a UDP listener is unknown there.
        """
        raw = udpProxyConfig(listener={"listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                         "tls_inspector.v3.TlsInspector"}}]})
        errors = self.errors(raw)
        self.assertEqual(errors[0][0], f"{L0}.listener_filters[0].typed_config.@type")
        self.assertIn("unknown UDP listener filter", errors[0][1])

    def test_udpProxyOnTcpListener(self) -> None:
        """
        udp_proxy on a TCP listener is not a TCP listener filter.
        """
        raw = udpProxyConfig()
        raw["static_resources"]["listeners"][0]["address"]["socket_address"]["protocol"] = "TCP"
        errors = self.errors(raw)
        self.assertIn(f"{L0}.listener_filters[0].typed_config.@type", [p for p, _ in errors])
