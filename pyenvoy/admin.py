"""
The admin HTTP interface: Envoy's C{/stats}, C{/clusters}, C{/listeners},
C{/config_dump}, C{/ready}, C{/server_info} and the POST-only controls.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pyenvoy.admin_stats import AdminStats, CountedRequest, CountingFactory
from pyenvoy.config.bootstrap import AdminConfig, Thresholds
from pyenvoy.config.reader import snakeCase
from pyenvoy.network.listener import StartupError, watchAccepts
from pyenvoy.process_memory import memoryUsage
from pyenvoy.stats_format import (
    BUCKET_MODES,
    STAT_TYPES,
    renderJson,
    renderPrometheus,
    renderText,
)
from pyenvoy.upstream.cluster import Cluster
from pyenvoy.upstream.host import Host

log = Logger()

#: Content types of admin responses, as Envoy sends them.
TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"

_TYPE_PREFIX = "type.googleapis.com/"
_ADMIN = _TYPE_PREFIX + "envoy.admin.v3."

#: Repeated fields of the config dump that C{?resource=} can select, with
#: the type of their elements.
_RESOURCE_TYPES = {
    "static_clusters": _ADMIN + "ClustersConfigDump.StaticCluster",
    "dynamic_active_clusters": _ADMIN + "ClustersConfigDump.DynamicCluster",
    "dynamic_warming_clusters": _ADMIN + "ClustersConfigDump.DynamicCluster",
    "static_listeners": _ADMIN + "ListenersConfigDump.StaticListener",
    "dynamic_listeners": _ADMIN + "ListenersConfigDump.DynamicListener",
}
_SINGULAR_FIELDS = frozenset({"bootstrap", "last_updated", "version_info"})

#: Fields Envoy marks sensitive; everything under them is redacted.
_SENSITIVE = frozenset({
    "private_key", "password", "secret", "auth_password", "auth_username",
    "downstream_auth_password", "downstream_auth_passwords", "downstream_auth_username",
})
_REDACTED = "[redacted]"

#: Per-host stats that are gauges (the others are counters).
_HOST_GAUGES = frozenset({"cx_active", "rq_active", "rq_pending_active"})

#: Query parameters, as C{urllib.parse.parse_qs} gives them (a parameter
#: without a value, like C{?usedonly}, is kept).
Params = dict[str, list[str]]


#: Envoy's answer to an unknown C{histogram_buckets}.
BUCKETS_USAGE = ("usage: /stats?histogram_buckets="
                 "(cumulative|disjoint|detailed|summary|prometheusnative)\n")


@dataclass(frozen=True)
class Endpoint:
    """
    One admin path.

    @ivar handler: the name of the L{AdminResource} method that answers.
    @ivar post: whether the endpoint changes server state, so only POST
        may call it.
    @ivar params: C{(name, help)} of each query parameter.
    """

    path: str
    help: str
    handler: str
    post: bool = False
    params: tuple[tuple[str, str], ...] = ()


#: Every admin endpoint, sorted by path (the order C{/help} lists them in).
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/", "Admin home page", "home"),
    Endpoint("/certs", "print certs on machine", "certs"),
    Endpoint("/clusters", "upstream cluster status", "clusters",
             params=(("format", "Format to use; One of (text, json)"),)),
    Endpoint("/config_dump", "dump current Envoy configs (experimental)", "configDump",
             params=(("resource", "The resource to dump, e.g. static_clusters"),)),
    Endpoint("/healthcheck/fail", "cause the server to fail health checks",
             "healthCheckFail", post=True),
    Endpoint("/healthcheck/ok", "cause the server to pass health checks",
             "healthCheckOk", post=True),
    Endpoint("/help", "print out list of admin commands", "help"),
    Endpoint("/listeners", "print listener info", "listeners",
             params=(("format", "Format to use; One of (text, json)"),)),
    Endpoint("/memory", "print current allocation/heap usage", "memory"),
    Endpoint("/quitquitquit", "exit the server", "quit", post=True),
    Endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503", "ready"),
    Endpoint("/reset_counters", "reset all counters to zero", "resetCounters", post=True),
    Endpoint("/server_info", "print server version/status information", "serverInfo"),
    Endpoint("/stats", "print server stats", "stats", params=(
        ("usedonly", "Only include non-zero counters and gauges and histograms with values"),
        ("filter", "Regular expression (Python re, partial match) for filtering stats"),
        ("invert_filter", "Show only stats that do not match the filter"),
        ("format", "Format to use; One of (text, json, prometheus)"),
        ("type", "Stat types to include; One of (All, Counters, Gauges, Histograms, "
                 "TextReadouts)"),
        ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, disjoint, "
                              "detailed, summary)"),
        ("hidden", "What to do with hidden stats (pyenvoy has none); One of (include, "
                   "only, exclude)"),
    )),
    Endpoint("/stats/prometheus", "print server stats in prometheus format", "prometheus",
             params=(
                 ("usedonly", "Only include non-zero counters and gauges and histograms "
                              "with values"),
                 ("text_readouts", "Render text_readouts as new gauges with value 0 "
                                   "(pyenvoy has none)"),
                 ("filter", "Regular expression (Python re, partial match) for filtering "
                            "stats"),
                 ("invert_filter", "Invert the filter regex"),
                 ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, "
                                       "summary)"),
             )),
)


def helpText() -> str:
    """
    What C{/help} prints: every endpoint with its one-line help and its
    parameters, as Envoy lists them.
    """
    lines = ["admin commands are:\n"]
    for endpoint in ENDPOINTS:
        post = " (POST)" if endpoint.post else ""
        lines.append(f"  {endpoint.path}{post}: {endpoint.help}\n")
        lines.extend(f"      {name}: {text}\n" for name, text in endpoint.params)
    return "".join(lines)


def _homePage() -> str:
    """
    The HTML index: a link per GET endpoint, a POST form per control.
    """
    rows = []
    for endpoint in ENDPOINTS:
        if endpoint.path == "/":
            continue
        path = html.escape(endpoint.path, quote=True)
        if endpoint.post:
            command = (f"<form action='{path}' method='post'>"
                       f"<button type='submit'>{path}</button></form>")
        else:
            command = f"<a href='{path}'>{path}</a>"
        rows.append(f"<tr><td>{command}</td><td>{html.escape(endpoint.help)}</td></tr>\n")
    return ("<!DOCTYPE html>\n<html><head><title>pyenvoy Admin</title></head><body>\n"
            "<table>\n<thead><tr><th>Command</th><th>Description</th></tr></thead>\n"
            "<tbody>\n" + "".join(rows) + "</tbody>\n</table>\n</body></html>\n")


def _duration(seconds: float) -> str:
    """
    A protobuf Duration in JSON: C{"10s"}, C{"0.250s"}, C{"1.000001s"}.
    """
    whole, nanos = divmod(round(seconds * 1e9), 10**9)
    if nanos == 0:
        return f"{whole}s"
    if nanos % 10**6 == 0:
        return f"{whole}.{nanos // 10**6:03d}s"
    if nanos % 10**3 == 0:
        return f"{whole}.{nanos // 10**3:06d}s"
    return f"{whole}.{nanos:09d}s"


def _socketAddress(host: str, port: int) -> dict[str, Any]:
    """
    An C{envoy.config.core.v3.Address} in JSON.
    """
    return {"socket_address": {"address": host, "port_value": port}}


def _hostPort(host: str, port: int) -> str:
    """
    C{ip:port} as Envoy prints it, with brackets around an IPv6 address.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _param(params: Params, name: str) -> str | None:
    """
    The first value of query parameter C{name}, if given.
    """
    values = params.get(name)
    return values[0] if values else None


