"""
Reading an Envoy v3 bootstrap: Envoy's defaults, durations, camelCase
names, JSON files, and one error per problem naming its YAML path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap
from typing import Any, Sequence

import yaml
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.config import ConfigErrors, load, parse
from pyenvoy.config.bootstrap import Bootstrap
from pyenvoy.config.reader import parseDuration

ECHO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

L0 = "static_resources.listeners[0]"
C0 = "static_resources.clusters[0]"
F0 = f"{L0}.filter_chains[0].filters[0]"
TC = f"{F0}.typed_config"

# tcp_proxy's parseConfig imports pyenvoy.access_log, written separately.
_NO_ACCESS_LOG = (None if importlib.util.find_spec("pyenvoy.access_log") is not None
                  else "pyenvoy.access_log does not exist yet; tcp_proxy cannot load")


def echo() -> dict[str, Any]:
    """
    An echo network filter entry.
    """
    return {"name": "envoy.filters.network.echo", "typed_config": {"@type": ECHO_TYPE}}


def tcpProxy(**fields: Any) -> dict[str, Any]:
    """
    A tcp_proxy network filter entry with C{fields} in its typed_config.
    """
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY_TYPE, **fields}}


def socketAddress(address: Any, port: Any) -> dict[str, Any]:
    """
    An C{Address} mapping holding a C{socket_address}.
    """
    return {"socket_address": {"address": address, "port_value": port}}


def listener(name: Any = "main", address: Any = "127.0.0.1", port: Any = 10000,
             filters: Sequence[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """
    A listener with one filter chain (echo unless C{filters} is given).
    """
    raw = {"name": name, "address": socketAddress(address, port),
           "filter_chains": [{"filters": list(filters) if filters is not None else [echo()]}]}
    raw.update(extra)
    return raw


def cluster(name: Any = "backend", endpoints: Sequence[tuple[str, int]] = (("127.0.0.1", 8080),),
            **extra: Any) -> dict[str, Any]:
    """
    A cluster with one locality holding C{endpoints}.
    """
    raw = {
        "name": name,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": socketAddress(a, p)}} for a, p in endpoints]}],
        },
    }
    raw.update(extra)
    return raw


def bootstrap(listeners: Sequence[Any] = (), clusters: Sequence[Any] = (),
              **extra: Any) -> dict[str, Any]:
    """
    A bootstrap mapping with C{static_resources} and any top-level C{extra}.
    """
    static: dict[str, Any] = {}
    if listeners:
        static["listeners"] = list(listeners)
    if clusters:
        static["clusters"] = list(clusters)
    raw: dict[str, Any] = {"static_resources": static}
    raw.update(extra)
    return raw


def fromYAML(text: str) -> Any:
    """
    Load an indented YAML snippet as a test writes it.
    """
    return yaml.safe_load(textwrap.dedent(text))


class ConfigTestCase(SynchronousTestCase):
    """
    Assertions about the errors a config produces.
    """

    def errorsOf(self, raw: Any) -> list[tuple[str, str]]:
        """
        The C{(path, message)} of each error C{raw} produces (it must fail).
        """
        e = self.assertRaises(ConfigErrors, parse, raw)
        return [(error.path, error.message) for error in e.errors]

    def assertErrors(self, raw: Any, expected: Sequence[tuple[str, str]]) -> None:
        """
        C{raw} fails with exactly C{expected}, in order: each path exactly,
        each message containing the given fragment.
        """
        errors = self.errorsOf(raw)
        self.assertEqual([p for p, _ in errors], [p for p, _ in expected], errors)
        for (path, message), (_, fragment) in zip(errors, expected):
            self.assertIn(fragment, message, f"at {path}")

    def assertError(self, raw: Any, path: str, fragment: str) -> None:
        """
        C{raw} fails with the one error at C{path} whose message contains
        C{fragment}.
        """
        self.assertErrors(raw, [(path, fragment)])


class DefaultsTests(SynchronousTestCase):
    """
    What a field left out means is what it means in Envoy.
    """

    def setUp(self) -> None:
        self.config = parse(bootstrap([listener()], [cluster()]))
        self.cluster = self.config.clusters["backend"]
        self.listener = self.config.listeners[0]

    def test_emptyBootstrap(self) -> None:
        """
        C{{}} is a valid bootstrap with nothing in it; an empty file (no
        YAML document at all) is refused, as Envoy refuses it.
        """
        config = parse({})
        self.assertIsInstance(config, Bootstrap)
        self.assertEqual((config.admin, config.listeners, config.clusters), (None, (), {}))
        e = self.assertRaises(ConfigErrors, parse, None)
        self.assertIn("the config is empty", str(e))

    def test_clusterType(self) -> None:
        """
        A cluster without C{type} is STATIC.
        """
        self.assertEqual(self.cluster.type, "STATIC")

    def test_connectTimeout(self) -> None:
        """
        C{connect_timeout} defaults to 5s.
        """
        self.assertEqual(self.cluster.connectTimeout, 5.0)

    def test_lbPolicy(self) -> None:
        """
        C{lb_policy} defaults to ROUND_ROBIN.
        """
        self.assertEqual(self.cluster.lbPolicy, "ROUND_ROBIN")

    def test_leastRequestChoiceCount(self) -> None:
        """
        LEAST_REQUEST picks the best of 2 unless told otherwise.
        """
        self.assertEqual(self.cluster.leastRequestChoiceCount, 2)

    def test_circuitBreakers(self) -> None:
        """
        Both priorities default to 1024 cx / 1024 pending / 1024 rq / 3 retries.
        """
        for thresholds, priority in ((self.cluster.thresholds, "DEFAULT"),
                                     (self.cluster.highThresholds, "HIGH")):
            self.assertEqual(
                (thresholds.priority, thresholds.maxConnections, thresholds.maxPendingRequests,
                 thresholds.maxRequests, thresholds.maxRetries, thresholds.trackRemaining),
                (priority, 1024, 1024, 1024, 3, False))

    def test_partialCircuitBreakers(self) -> None:
        """
        Setting only C{max_connections} keeps every other threshold's default.
        """
        config = parse(bootstrap(clusters=[cluster(
            circuit_breakers={"thresholds": [{"max_connections": 7}]})]))
        backend = config.clusters["backend"]
        self.assertEqual((backend.thresholds.maxConnections, backend.thresholds.maxPendingRequests),
                         (7, 1024))
        self.assertEqual(backend.highThresholds.maxConnections, 1024)

    def test_clusterBufferLimit(self) -> None:
        """
        A cluster's C{per_connection_buffer_limit_bytes} defaults to 1 MiB.
        """
        self.assertEqual(self.cluster.perConnectionBufferLimitBytes, 1024 * 1024)

    def test_dns(self) -> None:
        """
        DNS clusters refresh every 5s, look up AUTO, and ignore TTLs.
        """
        self.assertEqual(
            (self.cluster.dnsRefreshRate, self.cluster.dnsLookupFamily, self.cluster.respectDnsTtl),
            (5.0, "AUTO", False))

    def test_endpointWeight(self) -> None:
        """
        An endpoint's C{load_balancing_weight} defaults to 1.
        """
        self.assertEqual(self.cluster.endpoints[0].weight, 1)

    def test_listenerBufferLimit(self) -> None:
        """
        A listener's C{per_connection_buffer_limit_bytes} defaults to 1 MiB.
        """
        self.assertEqual(self.listener.perConnectionBufferLimitBytes, 1024 * 1024)

    def test_listenerFiltersTimeout(self) -> None:
        """
        listener_filters_timeout defaults to 15s, continue_on_… to false.
        """
        self.assertEqual(self.listener.listenerFiltersTimeout, 15.0)
        self.assertFalse(self.listener.continueOnListenerFiltersTimeout)

    def test_listenerSocket(self) -> None:
        """
        A listener is TCP with a backlog of 1024 and DEFAULT draining.
        """
        self.assertEqual(
            (self.listener.address.protocol, self.listener.tcpBacklogSize,
             self.listener.drainType),
            ("TCP", 1024, "DEFAULT"))

    def test_listenerStatRoot(self) -> None:
        """
        Without C{stat_prefix}, listener stats are rooted at the address.
        """
        self.assertEqual(self.listener.statRoot, "listener.127.0.0.1:10000")

    def test_filterChainName(self) -> None:
        """
        An unnamed filter chain is named by its index.
        """
        self.assertEqual(self.listener.filterChains[0].name, "filter_chain_0")


class DurationTests(ConfigTestCase):
    """
    Durations are written as Envoy's YAML writes them.
    """

    def connectTimeout(self, value: Any) -> float:
        """
        The connect timeout a cluster gets for C{connect_timeout: value}.
        """
        config = parse(bootstrap(clusters=[cluster(connect_timeout=value)]))
        return config.clusters["backend"].connectTimeout

    def test_fractionalSeconds(self) -> None:
        """
        C{"0.25s"} is a quarter of a second.
        """
        self.assertEqual(self.connectTimeout("0.25s"), 0.25)

    def test_wholeSeconds(self) -> None:
        """
        C{"300s"} is five minutes.
        """
        self.assertEqual(self.connectTimeout("300s"), 300.0)

    def test_secondsAndNanos(self) -> None:
        """
        The C{{seconds, nanos}} form adds both parts.
        """
        self.assertEqual(self.connectTimeout({"seconds": 1, "nanos": 500000000}), 1.5)

    def test_secondsAsString(self) -> None:
        """
        proto3 JSON writes int64 seconds as a string; that is accepted.
        """
        self.assertEqual(parseDuration({"seconds": "2"}), 2.0)

    def test_nanosOnly(self) -> None:
        """
        C{{nanos: 250000000}} alone is a quarter of a second.
        """
        self.assertEqual(parseDuration({"nanos": 250000000}), 0.25)

    def test_milliseconds(self) -> None:
        """
        C{"250ms"} is not how a protobuf Duration is written.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout="250ms")]),
                         f"{C0}.connect_timeout",
                         "expected a duration like '0.25s', got the string '250ms'")

    def test_bareNumber(self) -> None:
        """
        A bare number has no unit and is refused.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout=5)]),
                         f"{C0}.connect_timeout",
                         "expected a duration like '0.25s', got an integer")

    def test_word(self) -> None:
        """
        A word is refused with what was given.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout="soon")]),
                         f"{C0}.connect_timeout",
                         "expected a duration like '0.25s', got the string 'soon'")

    def test_negative(self) -> None:
        """
        A negative duration is refused.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout="-1s")]),
                         f"{C0}.connect_timeout", "duration must not be negative, got '-1s'")

    def test_unknownMappingKey(self) -> None:
        """
        A mapping with keys other than seconds and nanos is refused.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout={"millis": 5})]),
                         f"{C0}.connect_timeout",
                         "expected a duration like '0.25s', got a mapping")

    def test_boolean(self) -> None:
        """
        C{true} is not a duration.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout=True)]),
                         f"{C0}.connect_timeout",
                         "expected a duration like '0.25s', got a boolean")

    def test_zeroConnectTimeout(self) -> None:
        """
        C{connect_timeout} must be greater than zero, as in Envoy.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout="0s")]),
                         f"{C0}.connect_timeout", "must be greater than 0s, got '0s'")

    def test_zeroListenerFiltersTimeout(self) -> None:
        """
        C{listener_filters_timeout: 0s} is allowed: it disables the timeout.
        """
        config = parse(bootstrap([listener(listener_filters_timeout="0s")]))
        self.assertEqual(config.listeners[0].listenerFiltersTimeout, 0.0)

    def test_tinyDnsRefreshRate(self) -> None:
        """
        C{dns_refresh_rate} must be at least 1ms.
        """
        self.assertError(bootstrap(clusters=[cluster(type="STRICT_DNS",
                                                     dns_refresh_rate="0.0001s")]),
                         f"{C0}.dns_refresh_rate", "must be at least 1ms")


