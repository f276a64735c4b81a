"""
The PostgreSQL codec: every message kind from frames built here, split at
every byte, several per segment, large COPY streams, malformed input.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.filters.postgres_proxy.codec import (
    MAX_STARTUP_PACKET_LENGTH, Decoder, MalformedMessage, Message, commandTag, countRules)


def frontend(kind: str, body: bytes) -> bytes:
    """
    A typed message: type byte, self-inclusive length, body.
    """
    return kind.encode() + struct.pack("!I", len(body) + 4) + body


backend = frontend


def untyped(code: int, body: bytes = b"") -> bytes:
    """
    A startup-phase message: length, code, body.
    """
    return struct.pack("!II", len(body) + 8, code) + body


def startup(parameters: dict[str, str]) -> bytes:
    """
    A v3.0 StartupMessage.
    """
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items())
    return untyped(196608, body + b"\0")


def sslRequest() -> bytes:
    """
    An SSLRequest.
    """
    return untyped(80877103)


def decodeAll(decoder: Decoder, data: bytes, step: int = 0) -> list[Any]:
    """
    Feed C{data} whole (C{step=0}) or C{step} bytes at a time.
    """
    if not step:
        return decoder.feed(data)
    out = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    return out


FRONTEND_STREAM = b"".join([
    startup({"user": "u", "database": "db", "application_name": "x"}),
    frontend("p", b"secret\0"),
    frontend("Q", b"SELECT 1\0"),
    frontend("P", b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
    frontend("B", b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"),
    frontend("D", b"Ps\0"),
    frontend("E", b"\0\0\0\0\0"),
    frontend("C", b"Ss1\0"),
    frontend("H", b""),
    frontend("S", b""),
    frontend("d", b"1\t2\n" * 10),
    frontend("c", b""),
    frontend("f", b"oops\0"),
    frontend("y", b"what"),
    frontend("X", b""),
])

FRONTEND_EXPECTED = [
    Message("StartupMessage", "", 47, {"parameters": {
        "user": "u", "database": "db", "application_name": "x"}}),
    Message("PasswordMessage", "p", 12),
    Message("Query", "Q", 14, {"sql": "SELECT 1"}),
    Message("Parse", "P", 24, {"statement": "s1", "sql": "SELECT $1"}),
    Message("Bind", "B", 20),
    Message("Describe", "D", 8, {"target": "P", "name": "s"}),
    Message("Execute", "E", 10, {"portal": "", "maxRows": 0}),
    Message("Close", "C", 9, {"target": "S", "name": "s1"}),
    Message("Flush", "H", 5),
    Message("Sync", "S", 5),
    Message("CopyData", "d", 45),
    Message("CopyDone", "c", 5),
    Message("CopyFail", "f", 10, {"message": "oops"}),
    Message("Unknown", "y", 9),
    Message("Terminate", "X", 5),
]

BACKEND_STREAM = b"".join([
    backend("R", b"\0\0\0\x05salt"),
    backend("R", b"\0\0\0\0"),
    backend("S", b"server_version\x0015.18\0"),
    backend("K", b"\0\0\0\x07\0\0\0\x09"),
    backend("Z", b"I"),
    backend("T", b"\0\x02a\0" + b"\0" * 18 + b"b\0" + b"\0" * 18),
    backend("D", b"\0\x01\0\0\0\x011"),
    backend("C", b"SELECT 1\0"),
    backend("C", b"INSERT 0 5\0"),
    backend("C", b"CREATE TABLE\0"),
    backend("E", b"SERROR\0VERROR\0C42P01\0Mno table\0\0"),
    backend("N", b"SAVISO\0VWARNING\0Mhm\0\0"),
    backend("G", b"\0\0\x02\0\0\0\0"),
    backend("H", b"\0\0\x01\0\0"),
    backend("d", b"x" * 100),
    backend("c", b""),
    backend("Z", b"T"),
    backend("Z", b"E"),
])

BACKEND_EXPECTED = [
    Message("Authentication", "R", 13, {"code": 5}),
    Message("Authentication", "R", 9, {"code": 0}),
    Message("ParameterStatus", "S", 26, {"name": "server_version", "value": "15.18"}),
    Message("BackendKeyData", "K", 13, {"processId": 7, "secretKey": 9}),
    Message("ReadyForQuery", "Z", 6, {"status": "I"}),
    Message("RowDescription", "T", 47, {"columns": ["a", "b"]}),
    Message("DataRow", "D", 12),
    Message("CommandComplete", "C", 14, {"tag": "SELECT 1", "command": "SELECT", "rows": 1}),
    Message("CommandComplete", "C", 16, {"tag": "INSERT 0 5", "command": "INSERT", "rows": 5}),
    Message("CommandComplete", "C", 18, {"tag": "CREATE TABLE", "command": "CREATE",
                                         "rows": None}),
    Message("ErrorResponse", "E", 37, {"fields": {"S": "ERROR", "V": "ERROR", "C": "42P01",
                                                  "M": "no table"}, "severity": "ERROR"}),
    Message("NoticeResponse", "N", 26, {"fields": {"S": "AVISO", "V": "WARNING", "M": "hm"},
                                        "severity": "WARNING"}),
    Message("CopyInResponse", "G", 12, {"format": 0, "columns": 2}),
    Message("CopyOutResponse", "H", 10, {"format": 0, "columns": 1}),
    Message("CopyData", "d", 105),
    Message("CopyDone", "c", 5),
    Message("ReadyForQuery", "Z", 6, {"status": "T"}),
    Message("ReadyForQuery", "Z", 6, {"status": "E"}),
]


class DecoderTests(SynchronousTestCase):
    """
    L{Decoder} in both directions.
    """

    def test_frontendWhole(self) -> None:
        """
        Every frontend message kind, all in one segment.
        """
        self.assertEqual(decodeAll(Decoder(True), FRONTEND_STREAM), FRONTEND_EXPECTED)

    def test_backendWhole(self) -> None:
        """
        Every backend message kind, all in one segment.
        """
        self.assertEqual(decodeAll(Decoder(False), BACKEND_STREAM), BACKEND_EXPECTED)

    def test_splitEverywhere(self) -> None:
        """
        Any split of either stream gives the same messages.
        """
        for step in (1, 2, 3, 5, 7, 13):
            self.assertEqual(decodeAll(Decoder(True), FRONTEND_STREAM, step), FRONTEND_EXPECTED)
            self.assertEqual(decodeAll(Decoder(False), BACKEND_STREAM, step), BACKEND_EXPECTED)
        for cut in range(len(FRONTEND_STREAM)):
            d = Decoder(True)
            got = d.feed(FRONTEND_STREAM[:cut]) + d.feed(FRONTEND_STREAM[cut:])
            self.assertEqual(got, FRONTEND_EXPECTED, cut)
        for cut in range(len(BACKEND_STREAM)):
            d = Decoder(False)
            got = d.feed(BACKEND_STREAM[:cut]) + d.feed(BACKEND_STREAM[cut:])
            self.assertEqual(got, BACKEND_EXPECTED, cut)

    def test_startupPhase(self) -> None:
        """
        SSLRequest, GSSENCRequest and CancelRequest keep the decoder in
        the startup phase; an unknown code is reported as such.
        """
        d = Decoder(True)
        self.assertEqual(d.feed(sslRequest() + untyped(80877104)
                                + untyped(80877102, b"\0\0\0\x01\0\0\0\x02")
                                + untyped(131072)), [
            Message("SSLRequest", "", 8), Message("GSSENCRequest", "", 8),
            Message("CancelRequest", "", 16, {"processId": 1, "secretKey": 2}),
            Message("UnknownStartup", "", 8, {"code": 131072})])
        self.assertTrue(d.startup)

    def test_encryptionResponse(self) -> None:
        """
        After L{Decoder.expectEncryptionResponse} the backend's one-byte
        answer is decoded, then typed messages again.
        """
        d = Decoder(False)
        d.expectEncryptionResponse()
        self.assertEqual(d.feed(b"N" + backend("Z", b"I")), [
            Message("EncryptionResponse", "N", 1, {"accepted": False}),
            Message("ReadyForQuery", "Z", 6, {"status": "I"})])

    def test_bigCopy(self) -> None:
        """
        A 64 MiB CopyData in 64 KiB segments is skipped by length: the
        buffer stays empty and one message comes out at the end.
        """
        d = Decoder(True)
        d.feed(startup({"user": "u"}))
        size = 64 * 1024 * 1024
        data = frontend("d", b"") [:1] + struct.pack("!I", size + 4)
        chunk = b"x" * 65536
        out = d.feed(data + chunk[:100])
        for _ in range(size // 65536 - 1):
            out += d.feed(chunk)
            self.assertEqual(len(d._buffer), 0)
        out += d.feed(chunk[100:] + frontend("c", b""))
        self.assertEqual(out, [Message("CopyData", "d", size + 5), Message("CopyDone", "c", 5)])

    def test_manyPerSegment(self) -> None:
        """
        Thousands of DataRows in one segment come out in order.
        """
        row = backend("D", b"\0\x01\0\0\0\x03abc")
        out = Decoder(False).feed(row * 5000 + backend("C", b"SELECT 5000\0"))
        self.assertEqual(len(out), 5001)
        self.assertEqual(out[-1].values["rows"], 5000)

    def assertMalformed(self, decoder: Decoder, data: bytes) -> None:
        out = decoder.feed(data)
        self.assertIsInstance(out[-1], MalformedMessage)
        self.assertTrue(decoder.stopped)
        self.assertEqual(decoder.feed(frontend("Q", b"SELECT 1\0")), [])

    def test_malformed(self) -> None:
        """
        Bad lengths, oversized startup packets, wrong fixed sizes, missing
        terminators and bad ReadyForQuery statuses stop the decoder.
        """
        self.assertMalformed(Decoder(True), struct.pack("!II", 4, 196608))
        self.assertMalformed(Decoder(True), struct.pack("!II", MAX_STARTUP_PACKET_LENGTH + 1,
                                                        196608))
        self.assertMalformed(Decoder(True), untyped(196608, b"user\0u"))
        started = startup({"user": "u"})
        self.assertMalformed(Decoder(True), started + b"Q\0\0\0\x03")
        self.assertMalformed(Decoder(True), started + frontend("S", b"x"))
        self.assertMalformed(Decoder(True), started + frontend("Q", b"no terminator"))
        self.assertMalformed(Decoder(False), backend("Z", b"X"))
        self.assertMalformed(Decoder(False), backend("C", b"SELECT 1"))
        self.assertMalformed(Decoder(False), b"D\x7f\xff\xff\xff")
        self.assertMalformed(Decoder(False, maxLength=100), backend("Q", b"x" * 200))

    def test_malformedAfterGood(self) -> None:
        """
        Messages before the malformed one are still returned, in order.
        """
        out = Decoder(False).feed(backend("Z", b"I") + backend("Z", b"Q"))
        self.assertEqual(out[0], Message("ReadyForQuery", "Z", 6, {"status": "I"}))
        self.assertIsInstance(out[1], MalformedMessage)

    def test_commandTag(self) -> None:
        """
        Command tags split into Envoy's statement word and a row count.
        """
        self.assertEqual(commandTag("INSERT 0 3"), ("INSERT", 3))
        self.assertEqual(commandTag("COPY 10"), ("COPY", 10))
        self.assertEqual(commandTag("BEGIN"), ("BEGIN", None))
        self.assertEqual(commandTag("DROP TABLE"), ("DROP", None))


class ScanSupportTests(SynchronousTestCase):
    """
    What a caller needs to scan whole messages itself and hand the rest
    to a L{Decoder}: L{countRules}, L{Decoder.atBoundary},
    L{Decoder.needed}.
    """

    def test_countRules(self) -> None:
        """
        Counted types give their fixed length or 0; decoded and unknown
        types give -1.
        """
        front = countRules(True, frozenset("QPX"))
        self.assertEqual((front[ord("S")], front[ord("H")], front[ord("B")], front[ord("d")]),
                         (4, 4, 0, 0))
        self.assertEqual((front[ord("Q")], front[ord("X")], front[ord("y")], front[0]),
                         (-1, -1, -1, -1))
        back = countRules(False, frozenset("CENR"))
        # BackendKeyData's length is not fixed: its key grew in protocol 3.2.
        self.assertEqual((back[ord("Z")], back[ord("K")], back[ord("D")], back[ord("T")]),
                         (5, 0, 0, 0))
        self.assertEqual((back[ord("C")], back[ord("E")], back[ord("Q")]), (-1, -1, -1))
        self.assertEqual(len(front), 256)

    def test_boundaryAndNeeded(self) -> None:
        """
        Not at a boundary in the startup phase or mid-message, where
        C{needed} says how much completes the header, then the message.
        """
        d = Decoder(True, only=frozenset("QPX"))
        self.assertFalse(d.atBoundary)
        self.assertEqual(d.needed, 0)
        d.feed(startup({"user": "u"}))
        self.assertTrue(d.atBoundary)
        query = frontend("Q", b"SELECT 1\0")
        copy = frontend("d", b"x" * 100)
        d.feed(query[:2])
        self.assertEqual((d.atBoundary, d.needed), (False, 3))
        d.feed(query[2:5])
        self.assertEqual((d.atBoundary, d.needed), (False, len(query) - 5))
        self.assertEqual(d.feed(query[5:]), [Message("Query", "Q", 14, {"sql": "SELECT 1"})])
        self.assertTrue(d.atBoundary)
        d.feed(copy[:30])
        self.assertEqual((d.atBoundary, d.needed), (False, len(copy) - 30))
        d.feed(copy[30:])
        self.assertEqual((d.atBoundary, d.needed, d.counted), (True, 0, 1))
        d.feed(b"Q\0\0\0\x02")
        self.assertEqual((d.atBoundary, d.needed), (False, 0))
