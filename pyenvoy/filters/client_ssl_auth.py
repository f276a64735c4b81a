"""
C{envoy.filters.network.client_ssl_auth}: admit a TLS client only if its
certificate's SHA-256 fingerprint is on a list polled from a REST API.

The list comes from C{GET /v1/certs/list/approved} on a host of
C{auth_api_cluster}, fetched at start and then every C{refresh_delay} plus
a random part of it (as Envoy's C{RestApiFetcher}); a failed fetch keeps
the last good list.  Each TLS connection is held (nothing reaches the
filters after this one, so tcp_proxy does not even connect) until its
handshake is done; then the peer is admitted by the IP allowlist or by its
fingerprint, or closed.  A plaintext connection is counted as
C{auth_no_ssl} and let through, as Envoy does: a TLS-only listener is
what makes TLS mandatory.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.config.bootstrap import ParseContext
from pyenvoy.config.reader import Section
from pyenvoy.interfaces import CloseType, FilterStatus, IReadFilter
from pyenvoy.network.chain_match import parseCidrRanges
from pyenvoy.stream_info import ResponseFlag

log = Logger()

TYPE_URL = ("type.googleapis.com/envoy.extensions.filters.network.client_ssl_auth.v3."
            "ClientSSLAuth")

#: The path Envoy's filter polls.
APPROVED_PATH = "/v1/certs/list/approved"
#: Envoy's request timeout for the auth API.
REQUEST_TIMEOUT = 1.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ClientSslAuthConfig:
    """
    A validated C{ClientSSLAuth} message.
    """

    authApiCluster: str
    statPrefix: str
    refreshDelay: float
    ipWhiteList: tuple[IPNetwork, ...]


# -- the decision (no I/O) ---------------------------------------------------

ALLOW_IP = "auth_ip_allowlist"
ALLOW_DIGEST = "auth_digest_match"
DENY_DIGEST = "auth_digest_no_match"


def decide(remoteIp: str | None, fingerprint: str | None, allowlist: tuple[IPNetwork, ...],
           principals: frozenset[str]) -> str:
    """
    Envoy's verdict for a peer whose TLS handshake is done: the name of the
    stat to count, L{ALLOW_IP}, L{ALLOW_DIGEST} or L{DENY_DIGEST}.

    C{fingerprint} (lower-case hex) is looked up exactly, as Envoy does: an
    upper-case entry in C{principals} never matches.
    """
    if remoteIp is not None and allowlist:
        try:
            address = ipaddress.ip_address(remoteIp)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in allowlist):
            return ALLOW_IP
    if fingerprint and fingerprint in principals:
        return ALLOW_DIGEST
    return DENY_DIGEST


def parsePrincipals(body: bytes) -> frozenset[str]:
    """
    The fingerprints of an auth API answer,
    C{{"certificates": [{"fingerprint_sha256": "<hex>"}, ...]}}, kept
    verbatim (not lowercased) and without empty strings, as Envoy's
    C{AllowedPrincipals}: its size is Envoy's C{total_principals}.

    @raise ValueError: if the body is not that shape.
    """
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("certificates"), list):
        raise ValueError("expected an object with a 'certificates' list")
    found = set()
    for entry in document["certificates"]:
        digest = entry.get("fingerprint_sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise ValueError("a certificate without a string 'fingerprint_sha256'")
        if digest:
            found.add(digest)
    return frozenset(found)


# -- the fetcher (shared by every connection of one configured filter) -------

class AllowedPrincipals:
    """
    The approved fingerprints and the C{auth.clientssl.<stat_prefix>.*}
    stats; polls the auth API while the cluster manager runs.
    """

    def __init__(self, config: ClientSslAuthConfig, context: Any) -> None:
        self.config = config
        self.reactor = context.reactor
        self.clusterManager = context.clusterManager
        scope = context.store.scope(f"auth.clientssl.{config.statPrefix}")
        self.update_success = scope.counter("update_success")
        self.update_failure = scope.counter("update_failure")
        self.auth_no_ssl = scope.counter("auth_no_ssl")
        #: The verdict counters, by L{decide}'s answer.
        self.verdicts = {name: scope.counter(name)
                         for name in (ALLOW_IP, ALLOW_DIGEST, DENY_DIGEST)}
        self.total_principals = scope.gauge("total_principals")
        self.principals: frozenset[str] = frozenset()
        self._rng = random.Random()
        self._timer: Any = None
        self._inFlight: Deferred | None = None
        self._running = False

    def start(self) -> None:
        """
        Fetch now, then keep refreshing.
        """
        if self._running:
            return
        self._running = True
        self._fetch()

    def stop(self) -> None:
        """
        Stop refreshing and abandon a fetch in flight.
        """
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inFlight, self._inFlight = self._inFlight, None
        if inFlight is not None:
            inFlight.cancel()

    def _fetch(self) -> None:
        self._timer = None
        d = Deferred.fromCoroutine(self._update())
        self._inFlight = d
        d.addErrback(lambda f: log.failure("client_ssl_auth update failed", f))
        d.addBoth(self._fetched, d)

    def _fetched(self, _: Any, d: Deferred) -> None:
        if self._inFlight is d:
            self._inFlight = None
        if self._running:
            delay = self.config.refreshDelay
            self._timer = self.reactor.callLater(delay + self._rng.uniform(0, delay),
                                                 self._fetch)

    async def _update(self) -> None:
        body = await self._get()
        if body is None:
            self.update_failure.value += 1
            return
        if body is _NOT_MODIFIED:
            return
        try:
            principals = parsePrincipals(body)
        except (ValueError, AttributeError) as e:
            log.warn("client_ssl_auth {prefix}: bad auth API answer: {error}",
                     prefix=self.config.statPrefix, error=e)
            self.update_failure.value += 1
            return
        self.principals = principals
        self.total_principals.value = len(principals)
        self.update_success.value += 1

    async def _get(self) -> Any:
        """
        The body of C{GET /v1/certs/list/approved} from a host of the auth
        cluster; C{None} on any failure, L{_NOT_MODIFIED} on a 304.
        """
        from twisted.internet.error import ConnectError
        from twisted.web.client import Agent, HTTPConnectionPool, readBody
        from twisted.web.http_headers import Headers

        cluster = self.clusterManager.get(self.config.authApiCluster)
        host = cluster.lb.chooseHost(None) if cluster is not None else None
        if host is None:
            log.warn("client_ssl_auth {prefix}: no host in cluster {cluster}",
                     prefix=self.config.statPrefix, cluster=self.config.authApiCluster)
            return None
        address, port = host.address
        hostPart = f"[{address}]" if ":" in address else address
        url = f"http://{hostPart}:{port}{APPROVED_PATH}".encode("ascii")
        agent = Agent(self.reactor, connectTimeout=REQUEST_TIMEOUT,
                      pool=HTTPConnectionPool(self.reactor, persistent=False))
        headers = Headers({b"Host": [self.config.authApiCluster.encode("utf-8")]})
        try:
            request = agent.request(b"GET", url, headers)
            request.addTimeout(REQUEST_TIMEOUT, self.reactor)
            response = await request
            if response.code == 304:
                response.deliverBody(_Discard())
                return _NOT_MODIFIED
            reading = readBody(response)
            reading.addTimeout(REQUEST_TIMEOUT, self.reactor)
            body = await reading
        except Exception as e:
            if not isinstance(e, ConnectError):
                log.warn("client_ssl_auth {prefix}: auth API request failed: {error!r}",
                         prefix=self.config.statPrefix, error=e)
            return None
        if response.code != 200:
            log.warn("client_ssl_auth {prefix}: auth API answered {code}",
                     prefix=self.config.statPrefix, code=response.code)
            return None
        return body


_NOT_MODIFIED = object()


class _Discard:
    """
    A body consumer that drops everything.
    """

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


# -- the filter ----------------------------------------------------------------

@implementer(IReadFilter)
class ClientSslAuthFilter:
    """
    Holds one connection until its TLS handshake is done, then admits or
    closes it.

    States: waiting (C{verdict} is C{None}) → admitted or refused.
    """

    def __init__(self, allowed: AllowedPrincipals) -> None:
        self.allowed = allowed
        self.verdict: bool | None = None
        self._inNewConnection = False

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        """
        Keep the callbacks.
        """
        self.callbacks = callbacks
        self.connection = callbacks.connection

    def onNewConnection(self) -> FilterStatus:
        """
        Plaintext: count C{auth_no_ssl} and go on.  TLS: stop until the
        handshake is done.
        """
        waitFor = getattr(self.connection, "whenTlsEstablished", None)
        self._inNewConnection = True
        try:
            tls = waitFor is not None and waitFor(self._established)
        finally:
            self._inNewConnection = False
        if not tls:
            self.allowed.auth_no_ssl.value += 1
            self.verdict = True
        return FilterStatus.CONTINUE if self.verdict else FilterStatus.STOP_ITERATION

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Nothing passes before the peer is admitted.
        """
        return FilterStatus.CONTINUE if self.verdict else FilterStatus.STOP_ITERATION

    def _established(self) -> None:
        info = self.connection.streamInfo
        remote = info.downstreamRemoteAddress
        outcome = decide(remote[0] if remote else None, info.tls.get("peerFingerprint256"),
                         self.allowed.config.ipWhiteList, self.allowed.principals)
        self.allowed.verdicts[outcome].value += 1
        if outcome == DENY_DIGEST:
            self.verdict = False
            info.setResponseFlag(ResponseFlag.UPSTREAM_PROTOCOL_ERROR)
            self.connection.close(CloseType.NO_FLUSH, DENY_DIGEST)
            return
        self.verdict = True
        if not self._inNewConnection:
            self.callbacks.continueReading()


