"""
Tests for L{pyenvoy.filters.tls_inspector}: ClientHello parsing from real
client bytes, and one port serving plaintext and SNI-picked TLS chains.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.filters.tls_inspector import HelloState, parseClientHello
from pyenvoy.stats import sanitizeName
from tests.support.certs import issue, makeCA
from tests.support.net import listenerPort, startServer, stat

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
INSPECTOR_TYPE = ("type.googleapis.com/envoy.extensions.filters.listener."
                  "tls_inspector.v3.TlsInspector")


def clientHello(serverName: str | None = None, alpn: list[str] | None = None) -> bytes:
    """
    The first flight a Python C{ssl} client sends (its ClientHello).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class ParseTests(SynchronousTestCase):
    """
    L{parseClientHello} over bytes from a real TLS client.
    """

    def test_sniAndAlpn(self) -> None:
        """
        SNI (lowercased) and the ALPN list come out of a real ClientHello.
        """
        result = parseClientHello(clientHello("WWW.Example.com", ["h2", "http/1.1"]))
        self.assertEqual(result.state, HelloState.TLS)
        self.assertEqual(result.serverName, "www.example.com")
        self.assertEqual(result.applicationProtocols, ("h2", "http/1.1"))

    def test_noExtensions(self) -> None:
        """
        Without SNI or ALPN it is still TLS, with neither.
        """
        result = parseClientHello(clientHello())
        self.assertEqual((result.state, result.serverName, result.applicationProtocols),
                         (HelloState.TLS, "", ()))

    def test_partial(self) -> None:
        """
        Every strict prefix of a ClientHello asks for more bytes.
        """
        hello = clientHello("a.test")
        for size in (1, 3, 5, 9, len(hello) - 1):
            self.assertEqual(parseClientHello(hello[:size]).state, HelloState.NEED_MORE)

    def test_splitRecords(self) -> None:
        """
        A ClientHello split over several TLS records is reassembled.
        """
        hello = clientHello("split.test", ["x"])
        body = hello[5:]
        records = b"".join(hello[:3] + len(body[i:i + 50]).to_bytes(2, "big") + body[i:i + 50]
                           for i in range(0, len(body), 50))
        result = parseClientHello(records)
        self.assertEqual((result.state, result.serverName), (HelloState.TLS, "split.test"))

    def test_notTls(self) -> None:
        """
        Plaintext is recognised from its first byte.
        """
        self.assertEqual(parseClientHello(b"GET / HTTP/1.1\r\n").state, HelloState.NOT_TLS)
        self.assertEqual(parseClientHello(b"*1\r\n$4\r\nPING\r\n").state, HelloState.NOT_TLS)

    def test_notClientHello(self) -> None:
        """
        A handshake record that is not a ClientHello is not TLS to us.
        """
        self.assertEqual(parseClientHello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00").state,
                         HelloState.NOT_TLS)

    def test_malformed(self) -> None:
        """
        A ClientHello whose extensions are cut short is not TLS.
        """
        hello = bytearray(clientHello("a.test"))
        hello[-3] ^= 0xFF
        body = bytes(hello)
        self.assertIn(parseClientHello(body).state, (HelloState.NOT_TLS, HelloState.TLS))
        broken = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00"
        self.assertEqual(parseClientHello(broken).state, HelloState.NOT_TLS)

    def test_tooLarge(self) -> None:
        """
        A ClientHello announcing more than the limit is too large.
        """
        hello = clientHello("a.test")
        self.assertEqual(parseClientHello(hello, maxSize=257).state, HelloState.TOO_LARGE)
        announced = b"\x16\x03\x01\x40\x00\x01\x00\x50\x00"
        self.assertEqual(parseClientHello(announced).state, HelloState.TOO_LARGE)


