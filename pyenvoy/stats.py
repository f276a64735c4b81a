"""
Counters, gauges and histograms under Envoy's stat names.

Hot paths hold on to the stat objects and bump C{.value} directly; the
store is only consulted when a filter chain or cluster is built.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import re
from typing import Callable, Iterable, Iterator

_UNSAFE = re.compile(r":/?/?")

#: Envoy's default histogram bucket bounds, in the histogram's unit (ms).
DEFAULT_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)

#: The quantiles Envoy's /stats shows for a histogram.
SUPPORTED_QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def sanitizeName(name: str) -> str:
    """
    Apply Envoy's stat-name sanitising: C{:} (and C{://}, C{:/}) become
    C{_}, so C{127.0.0.1:10000} reads C{127.0.0.1_10000}.
    """
    return _UNSAFE.sub("_", name)


def joinName(prefix: str, name: str) -> str:
    """
    Join a prefix and a name the way Envoy's C{statPrefixJoin} does: no
    doubled dot when the prefix already ends in one.
    """
    if not prefix:
        return name
    if prefix.endswith("."):
        return prefix + name
    return prefix + "." + name


class Counter:
    """
    A monotonically increasing count.
    """

    __slots__ = ("name", "value")

    kind = "counter"

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """
        Add C{amount}.
        """
        self.value += amount


class Gauge:
    """
    A value that goes up and down.
    """

    __slots__ = ("name", "value")

    kind = "gauge"

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """
        Add C{amount}.
        """
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        """
        Subtract C{amount}.
        """
        self.value -= amount

    def set(self, value: int) -> None:
        """
        Replace the value.
        """
        self.value = value


class SumGauge(Gauge):
    """
    A gauge whose value is computed when it is read: the sum of its
    sources (callables returning ints).  For levels that change with every
    write, such as bytes waiting in socket buffers, counted only when
    somebody looks instead of on the data path.
    """

    __slots__ = ("sources",)

    def __init__(self, name: str) -> None:
        self.name = name
        self.sources: list[Callable[[], int]] = []

    @property  # type: ignore[override]
    def value(self) -> int:
        """
        The sum of the sources now.
        """
        return sum(source() for source in self.sources)


class Histogram:
    """
    Recorded values (milliseconds unless the name says otherwise).

    Bucket counts over L{DEFAULT_BUCKETS} are exact for the whole life of
    the process; quantiles come from the most recent C{reservoir} values,
    which keeps memory bounded.
    """

    kind = "histogram"

    def __init__(self, name: str, reservoir: int = 4096) -> None:
        self.name = name
        self.count = 0
        self.sum = 0.0
        self.bucketCounts = [0] * len(DEFAULT_BUCKETS)
        self._recent: collections.deque[float] = collections.deque(maxlen=reservoir)

    def record(self, value: float) -> None:
        """
        Record one value.
        """
        self.count += 1
        self.sum += value
        index = bisect.bisect_left(DEFAULT_BUCKETS, value)
        if index < len(self.bucketCounts):
            self.bucketCounts[index] += 1
        self._recent.append(value)

    def recordMany(self, value: float, times: int) -> None:
        """
        Record C{value} C{times} times, as that many L{record} calls would
        (the sum up to float rounding), in one step: a batch of commands
        answered at the same moment.
        """
        if times <= 0:
            return
        self.count += times
        self.sum += value * times
        index = bisect.bisect_left(DEFAULT_BUCKETS, value)
        if index < len(self.bucketCounts):
            self.bucketCounts[index] += times
        self._recent.extend(itertools.repeat(value, min(times, self._recent.maxlen or times)))

    def cumulativeBuckets(self) -> list[tuple[float, int]]:
        """
        Return C{(upper bound, values <= bound)} pairs, Prometheus style.
        """
        total = 0
        out = []
        for bound, count in zip(DEFAULT_BUCKETS, self.bucketCounts):
            total += count
            out.append((bound, total))
        return out

    def recent(self) -> Iterable[float]:
        """
        The most recent values (up to the reservoir's size).
        """
        return iter(self._recent)

    def quantiles(self) -> list[float] | None:
        """
        Return the value at each of L{SUPPORTED_QUANTILES}, or C{None} if
        nothing was recorded.
        """
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        last = len(ordered) - 1
        out = []
        for q in SUPPORTED_QUANTILES:
            position = q / 100 * last
            low = int(position)
            high = min(low + 1, last)
            fraction = position - low
            out.append(ordered[low] + (ordered[high] - ordered[low]) * fraction)
        return out


Stat = Counter | Gauge | Histogram


class Scope:
    """
    A view of a L{Store} that prefixes every name, like Envoy's stats scope.
    """

    def __init__(self, store: "Store", prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def counter(self, name: str) -> Counter:
        """
        The counter C{<prefix>.<name>}, created at zero if new.
        """
        return self.store.counter(joinName(self.prefix, name))

    def gauge(self, name: str) -> Gauge:
        """
        The gauge C{<prefix>.<name>}, created at zero if new.
        """
        return self.store.gauge(joinName(self.prefix, name))

    def sumGauge(self, name: str, source: Callable[[], int]) -> SumGauge:
        """
        See L{Store.sumGauge}, for C{<prefix>.<name>}.
        """
        return self.store.sumGauge(joinName(self.prefix, name), source)

    def histogram(self, name: str) -> Histogram:
        """
        The histogram C{<prefix>.<name>}, created empty if new.
        """
        return self.store.histogram(joinName(self.prefix, name))

    def scope(self, name: str) -> "Scope":
        """
        A nested scope C{<prefix>.<name>}.
        """
        return Scope(self.store, joinName(self.prefix, name))


class Store:
    """
    Every stat of the process, by full name.
    """

    def __init__(self) -> None:
        self._stats: dict[str, Stat] = {}

    def _get(self, name: str, kind: type) -> Stat:
        name = sanitizeName(name)
        stat = self._stats.get(name)
        if stat is None:
            stat = self._stats[name] = kind(name)
        elif not isinstance(stat, kind):
            raise TypeError(f"stat {name!r} is a {stat.kind}, not a {kind.kind}")
        return stat

    def counter(self, name: str) -> Counter:
        """
        The counter called C{name}, created at zero if new.
        """
        return self._get(name, Counter)  # type: ignore[return-value]

    def gauge(self, name: str) -> Gauge:
        """
        The gauge called C{name}, created at zero if new.
        """
        return self._get(name, Gauge)  # type: ignore[return-value]

    def histogram(self, name: str) -> Histogram:
        """
        The histogram called C{name}, created empty if new.
        """
        return self._get(name, Histogram)  # type: ignore[return-value]

    def sumGauge(self, name: str, source: Callable[[], int]) -> SumGauge:
        """
        Add C{source} to the L{SumGauge} called C{name}; a plain gauge of
        that name (nobody sets a gauge that is computed) becomes one.
        """
        name = sanitizeName(name)
        stat = self._stats.get(name)
        if not isinstance(stat, SumGauge):
            if stat is not None and not isinstance(stat, Gauge):
                raise TypeError(f"stat {name!r} is a {stat.kind}, not a gauge")
            stat = self._stats[name] = SumGauge(name)
        stat.sources.append(source)
        return stat

    def scope(self, prefix: str) -> Scope:
        """
        A L{Scope} that puts C{prefix} before every name.
        """
        return Scope(self, sanitizeName(prefix))

    def get(self, name: str) -> Stat | None:
        """
        The stat called C{name}, or C{None}.
        """
        return self._stats.get(name)

    def __iter__(self) -> Iterator[Stat]:
        """
        Every stat, sorted by name (the order /stats prints them in).
        """
        for name in sorted(self._stats):
            yield self._stats[name]

    def reset(self) -> None:
        """
        Zero every counter (C{/reset_counters}).
        """
        for stat in self._stats.values():
            if isinstance(stat, Counter):
                stat.value = 0