class _Inverted:
    """
    A C{filter} with C{invert_filter}: what the pattern does not match.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern

    def search(self, name: str) -> bool | None:
        """
        Like C{re.Pattern.search}: C{None} for no match.
        """
        return None if self._pattern.search(name) else True


class _Nothing:
    """
    A selection that keeps no stat (C{hidden=only}: pyenvoy hides none).
    """

    def search(self, name: str) -> None:
        """
        Like C{re.Pattern.search} finding nothing.
        """
        return None


class _BadQuery(Exception):
    """
    A query Envoy answers with a 400 and this text.
    """


def _statSelection(params: Params) -> Any:
    """
    Which stats C{/stats} and C{/stats/prometheus} show: C{filter} (with
    C{invert_filter}) and C{hidden} (C{include} or C{exclude} show all,
    as pyenvoy hides no stat; C{only} none), or L{_BadQuery}.
    """
    hidden = _param(params, "hidden") or "include"
    if hidden not in ("include", "exclude", "only"):
        raise _BadQuery("usage: /stats?hidden=(include|only|exclude)\n\n")
    if hidden == "only":
        return _Nothing()
    try:
        pattern = _filterParam(params)
    except re.error as e:
        raise _BadQuery(f'Invalid regex: "{e}"\n') from None
    if pattern is not None and "invert_filter" in params:
        return _Inverted(pattern)
    return pattern


def _filterParam(params: Params) -> re.Pattern[str] | None:
    """
    The compiled C{filter} parameter, if given.

    @raise re.error: if it is not a valid regex.
    """
    pattern = _param(params, "filter")
    return re.compile(pattern) if pattern else None


def _field(mapping: Any, name: str) -> Any:
    """
    Field C{name} of a raw config mapping, spelled snake_case or
    lowerCamelCase (Envoy accepts both).
    """
    if not isinstance(mapping, dict):
        return None
    if name in mapping:
        return mapping[name]
    head, *rest = name.split("_")
    return mapping.get(head + "".join(part.title() for part in rest))


def _redact(value: Any, sensitive: bool = False, parent: str = "") -> Any:
    """
    A copy of C{value} with every scalar under a sensitive field (private
    keys, passwords, session ticket keys, generic secrets, Redis auth)
    replaced by C{"[redacted]"}; C{value} itself is not changed.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "@type":
                out[key] = item
                continue
            name = snakeCase(key)
            hidden = (sensitive or name in _SENSITIVE
                      or (name == "keys" and parent == "session_ticket_keys"))
            out[key] = _redact(item, hidden, name)
        return out
    if isinstance(value, list):
        return [_redact(item, sensitive, parent) for item in value]
    return _REDACTED if sensitive else value


