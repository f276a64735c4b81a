"""
Envoy-compatible access logs: C{access_log[]} config, command-operator
formatting (text and JSON) and the file, stdout and stderr sinks.

A format is compiled once, at config time, into literal text and operator
objects; writing a log line walks that list.  What each operator prints for
an L3/L4 connection follows Envoy's C{source/common/formatter} (see
C{docs/access_log.md} for the table and the differences).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from twisted.logger import Logger

from pyenvoy.config.reader import Section, dataSourceText, describe
from pyenvoy.stream_info import RESPONSE_FLAG_LONG, RESPONSE_FLAG_ORDER, StreamInfo

log = Logger()

__all__ = [
    "DEFAULT_FORMAT", "FormatError", "AccessLogError", "TextFormatter", "JsonFormatter",
    "compileTextFormat", "compileJsonFormat", "AccessLogConfig", "AccessLogger",
    "parseAccessLogs", "reopenAll", "closeAll", "KNOWN_OPERATORS",
]

#: Envoy's default access log format (C{SubstitutionFormatUtils::DEFAULT_FORMAT}).
#: For a TCP connection the HTTP fields print C{-} and C{%RESPONSE_CODE%} C{0}.
DEFAULT_FORMAT = (
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n"
)

_UNSET = "-"

FILE_NAME = "envoy.access_loggers.file"
STDOUT_NAME = "envoy.access_loggers.stdout"
STDERR_NAME = "envoy.access_loggers.stderr"

_FILE_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_STDERR_TYPE = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

_KIND_BY_TYPE = {_FILE_TYPE: "file", _STDOUT_TYPE: "stdout", _STDERR_TYPE: "stderr"}
_KIND_BY_NAME = {FILE_NAME: "file", STDOUT_NAME: "stdout", STDERR_NAME: "stderr"}
_NAME_BY_KIND = {v: k for k, v in _KIND_BY_NAME.items()}

#: Envoy access loggers pyenvoy does not implement, by type and by name.
_ENVOY_TYPES = (
    "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
    "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
    "envoy.extensions.access_loggers.fluentd.v3.FluentdAccessLogConfig",
    "envoy.extensions.access_loggers.wasm.v3.WasmAccessLog",
    "envoy.extensions.access_loggers.dynamic_modules.v3.DynamicModuleAccessLog",
)
_ENVOY_NAMES = (
    "envoy.access_loggers.http_grpc", "envoy.access_loggers.tcp_grpc",
    "envoy.access_loggers.open_telemetry", "envoy.access_loggers.fluentd",
    "envoy.access_loggers.wasm", "envoy.access_loggers.dynamic_modules",
)


class FormatError(ValueError):
    """
    A format string or JSON format that Envoy would reject.

    @ivar path: where in a JSON format the problem is (keys and list
        indexes), empty for a text format.
    """

    def __init__(self, message: str, path: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = tuple(path)


class AccessLogError(Exception):
    """
    An access log file could not be opened (Envoy refuses to start then).
    """


# --------------------------------------------------------------------------
# Time formatting (START_TIME and friends)

# One strftime-like specifier; Envoy's own (%s, %f, %Nf) and absl's
# (%E#S, %E*S, %E#f, %E*f, %Ez, %E*z, %E4Y) first, then anything strftime knows.
_TIME_SPEC = re.compile(
    r"%(?:(?P<percent>%)|(?P<epoch>s)|(?P<fw>[1-9]?)f|E(?P<sw>[0-9*])S|E(?P<ffw>[0-9*])f"
    r"|E(?P<zs>\*?)z|(?P<y4>E4Y)|(?P<other>[-_0^#]*[0-9]*[EO]?[A-Za-z+]))"
)
_TIME_NEWLINE = re.compile(r"%[-_0^#]*[1-9]*(E|O)?n")
_DEFAULT_TIME = "%Y-%m-%dT%H:%M:%E3SZ"
_DEFAULT_LOCAL_TIME = "%Y-%m-%dT%H:%M:%E3S%z"


def _splitTime(t: float) -> tuple[int, int]:
    """
    Whole seconds and nanoseconds of an epoch time, taking the digits of
    the float's shortest repr so that C{.123} prints as C{123} and not
    C{122999906}; to the microsecond, as Envoy's clock (finer digits of a
    float are noise).
    """
    text = repr(float(t))
    if t >= 0 and "e" not in text and "n" not in text:
        whole, _, frac = text.partition(".")
        return int(whole), int((frac + "000000")[:6]) * 1000
    secs = int(t // 1)
    return secs, int(round((t - secs) * 1e6)) % 1_000_000 * 1000


def _offset(seconds: int, withColon: bool, withSeconds: bool) -> str:
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    sep = ":" if withColon else ""
    out = f"{sign}{hours:02d}{sep}{minutes:02d}"
    return out + f"{sep}{secs:02d}" if withSeconds else out


class _TimeFormat:
    """
    A compiled C{START_TIME}-style format: strftime, plus Envoy's C{%s},
    C{%f}, C{%1f}-C{%9f} and absl's C{%E#S}, C{%E*S}, C{%E#f}, C{%E*f},
    C{%Ez}, C{%E*z}, C{%E4Y}.
    """

    def __init__(self, fmt: str, local: bool) -> None:
        if _TIME_NEWLINE.search(fmt):
            raise FormatError("Invalid header configuration. Format string contains newline.")
        self.local = local
        self.parts: list[tuple[str, Any]] = []
        strf: list[str] = []
        pos = 0
        while pos < len(fmt):
            if fmt[pos] != "%":
                nxt = fmt.find("%", pos)
                nxt = len(fmt) if nxt < 0 else nxt
                strf.append(fmt[pos:nxt])
                pos = nxt
                continue
            match = _TIME_SPEC.match(fmt, pos)
            if match is None:
                strf.append("%%")
                pos += 1
                continue
            pos = match.end()
            if match.group("percent") or match.group("other"):
                strf.append(match.group(0))
                continue
            if strf:
                self.parts.append(("strf", "".join(strf)))
                strf = []
            if match.group("epoch"):
                self.parts.append(("epoch", None))
            elif match.group("fw") is not None:
                self.parts.append(("frac", int(match.group("fw") or 9)))
            elif match.group("sw") is not None:
                width = match.group("sw")
                self.parts.append(("secfrac", None if width == "*" else int(width)))
            elif match.group("ffw") is not None:
                width = match.group("ffw")
                self.parts.append(("fracall" if width == "*" else "frac",
                                   None if width == "*" else int(width)))
            elif match.group("zs") is not None:
                self.parts.append(("offset", bool(match.group("zs"))))
            else:
                self.parts.append(("year4", None))
        if strf:
            self.parts.append(("strf", "".join(strf)))

    def format(self, t: float) -> str:
        """
        Render epoch time C{t}.
        """
        secs, nanos = _splitTime(t)
        tm = time.localtime(secs) if self.local else time.gmtime(secs)
        out = []
        for kind, arg in self.parts:
            if kind == "strf":
                out.append(time.strftime(arg, tm))
            elif kind == "epoch":
                out.append(str(secs))
            elif kind == "frac":
                out.append(f"{nanos:09d}"[:arg])
            elif kind == "fracall":
                out.append(f"{nanos:09d}".rstrip("0") or "0")
            elif kind == "secfrac":
                digits = f"{nanos:09d}"
                digits = digits.rstrip("0") if arg is None else digits[:arg]
                out.append(f"{tm.tm_sec:02d}" + (f".{digits}" if digits else ""))
            elif kind == "offset":
                out.append(_offset(tm.tm_gmtoff or 0, True, arg))
            else:
                out.append(f"{tm.tm_year:04d}")
        return "".join(out)


# --------------------------------------------------------------------------
# Operators

Extractor = Callable[[StreamInfo, float], Any]

_COMMAND_ONLY = 0
_PARAMS_OPTIONAL = 1
_PARAMS_REQUIRED = 2
_LENGTH_ALLOWED = 4


def _toText(value: Any) -> str:
    """
    An operator's value as text: strings as they are, the rest as JSON.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _jsonText(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


