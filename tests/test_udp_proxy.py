"""
udp_proxy over real loopback sockets: an echo server and a
C{twisted.names} DNS server behind pyenvoy, driven by Twisted clients, by
C{dig}, and (with C{etc/udp_proxy.yaml}) by C{twistd pyenvoy} itself.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names import dns, error, server
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from pyenvoy.config import parse
from pyenvoy.network import udp_listener
from pyenvoy.network.udp_listener import ConnectedUdpSocket
from pyenvoy.server import Server
from tests.support.net import startServer, stat
from tests.support.twistd import DEADLINE, startTwistd

UDP_PROXY = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds any one wait of these tests may take.
WAIT = 10.0


def udpListener(port: int = 0, proxy: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """
    A UDP listener "udp" on 127.0.0.1 whose udp_proxy (stat_prefix
    "test") sends to cluster "backend".
    """
    typed = {"@type": UDP_PROXY, "stat_prefix": "test", "cluster": "backend"}
    typed.update(proxy or {})
    listener = {
        "name": "udp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port,
                                       "protocol": "UDP"}},
        "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy",
                              "typed_config": typed}],
    }
    listener.update(extra)
    return listener


def udpBootstrap(ports: list[int], proxy: dict[str, Any] | None = None,
                 cluster: dict[str, Any] | None = None, admin: bool = False,
                 **listener: Any) -> dict[str, Any]:
    """
    One udp_proxy listener in front of cluster "backend" of C{ports} on
    127.0.0.1.
    """
    clusterConfig = {
        "name": "backend",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": p}}}}
            for p in ports]}]},
    }
    clusterConfig.update(cluster or {})
    raw: dict[str, Any] = {"static_resources": {"listeners": [udpListener(proxy=proxy,
                                                                          **listener)],
                                                "clusters": [clusterConfig]}}
    if admin:
        raw["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                       "port_value": 0}}}
    return raw


class Echo(DatagramProtocol):
    """
    Echoes every datagram to its sender, remembering who sent.
    """

    noisy = False

    def __init__(self) -> None:
        self.senders: set[tuple[str, int]] = set()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.senders.add(addr)
        self.transport.write(datagram, addr)


class Client(DatagramProtocol):
    """
    A client socket that keeps what it receives and can wait for a number
    of datagrams.
    """

    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._waiting: list[tuple[int, defer.Deferred[list[bytes]]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        for entry in list(self._waiting):
            count, d = entry
            if len(self.received) >= count:
                self._waiting.remove(entry)
                d.callback(self.received)

    def waitFor(self, count: int) -> defer.Deferred[list[bytes]]:
        """
        Fire with everything received once C{count} datagrams are in.
        """
        if len(self.received) >= count:
            return defer.succeed(self.received)
        d: defer.Deferred[list[bytes]] = defer.Deferred()
        self._waiting.append((count, d))
        return d.addTimeout(WAIT, reactor)


def listenUdp(case: TestCase, protocol: DatagramProtocol, port: int = 0,
              maxPacketSize: int = 65535) -> int:
    """
    Bind C{protocol} on 127.0.0.1 until the test ends; return the port.
    """
    listening = reactor.listenUDP(port, protocol, interface="127.0.0.1",
                                  maxPacketSize=maxPacketSize)
    case.addCleanup(listening.stopListening)
    return listening.getHost().port


def udpPort(server: Server) -> int:
    """
    The port the UDP listener bound.
    """
    address = server.context.listeners[0].boundAddress()
    assert address is not None
    return address[1]


def freeUdpPort() -> int:
    """
    A UDP port on 127.0.0.1 that nothing listens on (just now).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def settle(seconds: float = 0.05) -> None:
    """
    Let the reactor run for a moment.
    """
    await deferLater(reactor, seconds, lambda: None)


