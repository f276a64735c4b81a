"""
Every zope.interface of pyenvoy, in one place.

The network filter contract follows Envoy's (C{envoy/network/filter.h}): read
filters run first to last, write filters last to first, and a filter that
returns L{FilterStatus.STOP_ITERATION} resumes the chain later with
L{IReadFilterCallbacks.continueReading}.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from zope.interface import Attribute, Interface


class FilterStatus(enum.Enum):
    """
    What a filter tells the filter manager after handling an event.
    """

    CONTINUE = "continue"
    STOP_ITERATION = "stop_iteration"


class CloseType(enum.Enum):
    """
    How a connection is closed (Envoy's C{ConnectionCloseType}).
    """

    FLUSH_WRITE = "flush_write"
    NO_FLUSH = "no_flush"


class IReadFilterCallbacks(Interface):
    """
    What a read filter may ask of the connection it is installed on.
    """

    connection = Attribute("The L{IFilterConnection} this filter runs on.")

    def continueReading() -> None:
        """
        Resume the read chain after this filter returned STOP_ITERATION,
        passing whatever the connection has buffered to the next filter.
        """

    def injectReadData(data: bytes, endStream: bool) -> None:
        """
        Hand C{data} to the filters after this one, bypassing the
        connection's buffer (for filters that buffer by themselves).
        """


class IWriteFilterCallbacks(Interface):
    """
    What a write filter may ask of the connection it is installed on.
    """

    connection = Attribute("The L{IFilterConnection} this filter runs on.")

    def injectWriteData(data: bytes, endStream: bool) -> None:
        """
        Hand C{data} to the write filters after this one.
        """


class IFilterConnection(Interface):
    """
    The downstream connection as filters see it.
    """

    id = Attribute("A process-unique connection number (Envoy's connection id).")
    streamInfo = Attribute("The L{pyenvoy.stream_info.StreamInfo} of this connection.")
    reactor = Attribute("The reactor this connection runs on.")
    bufferLimit = Attribute("per_connection_buffer_limit_bytes of its listener.")

    def write(data: bytes, endStream: bool = False) -> None:
        """
        Send C{data} to the downstream peer through the write filters;
        C{endStream} half-closes the write side afterwards.
        """

    def close(closeType: CloseType = CloseType.FLUSH_WRITE, details: str = "") -> None:
        """
        Close the connection; C{details} ends up in
        C{%CONNECTION_TERMINATION_DETAILS%}.
        """

    def readDisable(disable: bool) -> None:
        """
        Stop (C{True}) or resume (C{False}) reading from the peer.  Calls
        nest: reading resumes when every disable has been undone.
        """

    def addConnectionCallback(callback: Callable[[str], None]) -> None:
        """
        Call C{callback(event)} on C{"remote_close"} or C{"local_close"}.
        """

    def registerProducer(producer: Any, streaming: bool) -> None:
        """
        Let C{producer} be paused while this connection's write buffer is
        above its limit (Twisted flow control on the downstream write side).
        """

    def unregisterProducer() -> None:
        """
        Undo L{registerProducer}.
        """


class IReadFilter(Interface):
    """
    A filter on the bytes read from the downstream peer.
    """

    def initializeReadFilterCallbacks(callbacks: IReadFilterCallbacks) -> None:
        """
        Called once, before any other method, with the connection's callbacks.
        """

    def onNewConnection() -> FilterStatus:
        """
        Called once when the connection is established.
        """

    def onData(data: bytes, endStream: bool) -> FilterStatus:
        """
        Called with each chunk read; C{endStream} is true once the peer
        has half-closed.  Return STOP_ITERATION to keep later filters from
        seeing it.
        """


class IWriteFilter(Interface):
    """
    A filter on the bytes written to the downstream peer.
    """

    def initializeWriteFilterCallbacks(callbacks: IWriteFilterCallbacks) -> None:
        """
        Called once, before L{onWrite}, with the connection's callbacks.
        """

    def onWrite(data: bytes, endStream: bool) -> FilterStatus:
        """
        Called with each chunk about to be written to the peer.
        """


class INetworkFilterFactory(Interface):
    """
    A Twisted plugin that makes one kind of network filter from its config.

    Found by C{typeURL} (the C{@type} of a C{typed_config}) or by C{name}.
    """

    name = Attribute("Envoy's extension name, e.g. 'envoy.filters.network.tcp_proxy'.")
    typeURL = Attribute("The full @type, 'type.googleapis.com/envoy.extensions...'.")
    terminal = Attribute("True if this filter must be the last in a chain.")

    def parseConfig(section: Any, context: Any) -> Any:
        """
        Validate C{typed_config} (a L{pyenvoy.config.reader.Section}) and
        return an immutable config object; problems go to
        C{section.error(...)}.  C{context} is a
        L{pyenvoy.config.bootstrap.ParseContext} (cluster names and so on).
        """

    def createFilterFactory(config: Any, context: Any) -> Callable[[], Any]:
        """
        Given a parsed config and the L{pyenvoy.server.ServerContext},
        return a callable that makes one new filter per connection.
        Expensive work (stats scopes, codecs) belongs here, once per chain.
        """


class IListenerFilterFactory(Interface):
    """
    A Twisted plugin for TCP listener filters (tls_inspector, ...).
    """

    name = Attribute("Envoy's extension name.")
    typeURL = Attribute("The full @type.")

    def parseConfig(section: Any, context: Any) -> Any:
        """
        As L{INetworkFilterFactory.parseConfig}.
        """

    def createFilterFactory(config: Any, context: Any) -> Callable[[], Any]:
        """
        As L{INetworkFilterFactory.createFilterFactory}.
        """


class IUdpListenerFilterFactory(Interface):
    """
    A Twisted plugin for UDP listener filters (udp_proxy).
    """

    name = Attribute("Envoy's extension name.")
    typeURL = Attribute("The full @type.")

    def parseConfig(section: Any, context: Any) -> Any:
        """
        As L{INetworkFilterFactory.parseConfig}.
        """

    def createFilterFactory(config: Any, context: Any) -> Callable[..., Any]:
        """
        As L{INetworkFilterFactory.createFilterFactory}.
        """


class ILoadBalancer(Interface):
    """
    Picks a host of a cluster for a new upstream connection.
    """

    def chooseHost(context: Any) -> Any:
        """
        Return a L{pyenvoy.upstream.host.Host}, or C{None} if none is
        available.  C{context} may carry a hash key (or be C{None}).
        """
