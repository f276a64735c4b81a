"""
The server's certificates as Envoy's admin reports them: C{/certs}
(C{admin.v3.Certificates}) and the gauge
C{server.days_until_first_cert_expiring}.

Every TLS context counts: each listener filter chain's
C{DownstreamTlsContext} and each cluster's C{UpstreamTlsContext}, as
loaded now (after any reload of their files).  As Envoy, a context shows
its trusted CA (the first certificate of C{trusted_ca}) and the leaf of
its certificate chain.
"""

from __future__ import annotations

import calendar
import ipaddress
from typing import Any, Iterator

from cryptography import x509

#: What Envoy's gauge holds when no context has a certificate.
NO_CERTIFICATE_DAYS = 2**32 - 1

_SECONDS_PER_DAY = 86400


def tlsConfigs(context: Any) -> Iterator[Any]:
    """
    The TLS configs in use: listeners' filter chains, then clusters.
    """
    for service in context.listeners:
        listener = getattr(service, "listener", None)
        for chain in getattr(listener, "chains", ()):
            if chain.tls is not None:
                yield chain.tls.config
    for cluster in context.clusterManager.clusters.values():
        if getattr(cluster, "tls", None) is not None:
            yield cluster.tls.config


def _sourcePath(config: Any, which: str) -> str:
    """
    The file a context's certificate chain (C{"chain"}) or CA (C{"ca"})
    came from, or C{"<inline>"}, as Envoy's C{path}.
    """
    source = config.source if isinstance(config.source, dict) else {}
    common = source.get("common_tls_context") or source.get("commonTlsContext") or {}
    if which == "chain":
        certs = common.get("tls_certificates") or common.get("tlsCertificates") or [{}]
        data = certs[0].get("certificate_chain") or certs[0].get("certificateChain") or {}
    else:
        validation = common.get("validation_context") or common.get("validationContext") or {}
        data = validation.get("trusted_ca") or validation.get("trustedCa") or {}
    return str(data.get("filename") or "<inline>") if isinstance(data, dict) else "<inline>"


class CertificateCache:
    """
    Certificates parsed once per DER blob (a reload brings new blobs).
    """

    def __init__(self) -> None:
        self._parsed: dict[bytes, x509.Certificate] = {}

    def parse(self, der: bytes) -> x509.Certificate:
        cert = self._parsed.get(der)
        if cert is None:
            if len(self._parsed) > 256:
                self._parsed.clear()
            cert = self._parsed[der] = x509.load_der_x509_certificate(der)
        return cert

    def _shown(self, config: Any) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
        """
        The (DER, path) of the CA and of the chain's leaf of C{config}.
        """
        cas = [(config.trustedCa[0], _sourcePath(config, "ca"))] if config.trustedCa else []
        chain = ([(config.certificateChain[0], _sourcePath(config, "chain"))]
                 if config.certificateChain else [])
        return cas, chain

    def details(self, der: bytes, path: str, now: float) -> dict[str, Any]:
        """
        One C{admin.v3.CertificateDetails}, as JSON.
        """
        cert = self.parse(der)
        return {
            "path": path,
            "serial_number": format(cert.serial_number, "x"),
            "subject_alt_names": _sans(cert),
            "days_until_expiration": str(_daysLeft(cert, now)),
            "valid_from": _timestamp(cert.not_valid_before_utc),
            "expiration_time": _timestamp(cert.not_valid_after_utc),
        }

    def report(self, context: Any, now: float) -> dict[str, Any]:
        """
        The C{/certs} body: one entry per TLS context.
        """
        entries = []
        for config in tlsConfigs(context):
            cas, chain = self._shown(config)
            entries.append({
                "ca_cert": [self.details(der, path, now) for der, path in cas],
                "cert_chain": [self.details(der, path, now) for der, path in chain],
            })
        return {"certificates": entries}

    def daysUntilFirstExpiring(self, context: Any, now: float) -> int:
        """
        C{server.days_until_first_cert_expiring}: the fewest whole days any
        shown certificate has left (0 once expired), or
        L{NO_CERTIFICATE_DAYS} without any.
        """
        days = [_daysLeft(self.parse(der), now)
                for config in tlsConfigs(context)
                for group in self._shown(config) for der, _ in group]
        return min(days, default=NO_CERTIFICATE_DAYS)


def _daysLeft(cert: x509.Certificate, now: float) -> int:
    remaining = calendar.timegm(cert.not_valid_after_utc.utctimetuple()) - now
    return max(0, int(remaining // _SECONDS_PER_DAY))


def _timestamp(moment: Any) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sans(cert: x509.Certificate) -> list[dict[str, str]]:
    """
    The certificate's SANs as Envoy's C{SubjectAlternateName} list.
    """
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[dict[str, str]] = []
    for name in names:
        if isinstance(name, x509.DNSName):
            out.append({"dns": name.value})
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.append({"uri": name.value})
        elif isinstance(name, x509.IPAddress) and not isinstance(
                name.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append({"ip_address": str(name.value)})
    return out
