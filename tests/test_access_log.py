"""
Access logs: command operators for TCP, START_TIME formats, JSON formats,
the access_log[] config and its errors, and the file/stdout sinks.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy import access_log
from pyenvoy.access_log import (
    DEFAULT_FORMAT, AccessLogConfig, AccessLogError, FormatError, JsonFormatter,
    TextFormatter, closeAll, compileJsonFormat, compileTextFormat, parseAccessLogs, reopenAll,
)
from pyenvoy.config.reader import Problems, Section
from pyenvoy.stream_info import ResponseFlag, StreamInfo

#: 2026-11-26T02:13:17.123Z
START = 1795659197.123
FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def closedInfo() -> StreamInfo:
    """
    A finished, proxied connection with every field set.
    """
    info = StreamInfo(START, 50.0)
    info.endMonotonic = 51.2345
    info.downstreamRemoteAddress = ("10.1.10.23", 40001)
    info.downstreamLocalAddress = ("10.0.0.1", 10000)
    info.upstreamHost = ("192.168.1.5", 6379)
    info.upstreamLocalAddress = ("192.168.1.1", 52000)
    info.upstreamCluster = "redis"
    info.requestedServerName = "db.example.com"
    info.bytesReceived = 123
    info.bytesSent = 4567
    info.connectionTerminationDetails = "upstream_closed"
    info.dynamicMetadata = {
        "com.test": {"key": "foo", "n": 5, "obj": {"inner": "bar"}, "flag": True},
    }
    info.filterState = {"my.key": "value", "obj": {"a": 1, "b": "x"}}
    return info


def emptyInfo() -> StreamInfo:
    """
    A connection that is still open and knows nothing yet.
    """
    return StreamInfo(START, 50.0)


def text(fmt: str, info: StreamInfo | None = None, omit: bool = False,
         now: float = START) -> str:
    """
    Render C{fmt} for C{info} (a closed, fully set connection by default).
    """
    return compileTextFormat(fmt, omit).format(info or closedInfo(), now)


def jsonLine(fmt: dict[str, Any], info: StreamInfo | None = None,
             omit: bool = False) -> dict[str, Any]:
    """
    Render a JSON format and parse the line back.
    """
    line = compileJsonFormat(fmt, omit).format(info or closedInfo(), START)
    return json.loads(line)


def parse(entries: Any, field: str = "access_log") -> tuple[tuple[AccessLogConfig, ...], list[str]]:
    """
    Run L{parseAccessLogs} over C{{field: entries}}; return the configs and
    the error lines.
    """
    problems = Problems()
    section = Section({field: entries}, "tcp_proxy", problems)
    configs = parseAccessLogs(section, field)
    section.finish()
    return configs, [str(e) for e in problems.errors]


def fileEntry(**typedConfig: Any) -> dict[str, Any]:
    """
    One access_log entry for the file logger.
    """
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_TYPE, **typedConfig}}


class OperatorTests(SynchronousTestCase):
    """
    What each command operator prints for a TCP connection.
    """

    def test_byteCounts(self) -> None:
        """BYTES_RECEIVED and BYTES_SENT are the downstream byte counts."""
        self.assertEqual(text("%BYTES_RECEIVED% %BYTES_SENT%"), "123 4567")

    def test_wireBytes(self) -> None:
        """Wire byte counts follow the proxied bytes in each direction."""
        self.assertEqual(
            text("%DOWNSTREAM_WIRE_BYTES_RECEIVED% %DOWNSTREAM_WIRE_BYTES_SENT% "
                 "%UPSTREAM_WIRE_BYTES_SENT% %UPSTREAM_WIRE_BYTES_RECEIVED%"),
            "123 4567 123 4567")

    def test_upstreamWireBytesWithoutUpstream(self) -> None:
        """Upstream wire bytes are 0 when no upstream connection was made."""
        info = closedInfo()
        info.upstreamLocalAddress = None
        self.assertEqual(text("%UPSTREAM_WIRE_BYTES_SENT% %UPSTREAM_WIRE_BYTES_RECEIVED%",
                              info), "0 0")

    def test_duration(self) -> None:
        """DURATION is whole milliseconds of the connection."""
        self.assertEqual(text("%DURATION%"), "1234")

    def test_durationWhileOpen(self) -> None:
        """DURATION is unset while the connection is open."""
        self.assertEqual(text("%DURATION%", emptyInfo()), "-")

    def test_upstream(self) -> None:
        """The upstream host, cluster and local address."""
        self.assertEqual(
            text("%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% "
                 "%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
                 "%UPSTREAM_LOCAL_PORT%"),
            "192.168.1.5:6379 redis redis 192.168.1.1:52000 192.168.1.1 52000")

    def test_upstreamRemote(self) -> None:
        """UPSTREAM_REMOTE_ADDRESS and friends are the connected host."""
        self.assertEqual(
            text("%UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%UPSTREAM_REMOTE_PORT%"),
            "192.168.1.5:6379 192.168.1.5 6379")

    def test_upstreamHostName(self) -> None:
        """Without a host name UPSTREAM_HOST_NAME falls back to the address."""
        self.assertEqual(text("%UPSTREAM_HOST_NAME% %UPSTREAM_HOST_NAME_WITHOUT_PORT%"),
                         "192.168.1.5:6379 192.168.1.5")

    def test_upstreamTransportFailureReason(self) -> None:
        """The failure reason prints with spaces turned into underscores."""
        info = closedInfo()
        info.upstreamTransportFailureReason = "connection refused"
        self.assertEqual(text("%UPSTREAM_TRANSPORT_FAILURE_REASON%", info),
                         "connection_refused")

    def test_downstreamAddresses(self) -> None:
        """Downstream remote and local addresses, with and without port."""
        self.assertEqual(
            text("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_LOCAL_ADDRESS% "
                 "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%"),
            "10.1.10.23:40001 10.1.10.23 40001 10.0.0.1:10000 10.0.0.1 10000")

    def test_downstreamDirectAddresses(self) -> None:
        """The direct addresses are the socket's (no PROXY protocol yet)."""
        self.assertEqual(
            text("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% "
                 "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%DOWNSTREAM_DIRECT_REMOTE_PORT% %DOWNSTREAM_DIRECT_LOCAL_ADDRESS% "
                 "%DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_LOCAL_PORT%"),
            "10.1.10.23:40001 10.1.10.23 40001 10.0.0.1:10000 10.0.0.1 10000")

    def test_addressMask(self) -> None:
        """_WITHOUT_PORT(N) masks the address to N bits in CIDR notation."""
        self.assertEqual(text("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(16)%"), "10.1.0.0/16")

    def test_ipv6Address(self) -> None:
        """IPv6 addresses print bracketed with a port, bare without."""
        info = closedInfo()
        info.downstreamRemoteAddress = ("2001:db8::1", 443)
        self.assertEqual(
            text("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                 "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(32)%", info),
            "[2001:db8::1]:443 2001:db8::1 2001:db8::/32")

    def test_unsetAddresses(self) -> None:
        """Unknown addresses, cluster and ports print '-'."""
        self.assertEqual(
            text("%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% "
                 "%DOWNSTREAM_REMOTE_PORT% %UPSTREAM_TRANSPORT_FAILURE_REASON%", emptyInfo()),
            "- - - - -")

    def test_responseFlags(self) -> None:
        """RESPONSE_FLAGS is the comma-joined short flags in Envoy's order."""
        info = closedInfo()
        info.setResponseFlag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
        info.setResponseFlag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
        self.assertEqual(text("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", info),
                         "UF,URX UpstreamConnectionFailure,UpstreamRetryLimitExceeded")

    def test_responseFlagOrder(self) -> None:
        """
        Envoy prints flags in its enum's order: UC (UpstreamConnectionTermination)
        before UO and NR, DC before URX, NC last.
        """
        info = closedInfo()
        for flag in ("NC", "URX", "DC", "NR", "UO", "UC", "UF", "UH"):
            info.setResponseFlag(flag)
        self.assertEqual(text("%RESPONSE_FLAGS%", info), "UH,UF,UC,UO,NR,DC,URX,NC")

    def test_noResponseFlags(self) -> None:
        """Without flags both flag operators print '-', even omitting empty values."""
        self.assertEqual(text("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", omit=True), "- -")

    def test_connection(self) -> None:
        """CONNECTION_ID and CONNECTION_TERMINATION_DETAILS."""
        info = closedInfo()
        self.assertEqual(text("%CONNECTION_ID% %CONNECTION_TERMINATION_DETAILS%", info),
                         f"{info.connectionId} upstream_closed")

    def test_requestedServerName(self) -> None:
        """REQUESTED_SERVER_NAME is the SNI, '-' without one."""
        self.assertEqual(text("%REQUESTED_SERVER_NAME%"), "db.example.com")
        self.assertEqual(text("%REQUESTED_SERVER_NAME(SNI_FIRST)%", emptyInfo()), "-")

    def test_requestedServerNameSanitized(self) -> None:
        """An SNI with characters invalid in a host name is sanitized as Envoy does."""
        info = closedInfo()
        info.requestedServerName = "evil\nname"
        self.assertEqual(text("%REQUESTED_SERVER_NAME%", info), "invalid:evil_name")

    def test_dynamicMetadata(self) -> None:
        """Strings print bare, other values as JSON; missing ones as '-'."""
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:key)%"), "foo")
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:n)%"), "5")
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:flag)%"), "true")
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:obj)%"), '{"inner":"bar"}')
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:obj:inner)%"), "bar")
        self.assertEqual(text("%DYNAMIC_METADATA(com.other)% %DYNAMIC_METADATA(com.test:no)%"),
                         "- -")

    def test_dynamicMetadataNamespace(self) -> None:
        """A namespace alone prints the whole namespace as JSON."""
        self.assertEqual(json.loads(text("%DYNAMIC_METADATA(com.test)%")),
                         closedInfo().dynamicMetadata["com.test"])

    def test_dynamicMetadataTruncation(self) -> None:
        """:Z truncates simple values but not structs."""
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:key):2%"), "fo")
        self.assertEqual(text("%DYNAMIC_METADATA(com.test:obj):2%"), '{"inner":"bar"}')

    def test_filterState(self) -> None:
        """FILTER_STATE prints JSON (TYPED), plain text (PLAIN) or one field."""
        self.assertEqual(text("%FILTER_STATE(my.key)%"), '"value"')
        self.assertEqual(text("%FILTER_STATE(my.key:TYPED)%"), '"value"')
        self.assertEqual(text("%FILTER_STATE(my.key:PLAIN)%"), "value")
        self.assertEqual(text("%FILTER_STATE(my.key:PLAIN):3%"), "val")
        self.assertEqual(text("%FILTER_STATE(obj:FIELD:b)%"), "x")
        self.assertEqual(text("%FILTER_STATE(obj:FIELD:a)%"), "1")
        self.assertEqual(text("%FILTER_STATE(nope)% %FILTER_STATE(obj:FIELD:zz)%"), "- -")

    def test_hostname(self) -> None:
        """HOSTNAME is the system host name."""
        self.assertEqual(text("%HOSTNAME%"), socket.gethostname())

    def test_environment(self) -> None:
        """ENVIRONMENT reads a variable at config time, '-' when unset."""
        self.patch(os, "environ", {"PYENVOY_TEST_VAR": "hello"})
        self.assertEqual(text("%ENVIRONMENT(PYENVOY_TEST_VAR)% %ENVIRONMENT(PYENVOY_TEST_VAR):2% "
                              "%ENVIRONMENT(NOT_THERE)%"), "hello he -")

    def test_httpOnly(self) -> None:
        """HTTP-only operators print what Envoy prints for TCP."""
        self.assertEqual(
            text("%PROTOCOL% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %REQ(:METHOD)% "
                 "%RESP(X-FOO?X-BAR):5% %TRAILER(GRPC-STATUS)% %REQUEST_HEADER(HOST)% "
                 "%ROUTE_NAME% %GRPC_STATUS% %REQUEST_DURATION% %RESPONSE_DURATION% "
                 "%UPSTREAM_PROTOCOL% %REQUEST_HEADERS_BYTES% %UPSTREAM_HEADER_BYTES_SENT% "
                 "%VIRTUAL_CLUSTER_NAME% %QUERY_PARAM(x)% %PATH% %UPSTREAM_FILTER_STATE(k)%"),
            "- 0 - - - - - - - - - - 0 0 - - - -")

    def test_tls(self) -> None:
        """The downstream TLS operators read streamInfo.tls; lists are comma-joined."""
        info = closedInfo()
        info.tls = {
            "version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256",
            "peerSubject": "CN=client", "peerIssuer": "CN=ca",
            "peerUriSans": ["spiffe://a", "spiffe://b"], "peerDnsSans": ["c.example"],
            "peerFingerprint256": "ab12", "peerFingerprint1": "cd34", "peerSerial": "01",
            "localSubject": "CN=server", "localDnsSans": ["s.example"],
            "sessionId": "feed", "failureReason": "bad cert",
        }
        self.assertEqual(
            text("%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_TLS_CIPHER%|%DOWNSTREAM_PEER_SUBJECT%|"
                 "%DOWNSTREAM_PEER_ISSUER%|%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_PEER_DNS_SAN%|"
                 "%DOWNSTREAM_PEER_FINGERPRINT_256%|%DOWNSTREAM_PEER_FINGERPRINT_1%|"
                 "%DOWNSTREAM_PEER_SERIAL%|%DOWNSTREAM_LOCAL_SUBJECT%|%DOWNSTREAM_LOCAL_DNS_SAN%|"
                 "%DOWNSTREAM_TLS_SESSION_ID%|%DOWNSTREAM_TRANSPORT_FAILURE_REASON%", info),
            "TLSv1.3|TLS_AES_128_GCM_SHA256|CN=client|CN=ca|spiffe://a,spiffe://b|c.example|"
            "ab12|cd34|01|CN=server|s.example|feed|bad_cert")

    def test_tlsAbsent(self) -> None:
        """Without TLS the TLS operators print '-'."""
        self.assertEqual(
            text("%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_URI_SAN% "
                 "%DOWNSTREAM_PEER_CERT_V_START% %TLS_JA3_FINGERPRINT%"),
            "- - - - -")

    def test_peerCertValidity(self) -> None:
        """DOWNSTREAM_PEER_CERT_V_START/END format the certificate's validity times."""
        info = closedInfo()
        info.tls = {"peerCertValidFrom": 0.0, "peerCertValidTo": START}
        self.assertEqual(
            text("%DOWNSTREAM_PEER_CERT_V_START% %DOWNSTREAM_PEER_CERT_V_END(%Y)%", info),
            "1970-01-01T00:00:00.000Z 2026")

    def test_uniqueId(self) -> None:
        """UNIQUE_ID is a fresh UUID per line."""
        formatter = compileTextFormat("%UNIQUE_ID%")
        first, second = formatter.format(closedInfo()), formatter.format(closedInfo())
        self.assertEqual(len(first), 36)
        self.assertNotEqual(first, second)

    def test_emitTime(self) -> None:
        """EMIT_TIME is the time the line is written."""
        self.assertEqual(text("%EMIT_TIME(%s)%", now=12345.5), "12345")

    def test_omitEmptyValues(self) -> None:
        """With omit_empty_values unset operators print nothing instead of '-'."""
        self.assertEqual(text("[%UPSTREAM_HOST%][%PROTOCOL%]", emptyInfo(), omit=True), "[][]")