class _Operator:
    """
    One compiled command operator, e.g. C{%BYTES_SENT%}.

    C{extract} gives the typed value (C{None} when unset); L{text} is what a
    text format prints, L{typed} what a JSON format puts in its field.
    """

    __slots__ = ("command", "_extract", "_maxLength", "_toText", "_truncateStructured",
                 "_truncateTyped")

    def __init__(self, command: str, extract: Extractor, maxLength: int | None = None,
                 toText: Callable[[Any], str] = _toText, truncateStructured: bool = True,
                 truncateTyped: bool = True) -> None:
        self.command = command
        self._extract = extract
        self._maxLength = maxLength
        self._toText = toText
        self._truncateStructured = truncateStructured
        self._truncateTyped = truncateTyped

    def text(self, info: StreamInfo, now: float) -> str | None:
        """
        The value as text, or C{None} when unset.
        """
        value = self._extract(info, now)
        if value is None:
            return None
        text = self._toText(value)
        if self._maxLength is not None and (
                self._truncateStructured or not isinstance(value, (dict, list))):
            text = text[:self._maxLength]
        return text

    def typed(self, info: StreamInfo, now: float) -> Any:
        """
        The value for a JSON format: number, string, boolean, object, list
        or C{None} (null).
        """
        value = self._extract(info, now)
        if self._maxLength is not None and self._truncateTyped and isinstance(value, str):
            value = value[:self._maxLength]
        return value


def _const(value: Any) -> Extractor:
    return lambda info, now: value


def _formatAddress(address: Any) -> str:
    if isinstance(address, str):
        return address
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addressOp(getter: Callable[[StreamInfo], Any], mode: str, param: str
               ) -> Callable[[StreamInfo, float], Any]:
    """
    An extractor for an address operator: C{mode} is C{"full"} (ip:port),
    C{"host"} (no port, optionally masked to C{param} bits) or C{"port"}.
    """
    if mode == "full":
        def full(info: StreamInfo, now: float) -> Any:
            address = getter(info)
            return None if address is None else _formatAddress(address)
        return full
    if mode == "port":
        def port(info: StreamInfo, now: float) -> Any:
            address = getter(info)
            if address is None or isinstance(address, str):
                return None
            return int(address[1])
        return port
    mask: int | None = None
    if param:
        if not param.isdigit() or int(param) > 128:
            raise FormatError(f"Invalid mask prefix length: {param}; must be 0-32 for IPv4, "
                              "0-128 for IPv6")
        mask = int(param)

    def host(info: StreamInfo, now: float) -> Any:
        address = getter(info)
        if address is None:
            return None
        if isinstance(address, str):
            return address
        if mask is None:
            return address[0]
        try:
            return str(ipaddress.ip_network(f"{address[0]}/{mask}", strict=False))
        except ValueError:
            return None
    return host


def _downstreamRemote(info: StreamInfo) -> Any:
    return info.downstreamRemoteAddress


def _downstreamLocal(info: StreamInfo) -> Any:
    return info.downstreamLocalAddress


def _upstreamHost(info: StreamInfo) -> Any:
    return info.upstreamHost


