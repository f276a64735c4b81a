"""
Pub/sub through redis_proxy (pyenvoy only; Envoy refuses SUBSCRIBE).

A subscribing client gets its own connection to each shard it needs: a
channel lives on the shard its name hashes to (where PUBLISH, routed like
any single-key command, sends it), and a pattern is subscribed on every
shard, since matching channels can live anywhere.  Redis confirms each
(un)subscription with the connection's own count; the client sees its
count over all shards, as if it were talking to one Redis.
"""

from __future__ import annotations

from typing import Any

from pyenvoy.filters.redis_proxy.conn_pool import ConnPool, UpstreamClient, encodeCommand
from pyenvoy.filters.redis_proxy.resp import PyDecoder, encode

_MESSAGE = b"*3\r\n$7\r\nmessage\r\n"
_PMESSAGE = b"*4\r\n$8\r\npmessage\r\n"


class Subscription:
    """
    One client's subscriptions, over dedicated shard connections.
    """

    def __init__(self, owner: Any, pool: ConnPool, shared: Any) -> None:
        self.owner = owner
        self.pool = pool
        self.db = owner.db
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self._clients: dict[Any, UpstreamClient] = {}
        # Confirmations still to swallow, per (kind, name): a pattern
        # command goes to every shard but the client expects one reply.
        self._swallow: dict[tuple[bytes, bytes], int] = {}
        self._closed = False

    def _client(self, host: Any) -> UpstreamClient:
        client = self._clients.get(host)
        if client is None or client.closed:
            client = self.pool.dedicatedClient(
                host, self.db, opTimeout=False,
                onPush=lambda raw: self._push(raw), onClose=self._lost)
            self._clients[host] = client
        return client

    def command(self, request: list[bytes], entry: Any) -> None:
        """
        Start a (P)SUBSCRIBE or (P)UNSUBSCRIBE.
        """
        name = entry.name
        verb = request[0].upper()
        args = request[1:]
        if entry.stats is not None:
            entry.stats.success.value += 1
        if name == "subscribe":
            for channel in args:
                host = self.pool.hostForKey(channel)
                if host is None:
                    self.owner.pushReply(b"-no upstream host\r\n")
                    continue
                self._client(host).sendUntracked(encodeCommand([verb, channel]))
        elif name == "unsubscribe":
            targets = args or sorted(self.channels)
            if not targets:
                self._confirm(b"unsubscribe", None)
            for channel in targets:
                host = self.pool.hostForKey(channel)
                client = self._clients.get(host)
                if client is None or client.closed:
                    self._confirm(b"unsubscribe", channel)
                else:
                    client.sendUntracked(encodeCommand([verb, channel]))
        else:
            hosts = self.pool.hosts()
            targets = args or (sorted(self.patterns) if name == "punsubscribe" else [])
            if not targets:
                self._confirm(name.encode(), None)
            for pattern in targets:
                if not hosts:
                    self.owner.pushReply(b"-no upstream host\r\n")
                    continue
                kind = name.encode()
                self._swallow[(kind, pattern)] = (
                    self._swallow.get((kind, pattern), 0) + len(hosts) - 1)
                data = encodeCommand([verb, pattern])
                for host in hosts:
                    self._client(host).sendUntracked(data)

    def _push(self, raw: bytes) -> None:
        """
        Something a shard sent: a message goes straight to the client, a
        confirmation gets the client's overall count.
        """
        if raw.startswith(_MESSAGE) or raw.startswith(_PMESSAGE):
            self.owner.pushReply(raw)
            return
        values = PyDecoder().feed(raw)
        value = values[0] if values else None
        if not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], bytes):
            self.owner.pushReply(raw)
            return
        kind = value[0].lower()
        name = value[1]
        key = (kind, name)
        if self._swallow.get(key):
            self._swallow[key] -= 1
            if not self._swallow[key]:
                del self._swallow[key]
            return
        self._confirm(kind, name)

    def _confirm(self, kind: bytes, name: bytes | None) -> None:
        if name is not None:
            if kind == b"subscribe":
                self.channels.add(name)
            elif kind == b"unsubscribe":
                self.channels.discard(name)
            elif kind == b"psubscribe":
                self.patterns.add(name)
            elif kind == b"punsubscribe":
                self.patterns.discard(name)
        count = len(self.channels) + len(self.patterns)
        self.owner.pushReply(encode([kind, name, count]))
        if not count and not self._swallow and kind in (b"unsubscribe", b"punsubscribe"):
            self.close()
            self.owner.subscriptionEnded()

    def _lost(self, client: UpstreamClient) -> None:
        """
        A shard connection died: its subscriptions are gone, so the client
        is disconnected (it resubscribes when it reconnects) rather than
        silently missing messages.
        """
        if not self._closed:
            self.close()
            self.owner.connection.close()

    def close(self) -> None:
        """
        Drop every shard connection.
        """
        self._closed = True
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
