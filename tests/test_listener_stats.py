"""
Tests for the listener stats of L{pyenvoy.network.listener}: which
sockets count as connections (C{downstream_cx_*}) and which only in the
listener-filter phase, as Envoy counts them, on real loopback sockets.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from pyenvoy.config import parse
from pyenvoy.server import Server
from pyenvoy.stats import Counter, Gauge, Histogram, sanitizeName
from tests.support.net import listenerPort, startServer, stat, waitFor
from tests.test_tls_inspector import INSPECTOR_TYPE, Certificates, clientHello, tlsSocket

#: Every stat Envoy creates with a TCP listener (its ALL_LISTENER_STATS,
#: but the C{connections_accepted_per_socket_event} histogram, and the
#: missing-extension-config counters), by kind.
EAGER_COUNTERS = (
    "downstream_cx_total", "downstream_cx_destroy", "downstream_cx_overflow",
    "downstream_cx_overload_reject", "downstream_global_cx_overflow",
    "downstream_cx_transport_socket_connect_timeout", "downstream_pre_cx_timeout",
    "downstream_listener_filter_remote_close", "downstream_listener_filter_error",
    "no_filter_chain_match", "extension_config_missing", "network_extension_config_missing",
)
EAGER_GAUGES = ("downstream_cx_active", "downstream_pre_cx_active")


def inspectedConfig(certs: Certificates, timeout: str = "0.3s") -> dict[str, Any]:
    """
    One listener with tls_inspector and a single TLS chain for alpha.test:
    plaintext and other names match no chain.
    """
    return {"static_resources": {"listeners": [{
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "listener_filters_timeout": timeout,
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                              "typed_config": {"@type": INSPECTOR_TYPE}}],
        "filter_chains": [
            {"name": "alpha", "filter_chain_match": {"server_names": ["alpha.test"],
                                                     "transport_protocol": "tls"},
             "transport_socket": tlsSocket(certs.alphaFiles),
             "filters": [{"name": "envoy.filters.network.echo"}]},
        ]}]}}


class EagerStatsTests(TestCase):
    """
    A new listener's stats exist at zero before anything happens.
    """

    def test_createdAtZero(self) -> None:
        """
        Every listener counter and gauge Envoy creates with the listener
        is in the store at 0 (and the length histogram is empty) before
        any connection.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        server = Server(parse(inspectedConfig(Certificates(directory))), reactor)
        root = sanitizeName(server.context.listeners[0].listener.statRoot)
        store = server.context.store
        for name in EAGER_COUNTERS:
            found = store.get(f"{root}.{name}")
            self.assertIsInstance(found, Counter, name)
            self.assertEqual(found.value, 0, name)
        for name in EAGER_GAUGES:
            found = store.get(f"{root}.{name}")
            self.assertIsInstance(found, Gauge, name)
            self.assertEqual(found.value, 0, name)
        for name in ("downstream_cx_length_ms", "connections_accepted_per_socket_event"):
            histogram = store.get(f"{root}.{name}")
            self.assertIsInstance(histogram, Histogram, name)
            self.assertEqual(histogram.count, 0, name)


