"""
C{envoy.filters.network.postgres_proxy}: follow the PostgreSQL protocol on
a connection for Envoy's stats and SQL dynamic metadata, without changing
a byte.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.interfaces import CloseType, FilterStatus, IReadFilter, IWriteFilter

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
#: The typed messages the filter acts on; the decoders only count the rest.
_FRONTEND_WANTED = frozenset("QPX")
_BACKEND_WANTED = frozenset("CENR")
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
#: a non-word character are allowed.
_NOT_NORMALISABLE = re.compile(r'"|\\|--|/\*|\w\$|\$(?!\d)')
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
    """

    def __init__(self, config: PostgresProxyConfig, store: Any,
                 parseSql: Callable[[str, str | None], dict[str, list[str]] | None] | None
                 ) -> None:
        self.config = config
        self.scope = scope = store.scope(f"postgres.{config.statPrefix}")
        self.stats = {name: scope.counter(name) for name in COUNTERS}
        self.parseSql = parseSql
        self._sqlCache: dict[tuple[str, str | None],
                             tuple[tuple[str, tuple[str, ...]], ...] | None] = {}

    def tables(self, sql: str, database: str | None
               ) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        """
        The parse result of C{sql} (see L{parseSql}) as immutable pairs,
        from the cache when a statement of the same shape was seen.
        """
        if _NOT_NORMALISABLE.search(sql) is None:
            key = (_LITERALS.sub("?", sql), database)
        else:
            key = (sql, database)
        cache = self._sqlCache
        try:
            return cache[key]
        except KeyError:
            pass
        assert self.parseSql is not None
        parsed = self.parseSql(sql, database)
        result = None if parsed is None else tuple(
            (table, tuple(ops)) for table, ops in parsed.items())
        if len(cache) >= SQL_CACHE_SIZE:
            cache.clear()
        cache[key] = result
        return result

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


@implementer(IReadFilter, IWriteFilter)
class PostgresProxyFilter:
    """
    One connection: decodes the client's messages on the read path and
    the server's on the write path, counts them as Envoy does, and always
    lets the bytes through untouched.
    """

    def __init__(self, shared: _Shared) -> None:
        from pyenvoy.filters.postgres_proxy.codec import Decoder, MalformedMessage

        self._malformedType = MalformedMessage
        self.shared = shared
        self.sniffing = True
        self.frontend = Decoder(frontend=True, only=_FRONTEND_WANTED)
        self.backend = Decoder(frontend=False, only=_BACKEND_WANTED)
        self.started = False
        self.inTransaction = False
        self.parameters: dict[str, str] = {}
        #: The parse result last written to the dynamic metadata.
        self._lastTables: Any = None
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
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode what the client sent.
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
        return FilterStatus.CONTINUE

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
                if name == "StartupMessage" and self.shared.config.upstreamSsl == "REQUIRE":
                    # Envoy buffers the startup and asks the server for TLS.
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
        if data[:1] == b"S" and start is not None and start():
            self.shared.inc("sessions_upstream_ssl_success")
            callbacks.injectReadData(bytes(replay), False)
            return
        log.info("postgres_proxy: the server did not accept TLS (answer {answer!r}); closing",
                 answer=data[:1])
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

    def onWrite(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode what the server sent (once the client's startup is seen).
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
        return FilterStatus.CONTINUE

    def _stop(self) -> None:
        self.sniffing = False
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
        if type(message) is self._malformedType:
            self._malformed(message, "frontend")
            return False
        shared = self.shared
        name = message.name
        if message.type == "":
            if name in _ENCRYPTION_REQUESTS:
                # Envoy without terminate_ssl: passed upstream, the session
                # counts as encrypted and is not inspected further.
                shared.inc("sessions", "sessions_encrypted")
                self._stop()
            elif name == "StartupMessage":
                self.parameters = dict(message.values["parameters"])
                if "database" not in self.parameters and "user" in self.parameters:
                    self.parameters["database"] = self.parameters["user"]
                self.started = True
            else:
                shared.inc("messages", "messages_unknown")
                self._stop()
            return True
        if name == "Unknown":
            shared.inc("messages", "messages_unknown")
        elif name in ("Query", "Parse"):
            self._sql(message.values["sql"])
        elif name == "Terminate":
            if self.inTransaction:
                self.inTransaction = False
                shared.inc("transactions_rollback")
        return True

    def _backendMessage(self, message: Any) -> bool:
        """
        Act on one decoded server message as Envoy does; C{False} (not a
        message to count) for a decoding error.
        """
        if type(message) is self._malformedType:
            self._malformed(message, "backend")
            return False
        shared = self.shared
        name = message.name
        if name == "CommandComplete":
            self._commandComplete(message.values["command"])
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

    def _commandComplete(self, command: str) -> None:
        """
        Envoy's statement and transaction counting from a command tag.
        """
        shared = self.shared
        if command in ("BEGIN", "START"):
            shared.inc("statements", "statements_other")
            if not self.inTransaction:
                shared.inc("transactions")
            self.inTransaction = True
        elif command == "COMMIT":
            shared.inc("statements", "statements_other", "transactions_commit")
            self.inTransaction = False
        elif command == "ROLLBACK":
            shared.inc("statements", "statements_other")
            if self.inTransaction:
                shared.inc("transactions_rollback")
            self.inTransaction = False
        else:
            shared.inc("statements", _STATEMENTS.get(command, "statements_other"))
            if not self.inTransaction:
                shared.inc("transactions", "transactions_commit")

    def _sql(self, sql: str) -> None:
        parse = self.shared.parseSql
        if parse is None:
            return
        tables = self.shared.tables(sql, self.parameters.get("database"))
        if tables is None:
            self.shared.inc("statements_parse_error")
            return
        self.shared.inc("statements_parsed")
        if tables is self._lastTables:
            # The same statement shape again: its entries are already set.
            return
        self._lastTables = tables
        metadata = self.connection.streamInfo.dynamicMetadata.setdefault(
            METADATA_NAMESPACE, {})
        for table, ops in tables:
            metadata[table] = list(ops)


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
        upstream = section.enum("upstream_ssl", ("DISABLE", "REQUIRE"), "DISABLE")
        section.finish()
        return PostgresProxyConfig(statPrefix, enable, terminate, downstream, upstream)

    def createFilterFactory(self, config: PostgresProxyConfig, context: Any) -> Any:
        """
        Load the codec (and sqlglot, if SQL parsing is on) and create the
        stats once.
        """
        import pyenvoy.filters.postgres_proxy.codec  # noqa: F401

        parser = None
        if config.enableSqlParsing:
            import sqlglot  # noqa: F401

            # sqlglot logs a warning for each statement it cannot fully
            # parse; those are counted as statements_parse_error instead.
            logging.getLogger("sqlglot").setLevel(logging.ERROR)
            parser = parseSql
        shared = _Shared(config, context.store, parser)
        return lambda: PostgresProxyFilter(shared)


factory = PostgresProxyFactory()