class CamelCaseTests(ConfigTestCase):
    """
    proto3 JSON's lowerCamelCase field names are accepted, as Envoy does.
    """

    def test_camelCaseEverywhere(self) -> None:
        """
        A config written entirely in camelCase reads like the snake_case one.
        """
        config = parse({
            "staticResources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 10000}},
                    "perConnectionBufferLimitBytes": 4096,
                    "listenerFiltersTimeout": "2s",
                    "filterChains": [{"filters": [
                        {"name": "envoy.filters.network.echo",
                         "typedConfig": {"@type": ECHO_TYPE}}]}],
                }],
                "clusters": [{
                    "name": "backend",
                    "connectTimeout": "0.25s",
                    "lbPolicy": "RANDOM",
                    "circuitBreakers": {"thresholds": [{"maxConnections": 7}]},
                    "loadAssignment": {"clusterName": "backend",
                                       "endpoints": [{"lbEndpoints": [{"endpoint": {
                        "address": {"socketAddress": {"address": "10.0.0.1",
                                                      "portValue": 80}}}}]}]},
                }],
            },
        })
        main = config.listeners[0]
        backend = config.clusters["backend"]
        self.assertEqual((main.address.port, main.perConnectionBufferLimitBytes,
                          main.listenerFiltersTimeout), (10000, 4096, 2.0))
        self.assertEqual((backend.connectTimeout, backend.lbPolicy,
                          backend.thresholds.maxConnections, str(backend.endpoints[0].address)),
                         (0.25, "RANDOM", 7, "10.0.0.1:80"))

    def test_sameFieldTwice(self) -> None:
        """
        One field given in both spellings is an error at the second one.
        """
        self.assertError(bootstrap(clusters=[cluster(connect_timeout="1s", connectTimeout="2s")]),
                         f"{C0}.connectTimeout", "field 'connect_timeout' given twice")

    def test_unknownCamelCaseField(self) -> None:
        """
        An unknown camelCase field is reported as written.
        """
        self.assertError(bootstrap(clusters=[cluster(connectTimout="1s")]),
                         f"{C0}.connectTimout", "unknown field 'connectTimout'")

    def test_wrappedInteger(self) -> None:
        """
        A C{UInt32Value} may be written C{{value: N}}, an integer as a string.
        """
        config = parse(bootstrap(clusters=[cluster(
            per_connection_buffer_limit_bytes={"value": 2048},
            circuit_breakers={"thresholds": [{"max_connections": "5"}]})]))
        backend = config.clusters["backend"]
        self.assertEqual((backend.perConnectionBufferLimitBytes,
                          backend.thresholds.maxConnections), (2048, 5))