def _upstreamLocal(info: StreamInfo) -> Any:
    return info.upstreamLocalAddress


#: address operator families: name prefix -> (getter, params allowed on _WITHOUT_PORT)
_ADDRESS_FAMILIES = {
    "DOWNSTREAM_REMOTE": _downstreamRemote,
    "DOWNSTREAM_DIRECT_REMOTE": _downstreamRemote,
    "DOWNSTREAM_LOCAL": _downstreamLocal,
    "DOWNSTREAM_DIRECT_LOCAL": _downstreamLocal,
    "UPSTREAM_LOCAL": _upstreamLocal,
    "UPSTREAM_REMOTE": _upstreamHost,
}


def _tls(key: str, spaces: bool = False) -> Extractor:
    """
    An extractor for C{streamInfo.tls[key]}: lists are joined with
    commas, and empty values are unset (as Envoy does).
    """
    def extract(info: StreamInfo, now: float) -> Any:
        value = info.tls.get(key) if info.tls else None
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if value is None or value == "":
            return None
        value = str(value)
        return value.replace(" ", "_") if spaces else value
    return extract


def _nonEmpty(getter: Callable[[StreamInfo], Any], spaces: bool = False) -> Extractor:
    def extract(info: StreamInfo, now: float) -> Any:
        value = getter(info)
        if not value:
            return None
        return value.replace(" ", "_") if spaces else value
    return extract


def _responseFlagsLong(info: StreamInfo, now: float) -> str:
    flags = [RESPONSE_FLAG_LONG[f] for f in RESPONSE_FLAG_ORDER if f in info.responseFlags]
    return ",".join(flags) if flags else _UNSET


def _upstreamWireSent(info: StreamInfo, now: float) -> int:
    return info.bytesReceived if info.upstreamLocalAddress is not None else 0


def _upstreamWireReceived(info: StreamInfo, now: float) -> int:
    return info.bytesSent if info.upstreamLocalAddress is not None else 0


def _hostNameWithoutPort(info: StreamInfo, now: float) -> Any:
    address = info.upstreamHost
    if address is None:
        return None
    return address if isinstance(address, str) else address[0]


def _sanitizeHostname(name: str) -> str:
    """
    Envoy's C{StringUtil::sanitizeInvalidHostname}: characters other than
    letters, digits, C{.} and C{-} become C{_}, and the result is marked.
    """
    clean = re.sub(r"[^A-Za-z0-9.\-]", "_", name)
    return clean if clean == name else f"invalid:{clean}"


def _requestedServerName(info: StreamInfo, now: float) -> Any:
    name = info.requestedServerName
    return _sanitizeHostname(name) if name else None


#: COMMAND_ONLY operators with a plain extractor.
_SIMPLE: dict[str, Extractor] = {
    "BYTES_RECEIVED": lambda info, now: info.bytesReceived,
    "BYTES_SENT": lambda info, now: info.bytesSent,
    "DOWNSTREAM_WIRE_BYTES_RECEIVED": lambda info, now: info.bytesReceived,
    "DOWNSTREAM_WIRE_BYTES_SENT": lambda info, now: info.bytesSent,
    "UPSTREAM_WIRE_BYTES_SENT": _upstreamWireSent,
    "UPSTREAM_WIRE_BYTES_RECEIVED": _upstreamWireReceived,
    "DURATION": lambda info, now: info.durationMs(),
    "RESPONSE_CODE": _const(0),
    "RESPONSE_FLAGS": lambda info, now: info.responseFlagsShort(),
    "RESPONSE_FLAGS_LONG": _responseFlagsLong,
    "CONNECTION_ID": lambda info, now: info.connectionId,
    "CONNECTION_TERMINATION_DETAILS": _nonEmpty(lambda i: i.connectionTerminationDetails),
    "UPSTREAM_HOST": _addressOp(_upstreamHost, "full", ""),
    "UPSTREAM_HOST_NAME": _addressOp(_upstreamHost, "full", ""),
    "UPSTREAM_HOST_NAME_WITHOUT_PORT": _hostNameWithoutPort,
    "UPSTREAM_CLUSTER": _nonEmpty(lambda i: i.upstreamCluster),
    "UPSTREAM_CLUSTER_RAW": _nonEmpty(lambda i: i.upstreamCluster),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _nonEmpty(
        lambda i: i.upstreamTransportFailureReason, spaces=True),
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON": _tls("failureReason", spaces=True),
    "DOWNSTREAM_TLS_VERSION": _tls("version"),
    "DOWNSTREAM_TLS_CIPHER": _tls("cipher"),
    "DOWNSTREAM_TLS_SESSION_ID": _tls("sessionId"),
    "DOWNSTREAM_PEER_SUBJECT": _tls("peerSubject"),
    "DOWNSTREAM_PEER_ISSUER": _tls("peerIssuer"),
    "DOWNSTREAM_PEER_SERIAL": _tls("peerSerial"),
    "DOWNSTREAM_PEER_FINGERPRINT_256": _tls("peerFingerprint256"),
    "DOWNSTREAM_PEER_FINGERPRINT_1": _tls("peerFingerprint1"),
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256": _tls("peerChainFingerprints256"),
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1": _tls("peerChainFingerprints1"),
    "DOWNSTREAM_PEER_CHAIN_SERIALS": _tls("peerChainSerials"),
    "DOWNSTREAM_PEER_CERT": _tls("peerCert"),
    "DOWNSTREAM_PEER_URI_SAN": _tls("peerUriSans"),
    "DOWNSTREAM_PEER_DNS_SAN": _tls("peerDnsSans"),
    "DOWNSTREAM_PEER_IP_SAN": _tls("peerIpSans"),
    "DOWNSTREAM_PEER_EMAIL_SAN": _tls("peerEmailSans"),
    "DOWNSTREAM_PEER_OTHERNAME_SAN": _tls("peerOthernameSans"),
    "DOWNSTREAM_LOCAL_SUBJECT": _tls("localSubject"),
    "DOWNSTREAM_LOCAL_URI_SAN": _tls("localUriSans"),
    "DOWNSTREAM_LOCAL_DNS_SAN": _tls("localDnsSans"),
    "DOWNSTREAM_LOCAL_IP_SAN": _tls("localIpSans"),
    "DOWNSTREAM_LOCAL_EMAIL_SAN": _tls("localEmailSans"),
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN": _tls("localOthernameSans"),
    "TLS_JA3_FINGERPRINT": _tls("ja3"),
    "TLS_JA4_FINGERPRINT": _tls("ja4"),
    "UNIQUE_ID": lambda info, now: str(uuid.uuid4()),
    # HTTP-only or not implemented by Envoy for TCP: what Envoy prints then.
    "PROTOCOL": _const(None),
    "UPSTREAM_PROTOCOL": _const(None),
    "REQUEST_DURATION": _const(None),
    "REQUEST_TX_DURATION": _const(None),
    "RESPONSE_DURATION": _const(None),
    "RESPONSE_TX_DURATION": _const(None),
    "ROUNDTRIP_DURATION": _const(None),
    "ROUTE_NAME": _const(None),
    "VIRTUAL_CLUSTER_NAME": _const(None),
    "GRPC_STATUS_NUMBER": _const(None),
    "TRACE_ID": _const(None),
    "LOCAL_REPLY_BODY": _const(""),
    "CUSTOM_FLAGS": _const(""),
    "REQUEST_HEADERS_BYTES": _const(0),
    "RESPONSE_HEADERS_BYTES": _const(0),
    "RESPONSE_TRAILERS_BYTES": _const(0),
    "UPSTREAM_HEADER_BYTES_SENT": _const(0),
    "UPSTREAM_HEADER_BYTES_RECEIVED": _const(0),
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT": _const(0),
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED": _const(0),
    "DOWNSTREAM_HEADER_BYTES_SENT": _const(0),
    "DOWNSTREAM_HEADER_BYTES_RECEIVED": _const(0),
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT": _const(0),
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED": _const(0),
    "BYTES_RETRANSMITTED": _const(0),
    "PACKETS_RETRANSMITTED": _const(0),
}

