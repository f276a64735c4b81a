"""
Runs a connection's read and write filters in Envoy's order.

Read filters run first to last; write filters last to first.  Each filter
sees every byte once, in order.  When a read filter that is not the last
returns STOP_ITERATION, what it was given is held here, and so is anything
that reaches it while it stays stopped; its C{continueReading()} passes the
held bytes on.  The last filter of a chain (the terminal one) consumes
what it is given, whatever it returns.  A write filter that stops has
taken the bytes and writes them on itself with C{injectWriteData}.
"""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import implementer

from pyenvoy.interfaces import (
    FilterStatus,
    IReadFilter,
    IReadFilterCallbacks,
    IWriteFilter,
    IWriteFilterCallbacks,
)

STOP = FilterStatus.STOP_ITERATION


@implementer(IReadFilterCallbacks)
class _ReadEntry:
    """
    One read filter in the chain, and the callbacks it was given.
    """

    def __init__(self, manager: "FilterManager", index: int, filter: Any) -> None:
        self.manager = manager
        self.index = index
        self.filter = filter
        self.initialized = False
        #: Set when the filter injected during its current onData call.
        self.injected = False
        self.connection = manager.connection

    def continueReading(self) -> None:
        """
        See L{IReadFilterCallbacks.continueReading}.
        """
        self.manager._continueFrom(self.index)

    def startUpstreamSecureTransport(self) -> bool:
        """
        Envoy's C{startUpstreamSecureTransport()}: ask the filter that owns
        the upstream connection (tcp_proxy) to switch it to TLS; C{False}
        when no filter can.
        """
        for f in self.manager.filters:
            start = getattr(f, "startUpstreamSecureTransport", None)
            if f is not self.filter and start is not None:
                return bool(start())
        return False

    def injectReadData(self, data: bytes, endStream: bool) -> None:
        """
        See L{IReadFilterCallbacks.injectReadData}.  A stopped filter that
        injects has taken over what it was holding, so that is dropped.
        """
        manager = self.manager
        if manager._stoppedAt == self.index:
            manager._held = []
            manager._heldEnd = False
        self.injected = True
        manager._iterate(self.index + 1, data, endStream)


@implementer(IWriteFilterCallbacks)
class _WriteEntry:
    """
    One write filter in the chain, and the callbacks it was given.
    """

    def __init__(self, manager: "FilterManager", index: int, filter: Any) -> None:
        self.manager = manager
        self.index = index
        self.filter = filter
        self.connection = manager.connection

    def injectWriteData(self, data: bytes, endStream: bool) -> None:
        """
        See L{IWriteFilterCallbacks.injectWriteData}.
        """
        self.manager._write(self.index + 1, data, endStream)


