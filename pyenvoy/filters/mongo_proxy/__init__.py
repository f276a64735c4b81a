"""
C{envoy.filters.network.mongo_proxy}: follow the MongoDB wire protocol on
a connection for stats, an access log, dynamic metadata and injected
delays, without changing a byte.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from pyenvoy.interfaces import FilterStatus, IReadFilter, IWriteFilter

log = Logger()

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
METADATA_NAMESPACE = "envoy.filters.network.mongo_proxy"

#: Envoy's C{ALL_MONGO_PROXY_STATS} counters, then pyenvoy's OP_MSG and
#: OP_COMPRESSED ones, named in the same style.
COUNTERS = (
    "cx_destroy_local_with_active_rq", "cx_destroy_remote_with_active_rq", "cx_drain_close",
    "decoding_error", "delays_injected", "op_command", "op_command_reply", "op_get_more",
    "op_insert", "op_kill_cursors", "op_query", "op_query_await_data", "op_query_exhaust",
    "op_query_multi_get", "op_query_no_cursor_timeout", "op_query_no_max_time",
    "op_query_scatter_get", "op_query_tailable_cursor", "op_reply",
    "op_reply_cursor_not_found", "op_reply_query_failure", "op_reply_valid_cursor",
    # pyenvoy additions
    "op_update", "op_delete", "op_msg", "op_msg_more_to_come", "op_msg_reply",
    "op_msg_reply_valid_cursor", "op_msg_reply_cursor_not_found", "op_msg_reply_failure",
    "op_msg_reply_write_errors", "op_compressed", "op_compressed_unsupported",
)
GAUGES = ("op_query_active",)

_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_DEFAULT_COMMANDS = ("delete", "insert", "update")
#: Server error code C{CursorNotFound}.
_CURSOR_NOT_FOUND = 43
_METADATA_OPS = {"insert": "insert", "update": "update", "delete": "delete", "find": "query"}
#: Envoy's command aliases (C{utility.cc}), applied before the C{commands}
#: lookup.
_COMMAND_ALIASES = {"collstats": "collStats", "dbstats": "dbStats",
                    "findandmodify": "findAndModify", "getlasterror": "getLastError",
                    "ismaster": "isMaster"}


@dataclass(frozen=True)
class MongoProxyConfig:
    """
    A validated C{MongoProxy} message.

    C{delayPercent} is C{(numerator, denominator)}; no C{delay} is
    C{delaySeconds=None}.
    """

    statPrefix: str
    accessLog: str | None
    delaySeconds: float | None
    delayPercent: tuple[int, int]
    emitDynamicMetadata: bool
    commands: tuple[str, ...]


class _Shared:
    """
    What every connection of one configured mongo_proxy shares: stats,
    the access log file, the delay dice.
    """

    def __init__(self, config: MongoProxyConfig, store: Any, reactor: Any,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.scope = scope = store.scope(f"mongo.{config.statPrefix}")
        self.stats = {name: scope.counter(name) for name in COUNTERS}
        self.active = scope.gauge("op_query_active")
        self.commands = frozenset(config.commands)
        self.rng = rng or random.Random()
        self.accessLog: Any = None
        if config.accessLog:
            self.accessLog = open(config.accessLog, "ab", buffering=0)
        #: Stats looked up by name once: counters by their name under the
        #: scope, the three reply histograms by their scope.
        self._counters: dict[str, Any] = {}
        self._replyHistograms: dict[str, tuple[Any, Any, Any]] = {}

    def counter(self, name: str) -> Any:
        """
        The counter C{<scope>.<name>} (a per-command or per-collection one),
        found once.
        """
        found = self._counters.get(name)
        if found is None:
            found = self._counters[name] = self.scope.counter(name)
        return found

    def replyHistograms(self, scope: str) -> tuple[Any, Any, Any]:
        """
        C{<scope>.reply_num_docs}, C{reply_size} and C{reply_time_ms}.
        """
        found = self._replyHistograms.get(scope)
        if found is None:
            histogram = self.scope.histogram
            found = self._replyHistograms[scope] = (
                histogram(f"{scope}.reply_num_docs"), histogram(f"{scope}.reply_size"),
                histogram(f"{scope}.reply_time_ms"))
        return found

    def inc(self, name: str) -> None:
        """
        Count one of the fixed counters.
        """
        self.stats[name].value += 1

    def commandStat(self, command: str) -> str:
        """
        The C{cmd.<name>} element for C{command}: its Envoy alias
        (C{ismaster} is C{isMaster}...) if configured, else
        C{unknown_command}, as Envoy does.
        """
        command = _COMMAND_ALIASES.get(command, command)
        return command if command in self.commands else "unknown_command"

    def delay(self) -> float | None:
        """
        The delay to inject for one request, if the dice say so.
        """
        seconds = self.config.delaySeconds
        if not seconds:
            return None
        numerator, denominator = self.config.delayPercent
        if self.rng.randrange(denominator) >= numerator:
            return None
        return seconds


def _callsite(comment: Any) -> str | None:
    """
    The C{callingFunction} of a C{$comment} given as JSON text (Envoy) or
    as a document.
    """
    if isinstance(comment, str):
        try:
            comment = json.loads(comment)
        except ValueError:
            return None
    try:
        value = comment.get("callingFunction")
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def _idType(document: Any) -> str | None:
    """
    C{"scatter_get"} (no C{_id}), C{"multi_get"} (a document or array
    C{_id}) or C{None} for a primary-key get: Envoy's
    C{parseTypeFromDocument}, top level only.
    """
    from bson.raw_bson import RawBSONDocument

    try:
        if "_id" not in document:
            return "scatter_get"
        value = document["_id"]
    except Exception:
        return None
    if isinstance(value, (RawBSONDocument, list)):
        return "multi_get"
    return None


def _queryType(query: Any) -> str | None:
    """
    A legacy query's type as Envoy's C{parseType} finds it: from its top
    level, or from its C{$query} document when the top level has no C{_id}.
    """
    from bson.raw_bson import RawBSONDocument

    kind = _idType(query)
    if kind == "scatter_get":
        try:
            inner = query.get("$query")
        except Exception:
            return kind
        if isinstance(inner, RawBSONDocument):
            kind = _idType(inner)
    return kind


def _filterType(command: Any) -> str | None:
    """
    A C{find} command's query type: from its C{filter} document if it has
    one, else C{"scatter_get"} (Envoy's C{parseFindCommand}).
    """
    from bson.raw_bson import RawBSONDocument

    try:
        query = command.get("filter")
    except Exception:
        return "scatter_get"
    return _idType(query) if isinstance(query, RawBSONDocument) else "scatter_get"


def _maxTime(query: Any) -> int:
    """
    Envoy's C{parseMaxTime}: C{$maxTimeMS}, else C{maxTimeMS}, counted
    only if an Int32 or Int64 (cut to 32 bits, as C{static_cast<int32_t>});
    0 otherwise.
    """
    from bson.int64 import Int64

    try:
        if "$maxTimeMS" in query:
            value = query["$maxTimeMS"]
        elif "maxTimeMS" in query:
            value = query["maxTimeMS"]
        else:
            return 0
    except Exception:
        return 0
    kind = type(value)
    if kind is int:
        return value
    if kind is Int64:
        return ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    return 0


class _Active:
    """
    A request waiting for its reply: where to charge the reply stats.
    """

    __slots__ = ("start", "scopes")

    def __init__(self, start: float, scopes: list[str]) -> None:
        self.start = start
        self.scopes = scopes


@implementer(IReadFilter, IWriteFilter)
class MongoProxyFilter:
    """
    One connection: decodes requests on the read path and replies on the
    write path; always passes the bytes on (held only while a delay runs).
    """

    def __init__(self, shared: _Shared) -> None:
        from pyenvoy.filters.mongo_proxy.codec import Decoder

        self.shared = shared
        self.reactor = shared.reactor
        self.emitMetadata = shared.config.emitDynamicMetadata
        self.sniffing = True
        self.requests: Any = Decoder()
        self.replies: Any = Decoder()
        self.active: dict[int, _Active] = {}
        self.delayTimer: Any = None

    # -- filter callbacks ------------------------------------------------------

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.readCallbacks = callbacks
        self.connection = callbacks.connection
        self.connection.addConnectionCallback(self._connectionEvent)

    def initializeWriteFilterCallbacks(self, callbacks: Any) -> None:
        self.writeCallbacks = callbacks

    def onNewConnection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode requests; hold the bytes while an injected delay runs.
        """
        if self.sniffing:
            self._inspect(self.requests, data, self._request)
        if self.delayTimer is not None:
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE

    def onWrite(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Decode replies.
        """
        if self.sniffing:
            self._inspect(self.replies, data, self._reply)
        return FilterStatus.CONTINUE

    # -- decoding --------------------------------------------------------------

    def _inspect(self, decoder: Any, data: bytes, handle: Any) -> None:
        """
        One chunk of either direction: the metadata namespace is emptied
        first (Envoy's C{doDecode}), then each whole message is handled.
        """
        if self.emitMetadata:
            self._clearMetadata()
        if data:
            for message in self._decode(decoder, data):
                handle(message)

    def _decode(self, decoder: Any, data: bytes) -> list[Any]:
        from pyenvoy.filters.mongo_proxy.codec import DecodeError

        try:
            return decoder.feed(data)
        except DecodeError as e:
            log.info("mongo decoding error: {error}", error=str(e))
            self.shared.inc("decoding_error")
            self.sniffing = False
            self.requests = self.replies = None
            return []

    def _compressed(self, message: Any) -> bool:
        """
        Count OP_COMPRESSED; true if the inner message could not be read.
        """
        if message.compressor is None:
            return False
        self.shared.inc("op_compressed")
        if message.unsupportedCompressor:
            self.shared.inc("op_compressed_unsupported")
            return True
        return False

    def _request(self, m: Any) -> None:
        from pyenvoy.filters.mongo_proxy import codec

        shared = self.shared
        if self._compressed(m):
            return
        op = m.opCode
        if op != codec.OP_REPLY:
            self._tryDelay()
        self._log(m, op != codec.OP_REPLY)
        if op == codec.OP_MSG:
            self._opMsg(m)
        elif op == codec.OP_QUERY:
            self._opQuery(m)
        elif op == codec.OP_INSERT:
            shared.inc("op_insert")
            self._metadata(m.fullCollectionName, "insert")
        elif op == codec.OP_UPDATE:
            shared.inc("op_update")
            self._metadata(m.fullCollectionName, "update")
        elif op == codec.OP_DELETE:
            shared.inc("op_delete")
            self._metadata(m.fullCollectionName, "delete")
        elif op == codec.OP_GET_MORE:
            shared.inc("op_get_more")
        elif op == codec.OP_KILL_CURSORS:
            shared.inc("op_kill_cursors")
        elif op == codec.OP_COMMAND:
            shared.inc("op_command")
        elif op in (codec.OP_REPLY, codec.OP_COMMANDREPLY):
            # A reply sent by the client: count it, nothing to match.
            shared.inc("op_reply" if op == codec.OP_REPLY else "op_command_reply")

    def _queryStats(self, collection: str, kind: str | None, callsite: str | None,
                    hasMaxTime: bool) -> list[str]:
        """
        Charge Envoy's per-collection (and per-callsite) query stats and the
        global query-shape counters for a query of type C{kind} (see
        L{_idType}); return the scopes for the reply stats.
        """
        shared = self.shared
        scopes = [f"collection.{collection}.query"]
        if callsite:
            scopes.append(f"collection.{collection}.callsite.{callsite}.query")
        for scope in scopes:
            shared.counter(f"{scope}.total").value += 1
            if kind is not None:
                shared.counter(f"{scope}.{kind}").value += 1
        if not hasMaxTime:
            shared.inc("op_query_no_max_time")
        if kind is not None:
            shared.inc(f"op_query_{kind}")
        return scopes

    def _opQuery(self, m: Any) -> None:
        from pyenvoy.filters.mongo_proxy import codec

        shared = self.shared
        shared.inc("op_query")
        for bit, name in ((codec.QUERY_TAILABLE_CURSOR, "op_query_tailable_cursor"),
                          (codec.QUERY_NO_CURSOR_TIMEOUT, "op_query_no_cursor_timeout"),
                          (codec.QUERY_AWAIT_DATA, "op_query_await_data"),
                          (codec.QUERY_EXHAUST, "op_query_exhaust")):
            if m.flags & bit:
                shared.inc(name)
        self._metadata(m.fullCollectionName, "query")
        command = m.command
        if command is None:
            body = m.body
            try:
                comment = body.get("$comment")
            except Exception:
                comment = None
            scopes = self._queryStats(m.collection or "", _queryType(body), _callsite(comment),
                                      _maxTime(body) >= 1)
        elif command == "find" and isinstance(m.top.get("find"), str):
            # Envoy's special case for the 3.2 find command: a query on the
            # collection it names, whose max time is never read.
            top = m.top
            try:
                comment = top.get("comment")
            except Exception:
                comment = None
            scopes = self._queryStats(m.collection, _filterType(top), _callsite(comment), False)
        else:
            cmd = shared.commandStat(command)
            shared.counter(f"cmd.{cmd}.total").value += 1
            scopes = [f"cmd.{cmd}"]
        self._track(m.requestId, scopes)

    def _opMsg(self, m: Any) -> None:
        shared = self.shared
        shared.inc("op_msg")
        if m.moreToCome:
            shared.inc("op_msg_more_to_come")
        command = m.command or ""
        cmd = shared.commandStat(command)
        shared.counter(f"cmd.{cmd}.total").value += 1
        scopes = [f"cmd.{cmd}"]
        if command == "find" and m.collection:
            top = m.top
            try:
                comment = top.get("comment")
            except Exception:
                comment = None
            scopes += self._queryStats(m.collection, _filterType(top), _callsite(comment),
                                       _maxTime(top) >= 1)
        op = _METADATA_OPS.get(command)
        if op is not None and m.collection and m.database:
            self._metadata(f"{m.database}.{m.collection}", op)
        if not m.moreToCome:
            self._track(m.requestId, scopes)

    def _track(self, requestId: int, scopes: list[str]) -> None:
        if requestId not in self.active:
            self.shared.active.inc()
        self.active[requestId] = _Active(self.reactor.seconds(), scopes)

    def _reply(self, m: Any) -> None:
        from pyenvoy.filters.mongo_proxy import codec

        shared = self.shared
        if self._compressed(m):
            return
        op = m.opCode
        self._log(m, op != codec.OP_REPLY and op != codec.OP_MSG)
        if op == codec.OP_REPLY:
            shared.inc("op_reply")
            if m.cursorId != 0:
                shared.inc("op_reply_valid_cursor")
            if m.flags & codec.REPLY_CURSOR_NOT_FOUND:
                shared.inc("op_reply_cursor_not_found")
            if m.flags & codec.REPLY_QUERY_FAILURE:
                shared.inc("op_reply_query_failure")
            numDocs = len(m.documents)
            size = sum(len(d.raw) for d in m.documents)
        elif op == codec.OP_MSG:
            shared.inc("op_msg_reply")
            body = m.body
            top = m.top if m.top is not None else body
            try:
                ok = top.get("ok")
                code = top.get("code")
                writeErrors = top.get("writeErrors")
            except Exception:
                ok, code, writeErrors = 1, None, None
            if m.cursorId:
                shared.inc("op_msg_reply_valid_cursor")
            if not ok:
                shared.inc("op_msg_reply_failure")
                if code == _CURSOR_NOT_FOUND:
                    shared.inc("op_msg_reply_cursor_not_found")
            if writeErrors:
                shared.inc("op_msg_reply_write_errors")
            numDocs = m.batchSize if m.batchSize is not None else 1
            size = len(body.raw) + sum(len(d.raw) for docs in m.sequences.values()
                                       for d in docs)
        elif op == codec.OP_COMMANDREPLY:
            # Envoy's decodeCommandReply may inject a delay too.
            shared.inc("op_command_reply")
            self._tryDelay()
            return
        else:
            # Requests seen on the reply path: only counted.
            name = {codec.OP_QUERY: "op_query", codec.OP_INSERT: "op_insert",
                    codec.OP_GET_MORE: "op_get_more", codec.OP_KILL_CURSORS: "op_kill_cursors",
                    codec.OP_COMMAND: "op_command", codec.OP_UPDATE: "op_update",
                    codec.OP_DELETE: "op_delete"}.get(op)
            if name:
                shared.inc(name)
            return
        active = self.active.pop(m.responseTo, None)
        if active is None:
            return
        if m.moreToCome:
            # Exhaust: the next reply answers this one.
            self.active[m.requestId] = active
        else:
            shared.active.dec()
        elapsed = int(max(0.0, self.reactor.seconds() - active.start) * 1000.0)
        for scope in active.scopes:
            numDocsHistogram, sizeHistogram, timeHistogram = shared.replyHistograms(scope)
            numDocsHistogram.record(numDocs)
            sizeHistogram.record(size)
            timeHistogram.record(elapsed)

    # -- metadata, access log, delay -------------------------------------------

    def _clearMetadata(self) -> None:
        """
        Empty this filter's dynamic metadata namespace, as Envoy's
        C{doDecode} does on every read and every write.
        """
        self.connection.streamInfo.dynamicMetadata[METADATA_NAMESPACE] = {}

    def _metadata(self, resource: str | None, operation: str) -> None:
        if not self.emitMetadata or not resource:
            return
        namespace = self.connection.streamInfo.dynamicMetadata.setdefault(
            METADATA_NAMESPACE, {})
        namespace.setdefault(resource, []).append(operation)

    def _log(self, m: Any, full: bool) -> None:
        """
        Write C{m}'s access log line in Envoy's text (L{accesslog}); C{full}
        writes its documents, else only their count.
        """
        sink = self.shared.accessLog
        if sink is None:
            return
        from pyenvoy.filters.mongo_proxy import accesslog

        line = accesslog.logLine(self.reactor.seconds(), accesslog.describe(m, full),
                                 self.connection.streamInfo.upstreamHost)
        try:
            sink.write(line)
        except OSError as e:
            log.error("mongo access log write failed: {error}", error=str(e))

    def _tryDelay(self) -> None:
        if self.delayTimer is not None:
            return
        seconds = self.shared.delay()
        if seconds is None:
            return
        self.shared.inc("delays_injected")
        self.delayTimer = self.reactor.callLater(seconds, self._delayDone)

    def _delayDone(self) -> None:
        self.delayTimer = None
        self.readCallbacks.continueReading()

    def _connectionEvent(self, event: str) -> None:
        if self.delayTimer is not None:
            if self.delayTimer.active():
                self.delayTimer.cancel()
            self.delayTimer = None
        if self.active:
            if event == "remote_close":
                self.shared.inc("cx_destroy_remote_with_active_rq")
            elif event == "local_close":
                self.shared.inc("cx_destroy_local_with_active_rq")
            self.shared.active.dec(len(self.active))
            self.active.clear()


class MongoProxyFactory:
    """
    Parses C{MongoProxy} and makes one L{MongoProxyFilter} per connection.
    """

    def parseConfig(self, section: Any, context: Any) -> MongoProxyConfig:
        """
        Validate a C{MongoProxy} message.
        """
        statPrefix = section.string("stat_prefix", required=True, nonEmpty=True) or ""
        accessLog = section.string("access_log") or None
        emit = section.boolean("emit_dynamic_metadata", False)
        # An empty list keeps the default, as in Envoy (commands_size() > 0).
        commands = tuple(section.strings("commands")) or _DEFAULT_COMMANDS
        delaySeconds: float | None = None
        percent = (0, 100)
        delay = section.section("delay")
        if delay is not None:
            delaySeconds = delay.duration("fixed_delay", required=True)
            pct = delay.section("percentage")
            if pct is not None:
                numerator = pct.integer("numerator", 0, minimum=0) or 0
                denominatorName = pct.enum("denominator", tuple(_DENOMINATORS), "HUNDRED")
                denominator = _DENOMINATORS[denominatorName]
                percent = (min(numerator, denominator), denominator)
                pct.finish()
            delay.finish(unsupported=("header_delay",))
        section.finish()
        return MongoProxyConfig(statPrefix, accessLog, delaySeconds, percent, emit, commands)

    def createFilterFactory(self, config: MongoProxyConfig, context: Any) -> Any:
        """
        Load the codec, create the stats and open the access log once.
        """
        from importlib import import_module

        # bson loads here, not on the first connection.
        import_module("pyenvoy.filters.mongo_proxy.codec")
        if config.accessLog:
            import_module("pyenvoy.filters.mongo_proxy.accesslog")

        shared = _Shared(config, context.store, context.reactor)
        return lambda: MongoProxyFilter(shared)


factory = MongoProxyFactory()
