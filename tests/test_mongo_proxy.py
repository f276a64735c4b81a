"""
mongo_proxy: stats per opcode, delays on a clock, the access log, dynamic
metadata (in memory), and pymongo through pyenvoy to a real nx-27017.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import bson
from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from pyenvoy.filters.mongo_proxy import METADATA_NAMESPACE, MongoProxyConfig, factory
from pyenvoy.interfaces import FilterStatus, IReadFilter
from pyenvoy.stats import Store
from pyenvoy.testing import FilterHarness
from tests import mongo_frames as f
from tests.support.mongo import mongoProxyConfig, startMongo
from tests.support.net import listenerPort, startServer, stat


@implementer(IReadFilter)
class Sink:
    """
    A terminal filter that keeps what reaches it (the "upstream").
    """

    def __init__(self) -> None:
        self.received = b""

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        pass

    def onNewConnection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.received += data
        return FilterStatus.STOP_ITERATION


def config(**kw: Any) -> MongoProxyConfig:
    values = dict(statPrefix="m", accessLog=None, delaySeconds=None, delayPercent=(0, 100),
                  emitDynamicMetadata=False, commands=("delete", "insert", "update", "find"))
    values.update(kw)
    return MongoProxyConfig(**values)


class FilterTests(SynchronousTestCase):
    """
    The filter over an in-memory connection.
    """

    def make(self, **kw: Any) -> tuple[FilterHarness, Sink]:
        self.store = Store()
        self.sink = Sink()
        harness = FilterHarness([])
        makeFilter = factory.createFilterFactory(
            config(**kw), SimpleNamespace(store=self.store, reactor=harness.reactor))
        harness = FilterHarness([makeFilter(), self.sink], reactor=harness.reactor)
        return harness, self.sink

    def stat(self, name: str) -> Any:
        found = self.store.get(f"mongo.m.{name}")
        return None if found is None else (found.value if found.kind != "histogram"
                                            else found.count)

    def nonzero(self) -> dict[str, Any]:
        out = {}
        for s in self.store:
            value = s.count if s.kind == "histogram" else s.value
            if value:
                out[s.name[len("mongo.m."):]] = value
        return out

    def test_legacyOpcodes(self) -> None:
        """
        Each legacy request counts its Envoy stat and passes through unchanged.
        """
        harness, sink = self.make()
        data = (f.opQuery("app.users", {"a": 1}, flags=2 | 16 | 32 | 64)
                + f.opQuery("app.users", {"_id": {"$in": [1, 2]}}, requestId=2)
                + f.opGetMore("app.users", 9) + f.opInsert("app.users", [{"x": 1}])
                + f.opUpdate("app.users", {}, {}) + f.opDelete("app.users", {})
                + f.opKillCursors([9]))
        harness.receive(data[:7])
        harness.receive(data[7:])
        self.assertEqual(sink.received, data)
        harness.connection.write(f.opReply([{"a": 1}], cursorId=9, flags=3, responseTo=1))
        self.assertEqual(self.nonzero(), {
            "op_query": 2, "op_query_tailable_cursor": 1, "op_query_no_cursor_timeout": 1,
            "op_query_await_data": 1, "op_query_exhaust": 1, "op_query_no_max_time": 2,
            "op_query_scatter_get": 1, "op_query_multi_get": 1,
            "collection.users.query.total": 2, "collection.users.query.scatter_get": 1,
            "collection.users.query.multi_get": 1, "collection.users.query.reply_num_docs": 1,
            "collection.users.query.reply_size": 1, "collection.users.query.reply_time_ms": 1,
            "op_get_more": 1, "op_insert": 1, "op_update": 1, "op_delete": 1,
            "op_kill_cursors": 1, "op_reply": 1, "op_reply_valid_cursor": 1,
            "op_reply_cursor_not_found": 1, "op_reply_query_failure": 1,
            "op_query_active": 1,
        })

    def test_commandAndCallsite(self) -> None:
        """
        $cmd queries count cmd.<name> (unknown_command if not listed); $comment
        callsites get their own stats.
        """
        harness, _ = self.make()
        harness.receive(f.opQuery("admin.$cmd", {"insert": "x"})
                        + f.opQuery("admin.$cmd", {"ismaster": 1}, requestId=2)
                        + f.opQuery("app.c", {"_id": 1, "$comment": '{"callingFunction": "fn"}',
                                              "$maxTimeMS": 5}, requestId=3))
        self.assertEqual(self.stat("cmd.insert.total"), 1)
        self.assertEqual(self.stat("cmd.unknown_command.total"), 1)
        self.assertEqual(self.stat("collection.c.callsite.fn.query.total"), 1)
        self.assertEqual(self.stat("op_query_no_max_time"), 0)
        self.assertEqual(self.stat("op_query_active"), 3)
        harness.disconnect()
        self.assertEqual(self.stat("cx_destroy_remote_with_active_rq"), 1)
        self.assertEqual(self.stat("op_query_active"), 0)

    def test_opMsg(self) -> None:
        """
        OP_MSG requests and replies: cmd stats, reply histograms, failures.
        """
        harness, _ = self.make()
        harness.receive(f.opMsg({"find": "users", "filter": {}, "$db": "app"}, requestId=1)
                        + f.opMsg({"bogus": 1, "$db": "app"}, requestId=2))
        harness.reactor.advance(0.25)
        harness.connection.write(f.opMsg(
            {"cursor": {"id": 5, "ns": "app.users", "firstBatch": [{}, {}]}, "ok": 1.0},
            requestId=3, responseTo=1)
            + f.opMsg({"ok": 0.0, "code": 59, "errmsg": "no such command"}, responseTo=2))
        self.assertEqual(self.stat("op_msg"), 2)
        self.assertEqual(self.stat("op_msg_reply"), 2)
        self.assertEqual(self.stat("op_msg_reply_valid_cursor"), 1)
        self.assertEqual(self.stat("op_msg_reply_failure"), 1)
        self.assertEqual(self.stat("cmd.find.total"), 1)
        self.assertEqual(self.stat("cmd.unknown_command.total"), 1)
        self.assertEqual(self.stat("collection.users.query.scatter_get"), 1)
        hist = self.store.get("mongo.m.cmd.find.reply_time_ms")
        self.assertEqual(hist.sum, 250)
        self.assertEqual(self.store.get("mongo.m.cmd.find.reply_num_docs").sum, 2)
        self.assertEqual(self.stat("op_query_active"), 0)

    def test_compressed(self) -> None:
        """
        OP_COMPRESSED is counted and its inner message charged.
        """
        harness, _ = self.make()
        harness.receive(f.compressed(f.opMsg({"insert": "c", "$db": "d"})))
        self.assertEqual((self.stat("op_compressed"), self.stat("cmd.insert.total")), (1, 1))

    def test_decodingError(self) -> None:
        """
        Garbage counts decoding_error once; bytes keep flowing untouched.
        """
        harness, sink = self.make()
        harness.receive(b"\x05\x00\x00\x00garbage")
        harness.receive(f.opMsg({"ping": 1}))
        self.assertEqual(self.stat("decoding_error"), 1)
        self.assertEqual(self.stat("op_msg"), 0)
        self.assertEqual(sink.received, b"\x05\x00\x00\x00garbage" + f.opMsg({"ping": 1}))

    def test_delay(self) -> None:
        """
        A request is held for fixed_delay, then passed on in order.
        """
        harness, sink = self.make(delaySeconds=1.0, delayPercent=(100, 100))
        request = f.opMsg({"insert": "c", "$db": "d"})
        harness.receive(request)
        harness.receive(b"\x10")
        self.assertEqual(sink.received, b"")
        self.assertEqual(self.stat("delays_injected"), 1)
        harness.reactor.advance(1.0)
        self.assertEqual(sink.received, request + b"\x10")

    def test_accessLog(self) -> None:
        """
        One Envoy-shaped JSON line per message.
        """
        path = self.mktemp()
        harness, _ = self.make(accessLog=path)
        harness.reactor.advance(1.5)
        harness.receive(f.opQuery("app.users", {"a": 1}) + f.opMsg({"ping": 1, "$db": "admin"}))
        harness.connection.write(f.opReply([{"a": 1}]))
        lines = [json.loads(line) for line in open(path, encoding="utf-8")]
        self.assertEqual(lines[0], {
            "time": "1970-01-01T00:00:01.500Z", "upstream_host": "-",
            "message": {"opcode": "OP_QUERY", "id": 1, "response_to": 0, "flags": "0x0",
                        "collection": "app.users", "skip": 0, "return": 0,
                        "query": {"a": 1}, "fields": {}}})
        self.assertEqual(lines[1]["message"]["command"], "ping")
        self.assertEqual(lines[2]["message"]["documents"], 1)

    def test_metadata(self) -> None:
        """
        Operations per db.collection in the connection's dynamic metadata.
        """
        harness, _ = self.make(emitDynamicMetadata=True)
        harness.receive(f.opMsg({"insert": "c", "$db": "d"})
                        + f.opMsg({"find": "c", "$db": "d"}, requestId=2)
                        + f.opInsert("d.e", [{}]))
        self.assertEqual(harness.connection.streamInfo.dynamicMetadata[METADATA_NAMESPACE],
                         {"d.c": ["insert", "query"], "d.e": ["insert"]})

    def test_metadataClearedOnWrite(self) -> None:
        """
        Bytes from the server clear the namespace too, as Envoy's doDecode
        does for both directions.
        """
        harness, _ = self.make(emitDynamicMetadata=True)
        harness.receive(f.opInsert("d.e", [{}]))
        metadata = harness.connection.streamInfo.dynamicMetadata
        self.assertEqual(metadata[METADATA_NAMESPACE], {"d.e": ["insert"]})
        harness.connection.write(f.opReply([], responseTo=4))
        self.assertEqual(metadata[METADATA_NAMESPACE], {})

    def test_legacyFindCommand(self) -> None:
        """
        A find command in an OP_QUERY on $cmd counts as a query on the
        collection it names (type from filter, callsite from comment, no max
        time), and its reply goes to that collection's stats, as in Envoy.
        """
        harness, _ = self.make()
        harness.receive(
            f.opQuery("app.$cmd", {"find": "users", "filter": {"_id": {"$in": [1, 2]}},
                                   "comment": '{"callingFunction": "fn"}', "maxTimeMS": 100},
                      flags=2)
            + f.opQuery("app.$cmd", {"$query": {"find": "items"},
                                     "$readPreference": {"mode": "primary"}}, requestId=2))
        harness.connection.write(f.opReply([{"a": 1}], requestId=10, responseTo=1)
                                 + f.opReply([], requestId=11, responseTo=2))
        reply = ("reply_num_docs", "reply_size", "reply_time_ms")
        expected = {
            "op_query": 2, "op_query_tailable_cursor": 1, "op_query_no_max_time": 2,
            "op_query_multi_get": 1, "op_query_scatter_get": 1, "op_reply": 2,
            "collection.users.query.total": 1, "collection.users.query.multi_get": 1,
            "collection.users.callsite.fn.query.total": 1,
            "collection.users.callsite.fn.query.multi_get": 1,
            "collection.items.query.total": 1, "collection.items.query.scatter_get": 1,
        }
        for scope in ("collection.users.query", "collection.users.callsite.fn.query",
                      "collection.items.query"):
            expected.update({f"{scope}.{name}": 1 for name in reply})
        self.assertEqual(self.nonzero(), expected)

    def test_commandAliases(self) -> None:
        """
        Envoy's aliases (ismaster is isMaster...) apply before the commands
        lookup, for OP_QUERY and OP_MSG; "$cmd" anywhere in the name makes
        a command.
        """
        harness, _ = self.make(commands=("isMaster", "collStats", "dbStats", "findAndModify",
                                         "getLastError"))
        queries = [{"ismaster": 1}, {"collstats": "c"}, {"dbstats": 1}, {"findandmodify": "c"},
                   {"getlasterror": 1}, {"isMaster": 1}]
        harness.receive(b"".join(f.opQuery("admin.$cmd", q, requestId=i)
                                 for i, q in enumerate(queries))
                        + f.opQuery("admin.$cmd.x", {"getlasterror": 1}, requestId=8)
                        + f.opMsg({"ismaster": 1, "$db": "admin"}, requestId=9))
        self.assertEqual(
            {k: v for k, v in self.nonzero().items() if k.startswith("cmd.")},
            {"cmd.isMaster.total": 3, "cmd.collStats.total": 1, "cmd.dbStats.total": 1,
             "cmd.findAndModify.total": 1, "cmd.getLastError.total": 2})
        harness, _ = self.make(commands=("ismaster",))
        harness.receive(f.opQuery("admin.$cmd", {"ismaster": 1}))
        self.assertEqual(self.stat("cmd.unknown_command.total"), 1)

    def test_maxTime(self) -> None:
        """
        op_query_no_max_time as Envoy's parseMaxTime: $maxTimeMS, else
        maxTimeMS, only Int32/Int64 (cut to 32 bits), and below 1.
        """
        from bson.int64 import Int64

        harness, _ = self.make()
        queries = [
            {"maxTimeMS": 5},  # counted as a max time
            {"$maxTimeMS": 5.0},  # a double: none
            {"$maxTimeMS": Int64(5)},
            {"$maxTimeMS": 0},  # none
            {"$maxTimeMS": "5", "maxTimeMS": 5},  # $maxTimeMS wins: none
            {"$maxTimeMS": Int64(1 << 32)},  # cut to 0: none
        ]
        harness.receive(b"".join(f.opQuery("app.c", q, requestId=i)
                                 for i, q in enumerate(queries))
                        + f.opMsg({"find": "c", "maxTimeMS": 0, "$db": "app"}, requestId=9))
        self.assertEqual(self.stat("op_query_no_max_time"), 5)

    def test_queryTypeTopLevelFirst(self) -> None:
        """
        A top-level _id decides the query type before $query, as Envoy's
        parseType.
        """
        harness, _ = self.make()
        harness.receive(f.opQuery("app.c", {"_id": 1, "$query": {"a": 1}})
                        + f.opQuery("app.c", {"$query": {"_id": {"$in": [1]}}}, requestId=2))
        self.assertEqual((self.stat("op_query_scatter_get"), self.stat("op_query_multi_get")),
                         (0, 1))

    def test_commandReplyDelay(self) -> None:
        """
        An OP_COMMANDREPLY may inject the delay (Envoy's decodeCommandReply):
        the client's next bytes wait for it.
        """
        harness, sink = self.make(delaySeconds=1.0, delayPercent=(100, 100))
        harness.connection.write(f.opCommandReply({}, {"ok": 1.0}))
        self.assertEqual(self.stat("delays_injected"), 1)
        request = f.opMsg({"ping": 1, "$db": "admin"})
        harness.receive(request)
        self.assertEqual(sink.received, b"")
        harness.reactor.advance(1.0)
        self.assertEqual(sink.received, request)

    def logLines(self, path: str) -> list[bytes]:
        with open(path, "rb") as log:
            return log.read().split(b"\n")[:-1]

    def test_accessLogBsonValues(self) -> None:
        """
        Documents are written as Envoy's bson_impl.cc toString writes them:
        ObjectId as hex, doubles as %f, datetime/timestamp/int64 as
        integers, arrays as documents, binary as its bytes, regex as a pair,
        only CR/LF/tab/quote escaped.
        """
        import datetime

        from bson import Binary, Int64, ObjectId, Regex, Timestamp

        path = self.mktemp()
        harness, _ = self.make(accessLog=path)
        query = f.withElements(bson.encode({
            "_id": ObjectId("5f0c1a2b3c4d5e6f70819203"), "d": 1.5, "neg": -2.25,
            "s": 'a"b\nc\\d\te', "doc": {"n": {"x": 1}}, "arr": [1, "two", [True]],
            "bin": Binary(b'\x01ab"', 0), "t": True, "f": False,
            "when": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
            "none": None, "re": Regex("^a.*", "i"), "i": 7, "ts": Timestamp(5, 3),
            "l": Int64(9)}), b"\x0esym\x00\x04\x00\x00\x00xyz\x00")
        harness.receive(f.opQuery("app.users", query, fields={"a": 1}))
        text = (b'{"_id": "5f0c1a2b3c4d5e6f70819203", "d": 1.500000, "neg": -2.250000, '
                b'"s": "a\\"b\\nc\\d\\te", "doc": {"n": {"x": 1}}, '
                b'"arr": {"0": 1, "1": "two", "2": {"0": true}}, "bin": "\x01ab\\"", '
                b'"t": true, "f": false, "when": 1577836800000, "none": null, '
                b'"re": ["^a.*", "i"], "i": 7, "ts": 21474836483, "l": 9, "sym": "xyz"}')
        self.assertEqual(self.logLines(path), [
            b'{"time": "1970-01-01T00:00:00.000Z", "message": {"opcode": "OP_QUERY", "id": 1, '
            b'"response_to": 0, "flags": "0x0", "collection": "app.users", "skip": 0, '
            b'"return": 0, "query": ' + text + b', "fields": {"a": 1}}, "upstream_host": "-"}'])

    def test_accessLogTypesEnvoyLacks(self) -> None:
        """
        BSON types Envoy's decoder does not know are written as extended
        JSON objects.
        """
        from bson import Code, Decimal128, MaxKey, MinKey

        path = self.mktemp()
        harness, _ = self.make(accessLog=path)
        harness.receive(f.opInsert("app.c", [{
            "dec": Decimal128("1.5"), "min": MinKey(), "max": MaxKey(), "code": Code("f()"),
            "scoped": Code("g()", {"a": 1})}]))
        self.assertIn(b'"documents": [{"dec": {"$numberDecimal": "1.5"}, '
                      b'"min": {"$minKey": 1}, "max": {"$maxKey": 1}, '
                      b'"code": {"$code": "f()"}, '
                      b'"scoped": {"$code": "g()", "$scope": {"a": 1}}}]}',
                      self.logLines(path)[0])

    def test_accessLogLegacyOpcodes(self) -> None:
        """
        Each legacy opcode's line has Envoy's keys, value types and formats
        (KILL_CURSORS, its hex response_to and string count; OP_REPLY's
        document count; OP_COMMANDREPLY in full with its own spacing), and
        an IPv6 upstream host in brackets.
        """
        path = self.mktemp()
        harness, _ = self.make(accessLog=path)
        harness.connection.streamInfo.upstreamHost = ("0:0::1", 27017)
        harness.receive(f.opGetMore("app.users", 9, ret=5)
                        + f.opInsert("app.users", [{"x": 1}, {"y": 2.0}])
                        + f.opKillCursors([9, 10])
                        + f.opCommand("app", "ping", {}, {"ping": 1}, ({"d": 1},)))
        harness.connection.write(f.opReply([{"a": 1}], cursorId=9, flags=8, responseTo=1)
                                 + f.opCommandReply({}, {"ok": 1.0}, ({"o": 1},)))
        messages = [
            b'{"opcode": "OP_GET_MORE", "id": 3, "response_to": 0, "collection": "app.users", '
            b'"return": 5, "cursor": 9}',
            b'{"opcode": "OP_INSERT", "id": 4, "response_to": 0, "flags": "0x0", '
            b'"collection": "app.users", "documents": [{"x": 1}, {"y": 2.000000}]}',
            b'{"opcode": "KILL_CURSORS", "id": 7, "response_to": "0x0", "num_cursors": "2", '
            b'"cursors": [9, 10]}',
            b'{"opcode": "OP_COMMAND", "id": 8, "response_to": 0, "database": "app", '
            b'"commandName": "ping", "metadata": {}, "commandArgs": {"ping": 1}, '
            b'"inputDocs": [{"d": 1}]}',
            b'{"opcode": "OP_REPLY", "id": 2, "response_to": 1, "flags": "0x8", "cursor": "9", '
            b'"from": 0, "returned": 1, "documents": 1}',
            b'{"opcode": "OP_COMMANDREPLY", "id": 9, "response_to": 8, "metadata": {}, '
            b'"commandReply": {"ok": 1.000000}, "outputDocs":[{"o": 1}]} ',
        ]
        self.assertEqual(self.logLines(path), [
            b'{"time": "1970-01-01T00:00:00.000Z", "message": ' + m
            + b', "upstream_host": "[::1]:27017"}' for m in messages])


class ConfigTests(SynchronousTestCase):
    """
    Parsing MongoProxy.
    """

    def test_parse(self) -> None:
        """
        delay, percentage and commands are read; header_delay is refused.
        """
        from pyenvoy.config.reader import Problems, Section

        problems = Problems()
        cfg = factory.parseConfig(Section({
            "stat_prefix": "m", "delay": {"fixed_delay": "0.5s",
                                          "percentage": {"numerator": 10}},
            "commands": ["find"]}, "typed_config", problems), None)
        self.assertEqual((cfg.delaySeconds, cfg.delayPercent, cfg.commands),
                         (0.5, (10, 100), ("find",)))
        self.assertEqual(problems.errors, [])
        factory.parseConfig(Section({"stat_prefix": "m", "delay": {"header_delay": {}}},
                                    "typed_config", problems), None)
        self.assertTrue(any("not supported" in str(e) for e in problems.errors))

    def test_emptyCommandsKeepsDefault(self) -> None:
        """
        commands: [] keeps the default delete, insert, update, as Envoy
        (commands_size() > 0) does.
        """
        from pyenvoy.config.reader import Problems, Section

        problems = Problems()
        cfg = factory.parseConfig(Section({"stat_prefix": "m", "commands": []},
                                          "typed_config", problems), None)
        self.assertEqual((cfg.commands, problems.errors), (("delete", "insert", "update"), []))


class PymongoIntegrationTests(TestCase):
    """
    pymongo 4 → pyenvoy (mongo_proxy + tcp_proxy) → nx-27017.
    """

    timeout = 60

    async def test_crud(self) -> None:
        """
        insert_many, find with getMore, update, delete, aggregate and an error
        give exactly these stats.
        """
        mongoPort = await startMongo(self)
        server = startServer(self, mongoProxyConfig(
            mongoPort, "it", ["insert", "find", "getMore", "update", "delete", "aggregate"]))
        port = listenerPort(server)

        def client() -> dict:
            import pymongo
            from pymongo.errors import DuplicateKeyError

            c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                    serverSelectionTimeoutMS=5000, heartbeatFrequencyMS=60000)
            try:
                db = c.app
                db.users.insert_many([{"_id": i, "n": i} for i in range(10)])
                found = list(db.users.find({}, batch_size=3))
                db.users.update_one({"_id": 1}, {"$set": {"n": 100}})
                db.users.delete_one({"_id": 2})
                agg = list(db.users.aggregate([{"$match": {"n": {"$gte": 5}}}]))
                try:
                    db.users.insert_one({"_id": 0})
                    error = False
                except DuplicateKeyError:
                    error = True
                return {"found": len(found), "agg": len(agg), "error": error}
            finally:
                c.close()

        result = await threads.deferToThread(client)
        self.assertEqual(result, {"found": 10, "agg": 6, "error": True})
        s = lambda name: stat(server, f"mongo.it.{name}")  # noqa: E731
        self.assertEqual(s("decoding_error"), 0)
        self.assertEqual(s("cmd.insert.total"), 2)
        self.assertEqual(s("cmd.find.total"), 1)
        self.assertEqual(s("cmd.getMore.total"), 3)
        self.assertEqual(s("cmd.update.total"), 1)
        self.assertEqual(s("cmd.delete.total"), 1)
        self.assertEqual(s("cmd.aggregate.total"), 1)
        self.assertEqual(s("collection.users.query.total"), 1)
        self.assertEqual(s("collection.users.query.scatter_get"), 1)
        self.assertEqual(s("op_msg_reply_write_errors"), 1)
        self.assertEqual(s("op_msg_reply_valid_cursor"), 3)
        self.assertEqual(s("op_msg"), s("op_msg_reply"))
        self.assertEqual(s("op_query_scatter_get"), 1)
        self.assertEqual(s("op_query_no_max_time"), 1)
        self.assertEqual(s("op_query_active"), 0)
        for name in ("insert", "find", "getMore", "update", "delete", "aggregate"):
            self.assertEqual(server.context.store.get(f"mongo.it.cmd.{name}.reply_time_ms").count,
                             s(f"cmd.{name}.total"))
        numDocs = server.context.store.get("mongo.it.cmd.find.reply_num_docs")
        self.assertEqual((numDocs.count, numDocs.sum), (1, 3))

    async def test_killCursors(self) -> None:
        """
        A cursor closed before it is exhausted makes the driver send
        killCursors, counted as cmd.killCursors.
        """
        mongoPort = await startMongo(self)
        server = startServer(self, mongoProxyConfig(
            mongoPort, "kc", ["insert", "find", "getMore", "killCursors"]))
        port = listenerPort(server)

        def client() -> int:
            import pymongo

            c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                    serverSelectionTimeoutMS=5000, heartbeatFrequencyMS=60000)
            try:
                coll = c.app.items
                coll.insert_many([{"_id": i} for i in range(10)])
                cursor = coll.find({}, batch_size=2)
                first = [next(cursor), next(cursor), next(cursor)]
                cursor.close()
                return len(first)
            finally:
                c.close()

        self.assertEqual(await threads.deferToThread(client), 3)
        s = lambda name: stat(server, f"mongo.kc.{name}")  # noqa: E731
        self.assertEqual(s("decoding_error"), 0)
        self.assertEqual((s("cmd.find.total"), s("cmd.getMore.total")), (1, 1))
        self.assertEqual(s("cmd.killCursors.total"), 1)
        self.assertEqual(server.context.store.get("mongo.kc.cmd.killCursors.reply_time_ms").count,
                         1)
        self.assertEqual(s("op_msg"), s("op_msg_reply"))
        self.assertEqual(s("op_query_active"), 0)
