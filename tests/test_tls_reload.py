"""
Certificate and key files that change on disk are reloaded for new
connections; a bad new set keeps the old one and counts
C{key_rotation_failed}.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Any

from cryptography import x509
from twisted.internet import reactor, threads
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from pyenvoy.config.reader import Problems, Section
from pyenvoy.network import tls
from pyenvoy.network.tls import (
    ClientTls,
    ServerTls,
    parseDownstreamTlsContext,
    parseUpstreamTlsContext,
)
from pyenvoy.server import Server
from pyenvoy.stats import Store, sanitizeName
from tests.support.certs import Issued, issue, makeCA
from tests.support.net import Echo, listen, listenerPort, startServer, stat
from tests.test_tls import tlsConfig

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def replace(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path} atomically (a temporary file, then
    C{os.replace}), as certificate managers do.
    """
    temporary = path + ".new"
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)


class Files:
    """
    A CA and a server certificate written to a temporary directory, with
    helpers to rotate them.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ca = makeCA()
        self.caFile = os.path.join(directory, "ca.pem")
        replace(self.caFile, self.ca.certPem)
        self.first = self.issue("first.test")
        self.cert, self.key = self.first.write(directory, "server")

    def issue(self, name: str) -> Issued:
        """
        A server certificate for C{localhost} from the test CA.
        """
        return issue(self.ca, name, dns=("localhost",), ips=("127.0.0.1",))

    def rotate(self, issued: Issued) -> None:
        """
        Atomically replace the key, then the certificate, with C{issued}'s.
        """
        replace(self.key, issued.keyPem)
        replace(self.cert, issued.certPem)

    def context(self) -> dict:
        """
        A DownstreamTlsContext loading the files by name.
        """
        return {"@type": TLS_TYPE, "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": self.cert},
            "private_key": {"filename": self.key}}]}}

    def clientContext(self) -> ssl.SSLContext:
        """
        A Python C{ssl} client context trusting the test CA.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.caFile)
        return ctx


