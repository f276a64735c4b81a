"""
Tests for L{pyenvoy.filters.redis_proxy.resp}: both decoders on the same cases.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.filters.redis_proxy import resp
from pyenvoy.filters.redis_proxy.resp import Error, ProtocolError, SimpleString, encode

_noHiredis: str | None = None if resp.hiredisAvailable() else "hiredis is not installed"

_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("array of bulk strings", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n",
     [[b"SET", b"k", b"va\r\nl"]]),
    ("integers", b":0\r\n:-12\r\n:9223372036854775807\r\n", [0, -12, 9223372036854775807]),
    ("errors", b"-ERR unknown command 'x'\r\n-MOVED 1 a:1\r\n",
     [Error(b"ERR unknown command 'x'"), Error(b"MOVED 1 a:1")]),
    ("simple strings", b"+OK\r\n+PONG\r\n", [b"OK", b"PONG"]),
    ("nulls", b"$-1\r\n*-1\r\n", [None, None]),
    ("empty bulk and empty array", b"$0\r\n\r\n*0\r\n", [b"", []]),
    ("nested arrays", b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n*1\r\n*0\r\n",
     [[[1, b"a"], [[]]]]),
    ("mixed array", b"*4\r\n+OK\r\n-ERR e\r\n$-1\r\n:3\r\n",
     [[b"OK", Error(b"ERR e"), None, 3]]),
    ("binary bulk", b"$4\r\n\x00\xff\r\n\r\n", [b"\x00\xff\r\n"]),
]

_INLINE_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("inline CRLF", b"PING\r\n", [[b"PING"]]),
    ("inline LF only, extra spaces", b"set  k\tv \n", [[b"set", b"k", b"v"]]),
    ("blank inline lines skipped", b"\r\n\nGET k\r\n", [[b"GET", b"k"]]),
    ("inline then RESP then inline", b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\r\n",
     [[b"PING"], [b"PING"], [b"ECHO", b"x"]]),
    ("RESP then inline in one read", b"*1\r\n$4\r\nPING\r\nGET a\r\n*1\r\n$1\r\nb\r\n",
     [[b"PING"], [b"GET", b"a"], [b"b"]]),
]


class _DecoderTests:
    """
    Cases every decoder passes; mixed into one test case per decoder.
    """

    decoderClass: Any

    def decoder(self, **kw: Any) -> Any:
        return self.decoderClass(**kw)

    def _check(self, cases: list[tuple[str, bytes, list[Any]]], inline: bool) -> None:
        for name, data, expected in cases:
            got = self.decoder(inline=inline).feed(data)
            self.assertEqual(got, expected, name)  # type: ignore[attr-defined]
            # Same bytes, split at every byte.
            d = self.decoder(inline=inline)
            split: list[Any] = []
            for i in range(len(data)):
                split.extend(d.feed(data[i:i + 1]))
            self.assertEqual(split, expected, name + " (byte by byte)")  # type: ignore[attr-defined]
            # Split into two at every position.
            for i in range(len(data) + 1):
                d = self.decoder(inline=inline)
                self.assertEqual(  # type: ignore[attr-defined]
                    d.feed(data[:i]) + d.feed(data[i:]), expected, f"{name} (split at {i})")

    def test_values(self) -> None:
        """Arrays, integers, errors, nulls and nested arrays decode, whole or split anywhere."""
        self._check(_CASES, inline=False)

    def test_inline(self) -> None:
        """Inline commands decode as lists of bulk strings, also mixed with RESP."""
        self._check(_INLINE_CASES, inline=True)

    def test_errorType(self) -> None:
        """An error reply is an L{Error}, not a plain string."""
        [value] = self.decoder().feed(b"-ERR x\r\n")
        self.assertIsInstance(value, Error)  # type: ignore[attr-defined]

    def test_inlineOffIsProtocolError(self) -> None:
        """Without inline, a non-RESP type byte is a protocol error."""
        self.assertRaises(ProtocolError, self.decoder().feed, b"GET k\r\n")  # type: ignore[attr-defined]

    def test_badInteger(self) -> None:
        """A malformed length is a protocol error."""
        self.assertRaises(ProtocolError, self.decoder().feed, b"$x\r\n")  # type: ignore[attr-defined]

    def test_bulkOverLimit(self) -> None:
        """A bulk string over the configured limit is a protocol error, whole or nested."""
        for data in (b"$11\r\n" + b"x" * 11 + b"\r\n",
                     b"*2\r\n$1\r\na\r\n$11\r\n" + b"x" * 11 + b"\r\n"):
            self.assertRaises(ProtocolError, self.decoder(maxBulkLength=10).feed, data)  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            self.decoder(maxBulkLength=10).feed(b"$10\r\n" + b"x" * 10 + b"\r\n"), [b"x" * 10])

    def test_noUnboundedBuffering(self) -> None:
        """An announced huge bulk string is refused before it is buffered."""
        limit = 1000
        for header in (b"$1000000000\r\n", b"*1\r\n$1000000000\r\n"):
            d = self.decoder(maxBulkLength=limit)
            fed = 0
            with self.assertRaises(ProtocolError):  # type: ignore[attr-defined]
                d.feed(header)
                fed += len(header)
                for _ in range(1000):
                    d.feed(b"x" * 1024)
                    fed += 1024
            self.assertLess(fed, 2 * resp.HiredisDecoder.PROBE_THRESHOLD + 2 * limit)  # type: ignore[attr-defined]

    def test_inlineTooLong(self) -> None:
        """An inline line without LF is not buffered past the inline limit."""
        d = self.decoder(inline=True)
        with self.assertRaises(ProtocolError):  # type: ignore[attr-defined]
            for _ in range(100):
                d.feed(b"x" * 4096)


class PyDecoderTests(_DecoderTests, SynchronousTestCase):
    """
    The pure-Python decoder.
    """

    decoderClass = resp.PyDecoder

    def test_simpleStringKept(self) -> None:
        """The Python decoder keeps simple strings apart so they re-encode as such."""
        [value] = self.decoder().feed(b"+OK\r\n")
        self.assertIsInstance(value, SimpleString)
        self.assertEqual(encode(value), b"+OK\r\n")


class HiredisDecoderTests(_DecoderTests, SynchronousTestCase):
    """
    The hiredis-backed decoder.
    """

    decoderClass = resp.HiredisDecoder
    if _noHiredis:
        skip = _noHiredis

    def test_pipelineLongerThanProbe(self) -> None:
        """A pipeline that never pauses on a boundary still decodes every command."""
        one = encode([b"SET", b"key", b"v" * 100])
        data = one * 2000
        d = self.decoder()
        got: list[Any] = []
        for i in range(0, len(data), 1000):
            got.extend(d.feed(data[i:i + 1000]))
        self.assertEqual(len(got), 2000)
        self.assertEqual(got[-1], [b"SET", b"key", b"v" * 100])

    def test_arrayLimitOnFastPath(self) -> None:
        """
        A read that starts with an array header over a small array limit
        is refused at once (it is not taken for a short header), and one
        at the limit decodes.
        """
        over = b"*101\r\n" + b"$1\r\na\r\n" * 101
        self.assertRaises(ProtocolError, self.decoder(maxArrayLength=100).feed, over)
        at = b"*100\r\n" + b"$1\r\na\r\n" * 100
        self.assertEqual(self.decoder(maxArrayLength=100).feed(at), [[b"a"] * 100])

    def test_nothingKeptAfterWholeReads(self) -> None:
        """
        A read of whole commands leaves nothing held; one that ends inside
        a command holds that read until the next completes it.
        """
        d = self.decoder()
        one = encode([b"SET", b"k", b"v"])
        self.assertEqual(d.feed(one * 3), [[b"SET", b"k", b"v"]] * 3)
        self.assertEqual(d._keptLen, 0)
        self.assertEqual(d.feed(one + one[:5]), [[b"SET", b"k", b"v"]])
        self.assertEqual(d._keptLen, len(one) + 5)
        self.assertEqual(d.feed(one[5:] + one), [[b"SET", b"k", b"v"]] * 2)
        self.assertEqual(d._keptLen, 0)


class EncodeTests(SynchronousTestCase):
    """
    L{encode} and L{makeDecoder}.
    """

    def test_roundTrip(self) -> None:
        """Every value type encodes to the bytes that decode back to it."""
        value = [b"a", SimpleString(b"OK"), Error(b"ERR e"), 7, None, [b"", []]]
        data = encode(value)
        self.assertEqual(data, b"*6\r\n$1\r\na\r\n+OK\r\n-ERR e\r\n:7\r\n$-1\r\n*2\r\n$0\r\n\r\n*0\r\n")
        self.assertEqual(resp.PyDecoder().feed(data), [value])

    def test_error(self) -> None:
        """L{resp.error} builds an error reply."""
        self.assertEqual(resp.error("no upstream host"), b"-no upstream host\r\n")

    def test_makeDecoder(self) -> None:
        """hiredis is preferred, except when simple strings must be kept."""
        if not _noHiredis:
            self.assertIsInstance(resp.makeDecoder(), resp.HiredisDecoder)
        self.assertIsInstance(resp.makeDecoder(keepSimpleStrings=True), resp.PyDecoder)
        self.assertIsInstance(resp.makeDecoder(preferC=False), resp.PyDecoder)

    def _restore(self, had: bool, module: Any) -> None:
        if had:
            sys.modules["hiredis"] = module
        else:
            sys.modules.pop("hiredis", None)

    def test_makeDecoderWithoutHiredis(self) -> None:
        """Without hiredis importable, L{resp.makeDecoder} gives the Python decoder."""
        self.addCleanup(self._restore, "hiredis" in sys.modules, sys.modules.get("hiredis"))
        sys.modules["hiredis"] = None  # type: ignore[assignment]
        self.assertFalse(resp.hiredisAvailable())
        d = resp.makeDecoder(inline=True)
        self.assertIsInstance(d, resp.PyDecoder)
        self.assertEqual(d.feed(b"PING\r\n"), [[b"PING"]])
