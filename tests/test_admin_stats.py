"""
The admin interface's own stats (L{pyenvoy.admin_stats}): Envoy's names,
and what real HTTP requests on 127.0.0.1 do to them.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from pyenvoy.config import parse
from pyenvoy.server import Server
from pyenvoy.stats_format import extractTags
from tests.support.net import waitFor
from tests.test_admin import bootstrap

#: Every C{listener.admin.*} and C{http.admin.*} stat Envoy 1.40 creates
#: (its C{/stats} on a fresh admin, tcp_proxy-only config).
ENVOY_ADMIN_STATS = {
    'http.admin.downstream_cx_active',
    'http.admin.downstream_cx_delayed_close_timeout',
    'http.admin.downstream_cx_destroy',
    'http.admin.downstream_cx_destroy_active_rq',
    'http.admin.downstream_cx_destroy_local',
    'http.admin.downstream_cx_destroy_local_active_rq',
    'http.admin.downstream_cx_destroy_remote',
    'http.admin.downstream_cx_destroy_remote_active_rq',
    'http.admin.downstream_cx_drain_close',
    'http.admin.downstream_cx_http1_active',
    'http.admin.downstream_cx_http1_soft_drain',
    'http.admin.downstream_cx_http1_total',
    'http.admin.downstream_cx_http2_active',
    'http.admin.downstream_cx_http2_total',
    'http.admin.downstream_cx_http3_active',
    'http.admin.downstream_cx_http3_total',
    'http.admin.downstream_cx_idle_timeout',
    'http.admin.downstream_cx_length_ms',
    'http.admin.downstream_cx_max_duration_reached',
    'http.admin.downstream_cx_max_requests_reached',
    'http.admin.downstream_cx_overload_disable_keepalive',
    'http.admin.downstream_cx_protocol_error',
    'http.admin.downstream_cx_rx_bytes_buffered',
    'http.admin.downstream_cx_rx_bytes_total',
    'http.admin.downstream_cx_ssl_active',
    'http.admin.downstream_cx_ssl_total',
    'http.admin.downstream_cx_total',
    'http.admin.downstream_cx_tx_bytes_buffered',
    'http.admin.downstream_cx_tx_bytes_total',
    'http.admin.downstream_cx_upgrades_active',
    'http.admin.downstream_cx_upgrades_total',
    'http.admin.downstream_flow_control_paused_reading_total',
    'http.admin.downstream_flow_control_resumed_reading_total',
    'http.admin.downstream_rq_1xx',
    'http.admin.downstream_rq_2xx',
    'http.admin.downstream_rq_3xx',
    'http.admin.downstream_rq_4xx',
    'http.admin.downstream_rq_5xx',
    'http.admin.downstream_rq_active',
    'http.admin.downstream_rq_completed',
    'http.admin.downstream_rq_failed_path_normalization',
    'http.admin.downstream_rq_header_timeout',
    'http.admin.downstream_rq_http1_total',
    'http.admin.downstream_rq_http2_total',
    'http.admin.downstream_rq_http3_total',
    'http.admin.downstream_rq_idle_timeout',
    'http.admin.downstream_rq_max_duration_reached',
    'http.admin.downstream_rq_non_relative_path',
    'http.admin.downstream_rq_overload_close',
    'http.admin.downstream_rq_redirected_with_normalized_path',
    'http.admin.downstream_rq_rejected_via_ip_detection',
    'http.admin.downstream_rq_response_before_rq_complete',
    'http.admin.downstream_rq_rx_reset',
    'http.admin.downstream_rq_time',
    'http.admin.downstream_rq_timeout',
    'http.admin.downstream_rq_too_large',
    'http.admin.downstream_rq_too_many_premature_resets',
    'http.admin.downstream_rq_total',
    'http.admin.downstream_rq_tx_reset',
    'http.admin.downstream_rq_ws_on_non_ws_route',
    'http.admin.rs_too_large',
    'listener.admin.connections_accepted_per_socket_event',
    'listener.admin.downstream_cx_active',
    'listener.admin.downstream_cx_destroy',
    'listener.admin.downstream_cx_length_ms',
    'listener.admin.downstream_cx_overflow',
    'listener.admin.downstream_cx_overload_reject',
    'listener.admin.downstream_cx_total',
    'listener.admin.downstream_cx_transport_socket_connect_timeout',
    'listener.admin.downstream_global_cx_overflow',
    'listener.admin.downstream_listener_filter_error',
    'listener.admin.downstream_listener_filter_remote_close',
    'listener.admin.downstream_pre_cx_active',
    'listener.admin.downstream_pre_cx_timeout',
    'listener.admin.http.admin.downstream_rq_1xx',
    'listener.admin.http.admin.downstream_rq_2xx',
    'listener.admin.http.admin.downstream_rq_3xx',
    'listener.admin.http.admin.downstream_rq_4xx',
    'listener.admin.http.admin.downstream_rq_5xx',
    'listener.admin.http.admin.downstream_rq_completed',
    'listener.admin.main_thread.downstream_cx_active',
    'listener.admin.main_thread.downstream_cx_total',
    'listener.admin.no_filter_chain_match',
}


def exchange(port: int, requests: list[bytes]) -> bytes:
    """
    Send each raw HTTP/1.1 request on one connection and read its whole
    answer (headers and Content-Length body), then close; return
    everything received.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        for request in requests:
            client.sendall(request)
            answered = received.count(b"HTTP/1.1 ")
            while received.count(b"HTTP/1.1 ") == answered or not answerComplete(received):
                chunk = client.recv(65536)
                if not chunk:
                    return received
                received += chunk
    return received


