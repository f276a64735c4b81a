"""
The /stats renderers: Envoy's text and JSON layouts, tag extraction, and
Prometheus output that a real Prometheus parser accepts.
"""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from pyenvoy.stats import DEFAULT_BUCKETS, SUPPORTED_QUANTILES, Store
from pyenvoy.stats_format import (
    TAG_EXTRACTORS,
    extractTags,
    logLinearBins,
    registerTagExtractor,
    renderJson,
    renderPrometheus,
    renderText,
)


def sampleStore() -> Store:
    """
    A store with cluster, listener, tcp_proxy and server stats, some used.
    """
    store = Store()
    store.counter("cluster.backend.upstream_cx_total").value = 7
    store.counter("cluster.other.upstream_cx_total").value = 0
    store.gauge("cluster.backend.upstream_cx_active").value = 2
    store.counter("listener.127.0.0.1_10000.downstream_cx_total").value = 3
    store.counter("tcp.front.downstream_cx_total").value = 5
    store.gauge("server.live").value = 1
    store.histogram("cluster.backend.upstream_cx_connect_ms")
    return store


def parsePrometheus(text: str) -> dict[str, tuple[str, list]]:
    """
    Parse exposition text with prometheus_client; return family name ->
    C{(type, samples)}.
    """
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


class TagExtractionTests(TestCase):
    """
    Envoy's default tag extractors applied to the stat names pyenvoy has.
    """

    def test_clusterName(self) -> None:
        """
        C{cluster.<name>.} becomes the C{envoy.cluster_name} tag.
        """
        self.assertEqual(extractTags("cluster.backend.upstream_cx_total"),
                         ("cluster.upstream_cx_total", [("envoy.cluster_name", "backend")]))

    def test_listenerAddress(self) -> None:
        """
        IPv4 and IPv6 listener addresses and stat prefixes become
        C{envoy.listener_address}; C{listener.admin} stays untagged.
        """
        self.assertEqual(
            extractTags("listener.127.0.0.1_10000.downstream_cx_total"),
            ("listener.downstream_cx_total", [("envoy.listener_address", "127.0.0.1_10000")]))
        self.assertEqual(
            extractTags("listener.[__1]_8080.downstream_cx_active"),
            ("listener.downstream_cx_active", [("envoy.listener_address", "[__1]_8080")]))
        self.assertEqual(
            extractTags("listener.front.no_filter_chain_match"),
            ("listener.no_filter_chain_match", [("envoy.listener_address", "front")]))
        self.assertEqual(extractTags("listener.admin.downstream_cx_total"),
                         ("listener.admin.downstream_cx_total", []))

    def test_filterPrefixes(self) -> None:
        """
        The stat prefixes of tcp_proxy, udp_proxy, redis, client_ssl_auth,
        connection_limit, local_ratelimit and rbac are tags.
        """
        cases = {
            "tcp.front.downstream_cx_total": ("tcp.downstream_cx_total", "envoy.tcp_prefix",
                                              "front"),
            "udp.dns.downstream_sess_total": ("udp.downstream_sess_total", "envoy.udp_prefix",
                                              "dns"),
            "redis.cache.downstream_rq_total": ("redis.downstream_rq_total",
                                                "envoy.redis_prefix", "cache"),
            "auth.clientssl.vpn.auth_ok": ("auth.clientssl.auth_ok", "envoy.clientssl_prefix",
                                           "vpn"),
            "connection_limit.cl.limited_connections": (
                "connection_limit.limited_connections", "envoy.connection_limit_prefix", "cl"),
            "local_rate_limit.lr.rate_limited": (
                "local_rate_limit.rate_limited", "envoy.local_network_ratelimit_prefix", "lr"),
            "guard.rbac.denied": ("rbac.denied", "envoy.rbac_prefix", "guard"),
        }
        for name, (extracted, tag, value) in cases.items():
            self.assertEqual(extractTags(name), (extracted, [(tag, value)]), name)

    def test_mongo(self) -> None:
        """
        Mongo stats carry the prefix, command, collection and callsite tags.
        """
        self.assertEqual(
            extractTags("mongo.db.cmd.find.total"),
            ("mongo.cmd.total", [("envoy.mongo_cmd", "find"), ("envoy.mongo_prefix", "db")]))
        self.assertEqual(
            extractTags("mongo.db.collection.users.callsite.login.query.total"),
            ("mongo.collection.callsite.query.total",
             [("envoy.mongo_callsite", "login"), ("envoy.mongo_collection", "users"),
              ("envoy.mongo_prefix", "db")]))

    def test_listenerSsl(self) -> None:
        """
        Listener TLS cipher, curve, signature algorithm and version stats
        are tagged, and so is the listener.
        """
        root = "listener.0.0.0.0_443.ssl."
        for stat, tag, value in [
            ("ciphers.ECDHE-RSA-AES128-GCM-SHA256", "envoy.ssl_cipher",
             "ECDHE-RSA-AES128-GCM-SHA256"),
            ("curves.X25519", "envoy.ssl_curve", "X25519"),
            ("sigalgs.rsa_pss_rsae_sha256", "envoy.ssl_sigalg", "rsa_pss_rsae_sha256"),
            ("versions.TLSv1.3", "envoy.ssl_version", "TLSv1.3"),
        ]:
            name, tags = extractTags(root + stat)
            self.assertEqual(name, "listener.ssl." + stat.split(".")[0])
            self.assertEqual(tags, [(tag, value), ("envoy.listener_address", "0.0.0.0_443")])

    def test_workerId(self) -> None:
        """
        C{worker_<n>} is the C{envoy.worker_id} tag, as Envoy extracts it.
        """
        self.assertEqual(extractTags("listener_manager.worker_0.downstream_cx_total"),
                         ("listener_manager.worker_downstream_cx_total",
                          [("envoy.worker_id", "0")]))

    def test_untagged(self) -> None:
        """
        A name no extractor knows is left alone.
        """
        self.assertEqual(extractTags("server.uptime"), ("server.uptime", []))

    def test_registerTagExtractor(self) -> None:
        """
        A registered extractor is used from then on.
        """
        extractor = registerTagExtractor("envoy.postgres_prefix", r"^postgres\.(([^.]+)\.)")
        self.addCleanup(TAG_EXTRACTORS.remove, extractor)
        self.assertEqual(extractTags("postgres.pg.sessions"),
                         ("postgres.sessions", [("envoy.postgres_prefix", "pg")]))

    def test_registerNeedsGroup(self) -> None:
        """
        A regex without a group to remove is refused.
        """
        self.assertRaises(ValueError, registerTagExtractor, "x", r"^postgres\.")


