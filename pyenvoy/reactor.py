"""
pyenvoy's reactor: Twisted's epoll reactor with a shorter path per event.

A proxy's work is mostly one small read relayed as one small write, so the
reactor's own cost per event is a large part of it.  Twisted's epoll
reactor wraps every event in a legacy-log context (C{callWithLogger}: the
selectable's C{logPrefix}, a context dict copied and pushed) and reaches
C{protocol.dataReceived} through C{_doReadOrWrite}, C{doRead} and
C{_dataReceived}.  This reactor handles the common case, a plain TCP
connection that is only readable, with one C{recv} and one call to its
protocol (L{readPlain}: in C when C{pyenvoy.network._relay} was built, so
no Python frame wraps it); every other event (writable, hang-up, error, other selectables)
goes through Twisted's own C{_doReadOrWrite}.  The outcomes are Twisted's:
an empty read or a failed one disconnects the selectable exactly as
C{_doReadOrWrite} would, and an exception from the protocol is logged and
closes that one connection.

It also watches a connected TCP connection that neither reads nor
writes (a filter disabled reading for flow control and nothing is queued):
Twisted would take it out of epoll, so a reset by the peer went unnoticed
until reading resumed.  Here it stays registered for errors only, as
Envoy keeps watching a read-disabled connection for its close: a reset
(an error on the socket) loses the connection at once; a plain hang-up
(the peer's FIN after ours) is left for when reading resumes, so the
bytes still unread are delivered first.

Its C{runUntilCurrent} and C{timeout} are Twisted's, skipping their work
on the (common) wake-ups when no timed call is new or due.

It also runs work queued with L{PyenvoyReactor.callAfterPoll} once every
event of a poll has been handled, before the reactor waits again: what a
filter batches over one round of events (redis_proxy's writes) is flushed
without a C{callLater(0)}, whose timed-call object, heap and timeout
arithmetic cost more than the flush itself when few events are ready.

What differs: legacy C{twisted.python.log.msg} calls made while handling
an event carry no per-connection C{system} prefix (pyenvoy logs through
C{twisted.logger}, which never used it).

C{twistd pyenvoy} installs it when no reactor was chosen on the command
line (C{--reactor} still wins); C{twistd --reactor=pyenvoy} and
C{trial --reactor=pyenvoy} select it explicitly.  Linux only (epoll).
"""

from __future__ import annotations

import errno
import socket
import sys
from select import EPOLLIN, EPOLLONESHOT
from typing import Any, Callable

from twisted.internet import epollreactor, main, tcp
from twisted.python import log
from twisted.python.failure import Failure

try:
    from pyenvoy.network._relay import readPlain as _cReadPlain
except ImportError:  # pragma: no cover - the extension was not built
    _cReadPlain = None


def readPlain(transport: Any, lost: Callable[[Any, Any], None]) -> None:
    """
    One read of a plain TCP transport: C{tcp.Connection.doRead} without
    its wrappers.  The bytes go to C{transport.protocol.dataReceived};
    the end of the stream is reported as C{lost(transport, True)}, a
    socket error as C{lost(transport, False)}, an exception from the
    protocol as C{lost(transport, exception)}.  C{pyenvoy.network._relay}
    has the same function in C, used when it was built.
    """
    try:
        data = transport.socket.recv(transport.bufferSize)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        lost(transport, False)
        return
    if not data:
        lost(transport, True)
        return
    try:
        transport.protocol.dataReceived(data)
    except BaseException as e:
        lost(transport, e)


#: Twisted's longest poll timeout: 2 ** 31 ms, in whole seconds.
LONGEST_TIMEOUT = 2147483


def _readsPlainly(cls: type) -> bool:
    """
    Whether C{cls} reads as C{tcp.Connection} does: exactly
    C{protocol.dataReceived(socket.recv(bufferSize))}.
    """
    return (issubclass(cls, tcp.Connection) and cls.doRead is tcp.Connection.doRead
            and cls._dataReceived is tcp.Connection._dataReceived)


