"""
A sans-I/O decoder of the PostgreSQL frontend/backend protocol (v3.0), one
direction at a time: bytes in, L{Message}s out, nothing ever rewritten.

The frontend starts with untyped startup-phase messages (SSLRequest,
GSSENCRequest, CancelRequest, StartupMessage); after a StartupMessage, and
from the start on the backend side, every message is a type byte and a
4-byte length that counts itself.  Whole messages are sliced from a buffer;
bodies nobody reads (DataRow, CopyData, Bind, PasswordMessage,
FunctionCall) are skipped by their length, so a large COPY or result set
costs no work per byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

#: The untyped startup-phase request codes.
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 196608
#: Codes at or above this (1234 in the high 16 bits) ask for encryption
#: or a cancel, not a protocol version.
ENCRYPTION_REQUEST_BASE_CODE = 1234 << 16

#: Envoy's (and PostgreSQL's) C{MAX_STARTUP_PACKET_LENGTH}.
MAX_STARTUP_PACKET_LENGTH = 10000
#: PostgreSQL's own bound on one message (C{PQ_LARGE_MESSAGE_LIMIT},
#: 1 GiB - 1).  Envoy has none; a longer length means we lost sync.
MAX_MESSAGE_LENGTH = 0x3FFFFFFF

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_HEADER = struct.Struct("!cI")
_INT16 = struct.Struct("!h")

FRONTEND_TYPES = {
    "B": "Bind", "C": "Close", "d": "CopyData", "c": "CopyDone", "f": "CopyFail",
    "D": "Describe", "E": "Execute", "H": "Flush", "F": "FunctionCall",
    "p": "PasswordMessage", "P": "Parse", "Q": "Query", "S": "Sync", "X": "Terminate",
}
BACKEND_TYPES = {
    "R": "Authentication", "K": "BackendKeyData", "2": "BindComplete", "3": "CloseComplete",
    "C": "CommandComplete", "d": "CopyData", "c": "CopyDone", "G": "CopyInResponse",
    "H": "CopyOutResponse", "W": "CopyBothResponse", "D": "DataRow", "I": "EmptyQueryResponse",
    "E": "ErrorResponse", "V": "FunctionCallResponse", "v": "NegotiateProtocolVersion",
    "n": "NoData", "N": "NoticeResponse", "A": "NotificationResponse",
    "t": "ParameterDescription", "S": "ParameterStatus", "1": "ParseComplete",
    "s": "PortalSuspended", "Z": "ReadyForQuery", "T": "RowDescription",
}

#: Types whose body is skipped by length, never buffered.
_FRONTEND_SKIP = frozenset("dBpF")
_BACKEND_SKIP = frozenset("dDV")
#: Types whose length is fixed by the protocol (self-inclusive length).
_FRONTEND_FIXED = {"S": 4, "H": 4, "X": 4, "c": 4}
_BACKEND_FIXED = {"Z": 5, "2": 4, "3": 4, "c": 4, "I": 4, "n": 4, "1": 4, "s": 4}
#: BackendKeyData's secret key: 4 bytes in protocol 3.0, up to 256 from 3.2.
MAX_SECRET_KEY = 256

#: CommandComplete commands whose tag ends with a row count.
_ROW_COUNT_COMMANDS = frozenset(("INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "FETCH",
                                 "MOVE", "COPY"))


class Malformed(Exception):
    """
    The bytes are not the protocol: the decoder has lost sync.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """
    One decoded message.

    @ivar name: the protocol's name (C{"Query"}, C{"SSLRequest"},
        C{"Unknown"}, C{"UnknownStartup"}, ...).
    @ivar type: the type byte as a character; C{""} for untyped
        startup-phase messages.
    @ivar length: the whole message's size on the wire.
    @ivar values: what was decoded from the body (see L{Decoder}).
    """

    name: str
    type: str
    length: int
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """
    The point where decoding stopped for good, and why.
    """

    reason: str


def _cstrings(body: bytes) -> list[str]:
    return [s.decode("utf-8", "replace") for s in body.split(b"\0")]


def _cstring(body: bytes, offset: int) -> tuple[str, int]:
    end = body.find(b"\0", offset)
    if end < 0:
        raise Malformed("string without terminator")
    return body[offset:end].decode("utf-8", "replace"), end + 1


def commandTag(tag: str) -> tuple[str, int | None]:
    """
    Split a CommandComplete tag into its command word (Envoy's statement
    kind) and its row count, if the command reports one.
    """
    words = tag.split(" ")
    command = words[0]
    rows = None
    if command in _ROW_COUNT_COMMANDS and len(words) > 1 and words[-1].isdigit():
        rows = int(words[-1])
    return command, rows


