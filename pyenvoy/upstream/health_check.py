"""
Active health checking of a cluster's hosts, as Envoy's C{health_checks}:
the TCP checker and the Redis checker (C{envoy.health_checkers.redis}).

Each host has a session: a timer that runs one check per interval, and a
timeout that fails a check that takes too long.  Results move the host's
C{FAILED_ACTIVE_HC} flag with Envoy's rules (L{_Session.handleSuccess},
L{_Session.setUnhealthy}); every change of health is passed to
L{pyenvoy.upstream.cluster.Cluster.healthChanged}, which rebuilds the load
balancer.

Health check connections are made straight to the host, not through the
cluster manager: as in Envoy they count in no C{upstream_cx_*} stat and
no circuit breaker.
"""

from __future__ import annotations

import enum
import random
from typing import Any

from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pyenvoy.config.bootstrap import HealthCheckConfig, RedisHealthCheck, TcpHealthCheck
from pyenvoy.upstream.host import HealthFlag, Host

log = Logger()

__all__ = ["FailureType", "HealthChecker", "HealthTransition", "payloadMatches"]


class FailureType(enum.Enum):
    """
    Why a check failed (Envoy's C{HealthCheckFailureType}).
    """

    #: The host answered, wrongly: unhealthy at once.
    ACTIVE = "active"
    #: Reported from outside the checker (not produced by pyenvoy yet).
    PASSIVE = "passive"
    #: The connection failed or closed: counts towards C{unhealthy_threshold}.
    NETWORK = "network"
    #: No answer within C{timeout}: counts towards C{unhealthy_threshold}.
    NETWORK_TIMEOUT = "network_timeout"


_NETWORK = (FailureType.NETWORK, FailureType.NETWORK_TIMEOUT)


class HealthTransition(enum.Enum):
    """
    What one check result did to a host's health.
    """

    UNCHANGED = "unchanged"
    CHANGED = "changed"
    #: Moving towards a change, short of its threshold.
    CHANGE_PENDING = "change_pending"


def payloadMatches(expected: tuple[bytes, ...], data: bytes) -> bool:
    """
    Envoy's C{PayloadMatcher::match}: each expected block is found in
    C{data}, in order, each after the end of the previous one (not
    necessarily adjacent).
    """
    start = 0
    for block in expected:
        found = data.find(block, start)
        if found < 0:
            return False
        start = found + len(block)
    return True


class HealthCheckStats:
    """
    Envoy's C{cluster.<name>.health_check.*} stats.
    """

    def __init__(self, scope: Any, redis: bool) -> None:
        self.attempt = scope.counter("attempt")
        self.success = scope.counter("success")
        self.failure = scope.counter("failure")
        self.passive_failure = scope.counter("passive_failure")
        self.network_failure = scope.counter("network_failure")
        self.verify_cluster = scope.counter("verify_cluster")
        self.healthy = scope.gauge("healthy")
        self.degraded = scope.gauge("degraded")
        self.exists_failure = scope.scope("redis").counter("exists_failure") if redis else None


