"""
Downstream TLS termination: config checks, and real handshakes on loopback
through a TLS listener with tcp_proxy in front of an echo server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import reactor, threads
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.network.tls import StringMatch
from pyenvoy.server import Server
from pyenvoy.stats import sanitizeName
from tests.support.certs import issue, makeCA
from tests.support.net import Echo, listen, listenerPort, startServer, stat, tcpProxyConfig

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
CHAIN = "static_resources.listeners[0].filter_chains[0]"
TS = f"{CHAIN}.transport_socket.typed_config"


class Pki:
    """
    One CA with a server and two client certificates, plus a foreign CA,
    written to a temporary directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ca = makeCA()
        self.server = issue(self.ca, "proxy.test", dns=("localhost",), ips=("127.0.0.1",))
        self.client = issue(self.ca, "client", uris=("spiffe://test/client",),
                            dns=("client.test",), server=False)
        self.other = makeCA("another CA")
        self.stranger = issue(self.other, "stranger", uris=("spiffe://test/client",),
                              server=False)
        self.caFile = self._write("ca.pem", self.ca.certPem)
        self.serverCert, self.serverKey = self.server.write(directory, "server")
        self.clientCert, self.clientKey = self.client.write(directory, "client")
        self.strangerCert, self.strangerKey = self.stranger.write(directory, "stranger")

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def tlsContext(pki: Pki, validation: dict | None = None, **extra: Any) -> dict:
    """
    A DownstreamTlsContext with the server certificate and C{validation}.
    """
    common: dict[str, Any] = {"tls_certificates": [{
        "certificate_chain": {"filename": pki.serverCert},
        "private_key": {"filename": pki.serverKey}}]}
    if validation is not None:
        common["validation_context"] = validation
    common.update(extra.pop("common", {}))
    context = {"@type": TLS_TYPE, "common_tls_context": common}
    context.update(extra)
    return context


def tlsConfig(echoPort: int, context: dict, tcpProxy: dict | None = None) -> dict:
    """
    A tcp_proxy bootstrap whose only chain terminates TLS with C{context}.
    """
    raw = tcpProxyConfig([echoPort], tcpProxy=tcpProxy)
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": context}
    return raw


