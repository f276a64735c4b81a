"""
C{client_ssl_auth}: a TLS listener in front of an echo server admits only
clients whose certificate fingerprint a real (twisted.web) auth API lists.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.filters.client_ssl_auth import (
    ALLOW_DIGEST,
    ALLOW_IP,
    DENY_DIGEST,
    decide,
    parsePrincipals,
)
from pyenvoy.server import Server
from tests.support.net import endpoint, listenerPort, startServer, stat, tcpProxyConfig
from tests.support.certs import issue
from tests.test_tls import Pki, clientContext, exchange, tlsContext

AUTH_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.client_ssl_auth.v3."
             "ClientSSLAuth")
PREFIX = "auth.clientssl.vpn"


class ApprovedList(Resource):
    """
    C{GET /v1/certs/list/approved}: the fingerprints in C{approved}, or
    C{status} when it is not 200; remembers the Host headers it saw.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.approved: list[str] = []
        self.status = 200
        self.hosts: list[bytes | None] = []

    def render_GET(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader(b"host"))
        if request.path != b"/v1/certs/list/approved":
            request.setResponseCode(404)
            return b""
        if self.status != 200:
            request.setResponseCode(self.status)
            return b"down"
        return json.dumps({"certificates": [
            {"fingerprint_sha256": f, "email": "x@example.com"} for f in self.approved]}
        ).encode()


class Recorder(Protocol):
    """
    An echo server that records every byte it receives on its factory.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.transport.write(data)


class ClientSslAuthTests(TestCase):
    """
    Real TLS clients through client_ssl_auth and tcp_proxy.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.pki = Pki(directory)
        # Same CA as the approved client, so only client_ssl_auth refuses it.
        self.unapproved = issue(self.pki.ca, "unapproved", server=False)
        self.unapprovedCert, self.unapprovedKey = self.unapproved.write(directory, "unapproved")
        self.api = ApprovedList()
        self.apiPort = reactor.listenTCP(0, Site(self.api), interface="127.0.0.1")
        self.addCleanup(self.apiPort.stopListening)
        self.echo = Factory.forProtocol(Recorder)
        self.echo.connections = 0
        self.echo.received = []
        port = reactor.listenTCP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.echoPort = port.getHost().port

    def config(self, tls: bool = True, **auth: Any) -> dict:
        """
        A listener with client_ssl_auth then tcp_proxy; cluster "auth" is
        the API.
        """
        raw = tcpProxyConfig([self.echoPort])
        chain = raw["static_resources"]["listeners"][0]["filter_chains"][0]
        typed = {"@type": AUTH_TYPE, "auth_api_cluster": "auth", "stat_prefix": "vpn"}
        typed.update(auth)
        chain["filters"].insert(0, {"name": "envoy.filters.network.client_ssl_auth",
                                    "typed_config": typed})
        if tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": tlsContext(self.pki, {"trusted_ca": {
                    "filename": self.pki.caFile}})}
        raw["static_resources"]["clusters"].append({
            "name": "auth", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "auth", "endpoints": [{"lb_endpoints": [
                endpoint(self.apiPort.getHost().port)]}]}})
        return raw

    async def waitFor(self, server: Server, name: str, value: int = 1) -> None:
        """
        Wait (up to 5s) until stat C{name} reaches at least C{value}.
        """
        deadline = time.monotonic() + 5
        while stat(server, name) < value and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertGreaterEqual(stat(server, name), value, name)

    async def attempt(self, server: Server, cert: str | None = None,
                      key: str | None = None, payload: bytes = b"hello") -> Any:
        """
        A TLS exchange through the proxy (in a thread): its bytes or its
        exception.
        """
        ctx = clientContext(self.pki, cert, key)
        try:
            return await threads.deferToThread(exchange, listenerPort(server), ctx, payload)
        except Exception as e:
            return e

    async def test_approvedAndUnapproved(self) -> None:
        """
        The approved client's bytes are echoed; the other client is closed
        and not one of its bytes reaches the upstream.
        """
        self.api.approved = [self.pki.client.fingerprint256]
        server = startServer(self, self.config())
        await self.waitFor(server, f"{PREFIX}.update_success")
        self.assertEqual(stat(server, f"{PREFIX}.total_principals"), 1)
        self.assertEqual(self.api.hosts[0], b"auth")
        result = await self.attempt(server, self.pki.clientCert, self.pki.clientKey)
        self.assertEqual(result, b"hello")
        self.assertEqual(stat(server, f"{PREFIX}.auth_digest_match"), 1)
        self.echo.received.clear()
        connections = self.echo.connections
        result = await self.attempt(server, self.unapprovedCert, self.unapprovedKey,
                                    b"secret")
        self.assertNotEqual(result, b"secret")
        await self.waitFor(server, f"{PREFIX}.auth_digest_no_match")
        result = await self.attempt(server, payload=b"no cert")
        self.assertNotEqual(result, b"no cert")
        await self.waitFor(server, f"{PREFIX}.auth_digest_no_match", 2)
        await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.echo.received, [])
        self.assertEqual(self.echo.connections, connections)

    async def test_upperCaseFingerprintNeverMatches(self) -> None:
        """
        As Envoy, listed fingerprints are compared verbatim with the
        lower-case digest: an upper-case one admits nobody, and an empty
        one is not a principal.
        """
        self.api.approved = [self.pki.client.fingerprint256.upper(), ""]
        server = startServer(self, self.config())
        await self.waitFor(server, f"{PREFIX}.update_success")
        self.assertEqual(stat(server, f"{PREFIX}.total_principals"), 1)
        result = await self.attempt(server, self.pki.clientCert, self.pki.clientKey)
        self.assertNotEqual(result, b"hello")
        await self.waitFor(server, f"{PREFIX}.auth_digest_no_match")
        self.assertEqual(stat(server, f"{PREFIX}.auth_digest_match"), 0)

    async def test_apiDownKeepsLastList(self) -> None:
        """
        When the auth API fails, C{update_failure} is counted and the last
        good list still admits its client.
        """
        self.api.approved = [self.pki.client.fingerprint256]
        server = startServer(self, self.config(refresh_delay="0.05s"))
        await self.waitFor(server, f"{PREFIX}.update_success")
        self.api.status = 503
        await self.waitFor(server, f"{PREFIX}.update_failure")
        await self.apiPort.stopListening()
        failures = stat(server, f"{PREFIX}.update_failure")
        await self.waitFor(server, f"{PREFIX}.update_failure", failures + 1)
        self.assertEqual(stat(server, f"{PREFIX}.total_principals"), 1)
        result = await self.attempt(server, self.pki.clientCert, self.pki.clientKey)
        self.assertEqual(result, b"hello")

    async def test_badJsonIsFailure(self) -> None:
        """
        An answer that is not the expected JSON counts C{update_failure}.
        """
        self.api.render_GET = lambda request: b"not json"  # type: ignore[method-assign]
        server = startServer(self, self.config())
        await self.waitFor(server, f"{PREFIX}.update_failure")
        self.assertEqual(stat(server, f"{PREFIX}.update_success"), 0)

    async def test_ipWhiteListAdmitsWithoutCertificate(self) -> None:
        """
        A client from an allowlisted address is admitted without a
        certificate.
        """
        server = startServer(self, self.config(ip_white_list=[
            {"address_prefix": "127.0.0.0", "prefix_len": 8}]))
        await self.waitFor(server, f"{PREFIX}.update_success")
        self.assertEqual(await self.attempt(server), b"hello")
        self.assertEqual(stat(server, f"{PREFIX}.auth_ip_allowlist"), 1)

    async def test_plaintextPassesAsEnvoy(self) -> None:
        """
        A plaintext connection is counted as C{auth_no_ssl} and, as in
        Envoy, let through (a TLS-only chain is what makes TLS mandatory).
        """
        from tests.support.net import connect

        server = startServer(self, self.config(tls=False))
        client = await connect(listenerPort(server))
        client.transport.write(b"plain")
        deadline = time.monotonic() + 5
        while client.data() != b"plain" and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client.data(), b"plain")
        self.assertEqual(stat(server, f"{PREFIX}.auth_no_ssl"), 1)
        client.transport.loseConnection()
        await client.closed


