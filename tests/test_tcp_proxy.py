"""
tcp_proxy through real loopback sockets: data integrity, half-close, many
connections, flow control, and every way an upstream can fail.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from pyenvoy.upstream.cluster_manager import ConnectStatus, _DirectClient
from tests.support.net import (
    Client,
    Echo,
    connect,
    listen,
    listenStalled,
    listenerPort,
    startServer,
    stat,
    tcpProxyConfig,
    waitFor,
)

MiB = 1024 * 1024


def sleep(seconds: float) -> Deferred:
    """
    A Deferred that fires after C{seconds} on the real reactor.
    """
    return deferLater(reactor, seconds, lambda: None)


@implementer(IHalfCloseableProtocol)
class HashAndReply(Protocol):
    """
    Hashes everything it receives; after the client's FIN, sends
    C{reply} and closes.  Records the hash on the factory-wide list.
    """

    digests: list[str] = []
    reply = b""

    def connectionMade(self) -> None:
        self.hasher = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.hasher.update(data)

    def readConnectionLost(self) -> None:
        type(self).digests.append(self.hasher.hexdigest())
        self.transport.write(type(self).reply)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class DataIntegrityTests(TestCase):
    """
    Bytes arrive whole and in order both ways.
    """

    timeout = 120

    async def test_64MiBEachWayKeepsSha256(self) -> None:
        """
        64 MiB of random bytes each way pass through with equal SHA-256.
        """
        upload = os.urandom(64 * MiB)
        download = os.urandom(64 * MiB)

        class Server(HashAndReply):
            digests: list[str] = []
            reply = download

        port = listen(self, Server)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server), Client(hashOnly=True))
        client.transport.write(upload)
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(Server.digests, [hashlib.sha256(upload).hexdigest()])
        self.assertEqual(client.hasher.hexdigest(), hashlib.sha256(download).hexdigest())
        self.assertEqual(stat(server, "tcp.test.downstream_cx_rx_bytes_total"), 64 * MiB)
        self.assertEqual(stat(server, "tcp.test.downstream_cx_tx_bytes_total"), 64 * MiB)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_tx_bytes_total"), 64 * MiB)

    async def test_halfCloseFromClient(self) -> None:
        """
        A client that shuts its write side still receives the whole reply.
        """
        reply = os.urandom(3 * MiB)

        class Server(HashAndReply):
            digests: list[str] = []

        Server.reply = reply
        port = listen(self, Server)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        client.transport.write(b"request")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(client.data(), reply)
        self.assertEqual(Server.digests, [hashlib.sha256(b"request").hexdigest()])

    async def test_requestCountedOnceConnected(self) -> None:
        """
        As Envoy's TCP pool: the connection is a pending request while it
        connects and a request (cluster and host) once connected; neither
        is left active after the close, and no per-host rq_success is
        counted (only HTTP counts it).
        """
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        client.transport.write(b"ping")
        await waitFor(lambda: client.data() == b"ping")
        names = ("upstream_rq_pending_total", "upstream_rq_pending_active", "upstream_rq_total",
                 "upstream_rq_active")
        self.assertEqual([stat(server, "cluster.backend." + n) for n in names], [1, 0, 1, 1])
        host = server.context.clusterManager.clusters["backend"].hosts[0]
        self.assertEqual((host.stats.rq_total, host.stats.rq_active), (1, 1))
        client.transport.loseConnection()
        await client.closed
        await waitFor(lambda: stat(server, "cluster.backend.upstream_rq_active") == 0)
        self.assertEqual((host.stats.rq_active, host.stats.rq_success, host.stats.rq_error),
                         (0, 0, 0))

    async def test_timeHistogramsInWholeMilliseconds(self) -> None:
        """
        Connection times are recorded in whole milliseconds, as Envoy's
        timespans record them (a sub-millisecond connection counts as 0,
        in the lowest bucket).
        """
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        client.transport.write(b"x")
        await waitFor(lambda: client.data() == b"x")
        client.transport.loseConnection()
        await client.closed
        store = server.context.store
        names = ("cluster.backend.upstream_cx_connect_ms", "cluster.backend.upstream_cx_length_ms")
        await waitFor(lambda: all(store.get(n).count for n in names))
        listener = [h for h in store if h.name.endswith("downstream_cx_length_ms")]
        await waitFor(lambda: listener[0].count == 1)
        for histogram in [store.get(n) for n in names] + listener:
            self.assertEqual(histogram.sum, int(histogram.sum), histogram.name)

    async def test_halfCloseFromUpstream(self) -> None:
        """
        An upstream FIN reaches the client as end of stream while the
        client can still send.
        """

        @implementer(IHalfCloseableProtocol)
        class Greeter(Protocol):
            received = []

            def connectionMade(self) -> None:
                self.transport.write(b"banner")
                self.transport.loseWriteConnection()

            def dataReceived(self, data: bytes) -> None:
                Greeter.received.append(data)

            def readConnectionLost(self) -> None:
                self.transport.loseConnection()

            def writeConnectionLost(self) -> None:
                pass

        port = listen(self, Greeter)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server), Client(closeOnEnd=False))
        await waitFor(lambda: client.endStreamSeen)
        self.assertEqual(client.data(), b"banner")
        client.transport.write(b"after-fin")
        await waitFor(lambda: b"".join(Greeter.received) == b"after-fin")
        client.transport.loseWriteConnection()
        await client.closed

    async def test_200ConcurrentConnections(self) -> None:
        """
        200 clients at once each get exactly their own bytes back.
        """
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        proxyPort = listenerPort(server)
        clients = [await connect(proxyPort) for _ in range(200)]
        payloads = [os.urandom(1000) + str(i).encode() for i in range(200)]
        for client, payload in zip(clients, payloads):
            client.transport.write(payload)
            client.transport.loseWriteConnection()
        await gatherResults([c.closed for c in clients])
        for client, payload in zip(clients, payloads):
            self.assertEqual(client.data(), payload)
        self.assertEqual(stat(server, "tcp.test.downstream_cx_total"), 200)
        await waitFor(lambda: stat(server, "listener.127.0.0.1_0.downstream_cx_active") == 0)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_total"), 200)


class FlowControlTests(TestCase):
    """
    A slow side pauses the other; buffers stay bounded.
    """

    timeout = 60

    async def test_clientThatStopsReadingBoundsProxyMemory(self) -> None:
        """
        While the client does not read, the proxy buffers at most about
        its buffer limit towards it and stops reading the upstream; once
        the client reads again, every byte arrives.
        """
        total = 32 * MiB
        payload = os.urandom(total)

        class Flood(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(payload)
                self.transport.loseConnection()

        port = listen(self, Flood)
        limit = 64 * 1024
        server = startServer(self, tcpProxyConfig(
            [port], listener={"per_connection_buffer_limit_bytes": limit}))
        client = await connect(listenerPort(server), Client(hashOnly=True))
        client.transport.pauseProducing()
        await waitFor(lambda: stat(
            server, "cluster.backend.upstream_flow_control_paused_reading_total") > 0)
        await sleep(0.5)
        (connection,) = server.context.listeners[0].listener.connections
        buffered = connection.writeBufferSize()
        # At most one limit's worth plus one read chunk waits for the client.
        self.assertLessEqual(buffered, limit + 65536)
        self.assertGreater(buffered, 0)
        # Envoy's gauge says the same, read at the same moment.
        self.assertEqual(stat(server, "tcp.test.downstream_cx_tx_bytes_buffered"), buffered)
        self.assertLess(client.count, total)
        client.transport.resumeProducing()
        await client.closed
        self.assertEqual(stat(server, "tcp.test.downstream_cx_tx_bytes_buffered"), 0)
        self.assertEqual(client.count, total)
        self.assertEqual(client.hasher.hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertGreater(
            stat(server, "cluster.backend.upstream_flow_control_resumed_reading_total"), 0)

    async def test_upstreamThatStopsReadingPausesClient(self) -> None:
        """
        An upstream that does not read makes the proxy stop reading the
        client, counted as downstream_flow_control_paused_reading_total.
        """
        port, sinks = listenStalled(self)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        chunk = os.urandom(MiB)
        for _ in range(16):
            client.transport.write(chunk)
        await waitFor(lambda: stat(
            server, "tcp.test.downstream_flow_control_paused_reading_total") > 0)
        self.assertLess(stat(server, "tcp.test.downstream_cx_rx_bytes_total"), 16 * MiB)
        # What waits for the upstream shows in the cluster's gauge.
        self.assertGreater(stat(server, "cluster.backend.upstream_cx_tx_bytes_buffered"), 0)
        for sink in sinks:
            sink.transport.resumeProducing()
        await waitFor(lambda: stat(server, "tcp.test.downstream_cx_rx_bytes_total") == 16 * MiB)
        await waitFor(lambda: stat(server, "cluster.backend.upstream_cx_tx_bytes_buffered") == 0)
        self.assertGreater(
            stat(server, "tcp.test.downstream_flow_control_resumed_reading_total"), 0)
        client.transport.loseConnection()
        await client.closed
        await waitFor(lambda: all(sink.lost for sink in sinks))


class UpstreamFailureTests(TestCase):
    """
    Refused, timed-out and dying upstreams close the client cleanly with
    Envoy's flags and stats.
    """

    timeout = 30

    def unusedPort(self) -> int:
        """
        A loopback port nothing listens on.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    async def test_upstreamRefuses(self) -> None:
        """
        Connection refused: client closed, flag UF, upstream_cx_connect_fail;
        as in Envoy's pool, the refused socket counts as destroyed by the
        remote side and its pending request as ejected, never as a request.
        """
        server = startServer(self, tcpProxyConfig([self.unusedPort()]))
        client = await connect(listenerPort(server))
        await client.closed
        self.assertEqual(client.data(), b"")
        counts = {name: stat(server, "cluster.backend." + name) for name in (
            "upstream_cx_connect_fail", "upstream_cx_active", "upstream_cx_destroy_local",
            "upstream_cx_destroy_remote", "upstream_rq_pending_total",
            "upstream_rq_pending_active", "upstream_rq_pending_failure_eject",
            "upstream_rq_total", "upstream_rq_active")}
        self.assertEqual(counts, {
            "upstream_cx_connect_fail": 1, "upstream_cx_active": 0,
            "upstream_cx_destroy_local": 0, "upstream_cx_destroy_remote": 1,
            "upstream_rq_pending_total": 1, "upstream_rq_pending_active": 0,
            "upstream_rq_pending_failure_eject": 1,
            "upstream_rq_total": 0, "upstream_rq_active": 0})

    async def test_upstreamConnectTimesOut(self) -> None:
        """
        An upstream whose accept queue is full never answers the SYN: after
        connect_timeout the client is closed and upstream_cx_connect_timeout
        counted.
        """
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(0)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        self.addCleanup(lambda: [s.close() for s in fillers])
        server = startServer(self, tcpProxyConfig([port], cluster={"connect_timeout": "0.25s"}))
        client = await connect(listenerPort(server))
        await client.closed
        # Envoy counts a timed-out connect as a connect failure too, and the
        # connection as destroyed locally.
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_timeout"), 1)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 1)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_destroy_local"), 1)
        # Never connected: no request was active.
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_destroy_with_active_rq"), 0)

    async def test_upstreamDiesMidStream(self) -> None:
        """
        An upstream that resets after sending: the client gets the bytes
        sent before and a clean close; upstream_cx_destroy_remote counts it.
        """

        class Dying(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"partial reply")
                reactor.callLater(0.05, self.transport.abortConnection)

        port = listen(self, Dying)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        await client.closed
        self.assertEqual(client.data(), b"partial reply")
        from twisted.internet.error import ConnectionDone
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_destroy_remote"), 1)
        # As Envoy's TCP pool: tcp_proxy's request is active until the end.
        self.assertEqual(
            [stat(server, f"cluster.backend.upstream_cx_destroy{kind}_with_active_rq")
             for kind in ("", "_remote", "_local")], [1, 1, 0])

    async def test_retryPicksAnotherHost(self) -> None:
        """
        With max_connect_attempts 2, a refused first host is retried on
        the next one and the client is served.
        """
        live = listen(self, Echo)
        server = startServer(self, tcpProxyConfig(
            [self.unusedPort(), live], tcpProxy={"max_connect_attempts": 2}))
        client = await connect(listenerPort(server))
        client.transport.write(b"ping")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(client.data(), b"ping")
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 1)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_total"), 2)

    async def test_retriesExhausted(self) -> None:
        """
        When every attempt fails, upstream_cx_connect_attempts_exceeded is
        counted.
        """
        server = startServer(self, tcpProxyConfig(
            [self.unusedPort(), self.unusedPort()], tcpProxy={"max_connect_attempts": 2}))
        client = await connect(listenerPort(server))
        await client.closed
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 2)
        self.assertEqual(
            stat(server, "cluster.backend.upstream_cx_connect_attempts_exceeded"), 1)

    async def test_circuitBreakerOverflow(self) -> None:
        """
        With max_connections 1, a second client is closed and counted as
        upstream_cx_overflow while the first is served.
        """
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig(
            [port], cluster={"circuit_breakers": {"thresholds": [{"max_connections": 1}]}}))
        first = await connect(listenerPort(server))
        first.transport.write(b"one")
        await waitFor(lambda: first.data() == b"one")
        second = await connect(listenerPort(server))
        await second.closed
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_overflow"), 1)
        self.assertEqual(
            stat(server, "cluster.backend.circuit_breakers.default.cx_open"), 1)
        first.transport.loseConnection()
        await first.closed

    async def test_unknownHostnameClusterHasNoHosts(self) -> None:
        """
        A STRICT_DNS cluster whose name does not resolve has no hosts: the
        client is closed and upstream_cx_none_healthy counted.
        """
        server = startServer(self, tcpProxyConfig(
            [1], cluster={"type": "STRICT_DNS", "load_assignment": {
                "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": "no-such-host.invalid", "port_value": 1}}}}]}]}}))
        await waitFor(lambda: stat(server, "cluster.backend.update_attempt") >= 1)
        client = await connect(listenerPort(server))
        await client.closed
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_none_healthy"), 1)

    async def test_strictDnsClusterResolvesLocalhost(self) -> None:
        """
        A STRICT_DNS cluster on 'localhost' resolves and proxies.
        """
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig(
            [port], cluster={"type": "STRICT_DNS", "dns_lookup_family": "V4_ONLY",
                             "load_assignment": {
                                 "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{
                                     "endpoint": {"address": {"socket_address": {
                                         "address": "localhost", "port_value": port}}}}]}]}}))
        await waitFor(lambda: stat(server, "cluster.backend.membership_total") >= 1)
        client = await connect(listenerPort(server))
        client.transport.write(b"dns")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(client.data(), b"dns")


