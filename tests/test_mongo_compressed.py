"""
OP_COMPRESSED end to end: pymongo with compressors through pyenvoy
(mongo_proxy + tcp_proxy) to a shim that adds compression to nx-27017.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.mongo import mongoProxyConfig, startMongo, startShim
from tests.support.net import listenerPort, startServer, stat

COMMANDS = ["insert", "find", "getMore", "endSessions"]


def _pymongoHas(compressor: str) -> None:
    """
    Skip unless pymongo and the shim can both use C{compressor}.
    """
    from pymongo import compression_support as cs

    have = {"zlib": cs._have_zlib, "snappy": cs._have_snappy, "zstd": cs._have_zstd}[compressor]
    if not have():
        raise SkipTest(f"pymongo cannot use {compressor} here")
    module = {"zlib": "zlib", "snappy": "snappy", "zstd": "zstandard"}[compressor]
    try:
        __import__(module)
    except ImportError:
        raise SkipTest(f"{module} is not installed") from None


class CompressedTests(TestCase):
    """
    pymongo (compressors=...) → pyenvoy → compression shim → nx-27017.
    """

    timeout = 60

    async def roundTrip(self, compressor: str) -> None:
        _pymongoHas(compressor)
        mongoPort = await startMongo(self)
        shimPort, shims = startShim(self, mongoPort, compressor)
        server = startServer(self, mongoProxyConfig(shimPort, "z", COMMANDS))
        port = listenerPort(server)

        def client() -> dict[str, Any]:
            import pymongo

            c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", compressors=compressor,
                                    directConnection=True, serverSelectionTimeoutMS=5000,
                                    heartbeatFrequencyMS=60000)
            try:
                db = c.app
                db.things.insert_one({"_id": 0, "s": "x" * 2000})
                db.things.insert_many([{"_id": i, "s": "y" * 100} for i in range(1, 6)])
                found = list(db.things.find({}, batch_size=2))
                one = db.things.find_one({"_id": 0})
                return {"found": len(found), "one": len(one["s"])}
            finally:
                c.close()

        result = await threads.deferToThread(client)
        self.assertEqual(result, {"found": 6, "one": 2000})
        s = lambda name: stat(server, f"mongo.z.{name}")  # noqa: E731
        # The monitor's and the pool's connection each open with an
        # uncompressed hello; the pool's then carries 7 compressed requests
        # (2 insert, find + 2 getMore, find_one, endSessions) and 7 replies.
        self.assertEqual(sorted((sh.compressedRequests, sh.compressedReplies) for sh in shims),
                         [(0, 0), (7, 7)])
        self.assertEqual(s("decoding_error"), 0)
        self.assertEqual(s("op_compressed"), 14)
        self.assertEqual(s("op_compressed_unsupported"), 0)
        self.assertEqual((s("op_msg"), s("op_msg_reply")), (9, 9))
        self.assertEqual(s("cmd.insert.total"), 2)
        self.assertEqual(s("cmd.find.total"), 2)
        self.assertEqual(s("cmd.getMore.total"), 2)
        self.assertEqual(s("cmd.endSessions.total"), 1)
        self.assertEqual(s("cmd.unknown_command.total"), 2)
        self.assertEqual(s("op_msg_reply_valid_cursor"), 2)
        self.assertEqual(s("collection.things.query.total"), 2)
        self.assertEqual(s("collection.things.query.scatter_get"), 1)
        self.assertEqual(s("op_query_active"), 0)
        for name in ("insert", "find", "getMore", "endSessions"):
            self.assertEqual(
                server.context.store.get(f"mongo.z.cmd.{name}.reply_time_ms").count,
                s(f"cmd.{name}.total"))
        numDocs = server.context.store.get("mongo.z.cmd.find.reply_num_docs")
        self.assertEqual((numDocs.count, numDocs.sum), (2, 3))

    async def test_zlib(self) -> None:
        """
        zlib: every request after the handshake and its reply are counted
        as op_compressed, and the wrapped OP_MSGs get their cmd stats.
        """
        await self.roundTrip("zlib")

    async def test_snappy(self) -> None:
        """
        snappy, as zlib.
        """
        await self.roundTrip("snappy")

    async def test_zstd(self) -> None:
        """
        zstd, as zlib (pymongo on Python < 3.14 needs C{backports.zstd}).
        """
        await self.roundTrip("zstd")