def clientContext(pki: Pki, cert: str | None = None, key: str | None = None,
                  maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """
    A Python C{ssl} client context trusting the test CA.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.caFile)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def exchange(port: int, ctx: ssl.SSLContext, payload: bytes = b"hello") -> bytes:
    """
    Blocking: handshake, send C{payload}, read it back (raises on failure).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            data = b""
            while len(data) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data


class SayByeAndClose(Protocol):
    """
    An upstream that greets and closes at once.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"bye")
        self.transport.loseConnection()


def readAll(port: int, ctx: ssl.SSLContext, send: bytes = b"") -> bytes:
    """
    Blocking: handshake, send C{send}, and read until the TLS stream ends
    cleanly (an end without close_notify raises).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as tls:
            if send:
                tls.sendall(send)
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    return data
                data += chunk


class TlsTerminationTests(TestCase):
    """
    A TLS listener in front of an echo server, driven by real clients.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)

    def start(self, context: dict, tcpProxy: dict | None = None) -> tuple[Server, int, str]:
        """
        Start the proxy; return it, its port and its C{listener.<addr>.ssl} root.
        """
        server = startServer(self, tlsConfig(listen(self, Echo), context, tcpProxy))
        port = listenerPort(server)
        root = sanitizeName(server.context.listeners[0].listener.statRoot + ".ssl")
        return server, port, root

    async def attempt(self, port: int, ctx: ssl.SSLContext) -> bytes | Exception:
        """
        Run L{exchange} in a thread; return its bytes or its exception.
        """
        try:
            return await threads.deferToThread(exchange, port, ctx)
        except Exception as e:
            return e

    async def waitFor(self, server: Server, name: str, value: int = 1) -> None:
        """
        Wait (up to 5s) until stat C{name} reaches C{value}.
        """
        deadline = time.monotonic() + 5
        while stat(server, name) < value and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(stat(server, name), value, name)

    def mutual(self, **validation: Any) -> dict:
        """
        A context requiring a client certificate from the test CA.
        """
        validation.setdefault("trusted_ca", {"filename": self.pki.caFile})
        return tlsContext(self.pki, validation, require_client_certificate=True)

    async def test_mutualTlsEchoes(self) -> None:
        """
        A client with a certificate from the trusted CA gets its echo, and
        the handshake is counted with its version and cipher.
        """
        server, port, root = self.start(self.mutual())
        ctx = clientContext(self.pki, self.pki.clientCert, self.pki.clientKey)
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        await self.waitFor(server, f"{root}.handshake")
        self.assertEqual(stat(server, f"{root}.versions.TLSv1.3"), 1)
        self.assertEqual(stat(server, f"{root}.ciphers.TLS_AES_256_GCM_SHA384"), 1)
        self.assertEqual(stat(server, f"{root}.curves.X25519"), 1)
        self.assertEqual(stat(server, f"{root}.no_certificate"), 0)

    async def test_certificatesReported(self) -> None:
        """
        C{/certs} shows the context's CA and leaf as Envoy's
        C{admin.v3.Certificates}, and C{server.days_until_first_cert_expiring}
        is the fewest days any of them has left.
        """
        from cryptography import x509

        server, _, _ = self.start(self.mutual())
        now = time.time()
        report = server.context.certificates.report(server.context, now)
        (entry,) = report["certificates"]
        (ca,) = entry["ca_cert"]
        (leaf,) = entry["cert_chain"]
        cert = x509.load_pem_x509_certificate(self.pki.server.certPem)
        caCert = x509.load_pem_x509_certificate(self.pki.ca.certPem)
        self.assertEqual((leaf["path"], ca["path"]), (self.pki.serverCert, self.pki.caFile))
        self.assertEqual(leaf["serial_number"], format(cert.serial_number, "x"))
        self.assertEqual(leaf["subject_alt_names"], [{"dns": "localhost"},
                                                     {"ip_address": "127.0.0.1"}])
        self.assertEqual(leaf["expiration_time"],
                         cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))
        days = [int((c.not_valid_after_utc.timestamp() - now) // 86400) for c in (cert, caCert)]
        self.assertEqual((int(leaf["days_until_expiration"]), int(ca["days_until_expiration"])),
                         (days[0], days[1]))
        server.context.refreshServerGauges()
        self.assertEqual(stat(server, "server.days_until_first_cert_expiring"), min(days))

    async def test_recordErrorAfterHandshake(self) -> None:
        """
        A bad record after the handshake closes the connection and counts
        C{connection_error}, as Envoy counts TLS errors on its reads.
        """
        server, port, root = self.start(tlsContext(self.pki))

        def corrupt() -> bytes:
            ctx = clientContext(self.pki)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"ping")
                    echoed = tls.recv(4)
                    # An application-data record whose MAC cannot check out.
                    os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
                    try:
                        while tls.recv(100):
                            pass
                    except (OSError, ssl.SSLError):
                        pass
                    return echoed

        self.assertEqual(await threads.deferToThread(corrupt), b"ping")
        await self.waitFor(server, f"{root}.connection_error")
        self.assertEqual(stat(server, f"{root}.handshake"), 1)

    async def test_serverOnlyTls(self) -> None:
        """
        Without a validation context no client certificate is asked for;
        the handshake counts C{no_certificate}; TLS 1.2 can be forced.
        """
        server, port, root = self.start(tlsContext(self.pki))
        ctx = clientContext(self.pki, maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        await self.waitFor(server, f"{root}.handshake")
        self.assertEqual(stat(server, f"{root}.no_certificate"), 1)
        self.assertEqual(stat(server, f"{root}.versions.TLSv1.2"), 1)
        self.assertEqual(stat(server, f"{root}.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256"), 1)

    async def test_noClientCertificateRefused(self) -> None:
        """
        With require_client_certificate a client without one is refused
        and C{fail_verify_no_cert} counted.
        """
        server, port, root = self.start(self.mutual())
        result = await self.attempt(port, clientContext(self.pki))
        self.assertIsInstance(result, Exception)
        await self.waitFor(server, f"{root}.fail_verify_no_cert")
        self.assertEqual(stat(server, f"{root}.handshake"), 0)
        self.assertEqual(stat(server, f"{root}.connection_error"), 0)

    async def test_requiredWithoutCa(self) -> None:
        """
        C{require_client_certificate} without C{trusted_ca} asks for a
        certificate and refuses clients without one, as Envoy's API says
        (Envoy's code does not ask); any certificate is then taken, its
        chain unverified.
        """
        server, port, root = self.start(tlsContext(self.pki, require_client_certificate=True))
        self.assertIsInstance(await self.attempt(port, clientContext(self.pki)), Exception)
        await self.waitFor(server, f"{root}.fail_verify_no_cert")
        ctx = clientContext(self.pki, self.pki.strangerCert, self.pki.strangerKey)
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        self.assertEqual(stat(server, f"{root}.fail_verify_error"), 0)

    async def test_wrongCaRefused(self) -> None:
        """
        A client certificate from another CA fails chain verification.
        """
        server, port, root = self.start(self.mutual())
        ctx = clientContext(self.pki, self.pki.strangerCert, self.pki.strangerKey)
        self.assertIsInstance(await self.attempt(port, ctx), Exception)
        await self.waitFor(server, f"{root}.fail_verify_error")
        self.assertEqual(stat(server, f"{root}.connection_error"), 0)

    async def test_sanMismatchRefused(self) -> None:
        """
        A certificate whose SANs match no matcher counts C{fail_verify_san};
        a matching URI prefix is let through.
        """
        server, port, root = self.start(self.mutual(match_typed_subject_alt_names=[
            {"san_type": "URI", "matcher": {"exact": "spiffe://test/other"}},
            {"san_type": "DNS", "matcher": {"suffix": ".example"}}]))
        ctx = clientContext(self.pki, self.pki.clientCert, self.pki.clientKey)
        self.assertIsInstance(await self.attempt(port, ctx), Exception)
        await self.waitFor(server, f"{root}.fail_verify_san")
        server, port, root = self.start(self.mutual(match_typed_subject_alt_names=[
            {"san_type": "URI", "matcher": {"prefix": "spiffe://test/"}}]))
        self.assertEqual(await self.attempt(port, ctx), b"hello")

    async def test_dnsSanExactIgnoresCase(self) -> None:
        """
        A DNS C{exact} matcher ignores case even without C{ignore_case},
        as Envoy's C{dnsNameMatch}: C{CLIENT.Test} admits C{client.test}.
        """
        server, port, root = self.start(self.mutual(match_typed_subject_alt_names=[
            {"san_type": "DNS", "matcher": {"exact": "CLIENT.Test"}}]))
        ctx = clientContext(self.pki, self.pki.clientCert, self.pki.clientKey)
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        self.assertEqual(stat(server, f"{root}.fail_verify_san"), 0)

    async def test_defaultGroups(self) -> None:
        """
        Only Envoy's default groups, X25519 and P-256, are accepted: a
        client offering P-384 alone is refused (C{connection_error}), one
        offering P-256 alone gets through and counts C{curves.P-256}.
        """
        server, port, root = self.start(tlsContext(self.pki))
        ctx = clientContext(self.pki)
        ctx.set_ecdh_curve("secp384r1")
        self.assertIsInstance(await self.attempt(port, ctx), Exception)
        await self.waitFor(server, f"{root}.connection_error")
        self.assertEqual(stat(server, f"{root}.handshake"), 0)
        ctx = clientContext(self.pki)
        ctx.set_ecdh_curve("prime256v1")
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        await self.waitFor(server, f"{root}.curves.P-256")

    async def test_pinMismatchRefused(self) -> None:
        """
        A certificate whose hash is not pinned counts
        C{fail_verify_cert_hash}; the right hash (with colons) or SPKI passes.
        """
        wrong = "00" * 32
        server, port, root = self.start(self.mutual(verify_certificate_hash=[wrong]))
        ctx = clientContext(self.pki, self.pki.clientCert, self.pki.clientKey)
        self.assertIsInstance(await self.attempt(port, ctx), Exception)
        await self.waitFor(server, f"{root}.fail_verify_cert_hash")
        fingerprint = self.pki.client.fingerprint256.upper()
        colons = ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2))
        server, port, root = self.start(self.mutual(verify_certificate_hash=[wrong, colons]))
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        spki = base64.b64encode(hashlib.sha256(
            self.pki.client.certificate.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()).decode()
        server, port, root = self.start(self.mutual(verify_certificate_spki=[spki]))
        self.assertEqual(await self.attempt(port, ctx), b"hello")

    async def test_upstreamCloseEndsTlsCleanly(self) -> None:
        """
        When the upstream closes, the client reads its bytes and then a
        clean TLS end (close_notify), not a truncation error.
        """
        raw = tlsConfig(listen(self, SayByeAndClose), tlsContext(self.pki))
        server = startServer(self, raw)
        data = await threads.deferToThread(readAll, listenerPort(server),
                                           clientContext(self.pki))
        self.assertEqual(data, b"bye")

    async def test_handshakeWhileUpstreamConnects(self) -> None:
        """
        The handshake completes while tcp_proxy's upstream connect is still
        pending (reading is disabled for the filters, not for the handshake,
        as Envoy drives its handshake); the client's first bytes wait and
        reach the upstream once it has connected.
        """
        upstream = socket.socket()
        self.addCleanup(upstream.close)
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(0)
        # One unaccepted connection fills the accept queue: connects to it
        # now wait (their SYNs are dropped and retried).
        filler = socket.create_connection(upstream.getsockname())
        self.addCleanup(filler.close)
        raw = tcpProxyConfig([upstream.getsockname()[1]], cluster={"connect_timeout": "20s"})
        raw["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls", "typed_config": tlsContext(self.pki)}
        server = startServer(self, raw)
        root = sanitizeName(server.context.listeners[0].listener.statRoot + ".ssl")
        client = threads.deferToThread(exchange, listenerPort(server), clientContext(self.pki))
        await self.waitFor(server, f"{root}.handshake")
        self.assertEqual(stat(server, "cluster.backend.upstream_cx_connect_fail"), 0)

        def acceptAndEcho() -> None:
            upstream.accept()[0].close()  # the filler's end: the queue has room again
            upstream.settimeout(15)
            conn, _ = upstream.accept()
            with conn:
                data = b""
                while len(data) < 5:
                    data += conn.recv(5 - len(data))
                conn.sendall(data)

        await threads.deferToThread(acceptAndEcho)
        self.assertEqual(await client, b"hello")

    async def test_closeWithoutFlushSendsCloseNotify(self) -> None:
        """
        A close without flushing (idle_timeout) of an established TLS
        connection with nothing queued sends close_notify first, as Envoy
        does: the client reads its echo and a clean end, not a truncation.
        """
        raw = tlsConfig(listen(self, Echo), tlsContext(self.pki), {"idle_timeout": "0.3s"})
        server = startServer(self, raw)
        got = await threads.deferToThread(readAll, listenerPort(server), clientContext(self.pki),
                                          b"ping")
        self.assertEqual(got, b"ping")
        self.assertEqual(stat(server, "tcp.test.idle_timeout"), 1)

    async def test_oldTlsRefused(self) -> None:
        """
        A TLS 1.1 client is refused under the default minimum (TLS 1.2),
        counted as a C{connection_error}.
        """
        server, port, root = self.start(tlsContext(self.pki))
        ctx = clientContext(self.pki, maximum=ssl.TLSVersion.TLSv1_1)
        self.assertIsInstance(await self.attempt(port, ctx), Exception)
        await self.waitFor(server, f"{root}.connection_error")
        self.assertEqual(stat(server, f"{root}.handshake"), 0)

    async def test_accessLogCarriesPeer(self) -> None:
        """
        The access log line of a mutual-TLS connection carries the peer's
        subject, SHA-256 fingerprint, URI SAN and the TLS version.
        """
        path = os.path.join(self.pki.directory, "access.log")
        fmt = ("%DOWNSTREAM_PEER_SUBJECT%|%DOWNSTREAM_PEER_FINGERPRINT_256%|"
               "%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_TLS_VERSION%|"
               "%DOWNSTREAM_LOCAL_SUBJECT%|%DOWNSTREAM_PEER_ISSUER%\n")
        server, port, root = self.start(self.mutual(), tcpProxy={"access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": path,
                             "log_format": {"text_format_source": {"inline_string": fmt}}}}]})
        ctx = clientContext(self.pki, self.pki.clientCert, self.pki.clientKey)
        self.assertEqual(await self.attempt(port, ctx), b"hello")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
                os.path.exists(path) and os.path.getsize(path)):
            await deferLater(reactor, 0.01, lambda: None)
        with open(path) as f:
            line = f.read().strip()
        self.assertEqual(line.split("|"), [
            self.pki.client.subject, self.pki.client.fingerprint256,
            "spiffe://test/client", "TLSv1.3", self.pki.server.subject,
            self.pki.ca.subject])
        self.assertEqual(self.pki.client.subject, "CN=client,O=pyenvoy tests")

    async def test_opensslClient(self) -> None:
        """
        C{openssl s_client} with a client certificate gets through the
        proxy and reads its echo.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("openssl is not installed")
        server, port, root = self.start(self.mutual())
        args = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
                "-CAfile", self.pki.caFile, "-cert", self.pki.clientCert,
                "-key", self.pki.clientKey, "-verify_return_error",
                "-servername", "localhost"]

        def run() -> bytes:
            # s_client -quiet keeps the connection after stdin ends, so read
            # until the echo comes back, then stop it.
            process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL)
            try:
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(b"ping over openssl\n")
                process.stdin.flush()
                deadline = time.monotonic() + 10
                out = b""
                os.set_blocking(process.stdout.fileno(), False)
                while b"ping over openssl" not in out and time.monotonic() < deadline:
                    chunk = process.stdout.read()
                    if chunk:
                        out += chunk
                    elif process.poll() is not None:
                        break
                    else:
                        time.sleep(0.02)
                return out
            finally:
                process.kill()
                process.wait(5)

        out = await threads.deferToThread(run)
        self.assertIn(b"ping over openssl", out)
        await self.waitFor(server, f"{root}.handshake")


