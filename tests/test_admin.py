"""
The admin interface over real HTTP on 127.0.0.1: every endpoint, Envoy's
formats, POST-only controls, redaction in /config_dump.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from pyenvoy.admin import ENDPOINTS, AdminService
from pyenvoy.config import parse
from pyenvoy.network.listener import StartupError
from pyenvoy.server import Server

LOOPBACK = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}


def bootstrap() -> dict[str, Any]:
    """
    Admin on port 0, one STATIC cluster with two hosts and a lowered
    circuit breaker, one echo listener on port 0.
    """
    def endpoint(port: int, hostname: str) -> dict[str, Any]:
        return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": port}},
                             "hostname": hostname}}

    return {
        "node": {"id": "node-1", "cluster": "edge"},
        "admin": {"address": LOOPBACK},
        "static_resources": {
            "clusters": [{
                "name": "backend",
                "alt_stat_name": "backend_stats",
                "connect_timeout": "1s",
                "circuit_breakers": {"thresholds": [{"max_connections": 10}]},
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                    endpoint(7001, "one.example"), endpoint(7002, "")]}]},
            }],
            "listeners": [{
                "name": "echo",
                "address": LOOPBACK,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.echo"}]}],
            }],
        },
    }


class AdminTests(TestCase):
    """
    A started L{Server} with its L{AdminService}, driven by an HTTP client.
    """

    def setUp(self) -> None:
        self.server = Server(parse(bootstrap()), reactor, drainTime=1.0)
        self.server.privilegedStartService()
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.context = self.server.context
        self.shutdowns: list[None] = []
        self.context.shutdown = lambda: self.shutdowns.append(None)
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    async def request(self, path: str, method: bytes = b"GET") -> tuple[int, str, str]:
        """
        Make one request; return the status, the content type and the body.
        """
        assert self.server.adminService is not None
        address = self.server.adminService.boundAddress()
        assert address is not None
        host, port = address
        response = await self.agent.request(method, f"http://{host}:{port}{path}".encode(),
                                            Headers())
        body = await readBody(response)
        (contentType,) = response.headers.getRawHeaders(b"content-type")
        return response.code, contentType.decode(), body.decode()

    async def json(self, path: str) -> Any:
        """
        GET C{path}, check it is JSON, and return it parsed.
        """
        code, contentType, body = await self.request(path)
        self.assertEqual((code, contentType), (200, "application/json"))
        return json.loads(body)

    async def test_home(self) -> None:
        """
        C{/} is an HTML index: links for GET endpoints, POST forms for the
        state-changing ones.
        """
        code, contentType, body = await self.request("/")
        self.assertEqual((code, contentType), (200, "text/html; charset=UTF-8"))
        self.assertIn("<a href='/stats'>/stats</a>", body)
        self.assertIn("<form action='/quitquitquit' method='post'>", body)
        self.assertIn("print server stats", body)

    async def test_help(self) -> None:
        """
        C{/help} lists every endpoint with its help and parameters.
        """
        code, contentType, body = await self.request("/help")
        self.assertEqual((code, contentType), (200, "text/plain; charset=UTF-8"))
        self.assertTrue(body.startswith("admin commands are:\n  /: Admin home page\n"))
        for endpoint in ENDPOINTS:
            # Envoy marks the state-changing endpoints.
            post = " (POST)" if endpoint.post else ""
            self.assertIn(f"  {endpoint.path}{post}: {endpoint.help}\n", body)
        self.assertIn("  /healthcheck/fail (POST): ", body)
        self.assertIn("      usedonly: ", body)

    async def test_unknownPath(self) -> None:
        """
        An unknown path is a 404 with the help text, as in Envoy.
        """
        code, _, body = await self.request("/stats/nope")
        self.assertEqual(code, 404)
        self.assertTrue(body.startswith("invalid path. admin commands are:\n"))

    async def test_statsText(self) -> None:
        """
        C{/stats} prints every stat, with the server gauges refreshed first.
        """
        self.context.store.counter("cluster.backend_stats.upstream_cx_total").value = 4
        code, contentType, body = await self.request("/stats")
        self.assertEqual((code, contentType), (200, "text/plain; charset=UTF-8"))
        lines = body.splitlines()
        self.assertIn("cluster.backend_stats.upstream_cx_total: 4", lines)
        self.assertIn("server.live: 1", lines)
        self.assertIn("listener_manager.total_listeners_active: 1", lines)
        self.assertIn("listener.127.0.0.1_0.downstream_cx_length_ms: No recorded values", lines)
        # Sorted by name, histograms last: the admin listener's comes last.
        self.assertEqual(lines[-1], "listener.admin.downstream_cx_length_ms: No recorded values")

    async def test_statsFilterUsedOnlyType(self) -> None:
        """
        C{filter}, C{usedonly} and C{type} narrow C{/stats} down.
        """
        store = self.context.store
        store.counter("cluster.backend_stats.upstream_cx_total").value = 4
        _, _, body = await self.request("/stats?filter=upstream_cx_(total|active)")
        self.assertEqual(body, "cluster.backend_stats.upstream_cx_active: 0\n"
                               "cluster.backend_stats.upstream_cx_total: 4\n")
        _, _, body = await self.request("/stats?usedonly&filter=^cluster%5C.")
        self.assertIn("cluster.backend_stats.upstream_cx_total: 4\n", body)
        self.assertNotIn(": 0\n", body)
        _, _, body = await self.request("/stats?type=Histograms")
        lines = body.splitlines()
        # The admin's own stats move with these requests (tests/test_admin_stats.py).
        self.assertEqual([line for line in lines if "admin." not in line], [
            "cluster.backend_stats.upstream_cx_connect_ms: No recorded values",
            "cluster.backend_stats.upstream_cx_length_ms: No recorded values",
            "cluster.backend_stats.upstream_rq_per_cx: No recorded values",
            "listener.127.0.0.1_0.connections_accepted_per_socket_event: No recorded values",
            "listener.127.0.0.1_0.downstream_cx_length_ms: No recorded values",
        ])
        self.assertEqual([line.split(":")[0] for line in lines if "admin." in line], [
            "http.admin.downstream_cx_length_ms", "http.admin.downstream_rq_time",
            "listener.admin.connections_accepted_per_socket_event",
            "listener.admin.downstream_cx_length_ms"])

    async def test_statsFilterPlusAndInvert(self) -> None:
        """
        A C{+} in the query is a C{+} (Envoy's C{filter=^server.upt.+}), not
        form encoding's space; C{invert_filter} shows what does not match.
        """
        _, _, body = await self.request("/stats?filter=^server.upt.+")
        self.assertTrue(body.startswith("server.uptime: "), body)
        _, _, body = await self.request("/stats/prometheus?filter=server.uptim.+")
        self.assertIn("envoy_server_uptime{} ", body)
        _, _, body = await self.request("/stats?filter=^server%5C.&invert_filter")
        self.assertNotIn("server.", body)
        self.assertIn("cluster.backend_stats.upstream_cx_total: ", body)

    async def test_prometheusSummaryAndInvert(self) -> None:
        """
        C{/stats/prometheus?histogram_buckets=summary} shows histograms as
        summaries, as Envoy; another mode is a 400; C{invert_filter} works
        there too.
        """
        self.context.store.histogram("cluster.backend_stats.upstream_cx_connect_ms").record(3)
        _, _, body = await self.request(
            "/stats/prometheus?histogram_buckets=summary&filter=upstream_cx_connect_ms")
        self.assertIn("# TYPE envoy_cluster_upstream_cx_connect_ms summary\n", body)
        self.assertIn('envoy_cluster_upstream_cx_connect_ms{envoy_cluster_name="backend_stats",'
                      'quantile="0.5"} 3\n', body)
        self.assertIn('envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name='
                      '"backend_stats"} 1\n', body)
        families = {f.name: f for f in text_string_to_metric_families(body)}
        self.assertEqual(families["envoy_cluster_upstream_cx_connect_ms"].type, "summary")
        # Envoy 1.40's answers to the modes its Prometheus output lacks.
        for mode, answer in [
                ("detailed", "unsupported prometheus histogram bucket mode"),
                ("disjoint", "unsupported prometheus histogram bucket mode"),
                ("prometheusnative", "unsupported prometheusnative histogram type when not "
                                     "using protobuf exposition format"),
                ("bogus", "usage: /stats?histogram_buckets="
                          "(cumulative|disjoint|detailed|summary|prometheusnative)\n")]:
            code, _, body = await self.request(f"/stats/prometheus?histogram_buckets={mode}")
            self.assertEqual((code, body), (400, answer), mode)
        _, _, body = await self.request("/stats/prometheus?filter=^server%5C.&invert_filter")
        self.assertNotIn("envoy_server_", body)
        self.assertIn("envoy_cluster_", body)

    async def test_statsHistogramBuckets(self) -> None:
        """
        C{/stats?histogram_buckets=} in text and JSON, in Envoy 1.40's
        shapes (recorded from its admin with the same 72 values: 62 zeros,
        8 ones, 2 twos).
        """
        histogram = self.context.store.histogram("cluster.backend_stats.upstream_cx_connect_ms")
        for value, times in ((0, 62), (1, 8), (2, 2)):
            histogram.recordMany(value, times)
        query = "/stats?filter=upstream_cx_connect_ms&histogram_buckets="
        _, _, body = await self.request(query + "cumulative")
        self.assertEqual(body, "cluster.backend_stats.upstream_cx_connect_ms: B0.5(0,62) "
                         "B1(0,70) B5(0,72) B10(0,72) B25(0,72) B50(0,72) B100(0,72) "
                         "B250(0,72) B500(0,72) B1000(0,72) B2500(0,72) B5000(0,72) "
                         "B10000(0,72) B30000(0,72) B60000(0,72) B300000(0,72) B600000(0,72) "
                         "B1.8e+06(0,72) B3.6e+06(0,72)\n")
        _, _, body = await self.request(query + "disjoint")
        self.assertTrue(body.startswith(
            "cluster.backend_stats.upstream_cx_connect_ms: B0.5(0,62) B1(0,8) B5(0,2) B10(0,0) "),
            body)
        _, _, body = await self.request(query + "detailed")
        self.assertEqual(body.splitlines()[:3], [
            "cluster.backend_stats.upstream_cx_connect_ms:",
            "  totals=0,0:62, 1,0.1:8, 2,0.1:2",
            "  intervals="])
        self.assertTrue(body.splitlines()[3].startswith("  summary=P0(nan,0) P25(nan,0) "))
        details = (await self.json(query + "detailed&format=json"))["stats"][0]["histograms"]
        self.assertEqual(details["details"][0]["totals"], [
            {"lower_bound": 0, "width": 0, "count": 62},
            {"lower_bound": 1, "width": 0.1, "count": 8},
            {"lower_bound": 2, "width": 0.1, "count": 2}])
        self.assertEqual(details["details"][0]["intervals"], [])
        buckets = (await self.json(query + "cumulative&format=json"))["stats"][0]["histograms"]
        self.assertEqual(buckets[0]["name"], "cluster.backend_stats.upstream_cx_connect_ms")
        self.assertEqual(buckets[0]["buckets"][:3], [
            {"upper_bound": 0.5, "interval": 0, "cumulative": 62},
            {"upper_bound": 1, "interval": 0, "cumulative": 70},
            {"upper_bound": 5, "interval": 0, "cumulative": 72}])
        _, _, body = await self.request(query + "none")
        self.assertTrue(body.startswith("cluster.backend_stats.upstream_cx_connect_ms: P0(nan,0)"))
        code, _, body = await self.request(query + "prometheusnative")
        self.assertEqual((code, body),
                         (400, "Invalid histogram_buckets type for non prometheus stats type"))
        code, _, body = await self.request(query + "bogus")
        self.assertEqual(code, 400)
        self.assertTrue(body.startswith("usage: /stats?histogram_buckets=(cumulative|"))
        _, _, body = await self.request(
            "/stats?filter=upstream_cx_length_ms&histogram_buckets=cumulative")
        self.assertEqual(body, "cluster.backend_stats.upstream_cx_length_ms: No recorded values\n")

    async def test_statsHidden(self) -> None:
        """
        C{hidden=include|exclude} shows every stat (pyenvoy hides none),
        C{only} none; anything else is Envoy's 400.
        """
        for mode in ("include", "exclude"):
            _, _, body = await self.request(f"/stats?hidden={mode}&filter=server.live")
            self.assertEqual(body, "server.live: 1\n", mode)
        _, _, body = await self.request("/stats?hidden=only")
        self.assertEqual(body, "")
        self.assertEqual(await self.json("/stats?hidden=only&format=json"), {"stats": []})
        _, _, body = await self.request("/stats/prometheus?hidden=only")
        self.assertEqual(body, "")
        for path in ("/stats?hidden=bogus", "/stats/prometheus?hidden=bogus"):
            code, _, body = await self.request(path)
            self.assertEqual((code, body), (400, "usage: /stats?hidden=(include|only|exclude)\n\n"))

    async def test_clustersFilter(self) -> None:
        """
        C{/clusters?filter=} keeps the clusters whose name matches.
        """
        _, _, body = await self.request("/clusters?filter=^nomatch$")
        self.assertEqual(body, "")
        _, _, body = await self.request("/clusters?filter=back")
        self.assertTrue(body.startswith("backend::"))
        data = await self.json("/clusters?format=json&filter=^nomatch$")
        self.assertEqual(data, {"cluster_statuses": []})

    async def test_statsBadParameters(self) -> None:
        """
        A bad regex, type or format is a 400 with a message.
        """
        code, _, body = await self.request("/stats?filter=(")
        self.assertEqual(code, 400)
        self.assertTrue(body.startswith("Invalid regex: "))
        code, _, body = await self.request("/stats?type=counters")
        self.assertEqual((code, body), (400, "invalid &type= param\n"))
        code, _, body = await self.request("/stats?format=xml")
        self.assertEqual((code, body), (400, "usage: /stats?format=(json|prometheus|text)\n"))

    async def test_statsJson(self) -> None:
        """
        C{/stats?format=json} is Envoy's JSON layout.
        """
        self.context.store.histogram("cluster.backend_stats.upstream_cx_connect_ms").record(3)
        stats = (await self.json("/stats?format=json&filter=backend_stats"))["stats"]
        self.assertIn({"name": "cluster.backend_stats.membership_total", "value": 2}, stats)
        computed = stats[-1]["histograms"]["computed_quantiles"]
        self.assertEqual(computed[0]["name"], "cluster.backend_stats.upstream_cx_connect_ms")
        self.assertEqual(computed[0]["values"][0], {"interval": None, "cumulative": 3})

    async def test_prometheus(self) -> None:
        """
        C{/stats/prometheus} (and C{/stats?format=prometheus}) parses, with
        the cluster's stat name and the listener address as labels.
        """
        code, contentType, body = await self.request("/stats/prometheus")
        self.assertEqual((code, contentType), (200, "text/plain; charset=UTF-8"))
        families = {f.name: f for f in text_string_to_metric_families(body)}
        (sample,) = families["envoy_cluster_membership_total"].samples
        self.assertEqual((sample.labels, sample.value),
                         ({"envoy_cluster_name": "backend_stats"}, 2))
        (sample,) = families["envoy_listener_downstream_cx_active"].samples
        self.assertEqual(sample.labels, {"envoy_listener_address": "127.0.0.1_0"})
        (sample,) = families["envoy_server_live"].samples
        self.assertEqual((sample.labels, sample.value), ({}, 1))
        _, _, same = await self.request("/stats?format=prometheus")

        def steady(text: str) -> list[str]:
            # The memory gauges and the admin's own stats move between two reads.
            return [line for line in text.splitlines()
                    if "server_memory" not in line and "admin" not in line]

        self.assertEqual(steady(same), steady(body))
        _, _, used = await self.request("/stats/prometheus?usedonly")
        self.assertNotIn("envoy_cluster_bind_errors", used)

    async def test_clustersText(self) -> None:
        """
        C{/clusters} prints Envoy's C{cluster::key::value} lines.
        """
        cluster = self.context.clusterManager.clusters["backend"]
        cluster.hosts[0].stats.cx_total = 3
        code, contentType, body = await self.request("/clusters")
        self.assertEqual((code, contentType), (200, "text/plain; charset=UTF-8"))
        lines = body.splitlines()
        self.assertEqual(lines[:10], [
            "backend::observability_name::backend_stats",
            "backend::default_priority::max_connections::10",
            "backend::default_priority::max_pending_requests::1024",
            "backend::default_priority::max_requests::1024",
            "backend::default_priority::max_retries::3",
            "backend::high_priority::max_connections::1024",
            "backend::high_priority::max_pending_requests::1024",
            "backend::high_priority::max_requests::1024",
            "backend::high_priority::max_retries::3",
            "backend::added_via_api::false",
        ])
        self.assertEqual(lines[10:29], [
            "backend::127.0.0.1:7001::cx_active::0",
            "backend::127.0.0.1:7001::cx_connect_fail::0",
            "backend::127.0.0.1:7001::cx_total::3",
            "backend::127.0.0.1:7001::rq_active::0",
            "backend::127.0.0.1:7001::rq_error::0",
            "backend::127.0.0.1:7001::rq_pending_active::0",
            "backend::127.0.0.1:7001::rq_success::0",
            "backend::127.0.0.1:7001::rq_timeout::0",
            "backend::127.0.0.1:7001::rq_total::0",
            "backend::127.0.0.1:7001::hostname::one.example",
            "backend::127.0.0.1:7001::health_flags::healthy",
            "backend::127.0.0.1:7001::weight::1",
            "backend::127.0.0.1:7001::region::",
            "backend::127.0.0.1:7001::zone::",
            "backend::127.0.0.1:7001::sub_zone::",
            "backend::127.0.0.1:7001::canary::false",
            "backend::127.0.0.1:7001::priority::0",
            "backend::127.0.0.1:7001::success_rate::-1",
            "backend::127.0.0.1:7001::local_origin_success_rate::-1",
        ])
        self.assertEqual(len(lines), 48)
        self.assertEqual(lines[-1], "backend::127.0.0.1:7002::local_origin_success_rate::-1")

    async def test_clustersJson(self) -> None:
        """
        C{/clusters?format=json} is shaped like Envoy's admin.v3.Clusters.
        """
        self.context.clusterManager.clusters["backend"].hosts[1].stats.rq_active = 2
        (status,) = (await self.json("/clusters?format=json"))["cluster_statuses"]
        self.assertEqual(status["name"], "backend")
        self.assertEqual(status["observability_name"], "backend_stats")
        self.assertIs(status["added_via_api"], False)
        default, high = status["circuit_breakers"]["thresholds"]
        self.assertEqual(default, {"priority": "DEFAULT", "max_connections": 10,
                                   "max_pending_requests": 1024, "max_requests": 1024,
                                   "max_retries": 3})
        self.assertEqual(high["priority"], "HIGH")
        first, second = status["host_statuses"]
        self.assertEqual(first["address"],
                         {"socket_address": {"address": "127.0.0.1", "port_value": 7001}})
        self.assertEqual(first["hostname"], "one.example")
        self.assertEqual(first["health_status"], {"eds_health_status": "HEALTHY"})
        self.assertEqual(first["weight"], 1)
        self.assertIn({"name": "cx_total", "value": "0", "type": "COUNTER"}, first["stats"])
        self.assertIn({"name": "rq_active", "value": "2", "type": "GAUGE"}, second["stats"])

    async def test_listeners(self) -> None:
        """
        C{/listeners} shows the address a listener actually bound, and the
        configured one once it stopped listening.
        """
        (service,) = self.context.listeners
        address = service.boundAddress()
        assert address is not None
        host, port = address
        code, contentType, body = await self.request("/listeners")
        self.assertEqual((code, contentType, body),
                         (200, "text/plain; charset=UTF-8", f"echo::127.0.0.1:{port}\n"))
        self.assertEqual(await self.json("/listeners?format=json"), {"listener_statuses": [{
            "name": "echo",
            "local_address": {"socket_address": {"address": host, "port_value": port}},
        }]})
        await service.stopListening()
        _, _, body = await self.request("/listeners")
        self.assertEqual(body, "echo::127.0.0.1:0\n")

    async def test_configDump(self) -> None:
        """
        C{/config_dump} holds the bootstrap, the static clusters and the
        static listeners, each with its Envoy type.
        """
        configs = (await self.json("/config_dump"))["configs"]
        self.assertEqual([c["@type"] for c in configs], [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        ])
        self.assertEqual(configs[0]["bootstrap"], bootstrap())
        (cluster,) = configs[1]["static_clusters"]
        self.assertEqual(cluster["cluster"]["@type"],
                         "type.googleapis.com/envoy.config.cluster.v3.Cluster")
        self.assertEqual(cluster["cluster"]["name"], "backend")
        (listener,) = configs[2]["static_listeners"]
        self.assertEqual(listener["listener"]["name"], "echo")

    async def test_configDumpResource(self) -> None:
        """
        C{?resource=} returns the items of one repeated field; a singular
        field is a 400 and an unknown one a 404, with Envoy's messages.
        """
        (item,) = (await self.json("/config_dump?resource=static_listeners"))["configs"]
        self.assertEqual(item["@type"],
                         "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener")
        self.assertEqual(item["listener"]["name"], "echo")
        self.assertEqual(await self.json("/config_dump?resource=dynamic_active_clusters"),
                         {"configs": []})
        code, _, body = await self.request("/config_dump?resource=bootstrap")
        self.assertEqual((code, body), (400, "bootstrap is not a repeated field. "
                                             "Use ?mask=bootstrap to get only this field"))
        code, _, body = await self.request("/config_dump?resource=nothing")
        self.assertEqual((code, body), (404, "nothing not found in config dump"))

    async def test_configDumpRedacts(self) -> None:
        """
        Private keys, passwords and other secrets are redacted in the dump,
        while the server's own copy of the config is left as it was.
        """
        raw = bootstrap()
        tls = {"common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": "/etc/cert.pem"},
            "private_key": {"inline_string": "-----BEGIN PRIVATE KEY-----"},
            "password": {"inline_bytes": "c2VjcmV0"},
        }]}, "session_ticket_keys": {"keys": [{"filename": "/etc/ticket.key"}]}}
        raw["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls", "typed_config": tls}
        raw["static_resources"]["clusters"][0]["typedExtensionProtocolOptions"] = {
            "redis": {"authPassword": {"inlineString": "hunter2"}}}
        original = copy.deepcopy(raw)
        self.context.bootstrap = dataclasses.replace(self.context.bootstrap, raw=raw)
        code, _, body = await self.request("/config_dump")
        self.assertEqual(code, 200)
        for secret in ("BEGIN PRIVATE KEY", "c2VjcmV0", "ticket.key", "hunter2"):
            self.assertNotIn(secret, body)
        self.assertIn("/etc/cert.pem", body)
        listener = json.loads(body)["configs"][2]["static_listeners"][0]["listener"]
        dumped = listener["filter_chains"][0]["transport_socket"]["typed_config"]
        certificate = dumped["common_tls_context"]["tls_certificates"][0]
        self.assertEqual(certificate["private_key"], {"inline_string": "[redacted]"})
        self.assertEqual(certificate["password"], {"inline_bytes": "[redacted]"})
        self.assertEqual(dumped["session_ticket_keys"], {"keys": [{"filename": "[redacted]"}]})
        self.assertEqual(raw, original)

    async def test_ready(self) -> None:
        """
        C{/ready} answers C{LIVE} with 200, any other state with 503.
        """
        self.assertEqual(await self.request("/ready"), (200, "text/plain; charset=UTF-8",
                                                        "LIVE\n"))
        self.context.state = "DRAINING"
        code, _, body = await self.request("/ready")
        self.assertEqual((code, body), (503, "DRAINING\n"))

    async def test_healthCheckFailAndOk(self) -> None:
        """
        C{POST /healthcheck/fail} sets the flag and makes the server report
        DRAINING; C{POST /healthcheck/ok} undoes it.
        """
        code, _, body = await self.request("/healthcheck/fail", b"POST")
        self.assertEqual((code, body), (200, "OK\n"))
        self.assertTrue(self.context.healthCheckFailed)
        code, _, body = await self.request("/ready")
        self.assertEqual((code, body), (503, "DRAINING\n"))
        self.assertEqual((await self.json("/server_info"))["state"], "DRAINING")
        # The gauges follow, as Envoy's failHealthcheck sets them.
        _, _, body = await self.request("/stats?filter=^server%5C.(live|state)$")
        self.assertEqual(body, "server.live: 0\nserver.state: 1\n")
        code, _, body = await self.request("/healthcheck/ok", b"POST")
        self.assertEqual((code, body), (200, "OK\n"))
        self.assertFalse(self.context.healthCheckFailed)
        self.assertEqual((await self.request("/ready"))[0], 200)
        _, _, body = await self.request("/stats?filter=^server%5C.(live|state)$")
        self.assertEqual(body, "server.live: 1\nserver.state: 0\n")

    async def test_mutationsNeedPost(self) -> None:
        """
        GET on a state-changing endpoint is refused with Envoy's 405 and
        changes nothing.
        """
        counter = self.context.store.counter("cluster.backend_stats.upstream_cx_total")
        counter.value = 5
        for path in ("/quitquitquit", "/healthcheck/fail", "/reset_counters"):
            code, _, body = await self.request(path)
            self.assertEqual((code, body), (405, "Method GET not allowed, POST required."))
        await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.shutdowns, [])
        self.assertFalse(self.context.healthCheckFailed)
        self.assertEqual(counter.value, 5)

    async def test_quitquitquit(self) -> None:
        """
        C{POST /quitquitquit} answers, then shuts the server down.
        """
        code, _, body = await self.request("/quitquitquit", b"POST")
        self.assertEqual((code, body), (200, "OK\n"))
        await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.shutdowns, [None])

    async def test_resetCounters(self) -> None:
        """
        C{POST /reset_counters} zeroes counters and leaves gauges alone.
        """
        store = self.context.store
        store.counter("cluster.backend_stats.upstream_cx_total").value = 5
        code, _, body = await self.request("/reset_counters", b"POST")
        self.assertEqual((code, body), (200, "OK\n"))
        self.assertEqual(store.counter("cluster.backend_stats.upstream_cx_total").value, 0)
        self.assertEqual(store.gauge("cluster.backend_stats.membership_total").value, 2)

    async def test_serverInfo(self) -> None:
        """
        C{/server_info} has the version, state, uptimes as Durations,
        command-line options and node.
        """
        self.context.commandLineOptions["config_path"] = "envoy.yaml"
        self.context.drainTime = 0.25
        info = await self.json("/server_info")
        self.assertEqual(info["version"], self.context.version)
        self.assertEqual(info["state"], "LIVE")
        self.assertRegex(info["uptime_current_epoch"], r"^\d+s$")
        self.assertEqual(info["uptime_all_epochs"], info["uptime_current_epoch"])
        self.assertEqual(info["hot_restart_version"], "disabled")
        options = info["command_line_options"]
        self.assertEqual(options["config_path"], "envoy.yaml")
        self.assertEqual((options["drain_time"], options["concurrency"], options["mode"]),
                         ("0.250s", 1, "Serve"))
        self.assertEqual(info["node"], {"id": "node-1", "cluster": "edge"})

    async def test_memory(self) -> None:
        """
        C{/memory} reports Envoy's fields, as decimal strings.
        """
        memory = await self.json("/memory")
        self.assertEqual(sorted(memory), ["allocated", "heap_size", "pageheap_free",
                                          "pageheap_unmapped", "total_physical_bytes",
                                          "total_thread_cache"])
        self.assertGreater(int(memory["total_physical_bytes"]), 0)
        self.assertGreaterEqual(int(memory["total_physical_bytes"]), int(memory["allocated"]))

    async def test_certs(self) -> None:
        """
        Without TLS, C{/certs} lists nothing and
        C{server.days_until_first_cert_expiring} is Envoy's "none" value.
        """
        self.assertEqual(await self.json("/certs"), {"certificates": []})
        _, _, body = await self.request("/stats?filter=days_until_first_cert_expiring")
        self.assertEqual(body, "server.days_until_first_cert_expiring: 4294967295\n")

    async def test_memoryGauges(self) -> None:
        """
        Envoy's C{server.memory_*} gauges are there, from the resident set.
        """
        _, _, body = await self.request("/stats?filter=^server%5C.memory_")
        values = dict(line.split(": ") for line in body.splitlines())
        self.assertEqual(sorted(values), ["server.memory_allocated", "server.memory_heap_size",
                                          "server.memory_physical_size"])
        self.assertGreater(int(values["server.memory_allocated"]), 0)
        self.assertGreaterEqual(int(values["server.memory_physical_size"]),
                                int(values["server.memory_allocated"]))


class AdminServiceTests(TestCase):
    """
    Binding and unbinding the admin port.
    """

    def test_portTaken(self) -> None:
        """
        A port that cannot be bound stops start-up with a message naming
        the admin address.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        raw = bootstrap()
        raw["admin"]["address"] = {"socket_address": {"address": "127.0.0.1",
                                                      "port_value": port}}
        config = parse(raw)
        assert config.admin is not None
        service = AdminService(config.admin, Server(config, reactor).context)
        error = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertIn(f"admin.address: cannot bind 127.0.0.1:{port}: ", str(error))
        self.assertIsNone(service.boundAddress())

    async def test_stop(self) -> None:
        """
        Stopping the service closes the port.
        """
        config = parse(bootstrap())
        assert config.admin is not None
        service = AdminService(config.admin, Server(config, reactor).context)
        service.privilegedStartService()
        service.startService()
        address = service.boundAddress()
        assert address is not None
        host, port = address
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        await service.stopService()
        self.assertIsNone(service.boundAddress())
        probe = socket.socket()
        self.addCleanup(probe.close)
        self.assertNotEqual(probe.connect_ex((host, port)), 0)