class ClientSslAuthUnitTests(TestCase):
    """
    The decision, the API answer parser and the config checks.
    """

    def test_decide(self) -> None:
        """
        The allowlist wins, then the fingerprint, compared exactly.
        """
        import ipaddress

        nets = (ipaddress.ip_network("10.0.0.0/8"),)
        principals = frozenset({"ab" * 32, "CD" * 32})
        self.assertEqual(decide("10.1.2.3", None, nets, principals), ALLOW_IP)
        self.assertEqual(decide("192.0.2.1", "ab" * 32, nets, principals), ALLOW_DIGEST)
        self.assertEqual(decide("192.0.2.1", "cd" * 32, nets, principals), DENY_DIGEST)
        self.assertEqual(decide("192.0.2.1", None, (), principals), DENY_DIGEST)

    def test_parsePrincipals(self) -> None:
        """
        Extra keys are ignored; a wrong shape raises.
        """
        self.assertEqual(parsePrincipals(
            b'{"certificates": [{"fingerprint_sha256": "aa", "pem_encoded": "x"}]}'),
            frozenset({"aa"}))
        self.assertRaises(ValueError, parsePrincipals, b'{"certs": []}')
        self.assertRaises(ValueError, parsePrincipals, b'{"certificates": [{}]}')

    def test_parsePrincipalsVerbatim(self) -> None:
        """
        Fingerprints are kept as listed (not lowercased), empty ones are
        dropped, and duplicates count once, as Envoy's C{AllowedPrincipals}.
        """
        body = json.dumps({"certificates": [
            {"fingerprint_sha256": "AB" * 32}, {"fingerprint_sha256": "ab" * 32},
            {"fingerprint_sha256": ""}, {"fingerprint_sha256": "ab" * 32}]}).encode()
        self.assertEqual(parsePrincipals(body), frozenset({"AB" * 32, "ab" * 32}))

    def test_unknownCluster(self) -> None:
        """
        An auth_api_cluster that does not exist is an error at its path.
        """
        raw = tcpProxyConfig([1])
        raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].insert(0, {
            "name": "envoy.filters.network.client_ssl_auth",
            "typed_config": {"@type": AUTH_TYPE, "auth_api_cluster": "nope",
                             "stat_prefix": "x",
                             "ip_white_list": [{"address_prefix": "bad"}]}})
        with self.assertRaises(ConfigErrors) as caught:
            parse(raw)
        found = {e.path: e.message for e in caught.exception.errors}
        base = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        self.assertIn("unknown cluster 'nope' in client ssl auth config",
                      found[f"{base}.auth_api_cluster"])
        self.assertIn("malformed IP address", found[f"{base}.ip_white_list[0].address_prefix"])
