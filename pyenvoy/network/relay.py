"""
tcp_proxy's relay in C: each direction of a plain TCP connection as one call.

For every chunk, the Python path runs about six small functions between the
socket read and the socket write (count, filter chain, tcp_proxy, upstream
connection, write-through), and on a proxy relaying small messages those
frames are a large part of its CPU.  A L{Hop} (from the optional C
extension C{pyenvoy.network._relay}) is installed as the reading
protocol's C{dataReceived} once tcp_proxy's upstream is connected and does
the same steps in C, in the same order: the byte counters, each filter's
C{onData} or C{onWrite} (filters with a C fast path, such as
postgres_proxy's, then run with no Python frame at all), and the
write-through send.  Whatever the Python path would do differently is
left to it: a chain a filter holds, an upstream that went away, bytes
queued on the target, TLS on either side (it replaces C{dataReceived} or
C{_send}, which the Hop checks), a filter's exception.

Without the extension, L{installHops} does nothing and the Python path runs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.python.failure import Failure

from pyenvoy.interfaces import FilterStatus

try:
    from pyenvoy.network import _relay
except ImportError:  # pragma: no cover - the extension was not built
    _relay = None  # type: ignore[assignment]
else:
    _relay.configure(FilterStatus.STOP_ITERATION)

#: Whether the C relay is there.
ACCELERATED = _relay is not None


def installHops(proxy: Any, upstream: Any) -> bool:
    """
    Put a L{Hop} in each direction of C{proxy}'s connection (a
    L{pyenvoy.filters.tcp_proxy.TcpProxyFilter} whose C{upstream} just
    connected), when both sides are plain TCP read the usual way.

    @return: whether they were installed.
    """
    if _relay is None:
        return False
    connection = proxy.connection
    manager = connection.filterManager
    protocol = upstream.protocol
    if manager is None or protocol is None:
        return False
    reads = manager._reads
    if not reads or reads[-1].filter is not proxy or not all(e.initialized for e in reads):
        return False
    downstream, target = connection.transport, protocol.transport
    if not (isinstance(downstream, tcp.Connection) and isinstance(target, tcp.Connection)):
        return False
    if (connection.__dict__.get("dataReceived") is not connection._deliver
            or protocol.__dict__.get("dataReceived") is None):
        # TLS under the filters (or no chain yet): its own path.
        return False

    def failed(exception: BaseException) -> None:
        connection._filterFailed(Failure(exception, type(exception), exception.__traceback__))

    shared, info = proxy.shared, connection.streamInfo

    toUpstream = _relay.Hop()
    toUpstream.manager = manager
    toUpstream.slow = connection._deliver
    toUpstream.counted = ((info, "bytesReceived"),)
    toUpstream.readers = tuple((entry, entry.filter.onData) for entry in reads[:-1])
    toUpstream.stopped = manager.stoppedReading
    toUpstream.connection = connection
    # Only the manager's loop checks .open; a lone tcp_proxy is called directly.
    toUpstream.checkOpen = manager.singleReader() is None
    toUpstream.proxy = proxy
    toUpstream.upstream = upstream
    toUpstream.terminal = proxy.onData
    toUpstream.relayed = ((shared.downstream_cx_rx_bytes_total, "value"),
                          (upstream.cluster.stats.upstream_cx_tx_bytes_total, "value"))
    toUpstream.writers = ()
    toUpstream.checkOpenBeforeSend = False
    toUpstream.sent = ()
    toUpstream.sender = upstream
    toUpstream.send = upstream._send
    toUpstream.transport = target
    toUpstream.failed = failed

    writers = manager._writers
    toDownstream = _relay.Hop()
    toDownstream.manager = None
    toDownstream.slow = None
    toDownstream.counted = ((upstream.cluster.stats.upstream_cx_rx_bytes_total, "value"),
                            (shared.downstream_cx_tx_bytes_total, "value"))
    toDownstream.readers = ()
    toDownstream.stopped = None
    toDownstream.connection = connection
    toDownstream.checkOpen = False
    toDownstream.proxy = None
    toDownstream.upstream = None
    toDownstream.terminal = None
    toDownstream.relayed = ()
    toDownstream.writers = writers
    toDownstream.checkOpenBeforeSend = True
    toDownstream.sent = ((info, "bytesSent"),)
    toDownstream.sender = connection
    toDownstream.send = connection._send
    toDownstream.transport = downstream
    # Connection.write contains a write filter's exception; without write
    # filters it is _output, which does not.
    toDownstream.failed = failed if writers else None

    connection.dataReceived = toUpstream
    protocol.dataReceived = toDownstream
    return True