for _prefix, _getter in _ADDRESS_FAMILIES.items():
    _SIMPLE[f"{_prefix}_ADDRESS"] = _addressOp(_getter, "full", "")
    _SIMPLE[f"{_prefix}_PORT"] = _addressOp(_getter, "port", "")
del _prefix, _getter

#: Operators Envoy has that pyenvoy cannot render yet (config error).
_NOT_YET = frozenset((
    "UPSTREAM_METADATA", "CLUSTER_METADATA", "METADATA", "CEL", "TYPED_CEL", "COALESCE",
    "UPSTREAM_CONNECTION_ID", "UPSTREAM_REQUEST_ATTEMPT_COUNT", "STREAM_ID",
    "UPSTREAM_TLS_VERSION", "UPSTREAM_TLS_CIPHER", "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_SUBJECT", "UPSTREAM_PEER_ISSUER", "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_CERT_V_START", "UPSTREAM_PEER_CERT_V_END", "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_DNS_SAN", "UPSTREAM_PEER_IP_SAN", "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_DNS_SAN", "UPSTREAM_LOCAL_IP_SAN", "FILTER_CHAIN_NAME",
    "ACCESS_LOG_TYPE", "DOWNSTREAM_HANDSHAKE_DURATION",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION", "DOWNSTREAM_LOCAL_CLOSE_REASON",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE", "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID", "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
))


def _timeOp(getter: Callable[[StreamInfo, float], float | None], local: bool
            ) -> Callable[[str, int | None], Extractor]:
    def make(param: str, maxLength: int | None) -> Extractor:
        fmt = _TimeFormat(param or (_DEFAULT_LOCAL_TIME if local else _DEFAULT_TIME), local)

        def extract(info: StreamInfo, now: float) -> Any:
            when = getter(info, now)
            return None if when is None else fmt.format(when)
        return extract
    return make


def _tlsTime(key: str) -> Callable[[StreamInfo, float], float | None]:
    def getter(info: StreamInfo, now: float) -> float | None:
        value = info.tls.get(key) if info.tls else None
        return None if value is None else float(value)
    return getter


def _headerOp(param: str, maxLength: int | None) -> Extractor:
    if param.count("?") > 1:
        raise FormatError(f"More than 1 alternative header specified in token: {param}")
    return _const(None)


def _commonDuration(param: str, maxLength: int | None) -> Extractor:
    parts = param.split(":")
    if len(parts) not in (2, 3):
        raise FormatError(f"Invalid common duration configuration: {param}.")
    if len(parts) == 3 and parts[2] not in ("ms", "us", "ns"):
        raise FormatError(f"Invalid common duration precision: {parts[2]}.")
    return _const(None)


def _metadata(param: str, maxLength: int | None) -> Extractor:
    namespace, *path = param.split(":")

    def extract(info: StreamInfo, now: float) -> Any:
        value: Any = info.dynamicMetadata.get(namespace)
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return extract


def _environment(param: str, maxLength: int | None) -> Extractor:
    value = os.environ.get(param)
    if value is None:
        return _const(_UNSET)
    return _const(value[:maxLength] if maxLength is not None else value)


