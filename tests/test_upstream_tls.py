"""
Upstream TLS: a cluster's C{UpstreamTlsContext}, checked at config time and
used for real handshakes to a TLS echo server behind a plaintext listener.
"""

from __future__ import annotations

import os
import time
from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import lib as opensslLib
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.server import Server
from tests.support.certs import issue, makeCA
from tests.support.net import connect, listenerPort, startServer, stat, tcpProxyConfig

UPSTREAM_TLS = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext")
TS = "static_resources.clusters[0].transport_socket"
ROOT = "cluster.backend.ssl"


class Pki:
    """
    A CA with an upstream server certificate and a client certificate for
    the proxy, a foreign CA, all written to C{directory}.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ca = makeCA()
        self.server = issue(self.ca, "backend.test", dns=("backend.test",),
                            ips=("127.0.0.1",))
        self.client = issue(self.ca, "proxy", uris=("spiffe://test/proxy",), server=False)
        self.other = makeCA("another CA")
        self.caFile = os.path.join(directory, "ca.pem")
        self.otherCaFile = os.path.join(directory, "other.pem")
        with open(self.caFile, "wb") as f:
            f.write(self.ca.certPem)
        with open(self.otherCaFile, "wb") as f:
            f.write(self.other.certPem)
        self.clientCert, self.clientKey = self.client.write(directory, "client")


class TlsEcho(Protocol):
    """
    Echoes everything (no half-close, which TLS servers here do not need).
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@implementer(IOpenSSLContextFactory)
class _ServerContextFactory:
    """
    A pyOpenSSL server context for C{listenSSL} that records the SNI and
    the client certificate subject it saw; C{groups} (OpenSSL names,
    C{:}-separated) limits its key-exchange groups.
    """

    def __init__(self, pki: Pki, requireClientCert: bool = False,
                 groups: bytes | None = None) -> None:
        self.serverNames: list[bytes | None] = []
        self.peerSubjects: list[str] = []
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        if groups is not None:
            assert opensslLib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
        ctx.use_certificate(crypto.X509.from_cryptography(pki.server.certificate))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(pki.server.key))
        ctx.set_tlsext_servername_callback(
            lambda conn: self.serverNames.append(conn.get_servername()))
        if requireClientCert:
            ctx.load_verify_locations(pki.caFile)

            def verify(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
                if ok and depth == 0:
                    self.peerSubjects.append(
                        cert.to_cryptography().subject.rfc4514_string())
                return bool(ok)

            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        self._ctx = ctx

    def getContext(self) -> SSL.Context:
        """
        The context Twisted asks for.
        """
        return self._ctx


def upstreamTls(pki: Pki, validation: dict | None = None, client: bool = False,
                **extra: Any) -> dict:
    """
    A cluster C{transport_socket} with an UpstreamTlsContext.
    """
    common: dict[str, Any] = {}
    if validation is not None:
        common["validation_context"] = validation
    if client:
        common["tls_certificates"] = [{"certificate_chain": {"filename": pki.clientCert},
                                       "private_key": {"filename": pki.clientKey}}]
    typed: dict[str, Any] = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    typed.update(extra)
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed}


