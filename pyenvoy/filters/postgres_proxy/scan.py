"""
postgres_proxy's scan of whole typed messages: a chunk that starts at a
message boundary is walked header by header, messages the filter only
counts are counted, and the few it acts on are acted on from the raw
bytes, so that the usual chunk (a client's Query, a server's reply) costs
one call.

It runs for every chunk of every connection, so it is done by pyenvoy's C
extension (C{_scan.c}) when that was built; where it was not, the same
functions run here in Python with the same results.  L{ACCELERATED} says
which.  Both stop wherever the L{Decoder<pyenvoy.filters.postgres_proxy.codec.Decoder>}
must take over: a message cut by the chunk's end, a length the rules
refuse, a type the scan does not handle, a Query, Parse or CommandComplete
without the NUL-terminated text the decoder would read (which, as there,
is the text up to the first NUL).
"""

from __future__ import annotations

import struct
from typing import Any

from pyenvoy.filters.postgres_proxy.codec import MAX_MESSAGE_LENGTH
from pyenvoy.interfaces import FilterStatus

#: A C{rules} byte: the type is neither only counted nor known (see
#: L{scanRules}).
ACT = 255
#: Every ASCII digit as C{0}: a statement's I{outline}.
DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)

#: Chunks longer than this are not scanned: a whole message in a shorter
#: chunk is always within the decoder's bound on message lengths.
SCAN_LIMIT = MAX_MESSAGE_LENGTH

_HEADER = struct.Struct("!BI")
_Q, _P, _C = b"QPC"
#: What the scans return for "nothing to hand back".
_MISSING = object()
#: Enum members are slow to look up on their class.
_CONTINUE = FilterStatus.CONTINUE


def scanRules(countRules: tuple[int, ...]) -> bytes:
    """
    A decoder's L{countRules<pyenvoy.filters.postgres_proxy.codec.countRules>}
    as the 256 bytes the scan functions index by type byte: the exact
    length of a type only counted whose length the protocol fixes, C{0}
    for one only counted whatever its length, L{ACT} for the rest.
    """
    return bytes(ACT if rule < 0 else rule for rule in countRules)


def _wholeMessage(data: bytes, pos: int, rules: bytes) -> tuple[int, int]:
    """
    The type byte of the message whose header is at C{pos}, and its end if
    it is whole and its length passes C{rules}, else C{-1}.
    """
    kind, length = _HEADER.unpack_from(data, pos)
    end = pos + length + 1
    rule = rules[kind]
    if length < 4 or end > len(data) or (rule != ACT and rule and length != rule):
        return kind, -1
    return kind, end


def pythonScanFrontend(data: bytes, pos: int, rules: bytes, outlines: dict[bytes, Any] | None,
                       last: Any, written: dict[str, Any] | None, missing: Any
                       ) -> tuple[int, int, int, Any, Any]:
    """
    Scan the client's whole messages in C{data} from C{pos}.

    Returns C{(pos, messages, repeats, found, last)}: where the scan
    stopped, how many messages it passed (counted), how many of those
    were a Query or Parse that needs nothing but counting as parsed, and
    the parse result of the last of those (C{last} as given if none).
    Such a statement's outline has an entry in C{outlines} (a parse
    result: C{((table, ops), ...)}) that is C{last}, or whose every
    table's C{ops} is what C{written} holds for it (the dynamic metadata
    has it already; C{written} is C{None} until the metadata exists).

    C{found} is C{missing} when the scan stopped where it cannot go on
    (C{pos} is then where the decoder takes over, or the end).
    Otherwise the last message passed was a Query or Parse that needs the
    caller: C{found} is its outline's entry (a parse result, or C{None}
    for a parse error), or its SQL (C{bytes}) when the outline is not in
    C{outlines}; the caller acts on it and scans on from C{pos}.

    With C{outlines} C{None} (no SQL parsing) Query and Parse are only
    counted.  Terminate, ErrorResponse and other types the filter acts on
    stop the scan, as does SQL that is not ASCII.
    """
    n = repeats = 0
    while len(data) - pos >= 5:
        kind, end = _wholeMessage(data, pos, rules)
        if end < 0:
            break
        if rules[kind] != ACT:
            pass  # only counted
        elif kind == _Q or kind == _P:
            start = pos + 5
            if kind == _P:
                start = data.find(b"\0", start, end) + 1  # past the statement's name
                if not start:
                    break
            nul = data.find(b"\0", start, end)
            if nul < 0:
                break
            if outlines is not None:
                sql = data[start:nul]
                if not sql.isascii():
                    break
                found = outlines.get(sql.translate(DIGITS_AS_ZERO), missing)
                if found is missing:
                    return end, n + 1, repeats, sql, last
                if found is None or (found is not last and not _allWritten(found, written)):
                    return end, n + 1, repeats, found, last
                repeats += 1
                last = found
        else:
            break
        n += 1
        pos = end
    return pos, n, repeats, missing, last