class StartTimeTests(SynchronousTestCase):
    """
    START_TIME's default and custom formats.
    """

    def test_default(self) -> None:
        """The default is ISO 8601 UTC with milliseconds."""
        self.assertEqual(text("%START_TIME%"), "2026-11-26T02:13:17.123Z")

    def test_epochAndFractions(self) -> None:
        """%s is epoch seconds and %Nf the first N fractional digits (%f: 9)."""
        self.assertEqual(text("%START_TIME(%s.%3f|%6f|%9f|%f|%1f)%"),
                         "1795659197.123|123000|123000000|123000000|1")

    def test_microsecondClock(self) -> None:
        """
        Times carry microseconds, as Envoy's clock: a float's digits past
        the sixth are noise and print as zeros.
        """
        info = StreamInfo(1764158400.8592482, 50.0)
        self.assertEqual(text("%START_TIME(%f)%", info), "859248000")

    def test_strftime(self) -> None:
        """Other specifiers are strftime's, in UTC."""
        self.assertEqual(text("%START_TIME(%Y/%m/%dT%H:%M:%S%z %a)%"),
                         "2026/11/26T02:13:17+0000 Thu")

    def test_abslSpecifiers(self) -> None:
        """absl's %E#S, %E*S, %Ez and %E4Y work as in Envoy."""
        self.assertEqual(text("%START_TIME(%E3S %E6S %E*S %E0S %Ez %E4Y)%"),
                         "17.123 17.123000 17.123 17 +00:00 2026")

    def test_percentLiteral(self) -> None:
        """%% inside a START_TIME format is a literal percent."""
        self.assertEqual(text("%START_TIME(%Y%%)%"), "2026%")

    def test_local(self) -> None:
        """START_TIME_LOCAL uses the local zone and ends with its offset."""
        self.patch(os, "environ", dict(os.environ, TZ="UTC"))
        self.assertTrue(text("%START_TIME_LOCAL%").startswith("2026-11-26T"))
        self.assertRegex(text("%START_TIME_LOCAL%"), r"\.123[+-]\d{4}$")

    def test_newlineRejected(self) -> None:
        """A %n in a time format is rejected as Envoy does."""
        error = self.assertRaises(FormatError, compileTextFormat, "%START_TIME(%Y%n)%")
        self.assertEqual(str(error), "Invalid header configuration. Format string contains newline.")


