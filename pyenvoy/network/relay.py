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


#: What a L{Hop} field is when a direction has no use for it.
_UNUSED = dict(manager=None, slow=None, counted=(), readers=(), stopped=None, checkOpen=False,
               proxy=None, upstream=None, terminal=None, relayed=(), writers=(),
               checkOpenBeforeSend=False, sent=(), failed=None)


def _hop(**fields: Any) -> Any:
    """
    A L{Hop} with C{fields} (see C{_relay.c} for each one's meaning), the
    others unused.
    """
    hop = _relay.Hop()
    for name, value in {**_UNUSED, **fields}.items():
        setattr(hop, name, value)
    return hop


def installHops(proxy: Any, upstream: Any) -> bool:
    """
    Put a L{Hop} in each direction of C{proxy}'s connection (a
    L{pyenvoy.filters.tcp_proxy.TcpProxyFilter} whose C{upstream} just
    connected), when both are TCP transports and the client's bytes reach
    the filters straight from the socket (no TLS terminated under them).

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
    stats = upstream.cluster.stats
    toUpstream = _hop(
        manager=manager,
        slow=connection._deliver,
        counted=((info, "bytesReceived"),),
        readers=tuple((entry, entry.filter.onData) for entry in reads[:-1]),
        stopped=manager.stoppedReading,
        connection=connection,
        # Only the manager's loop checks .open; a lone tcp_proxy is called directly.
        checkOpen=manager.singleReader() is None,
        proxy=proxy,
        upstream=upstream,
        terminal=proxy.onData,
        relayed=((shared.downstream_cx_rx_bytes_total, "value"),
                 (stats.upstream_cx_tx_bytes_total, "value")),
        sender=upstream,
        send=upstream._send,
        transport=target,
        failed=failed,
    )
    writers = manager._writers
    toDownstream = _hop(
        counted=((stats.upstream_cx_rx_bytes_total, "value"),
                 (shared.downstream_cx_tx_bytes_total, "value")),
        connection=connection,
        writers=writers,
        checkOpenBeforeSend=True,
        sent=((info, "bytesSent"),),
        sender=connection,
        send=connection._send,
        transport=downstream,
        # Connection.write contains a write filter's exception; without write
        # filters it is _output, which does not.
        failed=failed if writers else None,
    )
    connection.dataReceived = toUpstream
    protocol.dataReceived = toDownstream
    return True