def _allWritten(tables: Any, written: dict[str, Any] | None) -> bool:
    """
    Whether C{written} has every entry of the parse result C{tables}.
    """
    if written is None:
        return False
    for table, ops in tables:
        if written.get(table) is not ops:
            return False
    return True


def pythonScanBackend(data: bytes, pos: int, rules: bytes, tags: dict[bytes, Any],
                      inTransaction: bool) -> tuple[int, int, bool, bytes | None]:
    """
    Scan the server's whole messages in C{data} from C{pos}, counting each
    CommandComplete as Envoy does.

    C{tags} maps a CommandComplete's tag to its counting: C{(counters
    outside a transaction, counters inside one, in a transaction after it
    or C{None} for unchanged)}; each counter's C{value} is bumped here.

    Returns C{(pos, messages, inTransaction, tag)}: where the scan
    stopped, how many messages it passed (counted), whether the
    connection is then in a transaction, and C{None}; or, when it stopped
    at a CommandComplete whose tag is not in C{tags}, that tag (the
    message at C{pos} is then not counted yet: the caller adds the tag
    and scans again from C{pos}).
    """
    n = 0
    while len(data) - pos >= 5:
        kind, end = _wholeMessage(data, pos, rules)
        if end < 0:
            break
        if rules[kind] != ACT:
            pass  # only counted
        elif kind == _C:
            nul = data.find(b"\0", pos + 5, end)
            if nul < 0:
                break
            tag = data[pos + 5:nul]
            counting = tags.get(tag)
            if counting is None:
                return pos, n, inTransaction, tag
            idle, busy, after = counting
            for counter in (busy if inTransaction else idle):
                counter.value += 1
            if after is not None:
                inTransaction = after
        else:
            break
        n += 1
        pos = end
    return pos, n, inTransaction, None


