"""
The filter chain contract: order, STOP_ITERATION / continueReading,
end of stream, and a raising filter closing only its connection.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pyenvoy.interfaces import FilterStatus, IReadFilter, IWriteFilter
from pyenvoy.testing import FilterHarness

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP_ITERATION


@implementer(IReadFilter, IWriteFilter)
class Recorder:
    """
    Records what it sees into a shared log and returns scripted statuses.
    """

    def __init__(self, name: str, log: list, onNew: FilterStatus = CONTINUE,
                 onData: FilterStatus = CONTINUE, onWrite: FilterStatus = CONTINUE) -> None:
        self.name = name
        self.log = log
        self.statusNew = onNew
        self.statusData = onData
        self.statusWrite = onWrite

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def initializeWriteFilterCallbacks(self, callbacks: Any) -> None:
        self.writeCallbacks = callbacks

    def onNewConnection(self) -> FilterStatus:
        self.log.append((self.name, "new"))
        return self.statusNew

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.log.append((self.name, "data", data, endStream))
        return self.statusData

    def onWrite(self, data: bytes, endStream: bool) -> FilterStatus:
        self.log.append((self.name, "write", data, endStream))
        return self.statusWrite


@implementer(IReadFilter)
class Terminal:
    """
    A terminal filter that answers every read with an upper-cased copy.
    """

    def __init__(self, log: list) -> None:
        self.log = log

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.connection = callbacks.connection

    def onNewConnection(self) -> FilterStatus:
        self.log.append(("terminal", "new"))
        return CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.log.append(("terminal", "data", data, endStream))
        self.connection.write(data.upper(), endStream)
        return STOP


class FilterOrderTests(SynchronousTestCase):
    """
    Reads run first to last, writes last to first.
    """

    def test_readFiltersRunInConfigOrder(self) -> None:
        """
        onNewConnection and onData reach the filters in the order configured.
        """
        log: list = []
        FilterHarness([Recorder("a", log), Recorder("b", log), Terminal(log)]).receive(b"x")
        self.assertEqual(
            [e[:2] for e in log],
            [("a", "new"), ("b", "new"), ("terminal", "new"),
             ("a", "data"), ("b", "data"), ("terminal", "data"),
             ("b", "write"), ("a", "write")])

    def test_writeFiltersRunInReverseOrder(self) -> None:
        """
        The last configured write filter sees outgoing bytes first, and the
        client gets what passed all of them.
        """
        log: list = []
        harness = FilterHarness([Recorder("a", log), Recorder("b", log), Terminal(log)])
        harness.receive(b"hi")
        writes = [e for e in log if e[1] == "write"]
        self.assertEqual(writes, [("b", "write", b"HI", False), ("a", "write", b"HI", False)])
        self.assertEqual(harness.written(), b"HI")

    def test_emptyReadsSkipOnData(self) -> None:
        """
        A zero-length read without end of stream is not delivered.
        """
        log: list = []
        harness = FilterHarness([Recorder("a", log), Terminal(log)])
        harness.receive(b"")
        self.assertNotIn(("a", "data", b"", False), log)


class StopIterationTests(SynchronousTestCase):
    """
    A filter that stops holds the bytes until it continues.
    """

    def test_stopInOnDataHoldsUntilContinue(self) -> None:
        """
        Bytes a filter stopped on, and bytes that reach it meanwhile, go on
        in order when it calls continueReading.
        """
        log: list = []
        gate = Recorder("gate", log, onData=STOP)
        harness = FilterHarness([gate, Terminal(log)])
        harness.receive(b"one ")
        harness.receive(b"two")
        self.assertEqual(harness.written(), b"")
        gate.statusData = CONTINUE
        gate.callbacks.continueReading()
        self.assertEqual(harness.written(), b"ONE TWO")
        harness.receive(b" three")
        self.assertEqual(harness.written(), b" THREE")

    def test_stopInOnNewConnectionDelaysLaterFilters(self) -> None:
        """
        A filter that stops in onNewConnection keeps later filters from
        being initialized until it continues; then it sees the bytes first.
        """
        log: list = []
        gate = Recorder("gate", log, onNew=STOP)
        harness = FilterHarness([gate, Terminal(log)])
        self.assertEqual(log, [("gate", "new")])
        harness.receive(b"early")
        self.assertEqual(log, [("gate", "new")])
        gate.callbacks.continueReading()
        self.assertEqual(log[1:], [("gate", "data", b"early", False),
                                   ("terminal", "new"), ("terminal", "data", b"early", False),
                                   ("gate", "write", b"EARLY", False)])
        self.assertEqual(harness.written(), b"EARLY")

    def test_stoppedFilterThatContinuesReleasesHeldBytesFirst(self) -> None:
        """
        If the stopped filter returns CONTINUE for a later chunk, what it
        held goes on before that chunk.
        """
        log: list = []
        gate = Recorder("gate", log, onData=STOP)
        harness = FilterHarness([gate, Terminal(log)])
        harness.receive(b"a")
        gate.statusData = CONTINUE
        harness.receive(b"b")
        self.assertEqual(harness.written(), b"AB")

    def test_endStreamReachesFilters(self) -> None:
        """
        The client's half-close arrives as onData(b'', endStream=True), and
        a write with endStream half-closes our side.
        """
        log: list = []
        harness = FilterHarness([Recorder("a", log), Terminal(log)])
        harness.receiveEnd()
        self.assertIn(("a", "data", b"", True), log)
        self.assertIn(("terminal", "data", b"", True), log)
        self.assertTrue(harness.transport.writeClosed)

    def test_injectReadDataSkipsEarlierFilters(self) -> None:
        """
        injectReadData hands bytes to the filters after the caller only.
        """
        log: list = []
        first = Recorder("first", log, onData=STOP)
        harness = FilterHarness([first, Terminal(log)])
        first.callbacks.injectReadData(b"x", False)
        self.assertEqual(harness.written(), b"X")
        self.assertNotIn(("first", "data", b"x", False), log)


@implementer(IReadFilter)
class Exploding:
    """
    Raises on data.
    """

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        pass

    def onNewConnection(self) -> FilterStatus:
        return CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        raise RuntimeError("boom")


class FilterFailureTests(SynchronousTestCase):
    """
    A filter bug closes that connection only.
    """

    def test_raisingFilterClosesItsConnectionAndLogs(self) -> None:
        """
        The exception is logged as a Failure, counted, and the connection
        aborted; a second connection with the same chain type is unharmed.
        """
        broken = FilterHarness([Exploding(), Terminal([])])
        broken.receive(b"x")
        self.assertTrue(broken.transport.aborted)
        self.assertEqual(broken.listener.filterErrors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        healthy = FilterHarness([Terminal([])])
        healthy.receive(b"ok")
        self.assertEqual(healthy.written(), b"OK")
        self.assertFalse(healthy.closed)


@implementer(IReadFilter)
class Rewriter:
    """
    Stops on every read and injects an upper-cased copy.
    """

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def onNewConnection(self) -> FilterStatus:
        return CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.callbacks.injectReadData(data.replace(b"a", b"b"), endStream)
        return STOP


class RewriteTests(SynchronousTestCase):
    """
    A filter that rewrites reads by stopping and injecting.
    """

    def test_injectingFilterDoesNotResendOriginals(self) -> None:
        """
        The rewritten bytes reach the next filter once each; the originals
        are never sent on.
        """
        log: list = []
        rewriter = Rewriter()
        harness = FilterHarness([rewriter, Terminal(log)])
        harness.receive(b"aa")
        harness.receive(b"ca")
        rewriter.callbacks.continueReading()
        self.assertEqual(harness.written(), b"BBCB")
