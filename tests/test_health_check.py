"""
Active health checking (C{health_checks}), panic mode
(C{healthy_panic_threshold}) and the Redis protocol options
(C{typed_extension_protocol_options}) of clusters: config parsing, the
checker's state machine on a fake clock, and real redis-servers and TCP
listeners.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable

import yaml
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pyenvoy.admin import _clusterText
from pyenvoy.config import ConfigErrors, parse
from pyenvoy.stats import Store
from pyenvoy.upstream.cluster import Cluster
from pyenvoy.upstream.hashing import LoadBalancerContext
from pyenvoy.upstream.health_check import payloadMatches
from pyenvoy.upstream.host import Host
from pyenvoy.upstream.load_balancer import Maglev, RingHash, RoundRobin, inPanic
from tests.support.net import Echo, connect, listenerPort, startServer, tcpProxyConfig
from tests.support.twistd import DEADLINE, startTwistd
from tests.test_config import C0, ConfigTestCase, bootstrap, cluster

REDIS_OPTIONS = ("type.googleapis.com/"
                 "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions")
REDIS_CHECKER = "type.googleapis.com/envoy.extensions.health_checkers.redis.v3.Redis"
HC0 = f"{C0}.health_checks[0]"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tcpCheck(send: str = "", receive: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """
    A C{health_checks} entry with a TCP checker (hex payloads).
    """
    check: dict[str, Any] = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2,
                             "healthy_threshold": 2, "tcp_health_check": {}}
    if send:
        check["tcp_health_check"]["send"] = {"text": send}
    if receive:
        check["tcp_health_check"]["receive"] = [{"text": r} for r in receive]
    check.update(fields)
    return check


def redisCheck(key: str | None = None, **fields: Any) -> dict[str, Any]:
    """
    A C{health_checks} entry with the Redis checker.
    """
    typed: dict[str, Any] = {"@type": REDIS_CHECKER}
    if key is not None:
        typed["key"] = key
    check: dict[str, Any] = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2,
                             "healthy_threshold": 2,
                             "custom_health_check": {"name": "envoy.health_checkers.redis",
                                                     "typed_config": typed}}
    check.update(fields)
    return check


def redisOptions(**fields: Any) -> dict[str, Any]:
    """
    C{typed_extension_protocol_options} with C{RedisProtocolOptions}.
    """
    return {"envoy.filters.network.redis_proxy": {"@type": REDIS_OPTIONS, **fields}}


# -- config --------------------------------------------------------------------


class HealthCheckConfigTests(ConfigTestCase):
    """
    C{health_checks} is read as Envoy reads it; what pyenvoy lacks is named.
    """

    def test_tcpCheck(self) -> None:
        """
        A TCP check's fields and defaults, payloads decoded from hex.
        """
        raw = bootstrap(clusters=[cluster(health_checks=[tcpCheck(
            "50494E47", ("504F", "4E47"), interval_jitter="0.5s", initial_jitter="1s",
            reuse_connection=False, no_traffic_interval="3s")])])
        (check,) = parse(raw).clusters["backend"].healthChecks
        self.assertEqual((check.timeout, check.interval, check.unhealthyThreshold,
                          check.healthyThreshold), (1.0, 2.0, 2, 2))
        self.assertEqual((check.checker.send, check.checker.receive),
                         (b"PING", (b"PO", b"NG")))
        self.assertEqual((check.intervalJitter, check.initialJitter, check.reuseConnection,
                          check.noTrafficInterval, check.noTrafficHealthyInterval),
                         (0.5, 1.0, False, 3.0, 3.0))
        self.assertEqual((check.unhealthyInterval, check.healthyEdgeInterval), (2.0, 2.0))
        self.assertEqual(check.path, HC0)

    def test_tlsClusterRefused(self) -> None:
        """
        Health checks on a TLS cluster are refused rather than run in
        cleartext (Envoy checks over the cluster's transport socket).
        """
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/"
                     "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
        self.assertError(bootstrap(clusters=[cluster(health_checks=[tcpCheck()],
                                                     transport_socket=tls)]),
                         f"{C0}.health_checks", "transport_socket (TLS) are not supported")

    def test_closeConnectionsFlag(self) -> None:
        """
        close_connections_on_host_health_failure is read (default false).
        """
        self.assertFalse(parse(bootstrap(clusters=[cluster()])).clusters["backend"]
                         .closeConnectionsOnHostHealthFailure)
        config = parse(bootstrap(clusters=[cluster(
            close_connections_on_host_health_failure=True)]))
        self.assertTrue(config.clusters["backend"].closeConnectionsOnHostHealthFailure)

    def test_defaults(self) -> None:
        """
        Envoy's defaults: reuse_connection true, no_traffic_interval 60s,
        no jitter; the panic threshold 50%.
        """
        config = parse(bootstrap(clusters=[cluster(health_checks=[tcpCheck()])]))
        c = config.clusters["backend"]
        (check,) = c.healthChecks
        self.assertEqual((check.reuseConnection, check.noTrafficInterval, check.intervalJitter,
                          check.initialJitter, check.checker.send, check.checker.receive),
                         (True, 60.0, 0.0, 0.0, b"", ()))
        self.assertEqual(c.healthyPanicThreshold, 50)

    def test_redisCheck(self) -> None:
        """
        The Redis custom checker with and without a key.
        """
        for key, expected in ((None, ""), ("maintenance", "maintenance")):
            config = parse(bootstrap(clusters=[cluster(health_checks=[redisCheck(key)])]))
            self.assertEqual(config.clusters["backend"].healthChecks[0].checker.key, expected)

    def test_required(self) -> None:
        """
        timeout, interval, both thresholds and a checker are required.
        """
        self.assertErrors(bootstrap(clusters=[cluster(health_checks=[{}])]), [
            (HC0, "missing required field 'timeout'"),
            (HC0, "missing required field 'interval'"),
            (HC0, "missing required field 'unhealthy_threshold'"),
            (HC0, "missing required field 'healthy_threshold'"),
            (HC0, "one of http_health_check, tcp_health_check, grpc_health_check, "
                  "custom_health_check is required"),
        ])

    def test_positiveDurations(self) -> None:
        """
        A zero timeout is refused, as Envoy's validation does.
        """
        self.assertError(bootstrap(clusters=[cluster(health_checks=[tcpCheck(timeout="0s")])]),
                         f"{HC0}.timeout", "must be greater than 0s")

    def test_httpNotSupported(self) -> None:
        """
        HTTP and gRPC checkers are named as not supported, at their path.
        """
        for which in ("http_health_check", "grpc_health_check"):
            check = tcpCheck()
            del check["tcp_health_check"]
            check[which] = {"path": "/healthz"}
            self.assertError(bootstrap(clusters=[cluster(health_checks=[check])]),
                             f"{HC0}.{which}", "not supported by pyenvoy yet")

    def test_oneHealthCheck(self) -> None:
        """
        Envoy takes at most one health check per cluster.
        """
        self.assertError(bootstrap(clusters=[cluster(health_checks=[tcpCheck(), tcpCheck()])]),
                         f"{C0}.health_checks", "only one health check per cluster")

    def test_badHex(self) -> None:
        """
        A payload that is not hex is an error at its path.
        """
        self.assertError(bootstrap(clusters=[cluster(health_checks=[tcpCheck("PING")])]),
                         f"{HC0}.tcp_health_check.send.text", "expected hex digits")

    def test_binaryPayload(self) -> None:
        """
        A payload may be given as base64 C{binary}.
        """
        check = tcpCheck()
        check["tcp_health_check"]["receive"] = [
            {"binary": base64.b64encode(b"\x00OK").decode()}]
        config = parse(bootstrap(clusters=[cluster(health_checks=[check])]))
        self.assertEqual(config.clusters["backend"].healthChecks[0].checker.receive,
                         (b"\x00OK",))

    def test_unknownCustomChecker(self) -> None:
        """
        A custom checker other than Redis's is not supported, at its @type.
        """
        check = redisCheck()
        check["custom_health_check"] = {
            "name": "envoy.health_checkers.thrift",
            "typed_config": {"@type": "type.googleapis.com/"
                             "envoy.extensions.health_checkers.thrift.v3.Thrift"}}
        self.assertError(bootstrap(clusters=[cluster(health_checks=[check])]),
                         f"{HC0}.custom_health_check.typed_config.@type",
                         "not supported by pyenvoy yet")

    def test_unsupportedFields(self) -> None:
        """
        Fields pyenvoy lacks are named: the event logger, TLS options, the
        Redis checker's aws_iam.
        """
        check = redisCheck(event_logger=[{}])
        check["custom_health_check"]["typed_config"]["aws_iam"] = {"region": "x"}
        self.assertErrors(bootstrap(clusters=[cluster(health_checks=[check])]), [
            (f"{HC0}.custom_health_check.typed_config.aws_iam", "not supported by pyenvoy yet"),
            (f"{HC0}.event_logger", "not supported by pyenvoy yet"),
        ])

    def test_panicThreshold(self) -> None:
        """
        healthy_panic_threshold is a Percent, rounded as Envoy rounds it;
        over 100 is refused.
        """
        config = parse(bootstrap(clusters=[cluster(common_lb_config={
            "healthy_panic_threshold": {"value": 24.5}})]))
        self.assertEqual(config.clusters["backend"].healthyPanicThreshold, 25)
        self.assertError(bootstrap(clusters=[cluster(common_lb_config={
            "healthy_panic_threshold": {"value": 120}})]),
            f"{C0}.common_lb_config.healthy_panic_threshold.value", "between 0 and 100")


class ProtocolOptionsConfigTests(ConfigTestCase):
    """
    C{typed_extension_protocol_options}: Redis AUTH credentials, the TCP
    options accepted, anything else named as unsupported.
    """

    def test_redisPasswords(self) -> None:
        """
        Each DataSource kind is read; per-endpoint credentials win for
        their host, the cluster's for the others.
        """
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("from-file")
        self.addCleanup(os.unlink, f.name)
        os.environ["PYENVOY_TEST_REDIS_USER"] = "envuser"
        self.addCleanup(os.environ.pop, "PYENVOY_TEST_REDIS_USER")
        options = redisOptions(
            auth_username={"environment_variable": "PYENVOY_TEST_REDIS_USER"},
            auth_password={"filename": f.name},
            credentials=[{"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 7001}},
                          "auth_password": {"inline_bytes": base64.b64encode(b"pw").decode()}},
                         {"address": {"socket_address": {"address": "redis.example",
                                                         "port_value": 7002}},
                          "auth_username": {"inline_string": "bob"},
                          "auth_password": {"inline_string": "bobs"}}])
        c = parse(bootstrap(clusters=[cluster(typed_extension_protocol_options=options)]))
        redis = c.clusters["backend"].redisProtocolOptions
        self.assertEqual(redis.credentialsFor(Host(("127.0.0.1", 7001))), (None, "pw"))
        self.assertEqual(redis.credentialsFor(Host(("127.0.0.1", 7003))),
                         ("envuser", "from-file"))
        # A DNS host matches by the name it was resolved from.
        self.assertEqual(redis.credentialsFor(Host(("10.0.0.9", 7002), 1, "redis.example")),
                         ("bob", "bobs"))
        self.assertEqual(redis.credentialsFor(Host(("127.0.0.1", 7001), 1, "other.example")),
                         ("envuser", "from-file"))

    def test_absent(self) -> None:
        """
        Without protocol options there is no RedisProtocolOptions.
        """
        self.assertIsNone(parse(bootstrap(clusters=[cluster()])).clusters["backend"]
                          .redisProtocolOptions)

    def test_tcpOptionsAccepted(self) -> None:
        """
        Envoy's TcpProtocolOptions (idle_timeout) are accepted.
        """
        options = {"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions",
            "idle_timeout": "60s"}}
        c = parse(bootstrap(clusters=[cluster(typed_extension_protocol_options=options)]))
        self.assertIsNone(c.clusters["backend"].redisProtocolOptions)

    def test_unknownKey(self) -> None:
        """
        Other protocol options are not supported, at their key.
        """
        options = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"}}
        self.assertError(bootstrap(clusters=[cluster(typed_extension_protocol_options=options)]),
                         f"{C0}.typed_extension_protocol_options."
                         "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                         "not supported by pyenvoy yet")

    def test_wrongType(self) -> None:
        """
        The redis_proxy key with another @type is an error at the @type.
        """
        options = {"envoy.filters.network.redis_proxy": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3."
                     "RedisProxy"}}
        self.assertError(bootstrap(clusters=[cluster(typed_extension_protocol_options=options)]),
                         f"{C0}.typed_extension_protocol_options."
                         "envoy.filters.network.redis_proxy.@type", "expected @type")

    def test_awsIam(self) -> None:
        """
        AWS IAM authentication is refused by name.
        """
        self.assertError(
            bootstrap(clusters=[cluster(typed_extension_protocol_options=redisOptions(
                aws_iam={"region": "us-east-1"}))]),
            f"{C0}.typed_extension_protocol_options.envoy.filters.network.redis_proxy.aws_iam",
            "AWS IAM authentication is not supported")

    def test_missingEnvironmentVariable(self) -> None:
        """
        An unset environment variable is an error at its path.
        """
        os.environ.pop("PYENVOY_TEST_UNSET", None)
        self.assertError(
            bootstrap(clusters=[cluster(typed_extension_protocol_options=redisOptions(
                auth_password={"environment_variable": "PYENVOY_TEST_UNSET"}))]),
            f"{C0}.typed_extension_protocol_options.envoy.filters.network.redis_proxy."
            "auth_password.environment_variable", "Environment variable doesn't exist")


# -- the checker on a fake clock ------------------------------------------------


class FakeCluster:
    """
    A L{Cluster} on a L{MemoryReactorClock}: health check connections are
    recorded, and the test accepts or refuses them.
    """

    def __init__(self, case: SynchronousTestCase, check: dict[str, Any],
                 ports: tuple[int, ...] = (7001,), **clusterFields: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.store = Store()
        raw = bootstrap(clusters=[cluster(endpoints=[("127.0.0.1", p) for p in ports],
                                          health_checks=[check], **clusterFields)])
        self.cluster = Cluster(parse(raw).clusters["backend"], self.store, self.reactor)
        self.cluster.healthChecker.rng = random.Random(7)
        self.host = {h.address[1]: h for h in self.cluster.hosts}
        case.addCleanup(self.cluster.stop)

    def stat(self, name: str) -> int:
        """
        The value of C{cluster.backend.<name>}.
        """
        stat = self.store.get(f"cluster.backend.{name}")
        assert stat is not None, name
        return stat.value

    def lastConnect(self, port: int) -> tuple[Any, Any]:
        """
        The factory and connector of the last connection made to C{port}.
        """
        for index in range(len(self.reactor.tcpClients) - 1, -1, -1):
            if self.reactor.tcpClients[index][1] == port:
                return self.reactor.tcpClients[index][2], self.reactor.connectors[index]
        raise AssertionError(f"no connection to {port}")

    def accept(self, port: int) -> tuple[Any, StringTransport]:
        """
        Let the last connection to C{port} succeed.
        """
        factory, _ = self.lastConnect(port)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self, port: int) -> None:
        """
        Let the last connection to C{port} be refused.
        """
        factory, connector = self.lastConnect(port)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def nextCheckIn(self) -> float:
        """
        Seconds until the first pending timer (the next check).
        """
        now = self.reactor.seconds()
        return min(call.getTime() for call in self.reactor.getDelayedCalls()) - now


class CheckerStateTests(SynchronousTestCase):
    """
    Host health moves with Envoy's rules, on a fake clock.
    """

    def test_startsUnhealthy(self) -> None:
        """
        With health checking, hosts start with FAILED_ACTIVE_HC (as Envoy)
        and the first check runs at start.
        """
        fake = FakeCluster(self, tcpCheck())
        host = fake.host[7001]
        self.assertFalse(host.healthy)
        self.assertEqual(host.healthFlagsString(), "/failed_active_hc")
        self.assertEqual(fake.stat("membership_healthy"), 0)
        fake.cluster.start()
        self.assertEqual(len(fake.reactor.tcpClients), 1)
        self.assertEqual(fake.stat("health_check.attempt"), 1)

    def test_firstPassIsHealthyAtOnce(self) -> None:
        """
        The first check ever that passes makes the host healthy, whatever
        healthy_threshold says; a connect-only check then closes.
        """
        fake = FakeCluster(self, tcpCheck())
        fake.cluster.start()
        _, transport = fake.accept(7001)
        host = fake.host[7001]
        self.assertTrue(host.healthy)
        self.assertEqual(host.healthFlagsString(), "healthy")
        self.assertEqual((fake.stat("health_check.success"), fake.stat("health_check.healthy"),
                          fake.stat("membership_healthy")), (1, 1, 1))
        self.assertTrue(transport.disconnecting)

    def test_networkFailuresNeedThreshold(self) -> None:
        """
        Refused connections make a healthy host unhealthy only after
        unhealthy_threshold of them; it is back after healthy_threshold
        passes.
        """
        fake = FakeCluster(self, tcpCheck(unhealthy_threshold=3, healthy_threshold=2))
        fake.cluster.start()
        fake.accept(7001)
        host = fake.host[7001]
        for expected in (True, True, False):
            fake.reactor.advance(fake.nextCheckIn())
            fake.refuse(7001)
            self.assertEqual(host.healthy, expected)
        self.assertEqual((fake.stat("health_check.failure"),
                          fake.stat("health_check.network_failure"),
                          fake.stat("health_check.healthy"), fake.stat("membership_healthy")),
                         (3, 3, 0, 0))
        fake.reactor.advance(fake.nextCheckIn())
        fake.accept(7001)
        self.assertFalse(host.healthy)
        fake.reactor.advance(fake.nextCheckIn())
        fake.accept(7001)
        self.assertTrue(host.healthy)
        self.assertEqual(fake.stat("health_check.healthy"), 1)

    def test_timeoutFlag(self) -> None:
        """
        A check with no answer fails when the timeout fires; a host failed
        that way shows /active_hc_timeout too.
        """
        fake = FakeCluster(self, tcpCheck("50494E47", ("504F4E47",), unhealthy_threshold=1))
        fake.cluster.start()
        protocol, transport = fake.accept(7001)
        self.assertEqual(transport.value(), b"PING")
        protocol.dataReceived(b"PONG")
        host = fake.host[7001]
        self.assertTrue(host.healthy)
        fake.reactor.advance(fake.nextCheckIn())
        self.assertEqual(transport.value(), b"PINGPING")
        fake.reactor.advance(1.0)
        self.assertFalse(host.healthy)
        self.assertEqual(host.healthFlagsString(), "/failed_active_hc/active_hc_timeout")
        self.assertEqual(fake.stat("health_check.network_failure"), 1)
        text = "".join(_clusterText(fake.cluster))
        self.assertIn("backend::127.0.0.1:7001::health_flags::/failed_active_hc/"
                      "active_hc_timeout\n", text)

    def test_reusedConnection(self) -> None:
        """
        With reuse_connection (the default) the next check goes over the
        same connection, and the answer may come in pieces.
        """
        fake = FakeCluster(self, tcpCheck("50494E47", ("504F4E47",)))
        fake.cluster.start()
        protocol, transport = fake.accept(7001)
        protocol.dataReceived(b"PONG")
        fake.reactor.advance(fake.nextCheckIn())
        self.assertEqual(len(fake.reactor.tcpClients), 1)
        protocol.dataReceived(b"PO")
        protocol.dataReceived(b"NG")
        self.assertEqual(fake.stat("health_check.success"), 2)

    def test_unexpectedCloseIsNetworkFailure(self) -> None:
        """
        The host closing the check connection is a network failure.
        """
        fake = FakeCluster(self, tcpCheck("50494E47", ("504F4E47",)))
        fake.cluster.start()
        protocol, _ = fake.accept(7001)
        protocol.dataReceived(b"PONG")
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(fake.stat("health_check.network_failure"), 1)
        self.assertTrue(fake.host[7001].healthy)

    def test_payloadMatching(self) -> None:
        """
        Receive blocks are found in order, not necessarily adjacent.
        """
        self.assertTrue(payloadMatches((b"AB", b"EF"), b"xxABcdEFyy"))
        self.assertFalse(payloadMatches((b"EF", b"AB"), b"xxABcdEFyy"))
        self.assertTrue(payloadMatches((), b""))

    def test_intervalJitterBounds(self) -> None:
        """
        With interval_jitter, each wait is interval plus less than the
        jitter; with the percentage, less than that share of the interval.
        """
        fake = FakeCluster(self, tcpCheck(interval_jitter="0.5s", interval_jitter_percent=10,
                                          no_traffic_interval="2s"))
        fake.cluster.start()
        waits = []
        for _ in range(40):
            fake.accept(7001)
            waits.append(fake.nextCheckIn())
            fake.reactor.advance(waits[-1])
        self.assertTrue(all(2.0 <= w < 2.0 + 0.2 + 0.5 for w in waits), waits)
        self.assertGreater(len(set(waits)), 10)

    def test_initialJitter(self) -> None:
        """
        With initial_jitter the first check waits at random, below it.
        """
        fake = FakeCluster(self, tcpCheck(initial_jitter="1s"), ports=(7001, 7002, 7003))
        fake.cluster.start()
        self.assertEqual(fake.reactor.tcpClients, [])
        delays = [c.getTime() for c in fake.reactor.getDelayedCalls()]
        self.assertEqual(len(delays), 3)
        self.assertTrue(all(0.001 <= d < 1.0 for d in delays), delays)

    def test_noTrafficInterval(self) -> None:
        """
        Until the cluster has had a connection, checks come every
        no_traffic_interval (Envoy's 60s by default); then every interval.
        """
        fake = FakeCluster(self, tcpCheck())
        fake.cluster.start()
        fake.accept(7001)
        self.assertEqual(fake.nextCheckIn(), 60.0)
        fake.cluster.stats.upstream_cx_total.value += 1
        fake.reactor.advance(60.0)
        fake.accept(7001)
        self.assertEqual(fake.nextCheckIn(), 2.0)

    def test_membership(self) -> None:
        """
        A host that joins is checked (and starts unhealthy); one that
        leaves is no longer checked and no longer counted healthy.
        """
        fake = FakeCluster(self, tcpCheck(), ports=(7001, 7002))
        fake.cluster.start()
        fake.accept(7001)
        fake.accept(7002)
        self.assertEqual(fake.stat("health_check.healthy"), 2)
        keep = fake.host[7001]
        fake.cluster.setHosts([Host(keep.address), Host(("127.0.0.1", 7003))])
        self.assertEqual(fake.stat("health_check.healthy"), 1)
        self.assertEqual(sorted(fake.cluster.healthChecker.sessions),
                         sorted(id(h) for h in fake.cluster.hosts))
        new = [h for h in fake.cluster.hosts if h.address[1] == 7003][0]
        self.assertFalse(new.healthy)
        fake.accept(7003)
        self.assertTrue(new.healthy)
        self.assertEqual(fake.stat("membership_healthy"), 2)


class EndpointHealthCheckConfigTests(SynchronousTestCase):
    """
    An endpoint's C{health_check_config}: another port to check, or no
    active checks at all.
    """

    def test_portAndDisable(self) -> None:
        """
        port_value sends the checks to that port; with
        disable_active_health_check the host is never checked and stays
        healthy.
        """
        reactor_ = MemoryReactorClock()
        store = Store()
        raw = bootstrap(clusters=[{
            "name": "backend", "health_checks": [tcpCheck()],
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": 7001}},
                              "health_check_config": {"port_value": 9001}}},
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": 7002}},
                              "health_check_config": {"disable_active_health_check": True}}},
            ]}]}}])
        c = Cluster(parse(raw).clusters["backend"], store, reactor_)
        self.addCleanup(c.stop)
        checked, unchecked = c.hosts
        self.assertEqual((checked.healthy, unchecked.healthy), (False, True))
        c.start()
        self.assertEqual([(h, p) for h, p, *_ in reactor_.tcpClients], [("127.0.0.1", 9001)])
        self.assertEqual(list(c.healthChecker.sessions), [id(checked)])

    def test_unsupported(self) -> None:
        """
        health_check_config.address and hostname are not supported yet.
        """
        raw = bootstrap(clusters=[cluster(health_checks=[tcpCheck()])])
        endpoint = raw["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0][
            "lb_endpoints"][0]["endpoint"]
        endpoint["health_check_config"] = {"hostname": "x"}
        e = self.assertRaises(ConfigErrors, parse, raw)
        self.assertEqual([err.path for err in e.errors],
                         [f"{C0}.load_assignment.endpoints[0].lb_endpoints[0].endpoint."
                          "health_check_config.hostname"])


class RedisCheckerTests(SynchronousTestCase):
    """
    The Redis checker's requests and verdicts, over a fake connection.
    """

    def test_ping(self) -> None:
        """
        PING answered +PONG passes.
        """
        fake = FakeCluster(self, redisCheck())
        fake.cluster.start()
        protocol, transport = fake.accept(7001)
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(fake.host[7001].healthy)

    def test_wrongAnswerIsImmediate(self) -> None:
        """
        Anything but PONG fails at once, whatever unhealthy_threshold says
        (an ACTIVE failure in Envoy's terms), and is no network failure.
        """
        fake = FakeCluster(self, redisCheck(unhealthy_threshold=5))
        fake.cluster.start()
        protocol, _ = fake.accept(7001)
        protocol.dataReceived(b"+PONG\r\n")
        fake.reactor.advance(fake.nextCheckIn())
        protocol.dataReceived(b"-LOADING Redis is loading the dataset in memory\r\n")
        self.assertFalse(fake.host[7001].healthy)
        self.assertEqual((fake.stat("health_check.failure"),
                          fake.stat("health_check.network_failure")), (1, 0))

    def test_existsKey(self) -> None:
        """
        With a key, EXISTS key is sent: :0 passes, :1 fails and counts
        health_check.redis.exists_failure.
        """
        fake = FakeCluster(self, redisCheck("maint"))
        fake.cluster.start()
        protocol, transport = fake.accept(7001)
        self.assertEqual(transport.value(), b"*2\r\n$6\r\nEXISTS\r\n$5\r\nmaint\r\n")
        protocol.dataReceived(b":0\r\n")
        self.assertTrue(fake.host[7001].healthy)
        fake.reactor.advance(fake.nextCheckIn())
        protocol.dataReceived(b":1\r\n")
        self.assertFalse(fake.host[7001].healthy)
        self.assertEqual(fake.stat("health_check.redis.exists_failure"), 1)

    def test_authFirst(self) -> None:
        """
        A new connection AUTHs first with the host's credentials; the AUTH
        reply is not the check's.
        """
        options = redisOptions(
            auth_password={"inline_string": "default-pw"},
            credentials=[{"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 7002}},
                          "auth_username": {"inline_string": "bob"},
                          "auth_password": {"inline_string": "bobs"}}])
        fake = FakeCluster(self, redisCheck(), ports=(7001, 7002),
                           typed_extension_protocol_options=options)
        fake.cluster.start()
        p1, t1 = fake.accept(7001)
        p2, t2 = fake.accept(7002)
        self.assertEqual(t1.value(), b"*2\r\n$4\r\nAUTH\r\n$10\r\ndefault-pw\r\n*1\r\n$4\r\nPING\r\n")
        self.assertEqual(t2.value(), b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$4\r\nbobs\r\n"
                                     b"*1\r\n$4\r\nPING\r\n")
        p1.dataReceived(b"+OK\r\n+PONG\r\n")
        p2.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        self.assertTrue(fake.host[7001].healthy)
        self.assertFalse(fake.host[7002].healthy)
        p2.dataReceived(b"-NOAUTH Authentication required.\r\n")
        self.assertFalse(fake.host[7002].healthy)
        self.assertEqual(fake.stat("health_check.failure"), 1)

    def test_redirectionPasses(self) -> None:
        """
        A MOVED redirection passes, as in Envoy.
        """
        fake = FakeCluster(self, redisCheck("k"))
        fake.cluster.start()
        protocol, _ = fake.accept(7001)
        protocol.dataReceived(b"-MOVED 3999 127.0.0.1:6381\r\n")
        self.assertTrue(fake.host[7001].healthy)

    def test_noReuse(self) -> None:
        """
        Without reuse_connection each check has its own connection.
        """
        fake = FakeCluster(self, redisCheck(reuse_connection=False))
        fake.cluster.start()
        protocol, transport = fake.accept(7001)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(transport.disconnecting)
        fake.reactor.advance(fake.nextCheckIn())
        self.assertEqual(len(fake.reactor.tcpClients), 2)


# -- panic mode and rebuilds -------------------------------------------------------


def hostsOn(*ports: int) -> list[Host]:
    """
    Hosts on 127.0.0.1 at C{ports}.
    """
    return [Host(("127.0.0.1", p)) for p in ports]


class PanicTests(SynchronousTestCase):
    """
    Envoy's healthy_panic_threshold, for every load balancer.
    """

    def test_rule(self) -> None:
        """
        Panic below the threshold, except when the 1.4 overprovisioning
        factor makes the set fully available; never with threshold 0.
        """
        four = hostsOn(1, 2, 3, 4)
        four[0].healthy = False
        self.assertFalse(inPanic(four, 80))  # 75% * 1.4 >= 100
        four[1].healthy = False
        self.assertFalse(inPanic(four, 50))  # 50% is not below 50%
        self.assertTrue(inPanic(four, 51))
        four[2].healthy = False
        self.assertTrue(inPanic(four, 50))
        self.assertFalse(inPanic(four, 0))

    def test_roundRobinPanics(self) -> None:
        """
        In panic mode round robin uses every host and counts
        lb_healthy_panic; out of it, only the healthy ones.
        """
        store = Store()
        four = hostsOn(1, 2, 3, 4)
        lb = RoundRobin(four, scope=store.scope("cluster.c"))
        for h in four[1:]:
            h.healthy = False
        lb.refresh()
        picked = {lb.chooseHost(None).address[1] for _ in range(8)}
        self.assertEqual(picked, {1, 2, 3, 4})
        self.assertEqual(store.get("cluster.c.lb_healthy_panic").value, 8)
        four[1].healthy = True
        lb.refresh()
        self.assertEqual({lb.chooseHost(None).address[1] for _ in range(8)}, {1, 2})

    def test_panicDisabled(self) -> None:
        """
        With threshold 0 and no healthy host there is no host.
        """
        two = hostsOn(1, 2)
        lb = RoundRobin(two, panicThreshold=0)
        for h in two:
            h.healthy = False
        lb.refresh()
        self.assertIsNone(lb.chooseHost(None))

    def test_clusterPanicCounter(self) -> None:
        """
        A cluster whose hosts all fail their checks is in panic mode: the
        load balancer still picks, and cluster.<name>.lb_healthy_panic
        counts.
        """
        fake = FakeCluster(self, tcpCheck(unhealthy_threshold=1), ports=(7001, 7002))
        fake.cluster.start()
        fake.refuse(7001)
        fake.refuse(7002)
        self.assertIsNotNone(fake.cluster.lb.chooseHost(None))
        self.assertEqual(fake.stat("lb_healthy_panic"), 1)


class RebuildTests(SynchronousTestCase):
    """
    RING_HASH and MAGLEV rebuild over the healthy hosts when health
    changes, placing keys exactly as a table built from those hosts alone.
    """

    def check(self, policy: str, build: Callable[[list[Host]], Any]) -> None:
        """
        Fail one host of three through its checks, and compare placement.
        """
        fake = FakeCluster(self, tcpCheck(unhealthy_threshold=1), ports=(7001, 7002, 7003),
                           lb_policy=policy)
        fake.cluster.start()
        for port in (7001, 7002, 7003):
            fake.accept(port)
        keys = [LoadBalancerContext(hashKey=random.Random(i).getrandbits(64))
                for i in range(2000)]
        fake.reactor.advance(fake.nextCheckIn())
        fake.refuse(7002)
        for port in (7001, 7003):
            fake.accept(port)
        self.assertFalse(fake.host[7002].healthy)
        reference = build(hostsOn(7001, 7003))
        self.assertEqual([fake.cluster.lb.chooseHost(k).address for k in keys],
                         [reference.chooseHost(k).address for k in keys])
        self.assertEqual(fake.stat("lb_healthy_panic"), 0)

    def test_ringHash(self) -> None:
        """
        The ring of a cluster with a failed host is the ring of the others.
        """
        self.check("RING_HASH", RingHash)

    def test_maglev(self) -> None:
        """
        Likewise for the Maglev table.
        """
        self.check("MAGLEV", Maglev)


# -- real servers ---------------------------------------------------------------


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    A real redis-server on 127.0.0.1, started and stopped by the test.
    """

    def __init__(self, case: TestCase, *extra: str) -> None:
        self.port = freePort()
        self.extra = extra
        self.directory = tempfile.mkdtemp(prefix="pyenvoy-hc-")
        self.process: subprocess.Popen[bytes] | None = None
        case.addCleanup(shutil.rmtree, self.directory, True)
        case.addCleanup(self.stop)

    def start(self) -> "RedisServer":
        """
        Start (again, on the same port) and wait until it answers.
        """
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.directory,
             "--logfile", os.path.join(self.directory, "redis.log"), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server on {self.port} did not start")

    def command(self, *args: str) -> str:
        """
        Run one redis-cli command against the server.
        """
        password = [a for a in self.extra if a != "--requirepass"]
        auth = ["-a", password[0], "--no-auth-warning"] if "--requirepass" in self.extra else []
        result = subprocess.run(["redis-cli", "-p", str(self.port), *auth, *args],
                                capture_output=True, text=True, timeout=DEADLINE)
        return result.stdout.strip()

    def stop(self) -> None:
        """
        Kill it (if running) and wait for it.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE)
        self.process = None


async def waitFor(predicate: Callable[[], bool], what: str) -> None:
    """
    Let the reactor run until C{predicate()} holds (at most L{DEADLINE}s).
    """
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


def fastRedisCheck(key: str | None = None) -> dict[str, Any]:
    """
    A Redis check fast enough for tests: every 0.1s from the start.
    """
    return redisCheck(key, timeout="0.5s", interval="0.1s", no_traffic_interval="0.1s",
                      unhealthy_threshold=2, healthy_threshold=2)


class RedisIntegrationTests(TestCase):
    """
    The Redis checker against real redis-servers.
    """

    def serve(self, servers: list[RedisServer], check: dict[str, Any],
              **clusterFields: Any) -> Cluster:
        """
        Start a pyenvoy server whose cluster "backend" is C{servers}.
        """
        raw = tcpProxyConfig([s.port for s in servers],
                             cluster={"health_checks": [check], **clusterFields})
        server = startServer(self, raw)
        cluster = server.context.clusterManager.get("backend")
        assert cluster is not None
        return cluster

    async def test_killedAndRestarted(self) -> None:
        """
        A killed redis-server becomes unhealthy (stats, /clusters flag, the
        ring stops placing keys on it); restarted on its port, it is back.
        """
        one, two = RedisServer(self).start(), RedisServer(self).start()
        cluster = self.serve([one, two], fastRedisCheck(), lb_policy="RING_HASH")
        await waitFor(lambda: all(h.healthy for h in cluster.hosts), "both healthy")
        self.assertEqual(cluster.stats.membership_healthy.value, 2)
        two.stop()
        dead = [h for h in cluster.hosts if h.address[1] == two.port][0]
        await waitFor(lambda: not dead.healthy, "the killed server unhealthy")
        text = "".join(_clusterText(cluster))
        self.assertIn(f"backend::127.0.0.1:{two.port}::health_flags::/failed_active_hc", text)
        self.assertIn(f"backend::127.0.0.1:{one.port}::health_flags::healthy\n", text)
        self.assertEqual(cluster.stats.membership_healthy.value, 1)
        picked = {cluster.lb.chooseHost(LoadBalancerContext(hashKey=k)).address[1]
                  for k in range(0, 2**64, 2**56)}
        self.assertEqual(picked, {one.port})
        two.start()
        await waitFor(lambda: dead.healthy, "the restarted server healthy")
        picked = {cluster.lb.chooseHost(LoadBalancerContext(hashKey=k)).address[1]
                  for k in range(0, 2**64, 2**56)}
        self.assertEqual(picked, {one.port, two.port})

    async def test_requirepass(self) -> None:
        """
        Against requirepass servers, the checker AUTHs with the cluster's
        RedisProtocolOptions (a per-endpoint credential for one host); a
        wrong password leaves its host unhealthy.
        """
        good = RedisServer(self, "--requirepass", "s3cret").start()
        other = RedisServer(self, "--requirepass", "other-pw").start()
        wrong = RedisServer(self, "--requirepass", "not-what-we-send").start()
        options = redisOptions(
            auth_password={"inline_string": "s3cret"},
            credentials=[{"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": other.port}},
                          "auth_password": {"inline_string": "other-pw"}}])
        cluster = self.serve([good, other, wrong], fastRedisCheck(),
                             typed_extension_protocol_options=options)
        byPort = {h.address[1]: h for h in cluster.hosts}
        await waitFor(lambda: byPort[good.port].healthy and byPort[other.port].healthy,
                      "the servers with the right passwords healthy")
        await waitFor(lambda: cluster.healthChecker.sessions[id(byPort[wrong.port])]
                      .firstCheck is False, "the wrong-password server checked")
        self.assertFalse(byPort[wrong.port].healthy)

    async def test_existsMaintenance(self) -> None:
        """
        Setting the EXISTS key takes a server out (exists_failure counts);
        deleting it brings the server back.
        """
        server = RedisServer(self).start()
        cluster = self.serve([server], fastRedisCheck("maintenance"))
        (host,) = cluster.hosts
        await waitFor(lambda: host.healthy, "healthy")
        self.assertEqual(server.command("SET", "maintenance", "1"), "OK")
        await waitFor(lambda: not host.healthy, "in maintenance")
        failures = cluster.healthChecker.stats.exists_failure.value
        self.assertGreater(failures, 0)
        self.assertEqual(server.command("DEL", "maintenance"), "1")
        await waitFor(lambda: host.healthy, "out of maintenance")


class TcpIntegrationTests(TestCase):
    """
    The TCP checker against a real TCP listener.
    """

    async def test_echo(self) -> None:
        """
        A send/receive check passes against an echo listener, and fails
        once nothing listens there any more.
        """
        port = reactor.listenTCP(0, _echoFactory(), interface="127.0.0.1")
        raw = tcpProxyConfig([port.getHost().port], cluster={"health_checks": [tcpCheck(
            "50494E47", ("50494E47",), timeout="0.5s", interval="0.1s",
            no_traffic_interval="0.1s", unhealthy_threshold=2, healthy_threshold=1)]})
        server = startServer(self, raw)
        cluster = server.context.clusterManager.get("backend")
        (host,) = cluster.hosts
        await waitFor(lambda: host.healthy, "the echo listener healthy")
        self.assertGreater(cluster.healthChecker.stats.success.value, 0)
        # Stop listening and drop the checker's open connection.
        await port.stopListening()
        session = cluster.healthChecker.sessions[id(host)]
        if session.link is not None and session.link.transport is not None:
            session.link.transport.abortConnection()
        await waitFor(lambda: not host.healthy, "the closed listener unhealthy")
        self.assertGreater(cluster.healthChecker.stats.network_failure.value, 0)


    async def test_closeConnectionsOnHealthFailure(self) -> None:
        """
        With close_connections_on_host_health_failure, a proxied connection
        to a host that turns unhealthy is closed; without it, it stays.
        """
        results = {}
        for flag in (True, False):
            port = reactor.listenTCP(0, _echoFactory(), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            raw = tcpProxyConfig([port.getHost().port], cluster={
                "close_connections_on_host_health_failure": flag,
                "health_checks": [tcpCheck("50494E47", ("50494E47",), timeout="0.5s",
                                           interval="0.1s", no_traffic_interval="0.1s",
                                           unhealthy_threshold=1, healthy_threshold=1)]})
            server = startServer(self, raw)
            cluster = server.context.clusterManager.get("backend")
            (host,) = cluster.hosts
            await waitFor(lambda: host.healthy, "healthy")
            client = await connect(listenerPort(server))
            client.transport.write(b"hello")
            await waitFor(lambda: client.data() == b"hello", "the echo")
            await port.stopListening()
            session = cluster.healthChecker.sessions[id(host)]
            if session.link is not None and session.link.transport is not None:
                session.link.transport.abortConnection()
            await waitFor(lambda: not host.healthy, "unhealthy")
            if flag:
                await waitFor(lambda: client.closed.called, "the proxied connection closed")
            else:
                await deferLater(reactor, 0.3, lambda: None)
            results[flag] = client.closed.called
            if not client.closed.called:
                client.transport.loseConnection()
                await client.closed
        self.assertEqual(results, {True: True, False: False})


def _echoFactory() -> Any:
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(Echo)


class ShippedConfigTests(SynchronousTestCase):
    """
    C{etc/health_check.yaml} run by C{twistd}.
    """

    def test_shippedConfig(self) -> None:
        """
        etc/health_check.yaml (ports moved to free ones) serves echo through
        the healthy host and shows the dead endpoint failed in /clusters.
        """
        with open(os.path.join(REPO, "etc", "health_check.yaml")) as f:
            config = yaml.safe_load(f)
        echoPort, deadPort = freePort(), freePort()
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        listeners = config["static_resources"]["listeners"]
        listeners[0]["address"]["socket_address"]["port_value"] = 0
        listeners[1]["address"]["socket_address"]["port_value"] = echoPort
        endpoints = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
        lbEndpoints = endpoints[0]["lb_endpoints"]
        lbEndpoints[0]["endpoint"]["address"]["socket_address"]["port_value"] = echoPort
        lbEndpoints[1]["endpoint"]["address"]["socket_address"]["port_value"] = deadPort
        twistd = startTwistd(self, config)
        end = time.monotonic() + DEADLINE
        while True:
            status, body = twistd.request("GET", "/clusters")
            if f"{deadPort}::health_flags::/failed_active_hc" in body or time.monotonic() > end:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200)
        self.assertIn(f"echo_hosts::127.0.0.1:{echoPort}::health_flags::healthy\n", body)
        self.assertIn(f"echo_hosts::127.0.0.1:{deadPort}::health_flags::/failed_active_hc\n",
                      body)
        with socket.create_connection(("127.0.0.1", twistd.listenerPorts["front"]),
                                      timeout=DEADLINE) as s:
            s.sendall(b"hello")
            self.assertEqual(s.recv(16), b"hello")