class HealthChecker:
    """
    The active health checker of one cluster.

    @ivar sessions: the session of each checked host.
    """

    def __init__(self, cluster: Any, config: HealthCheckConfig, scope: Any, reactor: Any,
                 rng: random.Random | None = None) -> None:
        """
        @param cluster: the L{pyenvoy.upstream.cluster.Cluster}; its
            C{healthChanged()} is called when a host's health changes.
        @param scope: the cluster's C{cluster.<name>} stats scope.
        """
        self.cluster = cluster
        self.config = config
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.stats = HealthCheckStats(scope.scope("health_check"),
                                      isinstance(config.checker, RedisHealthCheck))
        self.sessions: dict[int, _Session] = {}
        self.running = False

    # -- hosts ---------------------------------------------------------------

    def start(self) -> None:
        """
        Start checking every host of the cluster (the first check runs now,
        or after C{initial_jitter}).
        """
        self.running = True
        self._add(self.cluster.hosts)

    def stop(self) -> None:
        """
        Stop every session and close its connection.
        """
        self.running = False
        for session in list(self.sessions.values()):
            session.stop()
        self.sessions.clear()

    def hostsChanged(self, added: list[Host], removed: list[Host]) -> None:
        """
        Membership changed: check the new hosts, forget the removed ones.
        """
        if not self.running:
            return
        for host in removed:
            session = self.sessions.pop(id(host), None)
            if session is not None:
                session.stop()
                if host.healthy:
                    self.stats.healthy.dec()
        self._add(added)

    def _add(self, hosts: list[Host]) -> None:
        for host in hosts:
            if id(host) in self.sessions or host.disableActiveHealthCheck:
                continue
            if isinstance(self.config.checker, TcpHealthCheck):
                session: _Session = _TcpSession(self, host)
            else:
                session = _RedisSession(self, host)
            self.sessions[id(host)] = session
            session.start()

    # -- timing ----------------------------------------------------------------

    def _withJitter(self, baseMs: int, jitterMs: int) -> float:
        """
        Envoy's C{intervalWithJitter}: C{interval_jitter_percent} of the
        base and up to C{jitterMs} added at random; at least 1 ms.  In
        seconds.
        """
        percentMod = self.config.intervalJitterPercent * baseMs // 100
        if percentMod > 0:
            baseMs += self.rng.randrange(percentMod)
        if jitterMs > 0:
            baseMs += self.rng.randrange(jitterMs)
        return max(1, baseMs) / 1000.0

    def nextInterval(self, healthy: bool, transition: HealthTransition) -> float:
        """
        Seconds until the next check, as Envoy's C{interval()}: until the
        cluster has had a connection, C{no_traffic_interval} (or
        C{no_traffic_healthy_interval} for a healthy host); then the
        interval for the host's state, or the edge interval while a change
        is pending; plus jitter.
        """
        c = self.config
        pending = transition is HealthTransition.CHANGE_PENDING
        if self.cluster.stats.upstream_cx_total.value > 0:
            if not healthy:
                base = c.unhealthyEdgeInterval if pending else c.unhealthyInterval
            else:
                base = c.healthyEdgeInterval if pending else c.interval
        else:
            base = c.noTrafficHealthyInterval if healthy and not pending else c.noTrafficInterval
        return self._withJitter(_ms(base), _ms(c.intervalJitter))

    def initialDelay(self) -> float:
        """
        Seconds before a new host's first check: none, or a random part of
        C{initial_jitter}.
        """
        return self._withJitter(0, _ms(self.config.initialJitter))

    def _changed(self, host: Host, transition: HealthTransition) -> None:
        if transition is HealthTransition.CHANGED:
            self.cluster.healthChanged(host)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class _Session:
    """
    One host's checks: Envoy's C{ActiveHealthCheckSession}.  Subclasses
    implement L{onInterval} (start a check), L{onTimeout} (abandon it) and
    L{stopChecking}, and report with L{handleSuccess} / L{handleFailure}.
    """

    def __init__(self, checker: HealthChecker, host: Host) -> None:
        self.checker = checker
        self.host = host
        self.firstCheck = True
        self.numHealthy = 0
        self.numUnhealthy = 0
        self._intervalTimer: Any = None
        self._timeoutTimer: Any = None
        self.stopped = False
        if host.healthy:
            checker.stats.healthy.inc()

    def start(self) -> None:
        """
        Run the first check now, or after the initial jitter.
        """
        if self.checker.config.initialJitter > 0:
            self._armInterval(self.checker.initialDelay())
        else:
            self._onIntervalBase()

    def stop(self) -> None:
        """
        Stop the timers and close the connection.
        """
        self.stopped = True
        self._cancel()
        self.stopChecking()

    def _cancel(self) -> None:
        for timer in (self._intervalTimer, self._timeoutTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._intervalTimer = self._timeoutTimer = None

    def _armInterval(self, delay: float) -> None:
        if self._intervalTimer is not None and self._intervalTimer.active():
            self._intervalTimer.cancel()
        self._intervalTimer = self.checker.reactor.callLater(delay, self._onIntervalBase)

    def _disarmTimeout(self) -> None:
        if self._timeoutTimer is not None and self._timeoutTimer.active():
            self._timeoutTimer.cancel()
        self._timeoutTimer = None

    def _onIntervalBase(self) -> None:
        self._intervalTimer = None
        if self.stopped:
            return
        self.onInterval()
        self._disarmTimeout()
        self._timeoutTimer = self.checker.reactor.callLater(self.checker.config.timeout,
                                                           self._onTimeoutBase)
        self.checker.stats.attempt.inc()

    def _onTimeoutBase(self) -> None:
        self._timeoutTimer = None
        if self.stopped:
            return
        self.onTimeout()
        self.handleFailure(FailureType.NETWORK_TIMEOUT)

    # -- results ---------------------------------------------------------------

    def handleSuccess(self) -> None:
        """
        A check passed: an unhealthy host becomes healthy on its first
        check ever, or after C{healthy_threshold} passes in a row.
        """
        if self.stopped:
            return
        checker = self.checker
        host = self.host
        self.numUnhealthy = 0
        transition = HealthTransition.UNCHANGED
        if not host.healthy:
            if self.firstCheck or self._bumpHealthy():
                host.healthFlags &= ~(HealthFlag.FAILED_ACTIVE_HC | HealthFlag.ACTIVE_HC_TIMEOUT)
                checker.stats.healthy.inc()
                transition = HealthTransition.CHANGED
                log.info("health check: cluster {cluster} host {host} is healthy",
                         cluster=checker.cluster.name, host=host.addressString)
            else:
                transition = HealthTransition.CHANGE_PENDING
        elif checker.config.alwaysLogHealthCheckSuccess:
            log.info("health check: cluster {cluster} host {host} passed",
                     cluster=checker.cluster.name, host=host.addressString)
        checker.stats.success.inc()
        self.firstCheck = False
        checker._changed(host, transition)
        self._disarmTimeout()
        self._armInterval(checker.nextInterval(True, transition))

    def _bumpHealthy(self) -> bool:
        self.numHealthy += 1
        return self.numHealthy == self.checker.config.healthyThreshold

    def _bumpUnhealthy(self) -> bool:
        self.numUnhealthy += 1
        return self.numUnhealthy == self.checker.config.unhealthyThreshold

    def setUnhealthy(self, kind: FailureType, reason: str = "") -> HealthTransition:
        """
        A check failed: a wrong answer (C{ACTIVE}) makes a healthy host
        unhealthy at once; network failures and timeouts only after
        C{unhealthy_threshold} in a row.  A timeout on a failed host also
        sets C{ACTIVE_HC_TIMEOUT}.
        """
        checker = self.checker
        host = self.host
        self.numHealthy = 0
        transition = HealthTransition.UNCHANGED
        if host.healthy:
            if kind not in _NETWORK or self._bumpUnhealthy():
                host.healthFlags |= HealthFlag.FAILED_ACTIVE_HC
                checker.stats.healthy.dec()
                transition = HealthTransition.CHANGED
                log.info("health check: cluster {cluster} host {host} is unhealthy "
                         "({kind}: {reason})", cluster=checker.cluster.name,
                         host=host.addressString, kind=kind.value, reason=reason or "-")
            else:
                transition = HealthTransition.CHANGE_PENDING
        if kind is FailureType.NETWORK_TIMEOUT and not host.healthy:
            host.healthFlags |= HealthFlag.ACTIVE_HC_TIMEOUT
        else:
            host.healthFlags &= ~HealthFlag.ACTIVE_HC_TIMEOUT
        if (self.firstCheck or checker.config.alwaysLogHealthCheckFailures) and \
                transition is not HealthTransition.CHANGED:
            log.info("health check: cluster {cluster} host {host} failed ({kind}: {reason})",
                     cluster=checker.cluster.name, host=host.addressString, kind=kind.value,
                     reason=reason or "-")
        checker.stats.failure.inc()
        if kind in _NETWORK:
            checker.stats.network_failure.inc()
        elif kind is FailureType.PASSIVE:
            checker.stats.passive_failure.inc()
        self.firstCheck = False
        checker._changed(host, transition)
        return transition

    def handleFailure(self, kind: FailureType, reason: str = "") -> None:
        """
        Record a failed check and schedule the next one.
        """
        if self.stopped:
            return
        transition = self.setUnhealthy(kind, reason)
        self._disarmTimeout()
        self._armInterval(self.checker.nextInterval(False, transition))

    # -- what a checker does ---------------------------------------------------

    def onInterval(self) -> None:
        raise NotImplementedError()

    def onTimeout(self) -> None:
        raise NotImplementedError()

    def stopChecking(self) -> None:
        raise NotImplementedError()


class _Link(Protocol):
    """
    The connection of one session attempt; forwards events to its owner
    while it is the session's current connection.
    """

    transport: Any

    def __init__(self, session: Any) -> None:
        self.session = session
        #: Set when we close on purpose: the close is then no failure.
        self.expectClose = False
        self.connector: Any = None
        self.pending: list[bytes] = []
        self.up = False

    def write(self, data: bytes) -> None:
        if self.up and self.transport is not None:
            self.transport.write(data)
        else:
            self.pending.append(data)

    def close(self) -> None:
        self.expectClose = True
        if self.up and self.transport is not None:
            self.transport.abortConnection()
        elif self.connector is not None:
            self.connector.stopConnecting()

    def connectionMade(self) -> None:
        self.up = True
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        if self.pending:
            self.transport.write(b"".join(self.pending))
            self.pending = []
        if self.session.link is self:
            self.session.linkUp(self)

    def dataReceived(self, data: bytes) -> None:
        if self.session.link is self and not self.expectClose:
            self.session.linkData(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.up = False
        self._ended(reason)

    def connectFailed(self, reason: Failure) -> None:
        self._ended(reason)

    def _ended(self, reason: Failure | None) -> None:
        session = self.session
        if session.link is self:
            session.link = None
            if not self.expectClose:
                session.linkLost(self, reason.getErrorMessage() if reason else "closed")


class _LinkFactory(ClientFactory):
    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Link:
        return self.link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.connectFailed(reason)


class _Connected(_Session):
    """
    A session that talks to its host over a TCP connection.
    """

    link: _Link | None = None

    def connect(self) -> _Link:
        link = self.link = _Link(self)
        ip, port = self.host.address
        port = self.host.healthCheckPort or port
        link.connector = self.checker.reactor.connectTCP(
            ip, port, _LinkFactory(link), timeout=self.checker.cluster.config.connectTimeout)
        return link

    def closeLink(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            link.close()

    def stopChecking(self) -> None:
        self.closeLink()

    def linkUp(self, link: _Link) -> None:
        pass

    def linkData(self, link: _Link, data: bytes) -> None:
        pass

    def linkLost(self, link: _Link, reason: str) -> None:
        pass


class _TcpSession(_Connected):
    """
    Envoy's TCP checker: connect, send the C{send} bytes, wait for the
    C{receive} blocks; with nothing to receive, a connection made is a
    pass (and is closed).  With C{reuse_connection} the connection stays
    open between checks.
    """

    def onInterval(self) -> None:
        checker = self.checker.config.checker
        assert isinstance(checker, TcpHealthCheck)
        if self.link is None:
            self._buffer = b""
            self.connect()
        if checker.send:
            self.link.write(checker.send)  # type: ignore[union-attr]

    def linkUp(self, link: _Link) -> None:
        checker = self.checker.config.checker
        assert isinstance(checker, TcpHealthCheck)
        if not checker.receive:
            # Only testing that we can connect: pass, and close.
            self.closeLink()
            self.handleSuccess()

    def linkData(self, link: _Link, data: bytes) -> None:
        checker = self.checker.config.checker
        assert isinstance(checker, TcpHealthCheck)
        self._buffer += data
        if payloadMatches(checker.receive, self._buffer):
            self._buffer = b""
            self.handleSuccess()
            if not self.checker.config.reuseConnection:
                self.closeLink()

    def linkLost(self, link: _Link, reason: str) -> None:
        # As Envoy: an unexpected close is a network failure, whether or
        # not a check was running.
        self.handleFailure(FailureType.NETWORK, reason)

    def onTimeout(self) -> None:
        self.closeLink()


class _RedisSession(_Connected):
    """
    Envoy's Redis checker: C{PING} (healthy on C{+PONG}) or C{EXISTS key}
    (healthy on C{:0}); a C{MOVED}/C{ASK} redirection also passes.  A new
    connection first sends C{AUTH} with the cluster's
    C{RedisProtocolOptions} credentials for the host (its reply is not
    checked: a refused AUTH shows as a C{NOAUTH} reply to the check).
    """

    def __init__(self, checker: HealthChecker, host: Host) -> None:
        super().__init__(checker, host)
        from pyenvoy.filters.redis_proxy import resp

        self._resp = resp
        self._replies: list[str] = []
        self._decoder: Any = None
        self._waiting = False

    def _request(self) -> bytes:
        key = self.checker.config.checker.key  # type: ignore[union-attr]
        return self._resp.encode([b"EXISTS", key.encode("utf-8")] if key else [b"PING"])

    def onInterval(self) -> None:
        if self.link is None:
            link = self.connect()
            self._decoder = self._resp.makeDecoder(keepSimpleStrings=True)
            self._replies = []
            options = self.checker.cluster.config.redisProtocolOptions
            if options is not None:
                username, password = options.credentialsFor(self.host)
                if password:
                    args = [b"AUTH"] + ([username.encode("utf-8")] if username else [])
                    link.write(self._resp.encode(args + [password.encode("utf-8")]))
                    self._replies.append("auth")
        self._replies.append("check")
        self._waiting = True
        self.link.write(self._request())  # type: ignore[union-attr]

    def linkData(self, link: _Link, data: bytes) -> None:
        try:
            values = self._decoder.feed(data)
        except self._resp.ProtocolError as e:
            self.closeLink()
            self._fail(FailureType.NETWORK, f"protocol error: {e}")
            return
        for value in values:
            what = self._replies.pop(0) if self._replies else "stray"
            if what == "check" and self._waiting:
                self._waiting = False
                self._judge(value)
                if not self.checker.config.reuseConnection:
                    self.closeLink()
                    return

    def _judge(self, value: Any) -> None:
        resp = self._resp
        key = self.checker.config.checker.key  # type: ignore[union-attr]
        if isinstance(value, resp.Error) and (value.startswith(b"MOVED ")
                                              or value.startswith(b"ASK ")):
            # Envoy treats a redirection as a pass.
            self.handleSuccess()
        elif key:
            if isinstance(value, int) and not isinstance(value, bool) and value == 0:
                self.handleSuccess()
            else:
                stats = self.checker.stats
                if stats.exists_failure is not None:
                    stats.exists_failure.inc()
                self.handleFailure(FailureType.ACTIVE, f"EXISTS {key} replied {value!r}")
        elif isinstance(value, resp.SimpleString) and bytes(value) == b"PONG":
            self.handleSuccess()
        else:
            self.handleFailure(FailureType.ACTIVE, f"PING replied {value!r}")

    def _fail(self, kind: FailureType, reason: str) -> None:
        if self._waiting:
            self._waiting = False
            self.handleFailure(kind, reason)

    def linkLost(self, link: _Link, reason: str) -> None:
        # A close fails the check in flight, if any (Envoy's onFailure).
        self._fail(FailureType.NETWORK, reason)

    def onTimeout(self) -> None:
        self._waiting = False
        self.closeLink()
