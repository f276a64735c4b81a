"""
Tests for L{pyenvoy.reactor}: a private L{PyenvoyReactor} is driven one
poll at a time over real loopback sockets.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from twisted.internet import error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial import unittest
from zope.interface import implementer

from pyenvoy.reactor import PyenvoyReactor, _readsPlainly, installIfNoneChosen, readPlain

#: Bound on the polls (and seconds) any one wait may take.
MAX_POLLS = 200
MAX_SECONDS = 5.0


@implementer(IHalfCloseableProtocol)
class Recorder(protocol.Protocol):
    """
    Records what the reactor delivers; optionally fails on a marker.
    """

    def __init__(self) -> None:
        self.received = b""
        self.readClosed = False
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"boom" in data:
            raise RuntimeError("filter bug")

    def readConnectionLost(self) -> None:
        self.readClosed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class ReactorCase(unittest.TestCase):
    """
    A private L{PyenvoyReactor} with one accepted loopback connection:
    C{self.client} (a blocking socket) and C{self.server} (its L{Recorder}).
    """

    def setUp(self) -> None:
        self.reactor = reactor = PyenvoyReactor()
        self.slowPath = 0
        original = reactor._doReadOrWrite

        def counting(*args: Any) -> Any:
            self.slowPath += 1
            return original(*args)

        reactor._doReadOrWrite = counting  # type: ignore[method-assign]
        self.protocols: list[Recorder] = []
        factory = protocol.Factory.forProtocol(self._build)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client = socket.create_connection(
            ("127.0.0.1", self.port.getHost().port), timeout=MAX_SECONDS)
        self.addCleanup(self._close)
        self.pollUntil(lambda: self.protocols)
        self.server = self.protocols[0]
        # The accept was a read on the listening port: not a plain connection.
        self.slowPath = 0

    def _build(self) -> Recorder:
        recorder = Recorder()
        self.protocols.append(recorder)
        return recorder

    def _close(self) -> None:
        self.client.close()
        self.reactor.disconnectAll()
        self.reactor._poller.close()

    def pollUntil(self, condition: Callable[[], Any]) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_POLLS):
            if condition():
                return
            if time.monotonic() > deadline:
                break
            self.reactor.doIteration(0.05)
        self.fail("condition not met in time")


class PyenvoyReactorTests(ReactorCase):
    """
    Accepted TCP connections on a L{PyenvoyReactor}: reads, end of
    stream, resets and protocol errors.
    """

    def test_readDeliveredWithoutTwistedDispatch(self) -> None:
        """
        Bytes on a readable plain connection reach C{dataReceived} with
        no call to C{_doReadOrWrite}.
        """
        self.client.sendall(b"hello")
        self.pollUntil(lambda: self.server.received == b"hello")
        self.client.sendall(b" again")
        self.pollUntil(lambda: self.server.received == b"hello again")
        self.assertEqual(self.slowPath, 0)
        self.assertIsNone(self.server.lost)

    def test_endOfStreamIsHalfClose(self) -> None:
        """
        The peer's FIN reaches a half-closeable protocol as
        C{readConnectionLost}, the connection stays up for writing.
        """
        self.client.sendall(b"last")
        self.client.shutdown(socket.SHUT_WR)
        self.pollUntil(lambda: self.server.readClosed)
        self.assertEqual(self.server.received, b"last")
        self.assertIsNone(self.server.lost)
        self.server.transport.write(b"reply")
        self.pollUntil(lambda: not self.server.transport.dataBuffer
                       and not self.server.transport._tempDataLen)
        self.assertEqual(self.client.recv(100), b"reply")

    def test_resetIsConnectionLost(self) -> None:
        """
        A reset by the peer loses the connection (not a clean close).
        """
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.client.close()
        self.pollUntil(lambda: self.server.lost is not None)
        self.assertTrue(self.server.lost.check(error.ConnectionLost, error.ConnectionDone))
        self.assertFalse(self.server.lost.check(error.ConnectionDone))

    def test_protocolErrorClosesThatConnectionOnly(self) -> None:
        """
        An exception from C{dataReceived} is logged and closes that one
        connection; another connection goes on.
        """
        other = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                         timeout=MAX_SECONDS)
        self.addCleanup(other.close)
        self.pollUntil(lambda: len(self.protocols) == 2)
        self.client.sendall(b"boom")
        self.pollUntil(lambda: self.server.lost is not None)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        other.sendall(b"still here")
        self.pollUntil(lambda: self.protocols[1].received == b"still here")
        self.assertIsNone(self.protocols[1].lost)


    def test_failingCloseIsLoggedAndLoopGoesOn(self) -> None:
        """
        A protocol whose C{connectionLost} raises when its peer resets: the
        error is logged and the poll goes on to the other connections.
        """
        other = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                         timeout=MAX_SECONDS)
        self.addCleanup(other.close)
        self.pollUntil(lambda: len(self.protocols) == 2)

        def broken(reason: Any = None) -> None:
            raise ValueError("bug in connectionLost")

        self.server.connectionLost = broken  # type: ignore[method-assign]
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.client.close()
        other.sendall(b"after")
        self.pollUntil(lambda: self.protocols[1].received == b"after")
        self.pollUntil(lambda: self.flushLoggedErrors(ValueError))


class PythonReadPlainTests(PyenvoyReactorTests):
    """
    The same with the Python L{readPlain}, which runs when the C relay
    extension was not built.
    """

    def setUp(self) -> None:
        super().setUp()
        self.reactor._readPlain = readPlain

    def test_cReadPlainByDefault(self) -> None:
        """
        Where the extension was built, the reactor reads with its C twin.
        """
        from pyenvoy import reactor
        from pyenvoy.network import _relay

        self.assertIs(reactor._cReadPlain, _relay.readPlain)


class TimedCallTests(unittest.TestCase):
    """
    L{PyenvoyReactor.runUntilCurrent} and C{timeout}: Twisted's answers,
    work skipped only when there is none.
    """

    def setUp(self) -> None:
        self.reactor = PyenvoyReactor()
        self.now = 1000.0
        self.reactor.seconds = lambda: self.now  # type: ignore[method-assign]
        self.addCleanup(self.reactor._poller.close)
        self.addCleanup(self.reactor.disconnectAll)

    def test_timeoutAsTwisted(self) -> None:
        """
        None with no timed call, else the delay to the next one, never
        negative, at most Twisted's longest.
        """
        reactor = self.reactor
        self.assertIsNone(reactor.timeout())
        first = reactor.callLater(5, lambda: None)
        self.assertEqual(reactor.timeout(), 5)
        reactor.callLater(2, lambda: None)
        self.assertEqual(reactor.timeout(), 2)
        self.now += 10
        self.assertEqual(reactor.timeout(), 0)
        reactor.runUntilCurrent()
        self.assertFalse(first.active())
        self.assertIsNone(reactor.timeout())
        reactor.callLater(10 ** 9, lambda: None)
        self.assertEqual(reactor.timeout(), 2147483)

    def test_dueCallsRunOthersWait(self) -> None:
        """
        A call runs once due, not before; one scheduled by a running call
        for now runs on the next turn.
        """
        ran: list[str] = []
        reactor = self.reactor
        reactor.callLater(1, ran.append, "one")
        reactor.runUntilCurrent()
        self.assertEqual(ran, [])
        self.now += 1
        reactor.runUntilCurrent()
        self.assertEqual(ran, ["one"])
        reactor.callLater(0, lambda: reactor.callLater(0, ran.append, "later"))
        reactor.runUntilCurrent()
        self.assertEqual(ran, ["one"])
        reactor.runUntilCurrent()
        self.assertEqual(ran, ["one", "later"])

    def test_threadCallsRun(self) -> None:
        """
        A call from a thread runs on the next turn, with no timer due.
        """
        ran: list[int] = []
        self.reactor.callFromThread(ran.append, 1)
        self.reactor.runUntilCurrent()
        self.assertEqual(ran, [1])

    def test_cancelledCallsAreCleanedUp(self) -> None:
        """
        Many cancelled calls leave the heap as in Twisted, with none due.
        """
        reactor = self.reactor
        keep = reactor.callLater(100, lambda: None)
        for _ in range(60):
            reactor.callLater(50, lambda: None).cancel()
        reactor.runUntilCurrent()
        self.assertEqual(reactor._pendingTimedCalls, [keep])
        self.assertEqual(reactor._cancellations, 0)


class CallAfterPollTests(ReactorCase):
    """
    L{PyenvoyReactor.callAfterPoll}: work queued while handling events
    runs once all of that poll's events are handled, before the next wait.
    """

    def test_afterEveryEventOfThePoll(self) -> None:
        """
        Two connections readable in one poll: a call queued while the first
        is read runs after both reads, in the same iteration.
        """
        second = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                          timeout=MAX_SECONDS)
        self.addCleanup(second.close)
        self.pollUntil(lambda: len(self.protocols) == 2)
        order: list[str] = []
        for recorder, name in zip(self.protocols, ("a", "b")):
            def dataReceived(data: bytes, name: str = name) -> None:
                order.append(name)
                if len(order) == 1:
                    self.reactor.callAfterPoll(lambda: order.append("after"))
            recorder.dataReceived = dataReceived  # type: ignore[method-assign]
        self.client.sendall(b"x")
        second.sendall(b"y")
        # Both readable before the poll.
        time.sleep(0.05)
        self.reactor.doIteration(1)
        self.assertEqual(sorted(order[:2]), ["a", "b"])
        self.assertEqual(order[2:], ["after"])

    def test_queuedOutsideAPoll(self) -> None:
        """
        A call queued outside event handling (a timed call) runs at the
        start of the next poll, which then does not wait; calls it queues
        run in the same iteration; an exception is logged and the rest run.
        """
        ran: list[str] = []

        def first() -> None:
            ran.append("first")
            self.reactor.callAfterPoll(lambda: ran.append("queued by first"))
            raise ZeroDivisionError("logged")

        self.reactor.callAfterPoll(first)
        self.reactor.callAfterPoll(lambda: ran.append("second"))
        started = time.monotonic()
        self.reactor.doIteration(5)
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(ran, ["first", "second", "queued by first"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ParkedConnectionTests(ReactorCase):
    """
    A connected TCP connection that neither reads nor writes stays
    watched for errors, as Envoy watches a read-disabled connection.
    """

    def setUp(self) -> None:
        super().setUp()
        self.parkedEvents = 0
        original = self.reactor._parkedEvent

        def counting(transport: Any) -> None:
            self.parkedEvents += 1
            original(transport)

        self.reactor._parkedEvent = counting  # type: ignore[method-assign]
        self.transport = self.server.transport
        self.fd = self.transport.fileno()

    def poll(self, times: int) -> None:
        for _ in range(times):
            self.reactor.doIteration(0.01)

    def test_resetWhileNotReading(self) -> None:
        """
        A reset while reading is paused loses the connection at once
        (Twisted's epoll reactor notices only when reading resumes).
        """
        self.transport.stopReading()
        self.assertIn(self.fd, self.reactor._parked)
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.client.close()
        self.pollUntil(lambda: self.server.lost is not None)
        self.assertTrue(self.server.lost.check(error.ConnectionLost))
        self.assertNotIn(self.fd, self.reactor._parked)
        self.assertNotIn(self.fd, self.reactor._selectables)

    def test_bytesWaitForReading(self) -> None:
        """
        Parking changes nothing for bytes: they wait until reading resumes.
        """
        self.transport.stopReading()
        self.client.sendall(b"later")
        self.poll(10)
        self.assertEqual(self.server.received, b"")
        self.transport.startReading()
        self.assertNotIn(self.fd, self.reactor._parked)
        self.pollUntil(lambda: self.server.received == b"later")
        self.assertEqual(self.parkedEvents, 0)

    def test_hangUpKeepsUnreadBytes(self) -> None:
        """
        Both directions shut while paused (the peer's FIN after ours): the
        connection stays up, the hang-up is reported once (not on every
        poll), and the unread bytes and the end come when reading resumes.
        """
        self.transport.stopReading()
        self.transport.loseWriteConnection()
        self.pollUntil(lambda: self.transport._writeDisconnected)
        self.assertEqual(self.client.recv(10), b"")
        self.client.sendall(b"tail")
        self.client.shutdown(socket.SHUT_WR)
        self.pollUntil(lambda: self.parkedEvents)
        self.poll(10)
        self.assertEqual(self.parkedEvents, 1)
        self.assertIsNone(self.server.lost)
        self.assertEqual(self.server.received, b"")
        self.transport.startReading()
        self.pollUntil(lambda: self.server.readClosed)
        self.assertEqual(self.server.received, b"tail")

    def test_closeWhileParked(self) -> None:
        """
        Closing a parked connection unregisters it; its descriptor number
        serves a new connection normally.
        """
        self.transport.stopReading()
        self.transport.loseConnection()
        self.pollUntil(lambda: self.server.lost is not None)
        self.assertNotIn(self.fd, self.reactor._parked)
        self.assertNotIn(self.fd, self.reactor._selectables)
        other = socket.create_connection(("127.0.0.1", self.port.getHost().port),
                                         timeout=MAX_SECONDS)
        self.addCleanup(other.close)
        self.pollUntil(lambda: len(self.protocols) == 2)
        other.sendall(b"next")
        self.pollUntil(lambda: self.protocols[1].received == b"next")

    def test_disconnectAll(self) -> None:
        """
        C{disconnectAll} (reactor shutdown) closes parked connections too.
        """
        self.transport.stopReading()
        self.reactor.disconnectAll()
        self.assertIsNotNone(self.server.lost)
        self.assertEqual(self.reactor._parked, set())


class ResetWhilePausedThroughProxyTests(unittest.TestCase):
    """
    The parked connections of the installed reactor, through tcp_proxy:
    a client that resets while the proxy has stopped reading it (its
    upstream does not read) is noticed at once.
    """

    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        if not isinstance(reactor, PyenvoyReactor):
            raise unittest.SkipTest("needs trial --reactor=pyenvoy (as make test runs it)")

    async def test_clientResetWhileUpstreamStalls(self) -> None:
        from tests.support.net import connect, listenerPort, listenStalled, startServer, stat, tcpProxyConfig
        from tests.test_tcp_proxy import sleep, waitFor

        port, sinks = listenStalled(self)
        server = startServer(self, tcpProxyConfig([port]))
        client = await connect(listenerPort(server))
        chunk = b"x" * (1 << 20)
        for _ in range(16):
            client.transport.write(chunk)
        await waitFor(lambda: stat(
            server, "tcp.test.downstream_flow_control_paused_reading_total") > 0)
        await sleep(0.2)
        self.assertEqual(stat(server, "tcp.test.upstream_flush_total"), 0)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\0\0\0\0\0\0\0")
        client.transport.abortConnection()
        # The proxy sees the client go and flushes what it holds upstream.
        await waitFor(lambda: stat(server, "tcp.test.upstream_flush_total") == 1, timeout=5)
        self.assertEqual(stat(server, "tcp.test.upstream_flush_active"), 1)
        for sink in sinks:
            sink.transport.resumeProducing()
        await waitFor(lambda: all(sink.lost for sink in sinks))
        self.assertEqual(stat(server, "tcp.test.upstream_flush_active"), 0)


class ReadsPlainlyTests(unittest.TestCase):
    """
    Which transports take the short path.
    """

    def test_twistedTcpTransports(self) -> None:
        from twisted.internet import tcp

        from pyenvoy.upstream.cluster_manager import _DirectClient

        self.assertTrue(_readsPlainly(tcp.Server))
        self.assertTrue(_readsPlainly(tcp.Client))
        self.assertTrue(_readsPlainly(_DirectClient))

    def test_otherSelectables(self) -> None:
        from twisted.internet import tcp, udp

        class Special(tcp.Server):
            def doRead(self) -> Any:  # pragma: no cover - never called
                return None

        self.assertFalse(_readsPlainly(tcp.Port))
        self.assertFalse(_readsPlainly(udp.Port))
        self.assertFalse(_readsPlainly(Special))


class InstallTests(unittest.TestCase):
    """
    L{installIfNoneChosen} never replaces a reactor already installed.
    """

    def test_keepsInstalledReactor(self) -> None:
        from twisted.internet import reactor

        self.assertFalse(installIfNoneChosen())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