def answerComplete(received: bytes) -> bool:
    """
    Whether the last answer in C{received} has its whole body.
    """
    last = received.rfind(b"HTTP/1.1 ")
    head, sep, body = received[last:].partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


class AdminStatsTests(TestCase):
    """
    A started L{Server}'s admin, driven with raw HTTP/1.1.
    """

    def setUp(self) -> None:
        self.server = Server(parse(bootstrap()), reactor, drainTime=1.0)
        self.server.privilegedStartService()
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.store = self.server.context.store
        assert self.server.adminService is not None
        address = self.server.adminService.boundAddress()
        assert address is not None
        self.port = address[1]

    def value(self, name: str) -> Any:
        found = self.store.get(name)
        assert found is not None, name
        return found.value

    def test_namesAsEnvoy(self) -> None:
        """
        The admin's stats are Envoy's, all there before any request.
        """
        ours = {stat.name for stat in self.store
                if stat.name.startswith(("listener.admin.", "http.admin."))}
        self.assertEqual(ours, ENVOY_ADMIN_STATS)
        self.assertEqual(self.value("http.admin.downstream_rq_total"), 0)

    async def test_requestsOnOneConnection(self) -> None:
        """
        Two requests (200 and 404) on one connection the client closes:
        one connection, destroyed remotely, two requests by class, the
        bytes both ways.
        """
        requests = [b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /nonexistent HTTP/1.1\r\nHost: a\r\n\r\n"]
        received = await threads.deferToThread(exchange, self.port, requests)
        self.assertEqual(received.count(b"HTTP/1.1 "), 2)
        await waitFor(lambda: self.value("listener.admin.downstream_cx_active") == 0)
        expected = {
            "listener.admin.downstream_cx_total": 1,
            "listener.admin.downstream_cx_destroy": 1,
            "listener.admin.main_thread.downstream_cx_total": 1,
            "listener.admin.main_thread.downstream_cx_active": 0,
            "listener.admin.http.admin.downstream_rq_2xx": 1,
            "listener.admin.http.admin.downstream_rq_4xx": 1,
            "listener.admin.http.admin.downstream_rq_completed": 2,
            "http.admin.downstream_cx_total": 1,
            "http.admin.downstream_cx_http1_total": 1,
            "http.admin.downstream_cx_active": 0,
            "http.admin.downstream_cx_http1_active": 0,
            "http.admin.downstream_cx_destroy": 1,
            "http.admin.downstream_cx_destroy_remote": 1,
            "http.admin.downstream_cx_destroy_local": 0,
            "http.admin.downstream_rq_total": 2,
            "http.admin.downstream_rq_http1_total": 2,
            "http.admin.downstream_rq_active": 0,
            "http.admin.downstream_rq_completed": 2,
            "http.admin.downstream_rq_2xx": 1,
            "http.admin.downstream_rq_4xx": 1,
            "http.admin.downstream_cx_rx_bytes_total": sum(map(len, requests)),
            "http.admin.downstream_cx_tx_bytes_total": len(received),
        }
        self.assertEqual({name: self.value(name) for name in expected}, expected)
        for name in ("http.admin.downstream_rq_time", "http.admin.downstream_cx_length_ms",
                     "listener.admin.downstream_cx_length_ms"):
            self.assertEqual(self.store.get(name).count, 2 if "rq_time" in name else 1, name)
        accepted = self.store.get("listener.admin.connections_accepted_per_socket_event")
        self.assertEqual(accepted.sum, 1)

    async def test_serverCloses(self) -> None:
        """
        A request asking to close: the admin closes, a local destroy.
        """
        request = b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        await threads.deferToThread(exchange, self.port, [request])
        await waitFor(lambda: self.value("http.admin.downstream_cx_destroy") == 1)
        self.assertEqual((self.value("http.admin.downstream_cx_destroy_local"),
                          self.value("http.admin.downstream_cx_destroy_remote")), (1, 0))

    def test_prometheusTagsAsEnvoy(self) -> None:
        """
        The response-code class and the connection manager's prefix are
        tags, as in Envoy's Prometheus output.
        """
        self.assertEqual(
            extractTags("http.admin.downstream_rq_2xx"),
            ("http.downstream_rq_xx", [("envoy.response_code_class", "2"),
                                       ("envoy.http_conn_manager_prefix", "admin")]))
        self.assertEqual(
            extractTags("listener.admin.http.admin.downstream_rq_4xx"),
            ("listener.admin.http.downstream_rq_xx",
             [("envoy.response_code_class", "4"), ("envoy.http_conn_manager_prefix", "admin")]))
        self.assertEqual(extractTags("listener.admin.downstream_cx_total"),
                         ("listener.admin.downstream_cx_total", []))
        self.assertEqual(extractTags("http.admin.downstream_cx_total"),
                         ("http.downstream_cx_total",
                          [("envoy.http_conn_manager_prefix", "admin")]))