class TextTests(TestCase):
    """
    C{renderText}: Envoy's plain C{/stats}.
    """

    def test_layout(self) -> None:
        """
        Counters and gauges come sorted together, histograms after them.
        """
        self.assertEqual(renderText(sampleStore()).splitlines(), [
            "cluster.backend.upstream_cx_active: 2",
            "cluster.backend.upstream_cx_total: 7",
            "cluster.other.upstream_cx_total: 0",
            "listener.127.0.0.1_10000.downstream_cx_total: 3",
            "server.live: 1",
            "tcp.front.downstream_cx_total: 5",
            "cluster.backend.upstream_cx_connect_ms: No recorded values",
        ])

    def test_quantiles(self) -> None:
        """
        A histogram with values prints each supported quantile with a
        C{nan} interval value and its cumulative value.
        """
        store = Store()
        histogram = store.histogram("h")
        for value in (1, 2, 3, 5):
            histogram.record(value)
        self.assertEqual(renderText(store), (
            "h: P0(nan,1) P25(nan,1.75) P50(nan,2.5) P75(nan,3.5) P90(nan,4.4) P95(nan,4.7) "
            "P99(nan,4.94) P99.5(nan,4.97) P99.9(nan,4.994) P100(nan,5)\n"))

    def test_filter(self) -> None:
        """
        The filter is a regex searched anywhere in the name, given as a
        string or compiled.
        """
        store = sampleStore()
        self.assertEqual(renderText(store, filter="cx_t[a-z]+l$").splitlines(), [
            "cluster.backend.upstream_cx_total: 7",
            "cluster.other.upstream_cx_total: 0",
            "listener.127.0.0.1_10000.downstream_cx_total: 3",
            "tcp.front.downstream_cx_total: 5",
        ])
        self.assertEqual(renderText(store, filter=re.compile("^server")), "server.live: 1\n")

    def test_usedOnly(self) -> None:
        """
        usedOnly drops zero counters and gauges and empty histograms.
        """
        text = renderText(sampleStore(), usedOnly=True)
        self.assertNotIn("cluster.other", text)
        self.assertNotIn("connect_ms", text)
        self.assertIn("cluster.backend.upstream_cx_total: 7\n", text)

    def test_type(self) -> None:
        """
        C{type} selects one kind of stat; an unknown type is an error.
        """
        store = sampleStore()
        self.assertEqual(renderText(store, type="Gauges"),
                         "cluster.backend.upstream_cx_active: 2\nserver.live: 1\n")
        self.assertEqual(renderText(store, type="Histograms"),
                         "cluster.backend.upstream_cx_connect_ms: No recorded values\n")
        self.assertEqual(renderText(store, type="TextReadouts"), "")
        self.assertRaises(ValueError, renderText, store, type="counters")


