"""
Sans-I/O RESP2 codec for redis_proxy: bytes in, values out, and values back to bytes.

Two decoders give the same values for the same bytes:

  - L{HiredisDecoder}, the fast path, drives C{hiredis.Reader} (the C parser
    Redis clients use) and only looks at message boundaries itself;
  - L{PyDecoder}, a pure-Python parser used when hiredis is not installed.

L{makeDecoder} picks hiredis when it can be imported.

Values: bulk strings and simple strings are C{bytes}, integers C{int},
errors L{Error}, nulls C{None}, arrays C{list}.  L{PyDecoder} returns simple
strings as L{SimpleString} (a C{bytes} subclass, so equal to the plain bytes)
so that a reply can be re-encoded with its original type; hiredis cannot make
that distinction, so L{makeDecoder}C{(keepSimpleStrings=True)} always gives
the Python decoder.

With C{inline=True} (client side), a message that does not start with a
RESP type byte is an inline command, as Redis accepts from telnet: one line
ended by LF (a CR before it is dropped), split on spaces and tabs, decoded as
a list of bulk strings.  Blank lines are skipped.  No quoting is understood.

Limits: a bulk string longer than C{maxBulkLength}, an array longer than
C{maxArrayLength}, or an inline line or header line longer than
C{maxInlineLength} is a L{ProtocolError}.  The decoder never buffers more
than one message's worth of those bounds, so a hostile peer cannot make it
buffer without limit.  After a L{ProtocolError} the decoder is unusable:
the connection has to be closed.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

#: Redis's own default C{proto-max-bulk-len}.
DEFAULT_MAX_BULK_LENGTH = 512 * 1024 * 1024
#: Redis's own limit on the element count of a multibulk request.
DEFAULT_MAX_ARRAY_LENGTH = 1024 * 1024 * 1024
#: Redis's C{PROTO_INLINE_MAX_SIZE}: longest inline command or header line.
DEFAULT_MAX_INLINE_LENGTH = 64 * 1024

_TYPE_BYTES = frozenset(b"*$+-:")
# Header of a bulk string / array: "$" + up to 20 digits (with sign) + CRLF.
_HEADER_SLACK = 32


class ProtocolError(Exception):
    """
    The peer sent bytes that are not RESP, or a value over a configured limit.
    """


class Error(bytes):
    """
    A RESP error value (C{-ERR ...}): the message without the C{-} and CRLF.
    """

    def __repr__(self) -> str:
        return f"Error({bytes(self)!r})"


class SimpleString(bytes):
    """
    A RESP simple string (C{+OK}), kept apart from bulk strings so that it
    re-encodes as what it was.
    """

    def __repr__(self) -> str:
        return f"SimpleString({bytes(self)!r})"


class Decoder(Protocol):
    """
    What both decoders provide.
    """

    def feed(self, data: bytes) -> list[Any]:
        """
        Add C{data}; return every value completed by it, in order.

        @raise ProtocolError: on bytes that are not RESP or over a limit.
        """


def _parseInline(line: bytes) -> list[bytes] | None:
    """
    Split one inline command line (LF already removed); C{None} if blank.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    args = line.split()
    return args or None


