"""
C{envoy.filters.listener.tls_inspector}: peek at a TLS ClientHello to learn
the transport protocol, SNI and ALPN that filter chain matching uses.

L{parseClientHello} is sans-I/O (bytes in, a L{ClientHelloResult} out);
L{TlsInspector} is the thin listener filter around it.  The peeked bytes
are not consumed: they reach the chosen chain (and its TLS) unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pyenvoy.interfaces import FilterStatus

TYPE_URL = ("type.googleapis.com/envoy.extensions.filters.listener."
            "tls_inspector.v3.TlsInspector")

#: Envoy's default and upper limit for C{max_client_hello_size}
#: (C{SSL3_RT_MAX_PLAIN_LENGTH}).
MAX_CLIENT_HELLO_SIZE = 16384

_RECORD_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
# A TLS record carries at most 2^14 bytes of plaintext (plus expansion).
_MAX_RECORD = 16384 + 2048


class HelloState(enum.Enum):
    """
    What the bytes seen so far are.
    """

    #: Could be a ClientHello; more bytes are needed to say.
    NEED_MORE = "need_more"
    #: A complete ClientHello was parsed.
    TLS = "tls"
    #: Not TLS, or a ClientHello too malformed to read.
    NOT_TLS = "not_tls"
    #: A ClientHello larger than the configured limit.
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class ClientHelloResult:
    """
    The outcome of L{parseClientHello}.

    @ivar serverName: the SNI host name, lowercased, or C{""}.
    @ivar applicationProtocols: the ALPN list, in the client's order.
    """

    state: HelloState
    serverName: str = ""
    applicationProtocols: tuple[str, ...] = ()
    bytesProcessed: int = 0


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise _Malformed()
        out = self.data[self.offset:self.offset + n]
        self.offset += n
        return out

    def integer(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, lengthBytes: int) -> "_Reader":
        return _Reader(self.take(self.integer(lengthBytes)))

    def done(self) -> bool:
        return self.offset >= len(self.data)


def parseClientHello(data: bytes, maxSize: int = MAX_CLIENT_HELLO_SIZE) -> ClientHelloResult:
    """
    Read a ClientHello from the first bytes of a connection.

    The handshake message may span several TLS records; only the SNI
    (C{server_name}) and ALPN extensions are looked at.
    """
    handshake = b""
    offset = 0
    needed: int | None = None
    while needed is None or len(handshake) < needed:
        header = data[offset:offset + 5]
        if not header:
            break
        if header[0] != _RECORD_HANDSHAKE or (len(header) > 1 and header[1] != 3):
            return ClientHelloResult(HelloState.NOT_TLS, bytesProcessed=len(data))
        if len(header) < 5:
            break
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > _MAX_RECORD:
            return ClientHelloResult(HelloState.NOT_TLS, bytesProcessed=len(data))
        fragment = data[offset + 5:offset + 5 + length]
        handshake += fragment
        offset += 5 + len(fragment)
        if needed is None and len(handshake) >= 4:
            if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
                return ClientHelloResult(HelloState.NOT_TLS, bytesProcessed=len(data))
            needed = 4 + int.from_bytes(handshake[1:4], "big")
            if needed > maxSize:
                return ClientHelloResult(HelloState.TOO_LARGE, bytesProcessed=len(data))
        if len(fragment) < length:
            break
    if needed is None or len(handshake) < needed:
        if len(data) >= maxSize:
            return ClientHelloResult(HelloState.TOO_LARGE, bytesProcessed=len(data))
        return ClientHelloResult(HelloState.NEED_MORE, bytesProcessed=len(data))
    try:
        serverName, protocols = _parseBody(handshake[4:needed])
    except (_Malformed, UnicodeDecodeError):
        return ClientHelloResult(HelloState.NOT_TLS, bytesProcessed=len(data))
    return ClientHelloResult(HelloState.TLS, serverName, protocols, len(data))


def _parseBody(body: bytes) -> tuple[str, tuple[str, ...]]:
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    if len(reader.vector(1).data) > 32:  # legacy_session_id
        raise _Malformed()
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    serverName = ""
    protocols: tuple[str, ...] = ()
    if reader.done():
        return serverName, protocols
    extensions = reader.vector(2)
    seen = set()
    while not extensions.done():
        kind = extensions.integer(2)
        payload = extensions.vector(2)
        if kind in seen:
            raise _Malformed()
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            names = payload.vector(2)
            while not names.done():
                nameType = names.integer(1)
                name = names.vector(2).data
                if nameType == 0 and not serverName:
                    serverName = name.decode("ascii").lower()
        elif kind == _EXT_ALPN:
            entries = payload.vector(2)
            found = []
            while not entries.done():
                entry = entries.vector(1).data
                if not entry:
                    raise _Malformed()
                found.append(entry.decode("latin-1"))
            protocols = tuple(found)
    return serverName, protocols


@dataclass(frozen=True)
class TlsInspectorConfig:
    """
    A checked C{TlsInspector} message.
    """

    maxClientHelloSize: int = MAX_CLIENT_HELLO_SIZE
    initialReadBufferSize: int = MAX_CLIENT_HELLO_SIZE
    closeOnParsingErrors: bool = False


class TlsInspectorStats:
    """
    The global C{tls_inspector.*} stats (Envoy roots them per process,
    not per listener).
    """

    def __init__(self, store: Any) -> None:
        scope = store.scope("tls_inspector")
        for name in ("tls_found", "tls_not_found", "sni_found", "sni_not_found",
                     "alpn_found", "alpn_not_found", "client_hello_too_large"):
            setattr(self, name, scope.counter(name))
        self.bytesProcessed = scope.histogram("bytes_processed")


class TlsInspector:
    """
    The listener filter for one connection: waits for the ClientHello,
    then records what it found on the listener-filter callbacks.
    """

    def __init__(self, config: TlsInspectorConfig, stats: TlsInspectorStats) -> None:
        self.config = config
        self.stats = stats
        self.callbacks: Any = None

    def onAccept(self, callbacks: Any) -> FilterStatus:
        """
        Always wait for the client's first bytes.
        """
        self.callbacks = callbacks
        return FilterStatus.STOP_ITERATION

    def maxReadBytes(self) -> int:
        """
        Never stop peeking before L{onData} has decided.
        """
        return self.config.maxClientHelloSize + 1

    def onData(self, peeked: bytes) -> FilterStatus:
        """
        Parse what has been peeked so far.
        """
        result = parseClientHello(peeked, self.config.maxClientHelloSize)
        stats = self.stats
        if result.state is HelloState.NEED_MORE:
            return FilterStatus.STOP_ITERATION
        stats.bytesProcessed.record(result.bytesProcessed)
        if result.state is HelloState.TOO_LARGE:
            stats.client_hello_too_large.inc()
            self.callbacks.continueFilterChain(False)
            return FilterStatus.STOP_ITERATION
        if result.state is HelloState.NOT_TLS:
            stats.tls_not_found.inc()
            if self.config.closeOnParsingErrors:
                self.callbacks.continueFilterChain(False)
                return FilterStatus.STOP_ITERATION
            return FilterStatus.CONTINUE
        stats.tls_found.inc()
        self.callbacks.detectedTransportProtocol = "tls"
        if result.serverName:
            stats.sni_found.inc()
            self.callbacks.requestedServerName = result.serverName
        else:
            stats.sni_not_found.inc()
        if result.applicationProtocols:
            stats.alpn_found.inc()
            self.callbacks.requestedApplicationProtocols = list(result.applicationProtocols)
        else:
            stats.alpn_not_found.inc()
        return FilterStatus.CONTINUE


class TlsInspectorFactory:
    """
    Reads C{TlsInspector} and makes a L{TlsInspector} per connection.
    """

    def parseConfig(self, section: Any, context: Any) -> TlsInspectorConfig:
        """
        Check the C{TlsInspector} message.
        """
        for name in ("enable_ja3_fingerprinting", "enable_ja4_fingerprinting"):
            value = section.raw.get(name)
            if isinstance(value, dict) and set(value) == {"value"}:
                section.raw[name] = value["value"]
            if section.boolean(name):
                section.error("is not supported by pyenvoy yet", name)
        maximum = section.uint32Value("max_client_hello_size", MAX_CLIENT_HELLO_SIZE)
        if maximum is not None and not 256 < maximum <= MAX_CLIENT_HELLO_SIZE:
            section.error(f"must be greater than 256 and at most {MAX_CLIENT_HELLO_SIZE}, "
                          f"got {maximum}", "max_client_hello_size")
            maximum = None
        maximum = maximum or MAX_CLIENT_HELLO_SIZE
        initial = section.uint32Value("initial_read_buffer_size", maximum)
        if initial is not None and not 256 < initial <= 65536:
            section.error(f"must be greater than 256 and at most 65536, got {initial}",
                          "initial_read_buffer_size")
            initial = None
        close = section.boolean("close_connection_on_client_hello_parsing_errors")
        return TlsInspectorConfig(maximum, initial or maximum, close)

    def createFilterFactory(self, config: TlsInspectorConfig, context: Any) -> Any:
        """
        A new L{TlsInspector} per connection, sharing the global stats.
        """
        stats = TlsInspectorStats(context.store)
        return lambda: TlsInspector(config, stats)


factory = TlsInspectorFactory()
