"""
The MongoDB wire decoder: every opcode, any split, several per chunk,
compression, and garbage that must end in DecodeError only.
"""

from __future__ import annotations

import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pyenvoy.filters.mongo_proxy import codec
from pyenvoy.filters.mongo_proxy.codec import DecodeError, Decoder
from tests import mongo_frames as f


def _samples() -> list[bytes]:
    return [
        f.opMsg({"insert": "users", "ordered": True, "$db": "app"},
                {"documents": [{"_id": 1}, {"_id": 2}]}, requestId=10),
        f.opMsg({"cursor": {"id": 77, "ns": "app.users", "firstBatch": [{"a": 1}] * 3},
                 "ok": 1.0}, responseTo=10, requestId=11, checksum=True),
        f.opQuery("app.users", {"_id": 5}, flags=2, fields={"a": 1}),
        f.opQuery("admin.$cmd", {"ismaster": 1}),
        f.opReply([{"a": 1}, {"b": 2}], cursorId=9),
        f.opGetMore("app.users", 9, ret=5),
        f.opInsert("app.users", [{"x": 1}, {"x": 2}]),
        f.opUpdate("app.users", {"x": 1}, {"$set": {"y": 2}}),
        f.opDelete("app.users", {"x": 1}),
        f.opKillCursors([9, 10]),
    ]


class OpcodeTests(SynchronousTestCase):
    """
    Each opcode decodes into the fields the filter uses.
    """

    def decodeOne(self, data: bytes) -> codec.Message:
        messages = Decoder().feed(data)
        self.assertEqual(len(messages), 1)
        return messages[0]

    def test_opMsgBodyAndSequence(self) -> None:
        """
        OP_MSG: command, database, collection and a kind-1 sequence.
        """
        m = self.decodeOne(_samples()[0])
        self.assertEqual((m.opCode, m.command, m.database, m.collection),
                         (2013, "insert", "app", "users"))
        self.assertEqual(len(m.sequences["documents"]), 2)
        self.assertFalse(m.moreToCome)

    def test_opMsgReplyWithChecksum(self) -> None:
        """
        OP_MSG reply: cursor id and batch size; the checksum is read.
        """
        m = self.decodeOne(_samples()[1])
        self.assertEqual((m.cursorId, m.batchSize, m.checksum, m.responseTo), (77, 3, 0, 10))

    def test_opMsgFlags(self) -> None:
        """
        moreToCome and exhaustAllowed are accepted; unknown required bits are not.
        """
        m = self.decodeOne(f.opMsg({"ping": 1}, flags=2 | (1 << 16)))
        self.assertTrue(m.moreToCome)
        self.assertRaises(DecodeError, Decoder().feed, f.opMsg({"ping": 1}, flags=4))

    def test_opQuery(self) -> None:
        """
        OP_QUERY: flags, collection, query and fields; $cmd gives the command.
        """
        m = self.decodeOne(_samples()[2])
        self.assertEqual((m.flags, m.fullCollectionName, m.collection), (2, "app.users", "users"))
        self.assertEqual(m.fields["a"], 1)
        self.assertIsNone(m.command)
        self.assertEqual(self.decodeOne(_samples()[3]).command, "ismaster")

    def test_legacy(self) -> None:
        """
        OP_REPLY, OP_GET_MORE, OP_INSERT, OP_UPDATE, OP_DELETE, OP_KILL_CURSORS.
        """
        s = _samples()
        reply = self.decodeOne(s[4])
        self.assertEqual((reply.cursorId, reply.numberReturned, len(reply.documents)), (9, 2, 2))
        more = self.decodeOne(s[5])
        self.assertEqual((more.cursorId, more.numberToReturn, more.collection), (9, 5, "users"))
        self.assertEqual(len(self.decodeOne(s[6]).documents), 2)
        self.assertEqual(self.decodeOne(s[7]).opCode, codec.OP_UPDATE)
        self.assertEqual(self.decodeOne(s[8]).body["x"], 1)
        self.assertEqual(self.decodeOne(s[9]).cursorIds, [9, 10])

    def test_unknownOpcode(self) -> None:
        """
        An unknown opcode is a decoding error, as in Envoy.
        """
        self.assertRaises(DecodeError, Decoder().feed, f.frame(9999, b"x"))