class ConfigTests(SynchronousTestCase):
    """
    The C{TlsInspector} message.
    """

    def errors(self, typed: dict[str, Any]) -> list[str]:
        """
        Error messages of a listener using the inspector with C{typed}.
        """
        typed = dict(typed, **{"@type": INSPECTOR_TYPE})
        raw = {"static_resources": {"listeners": [{
            "name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": 1}},
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                  "typed_config": typed}],
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.echo"}]}]}]}}
        try:
            parse(raw)
        except ConfigErrors as e:
            return [f"{x.path}: {x.message}" for x in e.errors]
        return []

    def test_valid(self) -> None:
        """
        Every supported field is accepted.
        """
        self.assertEqual(self.errors({"max_client_hello_size": 4096,
                                      "initial_read_buffer_size": 1024,
                                      "close_connection_on_client_hello_parsing_errors": True}),
                         [])

    def test_fingerprintingUnsupported(self) -> None:
        """
        JA3/JA4 fingerprinting is refused as not supported yet.
        """
        [message] = self.errors({"enable_ja3_fingerprinting": True})
        self.assertIn("enable_ja3_fingerprinting: is not supported by pyenvoy yet", message)
        self.assertEqual(self.errors({"enable_ja4_fingerprinting": False}), [])

    def test_limits(self) -> None:
        """
        max_client_hello_size above 16 KiB is refused.
        """
        [message] = self.errors({"max_client_hello_size": 20000})
        self.assertIn("at most 16384", message)


class Certificates:
    """
    A CA and two server certificates written to C{directory}.
    """

    def __init__(self, directory: str) -> None:
        self.ca = makeCA()
        self.caFile = os.path.join(directory, "ca.pem")
        with open(self.caFile, "wb") as f:
            f.write(self.ca.certPem)
        self.alpha = issue(self.ca, "alpha", dns=("alpha.test",))
        self.beta = issue(self.ca, "beta", dns=("*.beta.test",))
        self.alphaFiles = self.alpha.write(directory, "alpha")
        self.betaFiles = self.beta.write(directory, "beta")


def tlsSocket(files: tuple[str, str]) -> dict[str, Any]:
    """
    A C{transport_socket} serving the certificate in C{files}.
    """
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS_TYPE, "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"filename": files[0]},
            "private_key": {"filename": files[1]}}]}}}


def sniConfig(certs: Certificates) -> dict[str, Any]:
    """
    One listener: plaintext echo, TLS echo for alpha.test, TLS echo for
    *.beta.test.
    """
    echo = [{"name": "envoy.filters.network.echo"}]
    return {"static_resources": {"listeners": [{
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                              "typed_config": {"@type": INSPECTOR_TYPE}}],
        "filter_chains": [
            {"name": "plain", "filter_chain_match": {"transport_protocol": "raw_buffer"},
             "filters": echo},
            {"name": "alpha", "filter_chain_match": {"server_names": ["alpha.test"],
                                                     "transport_protocol": "tls"},
             "transport_socket": tlsSocket(certs.alphaFiles), "filters": echo},
            {"name": "beta", "filter_chain_match": {"server_names": ["*.beta.test"],
                                                    "transport_protocol": "tls"},
             "transport_socket": tlsSocket(certs.betaFiles), "filters": echo},
        ]}]}}


def tlsExchange(port: int, caFile: str, serverName: str) -> tuple[str, bytes]:
    """
    Blocking: a verifying TLS client for C{serverName}; return the server
    certificate's common name and the echo of a payload.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(caFile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=serverName) as tls:
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            payload = serverName.encode()
            tls.sendall(payload)
            data = b""
            while len(data) < len(payload):
                chunk = tls.recv(1024)
                if not chunk:
                    break
                data += chunk
            return subject["commonName"], data


def plainExchange(port: int, payload: bytes) -> bytes:
    """
    Blocking: send plaintext, half-close, read the echo to the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = raw.recv(1024)
            if not chunk:
                return data
            data += chunk