class ParseTests(SynchronousTestCase):
    """
    The format string grammar and what Envoy rejects.
    """

    def test_literalPercent(self) -> None:
        """%% is a literal percent sign."""
        self.assertEqual(text("100%% %BYTES_SENT%%%"), "100% 4567%")

    def test_noNewlineAdded(self) -> None:
        """A text format gets no newline unless it has one."""
        self.assertEqual(text("%BYTES_SENT%"), "4567")
        self.assertEqual(text("%BYTES_SENT%\n"), "4567\n")

    def test_loneStrayPercent(self) -> None:
        """A % that starts no command is an error naming its position."""
        error = self.assertRaises(FormatError, compileTextFormat, "ab % cd")
        self.assertEqual(str(error),
                         "Incorrect configuration: ab % cd. Couldn't find valid command at "
                         "position 3")

    def test_unknownOperator(self) -> None:
        """An unknown operator is rejected with Envoy's message naming it."""
        error = self.assertRaises(FormatError, compileTextFormat, "%BYTES_SENT% %NOPE%")
        self.assertEqual(str(error), "Not supported field in StreamInfo: NOPE")

    def test_notYetOperator(self) -> None:
        """An Envoy operator pyenvoy lacks says so."""
        error = self.assertRaises(FormatError, compileTextFormat, "%UPSTREAM_METADATA(a:b)%")
        self.assertEqual(str(error),
                         "command operator %UPSTREAM_METADATA% is not supported by pyenvoy yet")

    def test_syntax(self) -> None:
        """Parameters and lengths are checked as Envoy's CommandSyntaxChecker does."""
        cases = {
            "%BYTES_SENT(x)%": "BYTES_SENT does not take any parameters or length",
            "%BYTES_SENT:3%": "BYTES_SENT does not take any parameters or length",
            "%REQ%": "REQ requires parameters",
            "%DYNAMIC_METADATA%": "DYNAMIC_METADATA requires parameters",
            "%START_TIME:3%": "START_TIME does not allow length to be specified.",
            "%REQ(A?B?C)%": "More than 1 alternative header specified in token: A?B?C",
            "%FILTER_STATE(k:BAD)%":
                "Invalid filter state serialize type, only support PLAIN/TYPED/FIELD.",
            "%FILTER_STATE(k:FIELD)%":
                "Invalid filter state serialize type, FIELD should be used with the field name.",
            "%FILTER_STATE()%": "Invalid filter state configuration, key cannot be empty.",
        }
        for fmt, message in cases.items():
            error = self.assertRaises(FormatError, compileTextFormat, fmt)
            self.assertEqual(str(error), message, fmt)

    def test_emptyFormat(self) -> None:
        """An empty format prints an empty line."""
        self.assertEqual(text(""), "")

    def test_formattersCompare(self) -> None:
        """Formatters compare by source, so configs compare by value."""
        self.assertEqual(compileTextFormat("%BYTES_SENT%"), compileTextFormat("%BYTES_SENT%"))
        self.assertNotEqual(compileTextFormat("%BYTES_SENT%"),
                            compileTextFormat("%BYTES_SENT%", True))
        self.assertEqual(hash(compileJsonFormat({"a": "%BYTES_SENT%"})),
                         hash(compileJsonFormat({"a": "%BYTES_SENT%"})))


