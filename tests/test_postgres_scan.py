"""
Tests for L{pyenvoy.filters.postgres_proxy.scan}: the C extension and the
Python functions scan alike, on hand-made cases and on random and mutated
streams.  (That the filter counts the same on either scan and on its
decoder alone is in tests/test_postgres_fuzz.py.)
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import pyenvoy.filters.postgres_proxy as postgres_proxy
from pyenvoy.filters.postgres_proxy import scan
from pyenvoy.filters.postgres_proxy.codec import countRules
from pyenvoy.filters.postgres_proxy.scan import (
    ACT, pythonScanBackend, pythonScanFrontend, scanRules)
from pyenvoy.stats import Counter
from tests.test_postgres_codec import backend, frontend
from tests.test_postgres_fuzz import FUZZ, edits, mutate

try:
    from pyenvoy.filters.postgres_proxy import _scan
except ImportError:  # reported by test_extensionBuilt
    _scan = None  # type: ignore[assignment]

#: (name, scanFrontend, scanBackend) of each implementation there is.
IMPLEMENTATIONS: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
    ("python", pythonScanFrontend, pythonScanBackend)]
if _scan is not None:
    IMPLEMENTATIONS.append(("C", _scan.scanFrontend, _scan.scanBackend))

FRONTEND_RULES = scanRules(countRules(True, frozenset("QPX")))
BACKEND_RULES = scanRules(countRules(False, frozenset("CENR")))
MISSING = object()
LAST = (("t.db", ("select",)),)
OTHER = (("u.db", ("insert",)),)
#: Outlines as the filter's cache holds them: a hit that is the last
#: statement's result, one that is another, one that is a parse error.
OUTLINES = {b"SELECT * FROM t WHERE a = 0": LAST, b"INSERT INTO u VALUES (0)": OTHER,
            b"SELEKT": None}


def query(sql: bytes) -> bytes:
    return frontend("Q", sql + b"\0")


def parse(sql: bytes, name: bytes = b"") -> bytes:
    return frontend("P", name + b"\0" + sql + b"\0\0\0")


def counting() -> tuple[dict[bytes, Any], list[Counter]]:
    """
    A tags table as the filter's: SELECT counted as such outside and
    inside a transaction, BEGIN entering one, COMMIT leaving it.
    """
    statements, select, transactions, commits, other = (
        Counter(n) for n in ("statements", "select", "transactions", "commits", "other"))
    tags = {
        b"SELECT 1": ((statements, select, transactions, commits), (statements, select), None),
        b"BEGIN": ((statements, other, transactions), (statements, other), True),
        b"COMMIT": ((statements, other, commits), (statements, other, commits), False),
    }
    return tags, [statements, select, transactions, commits, other]


class ExtensionTests(SynchronousTestCase):
    """
    The C extension is there and is the one in use.
    """

    def test_extensionBuilt(self) -> None:
        """
        C{make install} (C{pip install -e .}) compiled C{_scan}, and the
        filter uses it.
        """
        self.assertIsNotNone(_scan, "pyenvoy.filters.postgres_proxy._scan was not built "
                             "(is a C compiler installed?)")
        self.assertTrue(scan.ACCELERATED)
        self.assertIs(scan.scanFrontend, _scan.scanFrontend)
        self.assertIs(scan.scanBackend, _scan.scanBackend)
        self.assertTrue(issubclass(postgres_proxy.PostgresProxyFilter, _scan.ScanningFilter))
        self.assertIs(postgres_proxy.PostgresProxyFilter.onData, _scan.ScanningFilter.onData)

    def test_pythonFallback(self) -> None:
        """
        Where the extension cannot be imported, the module falls back to
        its Python functions and class.
        """
        name = "pyenvoy.filters.postgres_proxy._scan"
        extension = sys.modules.get(name)
        hidden = getattr(postgres_proxy, "_scan", None)
        sys.modules[name] = None  # type: ignore[assignment]
        if hidden is not None:
            del postgres_proxy._scan
        try:
            spec = importlib.util.spec_from_file_location("fallback_scan", scan.__file__)
            assert spec is not None and spec.loader is not None
            fallback = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(fallback)
        finally:
            if extension is None:
                del sys.modules[name]
            else:
                sys.modules[name] = extension
            if hidden is not None:
                postgres_proxy._scan = hidden
        self.assertFalse(fallback.ACCELERATED)
        self.assertIs(fallback.scanFrontend, fallback.pythonScanFrontend)
        self.assertIs(fallback.scanBackend, fallback.pythonScanBackend)
        self.assertIs(fallback.ScanningFilter, fallback.PythonScanningFilter)

    def test_badArguments(self) -> None:
        """
        The C functions refuse arguments of the wrong types or a C{pos}
        outside the data, as a TypeError or ValueError, not a crash.
        """
        if _scan is None:
            self.fail("pyenvoy.filters.postgres_proxy._scan was not built")
        data = query(b"SELECT 1")
        for args in [(bytearray(data), 0, FRONTEND_RULES, None, None, None, MISSING),
                     (data, 0, FRONTEND_RULES[:10], None, None, None, MISSING),
                     (data, 0, FRONTEND_RULES, [], None, None, MISSING),
                     (data, 0, FRONTEND_RULES, None, None, [], MISSING),
                     (data, 0, FRONTEND_RULES, None, None, MISSING)]:
            self.assertRaises(TypeError, _scan.scanFrontend, *args)
        for pos in (-1, len(data) + 1):
            self.assertRaises(ValueError, _scan.scanFrontend, data, pos, FRONTEND_RULES, None,
                              None, None, MISSING)
        self.assertRaises(TypeError, _scan.scanBackend, data, 0, BACKEND_RULES, None, False)
        self.assertRaises(TypeError, _scan.scanBackend, backend("C", b"X\0"), 0, BACKEND_RULES,
                          {b"X": (1, 2)}, False)


class ScanTests(SynchronousTestCase):
    """
    Hand-made cases, for each implementation.
    """

    def test_rules(self) -> None:
        """
        L{scanRules} keeps fixed lengths and C{0} and marks the rest.
        """
        self.assertEqual(FRONTEND_RULES[ord("S")], 4)
        self.assertEqual(FRONTEND_RULES[ord("B")], 0)
        self.assertEqual(FRONTEND_RULES[ord("Q")], ACT)
        self.assertEqual(FRONTEND_RULES[ord("?")], ACT)
        self.assertEqual(BACKEND_RULES[ord("Z")], 5)

    def test_frontendCounts(self) -> None:
        """
        Only-counted messages and Query/Parse of the last statement's
        shape are passed in one call; the repeats are reported.
        """
        data = (query(b"SELECT * FROM t WHERE a = 7") + frontend("B", b"\0" * 9)
                + parse(b"SELECT * FROM t WHERE a = 9", b"s1") + frontend("S", b""))
        for name, scanFrontend, _ in IMPLEMENTATIONS:
            self.assertEqual(
                scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST, None, MISSING),
                (len(data), 4, 2, MISSING, LAST), name)
            # Without SQL parsing, Query and Parse are counted only.
            self.assertEqual(scanFrontend(data, 0, FRONTEND_RULES, None, None, None, MISSING),
                             (len(data), 4, 0, MISSING, None), name)

    def test_frontendWritten(self) -> None:
        """
        A statement of another shape whose tables the metadata has as
        they are (C{written}) is only counted too, and becomes the last.
        """
        data = query(b"SELECT * FROM t WHERE a = 7") + query(b"INSERT INTO u VALUES (5)")
        written = {"t.db": LAST[0][1], "u.db": OTHER[0][1]}
        for name, scanFrontend, _ in IMPLEMENTATIONS:
            self.assertEqual(
                scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST, written, MISSING),
                (len(data), 2, 2, MISSING, OTHER), name)
            # An entry written with other operations (another tuple): back.
            self.assertEqual(
                scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST,
                             {"u.db": tuple(["insert"])}, MISSING),
                (len(data), 2, 1, OTHER, LAST), name)

    def test_frontendHandsBack(self) -> None:
        """
        A Query of another shape, of a cached parse error, or of a shape
        not cached comes back to the caller after it was counted, with
        its entry or its SQL.
        """
        first = query(b"SELECT * FROM t WHERE a = 1")
        for name, scanFrontend, _ in IMPLEMENTATIONS:
            for sql, found in [(b"INSERT INTO u VALUES (4)", OTHER), (b"SELEKT", None),
                               (b"SELECT 2", b"SELECT 2")]:
                data = first + query(sql) + frontend("S", b"")
                self.assertEqual(
                    scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST, {}, MISSING),
                    (len(data) - 5, 2, 1, found, LAST), (name, sql))
                # On from there.
                self.assertEqual(
                    scanFrontend(data, len(data) - 5, FRONTEND_RULES, OUTLINES, LAST, {},
                                 MISSING),
                    (len(data), 1, 0, MISSING, LAST), (name, sql))
            # A cached parse error is handed back even when it is the last.
            data = query(b"SELEKT")
            self.assertEqual(scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, None, {}, MISSING),
                             (len(data), 1, 0, None, None), name)

    def test_frontendStops(self) -> None:
        """
        The scan stops before what the decoder must see: a cut message, a
        wrong fixed length, Terminate, an unknown type, SQL that is not
        exactly one NUL-terminated text, non-ASCII SQL when parsing.
        """
        good = frontend("S", b"")
        for stop in [frontend("S", b"x"), frontend("X", b""), frontend("?", b""),
                     frontend("Q", b"SELECT 1"), frontend("Q", b""), frontend("P", b"name"),
                     frontend("P", b"name\0"), frontend("P", b"\0SELECT 1"),
                     b"B\x00\x00\x00\x03", b"B\xff\xff\xff\xff\0", query("SELECT 'é'".encode()),
                     query(b"SELECT 1")[:-1] + good[:1]]:
            data = good + stop + good[:4]
            for name, scanFrontend, _ in IMPLEMENTATIONS:
                self.assertEqual(
                    scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST, None, MISSING),
                    (5, 1, 0, MISSING, LAST), (name, stop))
        # Not parsing, non-ASCII SQL is only counted.
        data = query("SELECT 'é'".encode())
        for name, scanFrontend, _ in IMPLEMENTATIONS:
            self.assertEqual(scanFrontend(data, 0, FRONTEND_RULES, None, None, None, MISSING),
                             (len(data), 1, 0, MISSING, None), name)

    def test_backendCounts(self) -> None:
        """
        Each CommandComplete bumps its tag's counters for the connection's
        state and may change the state; the other messages are counted.
        """
        reply = (backend("C", b"BEGIN\0") + backend("Z", b"T")
                 + backend("T", b"\0\x01a\0" + b"\0" * 18) + backend("D", b"\0\x01\0\0\0\x011")
                 + backend("C", b"SELECT 1\0") + backend("Z", b"T")
                 + backend("C", b"COMMIT\0") + backend("Z", b"I")
                 + backend("C", b"SELECT 1\0") + backend("Z", b"I"))
        for name, _, scanBackend in IMPLEMENTATIONS:
            tags, counters = counting()
            self.assertEqual(scanBackend(reply, 0, BACKEND_RULES, tags, False),
                             (len(reply), 10, False, None), name)
            # statements, select, transactions, commits, other
            self.assertEqual([c.value for c in counters], [4, 2, 2, 2, 2], name)

    def test_textsUpToFirstNul(self) -> None:
        """
        As the decoder, a Query's SQL and a CommandComplete's tag end at
        their first NUL, whatever follows.
        """
        data = frontend("Q", b"SELEKT\0trailing\0")
        tag = backend("C", b"SELECT 1\0junk")
        for name, scanFrontend, scanBackend in IMPLEMENTATIONS:
            self.assertEqual(
                scanFrontend(data, 0, FRONTEND_RULES, OUTLINES, LAST, None, MISSING),
                (len(data), 1, 0, None, LAST), name)
            tags, counters = counting()
            self.assertEqual(scanBackend(tag, 0, BACKEND_RULES, tags, False),
                             (len(tag), 1, False, None), name)
            self.assertEqual(counters[1].value, 1, name)

    def test_backendUnknownTag(self) -> None:
        """
        A tag not in the table comes back, its message not yet counted.
        """
        data = backend("Z", b"I") + backend("C", b"UPDATE 3\0") + backend("Z", b"I")
        for name, _, scanBackend in IMPLEMENTATIONS:
            tags, counters = counting()
            self.assertEqual(scanBackend(data, 0, BACKEND_RULES, tags, True),
                             (6, 1, True, b"UPDATE 3"), name)
            self.assertEqual([c.value for c in counters], [0] * 5, name)

    def test_backendStops(self) -> None:
        """
        ErrorResponse, a CommandComplete without exactly one NUL, a wrong
        ReadyForQuery length and a cut message stop the scan.
        """
        good = backend("Z", b"I")
        for stop in [backend("E", b"SERROR\0\0"), backend("C", b"SELECT 1"), backend("C", b""),
                     backend("Z", b"II"), backend("D", b"\0\x01\0\0\0\x011")[:-1]]:
            data = good + stop
            for name, _, scanBackend in IMPLEMENTATIONS:
                tags, _counters = counting()
                self.assertEqual(scanBackend(data, 0, BACKEND_RULES, tags, False),
                                 (6, 1, False, None), (name, stop))


#: Messages of every sort the scans see, for random streams.
_FRONTEND_PARTS = [
    query(b"SELECT * FROM t WHERE a = 1"), query(b"SELECT * FROM t WHERE a = 22"),
    query(b"INSERT INTO u VALUES (3)"), query(b"SELEKT"), query(b"SELECT now()"),
    parse(b"SELECT * FROM t WHERE a = 4", b"s"), frontend("B", b"\0s\0" + b"\0" * 6),
    frontend("E", b"\0\0\0\0\0"), frontend("S", b""), frontend("H", b""),
    frontend("d", b"1\n" * 20), frontend("c", b""), frontend("X", b""),
    query("SELECT 'é'".encode()),
]
_BACKEND_PARTS = [
    backend("C", b"SELECT 1\0"), backend("C", b"BEGIN\0"), backend("C", b"COMMIT\0"),
    backend("C", b"UPDATE 1\0"), backend("Z", b"I"), backend("Z", b"T"), backend("1", b""),
    backend("2", b""), backend("T", b"\0\x01a\0" + b"\0" * 18), backend("D", b"\0\x01\0\0\0\x011"),
    backend("E", b"SERROR\0VERROR\0\0"), backend("N", b"SNOTICE\0\0"),
]


def _stream(parts: list[bytes], picks: list[int], changes: list[Any]) -> bytes:
    data = b"".join(parts[i % len(parts)] for i in picks)
    return mutate(data, changes) if changes and data else data


class AgreementTests(SynchronousTestCase):
    """
    On random and mutated streams, from any position, C and Python return
    the same and bump the same counters.
    """

    def setUp(self) -> None:
        if _scan is None:
            self.fail("pyenvoy.filters.postgres_proxy._scan was not built")

    @FUZZ
    @given(st.lists(st.integers(0, 100), max_size=30), st.lists(edits, max_size=1),
           st.integers(0, 1 << 16), st.booleans(), st.sampled_from([LAST, OTHER, None]),
           st.sampled_from([None, {}, {"t.db": LAST[0][1]}, {"u.db": OTHER[0][1]}]))
    def test_frontendAgrees(self, picks: list[int], changes: list[Any], start: int,
                            parsing: bool, last: Any, written: Any) -> None:
        data = _stream(_FRONTEND_PARTS, picks, changes[0] if changes else [])
        pos = start % (len(data) + 1)
        outlines = dict(OUTLINES) if parsing else None
        while True:
            expected = pythonScanFrontend(data, pos, FRONTEND_RULES, outlines, last, written,
                                          MISSING)
            self.assertEqual(_scan.scanFrontend(data, pos, FRONTEND_RULES, outlines, last,
                                                written, MISSING), expected)
            if expected[3] is MISSING:
                break
            pos, last = expected[0], expected[4]

    @FUZZ
    @given(st.lists(st.integers(0, 100), max_size=30), st.lists(edits, max_size=1),
           st.integers(0, 1 << 16), st.booleans())
    def test_backendAgrees(self, picks: list[int], changes: list[Any], start: int,
                           inTransaction: bool) -> None:
        data = _stream(_BACKEND_PARTS, picks, changes[0] if changes else [])
        pos = start % (len(data) + 1)
        results = []
        for scanBackend in (pythonScanBackend, _scan.scanBackend):
            tags, counters = counting()
            at, state, out = pos, inTransaction, []
            while True:
                at, n, state, tag = scanBackend(data, at, BACKEND_RULES, tags, state)
                out.append((at, n, state, tag))
                if tag is None:
                    break
                tags[tag] = tags[b"SELECT 1"]
            results.append((out, [c.value for c in counters]))
        self.assertEqual(results[0], results[1])