def echoConfig() -> dict[str, Any]:
    """
    One echo listener on a free loopback port.
    """
    return {"static_resources": {"listeners": [{
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.echo"}]}]}]}}


class AcceptedPerEventTests(TestCase):
    """
    C{connections_accepted_per_socket_event}: how many sockets each
    readable event of the listening socket accepted.
    """

    def setUp(self) -> None:
        self.server = startServer(self, echoConfig())
        self.port = listenerPort(self.server)
        self.listener = self.server.context.listeners[0].listener
        self.histogram = self.listener.acceptedPerEvent

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(raw.close)
        return raw

    async def test_oneAtATime(self) -> None:
        """
        Connections that arrive one by one are recorded with the number the
        events accepted, adding up to the connections.
        """
        for expected in (1, 2, 3):
            self.connect()
            await waitFor(lambda: self.listener.accepted == expected)
        self.assertEqual(self.histogram.sum, 3)
        self.assertGreaterEqual(self.histogram.count, 1)

    async def test_pendingAcceptedTogether(self) -> None:
        """
        Connections that queued while the reactor was busy are accepted
        together, as Envoy accepts every pending one per event.
        """
        for _ in range(20):
            self.connect()
        await waitFor(lambda: self.listener.accepted == 20)
        self.assertEqual(self.histogram.sum, 20)
        self.assertLess(self.histogram.count, 20)


class ListenerPhaseTests(TestCase):
    """
    A TLS listener with tls_inspector: sockets that never get a filter
    chain count only their own listener-phase stat, never C{downstream_cx_*}.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs = Certificates(directory)
        self.server = startServer(self, inspectedConfig(self.certs))
        self.port = listenerPort(self.server)
        self.listener = self.server.context.listeners[0].listener
        self.root = sanitizeName(self.listener.statRoot)

    def stat(self, name: str) -> int:
        """
        The listener's stat C{name}.
        """
        return stat(self.server, f"{self.root}.{name}")

    def client(self) -> socket.socket:
        """
        A connected blocking client socket, closed when the test ends.
        """
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(raw.close)
        return raw

    async def inListenerPhase(self) -> None:
        """
        Wait until the proxy has accepted the client and runs its listener
        filters.
        """
        await waitFor(lambda: self.stat("downstream_pre_cx_active") == 1)

    async def settled(self) -> None:
        """
        Wait until no socket is left in the listener, then check that
        nothing counted as a connection.
        """
        closed: list[bool] = []
        self.listener.whenDrained(lambda: closed.append(True))
        await waitFor(lambda: closed == [True])
        self.assertEqual(self.stat("downstream_pre_cx_active"), 0)
        self.assertEqual(self.stat("downstream_cx_total"), 0)
        self.assertEqual(self.stat("downstream_cx_active"), 0)
        self.assertEqual(self.stat("downstream_cx_destroy"), 0)
        self.assertEqual(self.listener.cxLength.count, 0)

    async def test_noChainNotConnection(self) -> None:
        """
        A plaintext client matches no chain: C{no_filter_chain_match} only.
        """
        raw = self.client()
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        await waitFor(lambda: self.stat("no_filter_chain_match") == 1)
        await self.settled()

    async def test_timeoutNotConnection(self) -> None:
        """
        A client that sends nothing until C{listener_filters_timeout} is
        closed and counts C{downstream_pre_cx_timeout} only; while it
        waits it is pre-connection, not in C{server.total_connections}.
        """
        raw = self.client()
        await self.inListenerPhase()
        self.server.context.refreshServerGauges()
        self.assertEqual(stat(self.server, "server.total_connections"), 0)
        await waitFor(lambda: self.stat("downstream_pre_cx_timeout") == 1)
        await self.settled()
        self.assertEqual(raw.recv(10), b"")

    async def test_finNotConnection(self) -> None:
        """
        A client that half-closes while tls_inspector waits for its
        ClientHello counts C{downstream_listener_filter_remote_close} only.
        """
        raw = self.client()
        raw.sendall(clientHello("alpha.test")[:5])
        await self.inListenerPhase()
        raw.shutdown(socket.SHUT_WR)
        await waitFor(lambda: self.stat("downstream_listener_filter_remote_close") == 1)
        await self.settled()
        self.assertEqual(self.stat("downstream_listener_filter_error"), 0)

    async def test_resetNotConnection(self) -> None:
        """
        A client that resets (C{SO_LINGER} 0) while tls_inspector waits
        for its ClientHello counts C{downstream_listener_filter_error} only.
        """
        raw = self.client()
        raw.sendall(clientHello("alpha.test")[:5])
        await self.inListenerPhase()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        await waitFor(lambda: self.stat("downstream_listener_filter_error") == 1)
        await self.settled()
        self.assertEqual(self.stat("downstream_listener_filter_remote_close"), 0)

    async def test_chainMakesConnection(self) -> None:
        """
        A TLS client for alpha.test gets its chain: C{downstream_cx_total}
        1, C{downstream_cx_active} 1 while it is open and 0 after,
        C{downstream_cx_destroy} 1 and one length recorded.
        """
        opened = threading.Event()
        release = threading.Event()

        def exchange() -> bytes:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(self.certs.caFile)
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="alpha.test") as tls:
                    tls.sendall(b"ping")
                    data = tls.recv(10)
                    opened.set()
                    release.wait(10)
                    return data

        done = threads.deferToThread(exchange)
        try:
            await waitFor(opened.is_set)
            self.assertEqual(self.stat("downstream_cx_total"), 1)
            self.assertEqual(self.stat("downstream_cx_active"), 1)
            self.assertEqual(self.stat("downstream_pre_cx_active"), 0)
            # Envoy's per-worker pair: the one event loop is worker 0.
            self.assertEqual((self.stat("worker_0.downstream_cx_total"),
                              self.stat("worker_0.downstream_cx_active")), (1, 1))
            self.server.context.refreshServerGauges()
            self.assertEqual(stat(self.server, "server.total_connections"), 1)
        finally:
            release.set()
        self.assertEqual(await done, b"ping")
        await waitFor(lambda: self.stat("downstream_cx_active") == 0)
        self.assertEqual(self.stat("downstream_cx_total"), 1)
        self.assertEqual(self.stat("downstream_cx_destroy"), 1)
        self.assertEqual(self.listener.cxLength.count, 1)
        self.assertEqual(self.stat("worker_0.downstream_cx_active"), 0)

    async def test_drainWaitsForListenerPhase(self) -> None:
        """
        A socket still in its listener filters keeps a drain waiting, and
        stopping the listener closes it.
        """
        raw = self.client()
        await self.inListenerPhase()
        service = self.server.context.listeners[0]
        drained: list[bool] = []
        service.stopListening()
        self.listener.whenDrained(lambda: drained.append(True))
        self.assertEqual(drained, [])
        service.stopService()
        await waitFor(lambda: drained == [True])
        try:
            self.assertEqual(raw.recv(10), b"")
        except ConnectionResetError:
            pass  # an abort: the socket is gone either way
        self.assertEqual(self.stat("downstream_cx_total"), 0)
        self.assertEqual(self.stat("downstream_listener_filter_error"), 0)