def _hostname(param: str, maxLength: int | None) -> Extractor:
    try:
        name: str | None = socket.gethostname()
    except OSError:
        name = None
    return _const(name)


def _filterState(param: str, maxLength: int | None) -> _Operator:
    key, _, rest = param.partition(":")
    serialize, _, field = rest.partition(":")
    if not key:
        raise FormatError("Invalid filter state configuration, key cannot be empty.")
    serialize = serialize or "TYPED"
    if serialize not in ("PLAIN", "TYPED", "FIELD"):
        raise FormatError("Invalid filter state serialize type, only support PLAIN/TYPED/FIELD.")
    if (serialize == "FIELD") != bool(field):
        raise FormatError("Invalid filter state serialize type, FIELD should be used with "
                          "the field name.")
    if serialize == "TYPED":
        def typed(info: StreamInfo, now: float) -> Any:
            return info.filterState.get(key)
        return _Operator("FILTER_STATE", typed, maxLength, toText=_jsonText, truncateTyped=False)

    def plain(info: StreamInfo, now: float) -> Any:
        value = info.filterState.get(key)
        if serialize == "FIELD":
            if not isinstance(value, dict):
                return None
            value = value.get(field)
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                return None
        if value is None:
            return None
        return _toText(value)
    return _Operator("FILTER_STATE", plain, maxLength)


def _mask(getter: Callable[[StreamInfo], Any]) -> Callable[[str, int | None], Extractor]:
    return lambda param, maxLength: _addressOp(getter, "host", param)


#: Operators with parameters: name -> (syntax flags, factory).  A factory
#: returns an extractor, or a ready L{_Operator}.
_WITH_PARAMS: dict[str, tuple[int, Callable[[str, int | None], Any]]] = {
    "START_TIME": (_PARAMS_OPTIONAL, _timeOp(lambda info, now: info.startTime, False)),
    "START_TIME_LOCAL": (_PARAMS_OPTIONAL, _timeOp(lambda info, now: info.startTime, True)),
    "EMIT_TIME": (_PARAMS_OPTIONAL, _timeOp(lambda info, now: now, False)),
    "EMIT_TIME_LOCAL": (_PARAMS_OPTIONAL, _timeOp(lambda info, now: now, True)),
    "DOWNSTREAM_PEER_CERT_V_START": (_PARAMS_OPTIONAL,
                                     _timeOp(_tlsTime("peerCertValidFrom"), False)),
    "DOWNSTREAM_PEER_CERT_V_END": (_PARAMS_OPTIONAL,
                                   _timeOp(_tlsTime("peerCertValidTo"), False)),
    "REQUESTED_SERVER_NAME": (_PARAMS_OPTIONAL, lambda p, m: _requestedServerName),
    "RESPONSE_CODE_DETAILS": (_PARAMS_OPTIONAL, lambda p, m: _const(None)),
    "GRPC_STATUS": (_PARAMS_OPTIONAL, lambda p, m: _const(None)),
    "DYNAMIC_METADATA": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _metadata),
    "FILTER_STATE": (_PARAMS_OPTIONAL | _LENGTH_ALLOWED, _filterState),
    "UPSTREAM_FILTER_STATE": (_PARAMS_OPTIONAL | _LENGTH_ALLOWED, lambda p, m: _const(None)),
    "ENVIRONMENT": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _environment),
    "HOSTNAME": (_COMMAND_ONLY, _hostname),
    "COMMON_DURATION": (_PARAMS_REQUIRED, _commonDuration),
    "REQ": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "RESP": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "TRAILER": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "REQUEST_HEADER": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "RESPONSE_HEADER": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "RESPONSE_TRAILER": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "REQ_WITHOUT_QUERY": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, _headerOp),
    "QUERY_PARAM": (_PARAMS_REQUIRED | _LENGTH_ALLOWED, lambda p, m: _const(None)),
    "PATH": (_PARAMS_OPTIONAL | _LENGTH_ALLOWED, lambda p, m: _const(None)),
}

for _prefix, _getter in _ADDRESS_FAMILIES.items():
    _WITH_PARAMS[f"{_prefix}_ADDRESS_WITHOUT_PORT"] = (_PARAMS_OPTIONAL, _mask(_getter))
del _prefix, _getter

#: Every operator name pyenvoy renders.
KNOWN_OPERATORS = frozenset(_SIMPLE) | frozenset(_WITH_PARAMS)


def _makeOperator(command: str, param: str, maxLength: int | None) -> _Operator:
    """
    Build the operator for C{%COMMAND(param):maxLength%}, checking its
    syntax as Envoy's C{CommandSyntaxChecker} does.

    @raise FormatError: for unknown operators and bad syntax.
    """
    if command in _SIMPLE:
        flags = _COMMAND_ONLY
    elif command in _WITH_PARAMS:
        flags = _WITH_PARAMS[command][0]
    elif command in _NOT_YET:
        raise FormatError(f"command operator %{command}% is not supported by pyenvoy yet")
    else:
        raise FormatError(f"Not supported field in StreamInfo: {command}")
    if flags == _COMMAND_ONLY and (param or maxLength is not None):
        raise FormatError(f"{command} does not take any parameters or length")
    if flags & _PARAMS_REQUIRED and not param:
        raise FormatError(f"{command} requires parameters")
    if not flags & _LENGTH_ALLOWED and maxLength is not None:
        raise FormatError(f"{command} does not allow length to be specified.")
    if command in _SIMPLE:
        return _Operator(command, _SIMPLE[command])
    made = _WITH_PARAMS[command][1](param, maxLength)
    if isinstance(made, _Operator):
        return made
    structured = command != "DYNAMIC_METADATA"
    return _Operator(command, made, maxLength, truncateStructured=structured,
                     truncateTyped=structured)


