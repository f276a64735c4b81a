"""
A cluster: its hosts (static or from DNS), load balancer, circuit
breakers and C{cluster.<name>.*} stats.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.config.bootstrap import ClusterConfig
from pyenvoy.network.direct_write import queuedBytes
from pyenvoy.stats import Store
from pyenvoy.upstream.host import Host
from pyenvoy.upstream.load_balancer import makeLoadBalancer

log = Logger()

_COUNTERS = (
    "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
    "upstream_cx_destroy_with_active_rq", "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total", "upstream_cx_overflow",
    "upstream_cx_none_healthy", "upstream_cx_connect_attempts_exceeded",
    "upstream_rq_total", "upstream_rq_pending_total", "upstream_rq_pending_overflow",
    "upstream_rq_pending_failure_eject", "upstream_rq_cancelled",
    "upstream_flow_control_paused_reading_total",
    "upstream_flow_control_resumed_reading_total", "membership_change", "update_attempt",
    "update_success", "update_failure", "update_empty", "update_no_rebuild",
    "lb_healthy_panic", "bind_errors",
    # Counted by redis_proxy's pools; Envoy creates them for every cluster.
    "upstream_cx_protocol_error", "upstream_rq_timeout",
    "upstream_internal_redirect_succeeded_total", "upstream_internal_redirect_failed_total",
    # Envoy creates these for every cluster; pyenvoy has none of what they
    # count (HTTP pools, retries, zone and subset load balancing, EDS, the
    # HTTP router's flow control), so, as in Envoy for an L4 proxy, they
    # stay 0.
    "assignment_stale", "assignment_timeout_received", "assignment_use_cached",
    "lb_local_cluster_not_ok", "lb_recalculate_zone_structures", "lb_subsets_created",
    "lb_subsets_fallback", "lb_subsets_fallback_panic", "lb_subsets_removed",
    "lb_subsets_selected", "lb_zone_cluster_too_small", "lb_zone_no_capacity_left",
    "lb_zone_routing_all_directly", "lb_zone_routing_cross_zone", "lb_zone_routing_sampled",
    "original_dst_host_invalid", "retry_or_shadow_abandoned", "upstream_cx_close_notify",
    "upstream_cx_connect_with_0_rtt", "upstream_cx_http1_total", "upstream_cx_http2_total",
    "upstream_cx_http3_total", "upstream_cx_idle_timeout", "upstream_cx_max_duration_reached",
    "upstream_cx_max_requests", "upstream_cx_pool_overflow", "upstream_cx_preconnect_skipped",
    "upstream_flow_control_backed_up_total", "upstream_flow_control_drained_total",
    "upstream_http3_broken", "upstream_rq_0rtt", "upstream_rq_active_overflow",
    "upstream_rq_completed", "upstream_rq_maintenance_mode", "upstream_rq_max_duration_reached",
    "upstream_rq_per_try_idle_timeout", "upstream_rq_per_try_timeout", "upstream_rq_retry",
    "upstream_rq_retry_backoff_exponential", "upstream_rq_retry_backoff_ratelimited",
    "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_overflow",
    "upstream_rq_retry_success", "upstream_rq_rx_reset", "upstream_rq_rx_reset_no_error",
    "upstream_rq_tx_reset",
)
_GAUGES = (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
    "upstream_cx_rx_bytes_buffered",
    "membership_total", "membership_healthy",
    # max_host_weight: Envoy sets it for EDS clusters only; 0 for static and
    # DNS ones (seen on Envoy 1.40 with a weight-3 host), as here.
    "membership_degraded", "membership_excluded", "max_host_weight", "version",
    # Always 0 here, as in Envoy for a static L4 cluster (see above).
    "lb_subsets_active", "upstream_queue_overloaded", "warming_state",
)


class ClusterStats:
    """
    Envoy's C{cluster.<name>.*} stats, as attributes named like the stats.
    """

    def __init__(self, store: Store, statName: str, trackRemaining: bool = False) -> None:
        scope = store.scope(f"cluster.{statName}")
        for name in _COUNTERS:
            setattr(self, name, scope.counter(name))
        for name in _GAUGES:
            setattr(self, name, scope.gauge(name))
        self.default_total_match_count = scope.scope("default").counter("total_match_count")
        self.upstream_cx_connect_ms = scope.histogram("upstream_cx_connect_ms")
        self.upstream_cx_length_ms = scope.histogram("upstream_cx_length_ms")
        # Envoy creates it; it recorded nothing for 72 closed tcp_proxy
        # connections (Envoy 1.40, pgbench through tcp_proxy), nor does pyenvoy.
        scope.histogram("upstream_rq_per_cx")
        cb = scope.scope("circuit_breakers")
        self.breakers = {}
        for priority in ("default", "high"):
            p = cb.scope(priority)
            self.breakers[priority] = {
                name: p.gauge(name) for name in
                ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")
            }
        self.remaining_cx = None
        if trackRemaining:
            self.remaining_cx = cb.scope("default").gauge("remaining_cx")


@implementer(IResolutionReceiver)
class _Resolution:
    """
    Collects the addresses of one name resolution.
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        pass


