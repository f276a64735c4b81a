"""
The Envoy v3 bootstrap, read into frozen config objects.

Only what pyenvoy implements is accepted; a field Envoy has that pyenvoy
does not is an error that says so, never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from pyenvoy.config.reader import (ConfigError, ConfigErrors, Problems, Section, dataSourceText,
                                   describe, snakeCase)

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
    "cluster_type", "eds_cluster_config", "max_requests_per_connection",
    "upstream_http_protocol_options", "common_http_protocol_options",
    "http_protocol_options", "http2_protocol_options",
    "dns_jitter", "dns_failure_refresh_rate", "dns_resolvers",
    "use_tcp_for_dns_lookups", "dns_resolution_config", "typed_dns_resolver_config",
    "outlier_detection", "cleanup_interval", "upstream_bind_config", "lb_subset_config",
    "original_dst_lb_config",
    "round_robin_lb_config", "protocol_selection",
    "upstream_connection_options",
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
    #: C{health_check_config.port_value}: the port active health checks
    #: use (0: the endpoint's own).
    healthCheckPort: int = 0
    #: C{health_check_config.disable_active_health_check}.
    disableActiveHealthCheck: bool = False


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


#: Envoy's default C{common_lb_config.healthy_panic_threshold}, in percent.
DEFAULT_HEALTHY_PANIC_THRESHOLD = 50

#: The C{typed_extension_protocol_options} key and C{@type} of Redis's
#: upstream options.
REDIS_PROXY_FILTER = "envoy.filters.network.redis_proxy"
REDIS_PROTOCOL_OPTIONS = ("type.googleapis.com/"
                          "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions")
#: The key and C{@type} of the generic TCP upstream options.
TCP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"
TCP_PROTOCOL_OPTIONS = "type.googleapis.com/" + TCP_PROTOCOL_OPTIONS_KEY

#: The Redis health checker: its C{custom_health_check} name and C{@type}.
REDIS_HEALTH_CHECKER = "envoy.health_checkers.redis"
REDIS_HEALTH_CHECKER_TYPE = "type.googleapis.com/envoy.extensions.health_checkers.redis.v3.Redis"


@dataclass(frozen=True)
class RedisCredential:
    """
    One C{RedisProtocolOptions.credentials[]} entry: what to AUTH with on
    the host at C{address}:C{port}.

    @ivar address: C{address.socket_address.address} as written: an IP,
        or for hosts of DNS clusters the name they were resolved from.
    """

    address: str
    port: int
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class RedisProtocolOptions:
    """
    A cluster's C{typed_extension_protocol_options} for
    C{envoy.filters.network.redis_proxy}: how upstream Redis connections
    (of the redis_proxy filter and of the Redis health checker)
    authenticate.

    Data sources were read when the config was loaded; an empty value is
    C{None} (Envoy sends no AUTH for an empty password).
    """

    authUsername: str | None = None
    authPassword: str | None = None
    credentials: tuple[RedisCredential, ...] = ()

    def credentialsFor(self, host: Any) -> tuple[str | None, str | None]:
        """
        C{(username, password)} to AUTH with on C{host} (a
        L{pyenvoy.upstream.host.Host}), as Envoy picks them: the first
        C{credentials[]} entry whose address and port are the host's (its
        C{hostname} when it has one, as DNS hosts do, else its IP) gives
        both; else the cluster's C{auth_username} / C{auth_password}.
        C{None} means "not set": no password, no AUTH; a password without
        a username is C{AUTH <password>}.
        """
        if host is not None and self.credentials:
            ip, port = host.address
            name = getattr(host, "hostname", "") or ip
            for credential in self.credentials:
                if credential.port == port and credential.address == name:
                    return credential.username, credential.password
        return self.authUsername, self.authPassword


@dataclass(frozen=True)
class TcpHealthCheck:
    """
    C{tcp_health_check}: bytes to send (empty: connect only) and blocks to
    find, in order, in what comes back.
    """

    send: bytes = b""
    receive: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RedisHealthCheck:
    """
    The C{envoy.health_checkers.redis} custom checker: C{PING} (healthy on
    C{+PONG}), or with a C{key}, C{EXISTS key} (healthy on C{:0}).
    """

    key: str = ""


@dataclass(frozen=True)
class HealthCheckConfig:
    """
    One C{health_checks[]} entry (C{config.core.v3.HealthCheck}); times
    in seconds.
    """

    timeout: float
    interval: float
    unhealthyThreshold: int
    healthyThreshold: int
    checker: TcpHealthCheck | RedisHealthCheck
    initialJitter: float = 0.0
    intervalJitter: float = 0.0
    intervalJitterPercent: int = 0
    reuseConnection: bool = True
    noTrafficInterval: float = 60.0
    noTrafficHealthyInterval: float = 60.0
    unhealthyInterval: float = 0.0
    unhealthyEdgeInterval: float = 0.0
    healthyEdgeInterval: float = 0.0
    alwaysLogHealthCheckFailures: bool = False
    alwaysLogHealthCheckSuccess: bool = False
    path: str = ""


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
    #: C{health_checks} (Envoy allows at most one).
    healthChecks: tuple[HealthCheckConfig, ...] = ()
    #: C{common_lb_config.healthy_panic_threshold}, a whole percentage
    #: (0 disables panic mode).
    healthyPanicThreshold: int = DEFAULT_HEALTHY_PANIC_THRESHOLD
    #: The C{envoy.filters.network.redis_proxy} protocol options, or C{None}.
    redisProtocolOptions: RedisProtocolOptions | None = None
    #: C{close_connections_on_host_health_failure}.
    closeConnectionsOnHostHealthFailure: bool = False

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


def _readDataSource(section: Section | None) -> str | None:
    """
    A DataSource's text; C{None} when absent or empty (Envoy reads these
    allowing empty).
    """
    if section is None:
        return None
    found = dataSourceText(section, required=False)
    return found[0] if found and found[0] else None


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
        if raw is None:
            # An empty file: Envoy cannot read it either ("Unable to
            # convert YAML as JSON"); "{}" is the empty bootstrap.
            self.problems.add("", "the config is empty; expected a bootstrap mapping ({} for "
                                  "an empty one)")
            self.problems.raiseIfAny()
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
            addresses: dict[tuple[str, int, str], str] = {}
            for sub in static.sections("listeners"):
                listener = self._parseListener(sub, context)
                if listener is None:
                    continue
                if listener.name in names:
                    sub.error(f"duplicate listener name {listener.name!r}", "name")
                    continue
                bound = listener.address
                key = (bound.address, bound.port, bound.protocol)
                if bound.port and key in addresses:
                    # Envoy refuses it too, before binding anything.
                    sub.error(f"listener {listener.name!r} has duplicate address "
                              f"'{bound}' as existing listener {addresses[key]!r}", "address")
                    continue
                addresses[key] = listener.name
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
        useHostname, panicThreshold = self._parseCommonLbConfig(
            section.section("common_lb_config"))
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
        healthChecks = self._parseHealthChecks(section)
        closeOnFailure = section.boolean("close_connections_on_host_health_failure")
        if healthChecks and transport is not None:
            section.error("health checks on a cluster with a transport_socket (TLS) are not "
                          "supported by pyenvoy yet", "health_checks")
        redisOptions = self._parseProtocolOptions(
            section.section("typed_extension_protocol_options"))
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
            healthChecks=healthChecks, healthyPanicThreshold=panicThreshold,
            redisProtocolOptions=redisOptions,
            closeConnectionsOnHostHealthFailure=closeOnFailure,
        )

    def _parseCommonLbConfig(self, section: Section | None) -> tuple[bool, int]:
        # consistent_hashing_lb_config.use_hostname_for_hashing and
        # healthy_panic_threshold so far.
        if section is None:
            return False, DEFAULT_HEALTHY_PANIC_THRESHOLD
        useHostname = False
        consistent = section.section("consistent_hashing_lb_config")
        if consistent is not None:
            useHostname = consistent.boolean("use_hostname_for_hashing")
            consistent.finish(unsupported=("hash_balance_factor",))
        threshold = DEFAULT_HEALTHY_PANIC_THRESHOLD
        percent = section.section("healthy_panic_threshold")
        if percent is not None:
            value = percent.raw.get("value", 0.0)
            percent.ignore("value")
            percent.finish()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                percent.error(f"expected a number, got {describe(value)}", "value")
            elif not 0 <= value <= 100:
                percent.error(f"must be between 0 and 100, got {value}", "value")
            else:
                # As Envoy's PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT.
                threshold = int(value + 0.5)
        section.finish(unsupported=(
            "zone_aware_lb_config", "locality_weighted_lb_config",
            "update_merge_window", "ignore_new_hosts_until_first_hc",
            "close_connections_on_host_set_change", "override_host_status"))
        return useHostname, threshold

    # -- health checks ---------------------------------------------------------

    def _parseHealthChecks(self, cluster: Section) -> tuple[HealthCheckConfig, ...]:
        out = []
        sections = cluster.sections("health_checks")
        if len(sections) > 1:
            # Envoy: "Multiple health checks not supported".
            cluster.error("only one health check per cluster is supported (as in Envoy)",
                          "health_checks")
        for section in sections:
            check = self._parseHealthCheck(section)
            if check is not None:
                out.append(check)
        return tuple(out[:1])

    def _parseHealthCheck(self, section: Section) -> HealthCheckConfig | None:
        timeout = section.duration("timeout", required=True, positive=True)
        interval = section.duration("interval", required=True, positive=True)
        unhealthy = section.uint32Value("unhealthy_threshold")
        healthy = section.uint32Value("healthy_threshold")
        for fieldName, value in (("unhealthy_threshold", unhealthy),
                                 ("healthy_threshold", healthy)):
            if section.raw.get(fieldName) is None:
                section.error(f"missing required field {fieldName!r}")
        initialJitter = section.duration("initial_jitter", 0.0) or 0.0
        intervalJitter = section.duration("interval_jitter", 0.0) or 0.0
        jitterPercent = section.integer("interval_jitter_percent", 0, minimum=0,
                                        maximum=2**32 - 1) or 0
        reuse = section.raw.get("reuse_connection")
        if isinstance(reuse, dict) and set(reuse) == {"value"}:
            section.raw["reuse_connection"] = reuse["value"]
        reuseConnection = section.boolean("reuse_connection", True)
        noTraffic = section.duration("no_traffic_interval", 60.0, positive=True) or 60.0
        noTrafficHealthy = section.duration("no_traffic_healthy_interval", noTraffic,
                                            positive=True) or noTraffic
        base = interval or 1.0
        unhealthyInterval = section.duration("unhealthy_interval", base, positive=True) or base
        unhealthyEdge = section.duration("unhealthy_edge_interval", unhealthyInterval,
                                         positive=True) or unhealthyInterval
        healthyEdge = section.duration("healthy_edge_interval", base, positive=True) or base
        logFailures = section.boolean("always_log_health_check_failures")
        logSuccess = section.boolean("always_log_health_check_success")
        which = section.oneOf("http_health_check", "tcp_health_check", "grpc_health_check",
                              "custom_health_check")
        checker: TcpHealthCheck | RedisHealthCheck | None = None
        if which in ("http_health_check", "grpc_health_check"):
            section.error(f"{which} is not supported by pyenvoy yet (an L3/L4 proxy); use "
                          f"tcp_health_check or the {REDIS_HEALTH_CHECKER!r} "
                          "custom_health_check", which)
        elif which == "tcp_health_check":
            checker = self._parseTcpHealthCheck(section.section("tcp_health_check"))
        elif which == "custom_health_check":
            checker = self._parseCustomHealthCheck(section.section("custom_health_check"))
        section.finish(unsupported=(
            "alt_port", "event_log_path", "event_logger", "event_service", "tls_options",
            "transport_socket_match_criteria"))
        if (timeout is None or interval is None or unhealthy is None or healthy is None
                or checker is None):
            return None
        return HealthCheckConfig(
            timeout=timeout, interval=interval, unhealthyThreshold=unhealthy,
            healthyThreshold=healthy, checker=checker, initialJitter=initialJitter,
            intervalJitter=intervalJitter, intervalJitterPercent=jitterPercent,
            reuseConnection=reuseConnection, noTrafficInterval=noTraffic,
            noTrafficHealthyInterval=noTrafficHealthy, unhealthyInterval=unhealthyInterval,
            unhealthyEdgeInterval=unhealthyEdge, healthyEdgeInterval=healthyEdge,
            alwaysLogHealthCheckFailures=logFailures, alwaysLogHealthCheckSuccess=logSuccess,
            path=section.path)

    def _parsePayload(self, section: Section) -> bytes | None:
        which = section.oneOf("text", "binary")
        data = None
        if which == "text":
            text = section.string("text", nonEmpty=True)
            if text is not None:
                try:
                    data = bytes.fromhex(text)
                except ValueError:
                    section.error(f"expected hex digits (e.g. '50494E47' for PING), got {text!r}",
                                  "text")
        elif which == "binary":
            text = section.string("binary")
            if text is not None:
                try:
                    data = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    section.error("expected base64 bytes", "binary")
        section.finish()
        return data

    def _parseTcpHealthCheck(self, section: Section | None) -> TcpHealthCheck | None:
        if section is None:
            return TcpHealthCheck()
        before = len(self.problems.errors)
        send = b""
        sendSection = section.section("send")
        if sendSection is not None:
            # A payload needs text or binary, as Envoy validates it.
            send = self._parsePayload(sendSection) or b""
        receive = []
        for sub in section.sections("receive"):
            data = self._parsePayload(sub)
            if data is not None:
                receive.append(data)
        section.finish(unsupported=("proxy_protocol_config",))
        if len(self.problems.errors) > before:
            return None
        return TcpHealthCheck(send, tuple(receive))

    def _parseCustomHealthCheck(self, section: Section | None) -> RedisHealthCheck | None:
        if section is None:
            return None
        name = section.string("name", "") or ""
        typed = section.section("typed_config")
        section.finish()
        typeURL = typed.raw.get("@type") if typed is not None else None
        if typeURL != REDIS_HEALTH_CHECKER_TYPE and not (typeURL is None
                                                          and name == REDIS_HEALTH_CHECKER):
            what = f"@type {typeURL!r}" if typeURL else f"name {name!r}"
            where = "typed_config.@type" if typeURL else "name"
            section.error(f"custom health checker {what} is not supported by pyenvoy yet; "
                          f"supported: {REDIS_HEALTH_CHECKER!r} ({REDIS_HEALTH_CHECKER_TYPE})",
                          where)
            return None
        key = ""
        if typed is not None:
            typed.ignore("@type")
            key = typed.string("key", "") or ""
            typed.finish(unsupported=("aws_iam",))
        return RedisHealthCheck(key)

    # -- protocol options ------------------------------------------------------

    def _parseProtocolOptions(self, section: Section | None) -> RedisProtocolOptions | None:
        if section is None:
            return None
        redis = None
        # Keys are extension names, not fields: match them as written.
        originals = dict(section._keys)
        redisKey, tcpKey = snakeCase(REDIS_PROXY_FILTER), snakeCase(TCP_PROTOCOL_OPTIONS_KEY)
        for name in list(section.raw):
            key = originals.get(name, name)
            typed = section.section(name)
            if typed is None:
                continue
            typeURL = typed.raw.get("@type")
            typed.ignore("@type")
            if name == redisKey:
                key = REDIS_PROXY_FILTER
            elif name == tcpKey:
                key = TCP_PROTOCOL_OPTIONS_KEY
            if key == REDIS_PROXY_FILTER and typeURL == REDIS_PROTOCOL_OPTIONS:
                redis = self._parseRedisProtocolOptions(typed)
            elif key == TCP_PROTOCOL_OPTIONS_KEY and typeURL == TCP_PROTOCOL_OPTIONS:
                # Accepted for compatibility: pyenvoy keeps no idle pool of
                # upstream TCP connections for this timeout to apply to.
                typed.duration("idle_timeout")
                typed.finish()
            elif key in (REDIS_PROXY_FILTER, TCP_PROTOCOL_OPTIONS_KEY):
                expected = (REDIS_PROTOCOL_OPTIONS if key == REDIS_PROXY_FILTER
                            else TCP_PROTOCOL_OPTIONS)
                typed.error(f"expected @type {expected!r} for {key!r}, got "
                            f"{describe(typeURL)}", "@type")
            else:
                section.error(f"protocol options {key!r} are not supported by pyenvoy yet; "
                              f"supported: {REDIS_PROXY_FILTER!r}, {TCP_PROTOCOL_OPTIONS_KEY!r}",
                              key)
        return redis

    def _parseRedisProtocolOptions(self, section: Section) -> RedisProtocolOptions:
        username = _readDataSource(section.section("auth_username"))
        password = _readDataSource(section.section("auth_password"))
        credentials = []
        for sub in section.sections("credentials"):
            address = parseSocketAddress(sub.section("address", required=True), allowUdp=False)
            credentials.append((address, _readDataSource(sub.section("auth_username")),
                                _readDataSource(sub.section("auth_password"))))
            sub.finish()
        if section.raw.get("aws_iam") is not None:
            section.error("AWS IAM authentication is not supported by pyenvoy; use "
                          "auth_password (and auth_username)", "aws_iam")
            section.ignore("aws_iam")
        section.finish()
        return RedisProtocolOptions(
            username or None, password or None,
            tuple(RedisCredential(a.address, a.port, u or None, p or None)
                  for a, u, p in credentials if a is not None))

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
        # Required and non-empty, as Envoy's ClusterLoadAssignment validation.
        section.string("cluster_name", required=True, nonEmpty=True)
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
                hcPort, hcDisabled = 0, False
                hcConfig = endpoint.section("health_check_config")
                if hcConfig is not None:
                    hcPort = hcConfig.integer("port_value", 0, minimum=0, maximum=65535) or 0
                    hcDisabled = hcConfig.boolean("disable_active_health_check")
                    hcConfig.finish(unsupported=("hostname", "address"))
                endpoint.finish(unsupported=("additional_addresses",))
                if address is not None:
                    if kind == "STATIC" and not address.isIP():
                        endpoint.error(
                            f"{address.address!r} is not an IP address (STATIC clusters "
                            "need IPs; use STRICT_DNS for names)",
                            "address.socket_address.address")
                    if address.port == 0:
                        endpoint.error("port_value must be set for an endpoint",
                                       "address.socket_address.port_value")
                    out.append(EndpointConfig(address, weight, hostname, priority, hcPort,
                                              hcDisabled))
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
        section.enum("traffic_direction", ("UNSPECIFIED", "INBOUND", "OUTBOUND"), "UNSPECIFIED")
        section.ignore("metadata", "enable_reuse_port")
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

