"""
UDP listeners: bind a datagram socket and hand every datagram to the
listener's UDP listener filter (udp_proxy), and connected upstream sockets
for the filter's sessions.

Binding happens in C{privilegedStartService} and raises when the port is
taken, as for TCP listeners.  Nothing here touches the payload: a datagram
is read once, passed on as the same C{bytes} object and written once.

Where the platform has epoll, the listener's socket and all its sessions'
sockets sit in one epoll set of their own, and the reactor watches only
that set (L{DatagramPoller}): a busy proxy then pays the reactor's
per-event cost once per turn, not once per socket, and a socket with one
datagram waiting costs one read, not a read and a failed read.
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.config.bootstrap import ListenerConfig
from pyenvoy.network.listener import StartupError

log = Logger()

#: Most datagrams one socket reads per readiness event, so one busy
#: session cannot starve the others.
MAX_READS_PER_EVENT = 64

#: How many times L{DatagramPoller} polls its set per reactor event before
#: letting the reactor run timers and other descriptors.
POLL_ROUNDS = 16

#: Most ready sockets taken from one poll.
POLL_EVENTS = 512


def _notListening(data: bytes, peer: Any) -> None:
    raise OSError("the UDP listener is not listening")


class _ListenerProtocol(DatagramProtocol):
    """
    The protocol of a UDP listener's port; C{datagramReceived} is the
    listener's receiver, bound once so a datagram costs one call.
    """

    noisy = False

    def __init__(self, name: str, receiver: Callable[[bytes, Any], None]) -> None:
        self.name = name
        self.datagramReceived = receiver  # type: ignore[method-assign,assignment]

    def logPrefix(self) -> str:
        """
        How Twisted's logs name the port ("UDP listener dns starting on 10053").
        """
        return f"UDP listener {self.name}"


class ActiveUdpListener:
    """
    A bound UDP listener and the filter its datagrams go to.

    It is the filter's callbacks object: C{sendto(data, peer)} writes a
    datagram from the listener's socket, C{reactor} gives the time, and
    C{openUpstream} opens a connected socket to an upstream host.

    @ivar port: the Twisted UDP port, or C{None} when not listening.
    @ivar filter: the UDP listener filter (udp_proxy).
    """

    def __init__(self, config: ListenerConfig, context: Any) -> None:
        self.config = config
        self.context = context
        self.reactor = context.reactor
        self.store = context.store
        self.statRoot = config.statRoot
        self.maxRxDatagramSize = config.downstreamSocketConfig.maxRxDatagramSize
        scope = self.store.scope(self.statRoot)
        self.rxDatagramDropped = scope.scope("udp").counter("downstream_rx_datagram_dropped")
        self.filterErrors = self.store.counter("pyenvoy.filter_errors")
        #: Always empty: a UDP listener has sessions, not connections (the
        #: server's connection gauges and drain read this).
        self.connections: set[Any] = set()
        self.port: Any = None
        self.poller: DatagramPoller | None = None
        self.draining = False
        #: Write one datagram to a peer from the listener's socket; raises
        #: C{OSError} when the kernel does not take it (a full buffer drops
        #: the datagram, as in Envoy: nothing is queued).
        self.sendto: Callable[[bytes, Any], Any] = _notListening
        (filterConfig,) = config.listenerFilters
        make = filterConfig.factory.createFilterFactory(filterConfig.config, context)
        self.filter = make(self)
        self._protocol = _ListenerProtocol(config.name, self._makeReceiver())

    # -- binding ---------------------------------------------------------------

    def listen(self) -> None:
        """
        Bind the socket (reading one byte more than C{max_rx_datagram_size},
        so a larger datagram shows as too long rather than cut short).

        @raise CannotListenError: if the address cannot be bound.
        """
        address = self.config.address
        self.port = self.reactor.listenUDP(
            address.port, self._protocol, interface=address.address,
            maxPacketSize=self.maxRxDatagramSize + 1)
        sock = getattr(self.port, "socket", None)
        if not isinstance(sock, socket.socket):
            # Not a real socket (a test reactor's port): Twisted reads it.
            self.sendto = self._portWrite
            return
        self.sendto = sock.sendto
        if hasattr(select, "epoll"):
            self.poller = DatagramPoller(self.reactor, self._filterError)
            self.port.stopReading()
            self.poller.add(sock.fileno(), _PolledListenerSocket(
                sock, self.maxRxDatagramSize + 1, self._protocol.datagramReceived,
                self.filter.onReceiveError))

    def _makeReceiver(self) -> Callable[[bytes, Any], None]:
        limit = self.maxRxDatagramSize
        dropped = self.rxDatagramDropped
        onData = self.filter.onData
        filterError = self._filterError

        def datagramReceived(datagram: bytes, addr: Any) -> None:
            if len(datagram) > limit:
                dropped.value += 1
                return
            try:
                onData(datagram, addr)
            except Exception:
                filterError()

        return datagramReceived

    def _filterError(self) -> None:
        self.filterErrors.value += 1
        log.failure("udp listener {name}: the filter failed on a datagram", name=self.config.name)

    def localAddress(self) -> tuple[str, int] | None:
        """
        C{(host, port)} actually bound.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return (host.host, host.port)

    # -- the filter's callbacks ------------------------------------------------------

    def _portWrite(self, data: bytes, peer: tuple[str, int]) -> None:
        """
        L{sendto} through the port's own C{write}, for ports that are not
        real sockets (a test reactor's).
        """
        if self.port is None:
            _notListening(data, peer)
        try:
            self.port.write(data, peer)
        except Exception as e:
            raise OSError(str(e)) from e

    def openUpstream(self, address: tuple[str, int], readSize: int,
                     receiver: Any) -> "PolledUdpSocket | ConnectedUdpSocket":
        """
        A UDP socket connected to C{address}; each datagram read from it
        (up to C{readSize} bytes) goes to C{receiver.upstreamDatagram},
        read errors to C{receiver.upstreamReadError}; its C{send(data)}
        raises C{OSError} when a datagram cannot be sent.

        @raise OSError: if the socket cannot be made or connected.
        """
        if self.poller is not None:
            return PolledUdpSocket(self.poller, address, readSize, receiver)
        return ConnectedUdpSocket(self.reactor, address, readSize, receiver)

    # -- life ------------------------------------------------------------------

    def stopListening(self) -> Any:
        """
        Close the socket and end every session (their replies could no
        longer be sent from it).
        """
        port, self.port = self.port, None
        poller, self.poller = self.poller, None
        self.sendto = _notListening
        self.draining = True
        self.filter.close()
        if poller is not None:
            poller.close()
        if port is not None:
            return port.stopListening()
        return None

    def whenDrained(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} now: a closed UDP listener keeps no sessions.
        """
        callback()


class UdpListenerService(Service):
    """
    Binds one UDP listener for the life of the service.
    """

    def __init__(self, config: ListenerConfig, context: Any) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.listener = ActiveUdpListener(config, context)

    def privilegedStartService(self) -> None:
        """
        Bind now, so a port that cannot be bound stops start-up.
        """
        super().privilegedStartService()
        try:
            self.listener.listen()
        except CannotListenError as e:
            raise StartupError(
                f"{self.config.path}: UDP listener {self.config.name!r} cannot bind "
                f"{self.config.address}: {e.socketError}") from None

    def boundAddress(self) -> tuple[str, int] | None:
        """
        C{(host, port)} actually bound (the port is real even for port 0).
        """
        return self.listener.localAddress()

    def stopListening(self) -> Any:
        """
        Stop receiving; sessions end.
        """
        return self.listener.stopListening()

    def stopService(self) -> Any:
        """
        Close the socket and every session.
        """
        super().stopService()
        return self.stopListening()


def _openConnected(address: tuple[str, int]) -> socket.socket:
    """
    A non-blocking UDP socket connected to C{address} (an IP literal).
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor)
class DatagramPoller:
    """
    The sockets of one UDP listener (its own and its sessions') in one
    epoll set; the reactor watches the set's descriptor.

    Each turn polls the set without waiting and reads every ready socket:
    a session socket one datagram (level-triggered, it shows up again if
    more wait), the listener's socket until it is empty (it gathers every
    client's traffic).  A pending ICMP error shows as ready and is read as
    the error it is.
    """

    def __init__(self, reactor: Any, onError: Callable[[], None]) -> None:
        self._reactor = reactor
        self._onError = onError
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self._entries: dict[int, Any] = {}
        self.closed = False
        reactor.addReader(self)

    def fileno(self) -> int:
        """
        The epoll set's descriptor (-1 once closed).
        """
        return self._fd

    def logPrefix(self) -> str:
        """
        What the reactor's logs call us.
        """
        return "udp_proxy sockets"

    def add(self, fd: int, entry: Any) -> None:
        """
        Watch C{fd}; C{entry.readReady()} is called when it is readable.
        """
        self._epoll.register(fd, select.EPOLLIN)
        self._entries[fd] = entry

    def remove(self, fd: int) -> None:
        """
        Stop watching C{fd} (before it is closed).
        """
        if self._entries.pop(fd, None) is not None and not self.closed:
            self._epoll.unregister(fd)

    def doRead(self) -> None:
        """
        Read what the sockets of the set have, for a few rounds.
        """
        poll = self._epoll.poll
        entries = self._entries
        for _ in range(POLL_ROUNDS):
            events = poll(0, POLL_EVENTS)
            if not events:
                return
            for fd, _ in events:
                entry = entries.get(fd)
                if entry is None:
                    continue
                try:
                    entry.readReady()
                except Exception:
                    self._onError()

    def connectionLost(self, reason: Any) -> None:
        """
        The reactor gave up on the set (it should not): watch it again.
        """
        if not self.closed:
            log.error("udp_proxy sockets: poller lost ({reason}); resuming",
                      reason=reason.getErrorMessage() if reason else None)
            self._reactor.addReader(self)

    def close(self) -> None:
        """
        Stop watching and close the set (the sockets stay open).
        """
        if self.closed:
            return
        self.closed = True
        self._reactor.removeReader(self)
        self._entries.clear()
        self._epoll.close()
        self._fd = -1