class LoadTests(ConfigTestCase):
    """
    L{pyenvoy.config.load} reads YAML, or JSON by the C{.json} ending.
    """

    def write(self, name: str, text: str) -> str:
        """
        Write C{text} to a fresh file called C{name}; return its path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_yamlFile(self) -> None:
        """
        An Envoy YAML file loads, and remembers where it came from.
        """
        path = self.write("envoy.yaml", textwrap.dedent(f"""\
            static_resources:
              listeners:
              - name: main
                address:
                  socket_address: {{address: 127.0.0.1, port_value: 10000}}
                filter_chains:
                - filters:
                  - name: envoy.filters.network.echo
                    typed_config:
                      "@type": {ECHO_TYPE}
            """))
        config = load(path)
        self.assertEqual((config.listeners[0].name, config.sourcePath), ("main", path))

    def test_jsonFile(self) -> None:
        """
        A C{.json} file is read as JSON, camelCase names and all.
        """
        path = self.write("envoy.json", json.dumps({
            "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 9901}}},
            "staticResources": {"clusters": [{
                "name": "backend", "connectTimeout": "0.25s",
                "loadAssignment": {"clusterName": "backend", "endpoints": [{"lbEndpoints": [{
                    "endpoint": {"address": {"socketAddress": {"address": "10.0.0.1",
                                                               "portValue": 80}}}}]}]},
            }]},
        }))
        config = load(path)
        self.assertEqual(str(config.admin.address), "127.0.0.1:9901")
        self.assertEqual(config.clusters["backend"].connectTimeout, 0.25)

    def test_jsonErrorsNameThePath(self) -> None:
        """
        Errors in a JSON file name the path as they do for YAML.
        """
        path = self.write("envoy.json", json.dumps(
            {"static_resources": {"clusters": [cluster(lb_policy="FASTEST")]}}))
        e = self.assertRaises(ConfigErrors, load, path)
        self.assertEqual([error.path for error in e.errors], [f"{C0}.lb_policy"])
        self.assertIn("expected one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, "
                      "got the string 'FASTEST'", e.errors[0].message)

    def test_badJSON(self) -> None:
        """
        A C{.json} file that is not JSON is one error naming the file.
        """
        path = self.write("envoy.json", "{static_resources: []}")
        e = self.assertRaises(ConfigErrors, load, path)
        self.assertEqual([error.path for error in e.errors], [""])
        self.assertIn(f"{path}: not valid YAML/JSON", e.errors[0].message)

    def test_badYAML(self) -> None:
        """
        A YAML file that does not parse is one error naming the file.
        """
        path = self.write("envoy.yaml", "static_resources: [\n")
        e = self.assertRaises(ConfigErrors, load, path)
        self.assertEqual([error.path for error in e.errors], [""])
        self.assertIn(f"{path}: not valid YAML/JSON", e.errors[0].message)

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is one error saying why.
        """
        path = os.path.join(self.mktemp(), "envoy.yaml")
        e = self.assertRaises(ConfigErrors, load, path)
        self.assertEqual([error.path for error in e.errors], [""])
        self.assertIn(f"cannot read config file {path!r}: No such file or directory",
                      e.errors[0].message)


class BootstrapTests(ConfigTestCase):
    """
    The top level: what it may hold, and all errors reported at once.
    """

    def test_notAMapping(self) -> None:
        """
        A bootstrap that is a list is refused at the root.
        """
        self.assertError([], "", "expected a mapping, got a list")

    def test_unknownTopLevelField(self) -> None:
        """
        A misspelt top-level field is unknown.
        """
        self.assertError(bootstrap(static_resourcez={}), "static_resourcez",
                         "unknown field 'static_resourcez'")

    def test_unsupportedTopLevelFields(self) -> None:
        """
        Envoy bootstrap fields pyenvoy lacks are each said to be unsupported.
        """
        self.assertErrors(
            bootstrap(dynamic_resources={}, stats_sinks=[], layered_runtime={}),
            [("dynamic_resources", "field 'dynamic_resources' is not supported by pyenvoy yet"),
             ("stats_sinks", "field 'stats_sinks' is not supported by pyenvoy yet"),
             ("layered_runtime", "field 'layered_runtime' is not supported by pyenvoy yet")])

    def test_secretsUnsupported(self) -> None:
        """
        C{static_resources.secrets} is an Envoy field pyenvoy lacks.
        """
        self.assertError({"static_resources": {"secrets": []}}, "static_resources.secrets",
                         "field 'secrets' is not supported by pyenvoy yet")

    def test_listenersNotAList(self) -> None:
        """
        C{listeners} must be a list.
        """
        self.assertError({"static_resources": {"listeners": {"name": "main"}}},
                         "static_resources.listeners", "expected a list, got a mapping")

    def test_listenerNotAMapping(self) -> None:
        """
        Each listener must be a mapping.
        """
        self.assertError({"static_resources": {"listeners": [5]}}, L0,
                         "expected a mapping, got an integer")

    def test_node(self) -> None:
        """
        C{node.id} and C{node.cluster} are read; an unknown node field is not.
        """
        config = parse(bootstrap(node={"id": "sidecar-1", "cluster": "web"}))
        self.assertEqual(config.node, {"id": "sidecar-1", "cluster": "web"})
        self.assertError(bootstrap(node={"idd": "x"}), "node.idd", "unknown field 'idd'")

    def test_manyErrorsAtOnce(self) -> None:
        """
        One run reports every problem in the file, one line each.
        """
        raw = fromYAML(f"""
            admin:
              address:
                socket_address: {{address: localhost, port_value: 9901}}
            static_resources:
              listeners:
              - name: main
                address:
                  socket_address: {{address: 127.0.0.1, port_value: 70000}}
                transparent: true
                filter_chains:
                - filters:
                  - name: envoy.filters.network.echoo
              - name: main
                address:
                  socket_address: {{address: 127.0.0.1, port_value: 10001}}
                filter_chains:
                - filters:
                  - name: envoy.filters.network.echo
                    typed_config:
                      "@type": {ECHO_TYPE}
              clusters:
              - name: backend
                connect_timeout: soon
                lb_policy: CLUSTER_PROVIDED
              - name: backend
            """)
        e = self.assertRaises(ConfigErrors, parse, raw)
        self.assertEqual(len(e.errors), 8)
        self.assertEqual(len(str(e).splitlines()), 8)
        self.assertEqual([error.path for error in e.errors], [
            "admin.address.socket_address.address",
            f"{C0}.connect_timeout",
            f"{C0}.lb_policy",
            "static_resources.clusters[1].name",
            f"{L0}.address.socket_address.port_value",
            f"{F0}.name",
            f"{L0}.transparent",
            "static_resources.listeners[1].name",
        ])
        self.assertIn(f"{L0}.address.socket_address.port_value: must be at most 65535, got 70000",
                      str(e))


