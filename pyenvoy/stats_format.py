"""
Render a L{pyenvoy.stats.Store} the way Envoy's admin C{/stats} does: text,
JSON, and Prometheus text exposition with Envoy's tag extraction.
"""

from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from pyenvoy.stats import DEFAULT_BUCKETS, SUPPORTED_QUANTILES, Histogram, Stat, Store

#: Envoy's C{?type=} values and the stat kinds each selects.
STAT_TYPES: dict[str, tuple[str, ...]] = {
    "All": ("counter", "gauge", "histogram"),
    "Counters": ("counter",),
    "Gauges": ("gauge",),
    "Histograms": ("histogram",),
    "TextReadouts": (),
}

_PROMETHEUS_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

# Pieces of Envoy's default tag regexes (well_known_names.cc).
_VALUE = r"[^.]+"
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_CIPHER = r"[\w-]+"
_LISTENER_OR_CLUSTER = r"(?:listener|cluster)\..*?"


@dataclass(frozen=True)
class TagExtractor:
    """
    Pulls one tag out of a stat name, as an Envoy tag extractor does.

    The regex is searched in the full stat name.  Its first group is the
    text removed from the name; its second group, if it matched
    something, is the tag value (otherwise the first group is).

    @ivar name: the tag name, e.g. C{envoy.cluster_name}; Prometheus shows
        it as the label C{envoy_cluster_name}.
    @ivar regex: the compiled pattern.
    @ivar negativeMatch: a value that does not count as a match (Envoy
        keeps C{listener.admin.*} untagged this way).
    """

    name: str
    regex: re.Pattern[str]
    negativeMatch: str = ""

    def extract(self, statName: str) -> tuple[str, int, int] | None:
        """
        Return C{(value, start, end)}, where C{statName[start:end]} is to be
        removed, or C{None} when the tag is not in C{statName}.
        """
        match = self.regex.search(statName)
        if match is None or not match.group(1):
            return None
        value = match.group(1)
        if self.regex.groups > 1 and match.group(2):
            value = match.group(2)
        if self.negativeMatch and value == self.negativeMatch:
            return None
        return value, match.start(1), match.end(1)


def _extractor(name: str, regex: str, negativeMatch: str = "") -> TagExtractor:
    compiled = re.compile(regex)
    if compiled.groups < 1:
        raise ValueError(f"tag extractor {name!r}: the regex needs a group to remove: {regex!r}")
    return TagExtractor(name, compiled, negativeMatch)


