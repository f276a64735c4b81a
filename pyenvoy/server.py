"""
The pyenvoy server: one Twisted MultiService holding the stats store, the
cluster manager, a service per listener and the admin site.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from pyenvoy import __version__
from pyenvoy.certificates import CertificateCache
from pyenvoy.config.bootstrap import Bootstrap
from pyenvoy.network.listener import ListenerService, StartupError
from pyenvoy.network.udp_listener import UdpListenerService
from pyenvoy.process_memory import memoryUsage
from pyenvoy.stats import Store
from pyenvoy.upstream import ClusterManager

log = Logger()


class ServerContext:
    """
    What filter factories, listeners and the admin site share.

    @ivar state: C{"PRE_INITIALIZING"}, C{"LIVE"} or C{"DRAINING"}, as
        Envoy's C{/ready} and C{/server_info} report it.
    @ivar healthCheckFailed: set by C{POST /healthcheck/fail}.
    @ivar commandLineOptions: the C{twistd pyenvoy} options, for
        C{/server_info}.
    """

    def __init__(self, bootstrap: Bootstrap, reactor: Any, drainTime: float = 10.0,
                 commandLineOptions: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.reactor = reactor
        self.store = Store()
        self.clusterManager = ClusterManager(bootstrap.clusters, self.store, reactor)
        self.listeners: list[ListenerService | UdpListenerService] = []
        self.state = "PRE_INITIALIZING"
        self.healthCheckFailed = False
        self.drainTime = drainTime
        self.commandLineOptions = dict(commandLineOptions or {})
        self.startMonotonic = reactor.seconds()
        self.version = __version__
        self.shutdown: Callable[[], Any] = lambda: None
        self.startDraining: Callable[[], Any] = lambda: None
        self._drainCallbacks: list[Callable[[], None]] = []
        store = self.store
        store.gauge("server.concurrency").value = 1
        store.gauge("server.live")
        store.gauge("server.state").value = 2
        store.gauge("server.uptime")
        store.gauge("server.total_connections")
        store.gauge("server.hot_restart_epoch")
        store.counter("server.static_unknown_fields")
        for name in ("server.memory_allocated", "server.memory_heap_size",
                     "server.memory_physical_size", "server.days_until_first_cert_expiring"):
            store.gauge(name)
        #: The certificates of the TLS contexts, for /certs and the gauge.
        self.certificates = CertificateCache()
        store.gauge("listener_manager.total_listeners_active")
        store.gauge("listener_manager.total_listeners_draining")
        store.counter("listener_manager.listener_added")
        store.counter("listener_manager.listener_create_success")

    def onDrain(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} when the server starts draining (a filter that
        can close idle connections early, as Envoy's redis_proxy does).
        """
        self._drainCallbacks.append(callback)

    def drainStarted(self) -> None:
        """
        Tell the L{onDrain} callbacks (once).
        """
        callbacks, self._drainCallbacks = self._drainCallbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("a drain callback failed", Failure())

    def uptime(self) -> int:
        """
        Whole seconds since start.
        """
        return int(self.reactor.seconds() - self.startMonotonic)

    def refreshServerGauges(self) -> None:
        """
        Bring the C{server.*} gauges up to date (called before stats are read).
        """
        store = self.store
        store.gauge("server.uptime").value = self.uptime()
        # POST /healthcheck/fail drains, for these gauges too (Envoy's
        # failHealthcheck sets server.live 0, and its state is DRAINING).
        state = "DRAINING" if self.state == "LIVE" and self.healthCheckFailed else self.state
        store.gauge("server.live").value = int(state == "LIVE")
        store.gauge("server.state").value = {"LIVE": 0, "DRAINING": 1}.get(state, 2)
        store.gauge("server.total_connections").value = sum(
            len(s.listener.connections) for s in self.listeners)
        memory = memoryUsage()
        store.gauge("server.memory_allocated").value = memory["allocated"]
        store.gauge("server.memory_heap_size").value = memory["heap_size"]
        store.gauge("server.memory_physical_size").value = memory["physical"]
        store.gauge("server.days_until_first_cert_expiring").value = (
            self.certificates.daysUntilFirstExpiring(self, self.wallClock()))

    def wallClock(self) -> float:
        """
        Seconds since the epoch now (certificate expiry is wall-clock time).
        """
        return time.time()