class AdminTests(ConfigTestCase):
    """
    The C{admin} block.
    """

    def test_address(self) -> None:
        """
        C{admin.address} is read as an IP and port.
        """
        config = parse({"admin": {"address": socketAddress("127.0.0.1", 9901)}})
        self.assertEqual((config.admin.address.address, config.admin.address.port),
                         ("127.0.0.1", 9901))

    def test_noAdmin(self) -> None:
        """
        Without C{admin}, there is no admin listener.
        """
        self.assertIsNone(parse({}).admin)

    def test_missingAddress(self) -> None:
        """
        An admin block without an address is an error.
        """
        self.assertError({"admin": {}}, "admin", "missing required field 'address'")

    def test_hostName(self) -> None:
        """
        The admin address must be an IP, not a name.
        """
        self.assertError({"admin": {"address": socketAddress("localhost", 9901)}},
                         "admin.address.socket_address.address",
                         "'localhost' is not an IP address")

    def test_accessLogPathUnsupported(self) -> None:
        """
        C{admin.access_log_path} is Envoy's but not pyenvoy's yet.
        """
        self.assertError({"admin": {"address": socketAddress("127.0.0.1", 9901),
                                    "access_log_path": "/dev/null"}},
                         "admin.access_log_path",
                         "field 'access_log_path' is not supported by pyenvoy yet")

    def test_pipeUnsupported(self) -> None:
        """
        A unix-socket admin address is not supported yet.
        """
        self.assertError({"admin": {"address": {"pipe": {"path": "/tmp/admin"}}}},
                         "admin.address",
                         "pipe addresses are not supported by pyenvoy yet; use socket_address")


class ListenerTests(ConfigTestCase):
    """
    C{static_resources.listeners[]}: addresses, names, filter chains.
    """

    def test_fields(self) -> None:
        """
        The supported listener fields are read.
        """
        config = parse(bootstrap([listener(
            stat_prefix="front", per_connection_buffer_limit_bytes=32768,
            listener_filters_timeout="1s", continue_on_listener_filters_timeout=True,
            tcp_backlog_size=16, drain_type="MODIFY_ONLY")]))
        main = config.listeners[0]
        self.assertEqual(
            (main.statRoot, main.perConnectionBufferLimitBytes, main.listenerFiltersTimeout,
             main.continueOnListenerFiltersTimeout, main.tcpBacklogSize, main.drainType,
             main.path),
            ("listener.front", 32768, 1.0, True, 16, "MODIFY_ONLY", L0))

    def test_ipv6(self) -> None:
        """
        An IPv6 address is accepted and printed in brackets.
        """
        config = parse(bootstrap([listener(address="::1")]))
        self.assertEqual(str(config.listeners[0].address), "[::1]:10000")

    def test_portZero(self) -> None:
        """
        Port 0 (let the OS pick) is allowed, as in Envoy.
        """
        self.assertEqual(parse(bootstrap([listener(port=0)])).listeners[0].address.port, 0)

    def test_duplicateName(self) -> None:
        """
        Two listeners may not share a name; the second is reported.
        """
        self.assertError(bootstrap([listener(), listener(port=10001)]),
                         "static_resources.listeners[1].name", "duplicate listener name 'main'")

    def test_missingName(self) -> None:
        """
        A listener needs a name.
        """
        raw = listener()
        del raw["name"]
        self.assertError(bootstrap([raw]), L0, "missing required field 'name'")

    def test_emptyName(self) -> None:
        """
        A listener's name may not be empty.
        """
        self.assertError(bootstrap([listener(name="")]), f"{L0}.name", "must not be empty")

    def test_missingAddress(self) -> None:
        """
        A listener needs an address.
        """
        raw = listener()
        del raw["address"]
        self.assertError(bootstrap([raw]), L0, "missing required field 'address'")

    def test_hostName(self) -> None:
        """
        A listener binds an IP, not a host name.
        """
        self.assertError(bootstrap([listener(address="localhost")]),
                         f"{L0}.address.socket_address.address",
                         "'localhost' is not an IP address")

    def test_badIP(self) -> None:
        """
        A malformed IP is not an IP address.
        """
        self.assertError(bootstrap([listener(address="127.0.0.256")]),
                         f"{L0}.address.socket_address.address",
                         "'127.0.0.256' is not an IP address")

    def test_emptyAddress(self) -> None:
        """
        An empty address is refused.
        """
        self.assertError(bootstrap([listener(address="")]),
                         f"{L0}.address.socket_address.address", "must not be empty")

    def test_portTooBig(self) -> None:
        """
        A port above 65535 is refused.
        """
        self.assertError(bootstrap([listener(port=70000)]),
                         f"{L0}.address.socket_address.port_value",
                         "must be at most 65535, got 70000")

    def test_portNegative(self) -> None:
        """
        A negative port is refused.
        """
        self.assertError(bootstrap([listener(port=-1)]),
                         f"{L0}.address.socket_address.port_value", "must be at least 0, got -1")

    def test_portWrongType(self) -> None:
        """
        A port that is not an integer is a type error.
        """
        self.assertError(bootstrap([listener(port="http")]),
                         f"{L0}.address.socket_address.port_value",
                         "expected an integer, got the string 'http'")

    def test_missingPort(self) -> None:
        """
        A listener's socket address needs a port.
        """
        raw = listener()
        del raw["address"]["socket_address"]["port_value"]
        self.assertError(bootstrap([raw]), f"{L0}.address.socket_address",
                         "missing required field 'port_value'")

    def test_addressWrongType(self) -> None:
        """
        An address that is not a string is a type error.
        """
        self.assertError(bootstrap([listener(address=127)]),
                         f"{L0}.address.socket_address.address",
                         "expected a string, got an integer")

    def test_pipeUnsupported(self) -> None:
        """
        A listener on a unix socket is not supported yet.
        """
        self.assertError(bootstrap([listener(address=None) | {
            "address": {"pipe": {"path": "/tmp/l"}}}]),
            f"{L0}.address", "pipe addresses are not supported by pyenvoy yet")

    def test_noFilterChain(self) -> None:
        """
        A TCP listener without a filter chain is refused.
        """
        raw = listener()
        del raw["filter_chains"]
        self.assertError(bootstrap([raw]), f"{L0}.filter_chains",
                         "a TCP listener needs at least one filter chain")

    def test_twoFilterChains(self) -> None:
        """
        Two chains without C{filter_chain_match} have the same rules: refused as in Envoy.
        """
        raw = listener()
        raw["filter_chains"].append({"filters": [echo()]})
        self.assertError(bootstrap([raw]), f"{L0}.filter_chains",
                         "filter chain 'filter_chain_1' has the same matching rules defined "
                         "as 'filter_chain_0'")

    def test_defaultFilterChain(self) -> None:
        """
        A C{default_filter_chain} alone is enough.
        """
        raw = listener(default_filter_chain={"filters": [echo()]})
        del raw["filter_chains"]
        config = parse(bootstrap([raw]))
        self.assertEqual(config.listeners[0].defaultFilterChain.name, "default_filter_chain")

    def test_unknownField(self) -> None:
        """
        A misspelt listener field is unknown.
        """
        self.assertError(bootstrap([listener(stat_prefx="x")]), f"{L0}.stat_prefx",
                         "unknown field 'stat_prefx'")

    def test_unsupportedFields(self) -> None:
        """
        Envoy listener fields pyenvoy lacks are each said to be unsupported.
        """
        self.assertErrors(bootstrap([listener(transparent=True, socket_options=[],
                                              access_log=[])]), [
            (f"{L0}.transparent", "field 'transparent' is not supported by pyenvoy yet"),
            (f"{L0}.socket_options", "field 'socket_options' is not supported by pyenvoy yet"),
            (f"{L0}.access_log", "field 'access_log' is not supported by pyenvoy yet"),
        ])

    def test_unsupportedChainField(self) -> None:
        """
        A filter chain's C{transport_socket_connect_timeout} is not supported yet.
        """
        raw = listener()
        raw["filter_chains"][0]["transport_socket_connect_timeout"] = "1s"
        self.assertError(bootstrap([raw]),
                         f"{L0}.filter_chains[0].transport_socket_connect_timeout",
                         "field 'transport_socket_connect_timeout' is not supported by "
                         "pyenvoy yet")

    def test_wrongType(self) -> None:
        """
        A listener field of the wrong type says what it got.
        """
        self.assertError(bootstrap([listener(per_connection_buffer_limit_bytes="lots")]),
                         f"{L0}.per_connection_buffer_limit_bytes",
                         "expected an integer, got the string 'lots'")

    def test_unknownListenerFilter(self) -> None:
        """
        A listener filter nobody provides is unknown.
        """
        self.assertError(bootstrap([listener(listener_filters=[
            {"name": "envoy.filters.listener.original_dst"}])]),
            f"{L0}.listener_filters[0].name",
            "unknown listener filter 'envoy.filters.listener.original_dst'")


