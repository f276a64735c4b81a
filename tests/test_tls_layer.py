"""
The downstream TLS layer over memory BIOs (L{ServerTlsLayer}) as bytes in,
bytes out against a pyOpenSSL client, and what it changes for a real
connection: close_notify is a half-close, counters per handshake outcome,
and a listener with one chain skips the chain lookup.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pyenvoy.config.reader import Problems, Section
from pyenvoy.network.chain_match import FilterChainMatch
from pyenvoy.network.tls import ServerTls, ServerTlsLayer, TlsSession, parseDownstreamTlsContext
from pyenvoy.stats import Store, sanitizeName
from pyenvoy.stream_info import StreamInfo
from tests.support.net import Echo, listen, listenerPort, startServer, stat
from tests.test_tls import Pki, tlsConfig, tlsContext


def serverTls(pki: Pki, store: Store) -> ServerTls:
    """
    A L{ServerTls} for the test server certificate (no client certificates).
    """
    raw = tlsContext(pki)
    del raw["@type"]
    problems = Problems()
    config = parseDownstreamTlsContext(Section(raw, "ctx", problems))
    assert config is not None and not problems.errors, problems.errors
    return ServerTls(config, store.scope("ssl"))


def clientConnection(version: int = SSL.TLS1_3_VERSION) -> SSL.Connection:
    """
    A pyOpenSSL client over memory BIOs that does not verify the server.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    return client


def drain(connection: SSL.Connection) -> bytes:
    """
    Everything in C{connection}'s outgoing memory BIO.
    """
    out = b""
    while True:
        try:
            out += connection.bio_read(65536)
        except SSL.WantReadError:
            return out


def clientRead(client: SSL.Connection) -> bytes:
    """
    All plaintext the client can read from what it was fed.
    """
    data = b""
    while True:
        try:
            data += client.recv(65536)
        except SSL.WantReadError:
            return data