# %COMMAND(SUBCOMMAND):LENGTH% -- the same grammar as Envoy's commandWithArgsRegex.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%")

def _parseTemplate(fmt: str) -> list[Any]:
    """
    Split a format string into literal strings and L{_Operator}s.  C{%%}
    is a literal C{%}.

    @raise FormatError: as Envoy's C{SubstitutionFormatParser::parse}.
    """
    parts: list[Any] = []
    literal: list[str] = []
    pos = 0
    while pos < len(fmt):
        if fmt[pos] != "%":
            nxt = fmt.find("%", pos)
            nxt = len(fmt) if nxt < 0 else nxt
            literal.append(fmt[pos:nxt])
            pos = nxt
            continue
        if fmt.startswith("%%", pos):
            literal.append("%")
            pos += 2
            continue
        match = _COMMAND.match(fmt, pos)
        if match is None:
            raise FormatError(f"Incorrect configuration: {fmt}. Couldn't find valid command "
                              f"at position {pos}")
        if literal:
            parts.append("".join(literal))
            literal = []
        length = match.group(3)
        parts.append(_makeOperator(match.group(1), match.group(2) or "",
                                   int(length) if length is not None else None))
        pos = match.end()
    if literal or not parts:
        parts.append("".join(literal))
    return parts


# --------------------------------------------------------------------------
# Formatters

class TextFormatter:
    """
    A compiled text format (C{text_format_source}, C{format}): the line is
    printed as given; Envoy adds no newline, so formats end with C{\\n}.

    @ivar source: the format string.
    @ivar omitEmptyValues: unset values print as nothing instead of C{-}.
    """

    def __init__(self, source: str, omitEmptyValues: bool = False) -> None:
        self.source = source
        self.omitEmptyValues = omitEmptyValues
        self._parts = _parseTemplate(source)
        self._empty = "" if omitEmptyValues else _UNSET

    def format(self, streamInfo: StreamInfo, now: float | None = None) -> str:
        """
        One log line for C{streamInfo}; C{now} (epoch seconds) is for
        C{%EMIT_TIME%}, the current time if not given.
        """
        if now is None:
            now = time.time()
        out = []
        for part in self._parts:
            if part.__class__ is str:
                out.append(part)
            else:
                text = part.text(streamInfo, now)
                out.append(self._empty if text is None else text)
        return "".join(out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextFormatter):
            return NotImplemented
        return (self.source, self.omitEmptyValues) == (other.source, other.omitEmptyValues)

    def __hash__(self) -> int:
        return hash((TextFormatter, self.source, self.omitEmptyValues))

    def __repr__(self) -> str:
        return f"TextFormatter({self.source!r}, omitEmptyValues={self.omitEmptyValues})"


def _compileJson(value: Any, path: tuple[str | int, ...]) -> tuple[Any, ...]:
    """
    Compile one JSON format value into a node of the tree L{_renderJson}
    walks.
    """
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("const", value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
            value = int(value)
        return ("const", value)
    if isinstance(value, str):
        if "%" not in value:
            return ("const", value)
        try:
            parts = _parseTemplate(value)
        except FormatError as e:
            raise FormatError(e.message, path) from None
        if len(parts) == 1:
            if isinstance(parts[0], str):
                return ("const", parts[0])
            return ("op", parts[0])
        return ("str", parts)
    if isinstance(value, dict):
        fields = []
        for key in sorted(value, key=str):
            if not isinstance(key, str):
                raise FormatError(f"keys must be strings, got {key!r}", path)
            fields.append((key, _compileJson(value[key], path + (key,))))
        return ("map", fields)
    if isinstance(value, list):
        return ("list", [_compileJson(v, path + (i,)) for i, v in enumerate(value)])
    raise FormatError(f"unsupported value {value!r} in a JSON format", path)


def _renderJson(node: tuple[Any, ...], info: StreamInfo, now: float, omit: bool
                ) -> tuple[bool, Any]:
    """
    The value of one compiled node, and whether it is kept (with
    C{omit_empty_values}, unset values and objects left empty are dropped).
    """
    kind = node[0]
    if kind == "const":
        return True, node[1]
    if kind == "op":
        value = node[1].typed(info, now)
        return (not (omit and value is None)), value
    if kind == "str":
        empty = "" if omit else _UNSET
        out = []
        for part in node[1]:
            if part.__class__ is str:
                out.append(part)
            else:
                text = part.text(info, now)
                out.append(empty if text is None else text)
        return True, "".join(out)
    if kind == "map":
        fields = {}
        for key, child in node[1]:
            keep, value = _renderJson(child, info, now, omit)
            if keep:
                fields[key] = value
        return (not (omit and not fields)), fields
    if kind == "list":
        values = []
        for child in node[1]:
            keep, value = _renderJson(child, info, now, omit)
            if keep:
                values.append(value)
        return True, values
    return (not omit), None


class JsonFormatter:
    """
    A compiled C{json_format}: one JSON object per line, keys sorted (as
    Envoy does), a newline added.  A value that is exactly one operator
    keeps its type (numbers stay numbers, unset is C{null}); a value mixing
    text and operators is a string.

    @ivar source: the format mapping.
    @ivar omitEmptyValues: drop keys whose value is unset.
    """

    def __init__(self, source: Mapping[str, Any], omitEmptyValues: bool = False) -> None:
        if not isinstance(source, dict):
            raise FormatError("json_format must be a mapping")
        self.source = source
        self.omitEmptyValues = omitEmptyValues
        self._key = json.dumps(source, sort_keys=True, default=str)
        self._root = _compileJson(source, ())

    def format(self, streamInfo: StreamInfo, now: float | None = None) -> str:
        """
        One log line for C{streamInfo}; C{now} (epoch seconds) is for
        C{%EMIT_TIME%}, the current time if not given.
        """
        if now is None:
            now = time.time()
        keep, value = _renderJson(self._root, streamInfo, now, self.omitEmptyValues)
        if not keep:
            value = {}
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=str) + "\n"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JsonFormatter):
            return NotImplemented
        return (self._key, self.omitEmptyValues) == (other._key, other.omitEmptyValues)

    def __hash__(self) -> int:
        return hash((JsonFormatter, self._key, self.omitEmptyValues))

    def __repr__(self) -> str:
        return f"JsonFormatter({self._key}, omitEmptyValues={self.omitEmptyValues})"


