"""
The Envoy v3 bootstrap, read into frozen config objects.

Only what pyenvoy implements is accepted; a field Envoy has that pyenvoy
does not is an error that says so, never silently ignored.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from pyenvoy.config.reader import ConfigError, ConfigErrors, Problems, Section

#: Envoy's default for per_connection_buffer_limit_bytes (listeners and clusters).
DEFAULT_BUFFER_LIMIT = 1024 * 1024

#: Envoy's default circuit-breaker thresholds.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3

#: Envoy's ring hash defaults and limit (C{ring_hash_lb_config}).
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
MAX_RING_SIZE = 8 * 1024 * 1024

#: Envoy's Maglev default table size (a prime) and limit (C{maglev_lb_config}).
DEFAULT_MAGLEV_TABLE_SIZE = 65537
MAX_MAGLEV_TABLE_SIZE = 5000011


def isPrime(n: int) -> bool:
    """
    Whether C{n} is prime (Maglev table sizes must be).
    """
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def _uint64Value(section: Section, name: str, default: int, maximum: int) -> int:
    # A google.protobuf.UInt64Value: a bare integer or {value: N}.
    value = section.raw.get(name)
    if isinstance(value, dict) and set(value) == {"value"}:
        section.raw[name] = value["value"]
    result = section.integer(name, default, minimum=0, maximum=maximum)
    return default if result is None else result

_BOOTSTRAP_UNSUPPORTED = (
    "node_context_params", "dynamic_resources", "cluster_manager", "hds_config",
    "flags_path", "stats_sinks", "deferred_stat_options", "stats_config",
    "stats_flush_interval", "stats_flush_on_admin", "watchdog", "watchdogs", "tracing",
    "layered_runtime", "overload_manager", "enable_dispatcher_stats", "header_prefix",
    "stats_server_version_override", "use_tcp_for_dns_lookups", "dns_resolution_config",
    "typed_dns_resolver_config", "bootstrap_extensions", "fatal_actions", "config_sources",
    "default_config_source", "default_socket_interface", "certificate_provider_instances",
    "inline_headers", "perf_tracing_file_path", "default_regex_engine",
    "xds_delegate_extension", "xds_config_tracker_extension", "listener_manager",
    "application_log_config", "grpc_async_client_manager_config",
    "memory_allocator_manager",
)
_ADMIN_UNSUPPORTED = (
    "access_log", "access_log_path", "profile_path", "socket_options",
    "ignore_global_conn_limit", "allow_paths",
)
_LISTENER_UNSUPPORTED = (
    "additional_addresses", "filter_chain_matcher", "use_original_dst", "deprecated_v1",
    "transparent", "freebind", "socket_options", "tcp_fast_open_queue_length",
    "api_listener", "connection_balance_config", "reuse_port",
    "access_log", "max_connections_to_accept_per_socket_event", "bind_to_port",
    "internal_listener", "enable_mptcp", "ignore_global_conn_limit",
    "bypass_overload_manager", "listener_specifier", "fcds_config",
)
_CHAIN_UNSUPPORTED = (
    "use_proxy_proto",
    "transport_socket_connect_timeout", "on_demand_configuration",
)
_CLUSTER_UNSUPPORTED = (
    "cluster_type", "eds_cluster_config", "health_checks", "max_requests_per_connection",
    "upstream_http_protocol_options", "common_http_protocol_options",
    "http_protocol_options", "http2_protocol_options", "typed_extension_protocol_options",
    "dns_jitter", "dns_failure_refresh_rate", "dns_resolvers",
    "use_tcp_for_dns_lookups", "dns_resolution_config", "typed_dns_resolver_config",
    "outlier_detection", "cleanup_interval", "upstream_bind_config", "lb_subset_config",
    "original_dst_lb_config",
    "round_robin_lb_config", "protocol_selection",
    "upstream_connection_options", "close_connections_on_host_health_failure",
    "ignore_health_on_host_removal", "filters", "load_balancing_policy", "lrs_server",
    "track_timeout_budgets", "upstream_config", "track_cluster_stats",
    "preconnect_policy", "connection_pool_per_downstream_connection",
    "transport_socket_matches", "lrs_report_endpoint_metrics",
)

#: Envoy's C{DEFAULT_UDP_MAX_DATAGRAM_SIZE}: what a UDP socket reads at most
#: per datagram unless C{max_rx_datagram_size} says otherwise.
DEFAULT_UDP_MAX_DATAGRAM_SIZE = 1500

#: The UDP listener filter a UDP listener needs (the only one there is).
UDP_PROXY_FILTER = "envoy.filters.udp_listener.udp_proxy"

CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
RING_HASH_FUNCTIONS = ("XX_HASH", "MURMUR_HASH_2")
# The cluster's lb_config oneof: at most one of these may be set.
_LB_CONFIGS = ("ring_hash_lb_config", "maglev_lb_config", "original_dst_lb_config",
               "least_request_lb_config", "round_robin_lb_config")


@dataclass(frozen=True)
class SocketAddress:
    """
    An IP address and port (C{address.socket_address}).
    """

    address: str
    port: int
    protocol: str = "TCP"

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def isIP(self) -> bool:
        """
        Whether C{address} is a literal IP rather than a host name.
        """
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class FilterConfig:
    """
    One configured network (or listener) filter.
    """

    name: str
    factory: Any
    config: Any
    path: str


@dataclass(frozen=True)
class FilterChainConfig:
    """
    One C{filter_chains[]} entry.
    """

    name: str
    filters: tuple[FilterConfig, ...]
    path: str
    #: The chain's checked C{DownstreamTlsContext}
    #: (L{pyenvoy.network.tls.DownstreamTlsConfig}), or C{None} for plaintext.
    tls: Any = None
    #: The chain's C{filter_chain_match}
    #: (L{pyenvoy.network.chain_match.FilterChainMatch}); C{None} matches all.
    match: Any = None


@dataclass(frozen=True)
class UdpSocketConfig:
    """
    A C{config.core.v3.UdpSocketConfig}: how a UDP socket reads.

    @ivar maxRxDatagramSize: the largest datagram read whole; a larger one
        is dropped and counted.
    @ivar preferGro: accepted for compatibility; pyenvoy reads one datagram
        per system call either way.
    """

    maxRxDatagramSize: int = DEFAULT_UDP_MAX_DATAGRAM_SIZE
    preferGro: bool = False


@dataclass(frozen=True)
class ListenerConfig:
    """
    One C{static_resources.listeners[]} entry.
    """

    name: str
    address: SocketAddress
    filterChains: tuple[FilterChainConfig, ...]
    defaultFilterChain: FilterChainConfig | None
    listenerFilters: tuple[FilterConfig, ...]
    perConnectionBufferLimitBytes: int
    statPrefix: str | None
    listenerFiltersTimeout: float
    continueOnListenerFiltersTimeout: bool
    tcpBacklogSize: int
    drainType: str
    path: str
    #: C{udp_listener_config.downstream_socket_config} (UDP listeners only).
    downstreamSocketConfig: UdpSocketConfig = field(default_factory=UdpSocketConfig)

    @property
    def isUdp(self) -> bool:
        """
        Whether this is a UDP listener (C{protocol: UDP}).
        """
        return self.address.protocol == "UDP"

    @property
    def statRoot(self) -> str:
        """
        C{listener.<stat_prefix or address>}, as Envoy roots listener stats.
        """
        return f"listener.{self.statPrefix or self.address}"


@dataclass(frozen=True)
class EndpointConfig:
    """
    One C{lb_endpoints[]} entry.
    """

    address: SocketAddress
    weight: int = 1
    hostname: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Thresholds:
    """
    Circuit-breaker thresholds for one priority.
    """

    priority: str = "DEFAULT"
    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    maxPendingRequests: int = DEFAULT_MAX_PENDING_REQUESTS
    maxRequests: int = DEFAULT_MAX_REQUESTS
    maxRetries: int = DEFAULT_MAX_RETRIES
    trackRemaining: bool = False


@dataclass(frozen=True)
class RingHashLbConfig:
    """
    A cluster's C{ring_hash_lb_config} (used with C{lb_policy: RING_HASH}).
    """

    minimumRingSize: int = DEFAULT_MIN_RING_SIZE
    maximumRingSize: int = DEFAULT_MAX_RING_SIZE
    hashFunction: str = "XX_HASH"


@dataclass(frozen=True)
class MaglevLbConfig:
    """
    A cluster's C{maglev_lb_config} (used with C{lb_policy: MAGLEV}).
    """

    tableSize: int = DEFAULT_MAGLEV_TABLE_SIZE


@dataclass(frozen=True)
class ClusterConfig:
    """
    One C{static_resources.clusters[]} entry.
    """

    name: str
    type: str = "STATIC"
    connectTimeout: float = 5.0
    lbPolicy: str = "ROUND_ROBIN"
    endpoints: tuple[EndpointConfig, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    highThresholds: Thresholds = field(default_factory=lambda: Thresholds(priority="HIGH"))
    dnsRefreshRate: float = 5.0
    dnsLookupFamily: str = "AUTO"
    respectDnsTtl: bool = False
    perConnectionBufferLimitBytes: int = DEFAULT_BUFFER_LIMIT
    altStatName: str = ""
    leastRequestChoiceCount: int = 2
    ringHashLbConfig: RingHashLbConfig = field(default_factory=RingHashLbConfig)
    maglevLbConfig: MaglevLbConfig = field(default_factory=MaglevLbConfig)
    #: C{common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing}.
    useHostnameForHashing: bool = False
    #: The L{pyenvoy.network.tls.UpstreamTlsConfig} of C{transport_socket},
    #: or C{None} for plaintext.
    tls: Any = None
    path: str = ""

    @property
    def statName(self) -> str:
        """
        The name stats use (C{alt_stat_name} if set).
        """
        return self.altStatName or self.name


@dataclass(frozen=True)
class AdminConfig:
    """
    The C{admin} block.
    """

    address: SocketAddress


@dataclass(frozen=True)
class Bootstrap:
    """
    A whole validated config.
    """

    admin: AdminConfig | None
    listeners: tuple[ListenerConfig, ...]
    clusters: dict[str, ClusterConfig]
    node: dict[str, Any]
    raw: dict[str, Any]
    sourcePath: str = ""


@dataclass
class ParseContext:
    """
    What filter factories may consult while parsing their config.
    """

    clusters: dict[str, ClusterConfig]
    problems: Problems
    findNetworkFilter: Callable[[str, str | None], Any]
    findListenerFilter: Callable[[str, str | None, str], Any]

    def requireCluster(self, section: Section, fieldName: str = "cluster",
                       required: bool = True) -> str | None:
        """
        Read a cluster name field and check that the cluster exists.
        """
        name = section.string(fieldName, required=required, nonEmpty=required)
        if name and name not in self.clusters:
            section.error(f"unknown cluster {name!r}", fieldName)
        return name

    def checkCluster(self, section: Section, fieldName: str, name: str) -> None:
        """
        Report C{name} at C{fieldName} if no such cluster exists.
        """
        if name not in self.clusters:
            section.error(f"unknown cluster {name!r}", fieldName)


def parseSocketAddress(section: Section | None, allowUdp: bool = True,
                       requirePort: bool = True) -> SocketAddress | None:
    """
    Read an C{Address} mapping (only C{socket_address} is supported).
    """
    if section is None:
        return None
    which = section.oneOf("socket_address", "pipe", "envoy_internal_address")
    if which in ("pipe", "envoy_internal_address"):
        section.error(f"{which} addresses are not supported by pyenvoy yet; use socket_address")
        section.ignore(which)
        return None
    sock = section.section("socket_address")
    section.finish()
    if sock is None:
        return None
    address = sock.string("address", required=True)
    port = sock.integer("port_value", default=0, required=requirePort, minimum=0, maximum=65535)
    protocol = sock.enum("protocol", ("TCP", "UDP") if allowUdp else ("TCP",), "TCP")
    sock.boolean("ipv4_compat")
    sock.finish(unsupported=("named_port", "resolver_name", "network_namespace_filepath"))
    if address is None or port is None:
        return None
    if not address:
        sock.error("must not be empty", "address")
        return None
    return SocketAddress(address, port, protocol)


def parseUdpSocketConfig(section: Section | None, preferGro: bool = False) -> UdpSocketConfig:
    """
    Read a C{UdpSocketConfig} (C{max_rx_datagram_size}, C{prefer_gro});
    C{preferGro} is the default of the place it is used in.
    """
    if section is None:
        return UdpSocketConfig(preferGro=preferGro)
    size = section.uint32Value("max_rx_datagram_size", DEFAULT_UDP_MAX_DATAGRAM_SIZE, minimum=1)
    if size is not None and size > 65535:
        section.error(f"must be less than 65536, got {size}", "max_rx_datagram_size")
        size = None
    value = section.raw.get("prefer_gro")
    if isinstance(value, dict) and set(value) == {"value"}:
        section.raw["prefer_gro"] = value["value"]
    gro = section.boolean("prefer_gro", preferGro)
    section.finish()
    return UdpSocketConfig(size or DEFAULT_UDP_MAX_DATAGRAM_SIZE, gro)


def _requireIP(section: Section, address: SocketAddress | None) -> None:
    if address is not None and not address.isIP():
        section.problems.add(
            section.pathOf("address.socket_address.address"),
            f"{address.address!r} is not an IP address (listeners and STATIC clusters need one)",
        )


class BootstrapParser:
    """
    Reads a bootstrap mapping; plugins are looked up through
    L{pyenvoy.plugin}.
    """

    def __init__(self, findNetworkFilter: Callable[..., Any],
                 findListenerFilter: Callable[..., Any]) -> None:
        self.problems = Problems()
        self._findNetworkFilter = findNetworkFilter
        self._findListenerFilter = findListenerFilter

    def parse(self, raw: Any, sourcePath: str = "") -> Bootstrap:
        """
        Validate C{raw}; raise L{ConfigErrors} listing every problem.
        """
        top = Section(raw, "", self.problems)
        if not top.valid:
            self.problems.raiseIfAny()
        node = top.section("node")
        nodeInfo: dict[str, Any] = {}
        if node is not None:
            nodeInfo = {"id": node.string("id", ""), "cluster": node.string("cluster", "")}
            node.ignore("metadata", "locality", "user_agent_name", "user_agent_version",
                        "user_agent_build_version", "extensions", "client_features",
                        "listening_addresses", "dynamic_parameters")
            node.finish()
        admin = self._parseAdmin(top.section("admin"))
        static = top.section("static_resources")
        clusters: dict[str, ClusterConfig] = {}
        listeners: list[ListenerConfig] = []
        if static is not None:
            for sub in static.sections("clusters"):
                cluster = self._parseCluster(sub)
                if cluster is None:
                    continue
                if cluster.name in clusters:
                    sub.error(f"duplicate cluster name {cluster.name!r}", "name")
                    continue
                clusters[cluster.name] = cluster
            context = ParseContext(clusters, self.problems, self._findNetworkFilter,
                                   self._findListenerFilter)
            names: set[str] = set()
            for sub in static.sections("listeners"):
                listener = self._parseListener(sub, context)
                if listener is None:
                    continue
                if listener.name in names:
                    sub.error(f"duplicate listener name {listener.name!r}", "name")
                    continue
                names.add(listener.name)
                listeners.append(listener)
            static.finish(unsupported=("secrets",))
        top.finish(unsupported=_BOOTSTRAP_UNSUPPORTED)
        self.problems.raiseIfAny()
        return Bootstrap(admin, tuple(listeners), clusters, nodeInfo, raw, sourcePath)

    def _parseAdmin(self, section: Section | None) -> AdminConfig | None:
        if section is None:
            return None
        address = parseSocketAddress(section.section("address", required=True), allowUdp=False)
        _requireIP(section, address)
        section.finish(unsupported=_ADMIN_UNSUPPORTED)
        if address is None:
            return None
        return AdminConfig(address)

    def _parseCluster(self, section: Section) -> ClusterConfig | None:
        name = section.string("name", required=True, nonEmpty=True)
        kind = section.enum("type", CLUSTER_TYPES, "STATIC",
                            unsupported=("EDS", "ORIGINAL_DST"))
        connectTimeout = section.duration("connect_timeout", 5.0, positive=True)
        lbPolicy = section.enum(
            "lb_policy", LB_POLICIES, "ROUND_ROBIN",
            unsupported=("CLUSTER_PROVIDED", "LOAD_BALANCING_POLICY_CONFIG"))
        bufferLimit = section.uint32Value("per_connection_buffer_limit_bytes",
                                          DEFAULT_BUFFER_LIMIT, minimum=1)
        altStatName = section.string("alt_stat_name", "")
        dnsRefreshRate = section.duration("dns_refresh_rate", 5.0)
        if dnsRefreshRate is not None and dnsRefreshRate < 0.001:
            section.error("must be at least 1ms", "dns_refresh_rate")
        respectDnsTtl = section.boolean("respect_dns_ttl")
        family = section.enum("dns_lookup_family",
                              ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"), "AUTO")
        lbConfigs = [n for n in _LB_CONFIGS if section.raw.get(n) is not None]
        if len(lbConfigs) > 1:
            section.error(f"only one of {', '.join(lbConfigs)} may be set "
                          "(Envoy's lb_config oneof)")
        ringHash = self._parseRingHashLbConfig(section.section("ring_hash_lb_config"),
                                               lbPolicy == "RING_HASH")
        maglev = self._parseMaglevLbConfig(section.section("maglev_lb_config"),
                                           lbPolicy == "MAGLEV")
        choiceCount = 2
        leastRequest = section.section("least_request_lb_config")
        if leastRequest is not None:
            choiceCount = leastRequest.uint32Value("choice_count", 2, minimum=2) or 2
            leastRequest.finish(unsupported=("active_request_bias", "slow_start_config",
                                             "locality_lb_config", "enable_full_scan",
                                             "selection_method"))
        section.ignore("metadata", "wait_for_warm_on_init")
        thresholds, high = self._parseCircuitBreakers(section.section("circuit_breakers"))
        endpoints = self._parseLoadAssignment(section.section("load_assignment"), kind)
        if kind == "LOGICAL_DNS" and len(endpoints) > 1:
            section.error("LOGICAL_DNS clusters must have a single endpoint", "load_assignment")
        useHostname = self._parseCommonLbConfig(section.section("common_lb_config"))
        if useHostname and kind != "STRICT_DNS":
            # Envoy: "Cannot use hostname for consistent hashing loadbalancing
            # for cluster of type: 'envoy.cluster.static'", whatever the policy.
            section.error(f"is only allowed for STRICT_DNS clusters, not {kind} ones",
                          "common_lb_config.consistent_hashing_lb_config."
                          "use_hostname_for_hashing")
        tls = None
        transport = section.section("transport_socket")
        if transport is not None:
            # Imported here: OpenSSL loads only when a config uses TLS.
            from pyenvoy.network.tls import parseUpstreamTransportSocket
            tls = parseUpstreamTransportSocket(transport)
        section.finish(unsupported=_CLUSTER_UNSUPPORTED)
        if not name:
            return None
        return ClusterConfig(
            name=name, type=kind, connectTimeout=connectTimeout or 5.0, lbPolicy=lbPolicy,
            endpoints=tuple(endpoints), thresholds=thresholds, highThresholds=high,
            dnsRefreshRate=dnsRefreshRate or 5.0, dnsLookupFamily=family,
            respectDnsTtl=respectDnsTtl,
            perConnectionBufferLimitBytes=bufferLimit or DEFAULT_BUFFER_LIMIT,
            altStatName=altStatName or "", leastRequestChoiceCount=choiceCount,
            ringHashLbConfig=ringHash, maglevLbConfig=maglev,
            useHostnameForHashing=useHostname, tls=tls, path=section.path,
        )

    def _parseCommonLbConfig(self, section: Section | None) -> bool:
        # Only consistent_hashing_lb_config.use_hostname_for_hashing so far.
        if section is None:
            return False
        useHostname = False
        consistent = section.section("consistent_hashing_lb_config")
        if consistent is not None:
            useHostname = consistent.boolean("use_hostname_for_hashing")
            consistent.finish(unsupported=("hash_balance_factor",))
        section.finish(unsupported=(
            "healthy_panic_threshold", "zone_aware_lb_config", "locality_weighted_lb_config",
            "update_merge_window", "ignore_new_hosts_until_first_hc",
            "close_connections_on_host_set_change", "override_host_status"))
        return useHostname

    def _parseRingHashLbConfig(self, section: Section | None, used: bool) -> RingHashLbConfig:
        # As Envoy: the proto's limits always, minimum <= maximum only when
        # lb_policy is RING_HASH.
        if section is None:
            return RingHashLbConfig()
        minimum = _uint64Value(section, "minimum_ring_size", DEFAULT_MIN_RING_SIZE,
                               MAX_RING_SIZE)
        maximum = _uint64Value(section, "maximum_ring_size", DEFAULT_MAX_RING_SIZE,
                               MAX_RING_SIZE)
        hashFunction = section.enum("hash_function", RING_HASH_FUNCTIONS, "XX_HASH")
        section.finish()
        if minimum == 0:
            section.error("must be at least 1 (with 0 Envoy builds an empty ring that never "
                          "finds a host)", "minimum_ring_size")
            minimum = DEFAULT_MIN_RING_SIZE
        if used and minimum > maximum:
            section.error(f"minimum_ring_size ({minimum}) > maximum_ring_size ({maximum}); "
                          "the minimum must not exceed the maximum", "minimum_ring_size")
        return RingHashLbConfig(minimum, maximum, hashFunction)

    def _parseMaglevLbConfig(self, section: Section | None, used: bool) -> MaglevLbConfig:
        # As Envoy: the proto's limit always, primality only when lb_policy
        # is MAGLEV.
        if section is None:
            return MaglevLbConfig()
        size = _uint64Value(section, "table_size", DEFAULT_MAGLEV_TABLE_SIZE,
                            MAX_MAGLEV_TABLE_SIZE)
        section.finish()
        if used and not isPrime(size):
            larger = max(size + 1, 2)
            while not isPrime(larger):
                larger += 1
            section.error(f"must be a prime number, got {size} (the next prime is {larger}; "
                          f"Envoy's default is {DEFAULT_MAGLEV_TABLE_SIZE})", "table_size")
            size = DEFAULT_MAGLEV_TABLE_SIZE
        return MaglevLbConfig(size)

    def _parseCircuitBreakers(self, section: Section | None) -> tuple[Thresholds, Thresholds]:
        default, high = Thresholds(), Thresholds(priority="HIGH")
        if section is None:
            return default, high
        seen: set[str] = set()
        for sub in section.sections("thresholds"):
            priority = sub.enum("priority", ("DEFAULT", "HIGH"), "DEFAULT")
            if priority in seen:
                sub.error(f"priority {priority} given twice", "priority")
            seen.add(priority)
            t = Thresholds(
                priority=priority,
                maxConnections=sub.uint32Value("max_connections", DEFAULT_MAX_CONNECTIONS),
                maxPendingRequests=sub.uint32Value("max_pending_requests",
                                                   DEFAULT_MAX_PENDING_REQUESTS),
                maxRequests=sub.uint32Value("max_requests", DEFAULT_MAX_REQUESTS),
                maxRetries=sub.uint32Value("max_retries", DEFAULT_MAX_RETRIES),
                trackRemaining=sub.boolean("track_remaining"),
            )
            sub.finish(unsupported=("retry_budget", "max_connection_pools"))
            if priority == "DEFAULT":
                default = t
            else:
                high = t
        section.finish(unsupported=("per_host_thresholds",))
        return default, high

    def _parseLoadAssignment(self, section: Section | None, kind: str) -> list[EndpointConfig]:
        if section is None:
            return []
        section.string("cluster_name")
        out = []
        for locality in section.sections("endpoints"):
            priority = locality.integer("priority", 0, minimum=0, maximum=128) or 0
            if priority:
                locality.error("priorities other than 0 are not supported by pyenvoy yet",
                               "priority")
            locality.ignore("locality", "load_balancing_weight")
            for lb in locality.sections("lb_endpoints"):
                weight = lb.uint32Value("load_balancing_weight", 1, minimum=1) or 1
                lb.ignore("metadata")
                status = lb.enum("health_status",
                                 ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT",
                                  "DEGRADED"), "UNKNOWN")
                if status not in ("UNKNOWN", "HEALTHY"):
                    lb.error(f"health_status {status} is not supported by pyenvoy yet",
                             "health_status")
                endpoint = lb.section("endpoint", required=True)
                lb.finish(unsupported=("endpoint_name",))
                if endpoint is None:
                    continue
                address = parseSocketAddress(endpoint.section("address", required=True),
                                             allowUdp=True)
                hostname = endpoint.string("hostname", "") or ""
                endpoint.finish(unsupported=("health_check_config", "additional_addresses"))
                if address is not None:
                    if kind == "STATIC" and not address.isIP():
                        endpoint.error(
                            f"{address.address!r} is not an IP address (STATIC clusters "
                            "need IPs; use STRICT_DNS for names)",
                            "address.socket_address.address")
                    if address.port == 0:
                        endpoint.error("port_value must be set for an endpoint",
                                       "address.socket_address.port_value")
                    out.append(EndpointConfig(address, weight, hostname, priority))
            locality.finish(unsupported=("leds_cluster_locality_config", "metadata"))
        section.finish(unsupported=("policy", "named_endpoints"))
        return out

    def _parseFilter(self, section: Section, find: Callable[..., Any],
                     context: ParseContext, kind: str) -> FilterConfig | None:
        name = section.string("name", required=True, nonEmpty=True) or ""
        typed = section.section("typed_config")
        section.finish(unsupported=("config_discovery", "filter_disabled"))
        typeURL = typed.raw.get("@type") if typed is not None else None
        if typed is not None:
            typed.ignore("@type")
            if not isinstance(typeURL, str) or not typeURL:
                typed.error("missing required field '@type'")
                return None
        factory, message = find(name, typeURL)
        if factory is None:
            where = typed.pathOf("@type") if typeURL else section.pathOf("name")
            self.problems.add(where, message)
            return None
        if typed is None:
            typed = Section({}, section.pathOf("typed_config"), self.problems)
        config = factory.parseConfig(typed, context)
        typed.finish()
        return FilterConfig(name, factory, config, section.path)

    def _parseListener(self, section: Section, context: ParseContext) -> ListenerConfig | None:
        name = section.string("name", required=True, nonEmpty=True)
        address = parseSocketAddress(section.section("address", required=True))
        _requireIP(section, address)
        statPrefix = section.string("stat_prefix")
        bufferLimit = section.uint32Value("per_connection_buffer_limit_bytes",
                                          DEFAULT_BUFFER_LIMIT, minimum=1)
        timeout = section.duration("listener_filters_timeout", 15.0)
        continueOnTimeout = section.boolean("continue_on_listener_filters_timeout")
        backlog = section.uint32Value("tcp_backlog_size", 1024, minimum=1) or 1024
        drainType = section.enum("drain_type", ("DEFAULT", "MODIFY_ONLY"), "DEFAULT")
        section.ignore("metadata", "traffic_direction", "enable_reuse_port")
        listenerFilters = []
        for sub in section.sections("listener_filters"):
            filterConfig = self._parseFilter(
                sub, lambda n, t: context.findListenerFilter(
                    n, t, address.protocol if address else "TCP"),
                context, "listener")
            if filterConfig is not None:
                listenerFilters.append(filterConfig)
        chains = []
        isUdp = address is not None and address.protocol == "UDP"
        downstreamSocket = self._parseUdpListenerConfig(section.section("udp_listener_config"))
        if isUdp:
            self._checkUdpListener(section, listenerFilters)
        for index, sub in enumerate(section.sections("filter_chains")):
            chain = self._parseChain(sub, context, f"filter_chain_{index}")
            if chain is not None:
                chains.append(chain)
        default = None
        defaultSection = section.section("default_filter_chain")
        if defaultSection is not None:
            default = self._parseChain(defaultSection, context, "default_filter_chain")
        if len(chains) > 1:
            from pyenvoy.network.chain_match import FilterChainMatch, checkFilterChains
            checkFilterChains(section, [(c.name, c.match or FilterChainMatch()) for c in chains])
        if not isUdp and not chains and default is None and address is not None:
            section.error("a TCP listener needs at least one filter chain", "filter_chains")
        section.finish(unsupported=_LISTENER_UNSUPPORTED)
        if not name or address is None:
            return None
        return ListenerConfig(
            name=name, address=address, filterChains=tuple(chains), defaultFilterChain=default,
            listenerFilters=tuple(listenerFilters),
            perConnectionBufferLimitBytes=bufferLimit or DEFAULT_BUFFER_LIMIT,
            statPrefix=statPrefix, listenerFiltersTimeout=timeout or 0.0,
            continueOnListenerFiltersTimeout=continueOnTimeout, tcpBacklogSize=backlog,
            drainType=drainType, path=section.path, downstreamSocketConfig=downstreamSocket,
        )

    def _parseUdpListenerConfig(self, section: Section | None) -> UdpSocketConfig:
        if section is None:
            return UdpSocketConfig()
        config = parseUdpSocketConfig(section.section("downstream_socket_config"))
        section.finish(unsupported=("quic_options", "udp_packet_packet_writer_config"))
        return config

    def _checkUdpListener(self, section: Section, listenerFilters: list[FilterConfig]) -> None:
        """
        A UDP listener is one udp_proxy listener filter and no filter
        chains: the datagrams go to the filter, never to network filters.
        """
        for name in ("filter_chains", "default_filter_chain"):
            if section.raw.get(name):
                section.error("a UDP listener takes no filter chains; its "
                              f"{UDP_PROXY_FILTER!r} listener filter handles the datagrams", name)
        configured = section.raw.get("listener_filters") or []
        if not configured:
            section.error(f"a UDP listener needs the {UDP_PROXY_FILTER!r} listener filter",
                          "listener_filters")
        elif len(configured) > 1:
            section.error(f"a UDP listener takes exactly one listener filter "
                          f"({UDP_PROXY_FILTER!r}); more are not supported by pyenvoy yet",
                          "listener_filters")

    def _parseChain(self, section: Section, context: ParseContext,
                    defaultName: str) -> FilterChainConfig | None:
        name = section.string("name", defaultName) or defaultName
        section.ignore("metadata")
        filters = []
        sections = section.sections("filters")
        for index, sub in enumerate(sections):
            filterConfig = self._parseFilter(sub, context.findNetworkFilter, context, "network")
            if filterConfig is None:
                continue
            terminal = getattr(filterConfig.factory, "terminal", False)
            if terminal and index != len(sections) - 1:
                sub.error(f"terminal filter {filterConfig.name!r} must be the last filter "
                          "in the chain")
            filters.append(filterConfig)
        if sections and filters and len(filters) == len(sections):
            if not getattr(filters[-1].factory, "terminal", False):
                section.error(f"the last filter ({filters[-1].name!r}) is not a terminal "
                              "filter, so nothing would answer the connection", "filters")
        tls = None
        transport = section.section("transport_socket")
        if transport is not None:
            # Imported here: OpenSSL loads only when a config uses TLS.
            from pyenvoy.network.tls import parseTransportSocket
            tls = parseTransportSocket(transport)
        from pyenvoy.network.chain_match import parseFilterChainMatch
        match = parseFilterChainMatch(section.section("filter_chain_match"))
        section.finish(unsupported=_CHAIN_UNSUPPORTED)
        return FilterChainConfig(name, tuple(filters), section.path, tls, match)


def loadFile(path: str) -> Any:
    """
    Read a YAML or JSON file into plain data.

    @raise ConfigErrors: if it cannot be read or parsed.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigErrors([ConfigError("", f"cannot read config file {path!r}: {e.strerror}")])
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigErrors([ConfigError("", f"{path}: not valid YAML/JSON: {e}")])

