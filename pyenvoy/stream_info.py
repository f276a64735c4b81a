"""
What is known about one downstream connection, for access logs and filters.
"""

from __future__ import annotations

import itertools
from typing import Any

_connectionIds = itertools.count(1)


def nextConnectionId() -> int:
    """
    A process-unique connection number, as Envoy's C{%CONNECTION_ID%}.
    """
    return next(_connectionIds)


class ResponseFlag:
    """
    Envoy's short response flags that apply to L3/L4 proxying.
    """

    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_OVERFLOW = "UO"
    NO_ROUTE_FOUND = "NR"
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    NO_CLUSTER_FOUND = "NC"
    DURATION_TIMEOUT = "DT"
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    STREAM_IDLE_TIMEOUT = "SI"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    UPSTREAM_CONNECTION_TERMINATION = "UC"


#: Order Envoy prints the flags in (its C{ResponseFlag} enum order).
RESPONSE_FLAG_ORDER = (
    "UH", "UF", "UC", "UO", "NR", "DC", "URX", "SI", "DT", "UPE", "NC",
)

#: Envoy's long names, for %RESPONSE_FLAGS_LONG%.
RESPONSE_FLAG_LONG = {
    "UH": "NoHealthyUpstream",
    "UF": "UpstreamConnectionFailure",
    "UO": "UpstreamOverflow",
    "NR": "NoRouteFound",
    "URX": "UpstreamRetryLimitExceeded",
    "NC": "NoClusterFound",
    "DT": "DurationTimeout",
    "UPE": "UpstreamProtocolError",
    "SI": "StreamIdleTimeout",
    "DC": "DownstreamConnectionTermination",
    "UC": "UpstreamConnectionTermination",
}


class StreamInfo:
    """
    Per-connection facts: times, addresses, byte counts, the upstream
    picked, response flags and dynamic metadata.

    Times: C{startTime} is wall-clock seconds since the epoch (for
    C{%START_TIME%}); C{startMonotonic} and C{endMonotonic} are reactor
    seconds, used for durations.
    """

    def __init__(self, startTime: float, startMonotonic: float) -> None:
        self.connectionId = nextConnectionId()
        self.startTime = startTime
        self.startMonotonic = startMonotonic
        self.endMonotonic: float | None = None
        self.downstreamRemoteAddress: tuple[str, int] | None = None
        self.downstreamLocalAddress: tuple[str, int] | None = None
        self.upstreamHost: tuple[str, int] | None = None
        self.upstreamLocalAddress: tuple[str, int] | None = None
        self.upstreamCluster: str | None = None
        self.upstreamTransportFailureReason: str | None = None
        self.requestedServerName: str | None = None
        self.bytesReceived = 0
        self.bytesSent = 0
        self.responseFlags: set[str] = set()
        self.connectionTerminationDetails: str | None = None
        self.dynamicMetadata: dict[str, dict[str, Any]] = {}
        self.filterState: dict[str, Any] = {}
        #: TLS facts filled in by the TLS transport (issue 4), e.g.
        #: C{{"version": "TLSv1.3", "peerSubject": ...}}.
        self.tls: dict[str, Any] = {}

    def setResponseFlag(self, flag: str) -> None:
        """
        Add one of the L{ResponseFlag} values.
        """
        self.responseFlags.add(flag)

    def responseFlagsShort(self) -> str:
        """
        The flags as C{%RESPONSE_FLAGS%} prints them (C{-} when none).
        """
        flags = [f for f in RESPONSE_FLAG_ORDER if f in self.responseFlags]
        return ",".join(flags) if flags else "-"

    def durationMs(self) -> int | None:
        """
        Whole milliseconds from start to end, or C{None} while open.
        """
        if self.endMonotonic is None:
            return None
        return int((self.endMonotonic - self.startMonotonic) * 1000)