class LayerTests(TestCase):
    """
    L{ServerTlsLayer} driven by hand: no sockets, no reactor.
    """

    direct: Any = ServerTlsLayer.direct

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)
        self.store = Store()
        self.server = serverTls(self.pki, self.store)

    def layer(self) -> ServerTlsLayer:
        """
        A new layer for one connection, on the path this class tests.
        """
        layer = ServerTlsLayer(TlsSession(self.server, StreamInfo(0.0, 0.0)))
        layer.direct = self.direct
        return layer

    def handshake(self, layer: ServerTlsLayer, client: SSL.Connection) -> list[bool]:
        """
        Run the handshake to its end; return the C{handshakeDone} flags
        the layer reported on the way.
        """
        flags = []
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                if layer.established:
                    break
            toServer = drain(client)
            if toServer:
                done, plaintext = layer.receive(toServer)
                flags.append(done)
                self.assertEqual(plaintext, b"")
            toClient = layer.output()
            if toClient:
                client.bio_write(toClient)
        return flags

    def test_handshakeReportedOnce(self) -> None:
        """
        The handshake completes in memory, C{handshakeDone} is reported
        exactly once, and the session sees the negotiated version.
        """
        layer, client = self.layer(), clientConnection()
        flags = self.handshake(layer, client)
        self.assertEqual(flags.count(True), 1)
        self.assertTrue(layer.established)
        self.assertEqual(layer.ssl.get_protocol_version_name(), "TLSv1.3")

    def test_recordsDeliveredTogether(self) -> None:
        """
        Several records fed at once come out as one plaintext, in order.
        """
        layer, client = self.layer(), clientConnection()
        self.handshake(layer, client)
        parts = [bytes([65 + i]) * 10000 for i in range(5)]
        for part in parts:
            client.sendall(part)
        done, plaintext = layer.receive(drain(client))
        self.assertFalse(done)
        self.assertEqual(plaintext, b"".join(parts))

    def test_moreThanScratchBuffer(self) -> None:
        """
        Plaintext and ciphertext larger than the scratch buffer come out
        whole in both directions.
        """
        layer, client = self.layer(), clientConnection()
        self.handshake(layer, client)
        payload = os.urandom(700_000)
        client.sendall(payload)
        self.assertEqual(layer.receive(drain(client))[1], payload)
        client.bio_write(layer.write(payload[::-1]))
        self.assertEqual(clientRead(client), payload[::-1])

    def test_writesHeldUntilHandshake(self) -> None:
        """
        Plaintext written mid-handshake is held, then sent by
        C{flushPending} once established.
        """
        layer, client = self.layer(), clientConnection()
        self.assertEqual(layer.write(b"early "), b"")
        self.assertEqual(layer.write(b"greeting"), b"")
        self.handshake(layer, client)
        client.bio_write(layer.flushPending())
        self.assertEqual(clientRead(client), b"early greeting")
        self.assertEqual(layer.pending, [])

    def test_closeNotifyBothWays(self) -> None:
        """
        The client's close_notify sets C{peerClosed} (with the data before
        it delivered); ours is sent once and ends the client's stream.
        """
        layer, client = self.layer(), clientConnection()
        self.handshake(layer, client)
        client.sendall(b"last words")
        client.shutdown()
        done, plaintext = layer.receive(drain(client))
        self.assertEqual((done, plaintext, layer.peerClosed), (False, b"last words", True))
        client.bio_write(layer.write(b"reply"))
        client.bio_write(layer.closeNotify())
        self.assertEqual(layer.closeNotify(), b"")
        self.assertEqual(client.recv(100), b"reply")
        self.assertRaises(SSL.ZeroReturnError, client.recv, 100)
        self.assertEqual(layer.write(b"after close"), b"")

    def test_garbageRaises(self) -> None:
        """
        Bytes that are not a TLS record after the handshake raise
        C{SSL.Error}, with an alert for the peer waiting in C{output}.
        """
        layer, client = self.layer(), clientConnection()
        self.handshake(layer, client)
        self.assertRaises(SSL.Error, layer.receive, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        self.assertTrue(layer.output())

    def test_handshakeFailureRaises(self) -> None:
        """
        A ClientHello the server refuses (TLS 1.1 only) raises C{SSL.Error}.
        """
        layer = self.layer()
        client = clientConnection(SSL.TLS1_1_VERSION)
        try:
            client.do_handshake()
        except SSL.Error:
            pass
        hello = drain(client)
        if not hello:
            self.skipTest("this OpenSSL will not even offer TLS 1.1")
        self.assertRaises(SSL.Error, layer.receive, hello)


class PublicApiLayerTests(LayerTests):
    """
    The same, on the public pyOpenSSL API path (no direct bindings).
    """

    direct = None


class NegotiatedCountersTests(TestCase):
    """
    The per-outcome counters of L{TlsSession.handshakeCompleted}.
    """

    def test_countedPerHandshake(self) -> None:
        """
        Two handshakes with the same outcome count handshake, version,
        cipher and curve twice through one cached set of counters.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        store = Store()
        server = serverTls(Pki(directory), store)
        for _ in range(2):
            info = StreamInfo(0.0, 0.0)
            layer = ServerTlsLayer(TlsSession(server, info))
            LayerTests.handshake(self, layer, clientConnection())  # type: ignore[arg-type]
            layer.session.handshakeCompleted()
            self.assertEqual(info.tls["version"], "TLSv1.3")
        self.assertEqual(len(server.negotiatedCounters), 1)
        for name in ("handshake", "versions.TLSv1.3", "ciphers.TLS_AES_256_GCM_SHA384",
                     "no_certificate"):
            self.assertEqual(store.counter(sanitizeName("ssl." + name)).value, 2, name)

    def test_defaultGroupIsX25519(self) -> None:
        """
        A client offering OpenSSL 4's defaults (X25519MLKEM768 first) gets
        X25519, Envoy's first default group, counted as C{curves.X25519}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        store = Store()
        server = serverTls(Pki(directory), store)
        layer = ServerTlsLayer(TlsSession(server, StreamInfo(0.0, 0.0)))
        LayerTests.handshake(self, layer, clientConnection())  # type: ignore[arg-type]
        layer.session.handshakeCompleted()
        self.assertEqual(store.counter(sanitizeName("ssl.curves.X25519")).value, 1)
        self.assertEqual([name for name in server.stats if name.startswith("curves.")],
                         ["curves.X25519"])


def pyOpenSslExchange(port: int, payload: bytes) -> tuple[bytes, str]:
    """
    Blocking: handshake with pyOpenSSL over a socket, send C{payload},
    send close_notify at once, then read to the end; return what came back
    and how the stream ended (C{"close_notify"} or the error).  Every
    wait is bounded (5 s of silence ends it).
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.setblocking(False)
        conn = SSL.Connection(ctx, raw)
        conn.set_connect_state()

        def retry(call: Any, *args: Any) -> Any:
            for _ in range(10_000):
                try:
                    return call(*args)
                except SSL.WantReadError:
                    if not select.select([raw], [], [], 5)[0]:
                        raise TimeoutError("no answer in 5 s")
                except SSL.WantWriteError:
                    select.select([], [raw], [], 5)
            raise TimeoutError("too many retries")

        retry(conn.do_handshake)
        sent = 0
        while sent < len(payload):
            sent += retry(conn.send, payload[sent:sent + 16384])
        retry(conn.shutdown)
        data = b""
        for _ in range(10_000):
            try:
                chunk = retry(conn.recv, 65536)
            except SSL.ZeroReturnError:
                return data, "close_notify"
            except (SSL.Error, TimeoutError) as e:
                return data, repr(e)
            data += chunk
        return data, "too many reads"


class ConnectionTests(TestCase):
    """
    A real TLS listener in front of an echo server.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)

    async def test_closeNotifyIsHalfClose(self) -> None:
        """
        A client's close_notify ends only its direction, as Envoy's
        half-close: the echo still comes back, then our close_notify.
        """
        server = startServer(self, tlsConfig(listen(self, Echo), tlsContext(self.pki)))
        port = listenerPort(server)
        payload = os.urandom(100_000)
        data, ending = await threads.deferToThread(pyOpenSslExchange, port, payload)
        self.assertEqual(ending, "close_notify")
        self.assertEqual(data, payload)

    async def test_finMidHandshakeCloses(self) -> None:
        """
        A client that half-closes before finishing its handshake gets the
        connection closed, and neither a handshake nor an error is counted.
        """
        server = startServer(self, tlsConfig(listen(self, Echo), tlsContext(self.pki)))
        port = listenerPort(server)
        listener = server.context.listeners[0].listener

        def halfClose() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"\x16\x03\x01\x00\x10")  # a ClientHello's record header only
                raw.shutdown(socket.SHUT_WR)
                return raw.recv(100)

        self.assertEqual(await threads.deferToThread(halfClose), b"")
        for _ in range(500):
            if not listener.connections:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(listener.connections, set())
        root = sanitizeName(listener.statRoot + ".ssl")
        self.assertEqual(stat(server, root + ".connection_error"), 0)
        self.assertEqual(stat(server, root + ".handshake"), 0)

    def test_singleChainNeedsNoLookup(self) -> None:
        """
        A listener whose only chain matches everything hands it out
        without a lookup and never counts a miss.
        """
        server = startServer(self, tlsConfig(listen(self, Echo), tlsContext(self.pki)))
        listener = server.context.listeners[0].listener
        self.assertIs(listener._onlyChain, listener.chains[0])
        self.assertEqual(listener.config.filterChains[0].match or FilterChainMatch(),
                         FilterChainMatch())
        self.assertIs(listener.selectChain(None, None), listener.chains[0])
        self.assertEqual(listener.noFilterChainMatch.value, 0)