class _PolledListenerSocket:
    """
    The listener's socket in a L{DatagramPoller}: read until empty (at most
    L{MAX_READS_PER_EVENT}), each datagram to the listener's receiver.
    """

    def __init__(self, sock: socket.socket, readSize: int,
                 receive: Callable[[bytes, Any], None], onError: Callable[[], None]) -> None:
        self._recvfrom = sock.recvfrom
        self._readSize = readSize
        self._receive = receive
        self._onError = onError
        self._ipv6 = sock.family == socket.AF_INET6

    def readReady(self) -> None:
        recvfrom = self._recvfrom
        size = self._readSize
        receive = self._receive
        for _ in range(MAX_READS_PER_EVENT):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._onError()
                return
            if self._ipv6:
                addr = addr[:2]
            receive(data, addr)


class PolledUdpSocket:
    """
    A UDP socket connected to one upstream host, read through the
    listener's L{DatagramPoller}.
    """

    def __init__(self, poller: DatagramPoller, address: tuple[str, int], readSize: int,
                 receiver: Any) -> None:
        sock = _openConnected(address)
        self.socket = sock
        self.address = address
        self._fd = sock.fileno()
        self._poller = poller
        self._recv = sock.recv
        self._readSize = readSize
        self._receiver = receiver
        self._deliver = receiver.upstreamDatagram
        #: Send one datagram; raises C{OSError} when the kernel does not
        #: take it (a pending ICMP error surfaces here too, as in Envoy).
        self.send = sock.send
        self.closed = False
        poller.add(self._fd, self)

    def readReady(self) -> None:
        """
        Read one datagram (or the pending error).
        """
        try:
            data = self._recv(self._readSize)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._receiver.upstreamReadError(e)
            return
        self._deliver(data)

    def localAddress(self) -> tuple[str, int]:
        """
        The address the kernel gave the socket.
        """
        host, port = self.socket.getsockname()[:2]
        return (host, port)

    def close(self) -> None:
        """
        Leave the poller and close the socket.
        """
        if self.closed:
            return
        self.closed = True
        self._poller.remove(self._fd)
        self.socket.close()


