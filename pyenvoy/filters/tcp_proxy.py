"""
C{envoy.filters.network.tcp_proxy}: relay a downstream connection to a
host of a cluster, with Envoy's stats, timeouts, retries and flags.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.access_log import parseAccessLogs
from pyenvoy.config.bootstrap import ParseContext
from pyenvoy.config.reader import Section
from pyenvoy.interfaces import CloseType, FilterStatus, IReadFilter
from pyenvoy.network.direct_write import queuedBytes
from pyenvoy.network.relay import installHops
from pyenvoy.stream_info import ResponseFlag
from pyenvoy.upstream.cluster_manager import ConnectStatus, UpstreamConnection

log = Logger()

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

_UNSUPPORTED = (
    "metadata_match", "downstream_idle_timeout", "upstream_idle_timeout", "hash_policy",
    "tunneling_config", "on_demand", "access_log_flush_interval",
    "flush_access_log_on_connected", "access_log_options",
    "max_downstream_connection_duration_jitter_percentage", "proxy_protocol_tlvs",
    "backoff_options", "upstream_connect_mode", "max_early_data_bytes",
)

_COUNTERS = (
    "downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
    "downstream_cx_tx_bytes_total", "downstream_flow_control_paused_reading_total",
    "downstream_flow_control_resumed_reading_total", "early_data_received_count_total",
    "idle_timeout", "max_downstream_connection_duration", "upstream_flush_total",
    # In Envoy 1.40's /stats for every tcp_proxy; nothing here changes them.
    "downstream_cx_drain_close", "downstream_cx_overload_close", "route_delayed_total",
)
#: How many times per idle_timeout the idle timer looks for activity.
IDLE_CHECKS = 8

_GAUGES = ("upstream_flush_active",)


@dataclass(frozen=True)
class TcpProxyConfig:
    """
    A validated C{TcpProxy} message.
    """

    statPrefix: str
    cluster: str | None
    weightedClusters: tuple[tuple[str, int], ...]
    idleTimeout: float | None
    maxConnectAttempts: int
    maxDownstreamConnectionDuration: float | None
    accessLogs: tuple[Any, ...]


class _Shared:
    """
    What every connection of one configured tcp_proxy shares: stats,
    access loggers, the cluster manager.
    """

    def __init__(self, config: TcpProxyConfig, context: Any) -> None:
        self.config = config
        self.reactor = context.reactor
        self.clusterManager = context.clusterManager
        scope = context.store.scope(f"tcp.{config.statPrefix}")
        for name in _COUNTERS:
            setattr(self, name, scope.counter(name))
        for name in _GAUGES:
            setattr(self, name, scope.gauge(name))
        #: The connections whose client is still there, for the buffered gauges.
        self.open: set[TcpProxyFilter] = set()
        # Envoy's buffered gauges, read when somebody looks: the client's
        # bytes held before the upstream connected, and the bytes waiting
        # in the clients' socket write buffers.
        scope.sumGauge("downstream_cx_rx_bytes_buffered", self._rxBuffered)
        scope.sumGauge("downstream_cx_tx_bytes_buffered", self._txBuffered)
        self.loggers = [a.createLogger(context.reactor) for a in config.accessLogs]
        self._rng = random.Random()
        self._totalWeight = sum(w for _, w in config.weightedClusters)

    def _rxBuffered(self) -> int:
        return sum(len(data) for proxy in self.open for data, _ in proxy._early)

    def _txBuffered(self) -> int:
        return sum(queuedBytes(getattr(proxy.connection, "transport", None))
                   for proxy in self.open)

    def pickCluster(self) -> str:
        """
        The cluster for a new connection (weighted pick if configured).
        """
        if self.config.cluster is not None:
            return self.config.cluster
        point = self._rng.randrange(self._totalWeight)
        for name, weight in self.config.weightedClusters:
            if point < weight:
                return name
            point -= weight
        return self.config.weightedClusters[-1][0]


@implementer(IPushProducer)
class _DownstreamPauser:
    """
    Registered on the upstream transport: pauses reading from the client
    while the upstream cannot take more, counting it as Envoy does.

    Twisted may call C{pauseProducing} again while already paused (every
    write above the buffer limit does) and resumes once, so this keeps its
    own state: one pause, one resume, whatever the calls.
    """

    def __init__(self, proxy: "TcpProxyFilter") -> None:
        self.proxy = proxy
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.proxy.shared.downstream_flow_control_paused_reading_total.value += 1
            self.proxy.connection.readDisable(True)

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.proxy.shared.downstream_flow_control_resumed_reading_total.value += 1
            self.proxy.connection.readDisable(False)

    def stopProducing(self) -> None:
        pass


@implementer(IPushProducer)
class _UpstreamPauser:
    """
    Registered on the downstream transport: pauses reading from the
    upstream while the client is not reading (once per pause, as above).
    """

    def __init__(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.upstream.pauseReading()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.upstream.resumeReading()

    def stopProducing(self) -> None:
        pass


@implementer(IReadFilter)
class TcpProxyFilter:
    """
    One proxied connection.
    """

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.config = shared.config
        self.reactor = shared.reactor
        self.upstream: UpstreamConnection | None = None
        #: Gives up flushing to the upstream after the client closed.
        self._drainTimer: Any = None
        self.attempts = 0
        self.downstreamClosed = False
        self._idleTimer: Any = None
        self._durationTimer: Any = None
        self._early: list[tuple[bytes, bool]] = []
        self._idleTick = 0.0
        self._idleFor = 0.0
        self._idleBytes = 0

    # -- read filter -----------------------------------------------------------

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        """
        Hold the client until the upstream is connected.
        """
        self.callbacks = callbacks
        self.connection = connection = callbacks.connection
        self.streamInfo = connection.streamInfo
        connection.readDisable(True)
        connection.addConnectionCallback(self._downstreamEvent)
        self.shared.downstream_cx_total.value += 1
        self.shared.open.add(self)

    def onNewConnection(self) -> FilterStatus:
        """
        Start the timers and the first connect attempt.
        """
        config = self.config
        if config.maxDownstreamConnectionDuration:
            self._durationTimer = self.reactor.callLater(
                config.maxDownstreamConnectionDuration, self._durationReached)
        if config.idleTimeout:
            self._idleTick = config.idleTimeout / IDLE_CHECKS
            self._idleTimer = self.reactor.callLater(self._idleTick, self._idleCheck)
        self._connect()
        return FilterStatus.STOP_ITERATION

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Client bytes go upstream; the client's FIN half-closes upstream.
        """
        upstream = self.upstream
        if upstream is not None and upstream.connected:
            if data:
                self.shared.downstream_cx_rx_bytes_total.value += len(data)
                upstream.write(data)
            if endStream:
                upstream.endStream()
        else:
            # Before the upstream connects (bytes replayed after listener
            # filters, or already in flight): keep them for the connect.
            self._early.append((data, endStream))
        return FilterStatus.STOP_ITERATION

    # -- connecting --------------------------------------------------------------

    def _connect(self) -> None:
        self.attempts += 1
        cluster = self.shared.pickCluster()
        info = self.streamInfo
        info.upstreamCluster = cluster
        status, upstream = self.shared.clusterManager.tcpConnect(cluster, self)
        if status is ConnectStatus.STARTED:
            self.upstream = upstream
            info.upstreamHost = upstream.host.address  # type: ignore[union-attr]
            return
        if status is ConnectStatus.NO_CLUSTER:
            self.shared.downstream_cx_no_route.value += 1
            info.setResponseFlag(ResponseFlag.NO_CLUSTER_FOUND)
            details = "cluster_not_found"
        elif status is ConnectStatus.OVERFLOW:
            info.setResponseFlag(ResponseFlag.UPSTREAM_OVERFLOW)
            details = "upstream_overflow"
        else:
            info.setResponseFlag(ResponseFlag.NO_HEALTHY_UPSTREAM)
            details = "no_healthy_upstream"
        self.connection.close(CloseType.NO_FLUSH, details)

    def startUpstreamSecureTransport(self) -> bool:
        """
        Switch the connected upstream to TLS (its cluster's transport
        socket must be C{envoy.transport_sockets.starttls}).
        """
        upstream = self.upstream
        return upstream is not None and upstream.connected and upstream.startSecureTransport()

    def upstreamConnected(self, upstream: UpstreamConnection) -> None:
        """
        Wire flow control both ways and let the client's bytes flow.
        """
        if self.downstreamClosed:
            upstream.close(flush=False)
            return
        info = self.streamInfo
        info.upstreamLocalAddress = upstream.localAddress
        upstream.registerProducer(_DownstreamPauser(self))
        self.connection.registerProducer(_UpstreamPauser(upstream), True)
        installHops(self, upstream)
        early, self._early = self._early, []
        for data, endStream in early:
            self.onData(data, endStream)
        self.connection.readDisable(False)

    def upstreamConnectFailed(self, reason: str, timedOut: bool) -> None:
        """
        Retry on another pick, or give up with Envoy's flags.
        """
        self.upstream = None
        info = self.streamInfo
        info.setResponseFlag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
        info.upstreamTransportFailureReason = reason
        if self.downstreamClosed:
            return
        if self.attempts < self.config.maxConnectAttempts:
            self._connect()
            return
        info.setResponseFlag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
        cluster = self.shared.clusterManager.get(info.upstreamCluster)
        if cluster is not None:
            cluster.stats.upstream_cx_connect_attempts_exceeded.value += 1
        self.connection.close(CloseType.NO_FLUSH, "upstream_connect_failed")

    # -- relaying back -------------------------------------------------------------

    def upstreamData(self, data: bytes) -> None:
        """
        Upstream bytes go to the client through its write filters.
        """
        self.shared.downstream_cx_tx_bytes_total.value += len(data)
        self.connection.write(data)

    def upstreamEndStream(self) -> None:
        """
        The upstream half-closed: half-close towards the client.
        """
        self.connection.write(b"", True)

    def upstreamClosed(self, localClose: bool) -> None:
        """
        The upstream connection is gone: close the client after flushing.
        """
        upstream = self.upstream
        if upstream is not None and upstream.flushing:
            self.shared.upstream_flush_active.value -= 1
        timer, self._drainTimer = self._drainTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.upstream = None
        if self.downstreamClosed:
            return
        if not localClose and upstream is not None and not upstream.cleanClose:
            self.streamInfo.setResponseFlag(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION)
        self.connection.close(CloseType.FLUSH_WRITE, "upstream_closed")

    # -- downstream close and timers -------------------------------------------------

    def _downstreamEvent(self, event: str) -> None:
        self.downstreamClosed = True
        self.shared.open.discard(self)
        self._cancelTimers()
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            if event == "remote_close" and upstream.connected:
                # Let what the client sent reach the upstream, then close.
                if upstream.pendingWrite():
                    self.shared.upstream_flush_total.value += 1
                    self.shared.upstream_flush_active.value += 1
                    upstream.flushing = True
                    if self.config.idleTimeout:
                        # As Envoy's drainer: give up flushing after the idle timeout.
                        self._drainTimer = self.reactor.callLater(
                            self.config.idleTimeout, upstream.close, False)
                upstream.close(flush=True)
            else:
                upstream.close(flush=False)
        for logger in self.shared.loggers:
            logger.log(self.streamInfo)

    def _cancelTimers(self) -> None:
        for timer in (self._idleTimer, self._durationTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._idleTimer = self._durationTimer = None

    def _idleCheck(self) -> None:
        # Activity is read off the byte counts a few times per timeout, so
        # the data path pays nothing for the idle timer; a connection idles
        # out within one tick (idle_timeout / IDLE_CHECKS) of Envoy's moment.
        info = self.streamInfo
        moved = info.bytesReceived + info.bytesSent
        if moved != self._idleBytes:
            self._idleBytes = moved
            self._idleFor = 0.0
        else:
            self._idleFor += self._idleTick
        timeout = self.config.idleTimeout
        assert timeout is not None
        if self._idleFor < timeout - 1e-9:
            self._idleTimer = self.reactor.callLater(self._idleTick, self._idleCheck)
            return
        self._idleTimer = None
        self.shared.idle_timeout.value += 1
        self.connection.close(CloseType.NO_FLUSH, "tcp_session_idle_timeout")

    def _durationReached(self) -> None:
        self._durationTimer = None
        self.shared.max_downstream_connection_duration.value += 1
        self.streamInfo.setResponseFlag(ResponseFlag.DURATION_TIMEOUT)
        self.connection.close(CloseType.NO_FLUSH, "max_downstream_connection_duration")


class TcpProxyFactory:
    """
    Parses C{TcpProxy} configs and builds the per-connection filters.
    """

    def parseConfig(self, section: Section, context: ParseContext) -> TcpProxyConfig:
        """
        Validate a C{TcpProxy} C{typed_config}.
        """
        statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
        which = section.oneOf("cluster", "weighted_clusters")
        cluster = None
        weighted: list[tuple[str, int]] = []
        if which == "cluster":
            cluster = context.requireCluster(section, "cluster")
        elif which == "weighted_clusters":
            wc = section.section("weighted_clusters")
            if wc is not None:
                for entry in wc.sections("clusters", required=True, nonEmpty=True):
                    name = context.requireCluster(entry, "name")
                    weight = entry.uint32Value("weight", None, minimum=1)
                    if weight is None and not entry.has("weight"):
                        entry.error("missing required field 'weight'")
                    entry.finish(unsupported=("metadata_match",))
                    if name and weight:
                        weighted.append((name, weight))
                wc.finish()
        idle = section.duration("idle_timeout", 3600.0)
        attempts = section.uint32Value("max_connect_attempts", 1, minimum=1) or 1
        duration = section.duration("max_downstream_connection_duration")
        if duration is not None and duration < 0.001:
            section.error("must be at least 1ms", "max_downstream_connection_duration")
            duration = None
        accessLogs = parseAccessLogs(section, "access_log")
        section.finish(unsupported=_UNSUPPORTED)
        return TcpProxyConfig(
            statPrefix=statPrefix, cluster=cluster, weightedClusters=tuple(weighted),
            idleTimeout=idle or None, maxConnectAttempts=attempts,
            maxDownstreamConnectionDuration=duration, accessLogs=accessLogs,
        )

    def createFilterFactory(self, config: TcpProxyConfig, context: Any) -> Any:
        """
        One L{_Shared} per configured filter; a new L{TcpProxyFilter} per
        connection.
        """
        shared = _Shared(config, context)
        return lambda: TcpProxyFilter(shared)


factory = TcpProxyFactory()