class DefaultFormatTests(SynchronousTestCase):
    """
    Envoy's default format rendered for TCP.
    """

    def test_tcp(self) -> None:
        """HTTP fields print '-' and the response code 0, ending with a newline."""
        self.assertEqual(
            text(DEFAULT_FORMAT),
            '[2026-11-26T02:13:17.123Z] "- - -" 0 - 123 4567 1234 - "-" "-" "-" "-" '
            '"192.168.1.5:6379"\n')

    def test_failedConnection(self) -> None:
        """A connection with no upstream shows its flags and '-' for the host."""
        info = emptyInfo()
        info.endMonotonic = 50.005
        info.setResponseFlag(ResponseFlag.NO_HEALTHY_UPSTREAM)
        self.assertEqual(
            text(DEFAULT_FORMAT, info),
            '[2026-11-26T02:13:17.123Z] "- - -" 0 UH 0 0 5 - "-" "-" "-" "-" "-"\n')


class JsonFormatTests(SynchronousTestCase):
    """
    json_format: typed values, nesting and omit_empty_values.
    """

    def test_typedValues(self) -> None:
        """A value that is exactly one operator keeps its type; unset is null."""
        info = closedInfo()
        self.assertEqual(
            jsonLine({"received": "%BYTES_RECEIVED%", "duration": "%DURATION%",
                      "code": "%RESPONSE_CODE%", "port": "%DOWNSTREAM_REMOTE_PORT%",
                      "id": "%CONNECTION_ID%", "protocol": "%PROTOCOL%",
                      "start": "%START_TIME%", "host": "%UPSTREAM_HOST%"}, info),
            {"received": 123, "duration": 1234, "code": 0, "port": 40001,
             "id": info.connectionId, "protocol": None, "start": "2026-11-26T02:13:17.123Z",
             "host": "192.168.1.5:6379"})

    def test_mixedIsString(self) -> None:
        """A value mixing text and operators is a string, with '-' for unset parts."""
        self.assertEqual(jsonLine({"v": "%BYTES_SENT%.0 %PROTOCOL%"}), {"v": "4567.0 -"})

    def test_unsetIsNull(self) -> None:
        """Unset single operators are null without omit_empty_values."""
        self.assertEqual(jsonLine({"host": "%UPSTREAM_HOST%", "d": "%DURATION%"}, emptyInfo()),
                         {"host": None, "d": None})

    def test_metadataTyped(self) -> None:
        """DYNAMIC_METADATA keeps numbers, booleans and objects, ignoring length."""
        self.assertEqual(
            jsonLine({"n": "%DYNAMIC_METADATA(com.test:n)%",
                      "f": "%DYNAMIC_METADATA(com.test:flag)%",
                      "o": "%DYNAMIC_METADATA(com.test:obj):2%",
                      "s": "%DYNAMIC_METADATA(com.test:key):2%"}),
            {"n": 5, "f": True, "o": {"inner": "bar"}, "s": "foo"})

    def test_filterStateTyped(self) -> None:
        """FILTER_STATE puts the object itself in a JSON log."""
        self.assertEqual(jsonLine({"fs": "%FILTER_STATE(obj)%"}), {"fs": {"a": 1, "b": "x"}})

    def test_nestedAndLiterals(self) -> None:
        """Nested mappings, lists and literal numbers, booleans and nulls are kept."""
        self.assertEqual(
            jsonLine({"outer": {"inner": "%BYTES_SENT%", "list": ["%BYTES_RECEIVED%", "x"]},
                      "n": 2, "b": False, "z": None, "s": "plain"}),
            {"outer": {"inner": 4567, "list": [123, "x"]}, "n": 2, "b": False, "z": None,
             "s": "plain"})

    def test_sortedCompactLine(self) -> None:
        """Keys are sorted, output compact, and the line ends with a newline."""
        line = compileJsonFormat({"b": "%BYTES_SENT%", "a": "x"}).format(closedInfo(), START)
        self.assertEqual(line, '{"a":"x","b":4567}\n')

    def test_omitEmptyValues(self) -> None:
        """omit_empty_values drops unset keys and objects left empty."""
        self.assertEqual(
            jsonLine({"host": "%UPSTREAM_HOST%", "sent": "%BYTES_SENT%",
                      "nested": {"a": "%PROTOCOL%"}, "list": ["%PROTOCOL%", 1],
                      "mixed": "x%PROTOCOL%", "z": None}, emptyInfo(), omit=True),
            {"sent": 0, "list": [1], "mixed": "x"})

    def test_omitEverything(self) -> None:
        """When every key is dropped the line is an empty object."""
        self.assertEqual(jsonLine({"host": "%UPSTREAM_HOST%"}, emptyInfo(), omit=True), {})

    def test_errorPath(self) -> None:
        """A bad operator deep in a JSON format names its key path."""
        error = self.assertRaises(FormatError, compileJsonFormat,
                                  {"a": {"b": ["x", "%NOPE%"]}})
        self.assertEqual(error.path, ("a", "b", 1))
        self.assertEqual(error.message, "Not supported field in StreamInfo: NOPE")