class FramingTests(SynchronousTestCase):
    """
    Messages come out whole and in order whatever the chunking.
    """

    def test_everySplit(self) -> None:
        """
        A stream of every sample split at every offset gives the same messages.
        """
        stream = b"".join(_samples())
        want = [m.opCode for m in Decoder().feed(stream)]
        self.assertEqual(len(want), 10)
        for cut in range(1, len(stream)):
            d = Decoder()
            got = d.feed(stream[:cut]) + d.feed(stream[cut:])
            self.assertEqual([m.opCode for m in got], want)
            self.assertEqual(d.buffered, 0)

    def test_byteAtATime(self) -> None:
        """
        One byte per feed still works.
        """
        stream = b"".join(_samples())
        d = Decoder()
        got = []
        for i in range(len(stream)):
            got += d.feed(stream[i:i + 1])
        self.assertEqual(len(got), 10)

    def test_inPlaceSameAsBuffered(self) -> None:
        """
        A read of whole messages (decoded in place) and the same bytes fed
        one at a time (through the buffer) give equal messages, every field
        and document included.
        """
        stream = b"".join(_samples())
        whole = Decoder().feed(stream)
        d = Decoder()
        pieces = []
        for i in range(len(stream)):
            pieces += d.feed(stream[i:i + 1])
        self.assertEqual(whole, pieces)
        self.assertEqual(Decoder().feed(bytearray(stream)), whole)

    def test_oversize(self) -> None:
        """
        A declared length over 48 MiB fails at once, without waiting for it.
        """
        self.assertRaises(DecodeError, Decoder().feed,
                          struct.pack("<i", 48 * 1024 * 1024 + 1))
        self.assertRaises(DecodeError, Decoder().feed, struct.pack("<i", 5))

    def test_malformed(self) -> None:
        """
        Truncated BSON and bad section kinds raise DecodeError.
        """
        good = f.opMsg({"ping": 1})
        bad = bytearray(good)
        bad[20] = 7  # section kind
        self.assertRaises(DecodeError, Decoder().feed, bytes(bad))
        bad = bytearray(good)
        bad[21] = 0xFF  # BSON length
        self.assertRaises(DecodeError, Decoder().feed, bytes(bad))


class CompressionTests(SynchronousTestCase):
    """
    OP_COMPRESSED with each compressor.
    """

    def check(self, compressorId: int, compress) -> None:
        inner = f.opMsg({"find": "users", "$db": "app"}, requestId=42)
        m = Decoder().feed(f.compressed(inner, compressorId, compress))[0]
        self.assertEqual((m.opCode, m.command, m.requestId), (2013, "find", 42))
        self.assertEqual(m.compressor, codec.COMPRESSOR_NAMES[compressorId])

    def test_zlib(self) -> None:
        """
        zlib (stdlib).
        """
        import zlib
        self.check(2, zlib.compress)

    def test_snappy(self) -> None:
        """
        snappy (python-snappy).
        """
        import snappy
        self.check(1, snappy.compress)

    def test_zstd(self) -> None:
        """
        zstd (zstandard).
        """
        import zstandard
        self.check(3, zstandard.ZstdCompressor().compress)

    def test_noop(self) -> None:
        """
        Compressor 0 (noop) passes the bytes as they are.
        """
        self.check(0, lambda b: b)

    def test_missingLibrary(self) -> None:
        """
        Without the library the message is reported as unsupported, not an error.
        """
        import snappy
        d = Decoder()
        d._decompressors[1] = None
        m = d.feed(f.compressed(f.opMsg({"ping": 1}), 1, snappy.compress))[0]
        self.assertTrue(m.unsupportedCompressor)
        self.assertEqual(m.originalOpCode, 2013)

    def test_sizeLie(self) -> None:
        """
        An uncompressedSize that does not match is a DecodeError.
        """
        import zlib
        data = bytearray(f.compressed(f.opMsg({"ping": 1})))
        struct.pack_into("<i", data, 20, 3)
        self.assertRaises(DecodeError, Decoder().feed, bytes(data))


class FuzzTests(SynchronousTestCase):
    """
    Garbage never raises anything but DecodeError, and never takes long.
    """

    def feedAll(self, chunks: list[bytes]) -> None:
        start = time.monotonic()
        d = Decoder()
        try:
            for chunk in chunks:
                d.feed(chunk)
        except DecodeError:
            pass
        self.assertLess(time.monotonic() - start, 2.0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=200), max_size=5))
    def test_randomBytes(self, chunks: list[bytes]) -> None:
        """
        Random bytes in random chunks.
        """
        self.feedAll(chunks)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_samples() + [f.compressed(_samples()[0])]),
           st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
           st.integers(0, 10_000))
    def test_mutatedFrames(self, sample: bytes, flips: list, cut: int) -> None:
        """
        Valid frames with bytes changed, split anywhere.
        """
        data = bytearray(sample)
        for pos, value in flips:
            data[pos % len(data)] = value
        cut %= len(data)
        self.feedAll([bytes(data[:cut]), bytes(data[cut:])])