class PyDecoder:
    """
    Pure-Python incremental RESP decoder.

    It keeps the unparsed bytes and re-parses the current message from its
    start when more arrive, so a message split over many reads costs more
    than one read at once; the limits bound how much can be held.
    """

    def __init__(
        self,
        inline: bool = False,
        maxBulkLength: int = DEFAULT_MAX_BULK_LENGTH,
        maxArrayLength: int = DEFAULT_MAX_ARRAY_LENGTH,
        maxInlineLength: int = DEFAULT_MAX_INLINE_LENGTH,
    ) -> None:
        self._inline = inline
        self._maxBulk = maxBulkLength
        self._maxArray = maxArrayLength
        self._maxLine = maxInlineLength
        self._buf = b""
        # Bytes needed before the next parse attempt can succeed.
        self._need = 1

    def feed(self, data: bytes) -> list[Any]:
        """
        Add C{data}; return every value completed by it, in order.
        """
        buf = self._buf + data if self._buf else bytes(data)
        out: list[Any] = []
        pos = 0
        n = len(buf)
        while n - pos >= self._need:
            if self._inline and buf[pos] not in _TYPE_BYTES:
                end = buf.find(b"\n", pos)
                if end < 0:
                    if n - pos > self._maxLine:
                        raise ProtocolError("too big inline request")
                    break
                if end - pos > self._maxLine:
                    raise ProtocolError("too big inline request")
                args = _parseInline(buf[pos:end])
                pos = end + 1
                if args is not None:
                    out.append(args)
                continue
            result = self._parse(buf, pos)
            if result is None:
                break
            value, pos = result
            out.append(value)
            self._need = 1
        self._buf = buf[pos:]
        return out

    def _line(self, buf: bytes, pos: int) -> tuple[bytes, int] | None:
        """
        The line at C{pos} without CRLF and the position after it, or
        C{None} if it is not complete yet.
        """
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > self._maxLine:
                raise ProtocolError("too big header line")
            return None
        if end - pos > self._maxLine:
            raise ProtocolError("too big header line")
        return buf[pos:end], end + 2

    def _int(self, raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(f"invalid integer {raw[:32]!r}") from None

    def _parse(self, buf: bytes, pos: int) -> tuple[Any, int] | None:
        """
        Parse one value at C{pos}; C{None} if incomplete.
        """
        if pos >= len(buf):
            return None
        kind = buf[pos]
        got = self._line(buf, pos + 1)
        if got is None:
            return None
        line, pos = got
        if kind == 0x2B:  # +
            return SimpleString(line), pos
        if kind == 0x2D:  # -
            return Error(line), pos
        if kind == 0x3A:  # :
            return self._int(line), pos
        if kind == 0x24:  # $
            length = self._int(line)
            if length < 0:
                return None, pos
            if length > self._maxBulk:
                raise ProtocolError(f"bulk string of {length} bytes over limit {self._maxBulk}")
            end = pos + length
            if len(buf) < end + 2:
                return None
            if buf[end:end + 2] != b"\r\n":
                raise ProtocolError("bulk string not terminated by CRLF")
            return buf[pos:end], end + 2
        if kind == 0x2A:  # *
            count = self._int(line)
            if count < 0:
                return None, pos
            if count > self._maxArray:
                raise ProtocolError(f"array of {count} elements over limit {self._maxArray}")
            items = []
            for _ in range(count):
                got2 = self._parse(buf, pos)
                if got2 is None:
                    return None
                item, pos = got2
                items.append(item)
            return items, pos
        raise ProtocolError(f"invalid RESP type byte {bytes([kind])!r}")


class HiredisDecoder:
    """
    RESP decoder on C{hiredis.Reader}.

    hiredis does not say how many of the bytes it holds are still unparsed
    (C{len()} counts consumed bytes until it compacts), so the decoder keeps
    the bytes fed since the last message boundary (C{has_data()} false
    right after a value) and how many values it returned since:

      - hiredis refuses inline commands.  An inline command at such a point
        is split off here; one that follows RESP in the same read makes
        hiredis raise, and then those bytes are replayed through
        L{PyDecoder}, the values already returned are skipped, and the
        connection stays on the Python decoder (a telnet user's connection).
      - hiredis would buffer any announced length.  When the kept bytes pass
        L{PROBE_THRESHOLD} and then each time they double, they are run
        through L{PyDecoder}, which raises on a bulk or array header over the
        limits wherever it is nested, and which tells exactly what is left
        unparsed, so the kept bytes are trimmed to that.  What is held stays
        within about twice the limit plus the legitimate bytes before a bad
        header.  This check is the cost of the fast path: a client that
        pipelines without pause (no read ends on a message boundary) gets a
        Python pass over every L{PROBE_THRESHOLD} bytes.
    """

    #: Kept bytes after which the Python parser checks them.
    PROBE_THRESHOLD = 64 * 1024

    def __init__(
        self,
        inline: bool = False,
        maxBulkLength: int = DEFAULT_MAX_BULK_LENGTH,
        maxArrayLength: int = DEFAULT_MAX_ARRAY_LENGTH,
        maxInlineLength: int = DEFAULT_MAX_INLINE_LENGTH,
        fixErrors: bool = True,
    ) -> None:
        import hiredis

        self._hiredis = hiredis
        self._inline = inline
        self._limits = (maxBulkLength, maxArrayLength, maxInlineLength)
        # An array header whose CRLF ends before this has too few digits
        # to be over the array limit.
        self._shortHeader = len(str(maxArrayLength + 1)) + 2
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self._kept: list[bytes] = []
        self._keptLen = 0
        self._returned = 0
        self._probeAt = self.PROBE_THRESHOLD
        # An incomplete inline line, which hiredis never sees.
        self._pending = b""
        # Set once the connection has fallen back to Python.
        self._py: PyDecoder | None = None
        self._fixErrors = fixErrors

    def _pyDecoder(self, inline: bool) -> PyDecoder:
        return PyDecoder(inline, *self._limits)

    def feed(self, data: bytes) -> list[Any]:
        """
        Add C{data}; return every value completed by it, in order.
        """
        if self._py is not None:
            return self._py.feed(data)
        if (not self._keptLen and not self._pending and data and data[0] == 0x2A
                and 0 < data.find(b"\r\n", 1, self._shortHeader)
                and len(data) <= self._limits[0]):
            return self._feedArrays(data)
        out: list[Any] = []
        data = self._pending + data if self._pending else bytes(data)
        self._pending = b""
        reader = self._reader
        while data and not self._keptLen:
            # hiredis has consumed everything: look at the next byte.
            if data[0] in _TYPE_BYTES:
                break
            if not self._inline:
                raise ProtocolError(f"invalid RESP type byte {data[:1]!r}")
            end = data.find(b"\n")
            if end < 0:
                if len(data) > self._limits[2]:
                    raise ProtocolError("too big inline request")
                self._pending = data
                return out
            if end > self._limits[2]:
                raise ProtocolError("too big inline request")
            args = _parseInline(data[:end])
            if args is not None:
                out.append(args)
            data = data[end + 1:]
        if not data:
            return out
        if not self._keptLen:
            self._checkStart(data)
        reader.feed(data)
        self._kept.append(data)
        self._keptLen += len(data)
        atBoundary = False
        while True:
            try:
                value = reader.gets()
            except self._hiredis.ProtocolError:
                return out + self._fallBack()
            if value is _NOT_ENOUGH:
                break
            if self._keptLen > self._limits[0]:
                # Only a message this big can hold an over-limit bulk
                # string that was complete before it could be probed.
                _checkSizes(value, self._limits[0], self._limits[1])
            out.append(_fixErrors(value) if self._fixErrors else value)
            self._returned += 1
            # has_data() is also false mid-message once hiredis has parsed
            # every byte it has, so only right after a value does it mean
            # "nothing left".
            atBoundary = not reader.has_data()
        if atBoundary:
            self._kept, self._keptLen, self._returned = [], 0, 0
            self._probeAt = self.PROBE_THRESHOLD
        elif self._keptLen >= self._probeAt:
            self._probe()
        return out

    def _feedArrays(self, data: bytes) -> list[Any]:
        """
        L{feed} for the usual read: at a message boundary, starting with an
        array header too short to be over the array limit, no bigger than
        the bulk limit.  The same steps as the general path, without the
        checks that cannot apply, and no C{gets()} once hiredis has
        nothing left.
        """
        reader = self._reader
        reader.feed(data)
        out: list[Any] = []
        gets = reader.gets
        hasData = reader.has_data
        atBoundary = False
        try:
            while True:
                value = gets()
                if value is _NOT_ENOUGH:
                    break
                out.append(value)
                if not hasData():
                    atBoundary = True
                    break
        except self._hiredis.ProtocolError:
            self._kept, self._keptLen, self._returned = [data], len(data), len(out)
            return out + self._fallBack()
        if self._fixErrors:
            out = [_fixErrors(value) for value in out]
        if not atBoundary:
            self._kept, self._keptLen, self._returned = [data], len(data), len(out)
            if self._keptLen >= self._probeAt:
                self._probe()
        return out

    def _checkStart(self, data: bytes) -> None:
        """
        Refuse at once a message whose own header is over the limits.
        """
        kind = data[0]
        if kind not in (0x24, 0x2A):
            return
        end = data.find(b"\r\n", 1, _HEADER_SLACK)
        if end < 0:
            return
        try:
            n = int(data[1:end])
        except ValueError:
            raise ProtocolError(f"invalid integer {data[1:end]!r}") from None
        if kind == 0x24 and n > self._limits[0]:
            raise ProtocolError(f"bulk string of {n} bytes over limit {self._limits[0]}")
        if kind == 0x2A and n > self._limits[1]:
            raise ProtocolError(f"array of {n} elements over limit {self._limits[1]}")

    def _probe(self) -> None:
        """
        Check the kept bytes against the limits and trim them (see class).
        """
        probe = self._pyDecoder(False)
        values = probe.feed(b"".join(self._kept))
        if len(values) != self._returned:  # pragma: no cover - defensive
            raise ProtocolError("hiredis and Python parsers disagree")
        left = probe._buf
        self._kept, self._keptLen, self._returned = [left], len(left), 0
        self._probeAt = max(self.PROBE_THRESHOLD, 2 * len(left))

    def _fallBack(self) -> list[Any]:
        """
        hiredis refused the bytes: replay them through the Python decoder
        and keep using it.
        """
        self._py = self._pyDecoder(self._inline)
        values = self._py.feed(b"".join(self._kept))
        self._kept = []
        return values[self._returned:]


def _checkSizes(value: Any, maxBulk: int, maxArray: int) -> None:
    """
    Raise L{ProtocolError} if C{value} holds a bulk string or array over
    the limits.
    """
    if isinstance(value, bytes):
        if len(value) > maxBulk:
            raise ProtocolError(f"bulk string of {len(value)} bytes over limit {maxBulk}")
    elif isinstance(value, list):
        if len(value) > maxArray:
            raise ProtocolError(f"array of {len(value)} elements over limit {maxArray}")
        for v in value:
            _checkSizes(v, maxBulk, maxArray)


class _NotEnough:
    """
    Marker C{hiredis.Reader.gets} returns when no message is complete.
    """


_NOT_ENOUGH = _NotEnough()


def _fixErrors(value: Any) -> Any:
    """
    hiredis builds errors with C{replyError(str)}; make them L{Error} bytes.
    """
    if isinstance(value, list):
        return [_fixErrors(v) for v in value]
    if isinstance(value, Error):
        return value
    if isinstance(value, Exception):
        return Error(str(value).encode("utf-8", "surrogateescape"))
    return value


def hiredisAvailable() -> bool:
    """
    Whether the hiredis C parser can be imported.
    """
    try:
        import hiredis
    except ImportError:
        return False
    return hiredis is not None


def makeDecoder(
    inline: bool = False,
    maxBulkLength: int = DEFAULT_MAX_BULK_LENGTH,
    keepSimpleStrings: bool = False,
    preferC: bool = True,
    fixErrors: bool = True,
) -> Decoder:
    """
    A decoder: hiredis-backed when available (and allowed), else pure Python.

    C{fixErrors=False} leaves errors nested in arrays as hiredis makes
    them (exception objects): a proxy reading commands, which rejects any
    array element that is not a bulk string, need not walk every array.
    """
    if preferC and not keepSimpleStrings and hiredisAvailable():
        return HiredisDecoder(inline=inline, maxBulkLength=maxBulkLength,
                              fixErrors=fixErrors)
    return PyDecoder(inline=inline, maxBulkLength=maxBulkLength)


def encode(value: Any) -> bytes:
    """
    Encode one value: C{bytes} as bulk string, L{SimpleString} as simple
    string, L{Error} as error, C{int} as integer, C{None} as null bulk
    string, C{list}/C{tuple} as array; C{str} is UTF-8 bulk.
    """
    parts: list[bytes] = []
    _encodeInto(value, parts)
    return b"".join(parts)


def _encodeInto(value: Any, parts: list[bytes]) -> None:
    if isinstance(value, Error):
        parts.append(b"-" + value + b"\r\n")
    elif isinstance(value, SimpleString):
        parts.append(b"+" + value + b"\r\n")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        parts.append(b"$%d\r\n" % len(value) + value + b"\r\n")
    elif isinstance(value, str):
        _encodeInto(value.encode("utf-8"), parts)
    elif isinstance(value, bool):
        raise TypeError("cannot encode bool as RESP")
    elif isinstance(value, int):
        parts.append(b":%d\r\n" % value)
    elif value is None:
        parts.append(b"$-1\r\n")
    elif isinstance(value, (list, tuple)):
        parts.append(b"*%d\r\n" % len(value))
        for v in value:
            _encodeInto(v, parts)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")


def error(message: str | bytes) -> bytes:
    """
    The encoded RESP error reply C{-message\\r\\n}.
    """
    if isinstance(message, str):
        message = message.encode("utf-8")
    return b"-" + message + b"\r\n"


#: Longest bulk string and simple line that L{ReplyFramer} frames in one
#: regular-expression pass; longer ones go through its scan.
ONE_PASS_MAX = 1023


def _bulkTail(digits: str, limit: int) -> bytes:
    """
    Regular-expression alternatives for the rest of a bulk string header
    whose length starts with C{digits}: the remaining digits, CRLF, then
    exactly that many bytes, for every length up to C{limit}.  Spelling
    the lengths out as a digit trie is what lets one pattern check that a
    bulk string's content has its declared size.
    """
    parts = [b"\r\n(?s:.{%d})" % int(digits)] if digits else []
    if digits != "0":  # no leading zeros
        for digit in "0123456789":
            longer = digits + digit
            if int(longer) <= limit:
                parts.append(digit.encode() + _bulkTail(longer, limit))
    return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"


_onePass: Any = None


def _onePassPatterns() -> tuple[Any, Any]:
    """
    (one scalar reply, a run of them): a bulk string of up to
    L{ONE_PASS_MAX} bytes, a null bulk string, or a simple string, error
    or integer line.  Compiled on first use (about 40 ms).
    """
    global _onePass
    if _onePass is None:
        one = (b"\$(?:-1|" + _bulkTail("", ONE_PASS_MAX) + b")\r\n"
               b"|[+\-:][^\r\n]{0,%d}+\r\n" % ONE_PASS_MAX)
        # A reply starts at the read's start or after a line's end: where
        # it cannot, findall's search moves on after one look back, so a
        # read of anything else costs linear time, not a match attempt of
        # up to a line's length at every byte.
        _onePass = (re.compile(b"(?<![^\n])(?:" + one + b")"),
                    re.compile(b"(?:" + one + b")*"))
    return _onePass


class ReplyFramer:
    """
    Split a RESP byte stream into whole values, each as its raw bytes.

    The proxy passes most upstream replies through untouched, so it needs
    where each reply ends, not what it holds: this keeps the reply's exact
    wire type (a C{+OK} stays a simple string, a C{*-1} a null array).
    A read that starts on a reply boundary has its leading run of small
    scalar replies (the usual answers to GET, SET, INCR, ...) split by one
    regular-expression pass in C; the rest is scanned here, one C{find}
    per value header.  A value split over reads is
    resumed where the scan stopped, and a large bulk string is not joined
    until all of it has arrived, so big replies cost linear time.

    Limits as for the decoders: a bulk string over C{maxBulkLength}, an
    array over C{maxArrayLength} elements or a header line over
    C{maxInlineLength} bytes is a L{ProtocolError}.
    """

    def __init__(
        self,
        maxBulkLength: int = DEFAULT_MAX_BULK_LENGTH,
        maxArrayLength: int = DEFAULT_MAX_ARRAY_LENGTH,
        maxInlineLength: int = DEFAULT_MAX_INLINE_LENGTH,
    ) -> None:
        self._maxBulk = maxBulkLength
        self._maxArray = maxArrayLength
        self._maxLine = maxInlineLength
        self._chunks: list[bytes] = []
        self._length = 0
        # Buffered bytes needed before a scan can make progress.
        self._need = 0
        # Where the scan of the value at the buffer's start stopped, and
        # how many values (the value itself and array elements) are left.
        self._pos = 0
        self._remaining = 0
        self._onePass = (self.onePass and maxBulkLength >= ONE_PASS_MAX
                         and maxInlineLength >= ONE_PASS_MAX)
        if self._onePass:
            self._one, self._run = _onePassPatterns()

    #: Whether reads may be split by the one-pass pattern at all; the
    #: tests turn it off to check that both ways frame the same.
    onePass = True

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return the raw bytes of every value it completed.
        """
        if not self._chunks and self._onePass:
            # A read of nothing but +OK replies (SET, MSET's SETs).
            count = len(data) // 5
            if count and len(data) == 5 * count and data.count(b"+OK\r\n") == count:
                return [b"+OK\r\n"] * count
            replies = self._one.findall(data)
            # Matches never overlap and come in order, so if their lengths
            # add up to the read's, they tile it.
            if sum(map(len, replies)) == len(data):
                return replies
            end = self._run.match(data).end()
            if end:
                return self._one.findall(data, 0, end) + self._scan(data[end:])
        return self._scan(data)

    def _scan(self, data: bytes) -> list[bytes]:
        """
        L{feed} by scanning the headers.
        """
        chunks = self._chunks
        chunks.append(data)
        self._length += len(data)
        if self._length < self._need:
            return []
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        n = len(buf)
        out: list[bytes] = []
        start = 0
        pos = self._pos
        remaining = self._remaining
        need = 0
        find = buf.find
        append = out.append
        maxBulk = self._maxBulk
        while True:
            if not remaining:
                if pos >= n:
                    break
                # Fast path for a whole scalar reply (most replies); anything
                # unusual falls through to the general scan below.
                kind = buf[pos]
                if kind == 0x24:  # $
                    eol = find(b"\r\n", pos + 1)
                    if eol >= 0:
                        try:
                            length = int(buf[pos + 1:eol])
                        except ValueError:
                            raise ProtocolError(f"invalid integer {buf[pos + 1:eol]!r}") from None
                        if length < 0:
                            append(buf[pos:eol + 2])
                            pos = eol + 2
                            continue
                        end = eol + length + 4
                        if length <= maxBulk and end <= n and buf[end - 2] == 13 \
                                and buf[end - 1] == 10:
                            append(buf[pos:end])
                            pos = end
                            continue
                elif kind == 0x2B or kind == 0x3A or kind == 0x2D:  # + : -
                    eol = find(b"\r\n", pos + 1)
                    if eol >= 0:
                        append(buf[pos:eol + 2])
                        pos = eol + 2
                        continue
                start = pos
                remaining = 1
            kind = buf[pos] if pos < n else -1
            eol = find(b"\r\n", pos + 1) if kind >= 0 else -1
            if eol < 0:
                if n - pos > self._maxLine:
                    raise ProtocolError("too long header line")
                need = n + 1
                break
            if kind == 0x24:  # $
                length = self._int(buf[pos + 1:eol])
                if length < 0:
                    pos = eol + 2
                else:
                    if length > self._maxBulk:
                        raise ProtocolError(f"bulk string of {length} bytes over limit")
                    end = eol + length + 4
                    if end > n:
                        need = end
                        break
                    if buf[end - 2:end] != b"\r\n":
                        raise ProtocolError("bulk string not ended by CRLF")
                    pos = end
            elif kind == 0x2A:  # *
                count = self._int(buf[pos + 1:eol])
                if count > self._maxArray:
                    raise ProtocolError(f"array of {count} elements over limit")
                if count > 0:
                    remaining += count
                pos = eol + 2
            elif kind == 0x2B or kind == 0x2D or kind == 0x3A:  # + - :
                pos = eol + 2
            else:
                raise ProtocolError(f"invalid RESP type byte {buf[pos:pos + 1]!r}")
            remaining -= 1
            if not remaining:
                append(buf[start:pos])
        if remaining:
            rest = buf[start:]
            self._pos = pos - start
            self._need = need - start
        else:
            rest = b""
            self._pos = 0
            self._need = 0
        self._remaining = remaining
        self._chunks = [rest] if rest else []
        self._length = len(rest)
        return out

    @staticmethod
    def _int(raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(f"invalid integer {raw!r}") from None
