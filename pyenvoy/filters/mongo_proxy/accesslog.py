"""
The mongo_proxy access log's text: messages and BSON documents written
byte for byte as Envoy's C{toString()} writes them (C{codec_impl.cc},
C{bson_impl.cc}), so that tools reading Envoy's log read ours.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from typing import Any

from pyenvoy.filters.mongo_proxy import codec

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_UNDECODABLE = b'"<undecodable>"'


def escape(raw: bytes) -> bytes:
    """
    Envoy's C{StringUtil::escape}: CR, LF, tab and C{"} are escaped and
    nothing else (not the backslash, not other control bytes), so a line
    is not always strict JSON, as in Envoy.
    """
    return (raw.replace(b'"', b'\\"').replace(b"\r", b"\\r").replace(b"\n", b"\\n")
            .replace(b"\t", b"\\t"))


def double(value: float) -> bytes:
    """
    C{std::to_string(double)}: C{printf("%f")} (C{1.500000}), with glibc's
    C{-nan} for a NaN whose sign bit is set.
    """
    if value != value:
        return b"-nan" if math.copysign(1.0, value) < 0 else b"nan"
    return b"%f" % value


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """
    A BSON string (int32 length, bytes, NUL) at C{pos}: its bytes, embedded
    NULs kept as Envoy keeps them, and the position after it.
    """
    length = _I32.unpack_from(data, pos)[0]
    if length < 1:
        raise ValueError("bad BSON string length")
    start = pos + 4
    return data[start:start + length - 1], start + length


def _extended(kind: int, data: bytes, pos: int, out: list[bytes]) -> int:
    """
    The BSON types Envoy's decoder does not know (it stops inspecting with
    C{decoding_error}): written as extended JSON objects instead.
    """
    if kind == 0x13:
        from bson.decimal128 import Decimal128

        value = str(Decimal128.from_bid(data[pos:pos + 16])).encode()
        out.append(b'{"$numberDecimal": "%s"}' % value)
        return pos + 16
    if kind == 0x06:
        out.append(b'{"$undefined": true}')
        return pos
    if kind == 0xFF:
        out.append(b'{"$minKey": 1}')
        return pos
    if kind == 0x7F:
        out.append(b'{"$maxKey": 1}')
        return pos
    if kind == 0x0D:
        code, pos = _string(data, pos)
        out.append(b'{"$code": "%s"}' % escape(code))
        return pos
    if kind == 0x0F:
        code, start = _string(data, pos + 4)
        out.append(b'{"$code": "%s", "$scope": ' % escape(code))
        end = _document(data, start, out)
        out.append(b"}")
        if end != pos + _I32.unpack_from(data, pos)[0]:
            raise ValueError("bad BSON code with scope")
        return end
    if kind == 0x0C:
        ref, pos = _string(data, pos)
        out.append(b'{"$dbPointer": {"$ref": "%s", "$id": "%s"}}'
                   % (escape(ref), data[pos:pos + 12].hex().encode()))
        return pos + 12
    raise ValueError(f"unknown BSON type {kind:#x}")


def _document(data: bytes, pos: int, out: list[bytes]) -> int:
    """
    Append Envoy's C{DocumentImpl::toString()} of the document (or array,
    written as a document with keys C{"0"}, C{"1"}...) at C{pos} to C{out};
    return the position after it.
    """
    size = _I32.unpack_from(data, pos)[0]
    end = pos + size - 1
    if size < 5 or end >= len(data) or data[end] != 0:
        raise ValueError("bad BSON document")
    pos += 4
    append = out.append
    append(b"{")
    separator = b'"'
    while pos < end:
        kind = data[pos]
        nul = data.index(b"\x00", pos + 1, end)
        # Keys are written as they are, unescaped, as Envoy does.
        append(separator)
        append(data[pos + 1:nul])
        append(b'": ')
        separator = b', "'
        pos = nul + 1
        if kind == 0x10:
            append(b"%d" % _I32.unpack_from(data, pos)[0])
            pos += 4
        elif kind == 0x02 or kind == 0x0E:
            value, pos = _string(data, pos)
            append(b'"' + escape(value) + b'"')
        elif kind == 0x03 or kind == 0x04:
            pos = _document(data, pos, out)
        elif kind == 0x01:
            append(double(_F64.unpack_from(data, pos)[0]))
            pos += 8
        elif kind == 0x12 or kind == 0x09 or kind == 0x11:
            # int64, datetime (ms since the epoch) and timestamp (the raw
            # 64 bits: seconds << 32 | increment), all as plain integers.
            append(b"%d" % _I64.unpack_from(data, pos)[0])
            pos += 8
        elif kind == 0x07:
            append(b'"%s"' % data[pos:pos + 12].hex().encode())
            pos += 12
        elif kind == 0x08:
            append(b"true" if data[pos] else b"false")
            pos += 1
        elif kind == 0x0A:
            append(b"null")
        elif kind == 0x05:
            # Binary: the bytes themselves, subtype dropped.
            length = _I32.unpack_from(data, pos)[0]
            if length < 0:
                raise ValueError("bad BSON binary length")
            start = pos + 5
            append(b'"' + escape(data[start:start + length]) + b'"')
            pos = start + length
        elif kind == 0x0B:
            patternEnd = data.index(b"\x00", pos, end)
            optionsEnd = data.index(b"\x00", patternEnd + 1, end)
            append(b'["%s", "%s"]' % (data[pos:patternEnd], data[patternEnd + 1:optionsEnd]))
            pos = optionsEnd + 1
        else:
            pos = _extended(kind, data, pos, out)
    if pos != end:
        raise ValueError("BSON element overruns its document")
    append(b"}")
    return end + 1


def document(raw: bytes) -> bytes:
    """
    One BSON document as Envoy writes it: C{{"k": v, "k2": v2}}.  A
    document that cannot be read is written as C{"<undecodable>"}.
    """
    out: list[bytes] = []
    try:
        _document(raw, 0, out)
    except Exception:
        return _UNDECODABLE
    return b"".join(out)


def _documents(docs: list[Any], full: bool) -> bytes:
    """
    Envoy's C{documentListToString}, or only the count.
    """
    if not full:
        return b"%d" % len(docs)
    return b"[" + b", ".join(document(d.raw) for d in docs) + b"]"


def _hex(value: int) -> bytes:
    """
    fmt's C{{:#x}}: C{0x1f}, C{-0x1} for a negative int32.
    """
    return format(value, "#x").encode()


def _text(value: str | None) -> bytes:
    return (value or "").encode("utf-8", "surrogateescape")


def _optional(value: str | None) -> bytes:
    return b"null" if value is None else b'"' + escape(_text(value)) + b'"'


def _scalar(value: Any) -> bytes:
    """
    A top-level value already decoded by pymongo, written as Envoy writes
    its BSON type.
    """
    if value is None:
        return b"null"
    if value is True or value is False:
        return b"true" if value else b"false"
    if isinstance(value, float):
        return double(value)
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str):
        return b'"' + escape(_text(value)) + b'"'
    raw = getattr(value, "raw", None)
    return document(raw) if raw is not None else _UNDECODABLE


def describe(m: codec.Message, full: bool) -> bytes:
    """
    A message as Envoy's C{Message::toString(full)} writes it: keys, value
    types and formats of C{codec_impl.cc} for the opcodes Envoy decodes
    (C{KILL_CURSORS} without C{OP_}, its C{response_to} in hex and its
    count as a string, the C{OP_COMMANDREPLY} line's own spacing), the same
    style for OP_MSG, OP_UPDATE, OP_DELETE and OP_COMPRESSED.  C{full}
    writes documents, else only their count (Envoy logs only OP_REPLY so).
    """
    op = m.opCode
    rid, rto = m.requestId, m.responseTo
    close = b"}"
    if op == codec.OP_QUERY:
        text = (b'{"opcode": "OP_QUERY", "id": %d, "response_to": %d, "flags": "%s", '
                b'"collection": "%s", "skip": %d, "return": %d, "query": %s, "fields": %s'
                % (rid, rto, _hex(m.flags), _text(m.fullCollectionName), m.numberToSkip,
                   m.numberToReturn, document(m.body.raw) if full else b'"{...}"',
                   document(m.fields.raw) if m.fields is not None else b"{}"))
    elif op == codec.OP_REPLY:
        text = (b'{"opcode": "OP_REPLY", "id": %d, "response_to": %d, "flags": "%s", '
                b'"cursor": "%d", "from": %d, "returned": %d, "documents": %s'
                % (rid, rto, _hex(m.flags), m.cursorId, m.startingFrom, m.numberReturned,
                   _documents(m.documents, full)))
    elif op == codec.OP_GET_MORE:
        text = (b'{"opcode": "OP_GET_MORE", "id": %d, "response_to": %d, "collection": "%s", '
                b'"return": %d, "cursor": %d'
                % (rid, rto, _text(m.fullCollectionName), m.numberToReturn, m.cursorId))
    elif op == codec.OP_INSERT:
        text = (b'{"opcode": "OP_INSERT", "id": %d, "response_to": %d, "flags": "%s", '
                b'"collection": "%s", "documents": %s'
                % (rid, rto, _hex(m.flags), _text(m.fullCollectionName),
                   _documents(m.documents, full)))
    elif op == codec.OP_KILL_CURSORS:
        text = (b'{"opcode": "KILL_CURSORS", "id": %d, "response_to": "%s", '
                b'"num_cursors": "%d", "cursors": [%s]'
                % (rid, _hex(rto), len(m.cursorIds),
                   b", ".join(b"%d" % c for c in m.cursorIds)))
    elif op == codec.OP_COMMAND:
        text = (b'{"opcode": "OP_COMMAND", "id": %d, "response_to": %d, "database": "%s", '
                b'"commandName": "%s", "metadata": %s, "commandArgs": %s, "inputDocs": %s'
                % (rid, rto, _text(m.database), _text(m.command), document(m.metadata.raw),
                   document(m.body.raw), _documents(m.documents, full)))
    elif op == codec.OP_COMMANDREPLY:
        text = (b'{"opcode": "OP_COMMANDREPLY", "id": %d, "response_to": %d, '
                b'"metadata": %s, "commandReply": %s, "outputDocs":%s'
                % (rid, rto, document(m.metadata.raw), document(m.body.raw),
                   _documents(m.documents, full)))
        close = b"} "
    elif op == codec.OP_MSG:
        text = (b'{"opcode": "OP_MSG", "id": %d, "response_to": %d, "flags": "%s", '
                b'"command": %s, "database": %s, "collection": %s'
                % (rid, rto, _hex(m.flags), _optional(m.command), _optional(m.database),
                   _optional(m.collection)))
        if full:
            sequences = b", ".join(b'"%s": %d' % (escape(_text(k)), len(v))
                                   for k, v in m.sequences.items())
            text += b', "body": %s, "sequences": {%s}' % (document(m.body.raw), sequences)
        else:
            try:
                ok = _scalar(m.top.get("ok"))
            except Exception:
                ok = b"null"
            text += (b', "ok": %s, "cursor": "%d", "returned": %s'
                     % (ok, m.cursorId, b"null" if m.batchSize is None else b"%d" % m.batchSize))
    elif op == codec.OP_UPDATE or op == codec.OP_DELETE:
        text = (b'{"opcode": "%s", "id": %d, "response_to": %d, "flags": "%s", '
                b'"collection": "%s", "selector": %s'
                % (m.opName.encode(), rid, rto, _hex(m.flags), _text(m.fullCollectionName),
                   document(m.body.raw) if full else b'"{...}"'))
    else:
        text = (b'{"opcode": "%s", "id": %d, "response_to": %d, "compressor": "%s", '
                b'"original_opcode": %d'
                % (m.opName.encode(), rid, rto, _text(m.compressor), m.originalOpCode or 0))
        return text + close
    if m.compressor is not None:
        text += b', "compressor": "%s"' % _text(m.compressor)
    return text + close


def isoTime(seconds: float) -> bytes:
    """
    Envoy's C{AccessLogDateTimeFormatter}: C{2024-01-02T03:04:05.678Z}.
    """
    millis = int(seconds * 1000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
            + f".{millis % 1000:03d}Z").encode()


def hostText(address: Any) -> bytes:
    """
    The upstream host as Envoy's C{Address::asString()}: C{1.2.3.4:27017},
    C{[::1]:27017} (IPv6 in brackets, written by C{inet_ntop}), C{-} if none.
    """
    if address is None:
        return b"-"
    if isinstance(address, str):
        return address.encode()
    host, port = address[0], address[1]
    if ":" in host:
        try:
            host = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
        except (OSError, ValueError):
            pass
        return f"[{host}]:{port}".encode()
    return f"{host}:{port}".encode()


def logLine(now: float, message: bytes, upstreamHost: Any) -> bytes:
    """
    One access log line, as Envoy's C{AccessLog::logMessage} formats it.
    """
    return b'{"time": "%s", "message": %s, "upstream_host": "%s"}\n' % (
        isoTime(now), message, hostText(upstreamHost))
