"""
An upstream host: one address of a cluster, with the per-host stats that
C{/clusters} shows.
"""

from __future__ import annotations

import enum


class HealthFlag(enum.IntFlag):
    """
    Envoy's host health flags (those pyenvoy sets), in the order Envoy
    prints them in C{/clusters}.
    """

    FAILED_ACTIVE_HC = 0x01
    PENDING_ACTIVE_HC = 0x02
    ACTIVE_HC_TIMEOUT = 0x04


#: How C{/clusters} spells each flag.
_FLAG_NAMES = (
    (HealthFlag.FAILED_ACTIVE_HC, "/failed_active_hc"),
    (HealthFlag.PENDING_ACTIVE_HC, "/pending_active_hc"),
    (HealthFlag.ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
)


class HostStats:
    """
    Envoy's per-host stats (shown in /clusters, not in /stats).
    """

    __slots__ = ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_active",
                 "rq_error", "rq_pending_active", "rq_success", "rq_timeout")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def items(self) -> list[tuple[str, int]]:
        """
        C{(name, value)} pairs sorted by name, as /clusters prints them.
        """
        return sorted((name, getattr(self, name)) for name in self.__slots__)


class Host:
    """
    One upstream endpoint.

    @ivar address: C{(ip, port)}.
    @ivar hostname: the endpoint's C{hostname}, or the DNS name it was
        resolved from.
    """

    def __init__(self, address: tuple[str, int], weight: int = 1, hostname: str = "",
                 healthCheckPort: int = 0, disableActiveHealthCheck: bool = False) -> None:
        self.address = address
        self.weight = weight
        self.hostname = hostname
        #: The port active health checks connect to (0: the host's own),
        #: the endpoint's C{health_check_config.port_value}.
        self.healthCheckPort = healthCheckPort
        #: The endpoint's C{health_check_config.disable_active_health_check}.
        self.disableActiveHealthCheck = disableActiveHealthCheck
        self.stats = HostStats()
        self._healthFlags = HealthFlag(0)
        self._healthy = True

    @property
    def healthFlags(self) -> HealthFlag:
        """
        The L{HealthFlag}s set on this host.
        """
        return self._healthFlags

    @healthFlags.setter
    def healthFlags(self, flags: HealthFlag) -> None:
        self._healthFlags = flags
        # Load balancers ask on every pick: keep the answer as a plain bool
        # rather than doing enum arithmetic each time.
        self._healthy = not flags & HealthFlag.FAILED_ACTIVE_HC

    @property
    def healthy(self) -> bool:
        """
        Whether the host may take traffic: no active health check failed
        it.  Setting it sets or clears C{FAILED_ACTIVE_HC}; the cluster's
        load balancer learns of the change through
        L{pyenvoy.upstream.cluster.Cluster.healthChanged}.
        """
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        if value:
            self.healthFlags &= ~(HealthFlag.FAILED_ACTIVE_HC | HealthFlag.ACTIVE_HC_TIMEOUT)
        else:
            self.healthFlags |= HealthFlag.FAILED_ACTIVE_HC

    def healthFlagsString(self) -> str:
        """
        The C{health_flags} of C{/clusters}: C{healthy}, or the set flags
        as Envoy writes them (C{/failed_active_hc/active_hc_timeout}).
        """
        text = "".join(name for flag, name in _FLAG_NAMES if self.healthFlags & flag)
        return text or "healthy"

    @property
    def addressString(self) -> str:
        """
        C{ip:port}, as Envoy prints it.
        """
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __repr__(self) -> str:
        return f"<Host {self.addressString}>"