class TlsConfigTests(TestCase):
    """
    Config errors in a DownstreamTlsContext name their YAML path.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.pki = Pki(self.directory)

    def errors(self, context: dict) -> list[tuple[str, str]]:
        """
        The C{(path, message)} problems of a config using C{context}.
        """
        with self.assertRaises(ConfigErrors) as caught:
            parse(tlsConfig(1, context))
        return [(e.path, e.message) for e in caught.exception.errors]

    def assertError(self, context: dict, path: str, fragment: str) -> None:
        """
        C{context} gives exactly one problem, at C{path}, mentioning C{fragment}.
        """
        found = self.errors(context)
        self.assertEqual(len(found), 1, found)
        self.assertEqual(found[0][0], path)
        self.assertIn(fragment, found[0][1])

    def test_validConfig(self) -> None:
        """
        A full context parses into the chain's C{tls} config.
        """
        context = tlsContext(self.pki, {
            "trusted_ca": {"filename": self.pki.caFile},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"safe_regex": {"regex": ".*\\.test"}}}],
            "verify_certificate_hash": ["ab" * 32]},
            common={"tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                                   "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|"
                                                     "ECDHE-RSA-AES128-GCM-SHA256]"]},
                    "alpn_protocols": ["h2", "http/1.1"]})
        tls = parse(tlsConfig(1, context)).listeners[0].filterChains[0].tls
        self.assertEqual(tls.cipherSuites, ("ECDHE-ECDSA-AES128-GCM-SHA256",
                                            "ECDHE-RSA-AES128-GCM-SHA256"))
        self.assertEqual(tls.alpnProtocols, (b"h2", b"http/1.1"))
        self.assertTrue(tls.clientCertificateRequired)
        self.assertNotIn("PRIVATE", repr(tls))

    def test_inlineStrings(self) -> None:
        """
        Certificates and keys may be given inline.
        """
        context = tlsContext(self.pki)
        context["common_tls_context"]["tls_certificates"] = [{
            "certificate_chain": {"inline_string": self.pki.server.certPem.decode()},
            "private_key": {"inline_string": self.pki.server.keyPem.decode()}}]
        self.assertIsNotNone(parse(tlsConfig(1, context)).listeners[0].filterChains[0].tls)

    def test_missingFile(self) -> None:
        """
        A certificate file that cannot be read is an error at its path.
        """
        context = tlsContext(self.pki)
        missing = os.path.join(self.directory, "nope.pem")
        context["common_tls_context"]["tls_certificates"][0]["certificate_chain"] = {
            "filename": missing}
        self.assertError(context, f"{TS}.common_tls_context.tls_certificates[0]"
                                  ".certificate_chain.filename", f"cannot read {missing!r}")

    def test_mismatchedKey(self) -> None:
        """
        A private key that does not belong to the certificate is an error.
        """
        context = tlsContext(self.pki)
        context["common_tls_context"]["tls_certificates"][0]["private_key"] = {
            "filename": self.pki.clientKey}
        self.assertError(context, f"{TS}.common_tls_context.tls_certificates[0].private_key",
                         "does not match the certificate")

    def test_badPem(self) -> None:
        """
        A certificate chain that is not PEM is an error.
        """
        context = tlsContext(self.pki)
        context["common_tls_context"]["tls_certificates"][0]["certificate_chain"] = {
            "inline_string": "not a certificate"}
        self.assertError(context, f"{TS}.common_tls_context.tls_certificates[0]"
                                  ".certificate_chain", "no PEM certificate")

    def test_unknownCipher(self) -> None:
        """
        An unknown cipher name is an error naming it, not silently dropped.
        """
        context = tlsContext(self.pki, common={"tls_params": {
            "cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-NOPE"]}})
        self.assertError(context, f"{TS}.common_tls_context.tls_params.cipher_suites[1]",
                         "unknown cipher suite 'ECDHE-RSA-NOPE'")

    def test_badHash(self) -> None:
        """
        A certificate hash that is not 32 bytes of hex is an error.
        """
        context = tlsContext(self.pki, {"verify_certificate_hash": ["abcd"]})
        self.assertError(context, f"{TS}.common_tls_context.validation_context"
                                  ".verify_certificate_hash[0]", "SHA-256")

    def test_unsupportedField(self) -> None:
        """
        Envoy fields pyenvoy lacks are named as not supported yet.
        """
        context = tlsContext(self.pki, session_timeout="10s")
        self.assertError(context, f"{TS}.session_timeout",
                         "field 'session_timeout' is not supported by pyenvoy yet")
        context = tlsContext(self.pki, {"crl": {"filename": "/x"}})
        self.assertError(context, f"{TS}.common_tls_context.validation_context.crl",
                         "not supported by pyenvoy yet")

    def test_sanWithoutCa(self) -> None:
        """
        SAN matchers without C{trusted_ca} are refused on a listener too,
        as Envoy does, at the matchers' path.
        """
        context = tlsContext(self.pki, {"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"prefix": "spiffe://test/"}}]},
            require_client_certificate=True)
        self.assertError(context, f"{TS}.common_tls_context.validation_context"
                                  ".match_typed_subject_alt_names",
                         "SAN-based verification of peer certificates without trusted CA "
                         "is insecure and not allowed")

    def test_wrongType(self) -> None:
        """
        An UpstreamTlsContext on a listener is refused at its C{@type}.
        """
        context = tlsContext(self.pki)
        context["@type"] = TLS_TYPE.replace("Downstream", "Upstream")
        self.assertError(context, f"{TS}.@type", "DownstreamTlsContext")

    def test_rawBuffer(self) -> None:
        """
        C{envoy.transport_sockets.raw_buffer} means plaintext.
        """
        raw = tcpProxyConfig([1])
        raw["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.raw_buffer"}
        self.assertIsNone(parse(raw).listeners[0].filterChains[0].tls)


class SanMatchTests(TestCase):
    """
    SAN matchers as Envoy's C{StringSanMatcher}: DNS C{exact} follows
    C{dnsNameMatch}, everything else the plain C{StringMatcher}.
    """

    def dns(self, value: str, san: str, ignoreCase: bool = False) -> bool:
        """
        Whether a DNS SAN C{san} passes an C{exact: value} matcher.
        """
        return StringMatch("exact", value, ignoreCase).matches(san, True)

    def test_dnsExactIgnoresCase(self) -> None:
        """
        DNS C{exact} ignores ASCII case whatever C{ignore_case} says.
        """
        self.assertTrue(self.dns("Client.Example.COM", "client.example.com"))
        self.assertTrue(self.dns("client.example.com", "*.EXAMPLE.com"))
        self.assertTrue(self.dns("a.example.com", "A.example.com", ignoreCase=True))

    def test_dnsWildcardInLeftLabel(self) -> None:
        """
        A C{*} in the SAN's left-most label may have a prefix or suffix
        inside that label, and covers one label.
        """
        self.assertTrue(self.dns("foobar.example.com", "foo*.example.com"))
        self.assertTrue(self.dns("foo.example.com", "foo*.example.com"))
        self.assertTrue(self.dns("foobar.example.com", "*bar.example.com"))
        self.assertTrue(self.dns("foo-x-bar.example.com", "foo*bar.example.com"))
        self.assertTrue(self.dns("www.example.com", "*.example.com"))
        self.assertFalse(self.dns("bazbar.example.com", "foo*.example.com"))
        self.assertFalse(self.dns("foo.example.com", "*bar.example.com"))
        self.assertFalse(self.dns("fobar.example.com", "foo*bar.example.com"))
        self.assertFalse(self.dns("foobar.example.com", "f*o*.example.com"))

    def test_dnsWildcardOneLabelOnly(self) -> None:
        """
        The wildcard never spans several labels, never stands for no label,
        and only counts in the left-most label.
        """
        self.assertFalse(self.dns("a.b.example.com", "*.example.com"))
        self.assertFalse(self.dns("example.com", "*.example.com"))
        self.assertFalse(self.dns("www.example.com", "www.*.com"))
        self.assertFalse(self.dns("www.example.com", "*.*.com"))
        self.assertFalse(self.dns("com", "*"))

    def test_dnsWildcardNotInALabel(self) -> None:
        """
        A wildcard in an A-label (C{xn--}) matches nothing but itself.
        """
        self.assertFalse(self.dns("xn--bcher-kva.example.com", "xn--*.example.com"))
        self.assertFalse(self.dns("xn--bcher-kva.example.com", "xn--bcher*.example.com"))
        self.assertTrue(self.dns("xn--bcher-kva.example.com", "*.example.com"))
        self.assertTrue(self.dns("xn--bcher-kva.example.com", "XN--BCHER-KVA.example.com"))
        self.assertTrue(self.dns("xn--*.example.com", "xn--*.example.com"))

    def test_otherMatchersUnchanged(self) -> None:
        """
        Other SAN types and other matcher kinds keep C{StringMatcher}
        semantics: case-sensitive unless C{ignore_case}, no wildcards.
        """
        uri = StringMatch("exact", "spiffe://Test/x")
        self.assertFalse(uri.matches("spiffe://test/x"))
        self.assertTrue(StringMatch("exact", "spiffe://Test/x", True).matches("spiffe://test/x"))
        self.assertFalse(StringMatch("prefix", "WWW.").matches("www.example.com", True))
        self.assertTrue(StringMatch("prefix", "WWW.", True).matches("www.example.com", True))
        self.assertFalse(StringMatch("suffix", ".example.com").matches("*.Example.com", True))
        self.assertFalse(StringMatch("exact", "www.example.com").matches("*.example.com"))

    def test_safeRegexIgnoresIgnoreCase(self) -> None:
        """
        C{ignore_case} has no effect on C{safe_regex}, as in Envoy.
        """
        regex = StringMatch("safe_regex", r"client\.test", ignoreCase=True)
        self.assertTrue(regex.matches("client.test"))
        self.assertFalse(regex.matches("CLIENT.test"))
        self.assertFalse(regex.matches("CLIENT.test", True))
