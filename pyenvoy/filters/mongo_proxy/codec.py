"""
Sans-I/O MongoDB wire-protocol decoder: bytes in, L{Message}s out.

Frames are sliced whole from a buffer; only the fields the filter's stats
and access log need are looked at.  BSON goes through pymongo's C
extension as L{RawBSONDocument}s, so nested documents stay undecoded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from bson import CodecOptions
from bson.raw_bson import RawBSONDocument

#: Largest message accepted (MongoDB's own limit, C{maxMessageSizeBytes}).
MAX_MESSAGE_SIZE = 48 * 1024 * 1024

OP_REPLY = 1
OP_UPDATE = 2001
OP_INSERT = 2002
OP_QUERY = 2004
OP_GET_MORE = 2005
OP_DELETE = 2006
OP_KILL_CURSORS = 2007
OP_COMMAND = 2010
OP_COMMANDREPLY = 2011
OP_COMPRESSED = 2012
OP_MSG = 2013

OPCODE_NAMES = {
    OP_REPLY: "OP_REPLY", OP_UPDATE: "OP_UPDATE", OP_INSERT: "OP_INSERT",
    OP_QUERY: "OP_QUERY", OP_GET_MORE: "OP_GET_MORE", OP_DELETE: "OP_DELETE",
    OP_KILL_CURSORS: "OP_KILL_CURSORS", OP_COMMAND: "OP_COMMAND",
    OP_COMMANDREPLY: "OP_COMMANDREPLY", OP_COMPRESSED: "OP_COMPRESSED", OP_MSG: "OP_MSG",
}

# OP_QUERY flag bits.
QUERY_TAILABLE_CURSOR = 1 << 1
QUERY_NO_CURSOR_TIMEOUT = 1 << 4
QUERY_AWAIT_DATA = 1 << 5
QUERY_EXHAUST = 1 << 6
# OP_REPLY flag bits.
REPLY_CURSOR_NOT_FOUND = 1 << 0
REPLY_QUERY_FAILURE = 1 << 1
# OP_MSG flag bits.
MSG_CHECKSUM_PRESENT = 1 << 0
MSG_MORE_TO_COME = 1 << 1
MSG_EXHAUST_ALLOWED = 1 << 16
_MSG_REQUIRED_UNKNOWN = 0xFFFF & ~(MSG_CHECKSUM_PRESENT | MSG_MORE_TO_COME)

COMPRESSOR_NAMES = {0: "noop", 1: "snappy", 2: "zlib", 3: "zstd"}

_RAW = CodecOptions(document_class=RawBSONDocument)
_HEADER = struct.Struct("<iiii")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class DecodeError(Exception):
    """
    The bytes are not a valid MongoDB message (or one is too large).  The
    stream can no longer be followed.
    """


@dataclass
class Message:
    """
    One decoded message.  Which fields are set depends on C{opCode}:

      - all: C{requestId}, C{responseTo}, C{size} (bytes on the wire)
      - C{OP_MSG}: C{flags}, C{body} (section kind 0), C{sequences}
        (kind 1, identifier → documents), C{checksum}, and what was read
        from the body: C{command} (first key), C{database} (C{$db}),
        C{collection} (the command's string argument), C{cursorId},
        C{batchSize} (documents in C{cursor.firstBatch}/C{nextBatch}), and
        C{top}, the body's top level as a read-only mapping (L{topLevel})
      - C{OP_QUERY}: C{flags}, C{fullCollectionName}, C{numberToSkip},
        C{numberToReturn}, C{body} (the query), C{fields}; for a command
        (C{$cmd} in the name) also C{command}, C{database},
        C{collection} and C{top}, read as for C{OP_MSG} from the query or
        its C{$query}
      - C{OP_REPLY}: C{flags}, C{cursorId}, C{startingFrom},
        C{numberReturned}, C{documents}
      - C{OP_GET_MORE}: C{fullCollectionName}, C{numberToReturn}, C{cursorId}
      - C{OP_INSERT}: C{flags}, C{fullCollectionName}, C{documents}
      - C{OP_UPDATE}/C{OP_DELETE}: C{flags}, C{fullCollectionName},
        C{body} (selector), C{documents} (the update, for OP_UPDATE)
      - C{OP_KILL_CURSORS}: C{cursorIds}
      - C{OP_COMMAND}: C{database}, C{command}, C{metadata}, C{body}, C{documents}
      - C{OP_COMMANDREPLY}: C{metadata}, C{body}, C{documents}

    A message that came inside C{OP_COMPRESSED} has C{compressor} set to
    the compressor's name; if that compressor is not available,
    C{opCode} is C{OP_COMPRESSED}, C{originalOpCode} is the wrapped one
    and C{unsupportedCompressor} is true.
    """

    opCode: int
    requestId: int
    responseTo: int
    size: int
    flags: int = 0
    fullCollectionName: str | None = None
    command: str | None = None
    database: str | None = None
    collection: str | None = None
    body: Any = None
    top: Any = None
    fields: Any = None
    metadata: Any = None
    documents: list[Any] = field(default_factory=list)
    sequences: dict[str, list[Any]] = field(default_factory=dict)
    checksum: int | None = None
    cursorId: int = 0
    cursorIds: list[int] = field(default_factory=list)
    startingFrom: int = 0
    numberReturned: int = 0
    numberToSkip: int = 0
    numberToReturn: int = 0
    batchSize: int | None = None
    compressor: str | None = None
    originalOpCode: int | None = None
    unsupportedCompressor: bool = False

    @property
    def opName(self) -> str:
        """
        The opcode's name, e.g. C{"OP_MSG"}.
        """
        return OPCODE_NAMES.get(self.opCode, str(self.opCode))

    @property
    def moreToCome(self) -> bool:
        """
        An C{OP_MSG} with C{moreToCome}: no reply will answer it.
        """
        return self.opCode == OP_MSG and bool(self.flags & MSG_MORE_TO_COME)


def _snappy() -> Any:
    try:
        import snappy
    except ImportError:
        return None
    return snappy.uncompress


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        return None

    def decompress(data: bytes, size: int) -> bytes:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)

    return decompress


def _snappyLength(payload: bytes) -> int:
    """
    The uncompressed length a snappy block announces (its varint preamble),
    checked before inflating so that a lie cannot cost memory.
    """
    value = shift = 0
    for i in range(min(5, len(payload))):
        b = payload[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7
    return -1


class _Reader:
    """
    A cursor over one frame; every read is bounds-checked.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def _take(self, n: int) -> int:
        start = self.pos
        if start + n > self.end:
            raise DecodeError("message truncated")
        self.pos = start + n
        return start

    def int32(self) -> int:
        return _I32.unpack_from(self.data, self._take(4))[0]

    def uint32(self) -> int:
        return _U32.unpack_from(self.data, self._take(4))[0]

    def int64(self) -> int:
        return _I64.unpack_from(self.data, self._take(8))[0]

    def byte(self) -> int:
        return self.data[self._take(1)]

    def cstring(self) -> str:
        nul = self.data.find(b"\x00", self.pos, self.end)
        if nul < 0:
            raise DecodeError("unterminated string")
        raw = self.data[self.pos:nul]
        self.pos = nul + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("string is not UTF-8") from None

    def document(self, end: int | None = None) -> RawBSONDocument:
        limit = self.end if end is None else end
        pos = self.pos
        if pos + 5 > limit:
            raise DecodeError("BSON document truncated")
        size = _I32.unpack_from(self.data, pos)[0]
        if size < 5 or pos + size > limit:
            raise DecodeError(f"bad BSON document size {size}")
        if self.data[pos + size - 1] != 0:
            raise DecodeError("BSON document not terminated")
        self.pos = pos + size
        try:
            return RawBSONDocument(self.data[pos:pos + size], _RAW)
        except Exception as e:
            raise DecodeError(f"bad BSON document: {e}") from None

    def documents(self, end: int | None = None) -> list[RawBSONDocument]:
        limit = self.end if end is None else end
        docs = []
        while self.pos < limit:
            docs.append(self.document(limit))
        return docs

    def atEnd(self) -> bool:
        return self.pos >= self.end


def topLevel(doc: RawBSONDocument) -> Any:
    """
    C{doc}'s top level, decoded once, as a read-only mapping whose lookups
    run in C (nested documents stay raw).  A L{RawBSONDocument}'s own
    C{get} goes through Python's C{Mapping.get} and C{__getitem__} each
    time.
    """
    return doc.items().mapping


def _summariseCommand(message: Message, document: RawBSONDocument) -> Any:
    """
    Read the command name, database, collection and cursor facts from a
    command (or command reply) body.  Top level only.

    @return: the document's L{topLevel}.
    """
    body = topLevel(document)
    message.command = command = next(iter(body), None)
    db = body.get("$db")
    if isinstance(db, str):
        message.database = db
    if command is not None:
        arg = body.get(command)
        if isinstance(arg, str):
            message.collection = arg
        elif command == "getMore":
            coll = body.get("collection")
            if isinstance(coll, str):
                message.collection = coll
            if isinstance(arg, int):
                message.cursorId = arg
    cursor = body.get("cursor")
    if isinstance(cursor, RawBSONDocument):
        cursor = topLevel(cursor)
        cid = cursor.get("id")
        if isinstance(cid, int):
            message.cursorId = cid
        for key in ("firstBatch", "nextBatch"):
            batch = cursor.get(key)
            if isinstance(batch, list):
                message.batchSize = len(batch)
                break
    return body


class Decoder:
    """
    Incremental decoder for one direction of one connection.

    L{feed} takes any slice of the byte stream and returns the messages
    completed by it.  After a L{DecodeError} the decoder must not be fed
    again.
    """

    def __init__(self, maxMessageSize: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self.maxMessageSize = maxMessageSize
        self._decompressors: dict[int, Any] = {2: None}
        self._decompressors[1] = _snappy()
        self._decompressors[3] = _zstd()

    @property
    def buffered(self) -> int:
        """
        Bytes held waiting for the rest of their message.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """
        Add C{data}; return the messages it completed, in order.

        @raise DecodeError: the stream is not MongoDB or a message is too big.
        """
        buf = self._buffer
        messages = []
        if not buf:
            # The usual read: whole messages from its start, decoded in place.
            if type(data) is not bytes:
                data = bytes(data)
            pos, size = 0, len(data)
            while size - pos >= 4:
                length = _I32.unpack_from(data, pos)[0]
                if length < 16 or length > self.maxMessageSize:
                    raise DecodeError(f"bad message length {length}")
                if size - pos < length:
                    break
                messages.append(self.decodeFrame(
                    data if length == size else data[pos:pos + length]))
                pos += length
            if pos < size:
                buf += data[pos:] if pos else data
            return messages
        buf += data
        while len(buf) >= 4:
            length = _I32.unpack_from(buf, 0)[0]
            if length < 16 or length > self.maxMessageSize:
                raise DecodeError(f"bad message length {length}")
            if len(buf) < length:
                break
            frame = bytes(buf[:length])
            del buf[:length]
            messages.append(self.decodeFrame(frame))
        return messages

    def decodeFrame(self, frame: bytes) -> Message:
        """
        Decode one whole message (header included).
        """
        length, requestId, responseTo, opCode = _HEADER.unpack_from(frame, 0)
        if length != len(frame):
            raise DecodeError("message length does not match frame")
        try:
            return self._decode(frame, 16, opCode, requestId, responseTo, len(frame))
        except DecodeError:
            raise
        except Exception as e:  # bson's own errors, bad UTF-8, overflow...
            raise DecodeError(f"malformed {OPCODE_NAMES.get(opCode, opCode)}: {e}") from None

    def _decode(self, frame: bytes, start: int, opCode: int, requestId: int,
                responseTo: int, size: int) -> Message:
        r = _Reader(frame, start, len(frame))
        m = Message(opCode, requestId, responseTo, size)
        if opCode == OP_MSG:
            m.flags = flags = r.uint32()
            if flags & _MSG_REQUIRED_UNKNOWN:
                raise DecodeError(f"OP_MSG has unknown required flag bits {flags:#x}")
            end = r.end - 4 if flags & MSG_CHECKSUM_PRESENT else r.end
            if end < r.pos:
                raise DecodeError("OP_MSG truncated")
            while r.pos < end:
                kind = r.byte()
                if kind == 0:
                    if m.body is not None:
                        raise DecodeError("OP_MSG has two body sections")
                    m.body = r.document(end)
                elif kind == 1:
                    sectionStart = r.pos
                    sectionSize = r.int32()
                    sectionEnd = sectionStart + sectionSize
                    if sectionSize < 5 or sectionEnd > end:
                        raise DecodeError(f"bad OP_MSG section size {sectionSize}")
                    r.end, saved = sectionEnd, r.end
                    ident = r.cstring()
                    m.sequences.setdefault(ident, []).extend(r.documents())
                    r.end = saved
                else:
                    raise DecodeError(f"unknown OP_MSG section kind {kind}")
            if m.body is None:
                raise DecodeError("OP_MSG has no body section")
            if flags & MSG_CHECKSUM_PRESENT:
                r.pos = end
                m.checksum = r.uint32()
            m.top = _summariseCommand(m, m.body)
        elif opCode == OP_QUERY:
            m.flags = r.int32()
            m.fullCollectionName = r.cstring()
            m.numberToSkip = r.int32()
            m.numberToReturn = r.int32()
            m.body = r.document()
            if not r.atEnd():
                m.fields = r.document()
            if not r.atEnd():
                raise DecodeError("OP_QUERY has trailing bytes")
            if "$cmd" in m.fullCollectionName:
                # A command, wherever "$cmd" is in the name (Envoy's test).
                m.database = m.fullCollectionName.partition(".")[0]
                query = m.body.get("$query", m.body)
                if isinstance(query, RawBSONDocument):
                    m.top = _summariseCommand(m, query)
        elif opCode == OP_REPLY:
            m.flags = r.int32()
            m.cursorId = r.int64()
            m.startingFrom = r.int32()
            m.numberReturned = r.int32()
            m.documents = r.documents()
            if m.numberReturned != len(m.documents):
                raise DecodeError(
                    f"OP_REPLY says {m.numberReturned} documents, has {len(m.documents)}")
        elif opCode == OP_GET_MORE:
            r.int32()
            m.fullCollectionName = r.cstring()
            m.numberToReturn = r.int32()
            m.cursorId = r.int64()
        elif opCode == OP_INSERT:
            m.flags = r.int32()
            m.fullCollectionName = r.cstring()
            m.documents = r.documents()
        elif opCode == OP_UPDATE:
            r.int32()
            m.fullCollectionName = r.cstring()
            m.flags = r.int32()
            m.body = r.document()
            m.documents = [r.document()]
        elif opCode == OP_DELETE:
            r.int32()
            m.fullCollectionName = r.cstring()
            m.flags = r.int32()
            m.body = r.document()
        elif opCode == OP_KILL_CURSORS:
            r.int32()
            count = r.int32()
            if count < 0 or count * 8 != r.end - r.pos:
                raise DecodeError(f"OP_KILL_CURSORS has a bad cursor count {count}")
            m.cursorIds = [r.int64() for _ in range(count)]
        elif opCode == OP_COMMAND:
            m.database = r.cstring()
            m.command = r.cstring()
            m.metadata = r.document()
            m.body = r.document()
            m.documents = r.documents()
        elif opCode == OP_COMMANDREPLY:
            m.metadata = r.document()
            m.body = r.document()
            m.documents = r.documents()
            _summariseCommand(m, m.body)
            m.command = None
        elif opCode == OP_COMPRESSED:
            if start != 16:
                raise DecodeError("OP_COMPRESSED inside OP_COMPRESSED")
            return self._decompress(frame, r, requestId, responseTo, size)
        else:
            raise DecodeError(f"invalid mongo op {opCode}")
        if m.fullCollectionName is not None and m.collection is None:
            db, dot, coll = m.fullCollectionName.partition(".")
            if dot:
                m.database = m.database or db
                m.collection = coll
        return m

    def _decompress(self, frame: bytes, r: _Reader, requestId: int, responseTo: int,
                    size: int) -> Message:
        originalOpCode = r.int32()
        uncompressedSize = r.int32()
        compressorId = r.byte()
        if uncompressedSize < 0 or uncompressedSize + 16 > self.maxMessageSize:
            raise DecodeError(f"bad OP_COMPRESSED uncompressed size {uncompressedSize}")
        if originalOpCode == OP_COMPRESSED:
            raise DecodeError("OP_COMPRESSED inside OP_COMPRESSED")
        payload = frame[r.pos:]
        name = COMPRESSOR_NAMES.get(compressorId)
        if name is None:
            raise DecodeError(f"unknown compressor id {compressorId}")
        if compressorId == 0:
            inner = payload
        elif compressorId == 2:
            d = zlib.decompressobj()
            inner = d.decompress(payload, uncompressedSize + 1)
        else:
            decompress = self._decompressors.get(compressorId)
            if decompress is None:
                m = Message(OP_COMPRESSED, requestId, responseTo, size)
                m.compressor = name
                m.originalOpCode = originalOpCode
                m.unsupportedCompressor = True
                return m
            if compressorId == 1:
                if _snappyLength(payload) != uncompressedSize:
                    raise DecodeError("snappy length does not match uncompressedSize")
                inner = decompress(payload)
            else:
                inner = decompress(payload, uncompressedSize + 1)
        if len(inner) != uncompressedSize:
            raise DecodeError(f"OP_COMPRESSED inflated to {len(inner)} bytes, "
                              f"expected {uncompressedSize}")
        whole = frame[:16] + inner
        m = self._decode(whole, 16, originalOpCode, requestId, responseTo, size)
        m.compressor = name
        m.originalOpCode = originalOpCode
        return m
