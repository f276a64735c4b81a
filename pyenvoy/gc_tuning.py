"""
Garbage-collector settings for a long-running proxy process.

CPython's cyclic collector runs a young-generation pass every 700 net
allocations of container objects, and each pass walks every young object
still alive.  A proxy keeps thousands of short-lived containers alive at
any moment (a reply cell per pipelined Redis command, a connection's
objects until it closes), so with the default thresholds the collector
walked the same live objects over and over: 3-4% of the proxy's CPU in
`perf` profiles of redis_proxy and TLS handshakes, and 15% of
redis_proxy's in-memory cost per pipelined command.  Objects built at
start-up (configuration, modules, tables) never become garbage, so they
are moved out of the collector's sight once.
"""

from __future__ import annotations

import gc

#: Young-generation threshold (CPython's default is 700), then the
#: default ratios between generations.
THRESHOLDS = (10_000, 10, 10)


def tuneForServing() -> None:
    """
    Freeze what start-up built (it is never collected, and is not walked
    again by full collections) and make young collections rarer.  Memory
    held by unreachable cycles stays bounded: at most C{THRESHOLDS[0]}
    net container allocations wait for the next young pass.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
