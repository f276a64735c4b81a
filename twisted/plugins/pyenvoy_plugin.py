"""
pyenvoy's Twisted plugins: the C{twistd pyenvoy} command and the built-in
filters.  Declarations only; each filter's code loads when a config uses it.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from pyenvoy.plugin import ListenerFilter, NetworkFilter, UdpListenerFilter

pyenvoyService = ServiceMaker(
    "pyenvoy", "pyenvoy.tap", "An Envoy-compatible L3/L4 proxy.", "pyenvoy")

tcpProxy = NetworkFilter(
    "envoy.filters.network.tcp_proxy",
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "pyenvoy.filters.tcp_proxy",
    terminal=True,
)

echo = NetworkFilter(
    "envoy.filters.network.echo",
    "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo",
    "pyenvoy.filters.echo",
    terminal=True,
)

mongoProxy = NetworkFilter(
    "envoy.filters.network.mongo_proxy",
    "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy",
    "pyenvoy.filters.mongo_proxy",
)

postgresProxy = NetworkFilter(
    "envoy.filters.network.postgres_proxy",
    "type.googleapis.com/envoy.extensions.filters.network.postgres_proxy.v3alpha.PostgresProxy",
    "pyenvoy.filters.postgres_proxy",
)

redisProxy = NetworkFilter(
    "envoy.filters.network.redis_proxy",
    "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
    "pyenvoy.filters.redis_proxy",
    terminal=True,
)

clientSslAuth = NetworkFilter(
    "envoy.filters.network.client_ssl_auth",
    "type.googleapis.com/envoy.extensions.filters.network.client_ssl_auth.v3.ClientSSLAuth",
    "pyenvoy.filters.client_ssl_auth",
)

udpProxy = UdpListenerFilter(
    "envoy.filters.udp_listener.udp_proxy",
    "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
    "pyenvoy.filters.udp_proxy",
)

tlsInspector = ListenerFilter(
    "envoy.filters.listener.tls_inspector",
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "pyenvoy.filters.tls_inspector",
)

pyenvoyReactor = Reactor(
    "pyenvoy", "pyenvoy.reactor",
    "Twisted's epoll reactor with pyenvoy's shorter path per read event (Linux).")