class FilterTests(ConfigTestCase):
    """
    Network filters are found by C{@type}, or by name without typed_config.
    """

    def test_byType(self) -> None:
        """
        The echo filter is found by its C{@type}.
        """
        config = parse(bootstrap([listener()]))
        found = config.listeners[0].filterChains[0].filters[0]
        self.assertEqual((found.name, found.factory.typeURL, found.path),
                         ("envoy.filters.network.echo", ECHO_TYPE, F0))

    def test_byNameWithoutTypedConfig(self) -> None:
        """
        Without C{typed_config}, the filter is found by its name.
        """
        config = parse(bootstrap([listener(filters=[{"name": "envoy.filters.network.echo"}])]))
        self.assertEqual(config.listeners[0].filterChains[0].filters[0].factory.typeURL,
                         ECHO_TYPE)

    def test_typeWinsOverName(self) -> None:
        """
        As in Envoy, C{@type} picks the filter whatever its name says.
        """
        config = parse(bootstrap([listener(filters=[
            {"name": "my-echo", "typed_config": {"@type": ECHO_TYPE}}])]))
        self.assertEqual(config.listeners[0].filterChains[0].filters[0].factory.typeURL,
                         ECHO_TYPE)

    def test_unknownName(self) -> None:
        """
        An unknown filter name is reported with the names known.
        """
        self.assertError(
            bootstrap([listener(filters=[{"name": "envoy.filters.network.echoo"}])]),
            f"{F0}.name",
            "unknown network filter 'envoy.filters.network.echoo'; known: "
            "envoy.filters.network.client_ssl_auth, "
            "envoy.filters.network.echo, envoy.filters.network.mongo_proxy, "
            "envoy.filters.network.postgres_proxy, envoy.filters.network.redis_proxy, "
            "envoy.filters.network.tcp_proxy")

    def test_unknownType(self) -> None:
        """
        An unknown C{@type} is reported at C{@type}, with the types known.
        """
        self.assertError(
            bootstrap([listener(filters=[{
                "name": "envoy.filters.network.thrift_proxy",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters."
                                          "network.thrift_proxy.v3.ThriftProxy"}}])]),
            f"{TC}.@type",
            "unknown network filter @type 'type.googleapis.com/envoy.extensions.filters."
            "network.thrift_proxy.v3.ThriftProxy'; known: type.googleapis.com/envoy."
            f"extensions.filters.network.client_ssl_auth.v3.ClientSSLAuth, {ECHO_TYPE}, "
            "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy, "
            "type.googleapis.com/envoy.extensions.filters.network.postgres_proxy.v3alpha."
            "PostgresProxy, type.googleapis.com/envoy.extensions.filters.network.redis_proxy."
            f"v3.RedisProxy, {TCP_PROXY_TYPE}")

    def test_missingType(self) -> None:
        """
        A C{typed_config} without C{@type} is refused.
        """
        self.assertError(bootstrap([listener(filters=[
            {"name": "envoy.filters.network.echo", "typed_config": {}}])]),
            TC, "missing required field '@type'")

    def test_missingName(self) -> None:
        """
        A filter needs a name even when its C{@type} says what it is.
        """
        self.assertError(bootstrap([listener(filters=[{"typed_config": {"@type": ECHO_TYPE}}])]),
                         F0, "missing required field 'name'")

    def test_unknownFieldInTypedConfig(self) -> None:
        """
        The echo filter has no settings; a field in its config is unknown.
        """
        self.assertError(bootstrap([listener(filters=[{
            "name": "envoy.filters.network.echo",
            "typed_config": {"@type": ECHO_TYPE, "loud": True}}])]),
            f"{TC}.loud", "unknown field 'loud'")

    def test_filterDisabledUnsupported(self) -> None:
        """
        A filter's C{filter_disabled} is not supported yet.
        """
        self.assertError(bootstrap([listener(filters=[echo() | {"filter_disabled": {}}])]),
                         f"{F0}.filter_disabled",
                         "field 'filter_disabled' is not supported by pyenvoy yet")

    def test_terminalNotLast(self) -> None:
        """
        A terminal filter followed by another filter is refused.
        """
        self.assertError(bootstrap([listener(filters=[echo(), echo()])]), F0,
                         "terminal filter 'envoy.filters.network.echo' must be the last "
                         "filter in the chain")

    def test_filtersNotAList(self) -> None:
        """
        C{filters} must be a list.
        """
        self.assertError(bootstrap([listener() | {"filter_chains": [{"filters": echo()}]}]),
                         f"{L0}.filter_chains[0].filters", "expected a list, got a mapping")


