"""
C{twistd -n pyenvoy} as a subprocess driven by real clients: it proxies
and echoes, its admin reports stats and readiness, and SIGTERM and
C{POST /quitquitquit} drain before it exits 0.

(That C{etc/pyenvoy.yaml} validates is C{tests.test_tap}'s job.)
"""

from __future__ import annotations

import signal
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import (
    DEADLINE,
    Twistd,
    loopback,
    receiveAll,
    receiveExactly,
    refused,
    startEchoServer,
    startTwistd,
)

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"


def shippedShape(upstreamPort: int) -> dict[str, Any]:
    """
    The shape of C{etc/pyenvoy.yaml} on port 0: admin; listener "front"
    (tcp_proxy, stat_prefix "front") to cluster "echo_service"; listener
    "echo" (echo filter).  The cluster's endpoint is C{upstreamPort}, an
    echo server the test runs, since a port-0 listener's port cannot be
    written into the cluster in advance.
    """
    return {
        "admin": {"address": loopback()},
        "static_resources": {
            "listeners": [
                {"name": "front", "address": loopback(), "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {"@type": TCP_PROXY, "stat_prefix": "front",
                                     "cluster": "echo_service", "idle_timeout": "300s"}}]}]},
                {"name": "echo", "address": loopback(), "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.echo",
                    "typed_config": {"@type": ECHO}}]}]},
            ],
            "clusters": [{
                "name": "echo_service", "type": "STATIC", "connect_timeout": "1s",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {"cluster_name": "echo_service", "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": loopback(upstreamPort)}}]}]},
            }],
        },
    }


class ServeTests(SynchronousTestCase):
    """
    A running C{twistd pyenvoy} serves clients and its admin.
    """

    def setUp(self) -> None:
        self.upstream = startEchoServer(self)
        self.twistd = startTwistd(self, shippedShape(self.upstream.port))

    def test_proxiesAndEchoes(self) -> None:
        """
        Bytes through "front" come back from the upstream, and "echo" echoes.
        """
        payload = b"hello through pyenvoy\n" * 100
        with self.twistd.connect("front") as client:
            client.sendall(payload)
            client.shutdown(1)
            self.assertEqual(receiveAll(client), payload)
        with self.twistd.connect("echo") as client:
            client.sendall(b"ping")
            self.assertEqual(receiveExactly(client, 4), b"ping")

    def test_stats(self) -> None:
        """
        After one proxied connection, /stats has tcp.front.downstream_cx_total: 1.
        """
        with self.twistd.connect("front") as client:
            client.sendall(b"x")
            self.assertEqual(receiveExactly(client, 1), b"x")
        status, body = self.twistd.request("GET", "/stats")
        self.assertEqual(status, 200)
        self.assertIn("tcp.front.downstream_cx_total: 1", body.splitlines())

    def test_ready(self) -> None:
        """
        GET /ready answers 200 LIVE.
        """
        self.assertEqual(self.twistd.request("GET", "/ready"), (200, "LIVE\n"))

    def test_listeners(self) -> None:
        """
        GET /listeners gives each listener's real (port 0 was asked) port.
        """
        ports = self.twistd.listenerPorts
        self.assertEqual(self.twistd.request("GET", "/listeners"), (
            200, f"front::127.0.0.1:{ports['front']}\necho::127.0.0.1:{ports['echo']}\n"))
        self.assertNotIn(0, ports.values())


class ShutdownTests(SynchronousTestCase):
    """
    SIGTERM and C{POST /quitquitquit} drain open connections, then exit 0.
    """

    def start(self, drainTime: float) -> Twistd:
        """
        Run the shipped shape with C{--drain-time-s drainTime}.
        """
        upstream = startEchoServer(self)
        return startTwistd(self, shippedShape(upstream.port),
                           "--drain-time-s", f"{drainTime:g}")

    def openClient(self, twistd: Twistd) -> Any:
        """
        A client connected through "front", proven by one echoed message.
        """
        client = twistd.connect("front")
        self.addCleanup(client.close)
        client.sendall(b"first")
        self.assertEqual(receiveExactly(client, 5), b"first")
        return client

    def waitForDraining(self, twistd: Twistd) -> None:
        """
        Wait until /ready says the server is draining.
        """
        end = time.monotonic() + DEADLINE
        while twistd.request("GET", "/ready") != (503, "DRAINING\n"):
            if time.monotonic() > end:
                twistd.fail("/ready never said 503 DRAINING")
            time.sleep(0.05)

    def test_sigtermWaitsForOpenConnection(self) -> None:
        """
        After SIGTERM the process runs on, refusing new connections, until its client closes.
        """
        twistd = self.start(drainTime=60)
        client = self.openClient(twistd)
        twistd.signal(signal.SIGTERM)
        self.waitForDraining(twistd)
        self.assertTrue(refused(twistd.listenerPorts["front"]), "front still accepts")
        self.assertTrue(refused(twistd.listenerPorts["echo"]), "echo still accepts")
        time.sleep(0.5)
        self.assertTrue(twistd.running(), twistd.log())
        client.sendall(b"still here")
        self.assertEqual(receiveExactly(client, 10), b"still here")
        self.assertTrue(twistd.running(), twistd.log())
        client.close()
        closed = time.monotonic()
        self.assertEqual(twistd.waitForExit(), 0, twistd.log())
        # Well before --drain-time-s: the close ended the drain.
        self.assertLess(time.monotonic() - closed, 15)
        self.assertIn("draining for up to 60.0s before exit", twistd.log())

    def test_sigtermDrainTimeLimit(self) -> None:
        """
        A client that stays open delays the exit by --drain-time-s (1s), then it is cut, exit 0.
        """
        twistd = self.start(drainTime=1)
        client = self.openClient(twistd)
        signalled = time.monotonic()
        twistd.signal(signal.SIGTERM)
        self.assertEqual(twistd.waitForExit(), 0, twistd.log())
        elapsed = time.monotonic() - signalled
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5)
        try:
            rest = receiveAll(client)
        except ConnectionResetError:
            rest = b""
        self.assertEqual(rest, b"")

    def test_quitquitquit(self) -> None:
        """
        POST /quitquitquit answers 200 OK; the idle server exits 0 before the drain time.
        """
        twistd = self.start(drainTime=60)
        self.assertEqual(twistd.request("POST", "/quitquitquit"), (200, "OK\n"))
        posted = time.monotonic()
        self.assertEqual(twistd.waitForExit(), 0, twistd.log())
        self.assertLess(time.monotonic() - posted, 15)
        self.assertIn("draining for up to 60.0s before exit", twistd.log())

    def test_quitquitquitNeedsPost(self) -> None:
        """
        GET /quitquitquit is refused with 405 and the server stays up.
        """
        twistd = self.start(drainTime=60)
        status, body = twistd.request("GET", "/quitquitquit")
        self.assertEqual((status, body), (405, "Method GET not allowed, POST required."))
        self.assertEqual(twistd.request("GET", "/ready"), (200, "LIVE\n"))
        self.assertTrue(twistd.running())