def closedAtOnce(port: int, payload: bytes) -> bytes:
    """
    Blocking: send C{payload} and read until the proxy closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(payload)
        data = b""
        try:
            while True:
                chunk = raw.recv(1024)
                if not chunk:
                    return data
                data += chunk
        except ConnectionResetError:
            return data


class SniRoutingTests(TestCase):
    """
    One port: plaintext clients and TLS clients by SNI each reach their chain.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs = Certificates(directory)
        self.server = startServer(self, sniConfig(self.certs))
        self.port = listenerPort(self.server)

    async def test_eachClientGetsItsChain(self) -> None:
        """
        alpha.test and x.beta.test get their own certificate and echo;
        plaintext gets the plaintext chain.
        """
        alpha = await threads.deferToThread(tlsExchange, self.port, self.certs.caFile,
                                            "alpha.test")
        beta = await threads.deferToThread(tlsExchange, self.port, self.certs.caFile,
                                           "x.beta.test")
        plain = await threads.deferToThread(plainExchange, self.port, b"plain text")
        self.assertEqual(alpha, ("alpha", b"alpha.test"))
        self.assertEqual(beta, ("beta", b"x.beta.test"))
        self.assertEqual(plain, b"plain text")
        self.assertEqual(stat(self.server, "tls_inspector.tls_found"), 2)
        self.assertEqual(stat(self.server, "tls_inspector.sni_found"), 2)
        self.assertEqual(stat(self.server, "tls_inspector.alpn_not_found"), 2)
        self.assertEqual(stat(self.server, "tls_inspector.tls_not_found"), 1)

    async def test_unknownNameNotMatched(self) -> None:
        """
        A TLS client naming no configured server gets no chain: the
        connection is closed and counted.
        """
        root = sanitizeName(self.server.context.listeners[0].listener.statRoot)
        data = await threads.deferToThread(closedAtOnce, self.port, clientHello("other.test"))
        self.assertEqual(data, b"")
        self.assertEqual(stat(self.server, root + ".no_filter_chain_match"), 1)

    async def test_tooLargeHelloClosed(self) -> None:
        """
        A ClientHello over max_client_hello_size closes the connection.
        """
        announced = b"\x16\x03\x01\x40\x00\x01\x00\x50\x00"
        data = await threads.deferToThread(closedAtOnce, self.port, announced)
        self.assertEqual(data, b"")
        self.assertEqual(stat(self.server, "tls_inspector.client_hello_too_large"), 1)


class ShippedConfigTests(SynchronousTestCase):
    """
    C{twistd -n pyenvoy -c etc/tls_sni.yaml} (ports moved to free ones,
    certificates to test ones) serves plaintext and both SNI names.
    """

    def test_shippedConfig(self) -> None:
        """
        Each client of the running proxy gets its own chain and certificate.
        """
        import yaml

        from tests.support.twistd import startTwistd

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = makeCA()
        caFile = os.path.join(directory, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(ca.certPem)
        files = {
            "alpha": issue(ca, "alpha", dns=("alpha.demo",)).write(directory, "alpha"),
            "beta": issue(ca, "beta", dns=("*.beta.demo",)).write(directory, "beta"),
        }
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "etc", "tls_sni.yaml")) as f:
            config = yaml.safe_load(f)
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        [listener] = config["static_resources"]["listeners"]
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            if "transport_socket" in chain:
                common = chain["transport_socket"]["typed_config"]["common_tls_context"]
                cert, key = files[chain["name"]]
                common["tls_certificates"] = [{"certificate_chain": {"filename": cert},
                                               "private_key": {"filename": key}}]
        twistd = startTwistd(self, config)
        port = twistd.listenerPorts["sni_front"]
        self.assertEqual(tlsExchange(port, caFile, "alpha.demo"), ("alpha", b"alpha.demo"))
        self.assertEqual(tlsExchange(port, caFile, "www.beta.demo"),
                         ("beta", b"www.beta.demo"))
        self.assertEqual(plainExchange(port, b"plain"), b"plain")
        status, body = twistd.request("GET", "/stats")
        self.assertIn("tls_inspector.tls_found: 2", body.splitlines())