class ClusterTests(ConfigTestCase):
    """
    C{static_resources.clusters[]}: types, policies, endpoints, thresholds.
    """

    def test_fields(self) -> None:
        """
        The supported cluster fields are read.
        """
        config = parse(bootstrap(clusters=[cluster(
            "backend", [("db.internal", 5432)], type="STRICT_DNS", connect_timeout="0.25s",
            lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 3},
            dns_refresh_rate="10s", respect_dns_ttl=True, dns_lookup_family="V4_ONLY",
            alt_stat_name="db", per_connection_buffer_limit_bytes=65536,
            circuit_breakers={"thresholds": [
                {"max_connections": 10, "max_pending_requests": 20, "max_requests": 30,
                 "max_retries": 4, "track_remaining": True},
                {"priority": "HIGH", "max_connections": 100}]})]))
        backend = config.clusters["backend"]
        self.assertEqual(
            (backend.type, backend.connectTimeout, backend.lbPolicy,
             backend.leastRequestChoiceCount, backend.dnsRefreshRate, backend.respectDnsTtl,
             backend.dnsLookupFamily, backend.statName, backend.perConnectionBufferLimitBytes,
             backend.path),
            ("STRICT_DNS", 0.25, "LEAST_REQUEST", 3, 10.0, True, "V4_ONLY", "db", 65536, C0))
        self.assertEqual(
            (backend.thresholds.maxConnections, backend.thresholds.maxPendingRequests,
             backend.thresholds.maxRequests, backend.thresholds.maxRetries,
             backend.thresholds.trackRemaining, backend.highThresholds.maxConnections),
            (10, 20, 30, 4, True, 100))
        self.assertEqual(str(backend.endpoints[0].address), "db.internal:5432")

    def test_lbPolicies(self) -> None:
        """
        ROUND_ROBIN, RANDOM and LEAST_REQUEST are all accepted.
        """
        for policy in ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"):
            config = parse(bootstrap(clusters=[cluster(lb_policy=policy)]))
            self.assertEqual(config.clusters["backend"].lbPolicy, policy)

    def test_types(self) -> None:
        """
        STATIC, STRICT_DNS and LOGICAL_DNS are all accepted.
        """
        for kind in ("STATIC", "STRICT_DNS", "LOGICAL_DNS"):
            config = parse(bootstrap(clusters=[cluster(type=kind)]))
            self.assertEqual(config.clusters["backend"].type, kind)

    def test_weightsAndLocalities(self) -> None:
        """
        Endpoints from every locality are kept, with their weights.
        """
        raw = cluster(endpoints=[("10.0.0.1", 80)])
        raw["load_assignment"]["endpoints"].append({"lb_endpoints": [{
            "endpoint": {"address": socketAddress("10.0.0.2", 81)},
            "load_balancing_weight": 3}]})
        endpoints = parse(bootstrap(clusters=[raw])).clusters["backend"].endpoints
        self.assertEqual([(str(e.address), e.weight) for e in endpoints],
                         [("10.0.0.1:80", 1), ("10.0.0.2:81", 3)])

    def test_noLoadAssignment(self) -> None:
        """
        A cluster without endpoints is accepted (it just has no hosts).
        """
        self.assertEqual(parse(bootstrap(clusters=[{"name": "empty"}])).clusters["empty"].endpoints,
                         ())

    def test_duplicateName(self) -> None:
        """
        Two clusters may not share a name; the second is reported.
        """
        self.assertError(bootstrap(clusters=[cluster(), cluster()]),
                         "static_resources.clusters[1].name", "duplicate cluster name 'backend'")

    def test_missingName(self) -> None:
        """
        A cluster needs a name.
        """
        self.assertError(bootstrap(clusters=[{"connect_timeout": "1s"}]), C0,
                         "missing required field 'name'")

    def test_staticWithHostNamePreciseError(self) -> None:
        """
        The STATIC-with-a-name error names the endpoint's own address path.
        """
        self.assertError(
            bootstrap(clusters=[cluster(endpoints=[("10.0.0.1", 80), ("db.internal", 5432)])]),
            f"{C0}.load_assignment.endpoints[0].lb_endpoints[1].endpoint.address."
            "socket_address.address",
            "'db.internal' is not an IP address")


    def test_logicalDnsTwoEndpoints(self) -> None:
        """
        A LOGICAL_DNS cluster takes exactly one endpoint.
        """
        self.assertError(bootstrap(clusters=[cluster(
            type="LOGICAL_DNS", endpoints=[("a.internal", 80), ("b.internal", 80)])]),
            f"{C0}.load_assignment", "LOGICAL_DNS clusters must have a single endpoint")

    def test_unsupportedType(self) -> None:
        """
        EDS is Envoy's but not pyenvoy's yet.
        """
        self.assertError(bootstrap(clusters=[cluster(type="EDS")]), f"{C0}.type",
                         "EDS is not supported by pyenvoy yet; supported: STATIC, STRICT_DNS, "
                         "LOGICAL_DNS")

    def test_unknownType(self) -> None:
        """
        A type Envoy does not have either is an enum error.
        """
        self.assertError(bootstrap(clusters=[cluster(type="DYNAMIC")]), f"{C0}.type",
                         "expected one of STATIC, STRICT_DNS, LOGICAL_DNS, got the string "
                         "'DYNAMIC'")

    def test_unsupportedLbPolicy(self) -> None:
        """
        CLUSTER_PROVIDED and LOAD_BALANCING_POLICY_CONFIG are Envoy's but not
        pyenvoy's yet.
        """
        self.assertErrors(bootstrap(clusters=[
            cluster(lb_policy="CLUSTER_PROVIDED"),
            cluster("other", lb_policy="LOAD_BALANCING_POLICY_CONFIG")]), [
            (f"{C0}.lb_policy", "CLUSTER_PROVIDED is not supported by pyenvoy yet"),
            ("static_resources.clusters[1].lb_policy",
             "LOAD_BALANCING_POLICY_CONFIG is not supported by pyenvoy yet"),
        ])

    def test_unknownLbPolicy(self) -> None:
        """
        An lb_policy Envoy does not have is an enum error.
        """
        self.assertError(bootstrap(clusters=[cluster(lb_policy="round_robin")]),
                         f"{C0}.lb_policy",
                         "expected one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, "
                         "MAGLEV, got the string 'round_robin'")

    def test_unsupportedFields(self) -> None:
        """
        Outlier detection is said to be unsupported.
        """
        self.assertErrors(bootstrap(clusters=[cluster(outlier_detection={})]), [
            (f"{C0}.outlier_detection",
             "field 'outlier_detection' is not supported by pyenvoy yet"),
        ])

    def test_unknownField(self) -> None:
        """
        A misspelt cluster field is unknown.
        """
        self.assertError(bootstrap(clusters=[cluster(lb_polcy="RANDOM")]), f"{C0}.lb_polcy",
                         "unknown field 'lb_polcy'")

    def test_endpointWithoutPort(self) -> None:
        """
        An endpoint needs a port.
        """
        self.assertError(bootstrap(clusters=[cluster(endpoints=[("10.0.0.1", 0)])]),
                         f"{C0}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address."
                         "socket_address.port_value", "port_value must be set for an endpoint")

    def test_endpointWithoutAddress(self) -> None:
        """
        An endpoint needs an address.
        """
        raw = cluster()
        raw["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] = {}
        self.assertError(bootstrap(clusters=[raw]),
                         f"{C0}.load_assignment.endpoints[0].lb_endpoints[0].endpoint",
                         "missing required field 'address'")

    def test_zeroWeight(self) -> None:
        """
        An endpoint weight must be at least 1.
        """
        raw = cluster()
        raw["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0
        self.assertError(bootstrap(clusters=[raw]),
                         f"{C0}.load_assignment.endpoints[0].lb_endpoints[0]."
                         "load_balancing_weight", "must be at least 1, got 0")

    def test_priorityUnsupported(self) -> None:
        """
        Locality priorities other than 0 are not supported yet.
        """
        raw = cluster()
        raw["load_assignment"]["endpoints"][0]["priority"] = 1
        self.assertError(bootstrap(clusters=[raw]),
                         f"{C0}.load_assignment.endpoints[0].priority",
                         "priorities other than 0 are not supported by pyenvoy yet")

    def test_maxConnectionsWrongType(self) -> None:
        """
        C{max_connections} must be an integer.
        """
        self.assertError(bootstrap(clusters=[cluster(circuit_breakers={"thresholds": [
            {"max_connections": "many"}]})]),
            f"{C0}.circuit_breakers.thresholds[0].max_connections",
            "expected an integer, got the string 'many'")

    def test_priorityTwice(self) -> None:
        """
        Thresholds for one priority may be given only once.
        """
        self.assertError(bootstrap(clusters=[cluster(circuit_breakers={"thresholds": [
            {"max_connections": 1}, {"priority": "DEFAULT", "max_connections": 2}]})]),
            f"{C0}.circuit_breakers.thresholds[1].priority", "priority DEFAULT given twice")

    def test_retryBudgetUnsupported(self) -> None:
        """
        A retry budget is Envoy's but not pyenvoy's yet.
        """
        self.assertError(bootstrap(clusters=[cluster(circuit_breakers={"thresholds": [
            {"retry_budget": {}}]})]),
            f"{C0}.circuit_breakers.thresholds[0].retry_budget",
            "field 'retry_budget' is not supported by pyenvoy yet")

    def test_perHostThresholdsUnsupported(self) -> None:
        """
        Per-host thresholds are Envoy's but not pyenvoy's yet.
        """
        self.assertError(bootstrap(clusters=[cluster(circuit_breakers={
            "per_host_thresholds": []})]),
            f"{C0}.circuit_breakers.per_host_thresholds",
            "field 'per_host_thresholds' is not supported by pyenvoy yet")

    def test_choiceCountTooSmall(self) -> None:
        """
        LEAST_REQUEST needs at least two choices.
        """
        self.assertError(bootstrap(clusters=[cluster(
            lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 1})]),
            f"{C0}.least_request_lb_config.choice_count", "must be at least 2, got 1")

    def test_dnsLookupFamily(self) -> None:
        """
        An unknown C{dns_lookup_family} is an enum error.
        """
        self.assertError(bootstrap(clusters=[cluster(dns_lookup_family="V5_ONLY")]),
                         f"{C0}.dns_lookup_family",
                         "expected one of AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL, got the "
                         "string 'V5_ONLY'")


class NullValueTests(ConfigTestCase):
    """
    A required field written with no value (C{address:} in YAML) is as
    missing as one left out.
    """

    def test_nullListenerAddress(self) -> None:
        """
        C{address:} left empty is reported, not a silently dropped listener.
        """
        self.assertError(bootstrap([listener() | {"address": None}]), L0,
                         "missing required field 'address'")


    def test_nullClusterName(self) -> None:
        """
        C{name:} left empty is reported, not a silently dropped cluster.
        """
        raw = cluster(name=None)
        raw["load_assignment"]["cluster_name"] = "backend"
        self.assertError(bootstrap(clusters=[raw]), C0, "missing required field 'name'")

    def test_loadAssignmentNeedsClusterName(self) -> None:
        """
        A C{load_assignment} without a C{cluster_name} (or with an empty one)
        is refused, as Envoy's validation refuses it.
        """
        raw = cluster()
        del raw["load_assignment"]["cluster_name"]
        self.assertError(bootstrap(clusters=[raw]), f"{C0}.load_assignment",
                         "missing required field 'cluster_name'")
        raw = cluster()
        raw["load_assignment"]["cluster_name"] = ""
        self.assertError(bootstrap(clusters=[raw]), f"{C0}.load_assignment.cluster_name",
                         "must not be empty")



class UdpListenerTests(ConfigTestCase):
    """
    C{protocol: UDP} is a udp_proxy listener or an error, never a TCP
    listener.  (udp_proxy's own config: C{tests.test_udp_proxy_unit}.)
    """

    def test_udpListenerRefused(self) -> None:
        """
        A UDP listener with a network filter chain and no udp_proxy is
        refused, not validated and then bound as TCP.
        """
        raw = listener()
        raw["address"]["socket_address"]["protocol"] = "UDP"
        errors = self.errorsOf(bootstrap([raw]))
        self.assertTrue(all(path.startswith(L0) for path, _ in errors), errors)
        self.assertTrue(any("UDP" in message for _, message in errors), errors)


    def test_udpAdminRefused(self) -> None:
        """
        The admin address is TCP only.
        """
        self.assertError({"admin": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 9901, "protocol": "UDP"}}}},
            "admin.address.socket_address.protocol",
            "expected one of TCP, got the string 'UDP'")


