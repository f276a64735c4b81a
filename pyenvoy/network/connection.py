"""
A downstream connection: a Twisted protocol that owns a filter chain.

Bytes read go through the read filters; bytes written by filters go
through the write filters to the transport.  Half-close is always on (as
Envoy's tcp_proxy enables it): the peer's FIN reaches the filters as
C{endStream}, and C{write(..., endStream=True)} shuts our write side.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pyenvoy.interfaces import CloseType, IFilterConnection
from pyenvoy.network.direct_write import closeNow, directHalfCloser, directWriter, queuedBytes
from pyenvoy.network.filter_manager import FilterManager
from pyenvoy.stream_info import StreamInfo

log = Logger()

#: Twisted's transports read this many bytes at a time at most and pause a
#: registered producer once this much is buffered for writing; a smaller
#: per_connection_buffer_limit_bytes lowers it.
DEFAULT_TRANSPORT_BUFFER = 65536


def peerTuple(address: Any) -> tuple[str, int] | None:
    """
    C{(host, port)} of a Twisted address, or C{None}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    return (host, port)


def _unmapped(address: tuple[str, int]) -> tuple[str, int] | None:
    """
    C{address} with its IPv4-mapped IPv6 host (C{::ffff:a.b.c.d}) as
    IPv4, or C{None} if it is not one.
    """
    try:
        mapped = ipaddress.IPv6Address(address[0]).ipv4_mapped
    except ValueError:
        return None
    return None if mapped is None else (str(mapped), address[1])


def unmapAddresses(remote: tuple[str, int] | None, local: tuple[str, int] | None
                   ) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """
    C{(remote, local)} as Envoy records an accepted connection's addresses:
    on a dual-stack socket (IPv6, not v6-only: a C{::} listener) an IPv4
    client's C{::ffff:a.b.c.d} addresses become plain IPv4, as Envoy's
    C{addressFromSockAddr} does when C{v6only} is false, so that IPv4
    C{prefix_ranges}, C{source_prefix_ranges} and allowlists match them.
    A v6-only socket never has a v4-mapped local address, so the local
    address alone decides (as Envoy decides the remote's by the local's).
    """
    if local is None or not local[0].startswith("::ffff:"):
        return remote, local
    unmappedLocal = _unmapped(local)
    if unmappedLocal is None:
        return remote, local
    if remote is not None:
        remote = _unmapped(remote) or remote
    return remote, unmappedLocal