class PythonScanningFilter:
    """
    The hot half of postgres_proxy's filter: C{onData} and C{onWrite} scan
    a chunk with L{scanFrontend} and L{scanBackend}, count what was
    passed, and leave the rest to the subclass's hooks.  The C extension
    has the same class (its attributes as slots, its methods without a
    Python frame); the filter derives from whichever is in use.

    Hooks: C{_aside(data, endStream, frontend)} for a chunk that cannot be
    scanned; C{_sql(sql)} or C{_sql(b"", found)} for a Query or Parse the
    scan hands back; C{_newTag(tag)} for a CommandComplete tag not in
    C{_tags}; C{_decodeFrontend}/C{_decodeBackend(rest, endStream)} then
    C{_rescan()} for what is left of a chunk after the scan stopped.

    @ivar _scanFrontend: whether the client's next chunk may be scanned.
    @ivar _scanBackend: the same for the server's.
    @ivar inTransaction: whether the connection is in a transaction.
    @ivar _scanOutlines: the outline cache to look statements up in, or
        C{None} without SQL parsing.
    @ivar _lastTables: the parse result last written to the metadata.
    @ivar _scanWritten: each table's operations as written to the dynamic
        metadata, once the filter's namespace exists there, else C{None}.
    @ivar _frontendRules: the client's L{scanRules}.
    @ivar _backendRules: the server's L{scanRules}.
    @ivar _tags: the counting of each CommandComplete tag (see
        L{scanBackend}).
    @ivar _messages: the C{messages} counter; C{_messagesFrontend},
        C{_messagesBackend} and C{_parsed} (C{statements_parsed}) likewise.
    """

    # Set by the subclass's __init__, as the C type's slots are.
    _scanFrontend: bool
    _scanBackend: bool
    inTransaction: bool
    _scanOutlines: dict[bytes, Any] | None
    _lastTables: Any
    _scanWritten: dict[str, Any] | None
    _frontendRules: bytes
    _backendRules: bytes
    _tags: dict[bytes, Any]
    _messages: Any
    _messagesFrontend: Any
    _messagesBackend: Any
    _parsed: Any

    def onData(self, data: bytes, endStream: bool) -> Any:
        """
        The client's chunk: scanned from its start when it may be.
        """
        if not self._scanFrontend or type(data) is not bytes or len(data) > SCAN_LIMIT:
            return self._aside(data, endStream, True)  # type: ignore[attr-defined]
        pos, n, repeats, found, self._lastTables = scanFrontend(
            data, 0, self._frontendRules, self._scanOutlines, self._lastTables,
            self._scanWritten, _MISSING)
        while found is not _MISSING:
            # A Query or Parse of another statement shape than the last.
            if type(found) is bytes:
                self._sql(found)  # type: ignore[attr-defined]
            else:
                self._sql(b"", found)  # type: ignore[attr-defined]
            pos, more, again, found, self._lastTables = scanFrontend(
                data, pos, self._frontendRules, self._scanOutlines, self._lastTables,
                self._scanWritten, _MISSING)
            n += more
            repeats += again
        if n:
            self._messages.value += n
            self._messagesFrontend.value += n
            if repeats:
                self._parsed.value += repeats
        if pos < len(data):
            self._decodeFrontend(data[pos:], endStream)  # type: ignore[attr-defined]
            self._rescan()  # type: ignore[attr-defined]
        return _CONTINUE

    def onWrite(self, data: bytes, endStream: bool) -> Any:
        """
        The server's chunk: scanned from its start when it may be.
        """
        if not self._scanBackend or type(data) is not bytes or len(data) > SCAN_LIMIT:
            return self._aside(data, endStream, False)  # type: ignore[attr-defined]
        pos, n, self.inTransaction, tag = scanBackend(
            data, 0, self._backendRules, self._tags, self.inTransaction)
        while tag is not None:
            # A CommandComplete tag not seen lately: known from now on.
            self._newTag(tag)  # type: ignore[attr-defined]
            pos, more, self.inTransaction, tag = scanBackend(
                data, pos, self._backendRules, self._tags, self.inTransaction)
            n += more
        if n:
            self._messages.value += n
            self._messagesBackend.value += n
        if pos < len(data):
            self._decodeBackend(data[pos:], endStream)  # type: ignore[attr-defined]
            self._rescan()  # type: ignore[attr-defined]
        return _CONTINUE


try:
    from pyenvoy.filters.postgres_proxy import _scan
except ImportError:
    scanFrontend, scanBackend = pythonScanFrontend, pythonScanBackend
    ScanningFilter: type = PythonScanningFilter
    #: Whether the C extension does the scans.
    ACCELERATED = False
else:
    _scan.configure(SCAN_LIMIT, _MISSING, _CONTINUE)
    scanFrontend, scanBackend = _scan.scanFrontend, _scan.scanBackend
    ScanningFilter = _scan.ScanningFilter
    ACCELERATED = True
