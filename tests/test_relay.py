"""
tcp_proxy's relay in C (L{pyenvoy.network.relay}): installed on plain TCP
connections, the same bytes and counters as the Python path, and every
case it leaves to Python (a held chain, an injected rewrite, write
filters, queued bytes, a filter's exception) on real loopback sockets; the
write-through itself on a socket pair.
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from pyenvoy.filters import tcp_proxy
from pyenvoy.interfaces import FilterStatus, IReadFilter, IWriteFilter
from pyenvoy.network import relay
from pyenvoy.network.listener import FilterChain
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

if not relay.ACCELERATED:  # pragma: no cover - make install builds it
    raise ImportError("pyenvoy.network._relay was not built")

from pyenvoy.network._relay import Hop  # noqa: E402

MiB = 1024 * 1024
COUNTERS = ("tcp.test.downstream_cx_rx_bytes_total", "tcp.test.downstream_cx_tx_bytes_total",
            "cluster.backend.upstream_cx_rx_bytes_total",
            "cluster.backend.upstream_cx_tx_bytes_total")


@implementer(IReadFilter, IWriteFilter)
class Spy:
    """
    A read and write filter put before tcp_proxy: keeps its connection and
    runs C{onRead}/C{onWritten} hooks (by default it passes everything on).
    """

    made: list["Spy"] = []

    def __init__(self, onRead: Callable[["Spy", bytes], Any] | None = None,
                 onWritten: Callable[["Spy", bytes], Any] | None = None) -> None:
        self.onRead = onRead
        self.onWritten = onWritten
        self.read: list[bytes] = []
        self.written: list[bytes] = []
        Spy.made.append(self)

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.readCallbacks = callbacks
        self.connection = callbacks.connection

    def initializeWriteFilterCallbacks(self, callbacks: Any) -> None:
        self.writeCallbacks = callbacks

    def onNewConnection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.read.append(data)
        if self.onRead is not None and data:
            return self.onRead(self, data) or FilterStatus.CONTINUE
        return FilterStatus.CONTINUE

    def onWrite(self, data: bytes, endStream: bool) -> FilterStatus:
        self.written.append(data)
        if self.onWritten is not None and data:
            return self.onWritten(self, data) or FilterStatus.CONTINUE
        return FilterStatus.CONTINUE


class RealSocketTests(TestCase):
    """
    Hops on a real tcp_proxy connection.
    """

    timeout = 60

    def setUp(self) -> None:
        Spy.made = []

    def withSpy(self, **hooks: Any) -> None:
        """
        Put a L{Spy} with C{hooks} before every chain's filters.
        """
        original = FilterChain.createFilters
        self.patch(FilterChain, "createFilters",
                   lambda chain: [Spy(**hooks)] + original(chain))

    async def roundTrips(self, port: int, messages: list[bytes]) -> Client:
        """
        Send each message through the proxy to an echo server and wait for
        its echo before the next; then close.
        """
        server = startServer(self, tcpProxyConfig([port]))
        self.server = server
        client = await connect(listenerPort(server))
        expected = 0
        for message in messages:
            client.transport.write(message)
            expected += len(message)
            await waitFor(lambda: client.count >= expected)
        client.transport.loseConnection()
        await client.closed
        return client

    def counters(self) -> dict[str, int]:
        return {name: stat(self.server, name) for name in COUNTERS}

    async def test_installedBothWays(self) -> None:
        """
        Once the upstream is connected both directions are Hops; bytes
        and every byte counter are right.
        """
        self.withSpy()
        port = listen(self, Echo)
        installed: list[tuple[Any, Any]] = []
        install = tcp_proxy.installHops

        def recordingInstall(proxy: Any, upstream: Any) -> bool:
            done = install(proxy, upstream)
            installed.append((proxy.connection.dataReceived, upstream.protocol.dataReceived))
            return done

        self.patch(tcp_proxy, "installHops", recordingInstall)
        messages = [b"ping", os.urandom(300_000), b"x" * 10]
        client = await self.roundTrips(port, messages)
        self.assertEqual(client.data(), b"".join(messages))
        self.assertEqual(len(installed), 1)
        self.assertIsInstance(installed[0][0], Hop)
        self.assertIsInstance(installed[0][1], Hop)
        spy = Spy.made[0]
        connection = spy.connection
        total = sum(map(len, messages))
        self.assertEqual(set(self.counters().values()), {total})
        self.assertEqual((connection.streamInfo.bytesReceived, connection.streamInfo.bytesSent),
                         (total, total))
        self.assertEqual(b"".join(spy.read), b"".join(messages))
        self.assertEqual(b"".join(spy.written), b"".join(messages))

    async def test_freedWithTheirConnection(self) -> None:
        """
        A closed connection's Hops (which refer back to it) are collected.
        """
        port = listen(self, Echo)
        gc.collect()
        before = sum(1 for o in gc.get_objects() if type(o) is Hop)
        for _ in range(3):
            await self.roundTrips(port, [b"once"])
        # The proxy side closes after the client: let it finish.
        await waitFor(lambda: not any(
            service.listener.connections for service in self.server.context.listeners))
        gc.collect()
        self.assertEqual(sum(1 for o in gc.get_objects() if type(o) is Hop), before)

    async def test_sameCountersAsPythonPath(self) -> None:
        """
        The same exchange with and without Hops gives the same bytes and
        counters.
        """
        port = listen(self, Echo)
        messages = [os.urandom(n) for n in (1, 100, 70_000, 5, 1 * MiB)]
        withHops = await self.roundTrips(port, messages)
        countersWith = self.counters()
        self.patch(tcp_proxy, "installHops", lambda proxy, upstream: False)
        without = await self.roundTrips(port, messages)
        self.assertEqual(withHops.data(), without.data())
        self.assertEqual(countersWith, self.counters())

    async def test_heldChainKeepsOrder(self) -> None:
        """
        A filter that stops (holding the chain) and continues later: what
        arrived meanwhile goes the Python way, all in order.
        """
        def release(spy: Spy) -> None:
            spy.holding = False
            spy.readCallbacks.continueReading()

        def holdOnce(spy: Spy, data: bytes) -> Any:
            # Stopped from b"hold" on, until released.
            if data.startswith(b"hold"):
                spy.holding = True
                reactor.callLater(0.2, release, spy)
            if getattr(spy, "holding", False):
                return FilterStatus.STOP_ITERATION
            return None

        self.withSpy(onRead=holdOnce)
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        client.transport.write(b"first ")
        await waitFor(lambda: client.count == 6)
        client.transport.write(b"hold ")
        await deferLater(reactor, 0.05, lambda: None)
        manager = Spy.made[0].connection.filterManager
        self.assertIsNotNone(manager._stoppedAt)
        client.transport.write(b"while held ")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(client.data(), b"first ")
        await waitFor(lambda: client.count == 22)
        client.transport.write(b"after")
        await waitFor(lambda: client.count == 27)
        self.assertEqual(client.data(), b"first hold while held after")
        self.assertEqual(stat(server, "tcp.test.downstream_cx_rx_bytes_total"), 27)

    async def test_injectedRewrite(self) -> None:
        """
        A filter that passes its own version on (injectReadData, then
        STOP_ITERATION): the upstream gets the rewrite, nothing is held.
        """
        def upper(spy: Spy, data: bytes) -> Any:
            spy.readCallbacks.injectReadData(data.upper(), False)
            return FilterStatus.STOP_ITERATION

        self.withSpy(onRead=upper)
        port = listen(self, Echo)
        client = await self.roundTrips(port, [b"abc", b"def"])
        self.assertEqual(client.data(), b"ABCDEF")
        self.assertIsNone(Spy.made[0].connection.filterManager._stoppedAt)

    async def test_writeFilterRewrites(self) -> None:
        """
        A write filter that stops and injects its own bytes: the client
        gets those.
        """
        def reverse(spy: Spy, data: bytes) -> Any:
            spy.writeCallbacks.injectWriteData(data[::-1], False)
            return FilterStatus.STOP_ITERATION

        self.withSpy(onWritten=reverse)
        port = listen(self, Echo)
        client = await self.roundTrips(port, [b"abc"])
        self.assertEqual(client.data(), b"cba")
        self.assertEqual(stat(self.server, "tcp.test.downstream_cx_tx_bytes_total"), 3)

    async def test_filterExceptionClosesOnlyThatConnection(self) -> None:
        """
        A read filter that raises closes its connection (counted in
        C{pyenvoy.filter_errors}); another connection goes on.
        """
        def explode(spy: Spy, data: bytes) -> Any:
            if b"boom" in data:
                raise ValueError("boom")
            return None

        self.withSpy(onRead=explode)
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        victim = await connect(listenerPort(server))
        other = await connect(listenerPort(server))
        victim.transport.write(b"ok")
        await waitFor(lambda: victim.count == 2)
        victim.transport.write(b"boom")
        await victim.closed
        other.transport.write(b"still here")
        await waitFor(lambda: other.data() == b"still here")
        self.assertEqual(stat(server, "pyenvoy.filter_errors"), 1)
        self.assertEqual(victim.data(), b"ok")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_queuedBytesKeepOrder(self) -> None:
        """
        Behind an upstream that stopped reading, later chunks queue behind
        the earlier ones (no direct send past the queue): all arrive in order.
        """
        port, sinks = listenStalled(self)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        await waitFor(lambda: len(sinks) == 1)
        sent = hashlib.sha256()
        for _ in range(8):
            chunk = os.urandom(MiB // 2)
            sent.update(chunk)
            client.transport.write(chunk)
            await deferLater(reactor, 0.02, lambda: None)
        for index in range(100):
            chunk = b"small %d;" % index
            sent.update(chunk)
            client.transport.write(chunk)
        await deferLater(reactor, 0.1, lambda: None)
        sink = sinks[0]
        received = hashlib.sha256()
        total = [0]

        def collect(data: bytes) -> None:
            received.update(data)
            total[0] += len(data)

        sink.dataReceived = collect  # type: ignore[method-assign]
        sink.transport.resumeProducing()
        expected = 4 * MiB + sum(len(b"small %d;" % i) for i in range(100))
        await waitFor(lambda: total[0] == expected, timeout=30)
        self.assertEqual(received.hexdigest(), sent.hexdigest())
        client.transport.loseConnection()
        await client.closed


class FakeTransport:
    """
    The attributes a Hop reads off a Twisted TCP transport, over a real
    socket, recording what goes through C{write}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.disconnecting = False
        self._writeDisconnecting = False
        self.connected = True
        self.TLS = False
        self.written: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes) -> None:
        self.written.append(data)


