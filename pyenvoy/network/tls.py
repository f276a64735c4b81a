"""
Downstream TLS termination: Envoy's C{envoy.transport_sockets.tls} with a
C{DownstreamTlsContext}, parsed, checked and turned into a pyOpenSSL context.

Certificates and keys are loaded when the config is read, so a missing
file, bad PEM or a key that does not belong to its certificate stops
start-up with the YAML path; files that change on disk later are read
again for new connections (L{_ReloadingContext}).  Each accepted connection gets a
L{TlsSession}, which makes its C{SSL.Connection}, verifies the peer as
Envoy's default validator does (chain, then SANs, then hash/SPKI pins),
counts the C{ssl.*} stats and fills C{streamInfo.tls} once the handshake
is done, and a L{ServerTlsLayer} that runs OpenSSL over memory BIOs under
the connection's filters (Twisted's C{startTLS} is used for upstream
connections only, with L{ClientTlsSession}).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.config.reader import Problems, Section, dataSourceBytes

log = Logger()

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_TRANSPORT_SOCKET = "envoy.transport_sockets.raw_buffer"
STARTTLS_TRANSPORT_SOCKET = "envoy.transport_sockets.starttls"
STARTTLS_CONFIG = (
    "type.googleapis.com/envoy.extensions.transport_sockets.starttls.v3.StartTlsConfig")
UPSTREAM_STARTTLS_CONFIG = (
    "type.googleapis.com/envoy.extensions.transport_sockets.starttls.v3.UpstreamStartTlsConfig")
RAW_BUFFER_CONFIG = (
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")
DOWNSTREAM_TLS_CONTEXT = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")

#: Envoy's TlsParameters.TlsProtocol names and the OpenSSL versions.
TLS_VERSIONS = {
    "TLSv1_0": SSL.TLS1_VERSION,
    "TLSv1_1": SSL.TLS1_1_VERSION,
    "TLSv1_2": SSL.TLS1_2_VERSION,
    "TLSv1_3": SSL.TLS1_3_VERSION,
}
_VERSION_CHOICES = ("TLS_AUTO",) + tuple(TLS_VERSIONS)

#: Envoy's default server cipher list (for TLS 1.2 and below); Envoy's
#: C{[A|B]} equal-preference groups become plain order here.
DEFAULT_SERVER_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
)

#: Envoy's default key-exchange groups (C{ecdh_curves}), for servers and
#: clients alike; without them OpenSSL would also offer and accept its own
#: defaults (X25519MLKEM768, P-384, X448, ...).
DEFAULT_CURVES = ("X25519", "P-256")

#: OpenSSL's group names as BoringSSL (and so Envoy's C{ssl.curves.*}) spells them.
_CURVE_NAMES = {
    "x25519": "X25519", "prime256v1": "P-256", "secp256r1": "P-256",
    "secp384r1": "P-384", "secp521r1": "P-521", "x448": "X448",
}

SAN_TYPES = ("DNS", "URI", "IP_ADDRESS", "EMAIL")
_MATCHER_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")

_CONTEXT_UNSUPPORTED = (
    "session_ticket_keys", "session_ticket_keys_sds_secret_config",
    "disable_stateless_session_resumption", "disable_stateful_session_resumption",
    "session_timeout", "ocsp_staple_policy", "full_scan_certs_on_sni_mismatch",
    "prefer_client_ciphers", "require_sni",
)
_COMMON_UNSUPPORTED = (
    "tls_certificate_sds_secret_configs", "tls_certificate_provider_instance",
    "tls_certificate_certificate_provider", "tls_certificate_certificate_provider_instance",
    "validation_context_sds_secret_config", "combined_validation_context",
    "validation_context_certificate_provider",
    "validation_context_certificate_provider_instance", "custom_handshaker", "key_log",
    "custom_tls_certificate_selector", "tls_certificate_selector",
)
_CERT_UNSUPPORTED = (
    "password", "pkcs12", "ocsp_staple", "private_key_provider", "watched_directory",
    "signed_certificate_timestamp",
)
_VALIDATION_UNSUPPORTED = (
    "crl", "allow_expired_certificate", "trust_chain_verification",
    "only_verify_leaf_cert_crl", "max_verify_depth", "custom_validator_config",
    "match_subject_alt_names", "ca_certificate_provider_instance", "watched_directory",
    "system_root_certs", "verify_subject_alt_name",
)
_PARAMS_UNSUPPORTED = ("ecdh_curves", "signature_algorithms", "compliance_policies")


@dataclass(frozen=True)
class StringMatch:
    """
    An Envoy C{type.matcher.v3.StringMatcher}.

    @ivar kind: C{exact}, C{prefix}, C{suffix}, C{contains} or C{safe_regex}.
    @ivar ignoreCase: for all kinds but C{safe_regex}, where Envoy ignores it.
    """

    kind: str
    value: str
    ignoreCase: bool = False

    def matches(self, candidate: str, dnsSan: bool = False) -> bool:
        """
        Whether C{candidate} matches.  With C{dnsSan} (a DNS SAN) an C{exact}
        matcher follows Envoy's DNS semantics instead (L{dnsNameMatch}).
        """
        value = self.value
        if self.kind == "safe_regex":
            return re.fullmatch(value, candidate) is not None
        if self.kind == "exact" and dnsSan:
            return dnsNameMatch(value, candidate)
        if self.ignoreCase:
            value, candidate = value.lower(), candidate.lower()
        if self.kind == "exact":
            return candidate == value
        if self.kind == "prefix":
            return candidate.startswith(value)
        if self.kind == "suffix":
            return candidate.endswith(value)
        return value in candidate


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def dnsNameMatch(name: str, pattern: str) -> bool:
    """
    Whether DNS name C{name} matches C{pattern} (a certificate's DNS SAN),
    as Envoy's C{Utility::dnsNameMatch}: ASCII case never matters, and a
    C{*} in the left-most label of C{pattern} only (C{*.example.com},
    C{foo*.example.com}, C{*bar.example.com}) stands for one whole label
    or part of it, never in an A-label (C{xn--}).
    """
    name, pattern = name.translate(_ASCII_LOWER), pattern.translate(_ASCII_LOWER)
    if name == pattern:
        return True
    patternLabel, dot, patternRest = pattern.partition(".")
    nameLabel, nameDot, nameRest = name.partition(".")
    if not dot or not nameDot:
        return False
    if ("*" not in patternLabel or "*" in patternRest
            or patternLabel.startswith("xn--") or nameRest != patternRest):
        return False
    if patternLabel == "*":
        return True
    if patternLabel.count("*") != 1:
        return False
    before, after = patternLabel.split("*")
    return (len(patternLabel) <= len(nameLabel) + 1 and nameLabel.startswith(before)
            and nameLabel.endswith(after))


@dataclass(frozen=True)
class SanMatcher:
    """
    One C{match_typed_subject_alt_names[]} entry.
    """

    sanType: str
    matcher: StringMatch


@dataclass(frozen=True)
class DownstreamTlsConfig:
    """
    A checked C{DownstreamTlsContext}: PEM loaded, fields validated.

    The private key is kept out of C{repr} so it cannot leak into logs.
    """

    certificateChain: tuple[bytes, ...]
    privateKey: bytes = field(repr=False)
    trustedCa: tuple[bytes, ...] | None
    sanMatchers: tuple[SanMatcher, ...]
    certificateHashes: tuple[bytes, ...]
    spkiHashes: tuple[bytes, ...]
    requireClientCertificate: bool
    minVersion: int
    maxVersion: int
    cipherSuites: tuple[str, ...]
    alpnProtocols: tuple[bytes, ...]
    path: str
    #: The files (C{filename} DataSources) this context was loaded from.
    watchedFiles: tuple[str, ...] = ()
    #: The context's YAML (without C{@type}), to read it again on reload.
    source: Any = field(default=None, repr=False, compare=False)
    #: C{envoy.transport_sockets.starttls}: the connection starts in
    #: cleartext and a filter switches it to TLS (L{Connection.startSecureTransport}).
    startTls: bool = False

    @property
    def clientCertificateRequired(self) -> bool:
        """
        As Envoy: a client certificate is mandatory when asked for, or when
        any SAN matcher or pin is configured.
        """
        return bool(self.requireClientCertificate or self.sanMatchers
                    or self.certificateHashes or self.spkiHashes)


# -- parsing ------------------------------------------------------------------

def _dataSource(section: Section | None) -> bytes | None:
    if section is None:
        return None
    found = dataSourceBytes(section)
    return found[0] if found is not None else None


def _watchedFiles(*sources: Any) -> tuple[str, ...]:
    """
    The C{filename}s among the raw DataSource mappings C{sources}.
    """
    names = []
    for source in sources:
        if isinstance(source, dict) and isinstance(source.get("filename"), str):
            names.append(source["filename"])
    return tuple(names)


def _source(section: Section) -> Any:
    """
    A copy of a context's YAML, without the C{@type} already read, to
    parse again when its files change.
    """
    return {k: copy.deepcopy(v) for k, v in section.raw.items() if k != "@type"}


def _loadCertificates(data: bytes, section: Section, name: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        section.error("no PEM certificate found", name)
    return certs


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _publicKey(key: Any) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _parseCertificate(section: Section) -> tuple[tuple[bytes, ...], bytes] | None:
    chainData = _dataSource(section.section("certificate_chain", required=True))
    keyData = _dataSource(section.section("private_key", required=True))
    section.finish(unsupported=_CERT_UNSUPPORTED)
    if chainData is None or keyData is None:
        return None
    certs = _loadCertificates(chainData, section, "certificate_chain")
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError) as e:
        section.error(f"not a usable PEM private key ({e})", "private_key")
        return None
    if not certs:
        return None
    if _publicKey(key) != certs[0].public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        section.error("the private key does not match the certificate", "private_key")
        return None
    return (tuple(_der(c) for c in certs),
            key.private_bytes(Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _parseStringMatcher(section: Section) -> StringMatch | None:
    kind = section.oneOf(*_MATCHER_KINDS)
    ignoreCase = section.boolean("ignore_case")
    match: StringMatch | None = None
    if kind == "safe_regex":
        regex = section.section("safe_regex")
        if regex is not None:
            pattern = regex.string("regex", required=True)
            regex.ignore("google_re2")
            regex.finish()
            if pattern is not None:
                try:
                    re.compile(pattern)
                    match = StringMatch(kind, pattern, ignoreCase)
                except re.error as e:
                    regex.error(f"invalid regex: {e}", "regex")
    elif kind is not None:
        value = section.string(kind)
        if value is not None:
            if kind != "exact" and not value:
                section.error("must not be empty", kind)
            match = StringMatch(kind, value, ignoreCase)
    section.finish()
    return match


def _parseValidation(section: Section) -> tuple[Any, ...]:
    trusted: tuple[bytes, ...] | None = None
    caSection = section.section("trusted_ca")
    caData = _dataSource(caSection)
    if caData is not None:
        certs = _loadCertificates(caData, section, "trusted_ca")
        trusted = tuple(_der(c) for c in certs)
    sans = []
    for sub in section.sections("match_typed_subject_alt_names"):
        sanType = sub.enum("san_type", SAN_TYPES, "", unsupported=("OTHER_NAME",))
        if not sub.has("san_type"):
            sub.error("missing required field 'san_type'")
        matcherSection = sub.section("matcher", required=True)
        sub.ignore("oid")
        sub.finish()
        matcher = _parseStringMatcher(matcherSection) if matcherSection else None
        if sanType and matcher is not None:
            sans.append(SanMatcher(sanType, matcher))
    hashes = []
    for item, path in section.items("verify_certificate_hash"):
        text = item.replace(":", "") if isinstance(item, str) else ""
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            section.problems.add(path, "expected a hex SHA-256 certificate hash "
                                       "(64 hex digits, ':' allowed)")
        else:
            hashes.append(digest)
    spkis = []
    for item, path in section.items("verify_certificate_spki"):
        try:
            digest = base64.b64decode(item, validate=True) if isinstance(item, str) else b""
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            section.problems.add(path, "expected a base64 SHA-256 SPKI hash (44 characters)")
        else:
            spkis.append(digest)
    if sans and caSection is None:
        # Envoy's DefaultCertValidator refuses this for listeners and
        # clusters alike.
        section.error("SAN-based verification of peer certificates without "
                      "trusted CA is insecure and not allowed",
                      "match_typed_subject_alt_names")
    section.finish(unsupported=_VALIDATION_UNSUPPORTED)
    return trusted, tuple(sans), tuple(hashes), tuple(spkis)


def _parseCiphers(section: Section) -> tuple[str, ...]:
    names: list[str] = []
    for item, path in section.items("cipher_suites"):
        if not isinstance(item, str):
            section.problems.add(path, "expected a cipher name")
            continue
        group = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        for name in group.split("|"):
            name = name.strip()
            if not _cipherKnown(name):
                section.problems.add(path, f"unknown cipher suite {name!r} (use OpenSSL "
                                           "names, e.g. 'ECDHE-RSA-AES128-GCM-SHA256')")
            else:
                names.append(name)
    return tuple(names)


def _useIdentity(ctx: SSL.Context, chainDer: Any, keyDer: bytes) -> None:
    """
    Present C{chainDer} (leaf first, DER) with its private key on C{ctx}.

    @raise SSL.Error: if the key does not match the certificate.
    """
    chain = [x509.load_der_x509_certificate(d) for d in chainDer]
    ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    key = serialization.load_der_private_key(keyDer, password=None)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))  # type: ignore[arg-type]
    ctx.check_privatekey()


def _trustCas(ctx: SSL.Context, cas: Any) -> None:
    """
    Trust the DER certificates in C{cas} (if any) for peer verification,
    accepting chains that end at any of them, as Envoy does.
    """
    if not cas:
        return
    store = ctx.get_cert_store()
    assert store is not None
    for der in cas:
        store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(der)))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)


def _setGroups(ctx: SSL.Context, groups: tuple[str, ...] = DEFAULT_CURVES) -> None:
    """
    Limit C{ctx}'s key-exchange groups to C{groups}, in that order of
    preference (pyOpenSSL has no setter: C{SSL_CTX_set1_curves_list} is
    OpenSSL's C{SSL_CTX_set1_groups_list}).

    @raise SSL.Error: if OpenSSL refuses the list.
    """
    names = ":".join(groups).encode("ascii")
    if _lib.SSL_CTX_set1_curves_list(ctx._context, names) != 1:  # type: ignore[attr-defined]
        _raiseErrorQueue(SSL.Error)


def _cipherKnown(name: str) -> bool:
    if not name or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        return False
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.set_cipher_list(name.encode("ascii"))
    except SSL.Error:
        return False
    return True


def _tlsTypedConfig(section: Section, contextType: str, owner: str) -> Section | None:
    """
    Read a C{transport_socket} mapping and return the C{typed_config} of
    a TLS one, checked to be C{contextType}; C{None} for plaintext
    (C{envoy.transport_sockets.raw_buffer}) or when it has errors (they
    are recorded in C{section}'s problems).
    """
    name = section.string("name", required=True)
    typed = section.section("typed_config")
    section.finish()
    if name == RAW_BUFFER_TRANSPORT_SOCKET:
        if typed is not None:
            typed.ignore("@type")
        return None
    if name != TLS_TRANSPORT_SOCKET:
        if name is not None:
            section.error(f"unknown transport socket {name!r}; known: "
                          f"{TLS_TRANSPORT_SOCKET}, {RAW_BUFFER_TRANSPORT_SOCKET}", "name")
        return None
    if typed is None:
        section.error("missing required field 'typed_config'")
        return None
    typeURL = typed.string("@type", required=True)
    if typeURL is not None and typeURL != contextType:
        typed.error(f"{owner} transport socket needs {contextType}, got {typeURL!r}", "@type")
        return None
    return typed


def parseTransportSocket(section: Section) -> DownstreamTlsConfig | None:
    """
    Read a filter chain's C{transport_socket} (see L{_tlsTypedConfig}).
    """
    if section.raw.get("name") == STARTTLS_TRANSPORT_SOCKET:
        return _parseStartTls(section, STARTTLS_CONFIG, parseDownstreamTlsContext)
    typed = _tlsTypedConfig(section, DOWNSTREAM_TLS_CONTEXT, "a listener's")
    return None if typed is None else parseDownstreamTlsContext(typed)


def _parseStartTls(section: Section, configType: str, parseContext: Any) -> Any:
    """
    Read a C{envoy.transport_sockets.starttls} C{StartTlsConfig} (or, for
    a cluster, C{UpstreamStartTlsConfig}): cleartext
    (C{cleartext_socket_config}, a C{RawBuffer}) until a filter asks for
    TLS, then C{tls_socket_config} (read by C{parseContext}).
    """
    section.string("name", required=True)
    typed = section.section("typed_config")
    section.finish()
    if typed is None:
        section.error("missing required field 'typed_config'")
        return None
    typeURL = typed.string("@type", required=True)
    if typeURL is not None and typeURL != configType:
        typed.error(f"this starttls transport socket needs {configType}, "
                    f"got {typeURL!r}", "@type")
        return None
    cleartext = typed.section("cleartext_socket_config")
    if cleartext is not None:
        cleartext.ignore("@type")
        cleartext.finish()
    tls = typed.section("tls_socket_config", required=True)
    typed.finish()
    if tls is None:
        return None
    config = parseContext(tls)
    return None if config is None else replace(config, startTls=True)


def parseDownstreamTlsContext(section: Section) -> DownstreamTlsConfig | None:
    """
    Read and check a C{DownstreamTlsContext} (without its C{@type}).
    """
    before = len(section.problems.errors)
    require = section.boolean("require_client_certificate")
    common = section.section("common_tls_context")
    section.finish(unsupported=_CONTEXT_UNSUPPORTED)
    if common is None:
        section.error("missing required field 'common_tls_context' (with tls_certificates)")
        return None
    loaded = None
    certSections = common.sections("tls_certificates")
    if not certSections:
        common.error("a downstream TLS context needs one entry in tls_certificates")
    elif len(certSections) > 1:
        common.error("more than one certificate (RSA+ECDSA or SNI selection) is not "
                     "supported by pyenvoy yet", "tls_certificates")
    else:
        loaded = _parseCertificate(certSections[0])
    trusted, sans, hashes, spkis = None, (), (), ()
    validation = common.section("validation_context")
    if validation is not None:
        trusted, sans, hashes, spkis = _parseValidation(validation)
    minVersion, maxVersion = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION
    ciphers: tuple[str, ...] = DEFAULT_SERVER_CIPHERS
    params = common.section("tls_params")
    if params is not None:
        low = params.enum("tls_minimum_protocol_version", _VERSION_CHOICES, "TLS_AUTO")
        high = params.enum("tls_maximum_protocol_version", _VERSION_CHOICES, "TLS_AUTO")
        minVersion = TLS_VERSIONS.get(low, minVersion)
        maxVersion = TLS_VERSIONS.get(high, maxVersion)
        if minVersion > maxVersion:
            params.error(f"tls_minimum_protocol_version {low} is above "
                         f"tls_maximum_protocol_version {high}")
        if params.has("cipher_suites"):
            ciphers = _parseCiphers(params)
            if not ciphers and params.raw.get("cipher_suites") == []:
                ciphers = DEFAULT_SERVER_CIPHERS
        params.finish(unsupported=_PARAMS_UNSUPPORTED)
    alpn = []
    for item, path in common.items("alpn_protocols"):
        if isinstance(item, str) and 0 < len(item.encode()) < 256:
            alpn.append(item.encode())
        else:
            common.problems.add(path, "expected a protocol name of 1 to 255 bytes")
    common.finish(unsupported=_COMMON_UNSUPPORTED)
    if loaded is None or len(section.problems.errors) != before:
        return None
    config = DownstreamTlsConfig(
        certificateChain=loaded[0], privateKey=loaded[1], trustedCa=trusted,
        sanMatchers=sans, certificateHashes=hashes, spkiHashes=spkis,
        requireClientCertificate=require, minVersion=minVersion, maxVersion=maxVersion,
        cipherSuites=ciphers, alpnProtocols=tuple(alpn), path=section.path,
        watchedFiles=_watchedFiles(
            certSections[0].raw.get("certificate_chain"),
            certSections[0].raw.get("private_key"),
            validation.raw.get("trusted_ca") if validation is not None else None),
        source=_source(section))
    try:
        buildContext(config)
    except SSL.Error as e:
        section.error(f"OpenSSL refused this TLS context: {_errorText(e)}")
        return None
    return config


# -- the OpenSSL context ------------------------------------------------------

def _errorText(error: Exception) -> str:
    parts = []
    for item in (error.args[0] if error.args and isinstance(error.args[0], list) else []):
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(f"{item[0]}:{item[1]}:{item[2]}")
    return "|".join(parts) or str(error)


class _SessionConnection(SSL.Connection):
    """
    An C{SSL.Connection} that knows its L{TlsSession} (Twisted keeps the
    app data slot for its own protocol).
    """

    session: "TlsSession | None" = None


def _verifyCallback(connection: SSL.Connection, cert: crypto.X509, errno: int,
                    depth: int, ok: int) -> bool:
    session = getattr(connection, "session", None)
    if session is None:
        return bool(ok)
    return session.verify(cert, errno, depth, ok)


def buildContext(config: DownstreamTlsConfig) -> SSL.Context:
    """
    The pyOpenSSL server context for C{config}.

    @raise SSL.Error: if OpenSSL refuses any part of it.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(config.minVersion)
    ctx.set_max_proto_version(config.maxVersion)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(":".join(config.cipherSuites).encode("ascii"))
    _setGroups(ctx)
    _useIdentity(ctx, config.certificateChain, config.privateKey)
    _trustCas(ctx, config.trustedCa)
    if config.trustedCa is not None or config.clientCertificateRequired:
        mode = SSL.VERIFY_PEER
        if config.clientCertificateRequired:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _verifyCallback)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_session_id(hashlib.sha256(config.path.encode()).digest()[:32])
    if config.alpnProtocols:
        server = config.alpnProtocols

        def selectAlpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
            for protocol in server:
                if protocol in offered:
                    return protocol
            return SSL.NO_OVERLAPPING_PROTOCOLS

        ctx.set_alpn_select_callback(selectAlpn)
    return ctx


def _rfc2253(name: x509.Name) -> str:
    return name.rfc4514_string()


def _sans(cert: x509.Certificate) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"DNS": [], "URI": [], "IP_ADDRESS": [], "EMAIL": []}
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return out
    out["DNS"] = list(ext.get_values_for_type(x509.DNSName))
    out["URI"] = list(ext.get_values_for_type(x509.UniformResourceIdentifier))
    out["IP_ADDRESS"] = [str(a) for a in ext.get_values_for_type(x509.IPAddress)]
    out["EMAIL"] = list(ext.get_values_for_type(x509.RFC822Name))
    return out


#: How often (seconds of the reactor's clock) a TLS context's files are
#: checked for changes, at most; the check runs when a connection starts.
RELOAD_CHECK_INTERVAL = 1.0


def fileSignature(name: str) -> tuple[int, int, int] | None:
    """
    C{(mtime_ns, size, inode)} of C{name} (following symlinks, so a
    Kubernetes-style C{..data} swap counts), or C{None} if it cannot be
    stat'ed.  Any difference means the file changed.
    """
    try:
        st = os.stat(name)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _localFacts(chain: tuple[bytes, ...]) -> dict[str, Any]:
    if not chain:
        return {}
    own = x509.load_der_x509_certificate(chain[0])
    sans = _sans(own)
    return {
        "localSubject": _rfc2253(own.subject),
        "localUriSans": sans["URI"], "localDnsSans": sans["DNS"],
        "localIpSans": sans["IP_ADDRESS"], "localEmailSans": sans["EMAIL"],
    }


class _ReloadingContext:
    """
    Reload a TLS context when the files it was loaded from change on disk.

    Without SDS, Envoy needs a restart for new certificates; here the
    files' L{fileSignature}s are compared when a connection starts, at
    most once per L{RELOAD_CHECK_INTERVAL} of the injected reactor's
    clock.  On a change the whole context is read again from its YAML
    (chain, key matching the certificate, CA bundle) and, if it is good,
    becomes the one used for new connections (C{ssl_context_update_by_sds});
    if not, the old one stays, a line names the files and the problem and
    C{key_rotation_failed} is counted.  Open connections keep the context
    they started with.
    """

    config: Any
    context: SSL.Context
    localFacts: dict[str, Any]
    _kind = "TLS context"

    def _watch(self, reactor: Any, factoryScope: Any) -> None:
        self._reactor = reactor
        self._factoryScope = factoryScope
        self._signatures = self._readSignatures()
        self._lastCheck = reactor.seconds() if reactor is not None else 0.0
        self._updated: Any = None
        self._rotationFailed: Any = None
        if factoryScope is not None and self.config.watchedFiles:
            self._updated = factoryScope.counter("ssl_context_update_by_sds")
            self._rotationFailed = factoryScope.counter("key_rotation_failed")

    def _readSignatures(self) -> tuple[Any, ...]:
        return tuple(fileSignature(name) for name in self.config.watchedFiles)

    def maybeReload(self) -> bool:
        """
        Check the files if the interval has passed; reload if they changed.
        Return whether a new context was taken.
        """
        if (self._reactor is None or self._updated is None
                or self.config.source is None):
            return False
        now = self._reactor.seconds()
        if now - self._lastCheck < RELOAD_CHECK_INTERVAL:
            return False
        self._lastCheck = now
        signatures = self._readSignatures()
        if signatures == self._signatures:
            return False
        changed = [name for name, old, new in zip(
            self.config.watchedFiles, self._signatures, signatures) if old != new]
        # Remember what was seen even on failure: a bad file is reported
        # once, and tried again when it changes again.
        self._signatures = signatures
        return self.reload(changed)

    def reload(self, changed: list[str] | None = None) -> bool:
        """
        Read the context again from its YAML; take it if it is good, else
        keep the current one and count C{key_rotation_failed}.
        """
        files = ", ".join(changed or self.config.watchedFiles)
        problems = Problems()
        config = self._parse(Section(copy.deepcopy(self.config.source),
                                     self.config.path, problems))
        context = None
        reason = "; ".join(str(e) for e in problems.errors) or "invalid"
        if config is not None:
            try:
                context = self._build(config)
            except SSL.Error as e:
                reason = f"OpenSSL refused it: {_errorText(e)}"
        if context is None or config is None:
            if self._rotationFailed is not None:
                self._rotationFailed.inc()
            log.error("{kind} at {path}: changed file(s) {files} refused, keeping the "
                      "previous certificate: {reason}", kind=self._kind,
                      path=self.config.path, files=files, reason=reason)
            return False
        self.config = config
        self.context = context
        self.localFacts = _localFacts(config.certificateChain)
        self._signatures = self._readSignatures()
        if self._updated is not None:
            self._updated.inc()
        log.info("{kind} at {path}: reloaded from {files}", kind=self._kind,
                 path=config.path, files=files)
        return True

    def _parse(self, section: Section) -> Any:
        raise NotImplementedError()

    def _build(self, config: Any) -> SSL.Context:
        raise NotImplementedError()


class ServerTls(_ReloadingContext):
    """
    The TLS side of one filter chain: the OpenSSL context, the listener's
    C{ssl.*} stats and what is known of our own certificate.

    With a C{reactor} and a C{factoryScope}
    (C{listener.<address>.server_ssl_socket_factory}), certificate, key
    and CA files are reloaded when they change (see L{_ReloadingContext}).
    """

    _kind = "downstream TLS context"

    def __init__(self, config: DownstreamTlsConfig, scope: Any, reactor: Any = None,
                 factoryScope: Any = None) -> None:
        self.config = config
        self.context = buildContext(config)
        self.scope = scope
        self.stats = {name: scope.counter(name) for name in (
            "connection_error", "handshake", "session_reused", "no_certificate",
            "fail_verify_no_cert", "fail_verify_error", "fail_verify_san",
            "fail_verify_cert_hash")}
        self.localFacts = _localFacts(config.certificateChain)
        #: C{(version, cipher, group)} → the counters a handshake with
        #: that outcome adds one to (see L{TlsSession.handshakeCompleted}).
        self.negotiatedCounters: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._watch(reactor, factoryScope)

    def _parse(self, section: Section) -> Any:
        return parseDownstreamTlsContext(section)

    def _build(self, config: Any) -> SSL.Context:
        return buildContext(config)

    def newSession(self, streamInfo: Any) -> "TlsSession":
        """
        The per-connection state to hand to C{transport.startTLS}; first
        take changed certificate files into account (L{maybeReload}).
        """
        self.maybeReload()
        return TlsSession(self, streamInfo)

    def counter(self, name: str) -> Any:
        """
        The C{ssl.<name>} counter.
        """
        counter = self.stats.get(name)
        if counter is None:
            counter = self.stats[name] = self.scope.counter(name)
        return counter

    def count(self, name: str) -> None:
        """
        Add one to C{ssl.<name>}.
        """
        self.counter(name).inc()


@implementer(IOpenSSLServerConnectionCreator)
class TlsSession:
    """
    One connection's TLS: makes its C{SSL.Connection}, verifies the peer,
    counts stats, and fills C{streamInfo.tls}.

    States: handshaking → C{established} or failed (C{failure} set by the
    verifier, or an OpenSSL error seen at close).
    """

    def __init__(self, server: ServerTls, streamInfo: Any) -> None:
        self.server = server
        self.streamInfo = streamInfo
        #: The config and context this connection started with; a reload
        #: of the server's files does not change them.
        self.config = server.config
        self.context = server.context
        self.localFacts = server.localFacts
        self.connection: SSL.Connection | None = None
        self.established = False
        self.failure: str | None = None
        self._leafChecked = False

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        See L{IOpenSSLServerConnectionCreator}.
        """
        connection = _SessionConnection(self.context, None)
        connection.session = self
        self.connection = connection
        return connection

    # -- verification, as Envoy's DefaultCertValidator --------------------

    def _fail(self, stat: str, detail: str) -> bool:
        self.failure = detail
        self.server.count(stat)
        return False

    def verify(self, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        """
        OpenSSL's verify callback: chain errors count C{fail_verify_error}
        (only when C{trusted_ca} is set); the leaf is then checked against
        the SAN matchers and the hash/SPKI pins.
        """
        config = self.config
        if self.failure is not None:
            return False
        if not ok and config.trustedCa is not None:
            return self._fail("fail_verify_error",
                              f"verify cert failed: X509 error {errno} at depth {depth}")
        if depth != 0 or self._leafChecked:
            return True
        self._leafChecked = True
        leaf = cert.to_cryptography()
        if config.sanMatchers:
            sans = _sans(leaf)
            if not any(m.matcher.matches(value, dnsSan=m.sanType == "DNS")
                       for m in config.sanMatchers for value in sans[m.sanType]):
                return self._fail("fail_verify_san", "verify cert failed: SAN matcher")
        if config.certificateHashes or config.spkiHashes:
            digest = hashlib.sha256(_der(leaf)).digest()
            spki = hashlib.sha256(leaf.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()
            if digest not in config.certificateHashes and spki not in config.spkiHashes:
                return self._fail("fail_verify_cert_hash", "verify cert failed: cert hash and spki")
        return True

    # -- outcome ------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        """
        Count the handshake and record what was negotiated.
        """
        connection = self.connection
        assert connection is not None
        self.established = True
        server = self.server
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name()
        group = _groupName(connection)
        # handshake, versions.*, ciphers.*, curves.*: the counters for one
        # outcome are looked up once per listener, not per connection.
        negotiated = (version, cipher, group)
        counters = server.negotiatedCounters.get(negotiated)
        if counters is None:
            counters = server.negotiatedCounters[negotiated] = tuple(
                server.counter(name) for name in (
                    "handshake", f"versions.{version}",
                    f"ciphers.{cipher}" if cipher else None,
                    f"curves.{group}" if group else None) if name)
        for counter in counters:
            counter.value += 1
        if _sessionReused(connection):
            server.count("session_reused")
        facts: dict[str, Any] = {"version": version, "cipher": cipher}
        facts.update(self.localFacts)
        if _HAVE_SESSION_ID:
            session = connection.get_session()
            if session is not None:
                facts["sessionId"] = _sessionId(session)
        peer = connection.get_peer_certificate()
        if peer is None:
            server.count("no_certificate")
        else:
            leaf = peer.to_cryptography()
            der = _der(leaf)
            sans = _sans(leaf)
            facts.update({
                "peerSubject": _rfc2253(leaf.subject),
                "peerIssuer": _rfc2253(leaf.issuer),
                "peerSerial": format(leaf.serial_number, "x"),
                "peerFingerprint256": hashlib.sha256(der).hexdigest(),
                "peerFingerprint1": hashlib.sha1(der).hexdigest(),
                "peerUriSans": sans["URI"], "peerDnsSans": sans["DNS"],
                "peerIpSans": sans["IP_ADDRESS"], "peerEmailSans": sans["EMAIL"],
                "peerCertValidFrom": leaf.not_valid_before_utc.timestamp(),
                "peerCertValidTo": leaf.not_valid_after_utc.timestamp(),
            })
        self.streamInfo.tls = facts

    def connectionLost(self, reason: Any) -> None:
        """
        The connection ended; if the handshake never finished, count why
        (as Envoy's C{drainErrorQueue}) and record the failure reason.  A
        TLS error after the handshake (a bad record, a fatal alert) counts
        C{connection_error} too, as Envoy's reads and writes drain it.
        """
        error = getattr(reason, "value", None)
        if self.established:
            if isinstance(error, SSL.Error):
                self.server.count("connection_error")
                entries = [e for e in (error.args[0] if error.args and isinstance(
                    error.args[0], list) else []) if isinstance(e, tuple) and len(e) == 3]
                facts = dict(self.streamInfo.tls or {})
                facts["failureReason"] = _failureReason(entries, None)
                self.streamInfo.tls = facts
            return
        if not isinstance(error, SSL.Error):
            if self.failure is not None:
                self.streamInfo.tls = {"failureReason": _failureReason([], self.failure)}
            return
        entries = [e for e in (error.args[0] if error.args and isinstance(error.args[0], list)
                               else []) if isinstance(e, tuple) and len(e) == 3]
        reasons = [str(e[2]).lower() for e in entries]
        if any("peer did not return a certificate" in r for r in reasons):
            self.server.count("fail_verify_no_cert")
        elif self.failure is None and not any("certificate verify failed" in r for r in reasons):
            self.server.count("connection_error")
        self.streamInfo.tls = {"failureReason": _failureReason(entries, self.failure)}


def _failureReason(entries: list[tuple[Any, ...]], detail: str | None) -> str:
    """
    C{%DOWNSTREAM_TRANSPORT_FAILURE_REASON%}, shaped as Envoy's
    C{TLS_error:|lib:func:reason[:detail]:TLS_error_end} (without the
    numeric error code BoringSSL puts first).
    """
    parts = "".join(f"|{lib}:{func}:{why}" for lib, func, why in entries)
    if detail:
        parts += f":{detail}" if parts else f"|{detail}"
    return f"TLS_error:{parts}:TLS_error_end"


def _groupName(connection: SSL.Connection) -> str | None:
    try:
        name = connection.get_group_name()
    except Exception:
        return None
    if not name:
        return None
    return _CURVE_NAMES.get(name, name)


try:
    from OpenSSL._util import exception_from_error_queue as _raiseErrorQueue
    from OpenSSL._util import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - pyOpenSSL always has it today
    _ffi = _lib = None
    _raiseErrorQueue = None  # type: ignore[assignment]
#: Whether pyOpenSSL's bindings expose C{SSL_SESSION_get_id} (the
#: session id for C{%DOWNSTREAM_TLS_SESSION_ID%}); recent ones do not.
_HAVE_SESSION_ID = _lib is not None and hasattr(_lib, "SSL_SESSION_get_id")


def _sessionReused(connection: SSL.Connection) -> bool:
    try:
        return bool(_lib.SSL_session_reused(connection._ssl))  # type: ignore[attr-defined]
    except Exception:
        return False


def _sessionId(session: Any) -> str | None:
    try:
        length = _ffi.new("unsigned int *")
        raw = _lib.SSL_SESSION_get_id(session._session, length)
        return bytes(_ffi.buffer(raw, length[0])).hex() or None
    except Exception:
        return None


#: Plaintext asked of OpenSSL per C{SSL_read} (one record holds at most
#: 16 KiB), and ciphertext taken per C{bio_read}, on the public-API path.
_RECV_SIZE = 65536
_OUTPUT_SIZE = 262144
#: The direct path reads all records (and all output) into one scratch
#: buffer, copied out once: no allocation, exception or join per record.
#: One buffer serves every connection: the reactor is single-threaded and
#: no Python code runs between filling it and copying it out.
_SCRATCH_SIZE = 262144


def _directBindings() -> tuple[Any, Any, Any] | None:
    """
    C{(ffi, lib, scratch)} when pyOpenSSL's cffi bindings offer what the
    direct path needs (C{SSL_read}, C{BIO_read}, C{BIO_write} and the
    connection's private C{_ssl}, C{_into_ssl}, C{_from_ssl} and
    C{_raise_ssl_error}), else C{None}: the public API is used then.
    """
    if _lib is None or _ffi is None:
        return None
    if not all(hasattr(_lib, name) for name in ("SSL_read", "BIO_read", "BIO_write")):
        return None
    if not hasattr(SSL.Connection, "_raise_ssl_error"):
        return None
    return _ffi, _lib, _ffi.new("char[]", _SCRATCH_SIZE)


class ServerTlsLayer:
    """
    The server side of one connection's TLS over memory BIOs, without
    I/O: ciphertext in (L{receive}), plaintext out; plaintext in
    (L{write}), ciphertext out (L{output}).  The connection that owns it
    moves the bytes.

    It replaces Twisted's C{startTLS} (C{TLSMemoryBIOProtocol}) for
    downstream connections: no wrapping protocol, interface declarations
    or producer membrane per connection, one delivery per socket read
    instead of one per TLS record, and the handshake's flights written at
    once rather than on the next writable event.

    States: handshaking → C{established} → C{peerClosed} (close_notify
    read) and/or C{closed} (our close_notify sent).  Plaintext written
    while handshaking is held and sent when the handshake completes.

    @ivar session: the L{TlsSession} (verification, stats, facts).
    @ivar ssl: its C{SSL.Connection}.
    """

    #: See L{_directBindings}; a test may set C{None} to use the public API.
    direct = _directBindings()
    #: What L{receive} and L{write} raise (so that callers need not import
    #: pyOpenSSL).
    Error = SSL.Error

    def __init__(self, session: "TlsSession") -> None:
        self.session = session
        ssl = session.serverConnectionForTLS(None)
        ssl.set_accept_state()
        self.ssl = ssl
        self.established = False
        self.peerClosed = False
        self.closed = False
        #: Plaintext written before the handshake completed.
        self.pending: list[bytes] = []

    def receive(self, data: bytes) -> tuple[bool, bytes]:
        """
        Feed ciphertext read from the socket.

        @return: C{(handshakeDone, plaintext)}: whether the handshake
            completed with these bytes, and the application bytes they
            carried (all records at once).  C{peerClosed} is set when the
            peer's close_notify was read.
        @raise SSL.Error: on a failed handshake or a corrupt stream; the
            alert to send is then in L{output}.
        """
        ssl = self.ssl
        direct = self.direct
        if direct is not None and data:
            if direct[1].BIO_write(ssl._into_ssl, data, len(data)) != len(data):
                raise SSL.Error([("pyenvoy", "receive", "memory BIO refused the bytes")])
        else:
            ssl.bio_write(data)
        done = False
        if not self.established:
            try:
                ssl.do_handshake()
            except SSL.WantReadError:
                return False, b""
            self.established = done = True
        if direct is not None:
            return done, self._readDirect(direct)
        return done, self._readPublic()

    def _readDirect(self, direct: tuple[Any, Any, Any]) -> bytes:
        ffi, lib, scratch = direct
        ssl = self.ssl
        raw = ssl._ssl
        read = lib.SSL_read
        chunks: list[bytes] | None = None
        total = 0
        while True:
            result = read(raw, scratch + total, _SCRATCH_SIZE - total)
            if result <= 0:
                break
            total += result
            if total == _SCRATCH_SIZE:
                chunks = (chunks or []) + [ffi.buffer(scratch, total)[:]]
                total = 0
        plaintext = ffi.buffer(scratch, total)[:] if total else b""
        if chunks is not None:
            plaintext = b"".join(chunks + [plaintext])
        try:
            ssl._raise_ssl_error(raw, result)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.peerClosed = True
        return plaintext

    def _readPublic(self) -> bytes:
        recv = self.ssl.recv
        try:
            first = recv(_RECV_SIZE)
        except SSL.WantReadError:
            return b""
        except SSL.ZeroReturnError:
            self.peerClosed = True
            return b""
        chunks = None
        try:
            while True:
                chunk = recv(_RECV_SIZE)
                if chunks is None:
                    chunks = [first, chunk]
                else:
                    chunks.append(chunk)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.peerClosed = True
        return first if chunks is None else b"".join(chunks)

    def output(self) -> bytes:
        """
        The ciphertext waiting to be sent (handshake flights, records,
        alerts), or C{b""}.
        """
        direct = self.direct
        if direct is not None:
            ffi, lib, scratch = direct
            bio = self.ssl._from_ssl
            total = lib.BIO_read(bio, scratch, _SCRATCH_SIZE)
            if total <= 0:
                return b""
            data = ffi.buffer(scratch, total)[:]
            if total < _SCRATCH_SIZE:
                return data
            chunks = [data]
            while True:
                total = lib.BIO_read(bio, scratch, _SCRATCH_SIZE)
                if total <= 0:
                    return b"".join(chunks)
                chunks.append(ffi.buffer(scratch, total)[:])
        read = self.ssl.bio_read
        try:
            data = read(_OUTPUT_SIZE)
        except SSL.WantReadError:
            return b""
        if len(data) < _OUTPUT_SIZE:
            return data
        chunks = [data]
        try:
            while True:
                chunks.append(read(_OUTPUT_SIZE))
        except SSL.WantReadError:
            pass
        return b"".join(chunks)

    def write(self, data: bytes) -> bytes:
        """
        Encrypt C{data}; return the ciphertext to send.  Before the
        handshake completes (or after our close_notify) nothing is sent:
        the bytes are held (or dropped).
        """
        if not self.established:
            self.pending.append(data)
            return b""
        if self.closed:
            return b""
        send = self.ssl.send
        sent = send(data)
        if sent < len(data):
            view = memoryview(data)
            while sent < len(data):
                sent += send(view[sent:])
        return self.output()

    def flushPending(self) -> bytes:
        """
        Once established: encrypt what was written during the handshake.
        """
        pending, self.pending = self.pending, []
        return b"".join(self.write(data) for data in pending)

    def closeNotify(self) -> bytes:
        """
        End our direction: the close_notify alert to send (once).
        """
        if self.closed or not self.established:
            return b""
        self.closed = True
        try:
            self.ssl.shutdown()
        except SSL.Error:
            pass
        return self.output()


# -- upstream TLS (a cluster's transport_socket) --------------------------------

UPSTREAM_TLS_CONTEXT = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")

_UPSTREAM_UNSUPPORTED = (
    "auto_host_sni", "auto_sni_san_validation", "allow_renegotiation",
    "enforce_rsa_key_usage",
)


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """
    A checked C{UpstreamTlsContext}: what a cluster's connections present
    and how they verify the upstream's certificate.

    Verification is off unless C{trustedCa} is set (as Envoy); the client
    certificate (for mutual TLS) is optional.  The private key is kept out
    of C{repr}.
    """

    certificateChain: tuple[bytes, ...]
    privateKey: bytes | None = field(repr=False)
    trustedCa: tuple[bytes, ...] | None
    sanMatchers: tuple[SanMatcher, ...]
    certificateHashes: tuple[bytes, ...]
    spkiHashes: tuple[bytes, ...]
    sni: str | None
    minVersion: int
    maxVersion: int
    cipherSuites: tuple[str, ...]
    alpnProtocols: tuple[bytes, ...]
    path: str
    #: The files (C{filename} DataSources) this context was loaded from.
    watchedFiles: tuple[str, ...] = ()
    #: The context's YAML (without C{@type}), to read it again on reload.
    source: Any = field(default=None, repr=False, compare=False)
    #: C{envoy.transport_sockets.starttls}: connections start in cleartext
    #: and a filter switches them to TLS.
    startTls: bool = False


def parseUpstreamTransportSocket(section: Section) -> UpstreamTlsConfig | None:
    """
    Read a cluster's C{transport_socket} (see L{_tlsTypedConfig}).
    """
    if section.raw.get("name") == STARTTLS_TRANSPORT_SOCKET:
        return _parseStartTls(section, UPSTREAM_STARTTLS_CONFIG, parseUpstreamTlsContext)
    typed = _tlsTypedConfig(section, UPSTREAM_TLS_CONTEXT, "a cluster's")
    return None if typed is None else parseUpstreamTlsContext(typed)


def parseUpstreamTlsContext(section: Section) -> UpstreamTlsConfig | None:
    """
    Read and check an C{UpstreamTlsContext} (without its C{@type}).
    """
    before = len(section.problems.errors)
    sni = section.string("sni")
    if sni is not None and len(sni.encode("utf-8")) > 255:
        section.error("must be at most 255 bytes", "sni")
    if section.has("max_session_keys"):
        # Sessions are never resumed upstream, which is max_session_keys: 0.
        section.uint32Value("max_session_keys", 1, minimum=0)
    common = section.section("common_tls_context")
    section.finish(unsupported=_UPSTREAM_UNSUPPORTED)
    chain: tuple[bytes, ...] = ()
    key: bytes | None = None
    trusted, sans, hashes, spkis = None, (), (), ()
    minVersion, maxVersion = SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION
    ciphers: tuple[str, ...] = DEFAULT_SERVER_CIPHERS
    alpn: list[bytes] = []
    watched: list[Any] = []
    if common is not None:
        certSections = common.sections("tls_certificates")
        for certSection in certSections[:1]:
            watched += [certSection.raw.get("certificate_chain"),
                        certSection.raw.get("private_key")]
        if len(certSections) > 1:
            common.error("an upstream TLS context takes at most one client certificate",
                         "tls_certificates")
        elif certSections:
            loaded = _parseCertificate(certSections[0])
            if loaded is not None:
                chain, key = loaded
        validation = common.section("validation_context")
        if validation is not None:
            watched.append(validation.raw.get("trusted_ca"))
            trusted, sans, hashes, spkis = _parseValidation(validation)
        params = common.section("tls_params")
        if params is not None:
            low = params.enum("tls_minimum_protocol_version", _VERSION_CHOICES, "TLS_AUTO")
            high = params.enum("tls_maximum_protocol_version", _VERSION_CHOICES, "TLS_AUTO")
            minVersion = TLS_VERSIONS.get(low, minVersion)
            maxVersion = TLS_VERSIONS.get(high, maxVersion)
            if minVersion > maxVersion:
                params.error(f"tls_minimum_protocol_version {low} is above "
                             f"tls_maximum_protocol_version {high}")
            if params.has("cipher_suites"):
                ciphers = _parseCiphers(params) or DEFAULT_SERVER_CIPHERS
            params.finish(unsupported=_PARAMS_UNSUPPORTED)
        for item, path in common.items("alpn_protocols"):
            if isinstance(item, str) and 0 < len(item.encode()) < 256:
                alpn.append(item.encode())
            else:
                common.problems.add(path, "expected a protocol name of 1 to 255 bytes")
        common.finish(unsupported=_COMMON_UNSUPPORTED)
    if len(section.problems.errors) != before:
        return None
    config = UpstreamTlsConfig(
        certificateChain=chain, privateKey=key, trustedCa=trusted, sanMatchers=sans,
        certificateHashes=hashes, spkiHashes=spkis, sni=sni or None,
        minVersion=minVersion, maxVersion=maxVersion, cipherSuites=ciphers,
        alpnProtocols=tuple(alpn), path=section.path,
        watchedFiles=_watchedFiles(*watched), source=_source(section))
    try:
        buildClientContext(config)
    except SSL.Error as e:
        section.error(f"OpenSSL refused this TLS context: {_errorText(e)}")
        return None
    return config


def buildClientContext(config: UpstreamTlsConfig) -> SSL.Context:
    """
    The pyOpenSSL client context for C{config}.

    @raise SSL.Error: if OpenSSL refuses any part of it.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(config.minVersion)
    ctx.set_max_proto_version(config.maxVersion)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    ctx.set_cipher_list(":".join(config.cipherSuites).encode("ascii"))
    _setGroups(ctx)
    if config.certificateChain and config.privateKey is not None:
        _useIdentity(ctx, config.certificateChain, config.privateKey)
    _trustCas(ctx, config.trustedCa)
    if config.trustedCa is not None or config.certificateHashes or config.spkiHashes:
        ctx.set_verify(SSL.VERIFY_PEER, _verifyCallback)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if config.alpnProtocols:
        ctx.set_alpn_protos(list(config.alpnProtocols))
    return ctx


class ClientTls(_ReloadingContext):
    """
    The TLS side of one cluster: the OpenSSL client context and the
    cluster's C{cluster.<name>.ssl.*} stats.

    With a C{reactor} and a C{factoryScope}
    (C{cluster.<name>.client_ssl_socket_factory}), client certificate,
    key and CA files are reloaded when they change (see
    L{_ReloadingContext}).
    """

    _kind = "upstream TLS context"

    def __init__(self, config: UpstreamTlsConfig, scope: Any, reactor: Any = None,
                 factoryScope: Any = None) -> None:
        self.config = config
        self.context = buildClientContext(config)
        self.scope = scope
        self.stats = {name: scope.counter(name) for name in (
            "connection_error", "handshake", "session_reused", "no_certificate",
            "fail_verify_no_cert", "fail_verify_error", "fail_verify_san",
            "fail_verify_cert_hash")}
        self.localFacts: dict[str, Any] = _localFacts(config.certificateChain)
        self.negotiatedCounters: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._watch(reactor, factoryScope)

    def _parse(self, section: Section) -> Any:
        return parseUpstreamTlsContext(section)

    def _build(self, config: Any) -> SSL.Context:
        return buildClientContext(config)

    def newSession(self, owner: Any) -> "ClientTlsSession":
        """
        The per-connection state to hand to C{transport.startTLS}; what was
        negotiated lands in C{owner.tls}.  Changed certificate files are
        taken into account first (L{maybeReload}).
        """
        self.maybeReload()
        return ClientTlsSession(self, owner)

    counter = ServerTls.counter
    count = ServerTls.count


@implementer(IOpenSSLClientConnectionCreator)
class ClientTlsSession(TlsSession):
    """
    One upstream connection's TLS: sends SNI and ALPN, verifies the
    upstream's certificate and counts stats as L{TlsSession} does for
    downstream connections.
    """

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        See L{IOpenSSLClientConnectionCreator}.
        """
        connection = _SessionConnection(self.context, None)
        connection.session = self
        config = self.config
        if config.sni:
            connection.set_tlsext_host_name(config.sni.encode("idna"))
        connection.set_connect_state()
        self.connection = connection
        return connection


def sendCloseNotify(transport: Any) -> None:
    """
    End our direction of an upstream TLS connection: send close_notify but
    keep the socket's write side open, because Twisted's TLS layer closes
    a half-closed socket re-entrantly when the peer answers with its own
    close_notify.  Before the handshake is done (or with application data
    still queued) close it whole instead.
    """
    tlsProtocol = transport.protocol
    connection = getattr(tlsProtocol, "_tlsConnection", None)
    if (connection is None or not getattr(tlsProtocol, "_handshakeDone", False)
            or getattr(tlsProtocol, "_appSendBuffer", None)):
        transport.loseConnection()
        return
    try:
        connection.shutdown()
    except SSL.Error:
        pass
    tlsProtocol._flushSendBIO()
