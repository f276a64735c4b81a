"""
TCP listeners: bind, accept, run listener filters, pick a filter chain.

Binding happens in C{privilegedStartService} and raises when the port is
taken, so a listener that cannot bind stops start-up instead of being
logged and forgotten.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.error import CannotListenError, ConnectionAborted, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pyenvoy.config.bootstrap import FilterChainConfig, ListenerConfig
from pyenvoy.interfaces import FilterStatus
from pyenvoy.network.chain_match import ChainSelector, ConnectionFacts, FilterChainMatch
from pyenvoy.network.connection import Connection

log = Logger()


class StartupError(Exception):
    """
    Start-up cannot go on (a port cannot be bound, ...); the message is
    for the user.
    """


def watchAccepts(port: Any, histogram: Any, accepted: Callable[[], int]) -> None:
    """
    Record in C{histogram}, for each readable event of the listening
    C{port}, how many sockets it accepted (C{accepted()} counts them so
    far): Envoy's C{connections_accepted_per_socket_event}.  Like Envoy
    without C{max_connections_to_accept_per_socket_event}, Twisted accepts
    every pending connection per event (up to its own limit).
    """
    doRead = port.doRead

    def acceptPending() -> Any:
        before = accepted()
        try:
            return doRead()
        finally:
            histogram.record(accepted() - before)

    port.doRead = acceptPending


class FilterChain:
    """
    A filter chain ready to make filters for new connections.
    """

    def __init__(self, config: FilterChainConfig, context: Any,
                 sslScope: Any = None, factoryScope: Any = None) -> None:
        self.config = config
        self.name = config.name
        #: L{pyenvoy.network.tls.ServerTls} when the chain terminates TLS.
        self.tls: Any = None
        #: The transport socket is C{envoy.transport_sockets.starttls}: the
        #: connection starts in cleartext and a filter switches it to TLS.
        self.startTls = bool(getattr(config.tls, "startTls", False))
        if config.tls is not None:
            from pyenvoy.network.tls import ServerTls
            self.tls = ServerTls(
                config.tls, sslScope or context.store.scope("ssl"),
                reactor=getattr(context, "reactor", None),
                factoryScope=factoryScope or context.store.scope("server_ssl_socket_factory"))
        self._makers: list[Callable[[], Any]] = [
            f.factory.createFilterFactory(f.config, context) for f in config.filters
        ]

    def createFilters(self) -> list[Any]:
        """
        New filter instances for one connection, in config order.
        """
        return [make() for make in self._makers]


class ListenerFilterPhase:
    """
    Runs the listener filters of one accepted connection, before any
    network filter exists, then hands over the chain to use.

    Listener filters peek: the bytes they see are kept and replayed to
    the network filters.  Each listener filter has C{onAccept(callbacks)}
    and C{onData(peeked)}, both returning a L{FilterStatus}, and
    C{maxReadBytes()}.

    As Envoy's C{ActiveTcpSocket}, the socket is not a connection yet:
    it counts in C{downstream_pre_cx_active} only, and becomes a counted
    connection (C{downstream_cx_*}) only if a filter chain is found.
    """

    def __init__(self, listener: "ActiveListener", connection: Connection,
                 filters: list[Any]) -> None:
        self.listener = listener
        self.connection = connection
        self.filters = filters
        self.index = 0
        self.buffer = b""
        self.detectedTransportProtocol = ""
        self.requestedServerName = ""
        self.requestedApplicationProtocols: list[str] = []
        self._done = False
        self._timer: Any = None
        timeout = listener.config.listenerFiltersTimeout
        if timeout:
            self._timer = connection.reactor.callLater(timeout, self._timedOut)
        listener.preCxActive.inc()

    def start(self) -> None:
        """
        Give the first filter the new connection.
        """
        self._runFrom(0)

    def _runFrom(self, index: int) -> None:
        while index < len(self.filters):
            self.index = index
            current = self.filters[index]
            if current.onAccept(self) is FilterStatus.STOP_ITERATION:
                if self.buffer:
                    self.dataReceived(b"")
                return
            index += 1
        self._finish(True)

    def dataReceived(self, data: bytes) -> None:
        """
        More bytes: offer the whole peeked buffer to the current filter.
        """
        if self._done:
            return
        self.buffer += data
        current = self.filters[self.index]
        status = current.onData(self.buffer)
        if self._done:
            # The filter decided from inside onData (continueFilterChain).
            return
        if status is FilterStatus.CONTINUE:
            self._runFrom(self.index + 1)
        elif len(self.buffer) >= current.maxReadBytes():
            self._runFrom(self.index + 1)

    def continueFilterChain(self, success: bool) -> None:
        """
        Called by a listener filter that stopped, when it has decided.
        """
        if self._done:
            return
        if not success:
            self._finish(False)
            self.connection.close(details="listener_filter_error")
            return
        self._runFrom(self.index + 1)

    def readConnectionLost(self) -> None:
        """
        The peer sent its FIN before the listener filters decided
        (C{downstream_listener_filter_remote_close}, as Envoy).
        """
        if not self._done:
            self.listener.listenerFilterRemoteClose.value += 1
            self._finish(False)
            self.connection.close(details="listener_filter_remote_close")

    def _timedOut(self) -> None:
        self._timer = None
        if self._done:
            return
        self.listener.preCxTimeout.value += 1
        if self.listener.config.continueOnListenerFiltersTimeout:
            self._finish(True)
        else:
            self._finish(False)
            self.connection.close(details="listener_filters_timeout")

    def cancel(self, reason: Failure | None = None) -> None:
        """
        The connection closed under us.  A reset by the peer counts
        C{downstream_listener_filter_error}, as Envoy counts a failed peek;
        our own abort (shutdown, a filter bug) counts nothing.
        """
        if not self._done:
            if reason is not None and reason.check(ConnectionLost) \
                    and not reason.check(ConnectionAborted):
                self.listener.listenerFilterError.value += 1
            self._finish(False)

    def _finish(self, success: bool) -> None:
        self._done = True
        self.listener.preCxActive.dec()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if success:
            connection = self.connection
            connection.streamInfo.requestedServerName = self.requestedServerName or None
            chain = self.listener.selectChain(self, connection)
            if chain is not None:
                self.listener.connectionStarted(connection)
            connection.listenerFiltersDone(chain, self.buffer)


class ActiveListener(Factory):
    """
    A bound TCP listener: makes a L{Connection} per accepted socket and
    keeps the listener's stats.

    An accepted socket is first in L{sockets} (the listener-filter phase,
    C{downstream_pre_cx_active}); once it gets a filter chain it moves to
    L{connections} and counts in C{downstream_cx_*}, as Envoy counts only
    connections it created after a chain matched.

    @ivar sockets: accepted sockets with no filter chain yet.
    @ivar connections: connections with a filter chain (what
        C{server.total_connections} adds up, as Envoy's).
    """

    def __init__(self, config: ListenerConfig, context: Any) -> None:
        self.config = config
        self.context = context
        self.reactor = context.reactor
        self.store = context.store
        self.statRoot = config.statRoot
        scope = self.store.scope(self.statRoot)
        # Envoy's ALL_LISTENER_STATS and its missing-extension-config
        # counters exist (at 0) from the moment the listener does; those
        # pyenvoy has no cause to count stay 0.
        self.cxTotal = scope.counter("downstream_cx_total")
        self.cxDestroy = scope.counter("downstream_cx_destroy")
        self.cxActive = scope.gauge("downstream_cx_active")
        # Envoy's per-worker pair; pyenvoy's one event loop is worker 0.
        worker = scope.scope("worker_0")
        self.workerCxTotal = worker.counter("downstream_cx_total")
        self.workerCxActive = worker.gauge("downstream_cx_active")
        self.cxLength = scope.histogram("downstream_cx_length_ms")
        self.acceptedPerEvent = scope.histogram("connections_accepted_per_socket_event")
        #: Sockets accepted so far (each one becomes a L{Connection}).
        self.accepted = 0
        self.noFilterChainMatch = scope.counter("no_filter_chain_match")
        self.preCxActive = scope.gauge("downstream_pre_cx_active")
        self.preCxTimeout = scope.counter("downstream_pre_cx_timeout")
        self.listenerFilterRemoteClose = scope.counter("downstream_listener_filter_remote_close")
        self.listenerFilterError = scope.counter("downstream_listener_filter_error")
        for name in ("downstream_cx_overflow", "downstream_cx_overload_reject",
                     "downstream_global_cx_overflow",
                     "downstream_cx_transport_socket_connect_timeout",
                     "extension_config_missing", "network_extension_config_missing"):
            scope.counter(name)
        self.filterErrors = self.store.counter("pyenvoy.filter_errors")
        sslScope = scope.scope("ssl")
        factoryScope = scope.scope("server_ssl_socket_factory")
        self.chains = [FilterChain(c, context, sslScope, factoryScope)
                       for c in config.filterChains]
        self.default = (FilterChain(config.defaultFilterChain, context, sslScope, factoryScope)
                        if config.defaultFilterChain else None)
        self._selector: ChainSelector[FilterChain] = ChainSelector(
            [(chain.config.match or FilterChainMatch(), chain) for chain in self.chains],
            self.default)
        #: The one chain every connection gets when there is nothing to
        #: choose (a single chain with an empty match): no lookup per connection.
        self._onlyChain: FilterChain | None = None
        if len(self.chains) == 1 and (self.chains[0].config.match or FilterChainMatch()) \
                == FilterChainMatch():
            self._onlyChain = self.chains[0]
        self._listenerFilterMakers = [
            f.factory.createFilterFactory(f.config, context) for f in config.listenerFilters
        ]
        self.sockets: set[Connection] = set()
        self.connections: set[Connection] = set()
        #: When each of L{connections} got its chain: its length runs from there.
        self._startedAt: dict[Connection, float] = {}
        self.port: Any = None
        self.draining = False
        self._drained: list[Callable[[], None]] = []

    def buildProtocol(self, addr: Any) -> Connection:
        """
        A new L{Connection} for an accepted socket.
        """
        self.accepted += 1
        return Connection(self, self.reactor)


    def connectionOpened(self, connection: Connection) -> None:
        """
        Track an accepted socket, so that drain waits for it and shutdown
        closes it; it is not counted until it gets a filter chain.
        """
        self.sockets.add(connection)

    def connectionStarted(self, connection: Connection) -> None:
        """
        A socket got its filter chain: it is a connection now, counted in
        C{downstream_cx_total} and C{downstream_cx_active}, and its
        C{downstream_cx_length_ms} runs from now (Envoy's
        C{ActiveTcpConnection}).
        """
        self.sockets.discard(connection)
        self.connections.add(connection)
        self._startedAt[connection] = self.reactor.seconds()
        self.cxTotal.value += 1
        self.cxActive.value += 1
        self.workerCxTotal.value += 1
        self.workerCxActive.value += 1

    def connectionClosed(self, connection: Connection) -> None:
        """
        Count a closed connection (one that never got a filter chain
        counts nothing here); fire drain waiters when the last goes.
        """
        started = self._startedAt.pop(connection, None)
        if started is None:
            self.sockets.discard(connection)
        else:
            self.connections.discard(connection)
            self.cxDestroy.value += 1
            self.cxActive.value -= 1
            self.workerCxActive.value -= 1
            end = connection.streamInfo.endMonotonic or self.reactor.seconds()
            # Whole milliseconds, as Envoy's timespans record them.
            self.cxLength.record(int((end - started) * 1000))
        if not self.connections and not self.sockets and self._drained:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter()

    def filterError(self) -> None:
        """
        A filter raised: count it (C{pyenvoy.filter_errors}).
        """
        self.filterErrors.value += 1

    def startListenerFilters(self, connection: Connection) -> ListenerFilterPhase | None:
        """
        Start the listener-filter phase of a new connection, or return
        C{None} when there are no listener filters.
        """
        if not self._listenerFilterMakers:
            return None
        phase = ListenerFilterPhase(self, connection,
                                    [make() for make in self._listenerFilterMakers])
        connection._listenerPhase = phase
        phase.start()
        return connection._listenerPhase

    def defaultChain(self, connection: Connection | None = None) -> FilterChain | None:
        """
        The chain for a connection when no listener filter ran; the
        connection is counted as started when there is one.
        """
        chain = self.selectChain(None, connection)
        if chain is not None and connection is not None:
            self.connectionStarted(connection)
        return chain

    def selectChain(self, phase: ListenerFilterPhase | None,
                    connection: Connection | None = None) -> FilterChain | None:
        """
        Pick the filter chain by C{filter_chain_match} from the
        connection's addresses and what the listener filters found (see
        L{pyenvoy.network.chain_match}); count a miss as Envoy does.
        """
        if self._onlyChain is not None:
            return self._onlyChain
        info = connection.streamInfo if connection is not None else None
        facts = ConnectionFacts(
            local=info.downstreamLocalAddress if info is not None else None,
            remote=info.downstreamRemoteAddress if info is not None else None,
            serverName=phase.requestedServerName if phase is not None else "",
            # Envoy's listener says raw_buffer when no listener filter knew better.
            transportProtocol=(phase.detectedTransportProtocol
                               if phase is not None and phase.detectedTransportProtocol
                               else "raw_buffer"),
            applicationProtocols=(tuple(phase.requestedApplicationProtocols)
                                  if phase is not None else ()),
        )
        chain = self._selector.select(facts)
        if chain is None:
            self.noFilterChainMatch.value += 1
        return chain

    def whenDrained(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once no connection (or socket still in its
        listener filters) is open.
        """
        if not self.connections and not self.sockets:
            callback()
        else:
            self._drained.append(callback)