class UpstreamTlsTests(TestCase):
    """
    A plaintext tcp_proxy listener in front of a TLS echo server.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)

    def tlsEcho(self, requireClientCert: bool = False,
                groups: bytes | None = None) -> tuple[int, _ServerContextFactory]:
        """
        Start a TLS echo server; return its port and context factory.
        """
        contextFactory = _ServerContextFactory(self.pki, requireClientCert, groups)
        port = reactor.listenSSL(0, Factory.forProtocol(TlsEcho), contextFactory,
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, contextFactory

    def start(self, upstreamPort: int, transportSocket: dict) -> Server:
        """
        The proxy, its cluster using C{transportSocket}.
        """
        return startServer(self, tcpProxyConfig(
            [upstreamPort], cluster={"transport_socket": transportSocket}))

    async def roundTrip(self, server: Server, payload: bytes = b"hello tls") -> Any:
        """
        Send C{payload} through the proxy; return the client once the
        echo came back or the connection closed.
        """
        client = await connect(listenerPort(server))
        client.transport.write(payload)
        deadline = time.monotonic() + 5
        while (client.data() != payload and not client.closed.called
               and time.monotonic() < deadline):
            await deferLater(reactor, 0.01, lambda: None)
        return client

    async def closed(self, client: Any) -> None:
        """
        Wait for C{client} to be closed by the proxy.
        """
        await client.closed

    async def test_echoWithSniAndVerification(self) -> None:
        """
        Bytes are encrypted to the upstream, the SNI reaches it, its
        certificate is verified against trusted_ca and a SAN matcher, and
        the handshake is counted.
        """
        port, ctx = self.tlsEcho()
        server = self.start(port, upstreamTls(self.pki, {
            "trusted_ca": {"filename": self.pki.caFile},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": "backend.test"}}]},
            sni="backend.test"))
        client = await self.roundTrip(server)
        self.assertEqual(client.data(), b"hello tls")
        self.assertEqual(ctx.serverNames, [b"backend.test"])
        self.assertEqual(stat(server, f"{ROOT}.handshake"), 1)
        self.assertEqual(stat(server, f"{ROOT}.versions.TLSv1.2"), 1)
        client.transport.loseConnection()
        await client.closed

    async def test_wrongCaRefused(self) -> None:
        """
        An upstream certificate from an untrusted CA fails the connect:
        the client is closed and C{fail_verify_error} counted.
        """
        port, ctx = self.tlsEcho()
        server = self.start(port, upstreamTls(
            self.pki, {"trusted_ca": {"filename": self.pki.otherCaFile}}))
        client = await self.roundTrip(server)
        await client.closed
        self.assertEqual(client.data(), b"")
        self.assertEqual(stat(server, f"{ROOT}.fail_verify_error"), 1)
        self.assertEqual(stat(server, f"{ROOT}.handshake"), 0)
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 1)

    async def test_wrongSanRefused(self) -> None:
        """
        An upstream certificate whose SANs match no matcher counts
        C{fail_verify_san} and the client is closed.
        """
        port, ctx = self.tlsEcho()
        server = self.start(port, upstreamTls(self.pki, {
            "trusted_ca": {"filename": self.pki.caFile},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": "other.test"}}]}))
        client = await self.roundTrip(server)
        await client.closed
        self.assertEqual(client.data(), b"")
        self.assertEqual(stat(server, f"{ROOT}.fail_verify_san"), 1)
        self.assertEqual(stat(server, f"{ROOT}.connection_error"), 0)

    async def test_defaultGroups(self) -> None:
        """
        The cluster offers Envoy's default groups only: an upstream that
        takes P-384 alone fails the connect (C{connection_error}); one with
        OpenSSL 4's defaults (X25519MLKEM768 first) negotiates X25519 over
        TLS 1.3.
        """
        port, ctx = self.tlsEcho(groups=b"P-384")
        server = self.start(port, upstreamTls(self.pki))
        client = await self.roundTrip(server)
        refused = client.closed.called
        client.transport.loseConnection()
        await client.closed
        self.assertTrue(refused)
        self.assertEqual(client.data(), b"")
        self.assertEqual(stat(server, f"{ROOT}.connection_error"), 1)
        self.assertEqual(stat(server, f"{ROOT}.handshake"), 0)
        port, ctx = self.tlsEcho()
        server = self.start(port, upstreamTls(self.pki, common_tls_context={
            "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"}}))
        client = await self.roundTrip(server)
        self.assertEqual(client.data(), b"hello tls")
        self.assertEqual(stat(server, f"{ROOT}.versions.TLSv1.3"), 1)
        self.assertEqual(stat(server, f"{ROOT}.curves.X25519"), 1)
        client.transport.loseConnection()
        await client.closed

    async def test_mutualTls(self) -> None:
        """
        An upstream that requires a client certificate gets the cluster's;
        without one the handshake fails as a C{connection_error}.
        """
        port, ctx = self.tlsEcho(requireClientCert=True)
        server = self.start(port, upstreamTls(
            self.pki, {"trusted_ca": {"filename": self.pki.caFile}}, client=True))
        client = await self.roundTrip(server)
        self.assertEqual(client.data(), b"hello tls")
        self.assertEqual(ctx.peerSubjects, [self.pki.client.subject])
        client.transport.loseConnection()
        await client.closed
        server = self.start(port, upstreamTls(
            self.pki, {"trusted_ca": {"filename": self.pki.caFile}}))
        client = await self.roundTrip(server)
        await client.closed
        self.assertEqual(client.data(), b"")
        self.assertEqual(stat(server, f"{ROOT}.connection_error"), 1)


class UpstreamTlsConfigTests(TestCase):
    """
    Config errors in an UpstreamTlsContext name their YAML path.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)

    def errors(self, transportSocket: dict) -> list[tuple[str, str]]:
        """
        The C{(path, message)} problems of a cluster using C{transportSocket}.
        """
        with self.assertRaises(ConfigErrors) as caught:
            parse(tcpProxyConfig([1], cluster={"transport_socket": transportSocket}))
        return [(e.path, e.message) for e in caught.exception.errors]

    def test_validConfig(self) -> None:
        """
        A full context parses onto the cluster config.
        """
        raw = tcpProxyConfig([1], cluster={"transport_socket": upstreamTls(
            self.pki, {"trusted_ca": {"filename": self.pki.caFile}}, client=True,
            sni="backend.test")})
        raw["static_resources"]["clusters"][0]["transport_socket"]["typed_config"][
            "common_tls_context"]["alpn_protocols"] = ["h2"]
        tls = parse(raw).clusters["backend"].tls
        self.assertEqual(tls.sni, "backend.test")
        self.assertEqual(tls.alpnProtocols, (b"h2",))
        self.assertEqual(len(tls.trustedCa), 1)
        self.assertNotIn("PRIVATE", repr(tls))

    def test_missingCaFile(self) -> None:
        """
        A trusted_ca file that cannot be read is an error at its path.
        """
        found = self.errors(upstreamTls(self.pki, {"trusted_ca": {"filename": "/nope.pem"}}))
        self.assertEqual(len(found), 1, found)
        self.assertEqual(found[0][0], f"{TS}.typed_config.common_tls_context."
                                      "validation_context.trusted_ca.filename")

    def test_sanWithoutCa(self) -> None:
        """
        SAN matchers without trusted_ca are refused, as Envoy does.
        """
        found = self.errors(upstreamTls(self.pki, {"match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "x"}}]}))
        self.assertEqual(len(found), 1, found)
        self.assertIn("without trusted CA", found[0][1])

    def test_wrongType(self) -> None:
        """
        A DownstreamTlsContext on a cluster is refused at its C{@type}.
        """
        socket = upstreamTls(self.pki)
        socket["typed_config"]["@type"] = UPSTREAM_TLS.replace("Upstream", "Downstream")
        found = self.errors(socket)
        self.assertEqual(found[0][0], f"{TS}.typed_config.@type")
        self.assertIn("UpstreamTlsContext", found[0][1])

    def test_longSni(self) -> None:
        """
        An SNI over 255 bytes is refused.
        """
        found = self.errors(upstreamTls(self.pki, sni="a" * 256))
        self.assertEqual(found[0][0], f"{TS}.typed_config.sni")

    def test_unsupportedField(self) -> None:
        """
        Fields pyenvoy lacks are named as not supported.
        """
        found = self.errors(upstreamTls(self.pki, auto_host_sni=True))
        self.assertEqual(found[0][0], f"{TS}.typed_config.auto_host_sni")
        self.assertIn("not supported", found[0][1])