class HopUnitTests(SynchronousTestCase):
    """
    One Hop (the upstream-to-client direction: counters, write filters,
    the open check and the send) on a socket pair.
    """

    def setUp(self) -> None:
        self.near, self.far = socket.socketpair()
        self.near.setblocking(False)
        self.far.setblocking(False)
        self.addCleanup(self.near.close)
        self.addCleanup(self.far.close)
        self.transport = FakeTransport(self.near)
        self.counter = SimpleNamespace(value=0)
        self.pythonSent: list[bytes] = []
        self.send = self.pythonSent.append
        self.connection = SimpleNamespace(open=True, _send=self.send)
        self.failures: list[BaseException] = []
        self.hop = self.makeHop()

    def makeHop(self, writers: tuple = ()) -> Hop:
        hop = Hop()
        hop.manager = hop.slow = hop.stopped = None
        hop.proxy = hop.upstream = hop.terminal = None
        hop.counted = ((self.counter, "value"),)
        hop.readers = ()
        hop.relayed = ()
        hop.connection = self.connection
        hop.writers = writers
        hop.checkOpenBeforeSend = True
        hop.sent = ((self.connection, "sentBytes"),)
        self.connection.sentBytes = 0
        hop.sender = self.connection
        hop.send = self.send
        hop.transport = self.transport
        hop.failed = self.failures.append
        return hop

    def farReceived(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.far.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            chunks.append(chunk)

    def test_sendsDirectly(self) -> None:
        """
        With nothing queued the bytes go to the socket, counted twice.
        """
        self.hop(b"hello")
        self.assertEqual(self.farReceived(), b"hello")
        self.assertEqual((self.counter.value, self.connection.sentBytes), (5, 5))
        self.assertEqual((self.transport.written, self.pythonSent), ([], []))

    def test_partialSendQueuesTheRest(self) -> None:
        """
        What the kernel did not take goes to transport.write, exactly.
        """
        self.near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = os.urandom(4 * MiB)
        self.hop(data)
        self.assertEqual(len(self.transport.written), 1)
        taken = self.farReceived()
        self.assertLess(len(taken), len(data))
        self.assertEqual(taken + self.transport.written[0], data)

    def test_fullSocketQueuesEverything(self) -> None:
        """
        A socket that takes nothing (EAGAIN): all of it is queued.
        """
        self.near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.hop(os.urandom(4 * MiB))
        self.transport.written = []
        self.hop(b"later")
        self.assertEqual(self.transport.written, [b"later"])

    def test_busyTransportWrites(self) -> None:
        """
        Queued bytes, a closing transport, TLS or no connection: the
        transport's own write, nothing sent directly.
        """
        for name, value in [("dataBuffer", b"x"), ("_tempDataLen", 1), ("disconnecting", True),
                            ("_writeDisconnecting", True), ("TLS", True), ("connected", False)]:
            transport = self.hop.transport = FakeTransport(self.near)
            setattr(transport, name, value)
            self.hop(name.encode())
            self.assertEqual(transport.written, [name.encode()], name)
        self.assertEqual(self.farReceived(), b"")

    def test_closedSocketWrites(self) -> None:
        """
        A transport whose socket is gone (fileno -1) gets the bytes through
        write, where Twisted reports the loss.
        """
        self.near.close()
        self.hop(b"late")
        self.assertEqual(self.transport.written, [b"late"])

    def test_replacedSendIsCalled(self) -> None:
        """
        When the sender's C{_send} is no longer the one the Hop stands for
        (TLS took over), that C{_send} gets the bytes.
        """
        replaced: list[bytes] = []
        self.connection._send = replaced.append
        self.hop(b"secret")
        self.assertEqual(replaced, [b"secret"])
        self.assertEqual(self.farReceived(), b"")

    def test_closedConnectionSendsNothing(self) -> None:
        """
        After the write filters, a closed connection sends nothing (and
        counts only what came before).
        """
        self.connection.open = False
        self.hop(b"gone")
        self.assertEqual((self.counter.value, self.connection.sentBytes), (4, 0))
        self.assertEqual(self.farReceived(), b"")

    def test_writerStops(self) -> None:
        """
        A write filter that returns STOP_ITERATION ends the chunk there.
        """
        seen: list[bytes] = []

        def stop(data: bytes, endStream: bool) -> FilterStatus:
            seen.append(data)
            return FilterStatus.STOP_ITERATION

        self.makeHop(writers=(stop,))(b"mine")
        self.assertEqual(seen, [b"mine"])
        self.assertEqual(self.farReceived(), b"")

    def test_exceptionGoesToFailed(self) -> None:
        """
        An Exception from a filter goes to C{failed} with its traceback.
        """
        def bad(data: bytes, endStream: bool) -> FilterStatus:
            raise ValueError("bad")

        self.makeHop(writers=(bad,))(b"x")
        self.assertEqual(len(self.failures), 1)
        self.assertIsInstance(self.failures[0], ValueError)
        self.assertIsNotNone(self.failures[0].__traceback__)

    def test_exceptionRaisedWithoutFailed(self) -> None:
        """
        With C{failed} None (and for BaseExceptions) the exception propagates.
        """
        def bad(data: bytes, endStream: bool) -> FilterStatus:
            raise ValueError("bad")

        def interrupt(data: bytes, endStream: bool) -> FilterStatus:
            raise KeyboardInterrupt()

        hop = self.makeHop(writers=(bad,))
        hop.failed = None
        self.assertRaises(ValueError, hop, b"x")
        self.assertRaises(KeyboardInterrupt, self.makeHop(writers=(interrupt,)), b"x")
        self.assertEqual(self.failures, [])

    def test_badUse(self) -> None:
        """
        A Hop not fully set up, or given anything but bytes, is a TypeError.
        """
        self.assertRaises(TypeError, Hop(), b"x")
        self.assertRaises(TypeError, self.hop, "text")
        self.assertRaises(TypeError, self.hop, b"x", True)
        self.hop.counted = ((self.counter,),)
        self.assertRaises(TypeError, self.hop, b"x")


class NotInstalledTests(TestCase):
    """
    Where the Python path must keep the connection, no Hop goes in.
    """

    async def test_withoutTheExtension(self) -> None:
        """
        Without the C extension nothing is installed and bytes still flow.
        """
        self.patch(relay, "_relay", None)
        Spy.made = []
        original = FilterChain.createFilters
        self.patch(FilterChain, "createFilters",
                   lambda chain: [Spy()] + original(chain))
        port = listen(self, Echo)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        client.transport.write(b"plain")
        await waitFor(lambda: client.data() == b"plain")
        self.assertNotIsInstance(Spy.made[0].connection.dataReceived, Hop)
        client.transport.loseConnection()
        await client.closed