class ListenerService(Service):
    """
    Binds one TCP listener for the life of the service.
    """

    def __init__(self, config: ListenerConfig, context: Any) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.listener = ActiveListener(config, context)

    def privilegedStartService(self) -> None:
        """
        Bind now, so a port that cannot be bound stops start-up.
        """
        super().privilegedStartService()
        address = self.config.address
        try:
            self.listener.port = self.context.reactor.listenTCP(
                address.port, self.listener, backlog=self.config.tcpBacklogSize,
                interface=address.address)
            watchAccepts(self.listener.port, self.listener.acceptedPerEvent,
                         lambda: self.listener.accepted)
        except CannotListenError as e:
            raise StartupError(
                f"{self.config.path}: listener {self.config.name!r} cannot bind "
                f"{address}: {e.socketError}") from None

    def boundAddress(self) -> tuple[str, int] | None:
        """
        C{(host, port)} actually bound (the port is real even for port 0).
        """
        if self.listener.port is None:
            return None
        host = self.listener.port.getHost()
        return (host.host, host.port)

    def stopListening(self) -> Any:
        """
        Stop accepting new connections (drain); open ones go on.
        """
        port, self.listener.port = self.listener.port, None
        self.listener.draining = True
        if port is not None:
            return port.stopListening()
        return None

    def stopService(self) -> Any:
        """
        Stop accepting and close what is still open.
        """
        super().stopService()
        d = self.stopListening()
        for connection in list(self.listener.connections) + list(self.listener.sockets):
            connection.transport.abortConnection()
        return d