def compileTextFormat(source: str, omitEmptyValues: bool = False) -> TextFormatter:
    """
    Compile a text format string.

    @raise FormatError: for what Envoy rejects (unknown operators, bad
        syntax).
    """
    return TextFormatter(source, omitEmptyValues)


def compileJsonFormat(source: Mapping[str, Any], omitEmptyValues: bool = False
                      ) -> JsonFormatter:
    """
    Compile a C{json_format} mapping (string values are format strings;
    numbers, booleans, nulls, lists and nested mappings are allowed).

    @raise FormatError: with C{path} naming the bad value.
    """
    return JsonFormatter(source, omitEmptyValues)


# --------------------------------------------------------------------------
# Sinks

class _FileSink:
    """
    One open access log file, shared by every logger writing to its path.
    Appends, and writes each line with one unbuffered write.
    """

    def __init__(self, path: str, absolutePath: str) -> None:
        self.path = path
        self._absolutePath = absolutePath
        self._file: Any = self._open()

    def _open(self) -> Any:
        try:
            return open(self._absolutePath, "ab", buffering=0)
        except OSError as e:
            raise AccessLogError(
                f"unable to open access log file {self.path!r}: {e.strerror or e}") from e

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self._open()
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]

    def reopen(self) -> None:
        fresh = self._open()
        old, self._file = self._file, fresh
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _FdSink:
    """
    The process's standard output or error, written to directly (twistd
    replaces C{sys.stdout} with a logging file).
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        fd = _STREAM_FDS[self.stream]
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


#: File descriptors of the C{stdout} and C{stderr} sinks (tests patch this).
_STREAM_FDS = {"stdout": 1, "stderr": 2}
_SPECIAL_PATHS = {"/dev/stdout": "stdout", "/dev/stderr": "stderr"}

#: Open access log files by absolute path: one handle per path per process.
_files: dict[str, _FileSink] = {}


def _fileSink(path: str) -> Any:
    if path in _SPECIAL_PATHS:
        return _FdSink(_SPECIAL_PATHS[path])
    key = os.path.abspath(path)
    sink = _files.get(key)
    if sink is None:
        sink = _files[key] = _FileSink(path, key)
    return sink


def reopenAll() -> None:
    """
    Reopen every access log file (after log rotation; Envoy's
    C{/reopen_logs}).  A file that cannot be reopened is logged and keeps
    its old handle.
    """
    for sink in list(_files.values()):
        try:
            sink.reopen()
        except AccessLogError as e:
            log.error("access log reopen failed: {error}", error=str(e))


def closeAll() -> None:
    """
    Close every access log file (at shutdown).  Loggers still holding one
    reopen it on their next line.
    """
    for sink in _files.values():
        sink.close()
    _files.clear()


# --------------------------------------------------------------------------
# Loggers and config

class AccessLogger:
    """
    Writes one formatted line per connection to a sink.
    """

    def __init__(self, formatter: TextFormatter | JsonFormatter, sink: Any,
                 reactor: Any) -> None:
        self.formatter = formatter
        self._sink = sink
        self._reactor = reactor

    def log(self, streamInfo: StreamInfo) -> None:
        """
        Format and write the line for C{streamInfo}.  A write error is
        logged, never raised: access logging must not break the connection.
        """
        try:
            line = self.formatter.format(streamInfo, self._reactor.seconds())
            self._sink.write(line.encode("utf-8", "backslashreplace"))
        except Exception:
            log.failure("access log write failed")


@dataclass(frozen=True)
class AccessLogConfig:
    """
    One C{access_log[]} entry.

    @ivar name: the entry's C{name} (or the logger's canonical name).
    @ivar sink: C{"file"}, C{"stdout"} or C{"stderr"}.
    @ivar formatter: the compiled format.
    @ivar path: the file, for C{"file"}.
    """

    name: str
    sink: str
    formatter: TextFormatter | JsonFormatter
    path: str | None = None

    def createLogger(self, reactor: Any = None) -> AccessLogger:
        """
        A logger writing to this entry's sink; the file is opened here
        (once per path per process).

        @raise AccessLogError: if the file cannot be opened.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor
            reactor = globalReactor
        if self.sink == "file":
            assert self.path is not None
            sink: Any = _fileSink(self.path)
        else:
            sink = _FdSink(self.sink)
        return AccessLogger(self.formatter, sink, reactor)


_defaultFormatter: TextFormatter | None = None


def _default() -> TextFormatter:
    global _defaultFormatter
    if _defaultFormatter is None:
        _defaultFormatter = TextFormatter(DEFAULT_FORMAT)
    return _defaultFormatter