class PyenvoyReactor(epollreactor.EPollReactor):
    """
    Twisted's epoll reactor, with readable plain TCP connections read and
    delivered without the per-event wrappers.
    """

    def __init__(self) -> None:
        #: Selectable class -> whether it reads as plain C{tcp.Connection}.
        self._plainTypes: dict[type, bool] = {}
        #: Connected TCP connections neither reading nor writing, still
        #: registered (for errors only) by file descriptor.
        self._parked: set[int] = set()
        #: What L{callAfterPoll} queued.
        self._afterPoll: list[Callable[[], object]] = []
        #: Reads a readable plain TCP connection (L{readPlain}, in C if built).
        self._readPlain = _cReadPlain or readPlain
        super().__init__()

    def callAfterPoll(self, f: Callable[[], object]) -> None:
        """
        Call C{f()} once the events of the current poll are handled (or,
        queued outside event handling, before the next poll waits): the
        same moment as C{callLater(0, f)}, for a fraction of its cost.  An
        exception is logged, as from a timed call.
        """
        self._afterPoll.append(f)

    def _runAfterPoll(self) -> None:
        """
        Run what L{callAfterPoll} queued, and what that queues, in order.
        """
        queued = self._afterPoll
        while queued:
            self._afterPoll = []
            for f in queued:
                try:
                    f()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err(None, "Unhandled error in a call after poll")
            queued = self._afterPoll

    # -- timed calls ---------------------------------------------------------------

    def runUntilCurrent(self) -> None:
        """
        Twisted's C{runUntilCurrent}, called only when it has something to
        do: a call from a thread, a new or due timed call, a heap of
        cancelled calls to clean, a stop.  A busy proxy wakes up for I/O
        far more often than for timers.
        """
        pending = self._pendingTimedCalls
        cancellations = self._cancellations
        if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                or (pending and pending[0].time <= self.seconds())
                or (cancellations > 50 and cancellations > len(pending) >> 1)):
            super().runUntilCurrent()

    def timeout(self) -> float | None:
        """
        Twisted's C{timeout} (how long the next poll may wait), with its
        work done only when there is some.
        """
        if self._newTimedCalls:
            self._insertNewDelayedCalls()
        pending = self._pendingTimedCalls
        if not pending:
            return None
        delay = pending[0].time - self.seconds()
        # As Twisted: never negative, at most what epoll takes in ms.
        if delay < 0:
            return 0
        return delay if delay < LONGEST_TIMEOUT else LONGEST_TIMEOUT

    # -- registration ------------------------------------------------------------

    def _add(self, xer: Any, primary: set[int], other: set[int], selectables: dict[int, Any],
             event: int, antievent: int) -> None:
        fd = xer.fileno()
        if fd in self._parked:
            # Still registered: watch for this event again.
            self._poller.modify(fd, event)
            self._parked.discard(fd)
            primary.add(fd)
            selectables[fd] = xer
            return
        super()._add(xer, primary, other, selectables, event, antievent)

    def _remove(self, xer: Any, primary: set[int], other: set[int],
                selectables: dict[int, Any], event: int, antievent: int) -> None:
        fd = xer.fileno()
        if fd in self._parked:
            if not xer.connected or xer.disconnected:
                # Closing: stop watching it.
                self._unpark(fd)
            return
        if (fd in primary and fd not in other and isinstance(xer, tcp.Connection)
                and xer.connected and not xer.disconnected):
            # The last interest goes: keep watching for errors (epoll
            # always reports them), once, until an interest comes back.
            self._poller.modify(fd, EPOLLONESHOT)
            primary.remove(fd)
            self._parked.add(fd)
            return
        super()._remove(xer, primary, other, selectables, event, antievent)

    def removeAll(self) -> list[Any]:
        """
        Remove every selectable, parked connections included.
        """
        parked = [self._selectables[fd] for fd in self._parked]
        removed = super().removeAll()
        for fd in list(self._parked):
            self._unpark(fd)
        return removed + parked

    def _unpark(self, fd: int) -> None:
        self._parked.discard(fd)
        del self._selectables[fd]
        self._poller.unregister(fd)

    def _parkedEvent(self, transport: Any) -> None:
        """
        A parked connection's socket reported an error or a hang-up.
        """
        try:
            failed = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            failed = 1
        if failed:
            self._disconnectSelectable(transport, main.CONNECTION_LOST, False)
        # A hang-up alone: both directions are shut, but bytes may wait
        # unread; reading, when it resumes, delivers them and the end.

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll once and dispatch every event.
        """
        if self._afterPoll:
            # Queued since the last poll (by a timed call): run it now and
            # do not wait, in case it scheduled something due at once.
            self._runAfterPoll()
            timeout = 0
        if timeout is None:
            timeout = -1
        selectables = self._selectables
        try:
            events = self._poller.poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        readOrWrite = self._doReadOrWrite
        plainTypes = self._plainTypes
        read, readLost = self._readPlain, self._readLost
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            # As Twisted's callWithLogger: a failure while handling one event
            # is logged and the others are still handled.
            try:
                if event == EPOLLIN:
                    cls = type(selectable)
                    plain = plainTypes.get(cls)
                    if plain is None:
                        plain = plainTypes[cls] = _readsPlainly(cls)
                    # Connecting or aborting, Twisted swaps doRead per instance.
                    if plain and selectable.connected and not selectable._aborting:
                        read(selectable, readLost)
                        continue
                elif fd in self._parked:
                    self._parkedEvent(selectable)
                    continue
                readOrWrite(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(None, "Unhandled error dispatching an event")
        if self._afterPoll:
            self._runAfterPoll()

    doIteration = doPoll

    def _readLost(self, transport: Any, why: Any) -> None:
        """
        What C{_doReadOrWrite} does when a read ends the connection: at the
        end of the stream (C{why} true), on a socket error (false), or
        when the protocol raised (the exception, logged).
        """
        if why is True:
            self._disconnectSelectable(transport, main.CONNECTION_DONE, True)
        elif why is False:
            self._disconnectSelectable(transport, main.CONNECTION_LOST, True)
        else:
            log.err(Failure(why, type(why), why.__traceback__))
            self._disconnectSelectable(transport, why, True)


def install() -> PyenvoyReactor:
    """
    Install L{PyenvoyReactor} as C{twisted.internet.reactor}.
    """
    reactor = PyenvoyReactor()
    from twisted.internet.main import installReactor

    installReactor(reactor)
    return reactor


def installIfNoneChosen() -> bool:
    """
    Install L{PyenvoyReactor} unless a reactor is already installed (for
    example by C{twistd --reactor}).

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