@implementer(IReadDescriptor)
class ConnectedUdpSocket:
    """
    A UDP socket connected to one upstream host, read by the reactor
    itself (where there is no epoll for L{DatagramPoller}).

    Not a Twisted C{udp.Port}: that one logs every open and close (a
    session each, by the thousand for DNS), and the epoll reactor kills
    it when an ICMP error is pending (it sees C{EPOLLERR} without
    C{EPOLLIN} and disconnects the descriptor).  Here a port-unreachable
    is a read error for the receiver to count, and reading goes on.
    """

    def __init__(self, reactor: Any, address: tuple[str, int], readSize: int,
                 receiver: Any) -> None:
        sock = _openConnected(address)
        self.socket = sock
        self.address = address
        self._fd = sock.fileno()
        self._reactor = reactor
        self._readSize = readSize
        self._receiver = receiver
        #: Send one datagram; raises C{OSError} when the kernel does not
        #: take it (a pending ICMP error surfaces here too, as in Envoy).
        self.send = sock.send
        self.closed = False
        reactor.addReader(self)

    def fileno(self) -> int:
        """
        The socket's descriptor (-1 once closed).
        """
        return self._fd

    def logPrefix(self) -> str:
        """
        What the reactor's logs call us.
        """
        return "udp_proxy upstream"

    def localAddress(self) -> tuple[str, int]:
        """
        The address the kernel gave the socket.
        """
        host, port = self.socket.getsockname()[:2]
        return (host, port)

    def doRead(self) -> None:
        """
        Read the datagrams waiting (at most L{MAX_READS_PER_EVENT}).
        """
        recv = self.socket.recv
        size = self._readSize
        deliver = self._receiver.upstreamDatagram
        for _ in range(MAX_READS_PER_EVENT):
            try:
                data = recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._receiver.upstreamReadError(e)
                return
            deliver(data)
            if self.closed:
                return

    def connectionLost(self, reason: Any) -> None:
        """
        The reactor saw an error condition with nothing to read: fetch and
        clear the socket error, report it, and keep reading.
        """
        if self.closed:
            return
        try:
            code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            code = e.errno or errno.EBADF
        if code:
            self._receiver.upstreamReadError(OSError(code, errno.errorcode.get(code, "")))
            if not self.closed:
                self._reactor.addReader(self)
            return
        self._receiver.upstreamLost()

    def close(self) -> None:
        """
        Stop reading and close the socket.
        """
        if self.closed:
            return
        self.closed = True
        self._reactor.removeReader(self)
        self.socket.close()
        self._fd = -1