class TcpProxyConfigTests(ConfigTestCase):
    """
    The C{envoy.filters.network.tcp_proxy} typed_config.
    """

    skip = _NO_ACCESS_LOG

    def proxyConfig(self, **fields: Any) -> Any:
        """
        The parsed tcp_proxy config for C{fields}, with cluster C{backend}.
        """
        config = parse(bootstrap([listener(filters=[tcpProxy(**fields)])], [cluster()]))
        return config.listeners[0].filterChains[0].filters[0].config

    def test_defaults(self) -> None:
        """
        idle_timeout is 1h, max_connect_attempts 1, no duration limit.
        """
        config = self.proxyConfig(stat_prefix="front", cluster="backend")
        self.assertEqual(
            (config.statPrefix, config.cluster, config.idleTimeout, config.maxConnectAttempts,
             config.maxDownstreamConnectionDuration),
            ("front", "backend", 3600.0, 1, None))

    def test_idleTimeoutZeroDisables(self) -> None:
        """
        C{idle_timeout: 0s} turns the idle timer off.
        """
        config = self.proxyConfig(stat_prefix="front", cluster="backend", idle_timeout="0s")
        self.assertIsNone(config.idleTimeout)

    def test_fields(self) -> None:
        """
        idle_timeout, max_connect_attempts and the duration limit are read.
        """
        config = self.proxyConfig(stat_prefix="front", cluster="backend", idle_timeout="0.25s",
                                  max_connect_attempts=3,
                                  max_downstream_connection_duration="60s")
        self.assertEqual(
            (config.idleTimeout, config.maxConnectAttempts,
             config.maxDownstreamConnectionDuration), (0.25, 3, 60.0))

    def test_unknownCluster(self) -> None:
        """
        A misspelt cluster is reported at its exact path.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(stat_prefix="front",
                                                               cluster="bakend")])],
                                   [cluster()]),
                         f"{TC}.cluster", "unknown cluster 'bakend'")
        e = self.assertRaises(ConfigErrors, parse, bootstrap(
            [listener(filters=[tcpProxy(stat_prefix="front", cluster="bakend")])], [cluster()]))
        self.assertEqual(str(e), f"{TC}.cluster: unknown cluster 'bakend'")

    def test_missingCluster(self) -> None:
        """
        Neither cluster nor weighted_clusters is an error.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(stat_prefix="front")])],
                                   [cluster()]),
                         TC, "one of cluster, weighted_clusters is required")

    def test_missingStatPrefix(self) -> None:
        """
        stat_prefix is required.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(cluster="backend")])],
                                   [cluster()]),
                         TC, "missing required field 'stat_prefix'")

    def test_emptyStatPrefix(self) -> None:
        """
        stat_prefix may not be empty.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(stat_prefix="",
                                                               cluster="backend")])],
                                   [cluster()]),
                         f"{TC}.stat_prefix", "must not be empty")

    def test_byNameWithoutTypedConfig(self) -> None:
        """
        Found by name without typed_config, tcp_proxy still needs its fields.
        """
        self.assertErrors(
            bootstrap([listener(filters=[{"name": "envoy.filters.network.tcp_proxy"}])],
                      [cluster()]),
            [(TC, "missing required field 'stat_prefix'"),
             (TC, "one of cluster, weighted_clusters is required")])

    def test_clusterAndWeightedClusters(self) -> None:
        """
        cluster and weighted_clusters are a oneof: both set is an error.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend",
            weighted_clusters={"clusters": [{"name": "backend", "weight": 1}]})])],
            [cluster()]),
            TC, "only one of cluster, weighted_clusters may be set")

    def test_weightedClusters(self) -> None:
        """
        weighted_clusters are read in order with their weights.
        """
        config = parse(bootstrap(
            [listener(filters=[tcpProxy(stat_prefix="front", weighted_clusters={"clusters": [
                {"name": "backend", "weight": 3}, {"name": "other", "weight": 1}]})])],
            [cluster(), cluster("other")]))
        proxy = config.listeners[0].filterChains[0].filters[0].config
        self.assertEqual((proxy.cluster, proxy.weightedClusters),
                         (None, (("backend", 3), ("other", 1))))

    def test_weightedClustersErrors(self) -> None:
        """
        Unknown cluster, missing and zero weight are each reported at their entry.
        """
        wc = f"{TC}.weighted_clusters.clusters"
        self.assertErrors(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", weighted_clusters={"clusters": [
                {"name": "backend", "weight": 1}, {"name": "bakend", "weight": 2},
                {"name": "backend"}, {"name": "backend", "weight": 0}]})])],
            [cluster()]), [
            (f"{wc}[1].name", "unknown cluster 'bakend'"),
            (f"{wc}[2]", "missing required field 'weight'"),
            (f"{wc}[3].weight", "must be at least 1, got 0"),
        ])

    def test_weightedClustersEmpty(self) -> None:
        """
        weighted_clusters needs at least one cluster.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", weighted_clusters={"clusters": []})])], [cluster()]),
            f"{TC}.weighted_clusters.clusters", "must not be empty")

    def test_maxConnectAttemptsZero(self) -> None:
        """
        max_connect_attempts must be at least 1.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend", max_connect_attempts=0)])], [cluster()]),
            f"{TC}.max_connect_attempts", "must be at least 1, got 0")

    def test_badIdleTimeout(self) -> None:
        """
        A malformed idle_timeout is reported at its path.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend", idle_timeout="1h")])], [cluster()]),
            f"{TC}.idle_timeout", "expected a duration like '0.25s', got the string '1h'")

    def test_tinyMaxDownstreamConnectionDuration(self) -> None:
        """
        max_downstream_connection_duration must be at least 1ms.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend",
            max_downstream_connection_duration="0s")])], [cluster()]),
            f"{TC}.max_downstream_connection_duration", "must be at least 1ms")

    def test_unsupportedField(self) -> None:
        """
        hash_policy is Envoy's but not pyenvoy's yet: one error saying so.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend", hash_policy=[{"source_ip": {}}])])],
            [cluster()]),
            f"{TC}.hash_policy", "field 'hash_policy' is not supported by pyenvoy yet")


    def test_unknownField(self) -> None:
        """
        A misspelt tcp_proxy field is reported once, as unknown.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster="backend", idle_timout="1s")])], [cluster()]),
            f"{TC}.idle_timout", "unknown field 'idle_timout'")


    def test_nullCluster(self) -> None:
        """
        C{cluster:} left empty is reported, not a proxy with no cluster.
        """
        self.assertError(bootstrap([listener(filters=[tcpProxy(
            stat_prefix="front", cluster=None)])], [cluster()]),
            TC, "one of cluster, weighted_clusters is required")


    def test_terminalNotLast(self) -> None:
        """
        tcp_proxy followed by another filter is refused.
        """
        self.assertError(bootstrap([listener(filters=[
            tcpProxy(stat_prefix="front", cluster="backend"), echo()])], [cluster()]),
            F0, "terminal filter 'envoy.filters.network.tcp_proxy' must be the last filter")

    def test_shippedConfig(self) -> None:
        """
        etc/pyenvoy.yaml, the default config, is valid.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load(os.path.join(here, "etc", "pyenvoy.yaml"))
        self.assertEqual([l.name for l in config.listeners], ["front", "echo"])
        self.assertEqual(config.listeners[0].filterChains[0].filters[0].config.idleTimeout, 300.0)