class ProxyTests(TestCase):
    """
    Datagrams through pyenvoy to a real echo server and back.
    """

    def setUp(self) -> None:
        self.echo = Echo()
        self.echoPort = listenUdp(self, self.echo)

    def start(self, **kwargs: Any) -> Server:
        server = startServer(self, udpBootstrap([self.echoPort], **kwargs))
        self.port = udpPort(server)
        return server

    def client(self) -> Client:
        client = Client()
        listenUdp(self, client)
        return client

    async def test_echo(self) -> None:
        """
        Datagrams go to the upstream and replies come back, whole and in
        one session; the upstream sees pyenvoy, not the client.
        """
        server = self.start()
        client = self.client()
        for index in range(5):
            client.transport.write(b"ping %d" % index, ("127.0.0.1", self.port))
        received = await client.waitFor(5)
        self.assertEqual(sorted(received), [b"ping %d" % i for i in range(5)])
        self.assertEqual(len(self.echo.senders), 1)
        self.assertNotIn(client.transport.getHost().port, {p for _, p in self.echo.senders})
        self.assertEqual(stat(server, "udp.test.downstream_sess_total"), 1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_active"), 1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_rx_datagrams"), 5)
        self.assertEqual(stat(server, "udp.test.downstream_sess_tx_datagrams"), 5)
        self.assertEqual(stat(server, "cluster.backend.udp.sess_rx_datagrams"), 5)
        self.assertEqual(stat(server, "cluster.backend.udp.sess_tx_datagrams"), 5)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_tx_bytes_total"), 30)

    async def test_fiftyClients(self) -> None:
        """
        50 clients at once, each gets only its own replies (each session's
        upstream socket answers for one client).
        """
        server = self.start()
        clients = [self.client() for _ in range(50)]
        for round in range(4):
            for index, client in enumerate(clients):
                client.transport.write(b"client %d round %d" % (index, round),
                                       ("127.0.0.1", self.port))
        await defer.gatherResults([c.waitFor(4) for c in clients])
        await settle()
        for index, client in enumerate(clients):
            self.assertEqual(sorted(client.received),
                             [b"client %d round %d" % (index, r) for r in range(4)])
        self.assertEqual(len(self.echo.senders), 50)
        self.assertEqual(stat(server, "udp.test.downstream_sess_total"), 50)
        self.assertEqual(stat(server, "cluster.backend.circuit_breakers.default.cx_open"), 0)

    async def test_largeDatagramWhole(self) -> None:
        """
        With the listener's max_rx_datagram_size at 9000 (as in Envoy's
        example), an 8,000-byte datagram goes up and comes back whole.
        """
        server = self.start(udp_listener_config={"downstream_socket_config": {
            "max_rx_datagram_size": 9000}})
        client = self.client()
        payload = bytes(range(256)) * 31 + b"end!" * 16
        self.assertEqual(len(payload), 8000)
        client.transport.write(payload, ("127.0.0.1", self.port))
        (received,) = await client.waitFor(1)
        self.assertEqual(received, payload)
        self.assertEqual(stat(server, "udp.test.downstream_sess_rx_bytes"), 8000)
        self.assertEqual(stat(server, "udp.test.downstream_sess_tx_bytes"), 8000)

    async def test_largeDatagramDroppedByDefault(self) -> None:
        """
        With Envoy's default of 1500, a longer datagram is dropped (not
        cut) and counted; one of 1500 bytes passes.
        """
        server = self.start()
        client = self.client()
        client.transport.write(b"x" * 1501, ("127.0.0.1", self.port))
        client.transport.write(b"y" * 1500, ("127.0.0.1", self.port))
        (received,) = await client.waitFor(1)
        self.assertEqual(received, b"y" * 1500)
        self.assertEqual(stat(server, "listener.127.0.0.1_0.udp.downstream_rx_datagram_dropped"),
                         1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_rx_datagrams"), 1)

    async def test_largeReplyDropped(self) -> None:
        """
        A reply longer than the upstream receive size is dropped and
        counted as sess_rx_datagrams_dropped.
        """
        server = self.start(
            proxy={"upstream_socket_config": {"max_rx_datagram_size": 100,
                                              "prefer_gro": False}},
            udp_listener_config={"downstream_socket_config": {"max_rx_datagram_size": 9000}})
        client = self.client()
        client.transport.write(b"z" * 101, ("127.0.0.1", self.port))
        client.transport.write(b"w" * 100, ("127.0.0.1", self.port))
        (received,) = await client.waitFor(1)
        self.assertEqual(received, b"w" * 100)
        self.assertEqual(stat(server, "cluster.backend.udp.sess_rx_datagrams_dropped"), 1)

    async def test_idleSessionExpires(self) -> None:
        """
        A quiet session ends after idle_timeout and closes its socket; the
        client's next datagram opens a new one.
        """
        server = self.start(proxy={"idle_timeout": "0.2s"})
        client = self.client()
        client.transport.write(b"a", ("127.0.0.1", self.port))
        await client.waitFor(1)
        (session,) = server.context.listeners[0].listener.filter.sessions.values()
        self.assertNotEqual(session.socket.socket.fileno(), -1)
        await settle(0.5)
        self.assertEqual(stat(server, "udp.test.idle_timeout"), 1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_active"), 0)
        self.assertEqual(session.socket.socket.fileno(), -1)
        client.transport.write(b"b", ("127.0.0.1", self.port))
        await client.waitFor(2)
        self.assertEqual(stat(server, "udp.test.downstream_sess_total"), 2)

    async def test_portUnreachableIsNotFatal(self) -> None:
        """
        An upstream port with nobody on it answers ICMP port unreachable:
        counted as a session error, the session lives on, and once a
        server is there its replies come through.
        """
        deadPort = freeUdpPort()
        server = startServer(self, udpBootstrap([deadPort]))
        self.port = udpPort(server)
        client = self.client()
        for _ in range(3):
            client.transport.write(b"anyone?", ("127.0.0.1", self.port))
            await settle(0.05)
        errors = (stat(server, "cluster.backend.udp.sess_rx_errors")
                  + stat(server, "cluster.backend.udp.sess_tx_errors"))
        self.assertGreaterEqual(errors, 1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_total"), 1)
        self.assertEqual(stat(server, "udp.test.downstream_sess_active"), 1)
        listenUdp(self, Echo(), port=deadPort)
        client.transport.write(b"now?", ("127.0.0.1", self.port))
        received = await client.waitFor(1)
        self.assertEqual(received, [b"now?"])
        self.assertEqual(stat(server, "udp.test.downstream_sess_total"), 1)

    async def test_withoutEpoll(self) -> None:
        """
        Where there is no epoll, the reactor reads the listener's port and
        each session socket itself, with the same results.
        """
        self.patch(udp_listener, "select", types.SimpleNamespace())
        server = self.start()
        listener = server.context.listeners[0].listener
        self.assertIsNone(listener.poller)
        clients = [self.client() for _ in range(3)]
        for index, client in enumerate(clients):
            client.transport.write(b"c%d" % index, ("127.0.0.1", self.port))
        await defer.gatherResults([c.waitFor(1) for c in clients])
        self.assertEqual([c.received for c in clients], [[b"c0"], [b"c1"], [b"c2"]])
        sockets = [s.socket for s in listener.filter.sessions.values()]
        self.assertTrue(all(isinstance(s, ConnectedUdpSocket) for s in sockets))
        self.assertTrue(all(s in reactor.getReaders() for s in sockets))
        await server.stopService()
        self.assertTrue(all(s not in reactor.getReaders() for s in sockets))

    async def test_filterErrorIsContained(self) -> None:
        """
        A bug in the data path is logged and counted
        (pyenvoy.filter_errors); the listener and its sessions go on.
        """
        server = self.start()
        client = self.client()
        client.transport.write(b"a", ("127.0.0.1", self.port))
        await client.waitFor(1)
        (session,) = server.context.listeners[0].listener.filter.sessions.values()
        sendto = session._sendto

        def broken(data: bytes, peer: Any) -> None:
            raise RuntimeError("bug")

        session._sendto = broken
        client.transport.write(b"b", ("127.0.0.1", self.port))
        for _ in range(40):
            if stat(server, "pyenvoy.filter_errors"):
                break
            await settle(0.05)
        self.assertEqual(stat(server, "pyenvoy.filter_errors"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        session._sendto = sendto
        client.transport.write(b"c", ("127.0.0.1", self.port))
        self.assertEqual(await client.waitFor(2), [b"a", b"c"])

    async def test_ipv6(self) -> None:
        """
        A listener and an upstream on ::1 work as on 127.0.0.1.
        """
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise SkipTest("no IPv6 loopback")
        echo = reactor.listenUDP(0, Echo(), interface="::1")
        self.addCleanup(echo.stopListening)
        raw = udpBootstrap([echo.getHost().port])
        raw["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "::1"
        endpoint = raw["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "::1"
        server = startServer(self, raw)
        client = Client()
        listening = reactor.listenUDP(0, client, interface="::1")
        self.addCleanup(listening.stopListening)
        client.transport.write(b"six", ("::1", udpPort(server)))
        self.assertEqual(await client.waitFor(1), [b"six"])
        (peer,) = server.context.listeners[0].listener.filter.sessions
        self.assertEqual(peer, ("::1", listening.getHost().port))

    async def test_stopClosesSessions(self) -> None:
        """
        Stopping the server closes the listener and every session socket.
        """
        server = self.start()
        client = self.client()
        client.transport.write(b"a", ("127.0.0.1", self.port))
        await client.waitFor(1)
        listener = server.context.listeners[0].listener
        sockets = [s.socket for s in listener.filter.sessions.values()]
        poller = listener.poller
        await server.stopService()
        self.assertTrue(all(s.closed and s.socket.fileno() == -1 for s in sockets))
        self.assertNotIn(poller, reactor.getReaders())
        self.assertEqual(stat(server, "cluster.backend.circuit_breakers.default.cx_open"), 0)
        self.assertEqual(server.context.clusterManager.get("backend").activeConnections, 0)


class BindTests(SynchronousTestCase):
    """
    A UDP port that cannot be bound stops start-up.
    """

    def test_portInUse(self) -> None:
        """
        Start-up ends with SystemExit naming the listener and the address.
        """
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = Server(parse(udpBootstrap([9], port=port)), reactor)
        e = self.assertRaises(SystemExit, server.privilegedStartService)
        self.assertIn(f"UDP listener 'udp' cannot bind 127.0.0.1:{port}", str(e))
        self.flushLoggedErrors()


class ConnectedUdpSocketTests(TestCase):
    """
    The session socket outlives ICMP errors that kill a Twisted UDP port.
    """

    async def test_refusedThenServed(self) -> None:
        """
        A port unreachable becomes a read error for the receiver; reading
        goes on, and a later reply is delivered.
        """
        deadPort = freeUdpPort()

        class Receiver:
            def __init__(self) -> None:
                self.data: list[bytes] = []
                self.errors: list[Exception] = []
                self.lost = False

            def upstreamDatagram(self, data: bytes) -> None:
                self.data.append(data)

            def upstreamReadError(self, reason: Exception) -> None:
                self.errors.append(reason)

            def upstreamLost(self) -> None:
                self.lost = True

        receiver = Receiver()
        connected = ConnectedUdpSocket(reactor, ("127.0.0.1", deadPort), 100, receiver)
        self.addCleanup(connected.close)
        connected.send(b"hello?")
        for _ in range(40):
            if receiver.errors:
                break
            await settle(0.05)
        self.assertIsInstance(receiver.errors[0], ConnectionRefusedError)
        self.assertIn(connected, reactor.getReaders())
        listenUdp(self, Echo(), port=deadPort)
        connected.send(b"hello")
        for _ in range(40):
            if receiver.data:
                break
            await settle(0.05)
        self.assertEqual(receiver.data, [b"hello"])
        self.assertFalse(receiver.lost)


class FixedAnswers:
    """
    A DNS resolver answering one A record, NXDOMAIN for anything else.
    """

    def __init__(self) -> None:
        self.queries = 0

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        self.queries += 1
        if query.type == dns.A and query.name.name == b"svc.pyenvoy.test":
            answer = dns.RRHeader(b"svc.pyenvoy.test", dns.A, dns.IN, 60,
                                  dns.Record_A("10.1.2.3", 60))
            return defer.succeed(([answer], [], []))
        return defer.fail(error.DomainError())


def startDnsServer(case: TestCase, port: int = 0) -> tuple[FixedAnswers, int]:
    """
    A C{twisted.names} server on 127.0.0.1 UDP until the test ends.
    """
    resolver = FixedAnswers()
    factory = server.DNSServerFactory(clients=[resolver])
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(controller=factory)
    protocol.noisy = False
    return resolver, listenUdp(case, protocol, port=port)


def needDig() -> str:
    """
    The path of dig, or skip (C{make test} installs bind9-dnsutils).
    """
    path = shutil.which("dig")
    if path is None:
        raise SkipTest("dig not installed (apt-get install bind9-dnsutils)")
    return path


async def dig(port: int, name: str = "svc.pyenvoy.test") -> tuple[str, int]:
    """
    Ask C{name}'s A record of 127.0.0.1:C{port} with dig, over UDP; return
    its output and exit status.
    """
    out, err, code = await getProcessOutputAndValue(
        needDig(), ["@127.0.0.1", "-p", str(port), name, "A", "+tries=2", "+time=2",
                    "+notcp", "+nocookie"], env=os.environ)
    return (out + err).decode("utf-8", "replace"), code


class DnsTests(TestCase):
    """
    A real DNS round trip: dig, pyenvoy, a twisted.names server.
    """

    async def test_digThroughProxy(self) -> None:
        """
        dig gets the answer through pyenvoy; each query is a session.
        """
        needDig()
        resolver, dnsPort = startDnsServer(self)
        proxy = startServer(self, udpBootstrap([dnsPort]))
        port = udpPort(proxy)
        output, code = await dig(port)
        self.assertEqual(code, 0, output)
        self.assertIn("status: NOERROR", output)
        self.assertIn("10.1.2.3", output)
        output, code = await dig(port, "missing.pyenvoy.test")
        self.assertEqual(code, 0, output)
        self.assertIn("status: NXDOMAIN", output)
        self.assertEqual(resolver.queries, 2)
        self.assertEqual(stat(proxy, "udp.test.downstream_sess_total"), 2)
        self.assertEqual(stat(proxy, "udp.test.downstream_sess_tx_datagrams"), 2)


class AdminTests(TestCase):
    """
    UDP listeners and udp_proxy stats in the admin interface.
    """

    def setUp(self) -> None:
        self.echoPort = listenUdp(self, Echo())
        self.server = startServer(self, udpBootstrap([self.echoPort], admin=True))
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    async def get(self, path: str) -> str:
        assert self.server.adminService is not None
        host, port = self.server.adminService.boundAddress()  # type: ignore[misc]
        response = await self.agent.request(b"GET", f"http://{host}:{port}{path}".encode(),
                                            Headers())
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        return body.decode()

    async def test_listeners(self) -> None:
        """
        /listeners shows the bound UDP address, with protocol UDP in JSON.
        """
        port = udpPort(self.server)
        self.assertEqual(await self.get("/listeners"), f"udp::127.0.0.1:{port}\n")
        body = json.loads(await self.get("/listeners?format=json"))
        self.assertEqual(body["listener_statuses"][0]["local_address"]["socket_address"],
                         {"address": "127.0.0.1", "port_value": port, "protocol": "UDP"})

    async def test_stats(self) -> None:
        """
        /stats and /stats/prometheus show the session stats, Envoy's names
        and tags.
        """
        client = Client()
        listenUdp(self, client)
        client.transport.write(b"hi", ("127.0.0.1", udpPort(self.server)))
        await client.waitFor(1)
        text = await self.get("/stats")
        self.assertIn("udp.test.downstream_sess_total: 1\n", text)
        self.assertIn("cluster.backend.udp.sess_tx_datagrams: 1\n", text)
        prometheus = await self.get("/stats/prometheus")
        list(text_string_to_metric_families(prometheus))
        self.assertIn('envoy_udp_downstream_sess_total{envoy_udp_prefix="test"} 1\n',
                      prometheus)
        self.assertIn('envoy_cluster_udp_sess_rx_datagrams{envoy_cluster_name="backend"} 1\n',
                      prometheus)


class TwistdTests(SynchronousTestCase):
    """
    C{twistd pyenvoy} with the shipped C{etc/udp_proxy.yaml}, driven by dig.
    """

    def test_shippedConfig(self) -> None:
        """
        etc/udp_proxy.yaml (its ports moved to free ones, its cluster to a
        test DNS server) serves dig, and its admin counts the session.
        """
        needDig()
        dnsServer = subprocess.Popen(
            [sys.executable, "-c", _DNS_SERVER], stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        self.addCleanup(_stop, dnsServer)
        assert dnsServer.stdout is not None
        dnsPort = int(dnsServer.stdout.readline())
        with open(os.path.join(REPO, "etc", "udp_proxy.yaml")) as f:
            raw = yaml.safe_load(f)
        config = copy.deepcopy(raw)
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        for listener in config["static_resources"]["listeners"]:
            listener["address"]["socket_address"]["port_value"] = 0
        for cluster in config["static_resources"]["clusters"]:
            for locality in cluster["load_assignment"]["endpoints"]:
                for entry in locality["lb_endpoints"]:
                    entry["endpoint"]["address"]["socket_address"].update(
                        {"address": "127.0.0.1", "port_value": dnsPort})
        twistd = startTwistd(self, config)
        (name,) = twistd.listenerPorts
        result = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(twistd.listenerPorts[name]), "svc.pyenvoy.test",
             "A", "+short", "+tries=2", "+time=2", "+notcp"],
            capture_output=True, timeout=DEADLINE, text=True)
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "10.1.2.3"),
                         result.stderr)
        end = time.monotonic() + DEADLINE
        while True:
            status, body = twistd.request("GET", "/stats?filter=^udp%5C.")
            if ".downstream_sess_tx_datagrams: 1" in body or time.monotonic() > end:
                break
            time.sleep(0.05)
        self.assertEqual(status, 200)
        self.assertIn(".downstream_sess_total: 1\n", body)
        self.assertIn(".downstream_sess_tx_datagrams: 1\n", body)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(DEADLINE)
    for stream in (process.stdout, process.stdin):
        if stream is not None:
            stream.close()


#: A twisted.names server answering svc.pyenvoy.test, printing its port;
#: it exits when its stdin closes (the test ends) or after two minutes.
_DNS_SERVER = r"""
import sys
from twisted.internet import reactor, defer, stdio
from twisted.internet.protocol import Protocol
from twisted.names import dns, error, server

class Answers:
    def query(self, query, timeout=None):
        if query.type == dns.A and query.name.name == b"svc.pyenvoy.test":
            return defer.succeed(([dns.RRHeader(b"svc.pyenvoy.test", dns.A, dns.IN, 60,
                                                dns.Record_A("10.1.2.3", 60))], [], []))
        return defer.fail(error.DomainError())

class Exit(Protocol):
    def connectionLost(self, reason):
        if reactor.running:
            reactor.stop()

port = reactor.listenUDP(0, dns.DNSDatagramProtocol(
    controller=server.DNSServerFactory(clients=[Answers()])), interface="127.0.0.1")
print(port.getHost().port, flush=True)
stdio.StandardIO(Exit())
reactor.callLater(120, reactor.stop)
reactor.run()
"""
