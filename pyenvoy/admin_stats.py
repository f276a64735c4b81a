"""
The admin interface's own stats, as Envoy 1.40 names them: its listener
(C{listener.admin.*}) and its HTTP connection manager (C{http.admin.*},
with the per-listener copies C{listener.admin.http.admin.*}).

All are created at zero with the admin, as Envoy creates them; the ones
that move are connections (total, active, destroyed locally or remotely,
with a request still active, their length), bytes in and out, requests
(total, active, completed, by response-code class, their time) and the
sockets accepted per readable event.  The rest (HTTP/2 and /3, TLS,
timeouts, overload, upgrades, buffered bytes) stay 0: pyenvoy's admin
never does those things.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Request

from pyenvoy.stats import Store

#: C{http.admin.*} gauges.
HTTP_GAUGES = (
    "downstream_cx_active", "downstream_cx_http1_active", "downstream_cx_http1_soft_drain",
    "downstream_cx_http2_active", "downstream_cx_http3_active",
    "downstream_cx_rx_bytes_buffered", "downstream_cx_ssl_active",
    "downstream_cx_tx_bytes_buffered", "downstream_cx_upgrades_active", "downstream_rq_active",
)
#: C{http.admin.*} counters.
HTTP_COUNTERS = (
    "downstream_cx_delayed_close_timeout", "downstream_cx_destroy",
    "downstream_cx_destroy_active_rq", "downstream_cx_destroy_local",
    "downstream_cx_destroy_local_active_rq", "downstream_cx_destroy_remote",
    "downstream_cx_destroy_remote_active_rq", "downstream_cx_drain_close",
    "downstream_cx_http1_total", "downstream_cx_http2_total", "downstream_cx_http3_total",
    "downstream_cx_idle_timeout", "downstream_cx_max_duration_reached",
    "downstream_cx_max_requests_reached", "downstream_cx_overload_disable_keepalive",
    "downstream_cx_protocol_error", "downstream_cx_rx_bytes_total", "downstream_cx_ssl_total",
    "downstream_cx_total", "downstream_cx_tx_bytes_total", "downstream_cx_upgrades_total",
    "downstream_flow_control_paused_reading_total",
    "downstream_flow_control_resumed_reading_total",
    "downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx", "downstream_rq_4xx",
    "downstream_rq_5xx", "downstream_rq_completed", "downstream_rq_failed_path_normalization",
    "downstream_rq_header_timeout", "downstream_rq_http1_total", "downstream_rq_http2_total",
    "downstream_rq_http3_total", "downstream_rq_idle_timeout",
    "downstream_rq_max_duration_reached", "downstream_rq_non_relative_path",
    "downstream_rq_overload_close", "downstream_rq_redirected_with_normalized_path",
    "downstream_rq_rejected_via_ip_detection", "downstream_rq_response_before_rq_complete",
    "downstream_rq_rx_reset", "downstream_rq_timeout", "downstream_rq_too_large",
    "downstream_rq_too_many_premature_resets", "downstream_rq_total", "downstream_rq_tx_reset",
    "downstream_rq_ws_on_non_ws_route", "rs_too_large",
)
#: C{listener.admin.*} counters that stay 0 (no filter chains, no overload).
LISTENER_ZERO_COUNTERS = (
    "downstream_cx_overflow", "downstream_cx_overload_reject",
    "downstream_cx_transport_socket_connect_timeout", "downstream_global_cx_overflow",
    "downstream_listener_filter_error", "downstream_listener_filter_remote_close",
    "downstream_pre_cx_timeout", "no_filter_chain_match",
)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class AdminStats:
    """
    The admin's stats in C{store}, and what moves them.
    """

    def __init__(self, store: Store, reactor: Any) -> None:
        self.reactor = reactor
        http = {name: store.gauge(f"http.admin.{name}") for name in HTTP_GAUGES}
        http.update({name: store.counter(f"http.admin.{name}") for name in HTTP_COUNTERS})
        self.http = http
        self.cxLengthHttp = store.histogram("http.admin.downstream_cx_length_ms")
        self.rqTime = store.histogram("http.admin.downstream_rq_time")
        self.listener = {
            "downstream_cx_total": store.counter("listener.admin.downstream_cx_total"),
            "downstream_cx_destroy": store.counter("listener.admin.downstream_cx_destroy"),
            "downstream_cx_active": store.gauge("listener.admin.downstream_cx_active"),
            "main_thread.downstream_cx_total":
                store.counter("listener.admin.main_thread.downstream_cx_total"),
            "main_thread.downstream_cx_active":
                store.gauge("listener.admin.main_thread.downstream_cx_active"),
        }
        store.gauge("listener.admin.downstream_pre_cx_active")
        for name in LISTENER_ZERO_COUNTERS:
            store.counter(f"listener.admin.{name}")
        self.listenerCodes = {code: store.counter(f"listener.admin.http.admin.downstream_rq_{code}")
                              for code in CODE_CLASSES}
        self.listenerCompleted = store.counter("listener.admin.http.admin.downstream_rq_completed")
        self.cxLength = store.histogram("listener.admin.downstream_cx_length_ms")
        self.acceptedPerEvent = store.histogram("listener.admin.connections_accepted_per_socket_event")
        #: Sockets accepted so far.
        self.accepted = 0

    def _add(self, stats: dict[str, Any], names: tuple[str, ...], amount: int) -> None:
        """
        Add C{amount} to each of C{names} in C{stats}.
        """
        for name in names:
            stats[name].value += amount

    def connectionOpened(self) -> None:
        """
        An admin socket was accepted (an HTTP/1 connection from the start).
        """
        self.accepted += 1
        self._add(self.listener, ("downstream_cx_total", "downstream_cx_active",
                                  "main_thread.downstream_cx_total",
                                  "main_thread.downstream_cx_active"), 1)
        self._add(self.http, ("downstream_cx_total", "downstream_cx_active",
                              "downstream_cx_http1_total", "downstream_cx_http1_active"), 1)

    def connectionClosed(self, lengthMs: int, local: bool, activeRequests: int) -> None:
        """
        An admin connection ended after C{lengthMs}, closed by the admin
        (C{local}) or the client, with C{activeRequests} still unanswered.
        """
        self._add(self.listener, ("downstream_cx_active", "main_thread.downstream_cx_active"), -1)
        self.listener["downstream_cx_destroy"].value += 1
        self._add(self.http, ("downstream_cx_active", "downstream_cx_http1_active"), -1)
        side = "local" if local else "remote"
        self._add(self.http, ("downstream_cx_destroy", f"downstream_cx_destroy_{side}"), 1)
        if activeRequests:
            self._add(self.http, ("downstream_cx_destroy_active_rq",
                                  f"downstream_cx_destroy_{side}_active_rq"), 1)
        self.cxLength.record(lengthMs)
        self.cxLengthHttp.record(lengthMs)

    def requestStarted(self) -> None:
        """
        A request fully arrived and is being answered.
        """
        self._add(self.http, ("downstream_rq_total", "downstream_rq_http1_total",
                              "downstream_rq_active"), 1)

    def requestEnded(self, code: int | None, timeMs: int) -> None:
        """
        A request was answered with C{code}, or (C{None}) its connection
        went first.
        """
        self.http["downstream_rq_active"].value -= 1
        if code is None:
            self.http["downstream_rq_rx_reset"].value += 1
            return
        self.http["downstream_rq_completed"].value += 1
        self.listenerCompleted.value += 1
        codeClass = f"{code // 100}xx"
        if codeClass in self.listenerCodes:
            self.http[f"downstream_rq_{codeClass}"].value += 1
            self.listenerCodes[codeClass].value += 1
        self.rqTime.record(timeMs)


class CountedConnection(ProtocolWrapper):
    """
    An admin connection: counts its bytes, its requests still active and
    which side closed it.
    """

    def __init__(self, factory: "CountingFactory", wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self.stats: AdminStats = factory.stats
        self.activeRequests = 0
        self.localClose = False
        self.opened = factory.stats.reactor.seconds()
        self.stats.connectionOpened()

    def dataReceived(self, data: bytes) -> None:
        self.stats.http["downstream_cx_rx_bytes_total"].value += len(data)
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self.stats.http["downstream_cx_tx_bytes_total"].value += len(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.stats.http["downstream_cx_tx_bytes_total"].value += sum(map(len, data))
        super().writeSequence(data)

    def loseConnection(self) -> None:
        """
        The admin closes this connection: a local destroy.
        """
        self.localClose = True
        super().loseConnection()

    def abortConnection(self) -> None:
        """
        The admin cuts this connection: a local destroy.
        """
        self.localClose = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        lengthMs = int((self.stats.reactor.seconds() - self.opened) * 1000)
        self.stats.connectionClosed(lengthMs, self.localClose, self.activeRequests)
        super().connectionLost(reason)


class CountingFactory(WrappingFactory):
    """
    Wraps the admin site so each connection is a L{CountedConnection}.
    """

    protocol = CountedConnection
    noisy = False

    def __init__(self, site: Any, stats: AdminStats) -> None:
        super().__init__(site)
        self.stats = stats


class CountedRequest(Request):
    """
    An admin request, counted from when it is complete until it is answered.
    """

    def process(self) -> None:
        """
        Count the request, and its answer (or its connection's loss) when
        it comes; then answer it.
        """
        connection = getattr(self.channel, "transport", None)
        stats: AdminStats | None = getattr(connection, "stats", None)
        if stats is not None:
            started = stats.reactor.seconds()
            stats.requestStarted()
            connection.activeRequests += 1

            def ended(result: Any) -> Any:
                connection.activeRequests -= 1
                code = None if isinstance(result, Failure) else self.code
                stats.requestEnded(code, int((stats.reactor.seconds() - started) * 1000))
                return None

            self.notifyFinish().addBoth(ended)
        super().process()
