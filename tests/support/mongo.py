"""
MongoDB pieces for integration tests: an nx-27017 server on a free
loopback port, a pyenvoy config with mongo_proxy in front of tcp_proxy,
and a shim that adds OP_COMPRESSED to a server that never offers it.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from typing import Any, Callable

import bson
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from tests.support.net import tcpProxyConfig

MONGO_PROXY = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"

OP_COMPRESSED = 2012
OP_MSG = 2013
_HEADER = struct.Struct("<iiii")


def freePort() -> int:
    """
    A TCP port free on 127.0.0.1 right now.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def startMongo(case: TestCase, timeout: float = 30.0) -> int:
    """
    Start C{nx-27017 --db memory} on a free port, stopped when C{case}
    ends; return the port once it accepts connections.  A server that
    exits at once (its port taken meanwhile) is started again on another.
    C{timeout} bounds the wait for each start.
    """
    exe = shutil.which("nx-27017") or os.path.join(os.path.dirname(sys.executable), "nx-27017")
    case.assertTrue(os.path.exists(exe), "nx-27017 is not installed (pip install nx-27017)")
    # Its own pid file and log: by default every nx-27017 shares
    # /tmp/nx_27017.pid and refuses to start while another one runs.
    workdir = case.mktemp()
    os.makedirs(workdir)
    logPath = os.path.join(workdir, "output.log")
    for attempt in range(3):
        port = freePort()
        with open(logPath, "ab") as output:
            proc = subprocess.Popen(
                [exe, "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
                 "--pid-file", os.path.join(workdir, f"nx-{port}.pid"),
                 "--log-file", os.path.join(workdir, f"nx-{port}.log")],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)

        def stop(proc: subprocess.Popen = proc) -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

        case.addCleanup(stop)
        deadline = reactor.seconds() + timeout
        while proc.poll() is None and reactor.seconds() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return port
            except OSError:
                await deferLater(reactor, 0.05, lambda: None)
        if proc.poll() is None:
            break
    with open(logPath, "rb") as log:
        tail = log.read()[-2000:].decode("utf-8", "replace")
    case.fail(f"nx-27017 did not start:\n{tail}")


def mongoProxyConfig(port: int, statPrefix: str, commands: list[str]) -> dict:
    """
    A bootstrap whose listener "proxy" runs mongo_proxy (C{statPrefix},
    C{commands}) then tcp_proxy to 127.0.0.1:C{port}.
    """
    raw = tcpProxyConfig([port])
    filters = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    filters.insert(0, {"name": "envoy.filters.network.mongo_proxy", "typed_config": {
        "@type": MONGO_PROXY, "stat_prefix": statPrefix, "commands": commands}})
    return raw


def _zstdCompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _zstdDecompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


def _snappyCompress(data: bytes) -> bytes:
    import snappy

    return snappy.compress(data)


def _snappyDecompress(data: bytes) -> bytes:
    import snappy

    return snappy.uncompress(data)


