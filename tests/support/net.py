"""
In-process pieces for integration tests: a pyenvoy server built from a
config dict, upstream servers and clients, all on real loopback sockets.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from pyenvoy.config import parse
from pyenvoy.server import Server

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def endpoint(port: int, host: str = "127.0.0.1") -> dict:
    """
    One C{lb_endpoints} entry.
    """
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def tcpProxyConfig(ports: list[int], tcpProxy: dict | None = None,
                   cluster: dict | None = None, listener: dict | None = None) -> dict:
    """
    A bootstrap with one tcp_proxy listener ("proxy", port 0) in front of
    cluster "backend" whose endpoints are C{ports} on 127.0.0.1.
    """
    proxy = {"@type": TCP_PROXY, "stat_prefix": "test", "cluster": "backend"}
    proxy.update(tcpProxy or {})
    clusterConfig = {
        "name": "backend", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "backend",
                            "endpoints": [{"lb_endpoints": [endpoint(p) for p in ports]}]},
    }
    clusterConfig.update(cluster or {})
    listenerConfig = {
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                        "typed_config": proxy}]}],
    }
    listenerConfig.update(listener or {})
    return {"static_resources": {"listeners": [listenerConfig], "clusters": [clusterConfig]}}


def startServer(case: TestCase, raw: dict, drainTime: float = 1.0) -> Server:
    """
    Build and start a L{Server} from C{raw} on the global reactor; it is
    stopped when the test ends.
    """
    server = Server(parse(raw), reactor, drainTime=drainTime)
    server.privilegedStartService()
    server.startService()
    case.addCleanup(server.stopService)
    return server


def listenerPort(server: Server, name: str = "proxy") -> int:
    """
    The port a listener of C{server} actually bound.
    """
    for service in server.context.listeners:
        if service.name == name:
            address = service.boundAddress()
            assert address is not None
            return address[1]
    raise KeyError(name)


def listen(case: TestCase, protocolFactory: Callable[[], Protocol]) -> int:
    """
    Serve C{protocolFactory} on 127.0.0.1, port 0, until the test ends;
    return the port.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(protocolFactory), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return port.getHost().port


def listenStalled(case: TestCase) -> tuple[int, list["StalledSink"]]:
    """
    Serve upstreams that stop reading as soon as they are connected;
    return the port and the list their connections join.
    """
    sinks: list[StalledSink] = []
    return listen(case, lambda: StalledSink(sinks)), sinks


class StalledSink(Protocol):
    """
    An upstream that never reads until told to (C{transport.resumeProducing}).
    """

    def __init__(self, sinks: list["StalledSink"]) -> None:
        self.sinks = sinks
        self.lost = False

    def connectionMade(self) -> None:
        self.sinks.append(self)
        self.transport.pauseProducing()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Echoes everything; echoes a half-close too.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    A client that collects what it receives (or hashes it) and fires
    C{self.closed} with itself when the connection ends.  After the
    peer's FIN it closes too, unless C{closeOnEnd} is false (then only
    once its own write side is shut).
    """

    def __init__(self, hashOnly: bool = False, closeOnEnd: bool = True) -> None:
        self.closeOnEnd = closeOnEnd
        self.writeClosed = False
        self.received: list[bytes] = []
        self.count = 0
        self.hasher = hashlib.sha256() if hashOnly else None
        self.closed: Deferred = Deferred()
        self.endStreamSeen = False
        self.reason: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        else:
            self.received.append(data)

    def readConnectionLost(self) -> None:
        self.endStreamSeen = True
        if self.writeClosed or self.closeOnEnd:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.writeClosed = True
        if self.endStreamSeen:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.closed.callback(self)

    def data(self) -> bytes:
        """
        Everything received.
        """
        return b"".join(self.received)


async def connect(port: int, client: Client | None = None) -> Client:
    """
    Connect a L{Client} to 127.0.0.1:C{port}.
    """
    from twisted.internet.endpoints import connectProtocol

    client = client or Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


async def waitFor(predicate: Callable[[], Any], timeout: float = 10.0,
                  step: float = 0.01) -> None:
    """
    Poll C{predicate} on the real reactor every C{step} seconds until it is
    true; fail the test after C{timeout}.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, step, lambda: None)
        waited += step


def stat(server: Server, name: str) -> int:
    """
    The value of a counter or gauge (0 if never created).
    """
    found = server.context.store.get(name)
    return 0 if found is None else found.value