class JsonTests(TestCase):
    """
    C{renderJson}: Envoy's C{/stats?format=json}.
    """

    def test_shape(self) -> None:
        """
        Counters and gauges are name/value objects; histograms come last,
        with the supported quantiles and null interval values.
        """
        store = sampleStore()
        store.histogram("cluster.backend.upstream_cx_length_ms").record(10)
        stats = json.loads(renderJson(store))["stats"]
        self.assertEqual(stats[0], {"name": "cluster.backend.upstream_cx_active", "value": 2})
        self.assertEqual(len(stats), 7)
        histograms = stats[-1]["histograms"]
        self.assertEqual(histograms["supported_quantiles"], list(SUPPORTED_QUANTILES))
        empty, used = histograms["computed_quantiles"]
        self.assertEqual(empty["name"], "cluster.backend.upstream_cx_connect_ms")
        self.assertEqual(empty["values"],
                         [{"interval": None, "cumulative": None}] * len(SUPPORTED_QUANTILES))
        self.assertEqual(used["values"],
                         [{"interval": None, "cumulative": 10}] * len(SUPPORTED_QUANTILES))

    def test_noHistograms(self) -> None:
        """
        Without histograms in the selection there is no histograms entry.
        """
        stats = json.loads(renderJson(sampleStore(), type="Counters", usedOnly=True))["stats"]
        self.assertEqual([s["name"] for s in stats], [
            "cluster.backend.upstream_cx_total",
            "listener.127.0.0.1_10000.downstream_cx_total",
            "tcp.front.downstream_cx_total",
        ])


