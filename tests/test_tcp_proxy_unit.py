"""
tcp_proxy timers, flags and access logs on a memory reactor and clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config import parse
from pyenvoy.server import ServerContext
from pyenvoy.testing import FilterHarness
from tests.support.net import tcpProxyConfig


class ProxyOnClock:
    """
    One tcp_proxy connection whose upstream connect is recorded by a
    L{MemoryReactorClock} instead of made.
    """

    def __init__(self, raw: dict) -> None:
        self.reactor = MemoryReactorClock()
        bootstrap = parse(raw)
        self.context = ServerContext(bootstrap, self.reactor)
        filterConfig = bootstrap.listeners[0].filterChains[0].filters[0]
        make = filterConfig.factory.createFilterFactory(filterConfig.config, self.context)
        self.harness = FilterHarness([make()], reactor=self.reactor)
        self.upstreamTransport: StringTransport | None = None

    def connectUpstream(self) -> Any:
        """
        Complete the recorded upstream connect; return the upstream protocol.
        """
        clientFactory = self.reactor.tcpClients[-1][2]
        protocol = clientFactory.buildProtocol(None)
        self.upstreamTransport = StringTransport()
        protocol.makeConnection(self.upstreamTransport)
        return protocol

    def stat(self, name: str) -> int:
        """
        A counter's value (0 if never created).
        """
        found = self.context.store.get(name)
        return 0 if found is None else found.value


class TimerTests(SynchronousTestCase):
    """
    idle_timeout, max_downstream_connection_duration and connect_timeout.
    """

    def test_idleTimeoutClosesQuietConnection(self) -> None:
        """
        With no bytes either way for idle_timeout, the client is closed and
        tcp.<prefix>.idle_timeout counted.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9], tcpProxy={"idle_timeout": "10s"}))
        proxy.connectUpstream()
        proxy.reactor.pump([0.25] * 36)
        self.assertFalse(proxy.harness.closed)
        proxy.reactor.pump([0.25] * 8)
        self.assertTrue(proxy.harness.closed)
        self.assertEqual(proxy.stat("tcp.test.idle_timeout"), 1)

    def test_activityPostponesIdleTimeout(self) -> None:
        """
        Bytes from the client restart the idle clock.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9], tcpProxy={"idle_timeout": "10s"}))
        proxy.connectUpstream()
        proxy.reactor.pump([0.25] * 24)
        proxy.harness.receive(b"still here")
        proxy.reactor.pump([0.25] * 32)
        self.assertFalse(proxy.harness.closed)
        proxy.reactor.pump([0.25] * 16)
        self.assertTrue(proxy.harness.closed)
        self.assertEqual(proxy.upstreamTransport.value(), b"still here")

    def test_idleTimeoutZeroDisables(self) -> None:
        """
        idle_timeout '0s' turns the idle timer off.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9], tcpProxy={"idle_timeout": "0s"}))
        proxy.connectUpstream()
        proxy.reactor.advance(10 * 3600)
        self.assertFalse(proxy.harness.closed)
        self.assertEqual(proxy.reactor.getDelayedCalls(), [])

    def test_maxDownstreamConnectionDuration(self) -> None:
        """
        The connection is closed at max_downstream_connection_duration with
        flag DT and the stat counted, busy or not.
        """
        proxy = ProxyOnClock(tcpProxyConfig(
            [9], tcpProxy={"max_downstream_connection_duration": "2s"}))
        proxy.connectUpstream()
        proxy.harness.receive(b"x")
        proxy.reactor.advance(2)
        self.assertTrue(proxy.harness.closed)
        self.assertEqual(proxy.stat("tcp.test.max_downstream_connection_duration"), 1)
        self.assertIn("DT", proxy.harness.connection.streamInfo.responseFlags)

    def test_connectTimeout(self) -> None:
        """
        No connection within connect_timeout: flag UF,
        upstream_cx_connect_timeout, client closed.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9], cluster={"connect_timeout": "0.25s"}))
        proxy.reactor.advance(0.25)
        self.assertTrue(proxy.harness.closed)
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_connect_timeout"), 1)
        self.assertEqual(proxy.stat("cluster.backend.upstream_cx_active"), 0)
        self.assertEqual(proxy.harness.connection.streamInfo.responseFlagsShort(), "UF,URX")

    def test_clientHeldUntilUpstreamConnects(self) -> None:
        """
        The client is not read until the upstream connects; then bytes flow.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9]))
        self.assertEqual(proxy.harness.transport.producerState, "paused")
        proxy.connectUpstream()
        self.assertEqual(proxy.harness.transport.producerState, "producing")


