"""
Fuzzing the PostgreSQL codec and filter with hypothesis: random bytes and
mutated valid streams, split at random points, in both directions.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import pyenvoy.filters.postgres_proxy as postgres_proxy
from pyenvoy.filters.postgres_proxy import (
    PostgresProxyConfig, PostgresProxyFilter, PythonPostgresProxyFilter, factory)
from pyenvoy.filters.postgres_proxy.codec import (
    MAX_STARTUP_PACKET_LENGTH, Decoder, MalformedMessage, Message)
from pyenvoy.stats import Store
from pyenvoy.testing import FilterHarness
from tests.test_mongo_proxy import Sink
from tests.test_postgres_codec import (
    BACKEND_EXPECTED, BACKEND_STREAM, FRONTEND_EXPECTED, FRONTEND_STREAM, backend, frontend,
    startup)

#: Bounded examples: the whole module runs in seconds.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: A small message limit, so random lengths hit it too.
MAX_LENGTH = 1 << 16
ONLY = (None, frozenset("QPX"), frozenset("CENR"))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the offsets C{cuts} (taken modulo its length).
    """
    if not data:
        return [data]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def feedAll(decoder: Decoder, chunks: list[bytes]) -> list[Any]:
    """
    Feed C{chunks} in order, checking after each that the decoder keeps no
    more than one message's worth of bytes; return all it produced.
    """
    out: list[Any] = []
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        out += decoder.feed(chunk)
        held = len(decoder._buffer)
        assert held <= fed, (held, fed)
        assert held <= max(MAX_STARTUP_PACKET_LENGTH, decoder.maxLength + 1), held
    return out


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """
    Apply C{edits}: (kind, offset, value) with kind 0 overwrite a byte,
    1 insert one, 2 delete one.
    """
    buf = bytearray(data)
    for kind, offset, value in edits:
        if not buf:
            buf.append(value)
            continue
        i = offset % len(buf)
        if kind == 0:
            buf[i] = value
        elif kind == 1:
            buf.insert(i, value)
        else:
            del buf[i]
    return bytes(buf)


cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)
edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=6)


class DecoderFuzzTests(SynchronousTestCase):
    """
    The decoder never raises, never grows without bound, and its output
    does not depend on how the bytes are split.
    """

    @FUZZ
    @given(st.booleans(), st.sampled_from(ONLY), st.binary(max_size=4096), cuts)
    def test_randomBytes(self, front: bool, only: Any, data: bytes, where: list[int]) -> None:
        """Random bytes in pieces: messages, at most one final Malformed, as fed whole."""
        got = feedAll(Decoder(front, MAX_LENGTH, only), pieces(data, where))
        whole = Decoder(front, MAX_LENGTH, only).feed(data)
        self.assertEqual(got, whole)
        for message in got[:-1]:
            self.assertIsInstance(message, Message)

    @FUZZ
    @given(st.booleans(), edits, cuts)
    def test_mutatedStreams(self, front: bool, changes: list[tuple[int, int, int]],
                            where: list[int]) -> None:
        """A mutated valid stream in pieces decodes as fed whole, malformed point last."""
        data = mutate(FRONTEND_STREAM if front else BACKEND_STREAM, changes)
        got = feedAll(Decoder(front, MAX_LENGTH), pieces(data, where))
        self.assertEqual(got, Decoder(front, MAX_LENGTH).feed(data))
        malformed = [m for m in got if isinstance(m, MalformedMessage)]
        self.assertLessEqual(len(malformed), 1)
        if malformed:
            self.assertIs(got[-1], malformed[0])

    @FUZZ
    @given(st.booleans(), cuts)
    def test_validStreamsAnySplit(self, front: bool, where: list[int]) -> None:
        """The valid reference streams decode to the expected messages however they are split."""
        data, expected = ((FRONTEND_STREAM, FRONTEND_EXPECTED) if front
                          else (BACKEND_STREAM, BACKEND_EXPECTED))
        self.assertEqual(feedAll(Decoder(front), pieces(data, where)), expected)

    @FUZZ
    @given(st.booleans(), cuts)
    def test_onlyCountsTheRest(self, front: bool, where: list[int]) -> None:
        """With only: returned plus counted are all the stream's messages, any split."""
        data, expected = ((FRONTEND_STREAM, FRONTEND_EXPECTED) if front
                          else (BACKEND_STREAM, BACKEND_EXPECTED))
        only = frozenset("QPX") if front else frozenset("CENR")
        decoder = Decoder(front, only=only)
        got = feedAll(decoder, pieces(data, where))
        kept = [m for m in expected
                if m.type == "" or m.type in only or m.name == "Unknown"]
        self.assertEqual(got, kept)
        self.assertEqual(decoder.counted, len(expected) - len(kept))


class FilterFuzzTests(SynchronousTestCase):
    """
    The filter passes every byte through untouched, whatever arrives.
    """

    @FUZZ
    @given(st.binary(max_size=2048), st.binary(max_size=2048), cuts, cuts, edits)
    def test_bytesUntouched(self, client: bytes, server: bytes, clientCuts: list[int],
                            serverCuts: list[int], changes: list[tuple[int, int, int]]) -> None:
        """Whatever arrives in whatever pieces, both directions pass through byte for byte."""
        store = Store()
        harness = FilterHarness([])
        makeFilter = factory.createFilterFactory(
            PostgresProxyConfig("f"), SimpleNamespace(store=store, reactor=harness.reactor))
        sink = Sink()
        h = FilterHarness([makeFilter(), sink], reactor=harness.reactor)
        clientBytes = mutate(FRONTEND_STREAM, changes) + client
        serverBytes = BACKEND_STREAM + server
        for piece in pieces(clientBytes, clientCuts):
            if piece:
                h.receive(piece)
        sent = b""
        for piece in pieces(serverBytes, serverCuts):
            if piece:
                h.connection.write(piece)
                sent += piece
        self.assertEqual(sink.received, clientBytes)
        self.assertEqual(h.written(), sent)