class EnvoyValidationTests(ConfigTestCase):
    """
    What Envoy's own validation refuses is refused too (found by running
    Envoy 1.40's --mode validate on the same configs).
    """

    def test_durationsAsEnvoyParsesThem(self) -> None:
        """
        Durations Envoy refuses are refused: blanks around, more than 9
        fractional digits, beyond protobuf's range, nanos out of range or
        of the other sign.
        """
        for value, message in ((" 1s", "expected a duration"),
                               ("0.0000000001s", "more than 9 fractional digits"),
                               ("315576000001s", "out of range"),
                               ({"nanos": 2000000000}, "out of range"),
                               ({"seconds": 1, "nanos": -5}, "out of range")):
            self.assertError(bootstrap(clusters=[cluster(connect_timeout=value)]),
                             f"{C0}.connect_timeout", message)
        self.assertEqual(parse(bootstrap(clusters=[cluster(connect_timeout="0.000000001s")]))
                         .clusters["backend"].connectTimeout, 1e-9)

    def test_duplicateListenerAddress(self) -> None:
        """
        Two listeners on one address are refused before anything binds,
        as Envoy refuses them; port 0 may repeat.
        """
        raw = bootstrap([listener(name="a", port=10000), listener(name="b", port=10000)])
        self.assertError(raw, "static_resources.listeners[1].address",
                         "listener 'b' has duplicate address '127.0.0.1:10000' as existing "
                         "listener 'a'")
        parse(bootstrap([listener(name="a", port=0), listener(name="b", port=0)]))

    def test_trafficDirection(self) -> None:
        """
        C{traffic_direction} must be one of Envoy's values.
        """
        parse(bootstrap([listener(traffic_direction="INBOUND")]))
        self.assertError(bootstrap([listener(traffic_direction="SIDEWAYS")]),
                         f"{L0}.traffic_direction", "SIDEWAYS")

    def test_healthCheckPayloadNeedsData(self) -> None:
        """
        A C{tcp_health_check.send} payload needs C{text} or C{binary}.
        """
        check = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                 "healthy_threshold": 1, "tcp_health_check": {"send": {}}}
        errors = self.errorsOf(bootstrap(clusters=[cluster(health_checks=[check])]))
        self.assertTrue(any(path.startswith(f"{C0}.health_checks[0].tcp_health_check.send")
                            for path, _ in errors), errors)