class ConfigTests(SynchronousTestCase):
    """
    Reading access_log[] and reporting its errors.
    """

    def test_fileTextFormatSource(self) -> None:
        """A file logger with text_format_source.inline_string."""
        configs, errors = parse([fileEntry(path="/tmp/a.log", log_format={
            "text_format_source": {"inline_string": "%BYTES_SENT%\n"}})])
        self.assertEqual(errors, [])
        self.assertEqual(configs, (AccessLogConfig(
            name="envoy.access_loggers.file", sink="file", path="/tmp/a.log",
            formatter=TextFormatter("%BYTES_SENT%\n")),))

    def test_inlineBytes(self) -> None:
        """text_format_source.inline_bytes is base64 text."""
        encoded = base64.b64encode(b"%BYTES_SENT%\n").decode()
        configs, errors = parse([fileEntry(path="a.log", log_format={
            "text_format_source": {"inline_bytes": encoded}})])
        self.assertEqual(errors, [])
        self.assertEqual(configs[0].formatter, TextFormatter("%BYTES_SENT%\n"))

    def test_textFormatAndOmit(self) -> None:
        """The deprecated text_format and omit_empty_values are read."""
        configs, errors = parse([fileEntry(path="a.log", log_format={
            "text_format": "%PROTOCOL%", "omit_empty_values": True,
            "content_type": "text/plain"})])
        self.assertEqual(errors, [])
        self.assertEqual(configs[0].formatter, TextFormatter("%PROTOCOL%", True))

    def test_jsonLogFormat(self) -> None:
        """log_format.json_format keeps its user keys verbatim (no snake_casing)."""
        configs, errors = parse([fileEntry(path="a.log", log_format={
            "json_format": {"bytesSent": "%BYTES_SENT%"}, "omit_empty_values": True})])
        self.assertEqual(errors, [])
        self.assertEqual(configs[0].formatter, JsonFormatter({"bytesSent": "%BYTES_SENT%"}, True))
        self.assertEqual(configs[0].formatter.format(closedInfo()), '{"bytesSent":4567}\n')

    def test_deprecatedFormats(self) -> None:
        """The top-level format, json_format and typed_json_format still work."""
        configs, errors = parse([
            fileEntry(path="a.log", format="%BYTES_SENT%\n"),
            fileEntry(path="a.log", json_format={"s": "%BYTES_SENT%"}),
            fileEntry(path="a.log", typed_json_format={"s": "%BYTES_SENT%"}),
            fileEntry(path="a.log", format=""),
        ])
        self.assertEqual(errors, [])
        self.assertEqual([c.formatter for c in configs], [
            TextFormatter("%BYTES_SENT%\n"), JsonFormatter({"s": "%BYTES_SENT%"}),
            JsonFormatter({"s": "%BYTES_SENT%"}), TextFormatter(DEFAULT_FORMAT)])

    def test_defaultFormat(self) -> None:
        """Without a format the default one is used."""
        configs, errors = parse([fileEntry(path="a.log")])
        self.assertEqual(errors, [])
        self.assertEqual(configs[0].formatter, TextFormatter(DEFAULT_FORMAT))

    def test_streams(self) -> None:
        """stdout/stderr loggers by name alone, or by type with a log_format."""
        configs, errors = parse([
            {"name": "envoy.access_loggers.stdout"},
            {"typedConfig": {"@type": STDERR_TYPE,
                             "logFormat": {"textFormatSource": {"inlineString": "x\n"}}}},
            {"name": "mine", "typed_config": {"@type": STDOUT_TYPE}},
        ])
        self.assertEqual(errors, [])
        self.assertEqual(configs, (
            AccessLogConfig(name="envoy.access_loggers.stdout", sink="stdout",
                            formatter=TextFormatter(DEFAULT_FORMAT)),
            AccessLogConfig(name="envoy.access_loggers.stderr", sink="stderr",
                            formatter=TextFormatter("x\n")),
            AccessLogConfig(name="mine", sink="stdout", formatter=TextFormatter(DEFAULT_FORMAT)),
        ))

    def test_unknownType(self) -> None:
        """An unknown @type is an error naming it."""
        configs, errors = parse([{"name": "x", "typed_config": {"@type": "type.googleapis.com/foo.Bar"}}])
        self.assertEqual(configs, ())
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith(
            "tcp_proxy.access_log[0].typed_config.@type: unknown access logger type "
            "'type.googleapis.com/foo.Bar'; known: "), errors[0])

    def test_envoyTypeNotYet(self) -> None:
        """An Envoy access logger pyenvoy lacks is "not supported by pyenvoy yet"."""
        url = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
        configs, errors = parse([{"typed_config": {"@type": url}}])
        self.assertEqual(len(errors), 1)
        self.assertIn("is not supported by pyenvoy yet", errors[0])
        self.assertIn(url, errors[0])

    def test_unknownOperator(self) -> None:
        """An unknown operator is reported at the format's path."""
        configs, errors = parse([fileEntry(path="a.log", log_format={
            "text_format_source": {"inline_string": "%BYTES_SENT% %BOGUS%"}})])
        self.assertEqual(configs, ())
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].typed_config.log_format.text_format_source.inline_string: "
            "Not supported field in StreamInfo: BOGUS"])

    def test_jsonErrorPath(self) -> None:
        """An error inside json_format names the key path."""
        configs, errors = parse([fileEntry(path="a.log", log_format={
            "json_format": {"outer": {"x": "%BOGUS%"}}})])
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].typed_config.log_format.json_format.outer.x: "
            "Not supported field in StreamInfo: BOGUS"])

    def test_missingPath(self) -> None:
        """A file logger needs a path."""
        configs, errors = parse([fileEntry()])
        self.assertEqual(configs, ())
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].typed_config: missing required field 'path'"])

    def test_emptyPath(self) -> None:
        """An empty path is rejected."""
        configs, errors = parse([fileEntry(path="")])
        self.assertEqual(errors, ["tcp_proxy.access_log[0].typed_config.path: must not be empty"])

    def test_fileWithoutTypedConfig(self) -> None:
        """The file logger by name alone has no path: an error."""
        configs, errors = parse([{"name": "envoy.access_loggers.file"}])
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0]: missing required field 'typed_config' "
            "(envoy.access_loggers.file needs a 'path')"])

    def test_unknownName(self) -> None:
        """An unknown logger name without typed_config is an error naming it."""
        configs, errors = parse([{"name": "envoy.access_loggers.nope"}])
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith(
            "tcp_proxy.access_log[0].name: unknown access logger 'envoy.access_loggers.nope'"))

    def test_filterUnsupported(self) -> None:
        """filter is an Envoy field pyenvoy does not implement yet."""
        entry = fileEntry(path="a.log")
        entry["filter"] = {"duration_filter": {"comparison": {"op": "GE"}}}
        configs, errors = parse([entry])
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].filter: field 'filter' is not supported by pyenvoy yet"])

    def test_unknownField(self) -> None:
        """Unknown fields in typed_config and log_format are errors."""
        configs, errors = parse([fileEntry(path="a.log", colour="red", log_format={
            "text_format": "x", "formatters": [{}]})])
        self.assertEqual(sorted(errors), [
            "tcp_proxy.access_log[0].typed_config.colour: unknown field 'colour'",
            "tcp_proxy.access_log[0].typed_config.log_format.formatters: "
            "field 'formatters' is not supported by pyenvoy yet",
        ])

    def test_twoFormats(self) -> None:
        """Only one of the format oneof may be set."""
        configs, errors = parse([fileEntry(path="a.log", format="x", log_format={
            "text_format": "y"})])
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].typed_config: only one of format, log_format may be set"])

    def test_badJsonFormat(self) -> None:
        """json_format must be a mapping."""
        configs, errors = parse([fileEntry(path="a.log", log_format={"json_format": "x"})])
        self.assertEqual(errors, [
            "tcp_proxy.access_log[0].typed_config.log_format.json_format: "
            "expected a mapping, got the string 'x'"])

    def test_noAccessLog(self) -> None:
        """No access_log field gives no loggers."""
        problems = Problems()
        self.assertEqual(parseAccessLogs(Section({}, "tcp_proxy", problems)), ())
        self.assertEqual(problems.errors, [])


