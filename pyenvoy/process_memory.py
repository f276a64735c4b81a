"""
The process's memory as Envoy reports its own: C{/memory} and the
C{server.memory_*} gauges.  Envoy reads tcmalloc; Python's allocator has
no such figures, so all come from the resident set.
"""

from __future__ import annotations

import os
import resource
import sys


def memoryUsage() -> dict[str, int]:
    """
    C{allocated} and C{heap_size}: the resident set now (Linux; the peak
    elsewhere); C{physical}: the larger of that and the peak.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform != "darwin":
        peak *= 1024
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        current = peak
    return {"allocated": current, "heap_size": current, "physical": max(peak, current)}