class FilterManager:
    """
    The filter chain of one connection.

    @ivar connection: the L{IFilterConnection} the filters run on; its
        C{open} attribute says whether it is still open (iteration stops
        as soon as it is not).
    @ivar output: called as C{output(data, endStream)} with what the write
        filters let through, to go to the transport.
    """

    def __init__(self, connection: Any, filters: list[Any],
                 output: Callable[[bytes, bool], None]) -> None:
        self.connection = connection
        self.output = output
        self._reads: list[_ReadEntry] = []
        self._writes: list[_WriteEntry] = []
        for f in filters:
            if IReadFilter.providedBy(f):
                self._reads.append(_ReadEntry(self, len(self._reads), f))
        for f in reversed(filters):
            if IWriteFilter.providedBy(f):
                self._writes.append(_WriteEntry(self, len(self._writes), f))
        self._last = len(self._reads) - 1
        #: C{(entry, onData)} of every read filter once all are initialized:
        #: the steady-state path of L{onRead}.
        self._readers: tuple[tuple[_ReadEntry, Any], ...] | None = None
        #: Each write filter's C{onWrite}, in the order they run.
        self._writers = tuple(entry.filter.onWrite for entry in self._writes)
        self._stoppedAt: int | None = None
        self._held: list[bytes] = []
        self._heldEnd = False
        self._heldNext = 0
        self.filters = list(filters)

    def initialize(self) -> None:
        """
        Give every filter its callbacks, then call C{onNewConnection} in
        order until one stops.
        """
        for r in self._reads:
            r.filter.initializeReadFilterCallbacks(r)
        for w in self._writes:
            w.filter.initializeWriteFilterCallbacks(w)
        self._iterate(0, b"", False)

    def singleReader(self) -> Callable[[bytes, bool], Any] | None:
        """
        When the chain is one initialized read filter, its C{onData}: with
        nothing after it nothing can be held, so reads may go straight to
        it (the common tcp_proxy-only chain).
        """
        reads = self._reads
        if len(reads) == 1 and reads[0].initialized and self._stoppedAt is None:
            # Twisted never delivers an empty read, so no guard is needed.
            return reads[0].filter.onData  # type: ignore[no-any-return]
        return None

    def hasWriteFilters(self) -> bool:
        """
        Whether any filter looks at outgoing bytes.
        """
        return bool(self._writes)

    def onRead(self, data: bytes, endStream: bool) -> None:
        """
        Bytes (or end of stream) arrived from the peer.

        Once every read filter is initialized and none holds anything, the
        filters are called straight from a tuple: L{_iterate}'s work minus
        its checks for initializing, held bytes and empty reads.
        """
        stoppedAt = self._stoppedAt
        if stoppedAt is not None:
            self._iterate(0, data, endStream, until=stoppedAt)
            return
        readers = self._readers
        if readers is None:
            reads = self._reads
            if not all(entry.initialized for entry in reads):
                self._iterate(0, data, endStream)
                return
            readers = self._readers = tuple((entry, entry.filter.onData) for entry in reads)
        if not data and not endStream:
            return
        connection = self.connection
        last = self._last
        for entry, onData in readers:
            if not connection.open:
                return
            entry.injected = False
            if onData(data, endStream) is STOP and entry.index < last:
                self.stoppedReading(entry, data, endStream)
                return

    def stoppedReading(self, entry: _ReadEntry, data: bytes, endStream: bool = False) -> None:
        """
        The read filter of C{entry}, not the last, returned STOP_ITERATION
        for C{data}: hold it, unless the filter passed its own version on.
        """
        if entry.injected:
            entry.injected = False
            return
        self._hold(entry.index, entry.index + 1, data, endStream)

    def onWrite(self, data: bytes, endStream: bool) -> None:
        """
        Bytes (or end of stream) are to go to the peer.
        """
        for onWrite in self._writers:
            if onWrite(data, endStream) is STOP:
                return
        self.output(data, endStream)

    def _write(self, index: int, data: bytes, endStream: bool) -> None:
        writes = self._writes
        while index < len(writes):
            if writes[index].filter.onWrite(data, endStream) is STOP:
                return
            index += 1
        self.output(data, endStream)

    def _iterate(self, index: int, data: bytes, endStream: bool,
                 until: int | None = None) -> None:
        reads = self._reads
        last = self._last
        while index <= last:
            if not self.connection.open:
                return
            entry = reads[index]
            if not entry.initialized:
                entry.initialized = True
                if entry.filter.onNewConnection() is STOP and index < last:
                    self._hold(index, index, data, endStream)
                    return
            if until is not None and index == until and self._heldNext == index:
                # The stopped filter has not seen its held bytes yet: queue
                # behind them to keep the order.
                self._hold(index, index, data, endStream)
                return
            if data or endStream:
                entry.injected = False
                status = entry.filter.onData(data, endStream)
                if status is STOP and index < last:
                    if entry.injected:
                        # It passed its own version on: nothing to hold.
                        entry.injected = False
                        return
                    self._hold(index, index + 1, data, endStream)
                    return
                if until is not None and index == until:
                    # The stopped filter carried on: release what it held first.
                    until = None
                    data, endStream = self._release(data, endStream)
            index += 1

    def _hold(self, stoppedAt: int, nextIndex: int, data: bytes, endStream: bool) -> None:
        if self._stoppedAt is None:
            self._heldNext = nextIndex
        self._stoppedAt = stoppedAt
        if data:
            self._held.append(data)
        self._heldEnd = self._heldEnd or endStream

    def _release(self, data: bytes = b"", endStream: bool = False) -> tuple[bytes, bool]:
        held = b"".join(self._held) + data
        end = self._heldEnd or endStream
        self._held = []
        self._heldEnd = False
        self._stoppedAt = None
        return held, end

    def _continueFrom(self, index: int) -> None:
        if self._stoppedAt is None or self._stoppedAt != index:
            # Not stopped here: only make sure later filters are initialized.
            if self._stoppedAt is None:
                self._iterate(index + 1, b"", False)
            return
        nextIndex = self._heldNext
        data, end = self._release()
        if nextIndex == index:
            # It stopped in onNewConnection and has not seen these bytes.
            self._iterate(index, data, end)
        else:
            self._iterate(nextIndex, data, end)