class SinkTests(SynchronousTestCase):
    """
    Writing to files and to standard output.
    """

    def setUp(self) -> None:
        self.addCleanup(closeAll)
        self.clock = Clock()

    def fileConfig(self, path: str, fmt: str = "%BYTES_SENT%\n") -> AccessLogConfig:
        """
        A file logger config writing C{fmt} to C{path}.
        """
        return AccessLogConfig(name="f", sink="file", path=path,
                               formatter=compileTextFormat(fmt))

    def test_writeAndReadBack(self) -> None:
        """Lines are appended to the file and flushed at once."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("old\n")
        logger = self.fileConfig(path).createLogger(self.clock)
        logger.log(closedInfo())
        with open(path) as f:
            self.assertEqual(f.read(), "old\n4567\n")
        logger.log(emptyInfo())
        with open(path) as f:
            self.assertEqual(f.read(), "old\n4567\n0\n")

    def test_sharedHandle(self) -> None:
        """Two loggers on one path share one open file."""
        path = self.mktemp()
        first = self.fileConfig(path, "a%BYTES_SENT%\n").createLogger(self.clock)
        second = AccessLogConfig(name="g", sink="file", path=os.path.join(".", path),
                                 formatter=compileTextFormat("b\n")).createLogger(self.clock)
        self.assertIs(first._sink, second._sink)
        first.log(closedInfo())
        second.log(closedInfo())
        first.log(emptyInfo())
        with open(path) as f:
            self.assertEqual(f.read(), "a4567\nb\na0\n")

    def test_openFailure(self) -> None:
        """A file that cannot be opened stops createLogger with a clear message."""
        path = os.path.join(self.mktemp(), "missing-dir", "access.log")
        error = self.assertRaises(AccessLogError, self.fileConfig(path).createLogger, self.clock)
        self.assertEqual(str(error),
                         f"unable to open access log file {path!r}: No such file or directory")

    def test_reopenAll(self) -> None:
        """After rotation reopenAll makes loggers write to the new file."""
        path = self.mktemp()
        logger = self.fileConfig(path).createLogger(self.clock)
        logger.log(closedInfo())
        os.rename(path, path + ".1")
        logger.log(closedInfo())
        reopenAll()
        logger.log(emptyInfo())
        with open(path + ".1") as f:
            self.assertEqual(f.read(), "4567\n4567\n")
        with open(path) as f:
            self.assertEqual(f.read(), "0\n")

    def test_closeAllThenLog(self) -> None:
        """A logger whose file was closed reopens it on its next line."""
        path = self.mktemp()
        logger = self.fileConfig(path).createLogger(self.clock)
        closeAll()
        logger.log(closedInfo())
        with open(path) as f:
            self.assertEqual(f.read(), "4567\n")

    def test_jsonToFile(self) -> None:
        """A JSON logger writes one object per line."""
        path = self.mktemp()
        config = AccessLogConfig(name="f", sink="file", path=path,
                                 formatter=compileJsonFormat({"b": "%BYTES_SENT%"}))
        config.createLogger(self.clock).log(closedInfo())
        with open(path) as f:
            self.assertEqual(f.read(), '{"b":4567}\n')

    def test_emitTimeFromReactor(self) -> None:
        """EMIT_TIME comes from the logger's reactor."""
        path = self.mktemp()
        self.clock.advance(42)
        self.fileConfig(path, "%EMIT_TIME(%s)%\n").createLogger(self.clock).log(closedInfo())
        with open(path) as f:
            self.assertEqual(f.read(), "42\n")

    def test_stdout(self) -> None:
        """The stdout logger writes straight to file descriptor 1."""
        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        self.addCleanup(os.close, writeFd)
        self.patch(access_log, "_STREAM_FDS", {"stdout": writeFd, "stderr": writeFd})
        configs, errors = parse([{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": STDOUT_TYPE, "log_format": {"text_format": "%BYTES_SENT%\n"}}}])
        configs[0].createLogger(self.clock).log(closedInfo())
        self.assertEqual(os.read(readFd, 100), b"4567\n")

    def test_devStdout(self) -> None:
        """A file logger on /dev/stdout writes to standard output."""
        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        self.addCleanup(os.close, writeFd)
        self.patch(access_log, "_STREAM_FDS", {"stdout": writeFd, "stderr": writeFd})
        self.fileConfig("/dev/stdout").createLogger(self.clock).log(closedInfo())
        self.assertEqual(os.read(readFd, 100), b"4567\n")

    def test_writeErrorLogged(self) -> None:
        """A failing write is logged, not raised into the connection."""
        self.patch(access_log, "_STREAM_FDS", {"stdout": -1, "stderr": -1})
        AccessLogConfig(name="s", sink="stdout", formatter=compileTextFormat("x")
                        ).createLogger(self.clock).log(closedInfo())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