class AccessLogTests(SynchronousTestCase):
    """
    The access log line written when a proxied connection closes.
    """

    def test_lineAfterClose(self) -> None:
        """
        One line per connection with bytes, upstream host and flags.
        """
        path = self.mktemp()
        proxy = ProxyOnClock(tcpProxyConfig([9], tcpProxy={"access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                         "FileAccessLog",
                "path": path,
                "log_format": {"text_format_source": {"inline_string":
                    "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% "
                    "%RESPONSE_FLAGS% %DOWNSTREAM_REMOTE_ADDRESS%\n"}},
            }}]}))
        upstream = proxy.connectUpstream()
        proxy.harness.receive(b"12345")
        upstream.dataReceived(b"abc")
        upstream.connectionLost(Failure(ConnectionLost()))
        proxy.harness.disconnect()
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, ["127.0.0.1:9 backend 5 3 UC 127.0.0.1:40000"])

    def test_cleanUpstreamCloseHasNoFlag(self) -> None:
        """
        An upstream that closes cleanly leaves no response flag.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9]))
        upstream = proxy.connectUpstream()
        upstream.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(proxy.harness.closed)
        self.assertEqual(proxy.harness.connection.streamInfo.responseFlagsShort(), "-")

    def test_earlyBytesReachUpstreamOnConnect(self) -> None:
        """
        Bytes that arrive before the upstream connects are sent once it does.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9]))
        proxy.harness.receive(b"early")
        proxy.connectUpstream()
        self.assertEqual(proxy.upstreamTransport.value(), b"early")


class FlowControlUnitTests(SynchronousTestCase):
    """
    Twisted's producer calls are not nested; pyenvoy's pause counting must
    not make them so.
    """

    def test_repeatedPauseThenOneResumeReadsAgain(self) -> None:
        """
        Twisted pauses a producer on every write above the buffer limit but
        resumes it once: two pauses and one resume leave the client being
        read again, counted as one pause and one resume.
        """
        proxy = ProxyOnClock(tcpProxyConfig([9]))
        proxy.connectUpstream()
        producer = proxy.upstreamTransport.producer
        producer.pauseProducing()
        producer.pauseProducing()
        self.assertEqual(proxy.harness.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(proxy.harness.transport.producerState, "producing")
        self.assertEqual(proxy.stat("tcp.test.downstream_flow_control_paused_reading_total"), 1)
        self.assertEqual(
            proxy.stat("tcp.test.downstream_flow_control_resumed_reading_total"), 1)


class ConnectFailureReasonTests(SynchronousTestCase):
    """
    C{%UPSTREAM_TRANSPORT_FAILURE_REASON%} words a failed connect as Envoy.
    """

    def test_socketError(self) -> None:
        """
        An error the socket reported reads as Envoy's
        C{delayed connect error: <strerror>}.
        """
        from twisted.internet.error import ConnectionRefusedError

        from pyenvoy.upstream.cluster_manager import _connectFailureReason

        refused = Failure(ConnectionRefusedError(111, "Connection refused"))
        self.assertEqual(_connectFailureReason(refused),
                         "delayed connect error: Connection refused")
        other = Failure(ConnectionDone("gone"))
        self.assertEqual(_connectFailureReason(other), other.getErrorMessage())