class PrometheusTests(TestCase):
    """
    C{renderPrometheus}: Envoy's C{/stats/prometheus}.
    """

    def test_parsesWithTags(self) -> None:
        """
        The output parses; tags are labels and the values are the stats'.
        """
        families = parsePrometheus(renderPrometheus(sampleStore()))
        kind, samples = families["envoy_cluster_upstream_cx"]
        self.assertEqual(kind, "counter")
        self.assertEqual({(s.labels["envoy_cluster_name"], s.value) for s in samples},
                         {("backend", 7), ("other", 0)})
        kind, samples = families["envoy_listener_downstream_cx"]
        self.assertEqual([(s.labels, s.value) for s in samples],
                         [({"envoy_listener_address": "127.0.0.1_10000"}, 3)])
        kind, samples = families["envoy_tcp_downstream_cx"]
        self.assertEqual([(s.labels, s.value) for s in samples],
                         [({"envoy_tcp_prefix": "front"}, 5)])
        kind, samples = families["envoy_cluster_upstream_cx_active"]
        self.assertEqual(kind, "gauge")
        self.assertEqual([(s.labels, s.value) for s in samples],
                         [({"envoy_cluster_name": "backend"}, 2)])

    def test_layout(self) -> None:
        """
        One C{# TYPE} line per metric, counters before gauges before
        histograms, C{{}} when a stat has no tags.
        """
        lines = renderPrometheus(sampleStore(), filter="upstream_cx_total|active|live")
        self.assertEqual(lines.splitlines(), [
            "# TYPE envoy_cluster_upstream_cx_total counter",
            'envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 7',
            'envoy_cluster_upstream_cx_total{envoy_cluster_name="other"} 0',
            "# TYPE envoy_cluster_upstream_cx_active gauge",
            'envoy_cluster_upstream_cx_active{envoy_cluster_name="backend"} 2',
            "# TYPE envoy_server_live gauge",
            "envoy_server_live{} 1",
        ])

    def test_orderOfEnvoy(self) -> None:
        """
        Metrics are ordered by their stat name before C{.} becomes C{_}, as
        Envoy orders them: every C{cluster.*} before C{cluster_manager.*}.
        """
        store = Store()
        store.counter("cluster_manager.cluster_added").value = 1
        store.counter("cluster.a.upstream_rq_total").value = 1
        store.counter("cluster.a.upstream_cx_total").value = 1
        types = [line.split()[2] for line in renderPrometheus(store).splitlines()
                 if line.startswith("# TYPE")]
        self.assertEqual(types, ["envoy_cluster_upstream_cx_total",
                                 "envoy_cluster_upstream_rq_total",
                                 "envoy_cluster_manager_cluster_added"])

    def test_histogram(self) -> None:
        """
        A histogram has exact cumulative buckets at Envoy's bounds, a
        C{+Inf} bucket equal to the count, C{_sum} and C{_count}.
        """
        store = Store()
        histogram = store.histogram("cluster.backend.upstream_cx_connect_ms")
        for value in (0.2, 0.5, 3, 3, 7200000):
            histogram.record(value)
        text = renderPrometheus(store)
        self.assertIn('envoy_cluster_upstream_cx_connect_ms_bucket'
                      '{envoy_cluster_name="backend",le="0.5"} 2\n', text)
        self.assertIn('{envoy_cluster_name="backend",le="3600000"} 4\n', text)
        self.assertIn('envoy_cluster_upstream_cx_connect_ms_sum'
                      '{envoy_cluster_name="backend"} 7200006.7\n', text)
        kind, samples = parsePrometheus(text)["envoy_cluster_upstream_cx_connect_ms"]
        self.assertEqual(kind, "histogram")
        buckets = [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]
        expected = [(str(b), float(c)) for b, c in zip(DEFAULT_BUCKETS, [2, 2] + [4] * 17)]
        self.assertEqual([(float(le), v) for le, v in buckets[:-1]],
                         [(float(le), v) for le, v in expected])
        self.assertEqual(buckets[-1], ("+Inf", 5))
        values = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
        self.assertEqual(values, {"envoy_cluster_upstream_cx_connect_ms_sum": 7200006.7,
                                  "envoy_cluster_upstream_cx_connect_ms_count": 5})

    def test_labelEscaping(self) -> None:
        """
        Backslashes, quotes and newlines in a tag value are escaped.
        """
        extractor = registerTagExtractor("weird.tag", r"^weird\.(([^.]+)\.)total$")
        self.addCleanup(TAG_EXTRACTORS.remove, extractor)
        store = Store()
        store.counter('weird.a"b\\c\nd.total').value = 1
        text = renderPrometheus(store)
        self.assertIn('envoy_weird_total{weird_tag="a\\"b\\\\c\\nd"} 1\n', text)
        (sample,) = parsePrometheus(text)["envoy_weird"][1]
        self.assertEqual(sample.labels, {"weird_tag": 'a"b\\c\nd'})

    def test_usedOnlyAndFilter(self) -> None:
        """
        usedOnly and filter select stats as for the text format.
        """
        text = renderPrometheus(sampleStore(), usedOnly=True, filter="^cluster")
        families = parsePrometheus(text)
        self.assertEqual(sorted(families),
                         ["envoy_cluster_upstream_cx", "envoy_cluster_upstream_cx_active"])
        self.assertEqual(len(families["envoy_cluster_upstream_cx"][1]), 1)

    def test_kindCollision(self) -> None:
        """
        When a counter and a gauge map to one metric name, the counter
        alone is kept so that the output still parses.
        """
        store = Store()
        store.counter("a.b").value = 1
        store.gauge("a_b").value = 2
        text = renderPrometheus(store)
        self.assertEqual(text, "# TYPE envoy_a_b counter\nenvoy_a_b{} 1\n")
        self.assertEqual(list(parsePrometheus(text)), ["envoy_a_b"])


