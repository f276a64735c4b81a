"""
redis_proxy's upstream side: one pipelined connection per Redis host,
shared by every client of a configured filter, plus dedicated connections
for what cannot share one (transactions, blocking commands, pub/sub).
"""

from __future__ import annotations

from collections import deque
from ipaddress import ip_address
from itertools import repeat
from typing import Any, Callable

from twisted.logger import Logger

from pyenvoy.filters.redis_proxy.resp import ProtocolError, ReplyFramer
from pyenvoy.upstream.hashing import murmurHash2
from pyenvoy.upstream.key_lookup import hashedPart
from pyenvoy.upstream.host import Host

log = Logger()

UPSTREAM_FAILURE = b"-upstream failure\r\n"

#: How many times per op_timeout a busy connection checks for progress.
OP_TIMEOUT_CHECKS = 4


def _fillCell(cell: list[Any], raw: bytes, now: float, ok: bool) -> None:
    """
    A reply cell's reply (C{ok}) or error, counted on its own (see
    L{UpstreamClient}; L{UpstreamClient.upstreamData} counts runs of
    replies inline instead).
    """
    cell[0] = raw
    if ok:
        cell[2].countReplies(1, now - cell[3])
    else:
        cell[2].countFailure(now - cell[3])
    owner = cell[1]
    if not owner.dirty:
        owner.dirty = True
        owner.batch.dirty.append(owner)


def encodeCommand(args: list[bytes]) -> bytes:
    """
    A command as a RESP array of bulk strings.

    @raise TypeError: if an argument is not C{bytes} (the request held
        something other than bulk strings).
    """
    count = len(args)
    if count == 3:
        a, b, c = args
        return b"*3\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(a), a, len(b), b, len(c), c)
    if count == 2:
        a, b = args
        return b"*2\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(a), a, len(b), b)
    return b"*%d\r\n" % count + b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


class _Ignore:
    """
    Callbacks for a reply nobody waits for (a mirrored command, the
    MULTI Envoy sends ahead of a transaction's first command).
    """

    def onReply(self, raw: bytes) -> None:
        pass

    def onFailure(self, raw: bytes) -> None:
        pass


IGNORE = _Ignore()


class _Setup:
    """
    Callbacks for the AUTH or SELECT a new connection sends first.  A
    failed SELECT must not leave the connection in database 0, so it
    fails the connection, handing Redis's error to every waiting request.
    """

    def __init__(self, client: "UpstreamClient", what: str, fatal: bool) -> None:
        self.client = client
        self.what = what
        self.fatal = fatal

    def onReply(self, raw: bytes) -> None:
        if raw[:1] == b"-":
            log.warn("redis upstream {host} refused {what}: {error}",
                     host=self.client.host.addressString, what=self.what,
                     error=raw[1:-2].decode("utf-8", "replace"))
            if self.fatal:
                self.client.fail(raw)

    def onFailure(self, raw: bytes) -> None:
        pass