class Server(MultiService):
    """
    Everything one C{twistd pyenvoy} process runs.
    """

    def __init__(self, bootstrap: Bootstrap, reactor: Any = None, drainTime: float = 10.0,
                 commandLineOptions: dict[str, Any] | None = None,
                 admin: bool = True) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as defaultReactor
            reactor = defaultReactor
        self.reactor = reactor
        self.context = context = ServerContext(bootstrap, reactor, drainTime,
                                               commandLineOptions)
        context.shutdown = self.shutdown
        context.startDraining = self.drain
        for config in bootstrap.listeners:
            service: ListenerService | UdpListenerService
            if config.isUdp:
                service = UdpListenerService(config, context)
            else:
                service = ListenerService(config, context)
            service.setServiceParent(self)
            context.listeners.append(service)
            context.store.counter("listener_manager.listener_added").value += 1
            context.store.counter("listener_manager.listener_create_success").value += 1
        self.adminService = None
        if admin and bootstrap.admin is not None:
            from pyenvoy.admin import AdminService

            self.adminService = AdminService(bootstrap.admin, context)
            self.adminService.setServiceParent(self)
        self._shuttingDown: Deferred | None = None

    def privilegedStartService(self) -> None:
        """
        Bind every port now; a port that cannot be bound ends start-up with
        a message (exit status 1), before anything else runs.
        """
        try:
            super().privilegedStartService()
        except StartupError as e:
            for service in self:
                stop = getattr(service, "stopListening", None)
                if stop is not None:
                    stop()
            log.critical("{message}", message=str(e))
            raise SystemExit(f"pyenvoy: {e}")

    def startService(self) -> None:
        """
        Start clusters and listeners; the server is LIVE.
        """
        self.context.clusterManager.start()
        super().startService()
        self.context.state = "LIVE"
        self.context.store.gauge("listener_manager.total_listeners_active").value = len(
            self.context.listeners)
        for service in self.context.listeners:
            address = service.boundAddress()
            log.info("listener {name} on {host}:{port}", name=service.name,
                     host=address[0] if address else "?", port=address[1] if address else "?")

    def stopService(self) -> Deferred:
        """
        Stop everything (open connections are cut; use L{shutdown} to drain).
        """
        self.context.clusterManager.stop()
        return super().stopService()

    def drain(self) -> Deferred:
        """
        Stop accepting on every listener; fires when every open connection
        has closed or the drain time has passed.
        """
        context = self.context
        context.state = "DRAINING"
        store = context.store
        store.gauge("listener_manager.total_listeners_draining").value = len(context.listeners)
        store.gauge("listener_manager.total_listeners_active").value = 0
        waits = []
        for service in context.listeners:
            service.stopListening()
            d: Deferred = Deferred()
            service.listener.whenDrained(lambda d=d: d.called or d.callback(None))
            waits.append(d)
        context.drainStarted()
        done: Deferred = Deferred()
        timer = self.reactor.callLater(context.drainTime,
                                       lambda: done.called or done.callback(None))

        def finished(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        DeferredList(waits).addCallback(finished)
        return done

    def shutdown(self) -> Deferred:
        """
        Drain (up to C{--drain-time-s}), then stop the reactor: what SIGTERM
        and C{POST /quitquitquit} do.
        """
        if self._shuttingDown is not None:
            return self._shuttingDown
        log.info("draining for up to {seconds}s before exit", seconds=self.context.drainTime)
        d = self._shuttingDown = self.drain()

        def stop(_: Any) -> None:
            if self.reactor.running:
                self.reactor.stop()

        d.addCallback(stop)
        return d


def installSignalDrain(server: Server, reactor: Any) -> None:
    """
    Make SIGTERM drain before exiting (twistd's own handler stops at once).

    Installed now, so a SIGTERM during start-up queues a drain for when
    the reactor runs, and again once it runs, because the reactor puts its
    own handler in place as it starts.
    """
    import signal

    def onSignal(signum: int, frame: Any) -> None:
        reactor.callFromThread(server.shutdown)

    def install() -> None:
        signal.signal(signal.SIGTERM, onSignal)

    install()
    reactor.callWhenRunning(install)


__all__ = ["Server", "ServerContext", "installSignalDrain"]