def _jsonPath(base: str, path: Sequence[str | int]) -> str:
    out = base
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else f".{item}"
    return out


def _compileTextAt(section: Section, field: str, source: str, omit: bool
                   ) -> TextFormatter | None:
    try:
        return compileTextFormat(source, omit)
    except FormatError as e:
        section.error(e.message, field)
        return None


def _compileJsonAt(section: Section, field: str, omit: bool) -> JsonFormatter | None:
    section.has(field)
    source = section.raw.get(field)
    if not isinstance(source, dict):
        section.error(f"expected a mapping, got {describe(source)}", field)
        return None
    try:
        return compileJsonFormat(source, omit)
    except FormatError as e:
        section.problems.add(_jsonPath(section.pathOf(field), e.path), e.message)
        return None




def _substitutionFormat(section: Section) -> TextFormatter | JsonFormatter | None:
    """
    Read a C{config.core.v3.SubstitutionFormatString} (C{log_format}).
    """
    omit = section.boolean("omit_empty_values")
    section.string("content_type")
    options = section.section("json_format_options")
    if options is not None:
        options.boolean("sort_properties")
        options.finish()
    which = section.oneOf("text_format", "json_format", "text_format_source")
    formatter: TextFormatter | JsonFormatter | None = None
    if which == "text_format":
        source = section.string("text_format")
        if source is not None:
            formatter = _compileTextAt(section, "text_format", source, omit)
    elif which == "json_format":
        formatter = _compileJsonAt(section, "json_format", omit)
    elif which == "text_format_source":
        data = section.section("text_format_source")
        if data is not None:
            found = dataSourceText(data)
            if found is not None:
                formatter = _compileTextAt(data, found[1], found[0], omit)
    section.ignore("text_format", "json_format", "text_format_source")
    section.finish(unsupported=("formatters",))
    return formatter


def _fileConfig(typed: Section, name: str) -> AccessLogConfig | None:
    path = typed.string("path", required=True, nonEmpty=True)
    which = typed.oneOf("format", "json_format", "typed_json_format", "log_format",
                        required=False)
    formatter: TextFormatter | JsonFormatter | None = None
    ok = True
    if which == "format":
        source = typed.string("format")
        if source:
            formatter = _compileTextAt(typed, "format", source, False)
            ok = formatter is not None
        else:
            ok = source is not None
    elif which in ("json_format", "typed_json_format"):
        formatter = _compileJsonAt(typed, which, False)
        ok = formatter is not None
    elif which == "log_format":
        section = typed.section("log_format")
        formatter = _substitutionFormat(section) if section is not None else None
        ok = formatter is not None
    typed.ignore("format", "json_format", "typed_json_format", "log_format")
    typed.finish()
    if not ok or not path:
        return None
    return AccessLogConfig(name=name, sink="file", formatter=formatter or _default(),
                           path=path)


def _streamConfig(typed: Section, name: str, kind: str) -> AccessLogConfig | None:
    formatter: TextFormatter | JsonFormatter | None = None
    ok = True
    if typed.has("log_format"):
        section = typed.section("log_format")
        formatter = _substitutionFormat(section) if section is not None else None
        ok = formatter is not None
    typed.finish()
    if not ok:
        return None
    return AccessLogConfig(name=name, sink=kind, formatter=formatter or _default())


def _parseEntry(entry: Section) -> AccessLogConfig | None:
    name = entry.string("name") or ""
    if not entry.has("typed_config"):
        kind = _KIND_BY_NAME.get(name)
        if kind == "file":
            entry.error(f"missing required field 'typed_config' ({name} needs a 'path')")
            return None
        if kind is not None:
            return AccessLogConfig(name=name, sink=kind, formatter=_default())
        if name in _ENVOY_NAMES:
            entry.error(f"access logger {name!r} is not supported by pyenvoy yet; supported: "
                        f"{', '.join(sorted(_KIND_BY_NAME))}", "name")
        elif name:
            entry.error(f"unknown access logger {name!r}; known: "
                        f"{', '.join(sorted(_KIND_BY_NAME))}", "name")
        else:
            entry.error("missing required field 'typed_config'")
        return None
    typed = entry.section("typed_config")
    if typed is None:
        return None
    typeUrl = typed.string("@type", required=True)
    if typeUrl is None:
        return None
    descriptor = typeUrl.rsplit("/", 1)[-1]
    kind = _KIND_BY_TYPE.get(descriptor)
    if kind is None:
        if descriptor in _ENVOY_TYPES:
            typed.error(f"access logger type {typeUrl!r} is not supported by pyenvoy yet; "
                        f"supported: {', '.join(sorted(_KIND_BY_TYPE))}", "@type")
        else:
            typed.error(f"unknown access logger type {typeUrl!r}; known: "
                        f"{', '.join(sorted(_KIND_BY_TYPE))}", "@type")
        return None
    name = name or _NAME_BY_KIND[kind]
    if kind == "file":
        return _fileConfig(typed, name)
    return _streamConfig(typed, name, kind)


def parseAccessLogs(section: Section, fieldName: str = "access_log"
                    ) -> tuple[AccessLogConfig, ...]:
    """
    Read Envoy's C{access_log} list (C{config.accesslog.v3.AccessLog}
    entries) from field C{fieldName} of C{section}.  Problems are recorded
    on the section's L{Problems}; bad entries are left out.
    """
    configs = []
    for entry in section.sections(fieldName):
        config = _parseEntry(entry)
        entry.finish(unsupported=("filter",))
        if config is not None:
            configs.append(config)
    return tuple(configs)
