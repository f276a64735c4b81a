"""
Test doubles for filter authors: run a filter chain over an in-memory
transport, no sockets.

    harness = FilterHarness([MyFilter()])
    harness.receive(b"hello")
    assert harness.written() == b"HELLO"
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from pyenvoy.config.bootstrap import DEFAULT_BUFFER_LIMIT
from pyenvoy.network.connection import Connection
from pyenvoy.stats import Store


class HarnessTransport(StringTransport):
    """
    A L{StringTransport} that also records a half-close of its write side.
    """

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        """
        Record our FIN.
        """
        self.writeClosed = True

    def abortConnection(self) -> None:
        """
        Record an abortive close.
        """
        self.aborted = True
        super().abortConnection()


class _Config:
    def __init__(self, bufferLimit: int) -> None:
        self.perConnectionBufferLimitBytes = bufferLimit


class _Chain:
    tls = None

    def __init__(self, filters: list[Any]) -> None:
        self._filters = filters

    def createFilters(self) -> list[Any]:
        return list(self._filters)


class _Listener:
    """
    The little of a listener a L{Connection} needs.
    """

    def __init__(self, filters: list[Any], bufferLimit: int) -> None:
        self.config = _Config(bufferLimit)
        self.chain = _Chain(filters)
        self.opened = 0
        self.closed = 0
        self.filterErrors = 0

    def connectionOpened(self, connection: Connection) -> None:
        self.opened += 1

    def connectionClosed(self, connection: Connection) -> None:
        self.closed += 1

    def filterError(self) -> None:
        self.filterErrors += 1

    def startListenerFilters(self, connection: Connection) -> None:
        return None

    def defaultChain(self, connection: Any = None) -> _Chain:
        return self.chain


class FilterHarness:
    """
    One downstream connection running C{filters} over a
    L{HarnessTransport}, on a L{MemoryReactorClock}.

    @ivar connection: the L{Connection} (what filters see as
        C{callbacks.connection}).
    @ivar transport: the in-memory transport to the client.
    @ivar reactor: the clock and memory reactor; C{reactor.advance(s)}
        moves time.
    """

    def __init__(self, filters: list[Any], reactor: Any = None,
                 bufferLimit: int = DEFAULT_BUFFER_LIMIT,
                 peer: tuple[str, int] = ("127.0.0.1", 40000),
                 local: tuple[str, int] = ("127.0.0.1", 10000)) -> None:
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.store = Store()
        self.listener = _Listener(filters, bufferLimit)
        self.transport = HarnessTransport(
            hostAddress=IPv4Address("TCP", *local), peerAddress=IPv4Address("TCP", *peer))
        self.connection = Connection(self.listener, self.reactor)
        self.connection.makeConnection(self.transport)

    def receive(self, data: bytes) -> None:
        """
        The client sent C{data}.
        """
        self.connection.dataReceived(data)

    def receiveEnd(self) -> None:
        """
        The client half-closed its side.
        """
        self.connection.readConnectionLost()

    def written(self) -> bytes:
        """
        Everything written to the client so far, then forgotten.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    def disconnect(self) -> None:
        """
        The transport is gone (deliver C{connectionLost}).
        """
        self.connection.connectionLost(None)

    @property
    def closed(self) -> bool:
        """
        Whether the connection asked its transport to close.
        """
        return bool(self.transport.disconnecting or self.transport.aborted)