def _noticeFields(body: bytes) -> dict[str, str]:
    if not body.endswith(b"\0"):
        raise Malformed("error/notice fields without terminator")
    fields: dict[str, str] = {}
    for item in body[:-1].split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode("utf-8", "replace")
    return fields


def _startup(body: bytes, length: int) -> Message:
    if length < 8:
        raise Malformed(f"startup message of length {length}")
    code = _UINT32.unpack_from(body, 0)[0]
    if code == SSL_REQUEST_CODE and length == 8:
        return Message("SSLRequest", "", length)
    if code == GSSENC_REQUEST_CODE and length == 8:
        return Message("GSSENCRequest", "", length)
    if code == CANCEL_REQUEST_CODE and length == 16:
        pid, key = struct.unpack_from("!ii", body, 4)
        return Message("CancelRequest", "", length, {"processId": pid, "secretKey": key})
    if code >> 16 == PROTOCOL_3_0 >> 16:
        # Protocol 3.x: 3.0, and 3.2 (PostgreSQL 18's libpq asks for it
        # with max_protocol_version=latest; a server without it answers
        # NegotiateProtocolVersion and goes on in 3.0).
        if not body.endswith(b"\0"):
            raise Malformed("startup parameters without terminator")
        items = _cstrings(body[4:-1])
        if items and items[-1] == "":
            items.pop()
        if len(items) % 2:
            raise Malformed("startup parameters not in pairs")
        parameters = dict(zip(items[::2], items[1::2]))
        return Message("StartupMessage", "", length, {"parameters": parameters})
    return Message("UnknownStartup", "", length, {"code": code})


def _frontend(kind: str, body: bytes) -> dict[str, Any]:
    if kind == "Q":
        sql, _ = _cstring(body, 0)
        return {"sql": sql}
    if kind == "P":
        name, offset = _cstring(body, 0)
        sql, offset = _cstring(body, offset)
        return {"statement": name, "sql": sql}
    if kind in "CD":
        if not body:
            raise Malformed("Close/Describe without a target")
        name, _ = _cstring(body, 1)
        return {"target": chr(body[0]), "name": name}
    if kind == "E":
        portal, offset = _cstring(body, 0)
        if len(body) != offset + 4:
            raise Malformed("Execute of the wrong length")
        return {"portal": portal, "maxRows": _INT32.unpack_from(body, offset)[0]}
    if kind == "f":
        message, _ = _cstring(body, 0)
        return {"message": message}
    return {}


def _backend(kind: str, body: bytes) -> dict[str, Any]:
    if kind == "C":
        tag, _ = _cstring(body, 0)
        command, rows = commandTag(tag)
        return {"tag": tag, "command": command, "rows": rows}
    if kind in "EN":
        fields = _noticeFields(body)
        return {"fields": fields, "severity": fields.get("V", fields.get("S"))}
    if kind == "Z":
        status = chr(body[0])
        if status not in "ITE":
            raise Malformed(f"ReadyForQuery status {status!r}")
        return {"status": status}
    if kind == "R":
        if len(body) < 4:
            raise Malformed("Authentication without a code")
        return {"code": _INT32.unpack_from(body, 0)[0]}
    if kind == "S":
        name, offset = _cstring(body, 0)
        value, _ = _cstring(body, offset)
        return {"name": name, "value": value}
    if kind == "K":
        if not 8 <= len(body) <= 4 + MAX_SECRET_KEY:
            raise Malformed(f"BackendKeyData of length {len(body) + 4}")
        if len(body) == 8:
            pid, key = struct.unpack_from("!ii", body, 0)
            return {"processId": pid, "secretKey": key}
        # Protocol 3.2: a longer key, kept as bytes.
        return {"processId": _INT32.unpack_from(body, 0)[0], "secretKey": bytes(body[4:])}
    if kind == "T":
        if len(body) < 2:
            raise Malformed("RowDescription without a count")
        count = _INT16.unpack_from(body, 0)[0]
        names, offset = [], 2
        for _ in range(count):
            name, offset = _cstring(body, offset)
            names.append(name)
            offset += 18
        if offset != len(body):
            raise Malformed("RowDescription of the wrong length")
        return {"columns": names}
    if kind in "GHW":
        if len(body) < 3:
            raise Malformed("Copy response too short")
        count = _INT16.unpack_from(body, 1)[0]
        if len(body) != 3 + 2 * count:
            raise Malformed("Copy response of the wrong length")
        return {"format": body[0], "columns": count}
    return {}