def _tpcb(aid: int, delta: int) -> list[tuple[bytes, bytes]]:
    """
    One pgbench TPC-B transaction, simple protocol: (query, reply) pairs.
    """
    done = [(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
             b"UPDATE 1"),
            (f"INSERT INTO pgbench_history (tid, aid, delta) VALUES (1, {aid}, {delta});",
             b"INSERT 0 1")]
    row = (backend("T", b"\0\x01abalance\0" + b"\0" * 18) + backend("D", b"\0\x01\0\0\0\x011")
           + backend("C", b"SELECT 1\0") + backend("Z", b"T"))
    return ([(frontend("Q", b"BEGIN;\0"), backend("C", b"BEGIN\0") + backend("Z", b"T"))]
            + [(frontend("Q", sql.encode() + b"\0"), backend("C", tag + b"\0") + backend("Z", b"T"))
               for sql, tag in done]
            + [(frontend("Q", f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};".encode()
                         + b"\0"), row),
               (frontend("Q", b"END;\0"), backend("C", b"COMMIT\0") + backend("Z", b"I"))])


#: A session as pgbench and psql would have it: (client bytes, server bytes)
#: in turns.
SESSION = (
    [(startup({"user": "u", "database": "db"}),
      backend("R", b"\0\0\0\0") + backend("S", b"a\0b\0") + backend("K", b"\0" * 8)
      + backend("Z", b"I"))]
    + _tpcb(7, -12) + _tpcb(123456, 4000)
    + [(frontend("P", b"s\0SELECT * FROM t WHERE a = $1\0\0\0") + frontend("B", b"\0s\0" + b"\0" * 6)
        + frontend("E", b"\0\0\0\0\0") + frontend("S", b""),
        backend("1", b"") + backend("2", b"") + backend("D", b"\0\x01\0\0\0\x012") * 3
        + backend("C", b"SELECT 3\0") + backend("Z", b"I")),
       (frontend("Q", b"BEGIN\0") + frontend("Q", b"SELEKT\0"),
        backend("C", b"BEGIN\0") + backend("Z", b"T")
        + backend("E", b"SERROR\0VERROR\0C42601\0Msyntax\0\0") + backend("Z", b"E")),
       (frontend("Q", b"COPY t FROM STDIN\0") + frontend("d", b"1\n" * 50) + frontend("c", b""),
        backend("G", b"\0\0\x01\0\0") + backend("N", b"SNOTICE\0VNOTICE\0Mhm\0\0")
        + backend("C", b"COPY 50\0") + backend("Z", b"E")),
       (frontend("X", b""), b"")])


class ScanFuzzTests(SynchronousTestCase):
    """
    The filter's own scan of whole messages (in C and in Python) and its
    decoder count alike.
    """

    def replay(self, filterClass: type, scanning: bool,
               turns: list[tuple[list[bytes], list[bytes]]]) -> Any:
        """
        Each turn's client pieces, then its server pieces, through a
        C{filterClass} filter with its scan on or off; the counters, the
        metadata and the bytes that went through.
        """
        self.patch(postgres_proxy, "PostgresProxyFilter", filterClass)
        store = Store()
        harness = FilterHarness([])
        makeFilter = factory.createFilterFactory(
            PostgresProxyConfig("s"), SimpleNamespace(store=store, reactor=harness.reactor))
        proxy = makeFilter()
        proxy.scanning = scanning
        sink = Sink()
        h = FilterHarness([proxy, sink], reactor=harness.reactor)
        for client, server in turns:
            for piece in client:
                h.receive(piece)
            for piece in server:
                h.connection.write(piece)
        counters = {s.name: s.value for s in store if s.value}
        return counters, h.connection.streamInfo.dynamicMetadata, sink.received, h.written()

    @FUZZ
    @given(cuts, cuts, st.lists(edits, max_size=1), st.booleans())
    def test_scanAgreesWithDecoder(self, clientCuts: list[int], serverCuts: list[int],
                                   changes: list[Any], toServer: bool) -> None:
        """
        A session, maybe mutated, in any pieces: scanned in C, scanned in
        Python or decoded, the same counts.
        """
        client = [c for c, _ in SESSION]
        server = [s for _, s in SESSION]
        if changes:
            # One turn mutated: the decoder may lose sync there.
            side = server if toServer else client
            i = changes[0][0][1] % len(side)
            side[i] = mutate(side[i], changes[0])
        turns = [([p for p in pieces(c, clientCuts) if p], [p for p in pieces(s, serverCuts) if p])
                 for c, s in zip(client, server)]
        decoded = self.replay(PythonPostgresProxyFilter, False, turns)
        for filterClass in {PostgresProxyFilter, PythonPostgresProxyFilter}:
            self.assertEqual(self.replay(filterClass, True, turns), decoded, filterClass)
        self.assertEqual(decoded[2:], (b"".join(client), b"".join(server)))
        if not changes:
            self.assertEqual(decoded[0]["postgres.s.transactions_commit"], 3)
