"""
An upstream host: one address of a cluster, with the per-host stats that
C{/clusters} shows.
"""

from __future__ import annotations


class HostStats:
    """
    Envoy's per-host stats (shown in /clusters, not in /stats).
    """

    __slots__ = ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_active",
                 "rq_error", "rq_success", "rq_timeout")

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

    def __init__(self, address: tuple[str, int], weight: int = 1, hostname: str = "") -> None:
        self.address = address
        self.weight = weight
        self.hostname = hostname
        self.stats = HostStats()
        self.healthy = True

    @property
    def addressString(self) -> str:
        """
        C{ip:port}, as Envoy prints it.
        """
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __repr__(self) -> str:
        return f"<Host {self.addressString}>"