def _configDumpConfigs(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The C{configs} of C{/config_dump}, before redaction.
    """
    static = _field(raw, "static_resources") or {}
    clusters = [{"cluster": {"@type": _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster",
                             **cluster}}
                for cluster in _field(static, "clusters") or []]
    listeners = [{"listener": {"@type": _TYPE_PREFIX + "envoy.config.listener.v3.Listener",
                               **listener}}
                 for listener in _field(static, "listeners") or []]
    return [
        {"@type": _ADMIN + "BootstrapConfigDump", "bootstrap": raw},
        {"@type": _ADMIN + "ClustersConfigDump", "static_clusters": clusters},
        {"@type": _ADMIN + "ListenersConfigDump", "static_listeners": listeners},
    ]


def _memoryUsage() -> dict[str, str]:
    """
    Envoy's C{/memory} fields (L{memoryUsage}), as decimal strings.
    """
    usage = memoryUsage()
    return {"allocated": str(usage["allocated"]), "heap_size": str(usage["heap_size"]),
            "pageheap_unmapped": "0", "pageheap_free": "0", "total_thread_cache": "0",
            "total_physical_bytes": str(usage["physical"])}


def _thresholdsText(name: str, label: str, thresholds: Thresholds) -> list[str]:
    """
    The C{/clusters} lines of one priority's circuit-breaker settings.
    """
    return [f"{name}::{label}_priority::max_connections::{thresholds.maxConnections}\n",
            f"{name}::{label}_priority::max_pending_requests::{thresholds.maxPendingRequests}\n",
            f"{name}::{label}_priority::max_requests::{thresholds.maxRequests}\n",
            f"{name}::{label}_priority::max_retries::{thresholds.maxRetries}\n"]


def _thresholdsJson(thresholds: Thresholds) -> dict[str, Any]:
    """
    One priority's circuit-breaker settings, as C{CircuitBreakers.Thresholds}.
    """
    return {"priority": thresholds.priority, "max_connections": thresholds.maxConnections,
            "max_pending_requests": thresholds.maxPendingRequests,
            "max_requests": thresholds.maxRequests, "max_retries": thresholds.maxRetries}


def _clusterText(cluster: Cluster) -> list[str]:
    """
    The C{/clusters} lines of one cluster and its hosts.
    """
    name = cluster.name
    config = cluster.config
    lines = [f"{name}::observability_name::{config.statName}\n"]
    lines += _thresholdsText(name, "default", config.thresholds)
    lines += _thresholdsText(name, "high", config.highThresholds)
    lines.append(f"{name}::added_via_api::false\n")
    for host in cluster.hosts:
        prefix = f"{name}::{host.addressString}::"
        lines.extend(f"{prefix}{stat}::{value}\n" for stat, value in host.stats.items())
        lines += [
            f"{prefix}hostname::{host.hostname}\n",
            f"{prefix}health_flags::{host.healthFlagsString()}\n",
            f"{prefix}weight::{host.weight}\n",
            f"{prefix}region::\n",
            f"{prefix}zone::\n",
            f"{prefix}sub_zone::\n",
            f"{prefix}canary::false\n",
            f"{prefix}priority::0\n",
            f"{prefix}success_rate::-1\n",
            f"{prefix}local_origin_success_rate::-1\n",
        ]
    return lines


def _hostJson(host: Host) -> dict[str, Any]:
    """
    One host as an C{admin.v3.HostStatus}; counters then gauges, as Envoy.
    """
    items = host.stats.items()
    stats = [{"name": n, "value": str(v), "type": "COUNTER"}
             for n, v in items if n not in _HOST_GAUGES]
    stats += [{"name": n, "value": str(v), "type": "GAUGE"}
              for n, v in items if n in _HOST_GAUGES]
    health: dict[str, Any] = {"eds_health_status": "HEALTHY"}
    if not host.healthy:
        health["failed_active_health_check"] = True
    return {"address": _socketAddress(*host.address), "stats": stats, "health_status": health,
            "weight": host.weight, "hostname": host.hostname, "priority": 0, "locality": {}}


def _clusterJson(cluster: Cluster) -> dict[str, Any]:
    """
    One cluster as an C{admin.v3.ClusterStatus}.
    """
    config = cluster.config
    return {
        "name": cluster.name,
        "added_via_api": False,
        "host_statuses": [_hostJson(host) for host in cluster.hosts],
        "circuit_breakers": {"thresholds": [_thresholdsJson(config.thresholds),
                                            _thresholdsJson(config.highThresholds)]},
        "observability_name": config.statName,
    }


class AdminResource(Resource):
    """
    Answers every admin path (see L{ENDPOINTS}) for one server.
    """

    isLeaf = True

    def __init__(self, context: Any) -> None:
        """
        @param context: the L{pyenvoy.server.ServerContext} to report on
            and control.
        """
        super().__init__()
        self.context = context
        self._endpoints = {endpoint.path: endpoint for endpoint in ENDPOINTS}

    def render(self, request: Request) -> bytes:
        """
        Dispatch on the path; refuse a state-changing endpoint unless the
        method is POST (Envoy's 405 and text), and answer an unknown path
        with 404 and the help text.
        """
        endpoint = self._endpoints.get(request.path.decode("utf-8", "replace"))
        if endpoint is None:
            return self._respond(request, "invalid path. " + helpText(), code=404)
        if endpoint.post and request.method != b"POST":
            method = request.method.decode("ascii", "replace")
            return self._respond(request, f"Method {method} not allowed, POST required.",
                                 code=405)
        # A "+" is itself, as for Envoy (a regex like ".+" must survive),
        # not form encoding's space.
        query = urlsplit(request.uri).query.decode("utf-8", "replace").replace("+", "%2B")
        return getattr(self, "_" + endpoint.handler)(
            request, parse_qs(query, keep_blank_values=True))

    # -- helpers -------------------------------------------------------------

    def _respond(self, request: Request, body: str, contentType: str = TEXT,
                 code: int = 200) -> bytes:
        """
        Set the status and Envoy's admin headers; return the encoded body.
        """
        request.setResponseCode(code)
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"cache-control", b"no-cache, max-age=0")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return body.encode("utf-8")

    def _json(self, request: Request, value: Any, code: int = 200) -> bytes:
        """
        Respond with C{value} as pretty-printed JSON.
        """
        return self._respond(request, json.dumps(value, indent=1, default=str) + "\n", JSON,
                             code)

    def _state(self) -> str:
        """
        The server state as Envoy reports it: a failed health check makes
        a LIVE server report DRAINING.
        """
        state = self.context.state
        if state == "LIVE" and self.context.healthCheckFailed:
            return "DRAINING"
        return state

    # -- endpoints -----------------------------------------------------------

    def _home(self, request: Request, params: Params) -> bytes:
        """
        C{/}: the HTML index.
        """
        return self._respond(request, _homePage(), HTML)

    def _help(self, request: Request, params: Params) -> bytes:
        """
        C{/help}: every endpoint and its parameters.
        """
        return self._respond(request, helpText())

    def _certs(self, request: Request, params: Params) -> bytes:
        """
        C{/certs}: each TLS context's CA and certificate, as Envoy's
        C{admin.v3.Certificates}.
        """
        return self._json(request, self.context.certificates.report(
            self.context, self.context.wallClock()))

    def _stats(self, request: Request, params: Params) -> bytes:
        """
        C{/stats}: text, JSON or Prometheus, after refreshing the server gauges.
        """
        outputFormat = _param(params, "format") or "text"
        if outputFormat == "prometheus":
            return self._prometheus(request, params)
        if outputFormat not in ("text", "json"):
            return self._respond(request, "usage: /stats?format=(json|prometheus|text)\n",
                                 code=400)
        statType = _param(params, "type") or "All"
        if statType not in STAT_TYPES:
            return self._respond(request, "invalid &type= param\n", code=400)
        buckets = _param(params, "histogram_buckets") or "none"
        if buckets == "prometheusnative":
            return self._respond(
                request, "Invalid histogram_buckets type for non prometheus stats type", code=400)
        if buckets not in BUCKET_MODES:
            return self._respond(request, BUCKETS_USAGE, code=400)
        try:
            pattern = _statSelection(params)
        except _BadQuery as e:
            return self._respond(request, str(e), code=400)
        self.context.refreshServerGauges()
        usedOnly = "usedonly" in params
        if outputFormat == "json":
            body = renderJson(self.context.store, pattern, usedOnly, statType, buckets)
            return self._respond(request, body, JSON)
        body = renderText(self.context.store, pattern, usedOnly, statType, buckets)
        return self._respond(request, body)

    def _prometheus(self, request: Request, params: Params) -> bytes:
        """
        C{/stats/prometheus}: Prometheus text exposition.
        """
        buckets = _param(params, "histogram_buckets") or "cumulative"
        if buckets in ("detailed", "disjoint"):
            return self._respond(request, "unsupported prometheus histogram bucket mode",
                                 code=400)
        if buckets == "prometheusnative":
            return self._respond(request, "unsupported prometheusnative histogram type when not "
                                 "using protobuf exposition format", code=400)
        if buckets not in ("cumulative", "summary", "none"):
            return self._respond(request, BUCKETS_USAGE, code=400)
        try:
            pattern = _statSelection(params)
        except _BadQuery as e:
            return self._respond(request, str(e), code=400)
        self.context.refreshServerGauges()
        return self._respond(request, renderPrometheus(
            self.context.store, "usedonly" in params, pattern, summary=buckets == "summary"))

    def _clusters(self, request: Request, params: Params) -> bytes:
        """
        C{/clusters}: C{name::key::value} lines, or admin.v3.Clusters JSON.
        """
        clusters = list(self.context.clusterManager.clusters.values())
        try:
            pattern = _filterParam(params)
        except re.error as e:
            return self._respond(request, f'Invalid regex: "{e}"\n', code=400)
        if pattern is not None:
            clusters = [c for c in clusters if pattern.search(c.name)]
        if _param(params, "format") == "json":
            return self._json(request, {"cluster_statuses": [_clusterJson(c) for c in clusters]})
        return self._respond(request, "".join(line for c in clusters for line in _clusterText(c)))

    def _listeners(self, request: Request, params: Params) -> bytes:
        """
        C{/listeners}: C{name::address} lines, or admin.v3.Listeners JSON; the
        address is the bound one (the configured one when not listening).
        """
        rows = []
        for service in self.context.listeners:
            configured = service.config.address
            host, port = service.boundAddress() or (configured.address, configured.port)
            address = _socketAddress(host, port)
            if configured.protocol != "TCP":
                address["socket_address"]["protocol"] = configured.protocol
            rows.append((service.name, host, port, address))
        if _param(params, "format") == "json":
            return self._json(request, {"listener_statuses": [
                {"name": name, "local_address": address} for name, _, _, address in rows]})
        return self._respond(request, "".join(
            f"{name}::{_hostPort(host, port)}\n" for name, host, port, _ in rows))

    def _configDump(self, request: Request, params: Params) -> bytes:
        """
        C{/config_dump}: the static config, redacted, or one repeated field
        of it with C{?resource=}.
        """
        configs = _configDumpConfigs(self.context.bootstrap.raw)
        wanted = _param(params, "resource")
        if wanted:
            if wanted in _SINGULAR_FIELDS:
                return self._respond(
                    request, f"{wanted} is not a repeated field. Use ?mask={wanted} to get only "
                             "this field", code=400)
            if wanted not in _RESOURCE_TYPES:
                return self._respond(request, f"{wanted} not found in config dump", code=404)
            configs = [{"@type": _RESOURCE_TYPES[wanted], **item}
                       for config in configs for item in config.get(wanted, ())]
        return self._json(request, {"configs": _redact(configs)})

    def _ready(self, request: Request, params: Params) -> bytes:
        """
        C{/ready}: the state, with 200 only when LIVE.
        """
        state = self._state()
        return self._respond(request, state + "\n", code=200 if state == "LIVE" else 503)

    def _serverInfo(self, request: Request, params: Params) -> bytes:
        """
        C{/server_info}: admin.v3.ServerInfo JSON.
        """
        context = self.context
        uptime = _duration(context.uptime())
        options = dict(context.commandLineOptions)
        options.update(concurrency=1, mode="Serve", drain_time=_duration(context.drainTime),
                       restart_epoch=0, disable_hot_restart=True)
        return self._json(request, {
            "version": context.version,
            "state": self._state(),
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": uptime,
            "hot_restart_version": "disabled",
            "command_line_options": options,
            "node": {key: value for key, value in context.bootstrap.node.items() if value},
        })

    def _memory(self, request: Request, params: Params) -> bytes:
        """
        C{/memory}: Envoy's admin.v3.Memory fields, from the process's RSS.
        """
        return self._json(request, _memoryUsage())

    def _healthCheckFail(self, request: Request, params: Params) -> bytes:
        """
        C{POST /healthcheck/fail}: report DRAINING from now on (no listener
        drains; see docs/admin.md).
        """
        self.context.healthCheckFailed = True
        return self._respond(request, "OK\n")

    def _healthCheckOk(self, request: Request, params: Params) -> bytes:
        """
        C{POST /healthcheck/ok}: undo C{/healthcheck/fail}.
        """
        self.context.healthCheckFailed = False
        return self._respond(request, "OK\n")

    def _quit(self, request: Request, params: Params) -> bytes:
        """
        C{POST /quitquitquit}: answer, then shut down (drain, exit) on the
        next reactor turn.
        """
        self.context.reactor.callLater(0, self.context.shutdown)
        return self._respond(request, "OK\n")

    def _resetCounters(self, request: Request, params: Params) -> bytes:
        """
        C{POST /reset_counters}: zero every counter.
        """
        self.context.store.reset()
        return self._respond(request, "OK\n")


class AdminSite(Site):
    """
    The admin site; it keeps no access log (C{admin.access_log} is not
    supported), so a Prometheus scrape does not write a log line.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


class AdminService(Service):
    """
    Serves the admin interface on C{admin.address} for the life of the
    server.  Binding happens in C{privilegedStartService} and raises
    L{StartupError} when the port cannot be bound.
    """

    def __init__(self, adminConfig: AdminConfig, context: Any) -> None:
        """
        @param adminConfig: the bootstrap's C{admin} block.
        @param context: the L{pyenvoy.server.ServerContext}.
        """
        self.config = adminConfig
        self.context = context
        self.site = AdminSite(AdminResource(context))
        self.site.requestFactory = CountedRequest
        self.stats = AdminStats(context.store, context.reactor)
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """
        Bind now, so a port that cannot be bound stops start-up.
        """
        super().privilegedStartService()
        address = self.config.address
        try:
            self.port = self.context.reactor.listenTCP(
                address.port, CountingFactory(self.site, self.stats), interface=address.address)
        except CannotListenError as e:
            raise StartupError(f"admin.address: cannot bind {address}: {e.socketError}") from None
        watchAccepts(self.port, self.stats.acceptedPerEvent, lambda: self.stats.accepted)
        host = self.port.getHost()
        log.info("admin on {host}:{port}", host=host.host, port=host.port)

    def boundAddress(self) -> tuple[str, int] | None:
        """
        C{(host, port)} actually bound (the port is real even for port 0),
        or C{None} when not listening.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return (host.host, host.port)

    def stopListening(self) -> Any:
        """
        Stop accepting admin connections; return the port's Deferred, if
        it was listening.
        """
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def stopService(self) -> Any:
        """
        Stop serving.
        """
        super().stopService()
        return self.stopListening()