class CloseWithoutFlushTests(TestCase):
    """
    A close that does not flush (Envoy's NoFlush: idle timeout, refused
    upstream) ends the client's stream in order (a FIN), as Envoy's does,
    not with a reset.
    """

    timeout = 30

    def readUntilEnd(self, port: int, send: bytes = b"") -> bytes | Exception:
        """
        Blocking: connect, send C{send}, read until the end of the stream;
        the bytes, or the error that ended it.
        """
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if send:
                s.sendall(send)
            data = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return data
                    data += chunk
            except OSError as e:
                return e

    async def test_idleTimeoutEndsCleanly(self) -> None:
        """
        An idle client (its bytes all read and echoed) is closed by
        idle_timeout: it reads its echo and then the end of the stream.
        """
        server = startServer(self, tcpProxyConfig([listen(self, Echo)],
                                                  tcpProxy={"idle_timeout": "0.3s"}))
        got = await threads.deferToThread(self.readUntilEnd, listenerPort(server), b"ping")
        self.assertEqual(got, b"ping")
        self.assertEqual(stat(server, "tcp.test.idle_timeout"), 1)

    async def test_refusedUpstreamEndsCleanly(self) -> None:
        """
        A client that sent nothing sees the end of the stream when its
        upstream is refused.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
        s.close()
        server = startServer(self, tcpProxyConfig([unused]))
        got = await threads.deferToThread(self.readUntilEnd, listenerPort(server))
        self.assertEqual(got, b"")
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 1)


class DirectUpstreamConnectTests(TestCase):
    """
    Upstream connections to IP literals on the real reactor skip Twisted's
    resolver step, yet report what happens from the reactor, never from
    inside C{tcpConnect}.
    """

    timeout = 30

    async def connectWith(self, port: int) -> tuple[Any, list[str], Deferred]:
        """
        Start an upstream connection to C{port} through the cluster
        manager of a running server; return it, the handler's calls so
        far and a Deferred fired by the first of them.
        """
        server = startServer(self, tcpProxyConfig([port]))
        manager = server.context.clusterManager
        calls: list[str] = []
        first: Deferred = Deferred()

        class Handler:
            def upstreamConnected(self, upstream: Any) -> None:
                calls.append("connected")
                first.callback(upstream)

            def upstreamConnectFailed(self, reason: str, timedOut: bool) -> None:
                calls.append("failed")
                first.callback(reason)

            def upstreamData(self, data: bytes) -> None:
                calls.append("data")

            def upstreamEndStream(self) -> None:
                calls.append("end")

            def upstreamClosed(self, localClose: bool) -> None:
                calls.append("closed")

        status, upstream = manager.tcpConnect("backend", Handler())
        self.assertEqual(status, ConnectStatus.STARTED)
        self.addCleanup(upstream.close, False)
        return upstream, calls, first

    async def test_connectsWithoutResolverNorReentry(self) -> None:
        """
        The transport is the direct client; C{upstreamConnected} comes
        later from the reactor, with the connection's local address.
        """
        port = listen(self, Protocol)
        upstream, calls, first = await self.connectWith(port)
        self.assertEqual(calls, [])
        self.assertIsInstance(upstream._connector.transport, _DirectClient)
        await first
        self.assertEqual(calls, ["connected"])
        host = upstream.protocol.transport.getHost()
        self.assertEqual(upstream.localAddress, (host.host, host.port))

    async def test_refusedIsReportedFromTheReactor(self) -> None:
        """
        A refused connection fails through C{upstreamConnectFailed}, after
        C{tcpConnect} returned.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        upstream, calls, first = await self.connectWith(port)
        self.assertEqual(calls, [])
        reason = await first
        self.assertEqual(calls, ["failed"])
        self.assertIn("refused", reason.lower())
