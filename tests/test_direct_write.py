"""
Write-through and half-close on real loopback sockets: sent (or shut) at
once when nothing is queued, queued behind anything already waiting,
order always kept.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from pyenvoy.network.direct_write import directHalfCloser, directWriter
from pyenvoy.testing import HarnessTransport
from tests.support.net import Client, connect, listen


class DirectWriteTests(TestCase):
    """
    L{directWriter} on a real TCP transport.
    """

    async def serverAndClient(self) -> tuple[Protocol, Client]:
        """
        A connected server-side protocol and its client.
        """
        made: Deferred = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                made.callback(self)

        port = listen(self, Server)
        client = await connect(port)
        server = await made
        self.addCleanup(server.transport.abortConnection)
        return server, client

    async def test_sendsAtOnceWhenNothingQueued(self) -> None:
        """
        With an empty queue the bytes go to the kernel right away: nothing
        is left in Twisted's buffer.
        """
        server, client = await self.serverAndClient()
        send = directWriter(server.transport)
        send(b"now")
        self.assertEqual(server.transport.dataBuffer, b"")
        self.assertEqual(server.transport._tempDataLen, 0)
        for _ in range(500):
            if client.data() == b"now":
                break
            d: Deferred = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        self.assertEqual(client.data(), b"now")

    async def test_queuesBehindWaitingBytes(self) -> None:
        """
        Bytes already queued by transport.write go first; the rest follow
        in order, and a large write that the kernel cannot take at once is
        queued, not lost.
        """
        server, client = await self.serverAndClient()
        send = directWriter(server.transport)
        server.transport.write(b"first-")
        send(b"second-")
        self.assertEqual(server.transport._tempDataLen, len(b"first-second-"))
        big = os.urandom(8 * 1024 * 1024)
        send(big)
        server.transport.loseConnection()
        await client.closed
        self.assertEqual(client.data(), b"first-second-" + big)

    def test_otherTransportsUseTheirOwnWrite(self) -> None:
        """
        A transport that is not a plain TCP connection keeps its write.
        """
        transport = HarnessTransport()
        self.assertEqual(directWriter(transport), transport.write)


class DirectWriteTlsTests(TestCase):
    """
    A transport that has started TLS is never written to raw.
    """

    async def test_startedTlsFallsBackToTransportWrite(self) -> None:
        """
        Once C{transport.TLS} is set, writes go through the transport (which
        would encrypt them), not straight to the socket.
        """
        made: Deferred = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                made.callback(self)

        port = listen(self, Server)
        client = await connect(port)
        server = await made
        self.addCleanup(server.transport.abortConnection)
        self.addCleanup(client.transport.abortConnection)
        calls = []
        server.transport.write = calls.append
        send = directWriter(server.transport)
        server.transport.TLS = True
        send(b"secret")
        self.assertEqual(calls, [b"secret"])


class DirectHalfCloseTests(TestCase):
    """
    L{directHalfCloser} on a real TCP transport.
    """

    async def serverAndClient(self) -> tuple[Protocol, Client, list[str]]:
        """
        A connected half-closeable server-side protocol that notes its
        C{writeConnectionLost} calls, and its client.
        """
        made: Deferred = Deferred()
        events: list[str] = []

        @implementer(IHalfCloseableProtocol)
        class Server(Protocol):
            def connectionMade(self) -> None:
                made.callback(self)

            def dataReceived(self, data: bytes) -> None:
                events.append("data " + data.decode())

            def readConnectionLost(self) -> None:
                events.append("readConnectionLost")

            def writeConnectionLost(self) -> None:
                events.append("writeConnectionLost")

        port = listen(self, Server)
        client = await connect(port, Client(closeOnEnd=False))
        server = await made
        self.addCleanup(server.transport.abortConnection)
        self.addCleanup(client.transport.abortConnection)
        return server, client, events

    async def waitFor(self, predicate: Callable[[], bool]) -> None:
        """
        Turn the reactor until C{predicate()} holds (at most 5 s).
        """
        for _ in range(500):
            if predicate():
                return
            d: Deferred = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        self.fail("condition not reached")

    async def test_finGoesAtOnceWhenNothingQueued(self) -> None:
        """
        With nothing queued the write side is shut inside the call: the
        protocol has its C{writeConnectionLost} and the peer its FIN,
        while reading goes on.
        """
        server, client, events = await self.serverAndClient()
        directHalfCloser(server.transport)()
        self.assertTrue(server.transport._writeDisconnected)
        self.assertEqual(events, ["writeConnectionLost"])
        await self.waitFor(lambda: client.endStreamSeen)
        client.transport.write(b"still read")
        await self.waitFor(lambda: "data still read" in events)

    async def test_queuedBytesGoFirst(self) -> None:
        """
        Bytes still queued in Twisted's buffer are sent before the FIN,
        which then comes from Twisted's own writable event.
        """
        server, client, events = await self.serverAndClient()
        server.transport.write(b"queued")
        directHalfCloser(server.transport)()
        self.assertFalse(server.transport._writeDisconnected)
        self.assertEqual(events, [])
        await self.waitFor(lambda: client.endStreamSeen)
        self.assertEqual(client.data(), b"queued")
        self.assertEqual(events, ["writeConnectionLost"])

    def test_otherTransportsUseTheirOwnHalfClose(self) -> None:
        """
        A transport that is not a plain TCP connection keeps its
        C{loseWriteConnection}.
        """
        transport = HarnessTransport()
        self.assertEqual(directHalfCloser(transport), transport.loseWriteConnection)