class Batch:
    """
    Writes deferred to the end of the reactor iteration: upstream clients
    with commands to send and downstream filters with replies to send.

    Every ready socket of one epoll round is read before anything is
    written, so each shard gets one write per round however many clients
    sent it commands, and each client one write however many shards
    answered it: the syscalls, not the Python, were most of the cost.
    One per configured filter, shared by its connections.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: pyenvoy's reactor runs the flush right after the poll's events
        #: (L{pyenvoy.reactor.PyenvoyReactor.callAfterPoll}); another
        #: reactor at the next iteration.
        self._callSoon: Callable[[Callable[[], None]], object] = getattr(
            reactor, "callAfterPoll", None) or (lambda f: reactor.callLater(0, f))
        self.touched: list[UpstreamClient] = []
        self.dirty: list[Any] = []
        #: The reactor's time at the start of the current callback.
        self.now = 0.0
        self._scheduled = False

    def end(self) -> None:
        """
        A callback is done queueing: write once the reactor has served
        every socket that is ready now.
        """
        if not self._scheduled and (self.touched or self.dirty):
            self._scheduled = True
            self._callSoon(self.flush)

    def flush(self) -> None:
        """
        Write what was queued: commands first, then replies.
        """
        self._scheduled = False
        while self.touched or self.dirty:
            touched, self.touched = self.touched, []
            for client in touched:
                client.flushQueued()
            dirty, self.dirty = self.dirty, []
            for owner in dirty:
                owner.flushReplies()


class UpstreamClient:
    """
    One connection to one Redis host: commands are written in order and
    each reply goes to the callbacks queued with its command
    (C{onReply(raw)} / C{onFailure(errorReply)}).

    The callbacks may instead be a I{reply cell}, the list C{[reply,
    owner, stats, start]} that redis_proxy's plain path makes per command
    (a list costs a quarter of an object with an C{__init__}): the reply
    (or error) is stored in it, counted on C{stats} (C{countReplies(n,
    elapsed)} for a run of replies with one start and stats,
    C{countFailure(elapsed)}), and C{owner} (with C{dirty} and C{batch})
    is queued to write its replies at the end of the batch.

    Replies are framed, not decoded (L{ReplyFramer}), so they go back to
    clients byte for byte.
    """

    def __init__(self, pool: "ConnPool", host: Host, db: int = 0,
                 opTimeout: float | None = None,
                 onPush: Callable[[bytes], None] | None = None,
                 onClose: Callable[["UpstreamClient"], None] | None = None) -> None:
        self.pool = pool
        self.host = host
        self.db = db
        self.closed = False
        #: Close once no reply is awaited (a finished transaction's connection).
        self.closeWhenIdle = False
        self._batch = pool.batch
        self._reactor = pool.batch.reactor
        self._opTimeout = opTimeout
        self._onPush = onPush
        self._onClose = onClose
        #: Encoded commands waiting for the end of the batch, and the
        #: callbacks of every command written and not yet answered (the
        #: filter's plain path appends to both itself, then calls L{touch}).
        self.out: list[bytes] = []
        self.pending: deque[Any] = deque()
        #: Commands queued beyond one per C{out} piece (L{sendMany}).
        self._extraCommands = 0
        #: Whether it waits in the batch to be written (L{touch}).
        self.queued = False
        self._framer = ReplyFramer()
        self._connected = False
        self._responses = 0
        self._timer: Any = None
        self._flushTimer: Any = None
        self._seen = 0
        self._stale = 0
        username, password = pool.credentialsFor(host)
        if password:
            auth = [b"AUTH", username, password] if username else [b"AUTH", password]
            self._enqueue(encodeCommand(auth), _Setup(self, "AUTH", fatal=False))
        if db:
            self._enqueue(encodeCommand([b"SELECT", b"%d" % db]),
                          _Setup(self, f"SELECT {db}", fatal=True))
        self._conn = pool.clusterManager.connectHost(pool.cluster, host, self)

    # -- sending ---------------------------------------------------------------

    def _enqueue(self, data: bytes, callbacks: Any) -> None:
        self.out.append(data)
        self.pending.append(callbacks)

    def send(self, data: bytes, callbacks: Any) -> None:
        """
        Queue one encoded command; it is written when the current reactor
        callback ends (L{Batch.end}), together with the others queued.
        """
        if self.closed:
            if callbacks.__class__ is list:
                _fillCell(callbacks, UPSTREAM_FAILURE, self._batch.now, False)
            else:
                callbacks.onFailure(UPSTREAM_FAILURE)
            return
        self.out.append(data)
        self.pending.append(callbacks)
        if not self.queued:
            self.queued = True
            self._batch.touched.append(self)

    def touch(self) -> None:
        """
        Commands were appended to L{out} and L{pending} directly: write
        them at the end of the batch.
        """
        if not self.queued:
            self.queued = True
            self._batch.touched.append(self)

    def sendMany(self, data: bytes, callbacks: Any, count: int) -> None:
        """
        Queue C{count} encoded commands at once, all answered to the same
        C{callbacks} (which get C{count} replies, in order).
        """
        if self.closed:
            for _ in range(count):
                callbacks.onFailure(UPSTREAM_FAILURE)
            return
        self.out.append(data)
        self.pending.extend(repeat(callbacks, count))
        self._extraCommands += count - 1
        self.touch()

    def sendCombined(self, data: bytes, callbacks: Any, commands: int) -> None:
        """
        Queue one encoded command that stands for C{commands} of Envoy's
        (one shard's part of an MSET, where Envoy sends a SET per key): one
        reply, counted in C{upstream_rq_total} as C{commands} requests.
        """
        if not self.closed:
            self._extraCommands += commands - 1
        self.send(data, callbacks)

    def sendUntracked(self, data: bytes) -> None:
        """
        Queue a command whose replies arrive as pushes (pub/sub), not as
        one reply per command.
        """
        if self.closed:
            return
        self.out.append(data)
        self.touch()

    def flushQueued(self) -> None:
        """
        End of a batch: write now, or wait for more if the filter batches
        (C{max_buffer_size_before_flush}).
        """
        self.queued = False
        limit = self.pool.maxBufferBeforeFlush
        if limit and sum(map(len, self.out)) < limit:
            if self._flushTimer is None:
                self._flushTimer = self._reactor.callLater(
                    self.pool.bufferFlushTimeout, self._flushTimedOut)
            return
        self.flush()

    def _flushTimedOut(self) -> None:
        self._flushTimer = None
        self.flush()
        self._batch.end()

    def flush(self) -> None:
        """
        Write every queued command (once connected).
        """
        if not self._connected or not self.out:
            return
        if self._flushTimer is not None:
            if self._flushTimer.active():
                self._flushTimer.cancel()
            self._flushTimer = None
        out = self.out
        self.out = []
        self.pool.stats.upstream_rq_total.value += len(out) + self._extraCommands
        self._extraCommands = 0
        self._conn.write(out[0] if len(out) == 1 else b"".join(out))
        if self._opTimeout and self._timer is None:
            self._seen = self._responses
            self._stale = 0
            self._timer = self._reactor.callLater(self._opTimeout / OP_TIMEOUT_CHECKS,
                                                  self._checkProgress)

    def _checkProgress(self) -> None:
        """
        Envoy's op_timeout, sampled: fail the connection when no reply came
        for a whole op_timeout while commands wait.
        """
        self._timer = None
        if self.closed or not self.pending:
            return
        if self._responses != self._seen:
            self._seen = self._responses
            self._stale = 0
        else:
            self._stale += 1
            if self._stale >= OP_TIMEOUT_CHECKS:
                self.pool.upstreamRqTimeout.value += 1
                log.info("redis upstream {host}: no reply within op_timeout",
                         host=self.host.addressString)
                self.fail(UPSTREAM_FAILURE)
                self._batch.end()
                return
        self._timer = self._reactor.callLater(self._opTimeout / OP_TIMEOUT_CHECKS,  # type: ignore[operator]
                                              self._checkProgress)

    # -- UpstreamConnection handler ------------------------------------------------

    def upstreamConnected(self, upstream: Any) -> None:
        """
        Write what was queued while connecting.
        """
        self._connected = True
        self.flush()

    def upstreamConnectFailed(self, reason: str, timedOut: bool) -> None:
        """
        The connection could not be made: every waiting command fails.
        """
        log.info("redis upstream {host} connect failed: {reason}",
                 host=self.host.addressString, reason=reason)
        self.fail(UPSTREAM_FAILURE)
        self._batch.end()

    def upstreamData(self, data: bytes) -> None:
        """
        Hand each whole reply to the callbacks of its command.
        """
        try:
            replies = self._framer.feed(data)
        except ProtocolError as e:
            log.warn("redis upstream {host} sent bad RESP: {error}",
                     host=self.host.addressString, error=str(e))
            self.pool.upstreamCxProtocolError.value += 1
            self.host.stats.rq_error += 1
            self.fail(UPSTREAM_FAILURE)
            self._batch.end()
            return
        batch = self._batch
        batch.now = self._reactor.seconds()
        pending = self.pending
        if len(replies) <= len(pending):
            popleft = pending.popleft
            dirty = batch.dirty
            now = batch.now
            # Reply cells are counted in runs: those of one command sent in
            # one read share their stats and latency.
            runStats: Any = None
            runStart = 0.0
            runCount = 0
            for raw in replies:
                entry = popleft()
                if entry.__class__ is list:
                    entry[0] = raw
                    owner = entry[1]
                    if not owner.dirty:
                        owner.dirty = True
                        dirty.append(owner)
                    if entry[2] is runStats and entry[3] == runStart:
                        runCount += 1
                    else:
                        if runCount:
                            runStats.countReplies(runCount, now - runStart)
                        runStats = entry[2]
                        runStart = entry[3]
                        runCount = 1
                else:
                    entry.onReply(raw)
            if runCount:
                runStats.countReplies(runCount, now - runStart)
            self._responses += len(replies)
            if self.closeWhenIdle and not pending and not self.closed:
                self.close()
            batch.end()
            return
        for raw in replies:
            if pending:
                entry = pending.popleft()
                if entry.__class__ is list:
                    _fillCell(entry, raw, batch.now, True)
                else:
                    entry.onReply(raw)
            elif self._onPush is not None:
                self._onPush(raw)
            else:
                log.warn("redis upstream {host} sent a reply nobody asked for",
                         host=self.host.addressString)
                self.fail(UPSTREAM_FAILURE)
                break
        self._responses += len(replies)
        if self.closeWhenIdle and not pending and not self.closed:
            self.close()
        batch.end()

    def upstreamEndStream(self) -> None:
        """
        Redis closed its side: treat it as closed.
        """
        self.close()

    def upstreamClosed(self, localClose: bool) -> None:
        """
        The connection is gone: every waiting command fails.
        """
        self.fail(UPSTREAM_FAILURE)
        self._batch.end()

    # -- ending ----------------------------------------------------------------------

    def fail(self, errorReply: bytes) -> None:
        """
        Close, failing every waiting command with C{errorReply}.
        """
        wasClosed = self.closed
        self.closed = True
        for timer in (self._timer, self._flushTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._flushTimer = None
        pending, self.pending = self.pending, deque()
        self.out = []
        if not wasClosed:
            self.pool.forget(self)
            self._conn.close(flush=False)
            if self._onClose is not None:
                self._onClose(self)
        now = self._batch.now
        for callbacks in pending:
            if callbacks.__class__ is list:
                _fillCell(callbacks, errorReply, now, False)
            else:
                callbacks.onFailure(errorReply)

    def close(self) -> None:
        """
        Close (commands still waiting fail).
        """
        self.fail(UPSTREAM_FAILURE)


class ConnPool:
    """
    The connections of one configured filter to one cluster: one shared
    client per (host, database), found by the key's hash the way Envoy's
    redis_proxy finds it (MurmurHash2-64 of the key or its C{{hashtag}},
    looked up in the cluster's RING_HASH or MAGLEV table).
    """

    def __init__(self, clusterManager: Any, clusterName: str, batch: Batch,
                 config: Any, store: Any) -> None:
        self.clusterManager = clusterManager
        self.cluster = clusterManager.get(clusterName)
        self.batch = batch
        self.opTimeout = config.opTimeout
        self.maxBufferBeforeFlush = config.maxBufferSizeBeforeFlush
        self.bufferFlushTimeout = config.bufferFlushTimeout
        self.hashtagging = config.enableHashtagging
        self.stats = self.cluster.stats
        clusterScope = store.scope(f"cluster.{self.cluster.config.statName}")
        self.redisClusterScope = clusterScope.scope("redis_cluster")
        for name in ("upstream_cx_drained", "max_upstream_unknown_connections_reached",
                     "connection_rate_limited", "upstream_resp3_hello_failure"):
            self.redisClusterScope.counter(name)
        # Envoy creates it with the pool; it records with enable_command_stats.
        self.redisClusterScope.scope("upstream_commands").histogram("upstream_rq_time")
        self.upstreamRqTimeout = clusterScope.counter("upstream_rq_timeout")
        #: Envoy's cluster stats for MOVED/ASK followed or passed back as
        #: they came, and for a shard that sent bad RESP.
        self.redirectSucceeded = clusterScope.counter(
            "upstream_internal_redirect_succeeded_total")
        self.redirectFailed = clusterScope.counter("upstream_internal_redirect_failed_total")
        self.upstreamCxProtocolError = clusterScope.counter("upstream_cx_protocol_error")
        self._commandStats: dict[str, tuple[Any, ...]] = {}
        self._clients: dict[Any, UpstreamClient] = {}
        self._unknownHosts: dict[str, Host] = {}
        self._lbContext = _HashContext()
        #: The table's key lookup and hosts (L{keyRouter}), and the table
        #: build (C{lb.builds}) they are of.
        self._lookup: tuple[Callable[[bytes], int | None], list[Host]] | None = None
        self._lookupBuilds: int | None = None
        #: L{keyRouter}'s answer, until a table build or a connection
        #: made or dropped makes it stale (then C{None}).
        self._router: tuple[Callable[[bytes], int | None],
                            list[UpstreamClient | None]] | None = None
        options = getattr(self.cluster.config, "redisProtocolOptions", None)
        self._credentials = options.credentialsFor if options is not None else None
        clusterManager.onHostsRemoved(clusterName, self._hostsRemoved)

    def commandStats(self, command: str) -> tuple[Any, ...]:
        """
        C{redis_cluster.upstream_commands.<cmd>.{total,success,failure,latency}}
        and C{upstream_commands.upstream_rq_time} (C{enable_command_stats}).
        """
        stats = self._commandStats.get(command)
        if stats is None:
            scope = self.redisClusterScope.scope("upstream_commands")
            cmd = scope.scope(command)
            stats = (cmd.counter("total"), cmd.counter("success"), cmd.counter("failure"),
                     cmd.histogram("latency"), scope.histogram("upstream_rq_time"))
            self._commandStats[command] = stats
        return stats

    def credentialsFor(self, host: Host) -> tuple[bytes, bytes]:
        """
        The upstream AUTH (username, password) for C{host}, from the
        cluster's C{RedisProtocolOptions}; empty when there is none.
        """
        if self._credentials is None:
            return b"", b""
        username, password = self._credentials(host)
        return (username or "").encode("utf-8"), (password or "").encode("utf-8")

    def hostForKey(self, key: bytes) -> Host | None:
        """
        The host of the cluster that owns C{key} (its C{{hashtag}} with
        hashtagging), as Envoy picks it: the key's MurmurHash2 to the
        cluster's load balancer.
        """
        context = self._lbContext
        context.hashKey = murmurHash2(hashedPart(key) if self.hashtagging else key)
        return self.cluster.lb.chooseHost(context)  # type: ignore[no-any-return]

    def keyRouter(self) -> tuple[Callable[[bytes], int | None],
                                 list[UpstreamClient | None]] | None:
        """
        For a caller that routes many keys in one go: a function from a
        key (bytes) to an index (C{None} for an empty table) and the list
        of database-0 clients it indexes, or C{None} when the cluster's
        policy is neither RING_HASH nor MAGLEV, or in panic mode (where
        Envoy counts every pick).

        The function is the table's own key lookup (C speed, see
        L{pyenvoy.upstream.key_lookup}), so a key lands where
        L{clientForKey} puts it.  An entry is C{None} where the host has no
        connection yet or is unhealthy, and a client may have closed since:
        in both cases use L{clientForKey}, which connects (and makes the
        answer stale: ask again).
        """
        lb = self.cluster.lb
        builds = getattr(lb, "builds", None)
        if builds is None or lb.panic:
            return None
        router = self._router
        if router is not None and builds == self._lookupBuilds:
            return router
        if builds != self._lookupBuilds or self._lookup is None:
            self._lookup = lb.keyLookup(self.hashtagging)
            self._lookupBuilds = builds
        lookup, hosts = self._lookup
        clients = self._clients
        router = self._router = (
            lookup, [clients.get(host) if host.healthy else None for host in hosts])
        return router

    def routedClient(self, key: bytes) -> UpstreamClient | None:
        """
        The open database-0 client of C{key}'s host from L{keyRouter}, or
        C{None} (then use L{clientForKey}).
        """
        router = self.keyRouter()
        if router is None:
            return None
        lookup, clients = router
        index = lookup(key)
        client = None if index is None else clients[index]
        return None if client is None or client.closed else client

    def clientForKey(self, key: bytes, db: int = 0) -> UpstreamClient | None:
        """
        The shared client of the host that owns C{key}, or C{None} when
        the cluster has no host.
        """
        host = self.hostForKey(key)
        if host is None:
            return None
        client = self._clients.get(host if not db else (host, db))
        if client is None:
            client = self.clientForHost(host, db)
        return client

    def clientForHost(self, host: Host, db: int = 0) -> UpstreamClient:
        """
        The shared client of C{host} (made on first use).
        """
        slot = host if not db else (host, db)
        client = self._clients.get(slot)
        if client is None:
            client = UpstreamClient(self, host, db, opTimeout=self.opTimeout)
            self._clients[slot] = client
            self._router = None
        return client

    def dedicatedClient(self, host: Host, db: int = 0, opTimeout: bool = True,
                        onPush: Callable[[bytes], None] | None = None,
                        onClose: Callable[[UpstreamClient], None] | None = None
                        ) -> UpstreamClient:
        """
        A new connection to C{host} for one client's exclusive use.
        """
        return UpstreamClient(self, host, db,
                              opTimeout=self.opTimeout if opTimeout else None,
                              onPush=onPush, onClose=onClose)

    def hosts(self) -> list[Host]:
        """
        The cluster's hosts in a stable order (for fan-out and SCAN cursors).
        """
        return sorted(self.cluster.hosts, key=lambda h: h.address)

    def hostForAddress(self, address: str, limit: int) -> Host | None:
        """
        The host a MOVED/ASK redirection names: a cluster member, or one
        of at most C{limit} other addresses (Envoy's
        C{max_upstream_unknown_connections}); C{None} when it cannot be
        followed.

        Only an IP address and port is followed: Envoy resolves a host
        name only with C{dns_cache_config}, which pyenvoy lacks, and
        otherwise passes the redirection back to the client.
        """
        for host in self.cluster.hosts:
            if host.addressString == address:
                return host
        host = self._unknownHosts.get(address)
        if host is not None:
            return host
        if len(self._unknownHosts) >= limit:
            self.redisClusterScope.counter("max_upstream_unknown_connections_reached").value += 1
            return None
        ip, _, port = address.rpartition(":")
        ip = ip.strip("[]")
        try:
            ip_address(ip)
            number = int(port)
        except ValueError:
            return None
        if not port.isdigit() or number > 65535:
            return None
        host = Host((ip, number))
        self._unknownHosts[address] = host
        return host

    def forget(self, client: UpstreamClient) -> None:
        """
        Drop a closed client so the next command connects afresh.
        """
        slot = client.host if not client.db else (client.host, client.db)
        if self._clients.get(slot) is client:
            del self._clients[slot]
            self._router = None

    def _hostsRemoved(self, cluster: Any, removed: list[Host]) -> None:
        for host in removed:
            for slot, client in list(self._clients.items()):
                if client.host is host:
                    self.redisClusterScope.counter("upstream_cx_drained").value += 1
                    client.close()
        self.batch.end()

    def close(self) -> None:
        """
        Close every shared connection (the filter's chain is going away).
        """
        for client in list(self._clients.values()):
            client.close()


class _HashContext:
    """
    A reusable load-balancer context carrying one key's hash.
    """

    hashKey: int | None = None


__all__ = ["Batch", "ConnPool", "IGNORE", "UPSTREAM_FAILURE", "UpstreamClient",
           "encodeCommand"]
