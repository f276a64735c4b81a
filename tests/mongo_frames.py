"""
MongoDB wire frames built by hand for tests (every opcode).
"""

from __future__ import annotations

import struct
import zlib

import bson


def frame(opCode: int, payload: bytes, requestId: int = 1, responseTo: int = 0) -> bytes:
    """
    A whole message: header + C{payload}.
    """
    return struct.pack("<iiii", 16 + len(payload), requestId, responseTo, opCode) + payload


def cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def opMsg(body: dict, sequences: dict | None = None, flags: int = 0, requestId: int = 1,
          responseTo: int = 0, checksum: bool = False) -> bytes:
    """
    An OP_MSG with a kind-0 body and kind-1 sequences.
    """
    payload = b"\x00" + bson.encode(body)
    for ident, docs in (sequences or {}).items():
        inner = cstring(ident) + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(inner)) + inner
    if checksum:
        flags |= 1
        payload = struct.pack("<I", flags) + payload + b"\x00\x00\x00\x00"
    else:
        payload = struct.pack("<I", flags) + payload
    return frame(2013, payload, requestId, responseTo)


def opQuery(collection: str, query: dict | bytes, flags: int = 0, fields: dict | None = None,
            requestId: int = 1, skip: int = 0, ret: int = 0) -> bytes:
    """
    An OP_QUERY; C{query} may be a document already encoded.
    """
    payload = struct.pack("<i", flags) + cstring(collection) + struct.pack("<ii", skip, ret)
    payload += query if isinstance(query, bytes) else bson.encode(query)
    payload += bson.encode(fields) if fields is not None else b""
    return frame(2004, payload, requestId)


def opReply(docs: list[dict], cursorId: int = 0, flags: int = 0, requestId: int = 2,
            responseTo: int = 1) -> bytes:
    payload = struct.pack("<iqii", flags, cursorId, 0, len(docs))
    payload += b"".join(bson.encode(d) for d in docs)
    return frame(1, payload, requestId, responseTo)


def opGetMore(collection: str, cursorId: int, ret: int = 0, requestId: int = 3) -> bytes:
    return frame(2005, struct.pack("<i", 0) + cstring(collection)
                 + struct.pack("<iq", ret, cursorId), requestId)


def opInsert(collection: str, docs: list[dict], flags: int = 0, requestId: int = 4) -> bytes:
    return frame(2002, struct.pack("<i", flags) + cstring(collection)
                 + b"".join(bson.encode(d) for d in docs), requestId)


def opUpdate(collection: str, selector: dict, update: dict, requestId: int = 5) -> bytes:
    return frame(2001, struct.pack("<i", 0) + cstring(collection) + struct.pack("<i", 0)
                 + bson.encode(selector) + bson.encode(update), requestId)


def opDelete(collection: str, selector: dict, requestId: int = 6) -> bytes:
    return frame(2006, struct.pack("<i", 0) + cstring(collection) + struct.pack("<i", 0)
                 + bson.encode(selector), requestId)


def opKillCursors(cursors: list[int], requestId: int = 7) -> bytes:
    return frame(2007, struct.pack("<ii", 0, len(cursors))
                 + b"".join(struct.pack("<q", c) for c in cursors), requestId)


def opCommand(database: str, command: str, metadata: dict, args: dict,
              docs: tuple[dict, ...] = (), requestId: int = 8) -> bytes:
    """
    An OP_COMMAND with its input documents.
    """
    return frame(2010, cstring(database) + cstring(command) + bson.encode(metadata)
                 + bson.encode(args) + b"".join(bson.encode(d) for d in docs), requestId)


def opCommandReply(metadata: dict, reply: dict, docs: tuple[dict, ...] = (), requestId: int = 9,
                   responseTo: int = 8) -> bytes:
    """
    An OP_COMMANDREPLY with its output documents.
    """
    return frame(2011, bson.encode(metadata) + bson.encode(reply)
                 + b"".join(bson.encode(d) for d in docs), requestId, responseTo)


def withElements(document: bytes, *elements: bytes) -> bytes:
    """
    C{document} with raw BSON C{elements} appended (types pymongo cannot
    encode, such as symbol).
    """
    body = document[4:-1] + b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def compressed(message: bytes, compressorId: int = 2, compress=zlib.compress) -> bytes:
    """
    Wrap a whole message in OP_COMPRESSED.
    """
    _, requestId, responseTo, opCode = struct.unpack_from("<iiii", message)
    inner = message[16:]
    payload = struct.pack("<iiB", opCode, len(inner), compressorId) + compress(inner)
    return frame(2012, payload, requestId, responseTo)