# -- config ------------------------------------------------------------------------

class ClientSslAuthFactory:
    """
    Parses C{ClientSSLAuth} configs and builds the per-connection filters.
    """

    def parseConfig(self, section: Section, context: ParseContext) -> ClientSslAuthConfig:
        """
        Validate a C{ClientSSLAuth} C{typed_config}.
        """
        cluster = section.string("auth_api_cluster", required=True, nonEmpty=True)
        if cluster and cluster not in context.clusters:
            section.error(f"unknown cluster {cluster!r} in client ssl auth config",
                          "auth_api_cluster")
        statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
        refresh = section.duration("refresh_delay", 60.0)
        if refresh is not None and refresh < 0.001:
            section.error("must be at least 1ms", "refresh_delay")
            refresh = None
        allowlist = parseCidrRanges(section, "ip_white_list")
        section.finish()
        return ClientSslAuthConfig(authApiCluster=cluster or "", statPrefix=statPrefix,
                                   refreshDelay=refresh or 60.0, ipWhiteList=allowlist)

    def createFilterFactory(self, config: ClientSslAuthConfig, context: Any) -> Any:
        """
        One L{AllowedPrincipals} (and fetcher) per configured filter; a new
        L{ClientSslAuthFilter} per connection.
        """
        allowed = AllowedPrincipals(config, context)
        context.clusterManager.addClient(allowed)
        return lambda: ClientSslAuthFilter(allowed)


factory = ClientSslAuthFactory()
