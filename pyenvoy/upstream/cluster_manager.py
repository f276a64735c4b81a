"""
The one place terminal filters get upstream connections from: host
choice, circuit breaker, connect timeout and upstream stats live here.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
from typing import Any, Callable

from twisted.internet import error as _error
from twisted.internet import tcp
from twisted.internet.abstract import isIPAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from pyenvoy.config.bootstrap import ClusterConfig
from pyenvoy.network.direct_write import closeNow, directHalfCloser, directWriter
from pyenvoy.stats import Store
from pyenvoy.upstream.cluster import Cluster
from pyenvoy.upstream.host import Host


class ConnectStatus(enum.Enum):
    """
    Why no connection attempt was started (or that one was).
    """

    STARTED = "started"
    NO_CLUSTER = "no_cluster"
    OVERFLOW = "overflow"
    NO_HOST = "no_host"


def _connectFailureReason(reason: Failure) -> str:
    """
    Why a connect failed, as Envoy words it for
    C{%UPSTREAM_TRANSPORT_FAILURE_REASON%} when the socket reports an
    error (C{delayed connect error: Connection refused}); Twisted's own
    message otherwise.
    """
    number = getattr(reason.value, "osError", None)
    if isinstance(number, int) and number > 0:
        return "delayed connect error: " + os.strerror(number)
    return reason.getErrorMessage()


class UpstreamConnection:
    """
    One connection to an upstream host, on behalf of a terminal filter.

    The filter passes a I{handler} with C{upstreamConnected(upstream)},
    C{upstreamConnectFailed(reason, timedOut)}, C{upstreamData(data)},
    C{upstreamEndStream()} and C{upstreamClosed(localClose)}.

    With C{request} (tcp_proxy: the connection is the request) it is
    counted as Envoy's TCP connection pool counts its stream: pending
    (C{upstream_rq_pending_*}) while connecting, then in C{upstream_rq_total}
    / C{upstream_rq_active} and the host's C{rq_total} / C{rq_active} once
    connected; a failed connect ejects it (C{upstream_rq_pending_failure_eject}),
    a close while connecting cancels it (C{upstream_rq_cancelled}).
    """

    def __init__(self, cluster: Cluster, host: Host, handler: Any, reactor: Any,
                 bufferLimit: int, request: bool = False) -> None:
        self.cluster = cluster
        self.host = host
        self.handler = handler
        self.reactor = reactor
        self.bufferLimit = bufferLimit
        self.request = request
        self.protocol: _UpstreamProtocol | None = None
        self.connected = False
        self.closed = False
        self.localClose = False
        #: Set by a filter that closed us with bytes still to send.
        self.flushing = False
        #: Whether the upstream closed with a FIN (not a reset or an error).
        self.cleanClose = True
        self.localAddress: tuple[str, int] | None = None
        self._started = reactor.seconds()
        self._connectedAt: float | None = None
        self._connector: Any = None
        self._timer: Any = None
        #: The protocol while TCP is up but the TLS handshake is not done.
        self._handshaking: _UpstreamProtocol | None = None
        #: The upstream TLS session (C{None} for plaintext clusters).
        self.tlsSession: Any = None
        #: What the upstream TLS handshake negotiated (or why it failed).
        self.tls: dict[str, Any] = {}
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_active.value += 1
        if request:
            stats.upstream_rq_pending_total.value += 1
            stats.upstream_rq_pending_active.value += 1
            host.stats.rq_pending_active += 1
        host.stats.cx_total += 1
        host.stats.cx_active += 1
        cluster.connectionAdded()
        cluster.connections.add(self)

    def start(self) -> None:
        """
        Connect, with the cluster's C{connect_timeout}.
        """
        factory = _UpstreamFactory(self)
        address, port = self.host.address
        timeout = self.cluster.config.connectTimeout
        reactor = self.reactor
        self._timer = reactor.callLater(timeout, self._timedOut)
        if isinstance(reactor, PosixReactorBase) and isIPAddress(address):
            # Our own timer above is the connect timeout: the connector
            # needs none of its own.
            connector = _DirectConnector(address, port, factory, None, None, reactor)
            connector.connect()
            self._connector = connector
        else:
            self._connector = reactor.connectTCP(address, port, factory, timeout=timeout + 30)

    def _timedOut(self) -> None:
        self._timer = None
        if self.connected or self.closed:
            return
        self.cluster.stats.upstream_cx_connect_timeout.value += 1
        self._failed("connection timeout", timedOut=True)
        self._stopConnecting()

    def _stopConnecting(self) -> None:
        # Before TCP is up the connector stops it; during the TLS handshake
        # the socket is cut.
        handshaking, self._handshaking = self._handshaking, None
        if handshaking is not None:
            handshaking.transport.abortConnection()
        elif self._connector is not None:
            self._connector.stopConnecting()

    def _tcpMade(self, protocol: "_UpstreamProtocol") -> None:
        """
        TCP is up: for a TLS cluster start the handshake (the connection
        counts as made only once it is done, as Envoy's C{Connected}
        event), else the connection is made.
        """
        tls = self.cluster.tls
        if tls is None or self.closed or self.cluster.config.tls.startTls:
            # A starttls cluster starts in cleartext (startSecureTransport).
            self._made(protocol)
            return
        self._handshaking = protocol
        self.tlsSession = tls.newSession(self)
        protocol.transport.startTLS(self.tlsSession)

    def _handshakeFailed(self, protocol: "_UpstreamProtocol", reason: Failure) -> None:
        """
        The TLS handshake did not finish: count why, and fail the connect.
        """
        self._handshaking = None
        if self.tlsSession is not None:
            self.tlsSession.connectionLost(reason)
        if self.closed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._failed(self.tls.get("failureReason") or reason.getErrorMessage(),
                     timedOut=False)

    def _made(self, protocol: "_UpstreamProtocol") -> None:
        self._handshaking = None
        if self.closed:
            protocol.transport.abortConnection()
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.protocol = protocol
        self.connected = True
        if self.request:
            stats = self.cluster.stats
            stats.upstream_rq_pending_active.value -= 1
            self.host.stats.rq_pending_active -= 1
            stats.upstream_rq_total.value += 1
            stats.upstream_rq_active.value += 1
            self.host.stats.rq_total += 1
            self.host.stats.rq_active += 1
        now = self.reactor.seconds()
        self._connectedAt = now
        # Whole milliseconds, as Envoy's timespans record them.
        self.cluster.stats.upstream_cx_connect_ms.record(int((now - self._started) * 1000))
        transport = protocol.transport
        transport.bufferSize = min(self.bufferLimit, 65536)
        self._send = directWriter(transport)
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        sock = getattr(transport, "socket", None)
        if isinstance(transport, tcp.Connection) and sock is not None:
            # The socket's own name: no address object to build and take apart.
            self.localAddress = sock.getsockname()[:2]
        else:
            host = transport.getHost()
            self.localAddress = (host.host, host.port)
        self.handler.upstreamConnected(self)

    def _connectFailed(self, reason: Failure) -> None:
        if self.closed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._failed(_connectFailureReason(reason), timedOut=False)

    def _failed(self, reason: str, timedOut: bool) -> None:
        self.closed = True
        stats = self.cluster.stats
        # As Envoy's pool: a connection closed while connecting is a connect
        # failure, a timed-out one too; a refused or failed one was closed
        # by the remote side, a timed-out one by us.
        stats.upstream_cx_connect_fail.value += 1
        self.host.stats.cx_connect_fail += 1
        if self.request:
            stats.upstream_rq_pending_active.value -= 1
            self.host.stats.rq_pending_active -= 1
            stats.upstream_rq_pending_failure_eject.value += 1
        self._release(destroy=True, local=timedOut)
        self.handler.upstreamConnectFailed(reason, timedOut)

    def _release(self, destroy: bool, local: bool) -> None:
        self.cluster.connections.discard(self)
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        self.host.stats.cx_active -= 1
        active = self.request and self.connected
        if active:
            stats.upstream_rq_active.value -= 1
            self.host.stats.rq_active -= 1
        self.cluster.connectionRemoved()
        if destroy:
            stats.upstream_cx_destroy.value += 1
            (stats.upstream_cx_destroy_local if local
             else stats.upstream_cx_destroy_remote).value += 1
            if active:
                # As Envoy's TCP pool: the connection's one request (the
                # filter's hold on it) is active until the connection ends.
                stats.upstream_cx_destroy_with_active_rq.value += 1
                (stats.upstream_cx_destroy_local_with_active_rq if local
                 else stats.upstream_cx_destroy_remote_with_active_rq).value += 1

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._connectedAt is not None:
            self.cluster.stats.upstream_cx_length_ms.record(
                int((self.reactor.seconds() - self._connectedAt) * 1000))
        self._release(destroy=True, local=self.localClose)
        self.handler.upstreamClosed(self.localClose)

    # -- what the filter calls -----------------------------------------------

    def startSecureTransport(self) -> bool:
        """
        Envoy's C{startUpstreamSecureTransport()}: on a cluster whose
        transport socket is C{envoy.transport_sockets.starttls}, switch
        this connected cleartext connection to TLS (the client side of the
        handshake; a failed handshake closes it).

        @return: C{False} when the cluster has no starttls socket, TLS is
            already on or the connection is not up.
        """
        tls = self.cluster.tls
        if (tls is None or not self.cluster.config.tls.startTls or self.protocol is None
                or self.closed or self.tlsSession is not None):
            return False
        self.tlsSession = tls.newSession(self)
        transport = self.protocol.transport
        transport.startTLS(self.tlsSession)
        self._send = transport.write
        return True

    def write(self, data: bytes) -> None:
        """
        Send bytes to the upstream host.
        """
        self.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)
        self._send(data)

    def pendingWrite(self) -> bool:
        """
        Whether bytes are still waiting to be sent to the upstream.
        """
        if self.protocol is None:
            return False
        transport = self.protocol.transport
        return bool(getattr(transport, "dataBuffer", b"")) or bool(
            getattr(transport, "_tempDataLen", 0))

    def endStream(self) -> None:
        """
        Half-close towards the upstream (our FIN).
        """
        protocol = self.protocol
        if protocol is not None and not self.closed:
            if self.tlsSession is not None:
                from pyenvoy.network.tls import sendCloseNotify
                sendCloseNotify(protocol.transport)
            elif protocol._readClosed:
                # Our writeConnectionLost closes the connection: not from
                # inside the filter's call.
                protocol.transport.loseWriteConnection()
            else:
                directHalfCloser(protocol.transport)()

    def close(self, flush: bool = True) -> None:
        """
        Close (or give up connecting).
        """
        if self.closed:
            return
        self.localClose = True
        if not self.connected:
            self.closed = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._stopConnecting()
            if self.request:
                stats = self.cluster.stats
                stats.upstream_rq_pending_active.value -= 1
                self.host.stats.rq_pending_active -= 1
                stats.upstream_rq_cancelled.value += 1
            self._release(destroy=True, local=True)
            return
        transport = self.protocol.transport  # type: ignore[union-attr]
        if flush:
            if getattr(transport, "producer", None) is not None:
                # Nothing more will be written: a producer paused by this
                # connection's backlog would otherwise be resumed when it
                # drains, instead of the connection closing (Twisted closes
                # only once its producer is gone).
                transport.unregisterProducer()
            transport.loseConnection()
        else:
            closeNow(transport)

    def pauseReading(self) -> None:
        """
        Stop reading from the upstream (downstream cannot take more).
        """
        if self.protocol is not None and not self.closed:
            self.cluster.stats.upstream_flow_control_paused_reading_total.value += 1
            self.protocol.transport.pauseProducing()

    def resumeReading(self) -> None:
        """
        Read from the upstream again.
        """
        if self.protocol is not None and not self.closed:
            self.cluster.stats.upstream_flow_control_resumed_reading_total.value += 1
            self.protocol.transport.resumeProducing()

    def registerProducer(self, producer: Any) -> None:
        """
        Let C{producer} (the downstream) be paused while our write buffer
        to the upstream is full.
        """
        self.protocol.transport.registerProducer(producer, True)  # type: ignore[union-attr]


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _UpstreamProtocol(Protocol):
    """
    The Twisted protocol of an upstream connection; forwards to the
    L{UpstreamConnection}'s handler.
    """

    def __init__(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        self._readClosed = False
        self._writeClosed = False

    def connectionMade(self) -> None:
        upstream = self.upstream
        rx = upstream.cluster.stats.upstream_cx_rx_bytes_total
        handler = upstream.handler.upstreamData

        def dataReceived(data: bytes) -> None:
            rx.value += len(data)
            handler(data)

        self.dataReceived = dataReceived  # type: ignore[method-assign]
        upstream._tcpMade(self)

    def handshakeCompleted(self) -> None:
        upstream = self.upstream
        session = upstream.tlsSession
        if session is not None:
            session.handshakeCompleted()
        if upstream._handshaking is self:
            upstream._made(self)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if not self.upstream.closed:
            self.upstream.handler.upstreamEndStream()
        if self._writeClosed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self._writeClosed = True
        if self._readClosed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        upstream = self.upstream
        if upstream.tlsSession is not None and upstream.protocol is not self:
            upstream._handshakeFailed(self, reason)
            return
        if reason is not None and not reason.check(ConnectionDone):
            upstream.cleanClose = False
        upstream._lost()


class _UpstreamFactory(ClientFactory):
    # Twisted logs "Starting factory"/"Stopping factory" for every
    # connection: a quarter of a TLS handshake's CPU in bench/tls.
    noisy = False

    def __init__(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream

    def buildProtocol(self, addr: Any) -> _UpstreamProtocol:
        return _UpstreamProtocol(self.upstream)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.upstream._connectFailed(reason)


#: C{connect_ex} results that mean "connected, or on its way": the reactor
#: calls C{doConnect} once the socket is writable, which finishes the job.
_CONNECTING = frozenset({0, errno.EISCONN, errno.EINPROGRESS, errno.EWOULDBLOCK,
                         errno.EALREADY})


class _DirectClient(tcp.Client):
    """
    A C{tcp.Client} to an IPv4 literal that starts connecting at once.

    Twisted's client always goes through C{resolveAddress} on the next loop
    turn: a zero-delay timer, a Deferred and its callbacks for an address
    that needs no resolving.  A proxy connects upstream for every
    connection, so this one calls C{connect_ex} right away and lets the
    reactor's writable event (C{doConnect}) finish, as Twisted's own second
    step does.  Whatever happens (connected, refused, failed at once) is
    reported from the reactor, never from inside C{connect()}: the caller
    is not re-entered before it has the L{UpstreamConnection} in hand.
    """

    def _finishInit(self, whenDone: Any, skt: Any, err: Any, reactor: Any) -> None:
        if not whenDone or self._requiresResolution or self.addressFamily != socket.AF_INET:
            super()._finishInit(whenDone, skt, err, reactor)
            return
        self._commonConnection.__init__(self, skt, None, reactor)
        self.realAddress = self.addr
        self.doWrite = self.doConnect  # type: ignore[method-assign]
        self.doRead = self.doConnect  # type: ignore[method-assign]
        try:
            result = skt.connect_ex(self.addr)
        except OSError as e:
            result = e.args[0]
        if result in _CONNECTING:
            self.startReading()
            self.startWriting()
        else:
            reactor.callLater(0, self.failIfNotConnected,
                              _error.getConnectError((result, os.strerror(result))))

    def _connectDone(self) -> None:
        # As Twisted's, without building the peer's address object (our
        # factory does not look at it) nor the log prefix for every
        # connection.
        self.protocol = self.connector.buildProtocol(None)
        self.connected = 1
        self.logstr = "_UpstreamProtocol,client"
        self.startReading()
        self.protocol.makeConnection(self)


class _DirectConnector(tcp.Connector):
    """
    A C{tcp.Connector} whose transport is a L{_DirectClient}.
    """

    def _makeTransport(self) -> tcp.Client:
        return _DirectClient(self.host, self.port, self.bindAddress, self, self.reactor)


class ClusterManager:
    """
    Every cluster of the process, by name.
    """

    def __init__(self, configs: dict[str, ClusterConfig], store: Store, reactor: Any) -> None:
        self.reactor = reactor
        self.store = store
        self.clusters: dict[str, Cluster] = {
            name: Cluster(config, store, reactor) for name, config in configs.items()
        }
        store.counter("cluster_manager.cluster_added").value += len(self.clusters)
        store.gauge("cluster_manager.active_clusters").value = len(self.clusters)
        store.gauge("cluster_manager.warming_clusters")
        store.counter("cluster_manager.cluster_modified")
        store.counter("cluster_manager.cluster_removed")
        self._removedCallbacks: dict[str, list[Callable[[Cluster, list[Host]], None]]] = {}
        self._clients: list[Any] = []
        self._started = False
        for cluster in self.clusters.values():
            self._watchMembership(cluster)

    def _watchMembership(self, cluster: Cluster) -> None:
        """
        Tell the L{onHostsRemoved} subscribers of C{cluster} which hosts
        each membership update took away (a host that stays keeps its
        object, so identity tells).
        """
        setHosts = cluster.setHosts

        def setHostsAndNotify(hosts: list[Host]) -> None:
            before = cluster.hosts
            setHosts(hosts)
            callbacks = self._removedCallbacks.get(cluster.name)
            if not callbacks:
                return
            kept = {id(h) for h in cluster.hosts}
            removed = [h for h in before if id(h) not in kept]
            if removed:
                for callback in list(callbacks):
                    callback(cluster, removed)

        cluster.setHosts = setHostsAndNotify  # type: ignore[method-assign]

    def onHostsRemoved(self, clusterName: str,
                       callback: Callable[[Cluster, list[Host]], None]) -> Callable[[], None]:
        """
        Call C{callback(cluster, removedHosts)} whenever hosts leave
        C{clusterName} (a DNS update dropped them), as Envoy's member update
        callbacks do; return a function that unsubscribes.
        """
        callbacks = self._removedCallbacks.setdefault(clusterName, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def start(self) -> None:
        """
        Start DNS clusters, then the clients added with L{addClient}.
        """
        self._started = True
        for cluster in self.clusters.values():
            cluster.start()
        for client in list(self._clients):
            client.start()

    def addClient(self, client: Any) -> None:
        """
        Run C{client} (with C{start()} and C{stop()}, e.g. the REST fetcher
        of C{client_ssl_auth}) for as long as the clusters run: started with
        them, or at once if they already are, and stopped with them.
        """
        self._clients.append(client)
        if self._started:
            client.start()

    def stop(self) -> None:
        """
        Stop DNS refreshes and clients and cut every upstream connection
        still open.
        """
        self._started = False
        for client in list(self._clients):
            client.stop()
        for cluster in self.clusters.values():
            cluster.stop()
            for upstream in list(cluster.connections):
                upstream.close(flush=False)

    def get(self, name: str) -> Cluster | None:
        """
        The cluster called C{name}, if any.
        """
        return self.clusters.get(name)

    def tcpConnect(self, clusterName: str, handler: Any,
                   lbContext: Any = None) -> tuple[ConnectStatus, UpstreamConnection | None]:
        """
        Start a connection to a host of C{clusterName} for C{handler}, or
        say why not (counting C{upstream_cx_overflow} /
        C{upstream_cx_none_healthy} as Envoy does).
        """
        cluster = self.clusters.get(clusterName)
        if cluster is None:
            return ConnectStatus.NO_CLUSTER, None
        if not cluster.canConnect():
            cluster.stats.upstream_cx_overflow.value += 1
            return ConnectStatus.OVERFLOW, None
        host = cluster.lb.chooseHost(lbContext)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            return ConnectStatus.NO_HOST, None
        return ConnectStatus.STARTED, self.connectHost(cluster, host, handler, request=True)

    def connectHost(self, cluster: Cluster, host: Host, handler: Any,
                    request: bool = False) -> UpstreamConnection:
        """
        Start a connection to C{host} of C{cluster} for C{handler}, for a
        filter that picked the host itself (a Redis connection pool keeps
        one connection per host, and counts its commands as requests).
        The caller checks C{cluster.canConnect()}.  C{request}: see
        L{UpstreamConnection}.
        """
        upstream = UpstreamConnection(cluster, host, handler, self.reactor,
                                      cluster.config.perConnectionBufferLimitBytes, request)
        upstream.start()
        return upstream

    # -- UDP sessions ----------------------------------------------------------
    #
    # A UDP session has no connection to open: the filter owns its socket.
    # What the cluster manager keeps is the rest of Envoy's bookkeeping: a
    # session counts against max_connections (as Envoy's udp_proxy counts
    # it in the cluster's connection resource), and a refused one is
    # counted as upstream_cx_overflow / upstream_cx_none_healthy.

    def openUdpSession(self, clusterName: str, lbContext: Any = None
                       ) -> tuple[ConnectStatus, Cluster | None, Host | None]:
        """
        Admit a new sticky UDP session on C{clusterName} and pick its host,
        in Envoy's order: circuit breaker first, then the load balancer.

        On C{STARTED} the session holds one C{max_connections} slot until
        the caller gives it back with L{closeUdpSession}.
        """
        cluster = self.clusters.get(clusterName)
        if cluster is None:
            return ConnectStatus.NO_CLUSTER, None, None
        if not self.admitUdpSession(cluster):
            return ConnectStatus.OVERFLOW, cluster, None
        host = cluster.lb.chooseHost(lbContext)
        if host is None:
            cluster.connectionRemoved()
            cluster.stats.upstream_cx_none_healthy.value += 1
            return ConnectStatus.NO_HOST, cluster, None
        return ConnectStatus.STARTED, cluster, host

    def chooseUdpHost(self, clusterName: str, lbContext: Any = None
                      ) -> tuple[ConnectStatus, Cluster | None, Host | None]:
        """
        Pick a host of C{clusterName} for one datagram (per-packet load
        balancing), counting C{upstream_cx_none_healthy} when there is
        none.  The circuit breaker is not touched: a datagram that needs a
        new session asks L{admitUdpSession} next.
        """
        cluster = self.clusters.get(clusterName)
        if cluster is None:
            return ConnectStatus.NO_CLUSTER, None, None
        host = cluster.lb.chooseHost(lbContext)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            return ConnectStatus.NO_HOST, cluster, None
        return ConnectStatus.STARTED, cluster, host

    def admitUdpSession(self, cluster: Cluster) -> bool:
        """
        Take one C{max_connections} slot of C{cluster} for a new UDP
        session, or count C{upstream_cx_overflow} and refuse.
        """
        if not cluster.canConnect():
            cluster.stats.upstream_cx_overflow.value += 1
            return False
        cluster.connectionAdded()
        return True

    def closeUdpSession(self, cluster: Cluster) -> None:
        """
        Give back the C{max_connections} slot of a UDP session that ended.
        """
        cluster.connectionRemoved()