def formatAddress(address: tuple[str, int] | None) -> str:
    """
    C{ip:port} (C{[ip]:port} for IPv6), as Envoy prints addresses.
    """
    if address is None:
        return "-"
    host, port = address
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@implementer(IHalfCloseableProtocol, IFilterConnection, IPushProducer, IHandshakeListener)
class Connection(Protocol):
    """
    One accepted connection and its filter chain.

    @ivar listener: the L{pyenvoy.network.listener.ActiveListener} that
        accepted it, which picks the filter chain and holds listener stats.
    """

    def __init__(self, listener: Any, reactor: Any) -> None:
        self.listener = listener
        self.reactor = reactor
        self.bufferLimit = listener.config.perConnectionBufferLimitBytes
        now = reactor.seconds()
        self.streamInfo = StreamInfo(now, now)
        self.id = self.streamInfo.connectionId
        self.filterManager: FilterManager | None = None
        self.open = False
        self._readClosed = False
        self._writeClosed = False
        self._localClose = False
        self._readDisableCount = 0
        self._callbacks: list[Callable[[str], None]] = []
        self._listenerPhase: Any = None
        self._producer: Any = None
        #: The L{pyenvoy.network.tls.TlsSession} when the chain terminates TLS.
        self._tls: Any = None
        #: Its L{pyenvoy.network.tls.ServerTlsLayer} (OpenSSL over memory BIOs).
        self._tlsLayer: Any = None
        #: Why TLS failed (a L{Failure} of C{SSL.Error}), for C{connectionLost}.
        self._tlsFailure: Failure | None = None
        #: What to do once the handshake completes: C{"end"} (half-close) or
        #: C{"close"}, asked for while it was still going on.
        self._tlsAfterHandshake: str | None = None
        #: Plaintext reads go here once the filter chain exists.
        self._deliver: Callable[[bytes], None] | None = None
        self._tlsWaiters: list[Callable[[], None]] = []
        #: Plaintext (and whether the peer's close_notify came after it)
        #: that a TLS handshake under way yielded while the filters had
        #: reading disabled: the socket is read until the handshake is done
        #: whatever the filters ask (as Envoy drives its handshake), and
        #: this is delivered when they enable reading again.
        self._heldPlain: list[bytes] = []
        self._heldEnd = False
        #: The chain's L{pyenvoy.network.tls.ServerTls} while a starttls
        #: transport socket has not been switched to TLS yet.
        self._startTlsServer: Any = None

    # -- Twisted protocol -------------------------------------------------

    def connectionMade(self) -> None:
        """
        Hand the socket to the listener, then run listener filters (if any)
        before the filter chain takes over.
        """
        transport = self.transport
        transport.bufferSize = min(self.bufferLimit, DEFAULT_TRANSPORT_BUFFER)
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self._send = directWriter(transport)
        self._halfClose = directHalfCloser(transport)
        info = self.streamInfo
        peer = getattr(transport, "client", None)
        if isinstance(transport, tcp.Server) and peer is not None:
            # The accepted socket's own addresses: no address objects to
            # build and take apart again for every connection.
            remote, local = peer[:2], transport.socket.getsockname()[:2]
        else:
            remote, local = peerTuple(transport.getPeer()), peerTuple(transport.getHost())
        if local is not None and local[0].startswith("::ffff:"):
            remote, local = unmapAddresses(remote, local)
        info.downstreamRemoteAddress = remote
        info.downstreamLocalAddress = local
        self.open = True
        self.listener.connectionOpened(self)
        self._listenerPhase = self.listener.startListenerFilters(self)
        if self._listenerPhase is None:
            self._startChain(b"")

    def listenerFiltersDone(self, chain: Any, buffered: bytes) -> None:
        """
        Called by the listener-filter phase with the chosen filter chain
        (or C{None} when none matched) and the bytes it peeked at.
        """
        self._listenerPhase = None
        if not self.open:
            return
        if chain is None:
            self.close(CloseType.NO_FLUSH, "filter_chain_not_found")
            return
        self._startChain(buffered, chain)

    def _startChain(self, buffered: bytes, chain: Any = None) -> None:
        if chain is None:
            chain = self.listener.defaultChain(self)
            if chain is None:
                self.close(CloseType.NO_FLUSH, "filter_chain_not_found")
                return
        encrypted = b""
        tls = getattr(chain, "tls", None)
        if tls is not None and getattr(chain, "startTls", False):
            # envoy.transport_sockets.starttls: cleartext until a filter
            # calls startSecureTransport().
            self._startTlsServer = tls
            tls = None
        if tls is not None:
            # TLS goes under the filters before they exist, so that they only
            # ever see (and write) plaintext; peeked bytes are ciphertext.
            encrypted, buffered = buffered, b""
            self._startTls(tls)
        try:
            filters = chain.createFilters()
            if not filters:
                self.close(CloseType.NO_FLUSH, "no_filters")
                return
            self.filterManager = manager = FilterManager(
                self, filters, self._output)
            manager.initialize()
            self._deliver = self._countingRead(manager.singleReader() or manager.onRead)
            if self._tlsLayer is None:
                self.dataReceived = self._deliver  # type: ignore[method-assign, assignment]
            if not manager.hasWriteFilters():
                # Nothing to run on the way out: write straight to the transport.
                self.write = self._output  # type: ignore[method-assign]
            if buffered and self.open:
                self.dataReceived(buffered)
            if encrypted and self.open:
                self.dataReceived(encrypted)
            if self._readClosed and self.open:
                manager.onRead(b"", True)
        except Exception:
            self._filterFailed(Failure())

    def _startTls(self, serverTls: Any) -> None:
        """
        Put TLS between the socket and the filters: from now on reads are
        ciphertext for the L{ServerTlsLayer}, and writes are encrypted by it.
        """
        from pyenvoy.network.tls import ServerTlsLayer

        self._tls = session = serverTls.newSession(self.streamInfo)
        self._tlsLayer = ServerTlsLayer(session)
        # The socket only ever gets ciphertext now: write it through.
        self._rawSend = self._send
        self._send = self._tlsSend  # type: ignore[method-assign]
        self._endWrite = self._tlsEndWrite  # type: ignore[method-assign]
        self.dataReceived = self._tlsReceived  # type: ignore[method-assign]

    def _tlsReceived(self, data: bytes) -> None:
        """
        Ciphertext from the socket: advance the handshake, hand the
        plaintext to the filters, send what OpenSSL has to say.
        """
        layer = self._tlsLayer
        if layer.peerClosed or self._tlsFailure is not None:
            return
        try:
            done, plaintext = layer.receive(data)
        except layer.Error:
            self._tlsFailed(Failure())
            return
        out = layer.output()
        if out:
            self._rawSend(out)
        if done:
            self._tlsEstablished()
        if self._readDisableCount > 0 and self.open:
            if plaintext:
                self._heldPlain.append(plaintext)
            if layer.peerClosed:
                self._heldEnd = True
            return
        if plaintext and self.open and self._deliver is not None:
            self._deliver(plaintext)
        if layer.peerClosed and self.open:
            # close_notify: the peer is done sending, as a FIN would say.
            self.readConnectionLost()

    def _tlsFailed(self, failure: Failure) -> None:
        """
        The handshake (or the record layer) failed: send the alert, close.
        """
        self._tlsFailure = failure
        out = self._tlsLayer.output()
        if out:
            self._rawSend(out)
        if self.open:
            self.transport.loseConnection()

    def _tlsEstablished(self) -> None:
        """
        The handshake just completed: send what was held, tell the
        listeners (L{handshakeCompleted}), then what was asked meanwhile.
        """
        layer = self._tlsLayer
        if layer.pending:
            out = layer.flushPending()
            if out:
                self._rawSend(out)
        self.handshakeCompleted()
        after, self._tlsAfterHandshake = self._tlsAfterHandshake, None
        if after == "end" and self.open:
            self._tlsEndWrite()
        elif after == "close" and self.open:
            self._tlsClose()

    def _tlsSend(self, data: bytes) -> None:
        if self._tlsFailure is not None:
            return
        layer = self._tlsLayer
        try:
            out = layer.write(data)
        except layer.Error:
            self._tlsFailed(Failure())
            return
        if out:
            self._rawSend(out)

    def _tlsEndWrite(self) -> None:
        """
        C{endStream} on a TLS connection, as Envoy: close_notify, then
        half-close the socket.  While the handshake is still going on it
        waits for it when data is held, else closes.
        """
        layer = self._tlsLayer
        if not layer.established:
            if layer.pending:
                self._tlsAfterHandshake = "end"
            else:
                self.transport.loseConnection()
            return
        out = layer.closeNotify()
        if out:
            self._rawSend(out)
        self.transport.loseWriteConnection()

    def _tlsClose(self) -> None:
        """
        A flushing close on a TLS connection: close_notify after what is
        queued, then close.  Mid-handshake there is nothing to flush unless
        data is held for after it; otherwise the socket is just aborted.
        """
        layer = self._tlsLayer
        if not layer.established:
            if layer.pending and self._tlsFailure is None:
                self._tlsAfterHandshake = "close"
            else:
                self.transport.abortConnection()
            return
        out = layer.closeNotify()
        if out:
            self._rawSend(out)
        self.transport.loseConnection()

    def startSecureTransport(self) -> bool:
        """
        Envoy's C{startSecureTransport()}: on a chain whose transport socket
        is C{envoy.transport_sockets.starttls}, switch this cleartext
        connection to TLS (the server side of the handshake).  What was
        written before goes out in cleartext first; what is read and
        written after is TLS.

        @return: C{False} when the chain has no starttls socket or TLS is
            already on.
        """
        server = self._startTlsServer
        if server is None or self._tls is not None or not self.open:
            return False
        self._startTlsServer = None
        self._startTls(server)
        return True

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake finished: record and count what was negotiated.
        """
        if self._tls is not None:
            try:
                self._tls.handshakeCompleted()
            except Exception:
                log.failure("recording the TLS handshake of connection {id} failed",
                            Failure(), id=self.id)
        waiters, self._tlsWaiters = self._tlsWaiters, []
        if self._readDisableCount > 0 and self.open:
            # The handshake is done: reading stops as the filters asked.
            self.transport.pauseProducing()
        for waiter in waiters:
            if not self.open:
                break
            try:
                waiter()
            except Exception:
                self._filterFailed(Failure())

    def whenTlsEstablished(self, callback: Callable[[], None]) -> bool:
        """
        Call C{callback()} once this connection's TLS handshake is done and
        C{streamInfo.tls} holds the peer's facts (at once if it already is),
        for filters that decide on the client certificate.  A failed
        handshake never calls it: the connection just closes.  The socket
        is read until the handshake is done even if a filter disabled
        reading (tcp_proxy does until its upstream connects); application
        bytes that come meanwhile wait until reading is enabled again.

        @return: C{False} (and no call ever) when the connection is plaintext.
        """
        if self._tls is None:
            return False
        if self._tls.established:
            callback()
        else:
            self._tlsWaiters.append(callback)
        return True

    def _endWrite(self) -> None:
        if self._readClosed:
            # Our writeConnectionLost will close the connection: let
            # Twisted do it from its own writable event, not from inside
            # the filter that ended the stream.
            self.transport.loseWriteConnection()
        else:
            self._halfClose()

    def _countingRead(self, onRead: Callable[[bytes, bool], None]) -> Callable[[bytes], None]:
        """
        The per-read hot path: count, hand to the chain, contain a filter bug.
        """
        info = self.streamInfo

        def dataReceived(data: bytes) -> None:
            info.bytesReceived += len(data)
            try:
                onRead(data, False)
            except Exception:
                self._filterFailed(Failure())

        return dataReceived

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes before the filter chain exists go to the listener filters.
        """
        if self._listenerPhase is not None:
            self._listenerPhase.dataReceived(data)

    def readConnectionLost(self) -> None:
        """
        The peer half-closed: tell the filters with C{endStream}.
        """
        if self._readClosed:
            # The TLS close_notify already ended the stream; this is the FIN.
            if self._writeClosed and self.open:
                self.transport.loseConnection()
            return
        self._readClosed = True
        layer = self._tlsLayer
        if self._listenerPhase is not None:
            self._listenerPhase.readConnectionLost()
        elif layer is not None and not layer.established:
            # The peer gave up in the middle of the handshake.
            if self.open:
                self.transport.loseConnection()
            return
        elif self.filterManager is not None:
            try:
                self.filterManager.onRead(b"", True)
            except Exception:
                self._filterFailed(Failure())
        if self._writeClosed and self.open:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our write side is shut; once both are, the connection is done.
        """
        self._writeClosed = True
        if self._readClosed and self.open:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        Tell the filters and the listener, once.
        """
        if not self.open:
            return
        self.open = False
        self.streamInfo.endMonotonic = self.reactor.seconds()
        if self._tls is not None:
            if self._tlsFailure is not None:
                reason = self._tlsFailure
            try:
                self._tls.connectionLost(reason)
            except Exception:
                log.failure("recording the TLS end of connection {id} failed",
                            Failure(), id=self.id)
        if self._listenerPhase is not None:
            self._listenerPhase.cancel(reason)
            self._listenerPhase = None
        event = "local_close" if self._localClose else "remote_close"
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                log.failure("connection close callback failed", Failure())
        self._callbacks = []
        self.listener.connectionClosed(self)

    # -- IFilterConnection --------------------------------------------------

    def _output(self, data: bytes, endStream: bool = False) -> None:
        if not self.open:
            return
        if data:
            self.streamInfo.bytesSent += len(data)
            self._send(data)
        if endStream:
            self._endWrite()

    def write(self, data: bytes, endStream: bool = False) -> None:
        """
        See L{IFilterConnection.write}.
        """
        manager = self.filterManager
        if manager is None:
            self._output(data, endStream)
            return
        try:
            manager.onWrite(data, endStream)
        except Exception:
            self._filterFailed(Failure())

    def close(self, closeType: CloseType = CloseType.FLUSH_WRITE, details: str = "") -> None:
        """
        See L{IFilterConnection.close}.
        """
        if details and not self.streamInfo.connectionTerminationDetails:
            self.streamInfo.connectionTerminationDetails = details
        if not self.open:
            return
        self._localClose = True
        if closeType is CloseType.NO_FLUSH:
            layer = self._tlsLayer
            if layer is not None and layer.established and not queuedBytes(self.transport):
                # As Envoy's NoFlush on TLS: a close_notify, if the socket
                # takes it now (queued ciphertext is dropped, so the alert
                # could only follow a gap, which the peer would reject).
                alert = layer.closeNotify()
                if alert:
                    try:
                        self.transport.socket.send(alert)
                    except OSError:
                        pass
            closeNow(self.transport)
        elif self._tlsLayer is not None:
            self._tlsClose()
        else:
            self.transport.loseConnection()

    def readDisable(self, disable: bool) -> None:
        """
        See L{IFilterConnection.readDisable}.
        """
        if disable:
            self._readDisableCount += 1
            if self._readDisableCount == 1 and self.open and not self._handshaking():
                self.transport.pauseProducing()
        elif self._readDisableCount > 0:
            self._readDisableCount -= 1
            if self._readDisableCount == 0 and self.open:
                self.transport.resumeProducing()
                if self._heldPlain or self._heldEnd:
                    self._deliverHeld()

    def _handshaking(self) -> bool:
        """
        Whether a TLS handshake is under way on this connection.
        """
        layer = self._tlsLayer
        return layer is not None and not layer.established

    def _deliverHeld(self) -> None:
        """
        Reading was enabled again: the plaintext (and end of stream) that
        the handshake yielded while it was disabled goes to the filters.
        """
        held, self._heldPlain = self._heldPlain, []
        end, self._heldEnd = self._heldEnd, False
        if held and self._deliver is not None:
            self._deliver(b"".join(held))
        if end and self.open:
            self.readConnectionLost()

    def addConnectionCallback(self, callback: Callable[[str], None]) -> None:
        """
        See L{IFilterConnection.addConnectionCallback}.
        """
        self._callbacks.append(callback)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        See L{IFilterConnection.registerProducer}.
        """
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        See L{IFilterConnection.unregisterProducer}.
        """
        if self._producer is not None:
            self._producer = None
            if self.open:
                self.transport.unregisterProducer()

    def writeBufferSize(self) -> int:
        """
        Bytes waiting in the transport's write buffer (for stats).
        """
        return queuedBytes(self.transport)

    # -- IPushProducer: another transport may pause our reading -------------

    def pauseProducing(self) -> None:
        """
        The other side's write buffer is full: stop reading from our peer.
        """
        self.readDisable(True)

    def resumeProducing(self) -> None:
        """
        The other side drained: read again.
        """
        self.readDisable(False)

    def stopProducing(self) -> None:
        """
        The other side is gone.
        """
        self.close(CloseType.NO_FLUSH)

    # -- failures ------------------------------------------------------------

    def _filterFailed(self, failure: Failure) -> None:
        log.failure("a filter on connection {id} raised; closing that connection",
                    failure, id=self.id)
        self.listener.filterError()
        self.streamInfo.connectionTerminationDetails = "filter_error"
        if self.open:
            self._localClose = True
            self.transport.abortConnection()