#: The tag extractors used for Prometheus output, in the order tried.
#: These are Envoy's defaults for the stats pyenvoy has; filters add
#: theirs with L{registerTagExtractor}.
TAG_EXTRACTORS: list[TagExtractor] = [
    # mongo.<prefix>.collection.<collection>.callsite.(<callsite>.)query.*
    _extractor("envoy.mongo_callsite",
               rf"^mongo\.{_VALUE}\.collection\.{_VALUE}\.callsite\.(({_VALUE})\.)query(?:\.|$)"),
    # mongo.<prefix>.collection.(<collection>.)**.query.*
    _extractor("envoy.mongo_collection",
               rf"^mongo\.{_VALUE}\.collection\.(({_VALUE})\.)(?:{_VALUE}\.)*query\.{_VALUE}$"),
    # mongo.<prefix>.cmd.(<cmd>.)*
    _extractor("envoy.mongo_cmd", rf"^mongo\.{_VALUE}\.cmd\.(({_VALUE})\.)"),
    # listener.<address>.ssl.ciphers.(<cipher>)
    _extractor("envoy.ssl_cipher", rf"^listener\..*?\.ssl\.ciphers(\.({_CIPHER}))$"),
    # (listener|cluster).<name>.ssl.curves.(<curve>)
    _extractor("envoy.ssl_curve", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.curves(\.({_CIPHER}))$"),
    # (listener|cluster).<name>.ssl.sigalgs.(<algorithm>)
    _extractor("envoy.ssl_sigalg", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.sigalgs(\.({_CIPHER}))$"),
    # (listener|cluster).<name>.ssl.versions.(<version>)
    _extractor("envoy.ssl_version",
               rf"^{_LISTENER_OR_CLUSTER}\.ssl\.versions(\.(TLSv\d\.\d))$"),
    # cluster.<name>.ssl.ciphers.(<cipher>)
    _extractor("cipher_suite", rf"^cluster\.{_VALUE}\.ssl\.ciphers(\.({_CIPHER}))$"),
    # [<prefix>.]downstream_rq_(<class>)xx: http.admin.* and its listener copy
    _extractor("envoy.response_code_class", r"_rq_(\d)xx$"),
    # http.(<stat_prefix>.)*
    _extractor("envoy.http_conn_manager_prefix", rf"^http\.(({_VALUE})\.)"),
    # listener.<address>.http.(<stat_prefix>.)*
    _extractor("envoy.http_conn_manager_prefix", rf"^listener\..*?\.http\.(({_VALUE})\.)"),
    _extractor("envoy.tcp_prefix", rf"^tcp\.(({_VALUE})\.)"),
    _extractor("envoy.udp_prefix", rf"^udp\.(({_VALUE})\.)"),
    _extractor("envoy.clientssl_prefix", rf"^auth\.clientssl\.(({_VALUE})\.)"),
    _extractor("envoy.cluster_name", rf"^cluster\.(({_VALUE})\.)"),
    # (listener.<address>|server|listener_manager|...).(worker_<id>.)*
    _extractor("envoy.worker_id",
               rf"^(?:listener\.(?:{_ADDRESS}|{_VALUE})|server|listener_manager"
               rf"|thread_local_cluster_manager)\.worker_((\d+)\.)"),
    # listener.(<address or stat_prefix>.)*, except listener.admin.
    _extractor("envoy.listener_address", rf"^listener\.(({_ADDRESS}|{_VALUE})\.)", "admin"),
    _extractor("envoy.mongo_prefix", rf"^mongo\.(({_VALUE})\.)"),
    _extractor("envoy.redis_prefix", rf"^redis\.(({_VALUE})\.)"),
    _extractor("envoy.local_network_ratelimit_prefix", rf"^local_rate_limit\.(({_VALUE})\.)"),
    _extractor("envoy.connection_limit_prefix", rf"^connection_limit\.(({_VALUE})\.)"),
    # (<stat_prefix>.)rbac.*
    _extractor("envoy.rbac_prefix", rf"^(({_VALUE})\.)rbac\."),
    # proxy_proto.(<stat_prefix>.)*, but not proxy_proto.versions.*
    _extractor("envoy.proxy_protocol_prefix", rf"^proxy_proto\.(({_VALUE})\.).+$", "versions"),
    # proxy_proto.([<stat_prefix>.]versions.v(<version>).)<stat>
    _extractor("envoy.proxy_protocol_version",
               rf"^proxy_proto\.((?:{_VALUE}\.)?versions\.v(\d)\.)\w+$"),
]


def registerTagExtractor(name: str, regex: str, negativeMatch: str = "") -> TagExtractor:
    """
    Add a tag extractor (for a filter whose stats Envoy tags).

    @param name: the tag name, e.g. C{envoy.postgres_prefix}.
    @param regex: searched in each stat name; group 1 is removed from the
        name, group 2 (if any) is the value.
    @param negativeMatch: a value that does not count as a match.
    @raise ValueError: if C{regex} has no group.
    @raise re.error: if C{regex} does not compile.
    """
    extractor = _extractor(name, regex, negativeMatch)
    TAG_EXTRACTORS.append(extractor)
    return extractor


def extractTags(statName: str) -> tuple[str, list[tuple[str, str]]]:
    """
    Apply L{TAG_EXTRACTORS} to C{statName} as Envoy's tag producer does:
    each extractor sees the whole name, the parts they match are removed
    together, and a tag name is extracted at most once.

    @return: the tag-extracted name and the C{(tag name, value)} pairs,
        e.g. C{("cluster.upstream_cx_total", [("envoy.cluster_name", "db")])}
        for C{cluster.db.upstream_cx_total}.
    """
    tags: list[tuple[str, str]] = []
    seen: set[str] = set()
    removed = [False] * len(statName)
    for extractor in TAG_EXTRACTORS:
        if extractor.name in seen:
            continue
        found = extractor.extract(statName)
        if found is None:
            continue
        value, start, end = found
        seen.add(extractor.name)
        tags.append((extractor.name, value))
        removed[start:end] = [True] * (end - start)
    return "".join(c for c, gone in zip(statName, removed) if not gone), tags


def _used(stat: Stat) -> bool:
    if isinstance(stat, Histogram):
        return stat.count > 0
    return stat.value != 0


def _select(store: Store, filter: re.Pattern[str] | str | None, usedOnly: bool,
            type: str | None) -> Iterator[Stat]:
    if type is None:
        type = "All"
    if type not in STAT_TYPES:
        raise ValueError(f"unknown stat type {type!r}; known: {', '.join(STAT_TYPES)}")
    kinds = STAT_TYPES[type]
    pattern = re.compile(filter) if isinstance(filter, str) else filter
    for stat in store:
        if stat.kind not in kinds:
            continue
        if pattern is not None and pattern.search(stat.name) is None:
            continue
        if usedOnly and not _used(stat):
            continue
        yield stat


def _formatNumber(value: float) -> str:
    """
    Format a number as Envoy's C{fmt} does, integral values without a
    decimal point (C{1}, not C{1.0}); others are rounded to six decimals
    so that float noise (C{4.699999999999999}) does not show.
    """
    if not math.isfinite(value):
        return str(value)
    value = round(value, 6)
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _quantileSummary(histogram: Histogram) -> str:
    quantiles = histogram.quantiles()
    if quantiles is None:
        return "No recorded values"
    return " ".join(f"P{q:g}(nan,{_formatNumber(v)})"
                    for q, v in zip(SUPPORTED_QUANTILES, quantiles))


#: Envoy's C{/stats?histogram_buckets=} modes for text and JSON (C{none} is
#: the default, quantiles, as C{summary}).
BUCKET_MODES = ("cumulative", "disjoint", "detailed", "summary", "none")


def _bucketCounts(histogram: Histogram, disjoint: bool) -> list[tuple[float, int]]:
    """
    C{(upper bound, count)} per default bucket: values up to the bound
    (cumulative) or between the previous bound and this one (disjoint).
    """
    if disjoint:
        return list(zip(DEFAULT_BUCKETS, histogram.bucketCounts))
    return histogram.cumulativeBuckets()


def logLinearBins(values: Iterable[float]) -> list[tuple[float, float, int]]:
    """
    C{(lower bound, width, count)} of Envoy's detailed buckets (two
    significant digits: 1 is C{[1, 1.1)}, 150 is C{[150, 160)}, 0 is its own
    bucket of width 0), in order.
    """
    bins: collections.Counter[tuple[int, int]] = collections.Counter()
    for value in values:
        if value <= 0:
            bins[(0, 0)] += 1
            continue
        exponent = math.floor(math.log10(value)) - 1
        mantissa = math.floor(value / _power(exponent))
        # log10 may round across a power of ten: keep two digits.
        if mantissa >= 100:
            mantissa, exponent = math.floor(value / _power(exponent + 1)), exponent + 1
        elif mantissa < 10:
            mantissa, exponent = math.floor(value / _power(exponent - 1)), exponent - 1
        bins[(mantissa, exponent)] += 1
    out = []
    for mantissa, exponent in sorted(bins, key=lambda b: b[0] * _power(b[1])):
        count = bins[(mantissa, exponent)]
        if mantissa == 0:
            out.append((0.0, 0.0, count))
        else:
            # Divided, not multiplied, for negative exponents: 1.1, not 1.1000000000000001.
            lower = mantissa * _power(exponent) if exponent >= 0 else mantissa / 10 ** -exponent
            out.append((lower, _power(exponent), count))
    return out


def _power(exponent: int) -> float:
    """
    10 ** exponent, exact for the negative exponents a decimal reads (0.1, 0.01).
    """
    return 10.0 ** exponent if exponent >= 0 else 1 / 10 ** -exponent


def _histogramText(histogram: Histogram, buckets: str) -> str:
    if buckets in ("summary", "none") or histogram.count == 0:
        return " " + _quantileSummary(histogram)
    if buckets == "detailed":
        totals = ", ".join(f"{lower:g},{width:g}:{count}"
                           for lower, width, count in logLinearBins(histogram.recent()))
        return (f"\n  totals={totals}\n  intervals=\n"
                f"  summary={_quantileSummary(histogram)}")
    return " " + " ".join(f"B{bound:g}(0,{count})"
                          for bound, count in _bucketCounts(histogram, buckets == "disjoint"))


def renderText(store: Store, filter: re.Pattern[str] | str | None = None,
               usedOnly: bool = False, type: str | None = None,
               buckets: str = "summary") -> str:
    """
    Envoy's C{/stats}: C{name: value} lines for counters and gauges sorted
    together by name, then one line per histogram with its quantiles
    (C{P0(nan,1) P25(nan,2.5) ...}; the interval value is always C{nan}
    because pyenvoy keeps no flush intervals) or C{No recorded values}.
    With C{buckets} C{cumulative} or C{disjoint} a histogram is its
    default buckets instead (C{B0.5(0,62) B1(0,70) ...}, interval counts 0),
    with C{detailed} Envoy's three lines (C{totals=} its two-digit buckets,
    from the most recent values pyenvoy keeps; C{intervals=}; C{summary=}).

    @param filter: a regex searched in each name (a partial match keeps
        the stat), as C{?filter=}.
    @param usedOnly: keep only non-zero counters and gauges and histograms
        with values, as C{?usedonly}.
    @param type: a key of L{STAT_TYPES}, as C{?type=}.
    @raise ValueError: for an unknown C{type}.
    """
    lines = []
    histograms = []
    for stat in _select(store, filter, usedOnly, type):
        if isinstance(stat, Histogram):
            histograms.append(f"{stat.name}:{_histogramText(stat, buckets)}\n")
        else:
            lines.append(f"{stat.name}: {stat.value}\n")
    return "".join(lines + histograms)


def _jsonNumber(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _jsonBound(value: float) -> float | int:
    return int(value) if value == int(value) else value


def _histogramJson(histogram: Histogram, buckets: str) -> dict[str, Any]:
    quantiles = histogram.quantiles() or [math.nan] * len(SUPPORTED_QUANTILES)
    if buckets == "detailed":
        return {
            "name": histogram.name,
            "totals": [{"lower_bound": _jsonBound(lower), "width": _jsonBound(width),
                        "count": count}
                       for lower, width, count in logLinearBins(histogram.recent())],
            "intervals": [],
            "percentiles": [{"cumulative": _jsonNumber(v), "interval": None}
                            for v in quantiles],
        }
    if buckets in ("cumulative", "disjoint"):
        return {"name": histogram.name,
                "buckets": [{"upper_bound": _jsonBound(bound), "interval": 0, "cumulative": count}
                            for bound, count in _bucketCounts(histogram, buckets == "disjoint")]}
    return {"name": histogram.name,
            "values": [{"interval": None, "cumulative": _jsonNumber(v)} for v in quantiles]}


def renderJson(store: Store, filter: re.Pattern[str] | str | None = None,
               usedOnly: bool = False, type: str | None = None,
               buckets: str = "summary") -> str:
    """
    Envoy's C{/stats?format=json}: C{{"stats": [{"name": ..., "value": ...},
    ..., {"histograms": {"supported_quantiles": [...], "computed_quantiles":
    [{"name": ..., "values": [{"interval": null, "cumulative": x}, ...]}]}}]}}.

    A histogram without values has C{null} cumulative values.  With
    C{buckets} C{cumulative} or C{disjoint}, C{"histograms"} is a list of
    C{{"name", "buckets": [{"upper_bound", "interval": 0, "cumulative"}]}};
    with C{detailed}, C{{"supported_percentiles", "details": [{"name",
    "totals": [{"lower_bound", "width", "count"}], "intervals": [],
    "percentiles"}]}}, as Envoy's.  Other parameters are those of
    L{renderText}.

    @raise ValueError: for an unknown C{type}.
    """
    stats: list[dict] = []
    computed = []
    for stat in _select(store, filter, usedOnly, type):
        if isinstance(stat, Histogram):
            computed.append(_histogramJson(stat, buckets))
        else:
            stats.append({"name": stat.name, "value": stat.value})
    if computed:
        if buckets in ("cumulative", "disjoint"):
            stats.append({"histograms": computed})
        elif buckets == "detailed":
            stats.append({"histograms": {"supported_percentiles": list(SUPPORTED_QUANTILES),
                                         "details": computed}})
        else:
            stats.append({"histograms": {"supported_quantiles": list(SUPPORTED_QUANTILES),
                                         "computed_quantiles": computed}})
    return json.dumps({"stats": stats})


def _escapeLabelValue(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(tags: list[tuple[str, str]], *extra: tuple[str, str]) -> str:
    pairs = [(_PROMETHEUS_UNSAFE.sub("_", name), value) for name, value in tags]
    pairs.extend(extra)
    return ",".join(f'{name}="{_escapeLabelValue(value)}"' for name, value in pairs)


def _histogramLines(metric: str, tags: list[tuple[str, str]], histogram: Histogram) -> list[str]:
    lines = [f"{metric}_bucket{{{_labels(tags, ('le', _formatNumber(bound)))}}} {count}\n"
             for bound, count in histogram.cumulativeBuckets()]
    lines.append(f"{metric}_bucket{{{_labels(tags, ('le', '+Inf'))}}} {histogram.count}\n")
    labels = _labels(tags)
    lines.append(f"{metric}_sum{{{labels}}} {_formatNumber(histogram.sum)}\n")
    lines.append(f"{metric}_count{{{labels}}} {histogram.count}\n")
    return lines


def _summaryLines(metric: str, tags: list[tuple[str, str]], histogram: Histogram) -> list[str]:
    """
    One histogram as a Prometheus summary (Envoy's C{histogram_buckets=summary}):
    its quantiles (C{nan} when empty), C{_sum} and C{_count}.
    """
    quantiles = histogram.quantiles() or [math.nan] * len(SUPPORTED_QUANTILES)
    lines = [f"{metric}{{{_labels(tags, ('quantile', _formatNumber(q / 100)))}}} "
             f"{_formatNumber(v)}\n" for q, v in zip(SUPPORTED_QUANTILES, quantiles)]
    labels = _labels(tags)
    lines.append(f"{metric}_sum{{{labels}}} {_formatNumber(histogram.sum)}\n")
    lines.append(f"{metric}_count{{{labels}}} {histogram.count}\n")
    return lines


def renderPrometheus(store: Store, usedOnly: bool = False,
                     filter: re.Pattern[str] | str | None = None,
                     summary: bool = False) -> str:
    """
    Envoy's C{/stats/prometheus}: text exposition format 0.0.4.

    Each stat's tags are taken out of its name by L{TAG_EXTRACTORS}; the
    metric is C{envoy_} plus the rest with C{[^a-zA-Z0-9_]} made C{_}, and
    the tags become labels (C{envoy.cluster_name} -> C{envoy_cluster_name}).
    Series are grouped under one C{# TYPE} line per metric: counters,
    then gauges, then histograms (C{_bucket} per bound up to C{+Inf},
    C{_sum}, C{_count}), each sorted as Envoy sorts them: by the tag-free
    stat name before C{.} becomes C{_} (so C{cluster.*} comes before
    C{cluster_manager.*}).  A metric name that
    two kinds of stat map to is kept for the first kind only, so the
    output always parses.

    @param usedOnly: as for L{renderText}.
    @param filter: as for L{renderText}, applied to the full stat name.
    @param summary: histograms as summaries (quantiles) instead of
        buckets, as Envoy's C{histogram_buckets=summary}.
    """
    families: dict[str, tuple[str, list[tuple[list[tuple[str, str]], Stat]], str]] = {}
    for stat in _select(store, filter, usedOnly, None):
        extracted, tags = extractTags(stat.name)
        metric = "envoy_" + _PROMETHEUS_UNSAFE.sub("_", extracted)
        kind, series, _ = families.setdefault(metric, (stat.kind, [], extracted))
        if kind == stat.kind:
            series.append((tags, stat))
    out = []
    for kind in ("counter", "gauge", "histogram"):
        ordered = sorted((name, m) for m, (k, _, name) in families.items() if k == kind)
        for _, metric in ordered:
            shown = "summary" if summary and kind == "histogram" else kind
            out.append(f"# TYPE {metric} {shown}\n")
            for tags, stat in families[metric][1]:
                if isinstance(stat, Histogram):
                    lines = _summaryLines if summary else _histogramLines
                    out.extend(lines(metric, tags, stat))
                else:
                    out.append(f"{metric}{{{_labels(tags)}}} {stat.value}\n")
    return "".join(out)