def _serial(tlsSocket: ssl.SSLSocket) -> int:
    der = tlsSocket.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _echo(tlsSocket: ssl.SSLSocket, payload: bytes) -> bytes:
    tlsSocket.sendall(payload)
    data = b""
    while len(data) < len(payload):
        chunk = tlsSocket.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def openTls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """
    Blocking: connect and finish the handshake; the caller closes it.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def servedSerial(port: int, ctx: ssl.SSLContext) -> int:
    """
    Blocking: the serial of the certificate a new connection is served,
    after checking the connection echoes.
    """
    with openTls(port, ctx) as tlsSocket:
        if _echo(tlsSocket, b"ping") != b"ping":
            raise AssertionError("no echo")
        return _serial(tlsSocket)


class ReloadTests(TestCase):
    """
    A TLS listener on loopback whose certificate files are replaced under it.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.files = Files(directory)
        # Check often so the tests wait for milliseconds, not seconds.
        self.patch(tls, "RELOAD_CHECK_INTERVAL", 0.05)
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def start(self) -> tuple[Server, int, str]:
        """
        Start the proxy; return it, its port and its
        C{listener.<addr>.server_ssl_socket_factory} root.
        """
        server = startServer(self, tlsConfig(listen(self, Echo), self.files.context()))
        root = sanitizeName(server.context.listeners[0].listener.statRoot
                            + ".server_ssl_socket_factory")
        return server, listenerPort(server), root

    async def serialWhen(self, port: int, wanted: int) -> int:
        """
        Connect again and again (up to 5s) until the served serial is
        C{wanted}; return the last one seen.
        """
        ctx = self.files.clientContext()
        deadline = time.monotonic() + 5
        while True:
            serial = await threads.deferToThread(servedSerial, port, ctx)
            if serial == wanted or time.monotonic() > deadline:
                return serial
            await deferLater(reactor, 0.06, lambda: None)

    async def test_newCertificateForNewConnections(self) -> None:
        """
        After the files are replaced, new connections get the new
        certificate while a connection opened before keeps working.
        """
        server, port, root = self.start()
        ctx = self.files.clientContext()
        self.assertEqual(await threads.deferToThread(servedSerial, port, ctx),
                         self.files.first.certificate.serial_number)
        old = await threads.deferToThread(openTls, port, ctx)
        self.addCleanup(old.close)
        self.assertEqual(await threads.deferToThread(_echo, old, b"before"), b"before")

        second = self.files.issue("second.test")
        self.files.rotate(second)
        self.assertEqual(await self.serialWhen(port, second.certificate.serial_number),
                         second.certificate.serial_number)
        self.assertEqual(stat(server, f"{root}.ssl_context_update_by_sds"), 1)
        self.assertEqual(stat(server, f"{root}.key_rotation_failed"), 0)

        self.assertEqual(await threads.deferToThread(_echo, old, b"after"), b"after")
        self.assertEqual(_serial(old), self.files.first.certificate.serial_number)

    async def test_badKeyKeepsOldCertificate(self) -> None:
        """
        A key that does not parse keeps the last good certificate for new
        connections, counts C{key_rotation_failed} once and logs the file;
        fixing the files is then picked up.
        """
        server, port, root = self.start()
        firstSerial = self.files.first.certificate.serial_number
        self.assertEqual(await self.serialWhen(port, firstSerial), firstSerial)
        replace(self.files.key, b"-----BEGIN PRIVATE KEY-----\nbroken\n"
                                b"-----END PRIVATE KEY-----\n")

        deadline = time.monotonic() + 5
        ctx = self.files.clientContext()
        while (stat(server, f"{root}.key_rotation_failed") < 1
               and time.monotonic() < deadline):
            self.assertEqual(await threads.deferToThread(servedSerial, port, ctx),
                             firstSerial)
            await deferLater(reactor, 0.06, lambda: None)
        self.assertEqual(stat(server, f"{root}.key_rotation_failed"), 1)
        # More connections, later checks: still the old certificate, one failure.
        for _ in range(3):
            await deferLater(reactor, 0.06, lambda: None)
            self.assertEqual(await threads.deferToThread(servedSerial, port, ctx),
                             firstSerial)
        self.assertEqual(stat(server, f"{root}.key_rotation_failed"), 1)
        self.assertEqual(stat(server, f"{root}.ssl_context_update_by_sds"), 0)
        errors = [e for e in self.events if e.get("files") is not None
                  and "refused" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertIn(self.files.key, errors[0]["files"])
        self.assertIn("private_key", errors[0]["reason"])

        third = self.files.issue("third.test")
        self.files.rotate(third)
        self.assertEqual(await self.serialWhen(port, third.certificate.serial_number),
                         third.certificate.serial_number)
        self.assertEqual(stat(server, f"{root}.ssl_context_update_by_sds"), 1)


class ChangeDetectionTests(TestCase):
    """
    The change check, driven by a L{Clock}, without sockets.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.files = Files(directory)
        self.clock = Clock()
        self.store = Store()

    def serverTls(self) -> ServerTls:
        """
        A L{ServerTls} for the files, on the test clock.
        """
        raw = self.files.context()
        del raw["@type"]
        problems = Problems()
        config = parseDownstreamTlsContext(Section(raw, "ctx", problems))
        self.assertEqual(problems.errors, [])
        assert config is not None
        self.assertEqual(config.watchedFiles, (self.files.cert, self.files.key))
        return ServerTls(config, self.store.scope("ssl"), reactor=self.clock,
                         factoryScope=self.store.scope("factory"))

    def test_checkedOncePerInterval(self) -> None:
        """
        A change is seen only once the interval has passed on the clock;
        sessions started before keep the context they had.
        """
        server = self.serverTls()
        before = server.newSession(None)
        self.files.rotate(self.files.issue("second.test"))
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL / 2)
        self.assertIs(server.newSession(None).context, before.context)
        self.assertEqual(self.store.counter("factory.ssl_context_update_by_sds").value, 0)
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL / 2)
        after = server.newSession(None)
        self.assertIsNot(after.context, before.context)
        self.assertEqual(after.localFacts["localSubject"], "CN=second.test,O=pyenvoy tests")
        self.assertEqual(before.localFacts["localSubject"], "CN=first.test,O=pyenvoy tests")
        self.assertEqual(self.store.counter("factory.ssl_context_update_by_sds").value, 1)

    def test_unchangedFilesAreNotReloaded(self) -> None:
        """
        Without a change nothing is read again, however much time passes.
        """
        server = self.serverTls()
        context = server.context
        for _ in range(3):
            self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
            self.assertFalse(server.maybeReload())
        self.assertIs(server.context, context)

    def test_mismatchedKeyKept(self) -> None:
        """
        A new key that does not belong to the certificate is refused (the
        whole set is checked), counted once, and the old context kept.
        """
        server = self.serverTls()
        context = server.context
        replace(self.files.key, self.files.issue("other.test").keyPem)
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
        self.assertFalse(server.maybeReload())
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
        self.assertFalse(server.maybeReload())
        self.assertIs(server.context, context)
        self.assertEqual(self.store.counter("factory.key_rotation_failed").value, 1)

    def test_missingFileKept(self) -> None:
        """
        A file that disappears is a failed rotation, not a crash.
        """
        server = self.serverTls()
        os.remove(self.files.cert)
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
        self.assertFalse(server.maybeReload())
        self.assertEqual(self.store.counter("factory.key_rotation_failed").value, 1)

    def test_inlineContextNotWatched(self) -> None:
        """
        A context with only inline DataSources has nothing to watch.
        """
        raw = {"common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": self.files.first.certPem.decode()},
            "private_key": {"inline_string": self.files.first.keyPem.decode()}}]}}
        config = parseDownstreamTlsContext(Section(raw, "ctx", Problems()))
        assert config is not None
        self.assertEqual(config.watchedFiles, ())
        server = ServerTls(config, self.store.scope("ssl"), reactor=self.clock,
                           factoryScope=self.store.scope("factory"))
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
        self.assertFalse(server.maybeReload())
        self.assertIsNone(self.store.get("factory.key_rotation_failed"))

    def test_upstreamClientCertificateReloaded(self) -> None:
        """
        A cluster's client certificate and CA files are reloaded the same way.
        """
        raw = {"common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": self.files.cert},
                                  "private_key": {"filename": self.files.key}}],
            "validation_context": {"trusted_ca": {"filename": self.files.caFile}}}}
        config = parseUpstreamTlsContext(Section(raw, "cluster", Problems()))
        assert config is not None
        self.assertEqual(config.watchedFiles,
                         (self.files.cert, self.files.key, self.files.caFile))
        client = ClientTls(config, self.store.scope("ssl"), reactor=self.clock,
                           factoryScope=self.store.scope("factory"))
        self.files.rotate(self.files.issue("second.test"))
        self.clock.advance(tls.RELOAD_CHECK_INTERVAL)
        session = client.newSession(None)
        self.assertEqual(session.localFacts["localSubject"], "CN=second.test,O=pyenvoy tests")
        self.assertEqual(self.store.counter("factory.ssl_context_update_by_sds").value, 1)
