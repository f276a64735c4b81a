"""
C{envoy.filters.network.redis_proxy}: a Redis proxy that splits each
client's commands over the shards of a cluster, as Envoy's does.

Per client connection the filter decodes commands (hiredis), routes each
by its key, and writes the replies back in request order.  Commands read
in one chunk are written to each upstream in one write, and the replies
that one upstream read completes go to each client in one write
(L{pyenvoy.filters.redis_proxy.conn_pool.Batch}).

The common case (a catch-all route only, single-key commands) runs inline
in L{RedisProxyFilter.onData} with a reply cell (a short list, see
L{pyenvoy.filters.redis_proxy.conn_pool.UpstreamClient}) per command whose
stats the upstream counts per run of replies; everything else goes through
L{RedisProxyFilter._handle}.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.filters.redis_proxy import cluster_scope
from pyenvoy.filters.redis_proxy import commands as C
from pyenvoy.filters.redis_proxy.config import RedisProxyConfig, Route
from pyenvoy.filters.redis_proxy.conn_pool import (
    IGNORE, UPSTREAM_FAILURE, Batch, ConnPool, UpstreamClient, encodeCommand)
from pyenvoy.filters.redis_proxy.resp import ProtocolError, encode, makeDecoder
from pyenvoy.interfaces import CloseType, FilterStatus, IReadFilter

log = Logger()

# Envoy's reply strings (command_splitter_impl.h, proxy_filter.cc, fault_impl.h).
INVALID_REQUEST = b"-invalid request\r\n"
NO_UPSTREAM_HOST = b"-no upstream host\r\n"
UPSTREAM_PROTOCOL_ERROR = b"-upstream protocol error\r\n"
AUTH_REQUIRED = b"-NOAUTH Authentication required.\r\n"
FAULT_ERROR = b"-Fault Injected: Error\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
EMPTY_ARRAY = b"*0\r\n"

_ONLY_BYTES = {bytes}

#: The plain path encodes commands from these pieces (one C{join}, half
#: the cost of a C{%} format); an argument of 1 KiB or more takes the
#: general path.
_BULK_HEADERS = tuple(b"$%d\r\n" % n for n in range(1024))
_ARRAY2 = b"*2\r\n"
_ARRAY3 = b"*3\r\n"
_CRLF = b"\r\n"


#: A client with this many replies outstanding is not read until half are sent.
MAX_PENDING_PER_CLIENT = 4096

# Command kinds.
(_SIMPLE, _EVAL, _MGET, _MSET, _SUM, _TXN, _AUTH, _PING, _ECHO, _TIME, _QUIT, _HELLO,
 _BLOCKING, _SUBSCRIBE, _FAN_OUT, _SELECT, _CLUSTER_SCOPE, _CLIENT) = range(18)


def _error(message: str) -> bytes:
    return b"-" + message.encode("utf-8", "replace") + b"\r\n"


class _CommandStats:
    """
    C{redis.<prefix>.command.<cmd>.*}.
    """

    __slots__ = ("total", "success", "error", "error_fault", "delay_fault", "latency", "scale")

    def __init__(self, scope: Any, scale: float) -> None:
        for name in ("total", "success", "error", "error_fault", "delay_fault"):
            setattr(self, name, scope.counter(name))
        self.latency = scope.histogram("latency")
        #: Seconds to the latency histogram's unit (ms, or µs with
        #: C{latency_in_micros}).
        self.scale = scale

    def countReplies(self, count: int, elapsed: float) -> None:
        """
        C{count} successful replies that took C{elapsed} seconds each.
        """
        self.success.value += count
        if count == 1:
            self.latency.record(elapsed * self.scale)
        else:
            self.latency.recordMany(elapsed * self.scale, count)

    def countFailure(self, elapsed: float) -> None:
        """
        A command that failed after C{elapsed} seconds.
        """
        self.error.value += 1
        self.latency.record(elapsed * self.scale)


class _Command:
    """
    One entry of the command table: its kind and stats.
    """

    __slots__ = ("name", "kind", "stats", "isWrite")

    def __init__(self, name: str, kind: int, stats: _CommandStats | None) -> None:
        self.name = name
        self.kind = kind
        self.stats = stats
        self.isWrite = name in C.WRITE


#: Each command's kind, from the classes of the command table.
_KINDS: dict[str, int] = {
    name: kind
    for names, kind in ((C.SIMPLE, _SIMPLE), (C.EVAL, _EVAL), (C.SUM_SPLIT, _SUM),
                        (C.TRANSACTION, _TXN), (C.BLOCKING, _BLOCKING),
                        (C.SUBSCRIBE, _SUBSCRIBE), (C.FAN_OUT, _FAN_OUT),
                        (C.CLUSTER_SCOPE, _CLUSTER_SCOPE))
    for name in names
}
_KINDS.update({"mget": _MGET, "mset": _MSET, "auth": _AUTH, "ping": _PING, "echo": _ECHO,
               "time": _TIME, "quit": _QUIT, "hello": _HELLO, C.SELECT: _SELECT,
               "client": _CLIENT})


class _RuntimeRoute:
    """
    A configured route with its connection pools.
    """

    def __init__(self, route: Route, pools: dict[str, ConnPool]) -> None:
        self.prefix = route.prefix
        #: The prefix as matched (lowercase for case_insensitive routes).
        self.match = route.prefix
        self.removePrefix = route.removePrefix
        self.pool = pools[route.cluster]
        self.mirrors = tuple((pools[m.cluster], m) for m in route.mirrors)


class _Shared:
    """
    What every connection of one configured redis_proxy shares: stats,
    routes, upstream pools, the command table.
    """

    def __init__(self, config: RedisProxyConfig, context: Any) -> None:
        self.config = config
        self.reactor = context.reactor
        self.batch = Batch(context.reactor)
        store = context.store
        scope = store.scope(f"redis.{config.statPrefix}")
        for name in ("downstream_cx_drain_close", "downstream_cx_protocol_error",
                     "downstream_cx_rx_bytes_total", "downstream_cx_total",
                     "downstream_cx_tx_bytes_total", "downstream_rq_total",
                     # Envoy 1.40 has it; HELLO 3 leaves it at 0 there too.
                     "downstream_rq_noproto"):
            setattr(self, name, scope.counter(name))
        for name in ("downstream_cx_active", "downstream_cx_rx_bytes_buffered",
                     "downstream_cx_tx_bytes_buffered", "downstream_rq_active"):
            setattr(self, name, scope.gauge(name))
        splitter = scope.scope("splitter")
        self.invalid_request = splitter.counter("invalid_request")
        self.unsupported_command = splitter.counter("unsupported_command")
        commandScope = scope.scope("command")
        self.table: dict[bytes, _Command] = {}
        #: Name as spelled (lower and upper case, then as seen) -> stats,
        #: for the single-key commands the plain path handles inline.
        self.simpleStats: dict[bytes, _CommandStats] = {}
        self.latencyScale = 1_000_000.0 if config.latencyInMicros else 1000.0
        for name in sorted(C.KNOWN):
            kind = _KINDS[name]
            stats = (_CommandStats(commandScope.scope(name), self.latencyScale)
                     if name in C.WITH_STATS else None)
            self.table[name.encode()] = _Command(name, kind, stats)
            if kind == _SIMPLE and stats is not None:
                self.simpleStats[name.encode()] = self.simpleStats[name.upper().encode()] = stats
        pools: dict[str, ConnPool] = {}
        routes = list(config.routes) + ([config.catchAll] if config.catchAll else [])
        for route in routes:
            for cluster in [route.cluster] + [m.cluster for m in route.mirrors]:
                if cluster not in pools:
                    pools[cluster] = ConnPool(context.clusterManager, cluster, self.batch,
                                              config, store)
        self.pools = pools
        self.routes = tuple(_RuntimeRoute(r, pools) for r in config.routes)
        if config.caseInsensitive:
            for route in self.routes:
                route.match = route.prefix.lower()
        self.catchAll = _RuntimeRoute(config.catchAll, pools) if config.catchAll else None
        self.caseInsensitive = config.caseInsensitive
        self.faults: dict[str, list[Any]] = {}
        allCommands = [f for f in config.faults if not f.commands]
        for fault in config.faults:
            for name in fault.commands:
                self.faults.setdefault(name, []).append(fault)
        for name in list(self.faults):
            self.faults[name].extend(allCommands)
        self.faultsForAll = allCommands
        self.hasFaults = bool(config.faults)
        #: The catch-all route when it is the only route and nothing
        #: (mirrors, redirection, command stats) needs the general path.
        self.plainRoute = self.catchAll if (
            self.catchAll is not None and not self.routes and not self.catchAll.mirrors
            and not config.enableRedirection and not config.enableCommandStats) else None
        self.random = random.Random()
        self.draining = False
        onDrain = getattr(context, "onDrain", None)
        if onDrain is not None:
            onDrain(self.drain)

    def drain(self) -> None:
        """
        The server is draining: from now on each connection closes once a
        reply is written with nothing left outstanding (Envoy's
        C{downstream_cx_drain_close}, checked in C{onResponse} only), so
        an idle client stays open until its next command is answered; the
        drain time closes what is left.
        """
        self.draining = True

    def lookup(self, raw: bytes) -> _Command | None:
        """
        The table entry of a command name in any case (cached by spelling).
        """
        entry = self.table.get(raw)
        if entry is None:
            entry = self.table.get(raw.lower())
            if entry is not None and len(self.table) < 4096:
                self.table[raw] = entry
                if entry.kind == _SIMPLE and entry.stats is not None:
                    self.simpleStats[raw] = entry.stats
        return entry

    def route(self, key: bytes) -> _RuntimeRoute | None:
        """
        The longest-prefix route for C{key}, else the catch-all one.
        """
        if self.routes:
            probe = key.lower() if self.caseInsensitive else key
            for route in self.routes:
                if probe.startswith(route.match):
                    return route
        return self.catchAll

    def faultFor(self, name: str) -> Any:
        """
        The fault to inject into this command, if any (Envoy's draw: one
        random whole number 0-99 against the faults' cumulative whole
        percentages).
        """
        faults = self.faults.get(name, self.faultsForAll)
        if not faults:
            return None
        draw = int(self.random.random() * 100)
        total = 0
        for fault in faults:
            total += fault.percent
            if draw < total:
                return fault
        return None


class _Slot:
    """
    One command's place in its client's reply order, and the callbacks of
    the upstream command that answers it.
    """

    # Rarely set, so class defaults: a slot is made per command, and
    # setting four attributes costs half of setting nine.
    reply: bytes | None = None
    #: QUIT's slot: close once written.
    quit = False
    #: A DELAY fault's delay.
    delay = 0.0
    #: The command as sent, kept to follow MOVED/ASK (enable_redirection),
    #: with its pool and its C{enable_command_stats} stats.
    request: bytes | None = None
    pool: ConnPool | None = None
    upstreamStats: Any = None
    #: A hook run on the reply before it is stored (may replace it).
    after: Any = None

    def __init__(self, owner: "RedisProxyFilter", stats: _CommandStats | None) -> None:
        self.owner = owner
        self.stats = stats
        self.start = owner.batch.now

    def onReply(self, raw: bytes) -> None:
        if raw[0] == 45 and self.request is not None and self.owner.redirect(self, raw):
            return
        self.complete(raw, True)

    def onFailure(self, raw: bytes) -> None:
        self.complete(raw, False)

    def complete(self, raw: bytes, ok: bool) -> None:
        """
        The reply is known: count it and queue it for its client.
        """
        if self.after is not None:
            replaced = self.after(self, raw)
            self.after = None
            if replaced is not None:
                raw = replaced
        if self.delay:
            owner = self.owner
            owner.reactor.callLater(self.delay, self._delayed, raw, ok)
            return
        self._record(ok)
        self.reply = raw
        owner = self.owner
        if not owner.dirty:
            owner.dirty = True
            owner.batch.dirty.append(owner)

    def _record(self, ok: bool) -> None:
        stats = self.stats
        if stats is not None:
            elapsed = self.owner.batch.now - self.start
            if ok:
                stats.countReplies(1, elapsed)
            else:
                stats.countFailure(elapsed)

    def _delayed(self, raw: bytes, ok: bool) -> None:
        owner = self.owner
        owner.batch.now = owner.reactor.seconds()
        if self.stats is not None:
            self.stats.delay_fault.value += 1
        self.delay = 0.0
        self.complete(raw, ok)
        owner.batch.end()


class _Part:
    """
    The callbacks of one fragment of a split command.
    """

    __slots__ = ("parent", "index")

    def __init__(self, parent: "_Split", index: int) -> None:
        self.parent = parent
        self.index = index

    def onReply(self, raw: bytes) -> None:
        self.parent.child(self.index, raw)

    def onFailure(self, raw: bytes) -> None:
        self.parent.child(self.index, raw)


class _RedirectPart(_Part):
    """
    The callbacks of one fragment of a split command with
    C{enable_redirection}: what it takes to follow a C{MOVED} or C{ASK}
    for the fragment alone (its command as sent, its pool, its
    C{enable_command_stats} stats), as Envoy's pool request of a
    fragment does.
    """

    __slots__ = ("request", "pool", "upstreamStats")

    def __init__(self, parent: "_Split", index: int, request: bytes, pool: ConnPool,
                 upstreamStats: Any) -> None:
        self.parent = parent
        self.index = index
        self.request = request
        self.pool = pool
        self.upstreamStats = upstreamStats

    def onReply(self, raw: bytes) -> None:
        if raw[0] == 45 and self.parent.owner.redirect(self, raw):  # "-"
            return
        self.parent.child(self.index, raw)


class _UpstreamTimed:
    """
    Callbacks that count a shard command in C{cluster.<c>.redis_cluster.
    upstream_commands.*} (C{enable_command_stats}) and pass the reply on.

    As in Envoy's client (C{onRespValue}): a reply counts as C{success}
    unless it is an error reply, which counts as C{failure}; a command
    that gets no reply (connection closed, op_timeout) counts in
    C{total} only, with no latency.
    """

    __slots__ = ("inner", "stats", "start", "owner")

    def __init__(self, inner: Any, stats: Any, owner: "RedisProxyFilter") -> None:
        self.inner = inner
        self.stats = stats
        self.owner = owner
        self.start = owner.batch.now
        stats[0].value += 1

    def _done(self, ok: bool) -> None:
        total, success, failure, latency, rqTime = self.stats
        (success if ok else failure).value += 1
        micros = (self.owner.batch.now - self.start) * 1_000_000
        latency.record(micros)
        rqTime.record(micros)

    def onReply(self, raw: bytes) -> None:
        self._done(raw[0] != 45)  # not "-"
        self.inner.onReply(raw)

    def onFailure(self, raw: bytes) -> None:
        self.inner.onFailure(raw)


class _ShardParts:
    """
    The callbacks of the fragments one shard answers, in order.
    """

    __slots__ = ("parent", "indices", "next")

    def __init__(self, parent: "_Split", indices: list[int]) -> None:
        self.parent = parent
        self.indices = indices
        self.next = 0

    def onReply(self, raw: bytes) -> None:
        # _Split.child, inline: this runs once per key.
        parent = self.parent
        parent.parts[self.indices[self.next]] = raw
        self.next += 1
        parent.remaining -= 1
        if not parent.remaining:
            parent.finish()

    onFailure = onReply


class _ShardAll:
    """
    One shard's keys of an MSET, sent as one MSET: its one reply (C{+OK},
    or an error) is each of those keys' reply.
    """

    __slots__ = ("parent", "indices")

    def __init__(self, parent: "_Split", indices: list[int]) -> None:
        self.parent = parent
        self.indices = indices

    def onReply(self, raw: bytes) -> None:
        parent = self.parent
        parts = parent.parts
        for index in self.indices:
            parts[index] = raw
        parent.remaining -= len(self.indices)
        if not parent.remaining:
            parent.finish()

    onFailure = onReply


class _Split(_Slot):
    """
    A command answered by several upstream commands (MGET, MSET, DEL and
    the other summed ones, fan-out to every shard), combined as Envoy does.
    """

    def __init__(self, owner: "RedisProxyFilter", stats: _CommandStats | None, count: int,
                 combine: Any) -> None:
        self.owner = owner
        self.stats = stats
        self.start = owner.batch.now
        self.parts: list[bytes | None] = [None] * count
        self.remaining = count
        self.combine = combine

    def child(self, index: int, raw: bytes) -> None:
        self.parts[index] = raw
        self.remaining -= 1
        if not self.remaining:
            self.finish()

    def finish(self) -> None:
        """
        Every part is in: combine them into the reply.
        """
        reply, ok = self.combine(self.parts)
        self.complete(reply, ok)


def _combineMget(parts: list[bytes]) -> tuple[bytes, bool]:
    errors = 0
    out = [b"*%d\r\n" % len(parts)]
    for raw in parts:
        kind = raw[0]
        if kind == 36:  # $
            out.append(raw)
        elif kind == 45:  # -
            errors += 1
            out.append(raw)
        else:
            errors += 1
            out.append(UPSTREAM_PROTOCOL_ERROR)
    return b"".join(out), not errors


def _combineOk(parts: list[bytes]) -> tuple[bytes, bool]:
    errors = len(parts) - parts.count(OK)
    if errors:
        return _error(f"finished with {errors} error(s)"), False
    return OK, True


def _combineSum(parts: list[bytes]) -> tuple[bytes, bool]:
    total = 0
    errors = 0
    for raw in parts:
        if raw[0] == 58:  # :
            total += int(raw[1:-2])
        else:
            errors += 1
    if errors:
        return _error(f"finished with {errors} error(s)"), False
    return b":%d\r\n" % total, True


def _combineArrays(parts: list[bytes]) -> tuple[bytes, bool]:
    """
    KEYS from every shard: one array of all the keys (else the first
    reply that is not an array).
    """
    for raw in parts:
        if raw[0] != 42:  # *
            return raw, False
    return cluster_scope.concatenateArrays(parts), True


@implementer(IPushProducer)
class _ReplyBackpressure:
    """
    Stops reading a client's commands while its replies are not being read.
    """

    def __init__(self, proxy: "RedisProxyFilter") -> None:
        self.proxy = proxy
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.proxy.connection.readDisable(True)

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.proxy.connection.readDisable(False)

    def stopProducing(self) -> None:
        pass


class _Transaction:
    """
    A client's MULTI/EXEC state (Envoy's C{Transaction}): every command of
    it runs on one dedicated connection to the server of its first key.
    """

    def __init__(self) -> None:
        self.active = False
        self.key: bytes | None = None
        self.client: UpstreamClient | None = None
        self.closeAfter = False

    def reset(self) -> None:
        """
        End the transaction and close its connection.
        """
        if self.client is not None:
            self.client.close()
        self.detach()

    def detach(self) -> None:
        """
        End the transaction, leaving its connection to whoever holds it.
        """
        self.active = False
        self.key = None
        self.client = None
        self.closeAfter = False


@implementer(IReadFilter)
class RedisProxyFilter:
    """
    The per-connection redis_proxy filter (terminal).
    """

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.batch = shared.batch
        self.reactor = shared.reactor
        self.commandStats = shared.config.enableCommandStats
        self.connection: Any = None
        self.dirty = False
        #: Whether this client's state lets its commands take the plain
        #: path (L{_plainRouter}).
        self._plain = False
        self.db = 0
        # Envoy's connection_allowed_: a configured username alone also
        # requires AUTH (which then cannot succeed without a password).
        self.authenticated = not (shared.config.authPasswords or shared.config.authUsername)
        self.transaction = _Transaction()
        self.subscription: Any = None
        self._queue: deque[_Slot] = deque()
        self._decoder = makeDecoder(inline=True, fixErrors=False)
        self._quitting = False
        self._ended = False
        self._readPaused = False
        self._closed = False
        self._blocking: dict[Any, UpstreamClient] = {}
        #: A finished transaction's connection still awaiting replies.
        self._draining: UpstreamClient | None = None

    # -- read filter -----------------------------------------------------------

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        """
        Count the connection and watch for its end.
        """
        self.connection = connection = callbacks.connection
        connection.addConnectionCallback(self._connectionEvent)
        shared = self.shared
        shared.downstream_cx_total.value += 1
        shared.downstream_cx_active.value += 1

    def onNewConnection(self) -> FilterStatus:
        """
        Replies flow back under Twisted's flow control.
        """
        self.connection.registerProducer(_ReplyBackpressure(self), True)
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode the commands in C{data} and start each of them.
        """
        shared = self.shared
        batch = self.batch
        if data and not self._quitting:
            shared.downstream_cx_rx_bytes_total.value += len(data)
            try:
                requests = self._decoder.feed(data)
            except ProtocolError as e:
                shared.downstream_cx_protocol_error.value += 1
                log.info("redis_proxy connection {id}: downstream protocol error: {error}",
                         id=self.connection.id, error=str(e))
                # Envoy closes without flushing, so its client never sees
                # why; this one is written first (docs/redis_proxy.md).
                self._quitting = True
                self.flushReplies()
                self.connection.write(b"-downstream protocol error\r\n")
                self.connection.close(CloseType.FLUSH_WRITE, "downstream protocol error")
                return FilterStatus.STOP_ITERATION
            if requests:
                batch.now = now = self.reactor.seconds()
                count = len(requests)
                shared.downstream_rq_total.value += count
                shared.downstream_rq_active.value += count
                handle = self._handle
                table = shared.table
                queue = self._queue
                plain = shared.plainRoute
                if self._plain:
                    router = plain.pool.keyRouter()  # type: ignore[union-attr]
                else:
                    router = self._plainRouter()
                if router is not None:
                    lookup, routeClients = router
                clientForKey = plain.pool.clientForKey if plain is not None else None
                simpleStats = shared.simpleStats
                headers = _BULK_HEADERS
                join = b"".join
                it = iter(requests)
                for request in it:
                    if router is not None:
                        # The plain path inline: a single-key command on the
                        # catch-all route (MSET and MGET go straight to their
                        # split).  Anything odd (not an array of bulk
                        # strings, another kind of command, a long argument)
                        # takes the general path, which answers it.
                        entry = None
                        try:
                            name = request[0]
                            stats = simpleStats.get(name)
                            if stats is not None:
                                key = request[1]
                                if len(request) == 2:
                                    encoded = join((_ARRAY2, headers[len(name)], name, _CRLF,
                                                    headers[len(key)], key, _CRLF))
                                elif len(request) == 3:
                                    value = request[2]
                                    encoded = join((_ARRAY3, headers[len(name)], name, _CRLF,
                                                    headers[len(key)], key, _CRLF,
                                                    headers[len(value)], value, _CRLF))
                                else:
                                    encoded = encodeCommand(request)
                                client = routeClients[lookup(key)]  # type: ignore[index]
                            else:
                                entry = table.get(name)
                        except (TypeError, IndexError):
                            stats = None
                        if stats is not None:
                            if client is None or client.closed:
                                # The host has no open connection (or is
                                # unhealthy): the pool's own pick, which
                                # connects; no host is the general path's
                                # error.  Either makes the router stale
                                # (a new connection, a rebuilt table):
                                # ask again.
                                client = clientForKey(key)  # type: ignore[misc]
                                if client is None:
                                    handle(request)
                                router = self._plainRouter()
                                if router is not None:
                                    lookup, routeClients = router
                                if client is None:
                                    continue
                            stats.total.value += 1
                            cell = [None, self, stats, now]
                            queue.append(cell)  # type: ignore[arg-type]
                            client.out.append(encoded)
                            client.pending.append(cell)
                            if not client.queued:
                                client.touch()
                            continue
                        if entry is not None and (entry.kind == _MSET or entry.kind == _MGET):
                            self._plainMulti(request, entry)
                            # (It may have connected or rebuilt the table.)
                            router = plain.pool.keyRouter()  # type: ignore[union-attr]
                            if router is not None:
                                lookup, routeClients = router
                            continue
                    handle(request)
                    if self._quitting:
                        # QUIT: what follows it is dropped.
                        shared.downstream_rq_active.value -= sum(1 for _ in it)
                        break
                    router = self._plainRouter()
                    if router is not None:
                        lookup, routeClients = router
                batch.end()
                if len(self._queue) > MAX_PENDING_PER_CLIENT and not self._readPaused:
                    self._readPaused = True
                    self.connection.readDisable(True)
        if endStream:
            self._ended = True
            if not self._queue:
                self.connection.close(CloseType.FLUSH_WRITE, "")
        return FilterStatus.STOP_ITERATION

    def _connectionEvent(self, event: str) -> None:
        if event not in ("remote_close", "local_close") or self._closed:
            return
        self._closed = True
        shared = self.shared
        shared.downstream_cx_active.value -= 1
        shared.downstream_rq_active.value -= len(self._queue)
        self._queue.clear()
        self.transaction.reset()
        for client in list(self._blocking.values()):
            client.close()
        self._blocking.clear()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.batch.end()

    # -- replies ---------------------------------------------------------------

    def _local(self, reply: bytes, stats: _CommandStats | None = None, ok: bool = True) -> None:
        """
        Queue a reply made here, in order behind those still awaited.
        """
        slot = _Slot(self, stats)
        self._queue.append(slot)
        slot.complete(reply, ok)

    def flushReplies(self) -> None:
        """
        Write every reply at the head of the queue that is known.
        """
        self.dirty = False
        queue = self._queue
        if self._closed or not queue:
            return
        # A slot is a _Slot or a plain path's reply cell (a list).
        slot = queue[0]
        reply = slot[0] if slot.__class__ is list else slot.reply
        if reply is None:
            return
        popleft = queue.popleft
        quit = False
        if self._quitting:
            # A QUIT may be among them: stop after its reply.
            out = []
            while queue:
                slot = queue[0]
                reply = slot[0] if slot.__class__ is list else slot.reply
                if reply is None:
                    break
                popleft()
                out.append(reply)
                if slot.__class__ is not list and slot.quit:
                    quit = True
                    break
            data = b"".join(out)
            count = len(out)
        else:
            popleft()
            out = [reply]
            append = out.append
            while queue:
                slot = popleft()
                reply = slot[0] if slot.__class__ is list else slot.reply
                if reply is None:
                    queue.appendleft(slot)
                    break
                append(reply)
            count = len(out)
            data = out[0] if count == 1 else b"".join(out)
        shared = self.shared
        shared.downstream_rq_active.value -= count
        shared.downstream_cx_tx_bytes_total.value += len(data)
        self.connection.write(data)
        if quit or (self._ended and not queue):
            shared.downstream_rq_active.value -= len(queue)
            queue.clear()
            self.connection.close(CloseType.FLUSH_WRITE, "")
        elif self._readPaused and len(queue) <= MAX_PENDING_PER_CLIENT // 2:
            self._readPaused = False
            self.connection.readDisable(False)
        if not queue and shared.draining:
            self.closeIfIdle()

    def closeIfIdle(self) -> None:
        """
        Close (flushing) if no reply is outstanding: a draining server's
        close, after a reply.
        """
        if not self._queue and not self._closed and not self._quitting:
            self._quitting = True
            self.shared.downstream_cx_drain_close.value += 1
            self.connection.close(CloseType.FLUSH_WRITE, "drain")

    # -- commands ----------------------------------------------------------------

    def _handle(self, request: Any) -> None:
        shared = self.shared
        if type(request) is not list or not request or type(request[0]) is not bytes:
            shared.invalid_request.value += 1
            self._local(INVALID_REQUEST)
            return
        entry = shared.lookup(request[0])
        if entry is None:
            shared.unsupported_command.value += 1
            first = request[1] if len(request) > 1 and type(request[1]) is bytes else b""
            self._local(b"-ERR unknown command '" + request[0]
                        + b"', with args beginning with: " + first + b"\r\n")
            return
        kind = entry.kind
        if (kind == _SIMPLE and self.authenticated and self.subscription is None
                and not shared.hasFaults and not self.transaction.active
                and len(request) > 1 and type(request[1]) is bytes):
            # The common case, without the general checks below: a
            # non-bytes argument makes encodeCommand raise TypeError
            # before anything is queued.
            entry.stats.total.value += 1  # type: ignore[union-attr]
            try:
                if shared.plainRoute is not None and not self.db and self._draining is None:
                    self._plainSimple(request, entry, shared.plainRoute.pool)
                else:
                    self._simple(request, entry, 1)
            except TypeError:
                entry.stats.total.value -= 1  # type: ignore[union-attr]
                shared.invalid_request.value += 1
                self._local(INVALID_REQUEST)
            return
        if kind == _AUTH:
            self._auth(request)
            return
        if kind == _HELLO:
            # Counted as Envoy counts it: total, then success or error.
            entry.stats.total.value += 1  # type: ignore[union-attr]
            self._hello(request, entry.stats)
            return
        if not self.authenticated:
            self._local(AUTH_REQUIRED)
            return
        if self.subscription is not None and kind not in (_SUBSCRIBE, _PING, _QUIT):
            self._local(_error(
                f"ERR Can't execute '{entry.name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE"
                " / PING / QUIT / RESET are allowed in this context"))
            return
        if kind >= _PING and kind <= _QUIT:
            self._localCommand(kind, request)
            return
        for arg in request:
            if type(arg) is not bytes:
                shared.invalid_request.value += 1
                self._local(INVALID_REQUEST)
                return
        if len(request) < 2 and kind not in (_TXN, _SUBSCRIBE) and not (
                entry.name in C.WITHOUT_ARGUMENTS):
            shared.invalid_request.value += 1
            self._local(INVALID_REQUEST)
            return
        if kind == _CLIENT:
            self._client(request)
            return
        stats = entry.stats
        if self.transaction.active and kind != _TXN:
            if kind != _SIMPLE:
                stats.error.value += 1  # type: ignore[union-attr]
                self._local(b"-'" + request[0] + b"' command is not supported within transaction\r\n")
                return
        if shared.hasFaults:
            fault = shared.faultFor(entry.name)
        else:
            fault = None
        stats.total.value += 1  # type: ignore[union-attr]
        if fault is not None and fault.errorFault:
            stats.error_fault.value += 1  # type: ignore[union-attr]
            slot = _Slot(self, stats)
            slot.delay = fault.delay
            self._queue.append(slot)
            slot.complete(FAULT_ERROR, False)
            return
        if kind == _SIMPLE and not self.transaction.active:
            slot = self._simple(request, entry, 1)
        elif kind == _TXN or self.transaction.active:
            slot = self._transactionCommand(request, entry)
        elif kind == _EVAL:
            index = C.KEY_INDEX[entry.name]
            if len(request) <= index:
                stats.error.value += 1  # type: ignore[union-attr]
                self._local(b"-wrong number of arguments for '" + request[0]
                            + b"' command\r\n")
                return
            slot = self._simple(request, entry, index)
        elif kind == _MGET:
            slot = self._split(request, entry, b"GET", 1, _combineMget)
        elif kind == _MSET:
            if (len(request) - 1) % 2:
                stats.error.value += 1  # type: ignore[union-attr]
                self._local(b"-wrong number of arguments for '" + request[0]
                            + b"' command\r\n")
                return
            slot = self._split(request, entry, b"SET", 2, _combineOk)
        elif kind == _SUM:
            slot = self._split(request, entry, request[0], 1, _combineSum)
        elif kind == _SELECT:
            slot = self._select(request, entry)
        elif kind == _BLOCKING:
            slot = self._blockingCommand(request, entry)
        elif kind == _FAN_OUT:
            slot = self._fanOut(request, entry)
        elif kind == _CLUSTER_SCOPE:
            slot = self._clusterScope(request, entry)
        else:
            slot = self._subscribe(request, entry)
        if slot is not None and fault is not None and fault.delay:
            slot.delay = fault.delay

    def _auth(self, request: list[bytes]) -> None:
        """
        Envoy's local AUTH (C{ProxyFilter::onAuth}): 1 argument is a
        password, 2 are a username and a password.
        """
        config = self.shared.config
        if len(request) < 2 or len(request) > 3:
            self.shared.invalid_request.value += 1
            self._local(INVALID_REQUEST)
            return
        passwords = config.authPasswords
        if len(request) == 2:
            # Envoy checks the password list only, username or not.
            if not passwords:
                self._local(b"-ERR Client sent AUTH, but no password is set\r\n")
            elif request[1] in passwords:
                self.authenticated = True
                self._local(OK)
            else:
                self.authenticated = False
                self._local(b"-ERR invalid password\r\n")
            return
        username, password = request[1], request[2]
        if not config.authUsername and not passwords:
            self._local(b"-ERR Client sent AUTH, but no username-password pair is set\r\n")
        elif not config.authUsername and username == b"default" and password in passwords:
            # Redis 6 ACLs: "default" is the user of a password-only setup.
            self.authenticated = True
            self._local(OK)
        elif username == config.authUsername and password in passwords:
            self.authenticated = True
            self._local(OK)
        else:
            self.authenticated = False
            self._local(b"-WRONGPASS invalid username-password pair\r\n")

    def _localCommand(self, kind: int, request: list[bytes]) -> None:
        if kind == _PING:
            if self.subscription is not None:
                self._local(b"*2\r\n$4\r\npong\r\n" + encode(request[1] if len(request) > 1
                                                            else b""))
            else:
                self._local(PONG)
        elif kind == _ECHO:
            if len(request) != 2:
                self.shared.invalid_request.value += 1
                self._local(INVALID_REQUEST)
            else:
                self._local(encode(request[1]))
        elif kind == _TIME:
            now = time.time()
            self._local(encode([b"%d" % int(now), b"%d" % int(now * 1_000_000)]))
        else:
            self._quitting = True
            slot = _Slot(self, None)
            slot.quit = True
            self._queue.append(slot)
            slot.complete(OK, True)

    def _hello(self, request: list[bytes], stats: _CommandStats | None = None) -> None:
        """
        HELLO as Envoy 1.40 answers it: RESP2 is all the proxy speaks, so
        another version gets C{NOPROTO} and clients stay on RESP2;
        C{AUTH} inside HELLO is the proxy's AUTH; the reply is Envoy's but
        for the server's name.
        """
        args = request[1:]
        if args:
            try:
                version = int(args[0])
            except ValueError:
                version = 0
            if version != 2:
                self._local(b"-NOPROTO unsupported protocol version\r\n", stats, False)
                return
            args = args[1:]
        while args:
            option = args[0].lower()
            if option == b"auth":
                if len(args) < 3:
                    self._local(
                        b"-ERR Syntax error: HELLO AUTH requires <username> <password>\r\n",
                        stats, False)
                    return
                before = len(self._queue)
                self._auth([b"AUTH", args[1], args[2]])
                if self._queue[-1].reply != OK:
                    if stats is not None:
                        stats.error.value += 1
                    return
                # The AUTH reply is not HELLO's: drop it.
                while len(self._queue) > before:
                    self._queue.pop()
                args = args[3:]
            elif option == b"setname" and len(args) >= 2:
                args = args[2:]
            else:
                self._local(b"-ERR Syntax error: unknown HELLO option '" + args[0] + b"'\r\n",
                            stats, False)
                return
        if not self.authenticated:
            self._local(AUTH_REQUIRED, stats, False)
            return
        self._local(encode([b"server", b"pyenvoy", b"version", b"6.0.0", b"proto", 2, b"id", 0,
                            b"mode", b"standalone", b"role", b"master", b"modules", []]),
                    stats)

    def _client(self, request: list[bytes]) -> None:
        """
        CLIENT as Envoy 1.40 answers it, here: SETNAME and SETINFO are
        acknowledged (nothing is sent upstream, where connections are
        shared), every other subcommand refused.
        """
        sub = request[1].lower()
        arity = {b"setname": 3, b"setinfo": 4}.get(sub)
        if arity is None:
            self._local(b"-ERR CLIENT subcommand '" + request[1]
                        + b"' is not supported by the proxy\r\n")
        elif len(request) != arity:
            self._local(b"-ERR wrong number of arguments for 'client|" + sub + b"' command\r\n")
        else:
            self._local(OK)

    def _routeKey(self, request: list[bytes], index: int) -> tuple[Any, bytes]:
        """
        The route of the key at C{request[index]}, with the key rewritten
        in C{request} when the route removes its prefix.
        """
        key = request[index]
        route = self.shared.route(key)
        if route is not None and route.removePrefix and route.prefix:
            key = key[len(route.prefix):]
            request[index] = key
        return route, key

    def _mirror(self, route: _RuntimeRoute, entry: _Command, key: bytes, data: bytes) -> None:
        shared = self.shared
        for pool, policy in route.mirrors:
            if policy.excludeReadCommands and not entry.isWrite:
                continue
            if policy.percent < 100 and shared.random.random() * 100 >= policy.percent:
                continue
            client = pool.clientForKey(key, self.db)
            if client is not None:
                client.send(data, IGNORE)

    def _plainRouter(self) -> tuple[Callable[[bytes], int | None],
                                     list[UpstreamClient | None]] | None:
        """
        The catch-all pool's L{ConnPool.keyRouter} when this client's
        commands can take the plain path (a catch-all route only, no
        mirror, redirection, command stats or fault; authenticated,
        database 0, no transaction, subscription or draining transaction
        connection) and the cluster has one; else C{None}.

        What the client's state allows is kept in C{_plain}: it changes
        only by a command on the general path (which calls this again
        after it), or, from plain-unfit to fit, when a transaction's
        connection or a subscription ends (seen at the next command).
        """
        shared = self.shared
        plain = shared.plainRoute
        self._plain = not (
            plain is None or not self.authenticated or self.subscription is not None
            or shared.hasFaults or self.transaction.active or self.db
            or self._draining is not None)
        if not self._plain:
            return None
        return plain.pool.keyRouter()  # type: ignore[union-attr]

    def _plainMulti(self, request: list[bytes], entry: _Command) -> None:
        """
        MSET or MGET on the plain path: L{_handle}'s checks that can fail
        for them here (arguments, arity), then the split.
        """
        if len(request) < 2 or set(map(type, request)) != _ONLY_BYTES:
            self.shared.invalid_request.value += 1
            self._local(INVALID_REQUEST)
            return
        stats = entry.stats
        stats.total.value += 1  # type: ignore[union-attr]
        if entry.kind == _MGET:
            self._split(request, entry, b"GET", 1, _combineMget)
        elif len(request) % 2 == 0:
            stats.error.value += 1  # type: ignore[union-attr]
            self._local(b"-wrong number of arguments for '" + request[0] + b"' command\r\n")
        else:
            self._split(request, entry, b"SET", 2, _combineOk)

    def _plainSimple(self, request: list[bytes], entry: _Command, pool: ConnPool) -> None:
        """
        L{_simple} for the common setup (see L{_plainRouter}), with the
        key's connection found in one step (L{ConnPool.routedClient}).
        """
        client = pool.routedClient(request[1])
        if client is None:
            self._simple(request, entry, 1)
            return
        data = encodeCommand(request)
        cell = [None, self, entry.stats, self.batch.now]
        self._queue.append(cell)  # type: ignore[arg-type]
        client.send(data, cell)

    def _simple(self, request: list[bytes], entry: _Command, keyIndex: int) -> _Slot | None:
        route, key = self._routeKey(request, keyIndex)
        client = route.pool.clientForKey(key, self.db) if route is not None else None
        draining = self._draining
        if (draining is not None and client is not None and client.host is draining.host
                and client.pool is draining.pool and not draining.closed):
            client = draining
        if client is None:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        data = encodeCommand(request)
        slot = _Slot(self, entry.stats)
        self._queue.append(slot)
        upstreamStats = route.pool.commandStats(entry.name) if self.commandStats else None
        if self.shared.config.enableRedirection:
            slot.request = data
            slot.pool = route.pool
            slot.upstreamStats = upstreamStats
        client.send(data, slot if upstreamStats is None else
                    _UpstreamTimed(slot, upstreamStats, self))
        if route.mirrors:
            self._mirror(route, entry, key, data)
        return slot

    def _split(self, request: list[bytes], entry: _Command, command: bytes, step: int,
               combine: Any) -> _Slot:
        count = (len(request) - 1) // step
        slot = _Split(self, entry.stats, count, combine)
        self._queue.append(slot)
        db = self.db
        plain = self.shared.plainRoute
        if plain is not None and not db:
            # One key (and value) per fragment, on the catch-all route.
            # Each shard gets its fragments as one piece, answered to one
            # callback object that takes their replies in order.
            pool = plain.pool
            router = pool.keyRouter()
            # MSET's key/value pairs are sent in one MSET per shard (below),
            # MGET's keys as a GET each.  Each shard's pieces are joined once.
            prefix = b"*2\r\n$%d\r\n%b\r\n" % (len(command), command)
            groups: dict[UpstreamClient, tuple[list[bytes], list[int]]] = {}
            keys = request[1::step]
            values = request[2::step] if step == 2 else keys
            headers = _BULK_HEADERS
            for i in range(count):
                key = keys[i]
                client = None
                if router is not None:
                    index = router[0](key)
                    client = None if index is None else router[1][index]
                if client is None or client.closed:
                    client = pool.clientForKey(key)
                    # (It may have connected or rebuilt the table: see onData.)
                    router = pool.keyRouter()
                    if client is None:
                        slot.child(i, NO_UPSTREAM_HOST)
                        continue
                group = groups.get(client)
                if group is None:
                    group = groups[client] = ([], [])
                pieces = group[0]
                if step == 1:
                    pieces.append(prefix)
                size = len(key)
                pieces += (headers[size] if size < 1024 else b"$%d\r\n" % size, key, _CRLF)
                if step == 2:
                    value = values[i]
                    size = len(value)
                    pieces += (headers[size] if size < 1024 else b"$%d\r\n" % size, value, _CRLF)
                group[1].append(i)
            if step == 2:
                # MSET: each shard's keys as one MSET, with the replies and
                # request counts that a SET per key (Envoy's way) would give.
                for client, (pieces, indices) in groups.items():
                    pieces.insert(0, b"*%d\r\n$4\r\nMSET\r\n" % (2 * len(indices) + 1))
                    client.sendCombined(b"".join(pieces), _ShardAll(slot, indices), len(indices))
                return slot
            for client, (pieces, indices) in groups.items():
                client.sendMany(b"".join(pieces), _ShardParts(slot, indices), len(indices))
            return slot
        # One command per key (and value) from here on, each followed on
        # MOVED/ASK by itself with enable_redirection (plainRoute is off then).
        redirection = self.shared.config.enableRedirection
        for i in range(count):
            index = 1 + i * step
            route, key = self._routeKey(request, index)
            client = route.pool.clientForKey(key, db) if route is not None else None
            if client is None:
                slot.child(i, NO_UPSTREAM_HOST)
                continue
            data = encodeCommand([command] + request[index:index + step])
            pool = route.pool
            upstreamStats = (pool.commandStats(command.decode("ascii", "replace").lower())
                             if self.commandStats else None)
            part = (_RedirectPart(slot, i, data, pool, upstreamStats) if redirection
                    else _Part(slot, i))
            client.send(data, part if upstreamStats is None else
                        _UpstreamTimed(part, upstreamStats, self))
            if route.mirrors:
                self._mirror(route, entry, key, data)
        return slot

    # -- redirection -----------------------------------------------------------------

    def redirect(self, request: Any, raw: bytes) -> bool:
        """
        An error reply to C{request} (a L{_Slot} or L{_RedirectPart} that
        kept its command) with C{enable_redirection}, handled as Envoy's
        client and pool do (C{ClientImpl::onRespValue},
        C{PendingRequest::doRedirection}).

        C{MOVED <slot> <ip:port>} or C{ASK …} (three words): the command
        is sent again to the node it names (C{ASK} after an C{ASKING}
        whose reply is dropped) and its reply goes where the first one
        would have; counted in the cluster's
        C{upstream_internal_redirect_succeeded_total}.  A reply to the
        resent command is handled the same way, so every further
        redirection is followed too (Envoy sets no limit).  A node that
        cannot be used (a host name, past
        C{max_upstream_unknown_connections}) passes the error on,
        counted in C{upstream_internal_redirect_failed_total}.

        C{CLUSTERDOWN …}: the command fails with C{upstream failure}.

        @return: C{True} when handled here; C{False} passes the error on.
        """
        words = [word for word in raw[1:-2].split(b" ") if word]
        if not words:
            return False
        kind = words[0]
        if kind == b"CLUSTERDOWN":
            request.onFailure(UPSTREAM_FAILURE)
            return True
        if len(words) != 3 or (kind != b"MOVED" and kind != b"ASK"):
            return False
        pool = request.pool
        host = pool.hostForAddress(words[2].decode("ascii", "replace"),
                                   self.shared.config.maxUpstreamUnknownConnections)
        if host is None:
            pool.redirectFailed.value += 1
            return False
        client = pool.clientForHost(host, self.db)
        stats = request.upstreamStats
        if kind == b"ASK":
            client.send(b"*1\r\n$6\r\nASKING\r\n", IGNORE if stats is None else
                        _UpstreamTimed(IGNORE, pool.commandStats("asking"), self))
        client.send(request.request, request if stats is None
                    else _UpstreamTimed(request, stats, self))
        pool.redirectSucceeded.value += 1
        return True

    # -- transactions ------------------------------------------------------------------

    def _transactionCommand(self, request: list[bytes], entry: _Command) -> _Slot | None:
        """
        Envoy's TransactionRequest: MULTI is answered here until the first
        keyed command opens the transaction's connection (sending MULTI
        ahead of it); EXEC/DISCARD end it.
        """
        txn = self.transaction
        name = entry.name
        stats = entry.stats
        if name == "watch" and len(request) < 2:
            # Envoy's check, with the command as the client spelt it.
            self._local(b"-wrong number of arguments for '" + request[0] + b"' command\r\n",
                        stats, False)
            return None
        if name == "multi":
            if txn.active:
                self._local(b"-MULTI calls can not be nested\r\n", stats, False)
                return None
            txn.active = True
            if txn.key is None:
                self._local(OK, stats)
                return None
        elif name in ("exec", "discard"):
            if not txn.active:
                self._local(_error(f"{name.upper()} without MULTI"), stats, False)
                return None
            if txn.key is None:
                self._local(EMPTY_ARRAY if name == "exec" else OK, stats)
                txn.reset()
                return None
            txn.closeAfter = True
        if name == "watch" and not txn.active:
            txn.key = request[1]
        if txn.key is None:
            if name == "unwatch":
                self._local(QUEUED if txn.active else OK, stats)
                return None
            txn.key = request[1]
        if txn.client is None or txn.client.closed:
            route, key = self._routeKey([b"", txn.key], 1)
            host = route.pool.hostForKey(key) if route is not None else None
            if host is None:
                stats.error.value += 1  # type: ignore[union-attr]
                self._local(NO_UPSTREAM_HOST)
                return None
            txn.client = route.pool.dedicatedClient(host, self.db,
                                                    onClose=self._transactionClientClosed)
            if txn.active and name != "multi":
                txn.client.send(b"*1\r\n$5\r\nMULTI\r\n", IGNORE)
        client = txn.client
        slot = _Slot(self, stats)
        self._queue.append(slot)
        client.send(encodeCommand(request), slot)
        if txn.closeAfter or (name == "unwatch" and not txn.active):
            # The transaction is over once this is sent.  Its connection
            # closes once no reply is awaited (Envoy closes it when nothing
            # is pending); until then commands for its server go on it too,
            # so a GET pipelined after EXEC runs after the EXEC.
            client.closeWhenIdle = True
            self._draining = client
            txn.detach()
        return slot

    def _transactionClientClosed(self, client: UpstreamClient) -> None:
        if self._draining is client:
            self._draining = None

    # -- pyenvoy additions -------------------------------------------------------------------

    def _select(self, request: list[bytes], entry: _Command) -> None:
        """
        SELECT for this client only: its commands go to connections that
        have selected the same database, never to another client's.
        """
        if len(request) != 2:
            self._local(b"-ERR wrong number of arguments for 'select' command\r\n",
                        entry.stats, False)
            return None
        try:
            db = int(request[1])
        except ValueError:
            db = -1
        if db < 0:
            self._local(b"-ERR value is not an integer or out of range\r\n", entry.stats, False)
            return None
        if self.transaction.client is not None:
            self._local(b"-ERR SELECT is not supported within a transaction\r\n",
                        entry.stats, False)
            return None
        self.db = db
        self._local(OK, entry.stats)
        return None

    def _blockingCommand(self, request: list[bytes], entry: _Command) -> _Slot | None:
        """
        BLPOP and friends: on this client's own connection to the key's
        server, so a blocked command holds up nobody else; no op_timeout
        (the command carries its own).
        """
        route, key = self._routeKey(request, 1)
        host = route.pool.hostForKey(key) if route is not None else None
        if host is None:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        slotKey = (id(route.pool), host, self.db)
        client = self._blocking.get(slotKey)
        if client is None or client.closed:
            client = route.pool.dedicatedClient(host, self.db, opTimeout=False)
            self._blocking[slotKey] = client
        slot = _Slot(self, entry.stats)
        self._queue.append(slot)
        client.send(encodeCommand(request), slot)
        return slot

    def _fanOut(self, request: list[bytes], entry: _Command) -> _Slot | None:
        """
        KEYS, SCAN, DBSIZE, FLUSHDB, FLUSHALL over every shard of the
        route's cluster (the catch-all route, or the route of KEYS's
        pattern / SCAN's MATCH).
        """
        name = entry.name
        route = self.shared.catchAll
        if name == "keys":
            if len(request) != 2:
                self._local(b"-ERR wrong number of arguments for 'keys' command\r\n",
                            entry.stats, False)
                return None
            route = self.shared.route(request[1])
        if name == "scan":
            return self._scan(request, entry)
        if route is None:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        hosts = route.pool.hosts()
        if not hosts:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        # FLUSHDB/FLUSHALL as Envoy: the shards' reply when all agree, else
        # the first error.
        combine = {"keys": _combineArrays, "dbsize": _combineSum}.get(
            name, cluster_scope.combineSame)
        slot = _Split(self, entry.stats, len(hosts), combine)
        self._queue.append(slot)
        data = encodeCommand(request)
        for i, host in enumerate(hosts):
            route.pool.clientForHost(host, self.db).send(data, _Part(slot, i))
        return slot

    def _clusterScope(self, request: list[bytes], entry: _Command) -> _Slot | None:
        """
        Envoy's cluster-scope commands (L{cluster_scope}) over the shards
        of the route of the empty key (the catch-all route), as Envoy.
        """
        route = self.shared.route(b"")
        hosts = route.pool.hosts() if route is not None else []
        if not hosts:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        plan = cluster_scope.plan(entry.name, request, len(hosts))
        if plan.reply is not None:
            self._local(plan.reply, entry.stats, False)
            return None
        if plan.combine is None:
            slot = _Slot(self, entry.stats)
            self._queue.append(slot)
            route.pool.clientForHost(hosts[plan.shard], self.db).send(  # type: ignore[index]
                encodeCommand(plan.upstream), slot)  # type: ignore[arg-type]
            return slot
        split = _Split(self, entry.stats, len(hosts), plan.combine)
        self._queue.append(split)
        data = encodeCommand(request)
        for i, host in enumerate(hosts):
            route.pool.clientForHost(host, self.db).send(data, _Part(split, i))
        return split

    def _scan(self, request: list[bytes], entry: _Command) -> _Slot | None:
        """
        SCAN over every shard in turn: the cursor a client sees is
        C{shardCursor * shards + shardIndex}.
        """
        if len(request) < 2:
            # Envoy's check, which names the command as the client spelt it.
            self._local(b"-ERR wrong number of arguments for '" + request[0] + b"' command\r\n",
                        entry.stats, False)
            return None
        route = self.shared.catchAll
        for i in range(2, len(request) - 1):
            if request[i].lower() == b"match":
                route = self.shared.route(request[i + 1])
        hosts = route.pool.hosts() if route is not None else []
        if not hosts:
            entry.stats.error.value += 1  # type: ignore[union-attr]
            self._local(NO_UPSTREAM_HOST)
            return None
        try:
            cursor = int(request[1])
        except ValueError:
            cursor = -1
        if cursor < 0:
            self._local(b"-ERR invalid cursor\r\n", entry.stats, False)
            return None
        shards = len(hosts)
        index, shardCursor = cursor % shards, cursor // shards
        upstream = list(request)
        upstream[1] = b"%d" % shardCursor
        slot = _Slot(self, entry.stats)
        self._queue.append(slot)
        slot.after = _ScanCursor(index, shards)
        route.pool.clientForHost(hosts[index], self.db).send(encodeCommand(upstream), slot)
        return slot

    def _subscribe(self, request: list[bytes], entry: _Command) -> _Slot | None:
        from pyenvoy.filters.redis_proxy.pubsub import Subscription
        if self.subscription is None:
            if entry.name in ("unsubscribe", "punsubscribe"):
                # Not subscribed to anything: Redis's reply, made here.
                self._local(encode([entry.name.encode(), None, 0]), entry.stats)
                return None
            route = self.shared.catchAll or (self.shared.routes[0] if self.shared.routes
                                             else None)
            if route is None:
                self._local(NO_UPSTREAM_HOST)
                return None
            self.subscription = Subscription(self, route.pool, self.shared)
        self.subscription.command(request, entry)
        return None

    def subscriptionEnded(self) -> None:
        """
        The client left pub/sub mode (no channel or pattern left).
        """
        self.subscription = None

    def pushReply(self, raw: bytes) -> None:
        """
        Write a pub/sub message (or confirmation) to the client, behind any
        reply still awaited.
        """
        self._local(raw)


class _ScanCursor:
    """
    Rewrites a shard's SCAN reply: its cursor becomes the client-visible one.
    """

    __slots__ = ("index", "shards")

    def __init__(self, index: int, shards: int) -> None:
        self.index = index
        self.shards = shards

    def __call__(self, slot: _Slot, raw: bytes) -> bytes | None:
        if not raw.startswith(b"*2\r\n$"):
            return None
        eol = raw.index(b"\r\n", 4)
        length = int(raw[5:eol])
        cursor = int(raw[eol + 2:eol + 2 + length])
        rest = raw[eol + 4 + length:]
        if cursor == 0:
            nextCursor = self.index + 1 if self.index + 1 < self.shards else 0
        else:
            nextCursor = cursor * self.shards + self.index
        text = b"%d" % nextCursor
        return b"*2\r\n$%d\r\n%s\r\n" % (len(text), text) + rest