class Cluster:
    """
    One upstream cluster.
    """

    def __init__(self, config: ClusterConfig, store: Store, reactor: Any) -> None:
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.stats = ClusterStats(store, config.statName, config.thresholds.trackRemaining)
        self.activeConnections = 0
        #: Open L{pyenvoy.upstream.cluster_manager.UpstreamConnection}s.
        self.connections: set[Any] = set()
        # Bytes waiting in the upstream sockets' write buffers, summed when
        # read.  (Nothing read from an upstream is ever held, so
        # upstream_cx_rx_bytes_buffered stays 0.)
        store.sumGauge(f"cluster.{config.statName}.upstream_cx_tx_bytes_buffered",
                       self._txBuffered)
        self.hosts: list[Host] = []
        scope = store.scope(f"cluster.{config.statName}")
        self.lb = makeLoadBalancer(config.lbPolicy, [], config.leastRequestChoiceCount,
                                   ringHash=config.ringHashLbConfig,
                                   maglev=config.maglevLbConfig,
                                   useHostname=config.useHostnameForHashing,
                                   scope=scope, panicThreshold=config.healthyPanicThreshold)
        #: The active L{pyenvoy.upstream.health_check.HealthChecker}, if
        #: C{health_checks} is configured.
        self.healthChecker: Any = None
        if config.healthChecks:
            from pyenvoy.upstream.health_check import HealthChecker
            self.healthChecker = HealthChecker(self, config.healthChecks[0], scope, reactor)
        #: The L{pyenvoy.network.tls.ClientTls} when connections use TLS.
        self.tls: Any = None
        if config.tls is not None:
            from pyenvoy.network.tls import ClientTls
            self.tls = ClientTls(
                config.tls, store.scope(f"cluster.{config.statName}.ssl"), reactor=reactor,
                factoryScope=store.scope(f"cluster.{config.statName}.client_ssl_socket_factory"))
        self._dnsLoop: LoopingCall | None = None
        self._updateBreaker()
        if config.type == "STATIC":
            self.setHosts([Host((e.address.address, e.address.port), e.weight, e.hostname,
                                e.healthCheckPort, e.disableActiveHealthCheck)
                           for e in config.endpoints])

    def _txBuffered(self) -> int:
        return sum(queuedBytes(upstream.protocol.transport) for upstream in self.connections
                   if upstream.protocol is not None)

    # -- membership ----------------------------------------------------------

    def setHosts(self, hosts: list[Host]) -> None:
        """
        Replace the host set, keeping the stats of hosts that stay.
        """
        old = {h.address: h for h in self.hosts}
        merged = [old.get(h.address, h) for h in hosts]
        changed = [h.address for h in merged] != [h.address for h in self.hosts]
        kept = {id(h) for h in merged}
        removed = [h for h in self.hosts if id(h) not in kept]
        previous = {id(h) for h in self.hosts}
        added = [h for h in merged if id(h) not in previous]
        if self.healthChecker is not None:
            # As Envoy: with active health checking, a new host is
            # unhealthy until its first check passes.
            for host in added:
                if not host.disableActiveHealthCheck:
                    host.healthy = False
        self.hosts = merged
        self.lb.setHosts(merged)
        s = self.stats
        # Envoy matches each host it builds (every host of every DNS
        # resolution, too) against its transport_socket_matches; without
        # any, the "default" match counts it (seen on Envoy 1.40).
        s.default_total_match_count.value += len(hosts)
        if changed:
            s.membership_change.value += 1
        s.membership_total.value = len(merged)
        s.membership_healthy.value = sum(1 for h in merged if h.healthy)
        if self.healthChecker is not None and (added or removed):
            self.healthChecker.hostsChanged(added, removed)

    def healthChanged(self, host: Host | None = None) -> None:
        """
        A host's health changed (the health checker calls this with the
        host): rebuild the load balancer over the healthy hosts (or all of
        them in panic mode) and update C{membership_healthy}.  Membership
        is unchanged, so
        L{pyenvoy.upstream.cluster_manager.ClusterManager.onHostsRemoved}
        subscribers are not told.  With
        C{close_connections_on_host_health_failure}, a host that turned
        unhealthy has its open connections closed, as Envoy does.
        """
        self.lb.refresh()
        self.stats.membership_healthy.value = sum(1 for h in self.hosts if h.healthy)
        if (host is not None and not host.healthy
                and self.config.closeConnectionsOnHostHealthFailure):
            for upstream in [u for u in self.connections if u.host is host]:
                upstream.close(flush=False)

    def start(self) -> None:
        """
        Start active health checking, and DNS resolution for STRICT_DNS and
        LOGICAL_DNS clusters.
        """
        if self.healthChecker is not None:
            self.healthChecker.start()
        if self.config.type == "STATIC":
            return
        self._dnsLoop = LoopingCall(self._resolveAll)
        self._dnsLoop.clock = self.reactor
        self._dnsLoop.start(self.config.dnsRefreshRate, now=True)

    def stop(self) -> None:
        """
        Stop re-resolving and health checking.
        """
        if self.healthChecker is not None:
            self.healthChecker.stop()
        if self._dnsLoop is not None and self._dnsLoop.running:
            self._dnsLoop.stop()
        self._dnsLoop = None

    def _addressTypes(self) -> list[type]:
        family = self.config.dnsLookupFamily
        if family == "V4_ONLY":
            return [IPv4Address]
        if family == "V6_ONLY":
            return [IPv6Address]
        return [IPv4Address, IPv6Address]

    def _order(self, addresses: list[Any]) -> list[Any]:
        family = self.config.dnsLookupFamily
        v4 = [a for a in addresses if isinstance(a, IPv4Address)]
        v6 = [a for a in addresses if isinstance(a, IPv6Address)]
        if family == "AUTO":
            return v6 if v6 else v4
        if family == "V4_PREFERRED":
            return v4 if v4 else v6
        return v4 + v6

    def _resolveAll(self) -> Any:
        from twisted.internet.defer import gatherResults

        self.stats.update_attempt.value += 1
        return gatherResults(
            [self._resolve(e) for e in self.config.endpoints], consumeErrors=True
        ).addCallbacks(self._resolved, self._resolveFailed)

    def _resolve(self, endpoint: Any) -> Any:
        from twisted.internet.defer import Deferred

        done: Deferred = Deferred()
        receiver = _Resolution()
        original = receiver.resolutionComplete

        def complete() -> None:
            original()
            done.callback((endpoint, self._order(receiver.addresses)))

        receiver.resolutionComplete = complete  # type: ignore[method-assign]
        self.reactor.nameResolver.resolveHostName(
            receiver, endpoint.address.address, endpoint.address.port, self._addressTypes())
        return done

    def _resolved(self, results: list[Any]) -> None:
        hosts: list[Host] = []
        seen = set()
        for endpoint, addresses in results:
            if self.config.type == "LOGICAL_DNS":
                addresses = addresses[:1]
            for address in addresses:
                key = (address.host, endpoint.address.port)
                if key in seen:
                    continue
                seen.add(key)
                hosts.append(Host(key, endpoint.weight,
                                  endpoint.hostname or endpoint.address.address,
                                  endpoint.healthCheckPort, endpoint.disableActiveHealthCheck))
        self.stats.update_success.value += 1
        if not hosts:
            self.stats.update_empty.value += 1
        if [h.address for h in hosts] == [h.address for h in self.hosts]:
            self.stats.update_no_rebuild.value += 1
        self.setHosts(hosts)

    def _resolveFailed(self, failure: Any) -> None:
        self.stats.update_failure.value += 1
        log.warn("cluster {cluster}: DNS resolution failed: {reason}",
                 cluster=self.name, reason=failure.getErrorMessage())

    # -- circuit breaker -----------------------------------------------------

    def canConnect(self) -> bool:
        """
        Whether C{max_connections} leaves room for one more connection.
        """
        return self.activeConnections < self.config.thresholds.maxConnections

    def connectionAdded(self) -> None:
        """
        Account one more open (or opening) upstream connection.
        """
        self.activeConnections += 1
        self._updateBreaker()

    def connectionRemoved(self) -> None:
        """
        Account one upstream connection less.
        """
        self.activeConnections -= 1
        self._updateBreaker()

    def _updateBreaker(self) -> None:
        limit = self.config.thresholds.maxConnections
        self.stats.breakers["default"]["cx_open"].value = int(self.activeConnections >= limit)
        if self.stats.remaining_cx is not None:
            self.stats.remaining_cx.value = max(0, limit - self.activeConnections)