#: name → (compressor id, compress, decompress)
COMPRESSORS: dict[str, tuple[int, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "snappy": (1, _snappyCompress, _snappyDecompress),
    "zlib": (2, zlib.compress, zlib.decompress),
    "zstd": (3, _zstdCompress, _zstdDecompress),
}


class CompressionShim:
    """
    Sans-I/O rewriting for one connection between a client and a server
    that knows no compression: the server's hello/isMaster reply offers
    C{compressor}, compressed requests are inflated for the server, and
    each reply to a compressed request is compressed the same way.

    C{compressedRequests} and C{compressedReplies} count what crossed the
    client side compressed.
    """

    def __init__(self, compressor: str) -> None:
        self.compressor = compressor
        self.compressorId, self.compress, self.decompress = COMPRESSORS[compressor]
        self.helloRequests: set[int] = set()
        self.compressedRequestIds: set[int] = set()
        self.compressedRequests = 0
        self.compressedReplies = 0

    def request(self, frame: bytes) -> bytes:
        """
        A whole request from the client, as the server should get it.
        """
        _, requestId, responseTo, opCode = _HEADER.unpack_from(frame)
        if opCode == OP_COMPRESSED:
            opCode, size, compressorId = struct.unpack_from("<iiB", frame, 16)
            assert compressorId == self.compressorId, compressorId
            inner = self.decompress(frame[25:])
            assert len(inner) == size
            frame = _HEADER.pack(16 + size, requestId, responseTo, opCode) + inner
            self.compressedRequests += 1
            self.compressedRequestIds.add(requestId)
        elif opCode == OP_MSG:
            body = bson.decode(frame[21:21 + _bsonSize(frame, 21)])
            command = next(iter(body), "").lower()
            if command in ("hello", "ismaster") and "compression" in body:
                self.helloRequests.add(requestId)
        return frame

    def reply(self, frame: bytes) -> bytes:
        """
        A whole reply from the server, as the client should get it.
        """
        length, requestId, responseTo, opCode = _HEADER.unpack_from(frame)
        if responseTo in self.helloRequests and opCode == OP_MSG:
            self.helloRequests.discard(responseTo)
            size = _bsonSize(frame, 21)
            body = bson.decode(frame[21:21 + size])
            body["compression"] = [self.compressor]
            payload = frame[16:21] + bson.encode(body) + frame[21 + size:]
            frame = _HEADER.pack(16 + len(payload), requestId, responseTo, opCode) + payload
        elif responseTo in self.compressedRequestIds:
            self.compressedRequestIds.discard(responseTo)
            inner = frame[16:]
            payload = struct.pack("<iiB", opCode, len(inner), self.compressorId) \
                + self.compress(inner)
            frame = _HEADER.pack(16 + len(payload), requestId, responseTo, OP_COMPRESSED) \
                + payload
            self.compressedReplies += 1
        return frame


def _bsonSize(frame: bytes, offset: int) -> int:
    return int(struct.unpack_from("<i", frame, offset)[0])


def _frames(buffer: bytearray) -> list[bytes]:
    """
    Cut the whole messages off the front of C{buffer}.
    """
    out = []
    while len(buffer) >= 4:
        length = struct.unpack_from("<i", buffer)[0]
        if len(buffer) < length:
            break
        out.append(bytes(buffer[:length]))
        del buffer[:length]
    return out


class _ShimClient(portforward.ProxyClient):
    """
    The shim's connection to the server: replies are rewritten on the way back.
    """

    def connectionMade(self) -> None:
        self.buffer = bytearray()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        for frame in _frames(self.buffer):
            self.peer.transport.write(self.peer.shim.reply(frame))


class _ShimClientFactory(portforward.ProxyClientFactory):
    protocol = _ShimClient


class _ShimServer(portforward.ProxyServer):
    """
    The shim's side facing the client: requests are rewritten on the way in.
    """

    clientProtocolFactory = _ShimClientFactory

    def connectionMade(self) -> None:
        self.buffer = bytearray()
        self.shim = CompressionShim(self.factory.compressor)
        self.factory.shims.append(self.shim)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        frames = _frames(self.buffer)
        if frames:
            self.peer.transport.write(b"".join(self.shim.request(f) for f in frames))


def startShim(case: TestCase, mongoPort: int, compressor: str) -> tuple[int, list[Any]]:
    """
    Listen on 127.0.0.1 (port 0) with a L{CompressionShim} per connection
    in front of 127.0.0.1:C{mongoPort}; return the port and the list the
    shims are added to.
    """
    factory = Factory()
    factory.protocol = _ShimServer
    factory.host, factory.port = "127.0.0.1", mongoPort  # type: ignore[attr-defined]
    factory.compressor = compressor  # type: ignore[attr-defined]
    factory.shims = shims = []  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return port.getHost().port, shims
