"""
C{envoy.filters.network.postgres_proxy}: follow the PostgreSQL protocol on
a connection for Envoy's stats and SQL dynamic metadata, without changing
a byte.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeAlias

from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.filters.postgres_proxy.codec import (
    Decoder, MalformedMessage, countRules)
from pyenvoy.filters.postgres_proxy.scan import (
    DIGITS_AS_ZERO, PythonScanningFilter, ScanningFilter, scanRules)
from pyenvoy.interfaces import CloseType, FilterStatus, IReadFilter, IWriteFilter
from pyenvoy.stats import Counter

log = Logger()

TYPE_URL = ("type.googleapis.com/envoy.extensions.filters.network.postgres_proxy.v3alpha."
            "PostgresProxy")
METADATA_NAMESPACE = "envoy.filters.network.postgres_proxy"

#: Envoy's C{ALL_POSTGRES_PROXY_STATS}, then pyenvoy's C{decoding_error}.
COUNTERS = (
    "errors", "errors_error", "errors_fatal", "errors_panic", "errors_unknown",
    "messages", "messages_backend", "messages_frontend", "messages_unknown",
    "sessions", "sessions_encrypted", "sessions_terminated_ssl", "sessions_unencrypted",
    "sessions_upstream_ssl_success", "sessions_upstream_ssl_failed",
    "statements", "statements_insert", "statements_delete", "statements_update",
    "statements_select", "statements_other",
    "transactions", "transactions_commit", "transactions_rollback",
    "statements_parsed", "statements_parse_error",
    "notices", "notices_notice", "notices_warning", "notices_debug", "notices_info",
    "notices_log", "notices_unknown",
    # pyenvoy addition: the decoder lost sync and stopped inspecting.
    "decoding_error",
)

_ERRORS = {"ERROR": "errors_error", "FATAL": "errors_fatal", "PANIC": "errors_panic"}
_NOTICES = {"WARNING": "notices_warning", "NOTICE": "notices_notice",
            "DEBUG": "notices_debug", "INFO": "notices_info", "LOG": "notices_log"}
_STATEMENTS = {"SELECT": "statements_select", "INSERT": "statements_insert",
               "UPDATE": "statements_update", "DELETE": "statements_delete"}
_ENCRYPTION_REQUESTS = ("SSLRequest", "GSSENCRequest", "CancelRequest")
_STARTUPS = ("StartupMessage", "UnknownStartup")
#: The typed messages the filter acts on; the decoders only count the rest.
_FRONTEND_WANTED = frozenset("QPX")
_BACKEND_WANTED = frozenset("CENR")
#: Enum members are slow to look up on their class.
_CONTINUE = FilterStatus.CONTINUE
#: Entries in L{_Shared.tags} before it is emptied.
TAG_CACHE_SIZE = 1024
#: The SSLRequest sent to the server for upstream_ssl REQUIRE.
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


@dataclass(frozen=True)
class PostgresProxyConfig:
    """
    A validated C{PostgresProxy} message.
    """

    statPrefix: str
    enableSqlParsing: bool = True
    terminateSsl: bool = False
    downstreamSsl: str = "DISABLE"
    upstreamSsl: str = "DISABLE"


#: String and numeric literals: they never change which tables a statement
#: touches, so statements that differ only in them share a cache entry.
_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")
#: Text where literal boundaries are not that simple (quoted identifiers,
#: backslash escapes, comments, dollar quoting, C{$} inside identifiers
#: such as C{t$1}): cached verbatim instead.  Only C{$n} parameters after
#: a non-word character are allowed.  (C{\w\$} is written as a look-behind
#: from the C{$} so that every branch starts with a fixed character and
#: the search skips ahead by them.)
_NOT_NORMALISABLE = re.compile(r'"|\\|--|/\*|\$(?:(?<=\w\$)|(?!\d))')
#: The same two patterns over ASCII bytes, where they match exactly as
#: over the decoded text: the raw SQL of a message is looked up without
#: decoding it.
_ASCII_LITERALS = re.compile(_LITERALS.pattern.encode("ascii"))
_ASCII_NOT_NORMALISABLE = re.compile(_NOT_NORMALISABLE.pattern.encode("ascii"))
_DIGITS = b"0123456789"
_MISSING = object()
#: A parse result as cached: C{((table, (op, ...)), ...)}, C{None} for a
#: parse error.
_Tables: TypeAlias = "tuple[tuple[str, tuple[str, ...]], ...] | None"
#: How a CommandComplete is counted (see L{_Shared.commands}).
_Counting: TypeAlias = "tuple[tuple[Counter, ...], tuple[Counter, ...], bool | None]"
#: Entries in the SQL cache before it is emptied.
SQL_CACHE_SIZE = 4096


class _Shared:
    """
    What every connection of one configured postgres_proxy shares: the
    stats, the SQL parser and a cache of its results.

    The cache maps a statement with its literals replaced by C{?} (and the
    database) to the parse result, so a workload that repeats the same
    statements with different values (pgbench, any ORM) parses each shape
    once.  The result of a cached statement is the same as parsing it: the
    tables and operations of a statement do not depend on its literals.

    In front of it, so that a statement of a known shape costs no regular
    expression, each database has an outline cache: the I{outline} of an
    ASCII statement (every digit made C{0}, one C{bytes.translate}) to the
    same result.  Both patterns treat every digit alike, so statements of
    one outline have their literals at the same places and the same text
    between them but for digits; when the shape has no digit left (all
    were in literals: C{aid = ?}, not C{t1}), they all have that shape and
    the outline is entered.

    @ivar commands: Envoy's statement and transaction counting for each
        CommandComplete command word (as bytes): the counters to bump
        outside an explicit transaction, those to bump inside one, and
        whether the connection is in one afterwards (C{None}: unchanged).
    @ivar otherCommand: the same for any other command word.
    @ivar tags: L{commandOf} by the whole CommandComplete tags seen.
    @ivar frontendRules: L{countRules} of the client's decoder, as
        L{scanRules}.
    @ivar backendRules: the same for the server's decoder.
    """

    def __init__(self, config: PostgresProxyConfig, store: Any,
                 parseSql: Callable[[str, str | None], dict[str, list[str]] | None] | None
                 ) -> None:
        self.config = config
        self.scope = scope = store.scope(f"postgres.{config.statPrefix}")
        self.stats = stats = {name: scope.counter(name) for name in COUNTERS}
        self.parseSql = parseSql
        self._sqlCache: dict[tuple[str, str | None], _Tables] = {}
        self._outlines: dict[str | None, dict[bytes, _Tables]] = {}
        self.frontendRules = scanRules(countRules(True, _FRONTEND_WANTED))
        self.backendRules = scanRules(countRules(False, _BACKEND_WANTED))
        # The counters of the scan, held directly.
        self.messages = stats["messages"]
        self.messagesFrontend = stats["messages_frontend"]
        self.messagesBackend = stats["messages_backend"]
        self.parsed = stats["statements_parsed"]
        self.parseErrors = stats["statements_parse_error"]
        self.rollbacks = stats["transactions_rollback"]
        statements, other = stats["statements"], stats["statements_other"]
        transactions, commits = stats["transactions"], stats["transactions_commit"]
        begin = ((statements, other, transactions), (statements, other), True)
        self.commands: dict[bytes, _Counting] = {
            b"BEGIN": begin, b"START": begin,
            b"COMMIT": ((statements, other, commits), (statements, other, commits), False),
            b"ROLLBACK": ((statements, other), (statements, other, self.rollbacks), False),
        }
        for command, name in _STATEMENTS.items():
            self.commands[command.encode("ascii")] = (
                (statements, stats[name], transactions, commits), (statements, stats[name]),
                None)
        self.otherCommand: _Counting = (
            (statements, other, transactions, commits), (statements, other), None)
        self.tags: dict[bytes, _Counting] = {}

    def commandOf(self, tag: bytes) -> _Counting:
        """
        The counting of a CommandComplete C{tag} (see L{commands}), by its
        first word; remembered in L{tags}.
        """
        counting = self.commands.get(tag.split(b" ", 1)[0], self.otherCommand)
        tags = self.tags
        if len(tags) >= TAG_CACHE_SIZE:
            tags.clear()
        tags[tag] = counting
        return counting

    def tables(self, sql: str | bytes, database: str | None) -> _Tables:
        """
        The parse result of C{sql} (see L{parseSql}) as immutable pairs,
        from the cache when a statement of the same shape was seen.

        C{sql} is the text of a Query or Parse, or its raw bytes (decoded
        as UTF-8, errors replaced, unless they are ASCII).
        """
        if sql.isascii():
            return self._asciiTables(
                sql.encode("ascii") if isinstance(sql, str) else sql, database)
        text = sql if isinstance(sql, str) else sql.decode("utf-8", "replace")
        shape = text if _NOT_NORMALISABLE.search(text) else _LITERALS.sub("?", text)
        return self._parsed(shape, text, database)

    def _asciiTables(self, raw: bytes, database: str | None) -> _Tables:
        """
        L{tables} of ASCII SQL: by its outline, else by its shape (found
        with the patterns over bytes, which match as over the text).
        """
        outlines = self.outlinesOf(database)
        outline = raw.translate(DIGITS_AS_ZERO)
        result = outlines.get(outline, _MISSING)
        if result is not _MISSING:
            return result  # type: ignore[return-value]
        shape = raw if _ASCII_NOT_NORMALISABLE.search(raw) else _ASCII_LITERALS.sub(b"?", raw)
        result = self._parsed(shape.decode("ascii"), raw.decode("ascii"), database)
        if len(shape.translate(None, _DIGITS)) == len(shape):
            # No digit outside literals: the whole outline has this shape.
            if len(outlines) >= SQL_CACHE_SIZE:
                outlines.clear()
            outlines[outline] = result
        return result

    def _parsed(self, shape: str, sql: str, database: str | None) -> _Tables:
        """
        The cached result for C{shape}, else C{sql} parsed and cached.
        """
        key = (shape, database)
        cache = self._sqlCache
        result = cache.get(key, _MISSING)
        if result is not _MISSING:
            return result  # type: ignore[return-value]
        assert self.parseSql is not None
        parsed = self.parseSql(sql, database)
        result = None if parsed is None else tuple(
            (table, tuple(ops)) for table, ops in parsed.items())
        if len(cache) >= SQL_CACHE_SIZE:
            # Outlines lead to entries of this cache: they go too.
            cache.clear()
            for outlines in self._outlines.values():
                outlines.clear()
        cache[key] = result
        return result

    def outlinesOf(self, database: str | None) -> dict[bytes, _Tables]:
        """
        The outline cache of C{database} (see L{_Shared}), filled by
        L{tables}; a connection may hold on to it and look outlines up
        itself.
        """
        outlines = self._outlines.get(database)
        if outlines is None:
            if len(self._outlines) >= SQL_CACHE_SIZE:
                # Emptied, as connections may still hold them, then dropped.
                for stale in self._outlines.values():
                    stale.clear()
                self._outlines.clear()
            outlines = self._outlines[database] = {}
        return outlines

    def inc(self, *names: str) -> None:
        """
        Count each of C{names} once.
        """
        for name in names:
            self.stats[name].value += 1

    def count(self, direction: str, n: int) -> None:
        """
        Count C{n} messages of C{direction} (C{"messages_frontend"} or
        C{"messages_backend"}) that were not decoded.
        """
        stats = self.stats
        stats["messages"].value += n
        stats[direction].value += n


class PostgresProxyLogic:
    """
    One connection: decodes the client's messages on the read path and
    the server's on the write path, counts them as Envoy does, and always
    lets the bytes through untouched.

    Once the login is past, a chunk that starts at a message boundary (the
    usual case: a client's queries, a server's replies) is scanned in one
    call (L{pyenvoy.filters.postgres_proxy.scan}, in C when built): whole messages
    the decoder would only count are counted by their header (with its
    length rules, L{countRules}), Query, Parse and CommandComplete are
    acted on from the raw bytes.  At anything else (a message cut by the
    chunk's end, an unknown type, a Terminate, an ErrorResponse, a
    malformed length) the rest of the chunk goes to the
    L{Decoder}, which decides exactly as if it had seen the whole chunk.
    A chunk that starts inside a message gives the decoder what completes
    that message (L{Decoder.needed}), and the scan goes on from there.

    The scan's C{onData}/C{onWrite} come from a L{ScanningFilter} base
    (see L{PostgresProxyFilter}), whose hooks are the methods here.

    @cvar scanning: whether that scan is used at all; the tests turn it off
        to check that both ways count the same.
    """

    scanning = True

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.sniffing = True
        self.frontend = Decoder(frontend=True, only=_FRONTEND_WANTED)
        self.backend = Decoder(frontend=False, only=_BACKEND_WANTED)
        self.started = False
        self.inTransaction = False
        self._frontendRules = shared.frontendRules
        self._backendRules = shared.backendRules
        self._tags = shared.tags
        self._messages = shared.messages
        self._messagesFrontend = shared.messagesFrontend
        self._messagesBackend = shared.messagesBackend
        self._parsed = shared.parsed
        self.parameters: dict[str, str] = {}
        #: The C{database} startup parameter (or the user), for the SQL cache.
        self._database: str | None = None
        self._parsing = shared.parseSql is not None
        #: The database's outline cache, from the StartupMessage on; the
        #: scan's C{_scanOutlines} too when SQL is parsed.
        self._outlines: dict[bytes, Any] = {}
        self._scanFrontend = False
        self._scanBackend = False
        self._scanOutlines = None
        self._lastTables = None
        #: Each table's operations as last written to the dynamic metadata
        #: (the cached tuple), so that an unchanged entry is not rewritten;
        #: the scan's C{_scanWritten} once the metadata exists.
        self._written: dict[str, tuple[str, ...]] = {}
        self._scanWritten = None
        #: The filter's namespace in the dynamic metadata, once set.
        self._metadata: dict[str, list[str]] | None = None
        #: terminate_ssl: the client's first bytes, held until its first
        #: startup-phase message is whole (an SSLRequest is answered here
        #: and never forwarded).
        config = shared.config
        self._early: bytearray | None = (
            bytearray() if config.terminateSsl or config.upstreamSsl == "REQUIRE" else None)
        #: upstream_ssl REQUIRE: the client's bytes from its StartupMessage
        #: on, held while the server is asked for TLS.
        self._replay: bytearray | None = None

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.readCallbacks = callbacks
        self.connection = callbacks.connection

    def initializeWriteFilterCallbacks(self, callbacks: Any) -> None:
        self.writeCallbacks = callbacks

    def onNewConnection(self) -> FilterStatus:
        return _CONTINUE

    def _rescan(self) -> None:
        """
        Decide again whether each side's next chunk may be scanned here:
        after the decoder saw bytes, or anything else changed.
        """
        scan = self.scanning and self.sniffing and self._replay is None
        self._scanFrontend = (scan and self._early is None and self.frontend.atBoundary)
        self._scanBackend = scan and self.started and self.backend.atBoundary

    def _aside(self, data: bytes, endStream: bool, frontend: bool) -> FilterStatus:
        """
        A chunk that cannot be scanned from its start: to the decoder, only
        as far as the message under way if the rest can be scanned then.
        """
        if frontend:
            decoder, decode, ready = self.frontend, self._decodeFrontend, self._early is None
        else:
            decoder, decode, ready = self.backend, self._decodeBackend, self.started
        if (self.scanning and self.sniffing and ready and self._replay is None
                and type(data) is bytes):
            needed = decoder.needed
            while 0 < needed < len(data):
                decode(data[:needed], False)
                data = data[needed:]
                self._rescan()
                if frontend and self._scanFrontend:
                    return self.onData(data, endStream)
                if not frontend and self._scanBackend:
                    return self.onWrite(data, endStream)
                needed = decoder.needed
        status = decode(data, endStream)
        self._rescan()
        return status

    def _decodeFrontend(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode what the client sent with the L{Decoder}.
        """
        if self._replay is not None:
            self._replay += data
            return FilterStatus.STOP_ITERATION
        if self._early is not None:
            return self._earlyData(data, endStream)
        if self.sniffing and data:
            decoded = 0
            for message in self.frontend.feed(data):
                decoded += self._frontendMessage(message)
                if not self.sniffing:
                    break
            self._countFrontend(decoded)
        return _CONTINUE

    def _earlyData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        terminate_ssl: hold the client's bytes until the first message is
        whole.  An SSLRequest is answered C{S} by us and TLS started on the
        connection (C{sessions_terminated_ssl}); anything else lets the
        held bytes through as they came.
        """
        early = self._early
        assert early is not None
        early += data
        release = endStream or not self.sniffing
        if data and self.sniffing:
            decoded = 0
            for message in self.frontend.feed(data):
                name = getattr(message, "name", None)
                if name == "SSLRequest" and self.shared.config.terminateSsl:
                    del early[:8]  # an SSLRequest is always 8 bytes
                    if not self._terminateSsl():
                        return FilterStatus.STOP_ITERATION
                    continue
                decoded += self._frontendMessage(message)
                release = True
                if name in _STARTUPS and self.shared.config.upstreamSsl == "REQUIRE":
                    # Envoy buffers the startup (of any protocol version)
                    # and asks the server for TLS.
                    self._countFrontend(decoded)
                    self._early = None
                    self._replay = early
                    self.readCallbacks.injectReadData(SSL_REQUEST, False)
                    return FilterStatus.STOP_ITERATION
                if not self.sniffing:
                    break
            self._countFrontend(decoded)
        if not release:
            return FilterStatus.STOP_ITERATION
        self._early = None
        self.readCallbacks.injectReadData(bytes(early), endStream)
        return FilterStatus.STOP_ITERATION

    def _countFrontend(self, decoded: int) -> None:
        """
        Count C{decoded} frontend messages and those the decoder skipped
        without decoding.
        """
        decoder = self.frontend
        n = decoded + decoder.counted
        decoder.counted = 0
        if n:
            self.shared.count("messages_frontend", n)

    def _upstreamAnswer(self, data: bytes) -> None:
        """
        upstream_ssl REQUIRE: the server's answer to our SSLRequest.  C{S}
        → TLS to the server, then the held startup is replayed
        (C{sessions_upstream_ssl_success}); anything else closes the
        connection (C{sessions_upstream_ssl_failed}).
        """
        replay, self._replay = self._replay, None
        assert replay is not None
        callbacks = self.readCallbacks
        start = getattr(callbacks, "startUpstreamSecureTransport", None)
        # Exactly the one byte: bytes after it would be plaintext that
        # came before TLS (as Envoy, anything else fails).
        if data == b"S" and start is not None and start():
            self.shared.inc("sessions_upstream_ssl_success")
            callbacks.injectReadData(bytes(replay), False)
            return
        log.info("postgres_proxy: the server did not accept TLS (answer {answer!r}); closing",
                 answer=data[:8])
        self.shared.inc("sessions_upstream_ssl_failed")
        self._stop()
        self.connection.close(CloseType.NO_FLUSH, "postgres_proxy_upstream_ssl_failed")

    def _terminateSsl(self) -> bool:
        """
        Answer an SSLRequest with C{S} and switch the connection to TLS
        (Envoy's C{startSecureTransport()}); close it when the chain has
        no C{envoy.transport_sockets.starttls} transport socket.
        """
        shared = self.shared
        shared.inc("messages", "messages_frontend")
        connection = self.connection
        connection.write(b"S")
        start = getattr(connection, "startSecureTransport", None)
        if start is None or not start():
            log.info("postgres_proxy: cannot terminate SSL: the filter chain's transport "
                     "socket is not envoy.transport_sockets.starttls; closing")
            self._stop()
            connection.close(CloseType.NO_FLUSH, "postgres_proxy_ssl_termination_failed")
            return False
        shared.inc("sessions_terminated_ssl")
        return True

    def _newTag(self, tag: bytes) -> None:
        """
        The scan met a CommandComplete tag not in C{_tags}: add it.
        """
        self.shared.commandOf(tag)

    def _decodeBackend(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode what the server sent with the L{Decoder} (the end of the
        server's stream changes nothing here).
        """
        if self._replay is not None:
            if data:
                self._upstreamAnswer(data)
            return FilterStatus.STOP_ITERATION
        if self.sniffing and self.started and data:
            decoder = self.backend
            n = 0
            for message in decoder.feed(data):
                n += self._backendMessage(message)
                if not self.sniffing:
                    break
            n += decoder.counted
            decoder.counted = 0
            if n:
                self.shared.count("messages_backend", n)
        return _CONTINUE

    def _stop(self) -> None:
        self.sniffing = False
        self._scanFrontend = self._scanBackend = False
        self.frontend.stop()
        self.backend.stop()

    def _malformed(self, message: Any, direction: str) -> None:
        """
        The decoder lost sync: count it, log it, stop inspecting.
        """
        log.info("postgres_proxy: {direction} decoding error, inspection stopped: {reason}",
                 direction=direction, reason=message.reason)
        self.shared.inc("decoding_error")
        self._stop()

    def _frontendMessage(self, message: Any) -> bool:
        """
        Act on one decoded client message as Envoy does; C{False} (not a
        message to count) for a decoding error.
        """
        if type(message) is MalformedMessage:
            self._malformed(message, "frontend")
            # Envoy counts a typed message before it validates it; a bad
            # first message it does not count.
            return self.started
        shared = self.shared
        name = message.name
        if message.type == "":
            # The first message: only encryption requests count as
            # messages (Envoy's onDataInit).
            if name == "CancelRequest" and message.values["secretKey"] & 0xFF:
                # Envoy reads the first message as a code and NUL-terminated
                # strings before anything else: the process id and key of a
                # CancelRequest only pass as such when the key's last byte
                # is 0.  Otherwise it stops inspecting and counts nothing.
                self._stop()
                return False
            if name in _ENCRYPTION_REQUESTS:
                # Envoy without terminate_ssl: passed upstream, the session
                # counts as encrypted and is not inspected further.
                shared.inc("sessions", "sessions_encrypted")
                self._stop()
                return True
            if name == "StartupMessage":
                self.parameters = dict(message.values["parameters"])
                if "database" not in self.parameters and "user" in self.parameters:
                    self.parameters["database"] = self.parameters["user"]
                self._database = self.parameters.get("database")
                self._outlines = shared.outlinesOf(self._database)
                if self._parsing:
                    self._scanOutlines = self._outlines
                self.started = True
            else:
                # A protocol other than 3.x (Envoy would read on as if 3.0).
                shared.inc("messages", "messages_unknown")
                self._stop()
            return False
        if name == "Unknown":
            shared.inc("messages", "messages_unknown")
        elif name in ("Query", "Parse"):
            if shared.parseSql is not None:
                self._sql(message.values["sql"])
        elif name == "Terminate":
            if self.inTransaction:
                self.inTransaction = False
                shared.rollbacks.value += 1
        return True

    def _backendMessage(self, message: Any) -> bool:
        """
        Act on one decoded server message as Envoy does; C{False} (not a
        message to count) for a decoding error.
        """
        if type(message) is MalformedMessage:
            self._malformed(message, "backend")
            # Counted before it is validated, as Envoy does.
            return True
        shared = self.shared
        name = message.name
        if name == "CommandComplete":
            # The command word's UTF-8 is the bytes it was decoded from,
            # as far as the known (ASCII) words go.
            idle, busy, after = shared.commandOf(
                message.values["command"].encode("utf-8", "surrogateescape"))
            for counter in (busy if self.inTransaction else idle):
                counter.value += 1
            if after is not None:
                self.inTransaction = after
        elif name == "ErrorResponse":
            shared.inc("errors", _ERRORS.get(message.values["severity"], "errors_unknown"))
        elif name == "NoticeResponse":
            shared.inc("notices", _NOTICES.get(message.values["severity"], "notices_unknown"))
        elif name == "Authentication":
            if message.length == 9 and message.values["code"] == 0:
                shared.inc("sessions", "sessions_unencrypted")
        elif name == "Unknown":
            shared.inc("messages", "messages_unknown")
        return True

    def _sql(self, sql: str | bytes, found: Any = _MISSING) -> None:
        """
        Count a Query's or Parse's SQL as parsed or not, and set the
        dynamic metadata from its tables.  C{found} is the outline cache's
        entry for C{sql} when the caller looked it up already.
        """
        shared = self.shared
        if found is _MISSING and type(sql) is bytes and sql.isascii():
            found = self._outlines.get(sql.translate(DIGITS_AS_ZERO), _MISSING)
        tables = shared.tables(sql, self._database) if found is _MISSING else found
        if tables is None:
            shared.parseErrors.value += 1
            return
        shared.parsed.value += 1
        if tables is self._lastTables:
            # The same statement shape again: its entries are already set.
            return
        self._lastTables = tables
        metadata = self._metadata
        if metadata is None:
            # Envoy sets the namespace after every parse, tables or not.
            metadata = self._metadata = self.connection.streamInfo.dynamicMetadata.setdefault(
                METADATA_NAMESPACE, {})
            self._scanWritten = self._written
        written = self._written
        for table, ops in tables:
            if written.get(table) is not ops:
                metadata[table] = list(ops)
                written[table] = ops


@implementer(IReadFilter, IWriteFilter)
class PostgresProxyFilter(PostgresProxyLogic, ScanningFilter):
    """
    postgres_proxy on one connection, its scan in C where the extension
    was built (L{pyenvoy.filters.postgres_proxy.scan.ACCELERATED}).
    """


@implementer(IReadFilter, IWriteFilter)
class PythonPostgresProxyFilter(PostgresProxyLogic, PythonScanningFilter):
    """
    The same with the scan in Python: what the tests compare with.
    """


def parseSql(sql: str, database: str | None) -> dict[str, list[str]] | None:
    """
    The tables C{sql} touches and how, shaped as Envoy's metadata:
    C{{"<table>.<database>": ["insert", "select"]}}; C{None} when sqlglot
    cannot parse it.  SHOW statements are skipped, as in Envoy.
    """
    import sqlglot
    from sqlglot import exp

    try:
        statements = sqlglot.parse(sql, read="postgres")
    except Exception:
        return None
    suffix = f".{database}" if database else ""
    result: dict[str, list[str]] = {}
    statementKinds = tuple(getattr(exp, name) for name in _STATEMENT_CLASSES
                           if hasattr(exp, name))
    for statement in statements:
        if statement is None or isinstance(statement, exp.Show):
            continue
        if isinstance(statement, exp.Command):
            if str(statement.this).upper() == "SHOW":
                continue
            return None
        if not isinstance(statement, statementKinds):
            # sqlglot reads "SELEKT foo" as a bare expression.
            return None
        for table, op in _tablesAccessed(statement, exp):
            result.setdefault(table + suffix, []).append(op)
    return result


#: sqlglot's statement classes; any other root is not SQL we understood.
_STATEMENT_CLASSES = (
    "Query", "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "AlterTable",
    "TruncateTable", "Transaction", "Commit", "Rollback", "Set", "Copy", "Grant", "Use",
    "Describe", "Analyze", "Show",
)


def _tablesAccessed(statement: Any, exp: Any) -> list[tuple[str, str]]:
    targets: list[tuple[Any, str]] = []
    alter = getattr(exp, "Alter", None) or getattr(exp, "AlterTable", None)
    kinds = [(exp.Insert, "insert"), (exp.Update, "update"), (exp.Delete, "delete"),
             (exp.Create, "create"), (exp.Drop, "drop")]
    if alter is not None:
        kinds.append((alter, "alter"))
    for cls, op in kinds:
        if isinstance(statement, cls):
            target = statement.this
            if isinstance(statement, exp.Drop) and statement.args.get("tables"):
                target = statement.args["tables"][0]
            table = target if isinstance(target, exp.Table) else (
                target.find(exp.Table) if target is not None else None)
            if table is not None:
                targets.append((table, op))
            break
    ctes = {cte.alias_or_name for cte in statement.find_all(exp.CTE)}
    out = [(t.name, op) for t, op in targets]
    seen = {id(t) for t, _ in targets}
    for table in statement.find_all(exp.Table):
        if id(table) in seen or not table.name or table.name in ctes:
            continue
        seen.add(id(table))
        out.append((table.name, "select"))
    return out


class PostgresProxyFactory:
    """
    Parses C{PostgresProxy} and makes one L{PostgresProxyFilter} per
    connection.
    """

    def parseConfig(self, section: Any, context: Any) -> PostgresProxyConfig:
        """
        Validate a C{PostgresProxy} message; C{downstream_ssl} other than
        C{DISABLE} is refused as not supported yet.
        """
        statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
        enable = section.boolean("enable_sql_parsing", True)
        terminate = section.boolean("terminate_ssl", False)
        downstream = section.enum("downstream_ssl", ("DISABLE",), "DISABLE",
                                  unsupported=("REQUIRE", "ALLOW"))
        upstream = section.enum("upstream_ssl", ("DISABLE", "REQUIRE", "ALLOW"), "DISABLE")
        section.finish()
        if upstream == "ALLOW":
            # Envoy accepts it for this field and acts only on REQUIRE.
            upstream = "DISABLE"
        return PostgresProxyConfig(statPrefix, enable, terminate, downstream, upstream)

    def createFilterFactory(self, config: PostgresProxyConfig, context: Any) -> Any:
        """
        Load sqlglot, if SQL parsing is on, and create the stats once.
        """
        parser = None
        if config.enableSqlParsing:
            importlib.import_module("sqlglot")
            # sqlglot logs a warning for each statement it cannot fully
            # parse; those are counted as statements_parse_error instead.
            logging.getLogger("sqlglot").setLevel(logging.ERROR)
            parser = parseSql
        shared = _Shared(config, context.store, parser)
        return lambda: PostgresProxyFilter(shared)


factory = PostgresProxyFactory()