class LogLinearBinTests(TestCase):
    """
    L{logLinearBins}: Envoy's detailed buckets, two significant digits.
    """

    def test_bins(self) -> None:
        """
        Zero is its own bin; others start at their first two digits and are
        one unit of the second digit wide, across powers of ten.
        """
        values = [0, 0, 1, 1.05, 2, 9.99, 10, 99.9, 150, 155, 999, 1000, 0.013, 1e6]
        self.assertEqual(logLinearBins(values), [
            (0.0, 0.0, 2), (0.013, 0.001, 1), (1.0, 0.1, 2), (2.0, 0.1, 1), (9.9, 0.1, 1),
            (10.0, 1.0, 1), (99.0, 1.0, 1), (150.0, 10.0, 2), (990.0, 10.0, 1),
            (1000.0, 100.0, 1), (1000000.0, 100000.0, 1)])

    def test_everyValueInItsBin(self) -> None:
        """
        Over many magnitudes, each value lies in its bin and the counts add up.
        """
        values = [round(1.37 ** n, 3) for n in range(-20, 45)]
        bins = logLinearBins(values)
        self.assertEqual(sum(count for _, _, count in bins), len(values))
        for value in values:
            self.assertTrue(any(lower <= value < lower + width + 1e-9 * lower
                                for lower, width, _ in bins), value)


class HistogramTests(TestCase):
    """
    L{pyenvoy.stats.Histogram} recording.
    """

    def test_recordManyIsRepeatedRecord(self) -> None:
        """
        C{recordMany(v, n)} leaves a histogram as C{n} C{record(v)} calls do:
        count, sum, buckets and quantiles.
        """
        from pyenvoy.stats import Histogram

        one, many = Histogram("one", reservoir=8), Histogram("many", reservoir=8)
        for value, times in ((0.7, 3), (12.0, 1), (4e9, 2), (3.0, 20), (5.0, 0)):
            for _ in range(times):
                one.record(value)
            many.recordMany(value, times)
            self.assertEqual((many.count, many.sum, many.bucketCounts, many.quantiles()),
                             (one.count, one.sum, one.bucketCounts, one.quantiles()))
        self.assertEqual(many.count, 26)


class SumGaugeTests(TestCase):
    """
    L{pyenvoy.stats.Store.sumGauge}: gauges computed when read.
    """

    def test_sumOfSourcesWhenRead(self) -> None:
        """
        The value is the sum of every source at the moment it is read; a
        plain gauge of the same name is replaced; all formats show it.
        """
        store = Store()
        store.gauge("tcp.p.buffered")
        levels = [3, 4]
        store.scope("tcp.p").sumGauge("buffered", lambda: levels[0])
        gauge = store.sumGauge("tcp.p.buffered", lambda: levels[1])
        self.assertIs(store.get("tcp.p.buffered"), gauge)
        self.assertEqual(gauge.value, 7)
        levels[:] = [10, 0]
        self.assertEqual(gauge.value, 10)
        self.assertIn("tcp.p.buffered: 10", renderText(store))
        self.assertIn({"name": "tcp.p.buffered", "value": 10},
                      json.loads(renderJson(store))["stats"])
        self.assertIn('envoy_tcp_buffered{envoy_tcp_prefix="p"} 10', renderPrometheus(store))

    def test_notACounter(self) -> None:
        """
        A counter of that name is a programming error, not silently replaced.
        """
        store = Store()
        store.counter("c")
        self.assertRaises(TypeError, store.sumGauge, "c", lambda: 1)