_DECODE, _SKIP, _COUNT = range(3)


def countRules(frontend: bool, only: frozenset[str]) -> tuple[int, ...]:
    """
    What a L{Decoder} with C{only} does with a whole typed message, by
    type byte, as a table a scanner can index with the byte itself: the
    length the protocol fixes for a type it only counts, C{0} for a type
    it only counts whatever its length (at least 4), C{-1} for a type it
    decodes or does not know.

    A filter that scans whole messages itself (see L{Decoder.atBoundary})
    reads the same rules as the decoder from here.
    """
    names = FRONTEND_TYPES if frontend else BACKEND_TYPES
    fixed = _FRONTEND_FIXED if frontend else _BACKEND_FIXED
    rules = [-1] * 256
    for kind in names:
        if kind not in only:
            rules[ord(kind)] = fixed.get(kind, 0)
    return tuple(rules)


class Decoder:
    """
    Decode one direction of a connection.

    Feed it bytes as they arrive, in any split; each L{feed} returns the
    messages completed by those bytes, in order.  After a malformed or
    oversized message it returns a L{MalformedMessage} and nothing ever
    again (the connection is still proxied, just not inspected).

    Decoded values: StartupMessage C{parameters}; CancelRequest
    C{processId}, C{secretKey}; Query C{sql}; Parse C{statement}, C{sql};
    Close/Describe C{target} (C{"S"} or C{"P"}), C{name}; Execute
    C{portal}, C{maxRows}; CopyFail C{message}; CommandComplete C{tag},
    C{command}, C{rows}; ErrorResponse/NoticeResponse C{fields},
    C{severity}; ReadyForQuery C{status}; Authentication C{code};
    ParameterStatus C{name}, C{value}; BackendKeyData C{processId},
    C{secretKey}; RowDescription C{columns}; Copy*Response C{format},
    C{columns}; EncryptionResponse C{accepted}.

    With C{only}, a set of type characters, known typed messages of other
    types are neither decoded nor returned: they are only checked for a
    sane (or, where the protocol fixes it, exact) length and counted in
    L{counted}.  A sniffer that acts on a few types (Envoy's acts on
    CommandComplete, ErrorResponse, NoticeResponse, Authentication, Query,
    Parse and Terminate) then costs one header unpack per other message.
    Unknown types and startup-phase messages are always returned.

    @ivar frontend: whether this decodes what the client sends.
    @ivar startup: whether the next message is an untyped startup-phase one.
    @ivar counted: how many messages were skipped because of C{only}; the
        caller reads and resets it.
    """

    def __init__(self, frontend: bool, maxLength: int = MAX_MESSAGE_LENGTH,
                 only: frozenset[str] | None = None) -> None:
        self.frontend = frontend
        self.startup = frontend
        self.stopped = False
        self.maxLength = maxLength
        self.counted = 0
        self._buffer = bytearray()
        self._skip = 0
        self._pending: Message | None = None
        self._pendingCounted = False
        self._consumed = 0
        self._encryptionResponse = False
        self._names = names = FRONTEND_TYPES if frontend else BACKEND_TYPES
        self._fixed = {kind.encode("latin-1"): length for kind, length in
                       (_FRONTEND_FIXED if frontend else _BACKEND_FIXED).items()}
        self._decode = _frontend if frontend else _backend
        skipTypes = _FRONTEND_SKIP if frontend else _BACKEND_SKIP
        #: What to do with each known type: decode it, skip its body but
        #: return it, or only count it.
        self._actions = {
            kind.encode("latin-1"): (_COUNT if only is not None and kind not in only
                                     else _SKIP if kind in skipTypes else _DECODE)
            for kind in names}

    @property
    def atBoundary(self) -> bool:
        """
        Whether the next byte starts a typed message: past the startup
        phase, nothing buffered or being skipped, not stopped.  Whole typed
        messages may then be scanned by the caller (with L{countRules})
        and the rest of its bytes fed here, as if all had been fed.
        """
        return not (self.stopped or self.startup or self._encryptionResponse
                    or self._skip or self._buffer)

    @property
    def needed(self) -> int:
        """
        How many more bytes complete the typed message under way, or its
        header while that is incomplete; C{0} at a boundary, in the
        startup phase or once stopped.  Fed exactly that many, the decoder
        is at a boundary, or has a whole header and needs more.
        """
        if self.stopped or self.startup or self._encryptionResponse:
            return 0
        if self._skip:
            return self._skip
        held = len(self._buffer)
        if not held:
            return 0
        if held < 5:
            return 5 - held
        return _UINT32.unpack_from(self._buffer, 1)[0] + 1 - held

    def expectEncryptionResponse(self) -> None:
        """
        The next backend byte answers an SSLRequest or GSSENCRequest
        (C{S}/C{G} accepted, C{N} refused): decode it as an
        C{EncryptionResponse}.
        """
        self._encryptionResponse = True

    def feed(self, data: bytes) -> list[Message | MalformedMessage]:
        """
        Add C{data}; return the messages it completes.
        """
        out: list[Message | MalformedMessage] = []
        if self.stopped or not data:
            return out
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                if not self._skip:
                    self._pendingDone(out)
                return out
            source: Any = memoryview(data)[self._skip:]
            self._skip = 0
            self._pendingDone(out)
        else:
            source = data
        buffered = self._buffer
        if buffered:
            # The start of a message is waiting: complete it in place.
            buffered += source
            source = buffered
        try:
            self._run(out, source)
        except Malformed as e:
            self.stop()
            out.append(MalformedMessage(str(e)))
            return out
        # Keep what is left: the start of the next message, if any.
        pos = self._consumed
        if source is buffered:
            del buffered[:pos]
        elif pos < len(source):
            self._buffer = bytearray(source[pos:])
        return out

    def stop(self) -> None:
        """
        Decode nothing more; forget what is buffered.
        """
        self.stopped = True
        self._buffer = bytearray()
        self._skip = 0
        self._pending = None
        self._pendingCounted = False

    def _pendingDone(self, out: list[Message | MalformedMessage]) -> None:
        if self._pendingCounted:
            self._pendingCounted = False
            self.counted += 1
            return
        message = self._pending
        assert message is not None
        self._pending = None
        out.append(message)

    def _run(self, out: list[Message | MalformedMessage], buf: Any) -> None:
        """
        Decode the whole messages at the start of C{buf} (bytes, a
        memoryview or the buffer); set C{_consumed} to how many bytes they
        (and a body being skipped) took.
        """
        size = len(buf)
        pos = 0
        try:
            # The untyped prefix: an encryption answer, startup messages.
            while self._encryptionResponse or self.startup:
                if self._encryptionResponse:
                    if pos >= size:
                        return
                    answer = chr(buf[pos])
                    if answer not in "SGN":
                        raise Malformed(f"encryption response {answer!r}")
                    self._encryptionResponse = False
                    out.append(Message("EncryptionResponse", answer, 1,
                                       {"accepted": answer != "N"}))
                    pos += 1
                    continue
                if size - pos < 4:
                    return
                length = _UINT32.unpack_from(buf, pos)[0]
                if length < 8 or length > MAX_STARTUP_PACKET_LENGTH:
                    raise Malformed(f"startup message of length {length}")
                if size - pos < length:
                    return
                message = _startup(bytes(buf[pos + 4:pos + length]), length)
                if message.name == "StartupMessage":
                    self.startup = False
                out.append(message)
                pos += length
            # Typed messages: one header unpack each; bodies are only
            # sliced for the types that are decoded.
            unpack = _HEADER.unpack_from
            actions = self._actions
            fixed = self._fixed
            maxLength = self.maxLength
            while size - pos >= 5:
                kindByte, length = unpack(buf, pos)
                if length < 4 or length > maxLength:
                    raise Malformed(f"{kindByte.decode('latin-1')!r} message of length {length}")
                expected = fixed.get(kindByte)
                if expected is not None and length != expected:
                    raise Malformed(f"{kindByte.decode('latin-1')!r} message of length "
                                    f"{length}, not {expected}")
                total = length + 1
                action = actions.get(kindByte, _SKIP)
                if action == _COUNT:
                    if size - pos < total:
                        self._skip = total - (size - pos)
                        self._pendingCounted = True
                        pos = size
                        return
                    self.counted += 1
                    pos += total
                    continue
                kind = kindByte.decode("latin-1")
                name = self._names.get(kind, "Unknown")
                if action == _SKIP:
                    message = Message(name, kind, total)
                    if size - pos < total:
                        self._skip = total - (size - pos)
                        self._pending = message
                        pos = size
                        return
                    out.append(message)
                    pos += total
                    continue
                if size - pos < total:
                    return
                body = bytes(buf[pos + 5:pos + total])
                try:
                    values = self._decode(kind, body)
                except (struct.error, IndexError) as e:
                    raise Malformed(f"{name}: {e}") from None
                out.append(Message(name, kind, total, values))
                pos += total
        finally:
            self._consumed = pos
