"""
postgres_proxy: config, Envoy's stats and SQL metadata from frames in
memory, and psycopg through pyenvoy to a real PostgreSQL.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.filters.postgres_proxy import (
    COUNTERS, METADATA_NAMESPACE, PostgresProxyConfig, factory)
from pyenvoy.stats import Store
from pyenvoy.testing import FilterHarness
from tests.support.net import listenerPort, startServer, stat
from tests.support.postgres import DATABASE, postgresProxyConfig, startPostgres
from tests.test_mongo_proxy import Sink
from tests.test_postgres_codec import backend as b, frontend as f, sslRequest, startup, untyped


class FilterTests(SynchronousTestCase):
    """
    The filter over an in-memory connection.
    """

    def make(self, **kw: Any) -> FilterHarness:
        self.store = Store()
        self.sink = Sink()
        harness = FilterHarness([])
        makeFilter = factory.createFilterFactory(
            PostgresProxyConfig("p", **kw), SimpleNamespace(store=self.store,
                                                            reactor=harness.reactor))
        self.filter = makeFilter()
        return FilterHarness([self.filter, self.sink], reactor=harness.reactor)

    def nonzero(self) -> dict[str, int]:
        return {s.name[len("postgres.p."):]: s.value for s in self.store if s.value}

    def serverSends(self, harness: FilterHarness, data: bytes) -> None:
        harness.connection.write(data)
        self.assertEqual(harness.written(), data)

    def test_session(self) -> None:
        """
        A plaintext session: login, autocommit statements, a committed and
        a rolled-back transaction, an error and a notice, counted as Envoy.
        """
        h = self.make()
        sent = startup({"user": "u", "database": "db"})
        h.receive(sent)
        self.serverSends(h, b("R", b"\0\0\0\0") + b("S", b"a\0b\0") + b("Z", b"I"))
        frames = [
            (f("Q", b"CREATE TABLE t (a int)\0"), b("C", b"CREATE TABLE\0") + b("Z", b"I")),
            (f("Q", b"INSERT INTO t VALUES (1)\0"), b("C", b"INSERT 0 1\0") + b("Z", b"I")),
            (f("Q", b"BEGIN\0"), b("C", b"BEGIN\0") + b("Z", b"T")),
            (f("Q", b"UPDATE t SET a = 2\0"), b("C", b"UPDATE 1\0") + b("Z", b"T")),
            (f("Q", b"COMMIT\0"), b("C", b"COMMIT\0") + b("Z", b"I")),
            (f("Q", b"BEGIN\0"), b("C", b"BEGIN\0") + b("Z", b"T")),
            (f("Q", b"DELETE FROM t\0"), b("C", b"DELETE 1\0") + b("Z", b"T")),
            (f("Q", b"ROLLBACK\0"), b("C", b"ROLLBACK\0") + b("Z", b"I")),
            (f("Q", b"SELEKT\0"),
             b("E", b"SERROR\0VERROR\0C42601\0Msyntax error\0\0") + b("Z", b"I")),
            (f("Q", b"SELECT * FROM t\0"),
             b("N", b"SWARNING\0VWARNING\0Mhm\0\0") + b("T", b"\0\x01a\0" + b"\0" * 18)
             + b("D", b"\0\x01\0\0\0\x011") + b("C", b"SELECT 1\0") + b("Z", b"I")),
        ]
        for request, reply in frames:
            h.receive(request)
            sent += request
            self.serverSends(h, reply)
        h.receive(f("X", b""))
        sent += f("X", b"")
        self.assertEqual(self.sink.received, sent)
        self.assertEqual(self.nonzero(), {
            "sessions": 1, "sessions_unencrypted": 1,
            "statements": 9, "statements_other": 5, "statements_insert": 1,
            "statements_update": 1, "statements_delete": 1, "statements_select": 1,
            "transactions": 5, "transactions_commit": 4, "transactions_rollback": 1,
            "errors": 1, "errors_error": 1, "notices": 1, "notices_warning": 1,
            "statements_parsed": 9, "statements_parse_error": 1,
            "messages": 37, "messages_frontend": 11, "messages_backend": 26,
        })
        self.assertEqual(h.connection.streamInfo.dynamicMetadata[METADATA_NAMESPACE],
                         {"t.db": ["select"]})

    def test_metadataDatabaseDefaultsToUser(self) -> None:
        """
        Without a C{database} startup parameter the metadata key uses the
        user name, as PostgreSQL and Envoy do.
        """
        h = self.make()
        h.receive(startup({"user": "alice"}) + f("P", b"s1\0INSERT INTO t SELECT * FROM u\0\0\0"))
        self.assertEqual(h.connection.streamInfo.dynamicMetadata[METADATA_NAMESPACE],
                         {"t.alice": ["insert"], "u.alice": ["select"]})

    def test_metadataFollowsEachStatement(self) -> None:
        """
        Each statement's tables and operations overwrite that table's entry,
        also when statement shapes alternate (an entry that did not change
        is not rewritten, one that did always is).
        """
        h = self.make()
        metadata = h.connection.streamInfo.dynamicMetadata
        h.receive(startup({"user": "u", "database": "db"}))
        seen = []
        for sql in (b"SELECT * FROM a WHERE k = 1", b"UPDATE a SET v = 2 WHERE k = 1",
                    b"UPDATE b SET v = 3", b"SELECT * FROM a WHERE k = 4",
                    b"UPDATE b SET v = 5", b"BEGIN", b"INSERT INTO a VALUES (6)"):
            h.receive(f("Q", sql + b"\0"))
            seen.append(dict(metadata[METADATA_NAMESPACE]))
        self.assertEqual(seen, [
            {"a.db": ["select"]},
            {"a.db": ["update"]},
            {"a.db": ["update"], "b.db": ["update"]},
            {"a.db": ["select"], "b.db": ["update"]},
            {"a.db": ["select"], "b.db": ["update"]},
            {"a.db": ["select"], "b.db": ["update"]},
            {"a.db": ["insert"], "b.db": ["update"]},
        ])

    def test_noSqlParsing(self) -> None:
        """
        C{enable_sql_parsing: false}: no metadata, no parse stats.
        """
        h = self.make(enableSqlParsing=False)
        h.receive(startup({"user": "u"}) + f("Q", b"SELECT 1\0"))
        self.assertEqual(h.connection.streamInfo.dynamicMetadata, {})
        # The startup message is not counted (Envoy counts only encryption
        # requests among the untyped first messages).
        self.assertEqual(self.nonzero(), {"messages": 1, "messages_frontend": 1})

    def test_sslRequest(self) -> None:
        """
        An SSLRequest passes through; the session counts as encrypted and
        nothing after it is decoded.
        """
        h = self.make()
        h.receive(sslRequest())
        self.serverSends(h, b"S" + b"\x16\x03\x01garbage")
        h.receive(b"\x16\x03\x01" + b"x" * 100)
        self.assertEqual(self.sink.received, sslRequest() + b"\x16\x03\x01" + b"x" * 100)
        self.assertEqual(self.nonzero(), {"sessions": 1, "sessions_encrypted": 1,
                                          "messages": 1, "messages_frontend": 1})

    def test_malformed(self) -> None:
        """
        A malformed message is counted once and inspection stops; bytes
        still flow.
        """
        h = self.make()
        h.receive(startup({"user": "u"}))
        bad = b"Q\x00\x00\x00\x02" + f("Q", b"SELECT 1\0")
        h.receive(bad)
        self.serverSends(h, b("C", b"SELECT 1\0"))
        self.assertTrue(self.sink.received.endswith(bad))
        # The bad Query itself is counted, as Envoy counts a typed message
        # before it validates it; the startup message is not.
        self.assertEqual(self.nonzero(), {"messages": 1, "messages_frontend": 1,
                                          "decoding_error": 1})

    def test_malformedFirstMessageNotCounted(self) -> None:
        """
        A first message that does not parse is not counted (Envoy's
        onDataInit goes out of sync before counting).
        """
        h = self.make()
        bad = untyped(196608, b"user\0u")  # parameters without their terminator
        h.receive(bad)
        self.assertEqual(self.sink.received, bad)
        self.assertEqual(self.nonzero(), {"decoding_error": 1})

    def test_protocol32(self) -> None:
        """
        A protocol 3.2 startup (libpq 18 with max_protocol_version=latest)
        is a StartupMessage, and 3.2's longer BackendKeyData is fine.
        """
        h = self.make()
        h.receive(untyped(0x00030002, b"user\0u\0database\0db\0\0"))
        self.serverSends(h, b("R", b"\0\0\0\0") + b("K", b"\0\0\0\x07" + b"k" * 32)
                         + b("Z", b"I"))
        h.receive(f("Q", b"SELECT * FROM t\0"))
        self.serverSends(h, b("C", b"SELECT 1\0") + b("Z", b"I"))
        counts = self.nonzero()
        self.assertEqual((counts.get("sessions"), counts.get("statements_select"),
                          counts.get("decoding_error")), (1, 1, None))
        self.assertEqual(h.connection.streamInfo.dynamicMetadata[METADATA_NAMESPACE],
                         {"t.db": ["select"]})

    def test_otherProtocolVersion(self) -> None:
        """
        A startup of a protocol other than 3.x counts as unknown and
        stops inspection; its bytes still flow.
        """
        h = self.make()
        first = untyped(0x00020000, b"\0" * 8)
        h.receive(first + f("Q", b"SELECT 1\0"))
        self.assertEqual(self.sink.received, first + f("Q", b"SELECT 1\0"))
        self.assertEqual(self.nonzero(), {"messages": 1, "messages_unknown": 1})

    def test_cancelRequest(self) -> None:
        """
        Envoy reads a first message as a code and NUL-terminated strings
        before it looks at the code, so a CancelRequest counts as an
        encrypted session only when its key's last byte is 0, and as
        nothing otherwise.  Either way inspection stops.
        """
        h = self.make()
        cancel = untyped(80877102, b"\0\0\0\x07\x12\x34\x56\x78")
        h.receive(cancel)
        self.assertEqual(self.sink.received, cancel)
        self.assertEqual(self.nonzero(), {})
        h = self.make()
        h.receive(untyped(80877102, b"\0\0\0\x07\x12\x34\x56\0"))
        self.assertEqual(self.nonzero(), {"sessions": 1, "sessions_encrypted": 1,
                                          "messages": 1, "messages_frontend": 1})

    def test_metadataNamespaceWithoutTables(self) -> None:
        """
        A statement that parses but touches no table still sets the
        filter's (empty) metadata namespace, as Envoy's merge does.
        """
        h = self.make()
        h.receive(startup({"user": "u"}) + f("Q", b"SELECT 1\0"))
        self.assertEqual(h.connection.streamInfo.dynamicMetadata, {METADATA_NAMESPACE: {}})

    def requireUpstreamSsl(self, first: bytes) -> FilterHarness:
        h = self.make(upstreamSsl="REQUIRE")
        self.filter.readCallbacks.startUpstreamSecureTransport = lambda: True
        h.receive(first)
        self.assertEqual(self.sink.received, sslRequest())
        return h

    def test_upstreamSslForAnyStartup(self) -> None:
        """
        upstream_ssl REQUIRE: the server is asked for TLS before any
        startup, of any protocol version, reaches it.
        """
        for first in (startup({"user": "u"}), untyped(0x00030002, b"user\0u\0\0"),
                      untyped(0x00020000, b"\0" * 8)):
            h = self.requireUpstreamSsl(first)
            h.connection.write(b"S")
            self.assertEqual(self.sink.received, sslRequest() + first)
            self.assertEqual(self.nonzero().get("sessions_upstream_ssl_success"), 1)

    def test_upstreamSslAnswerIsOneByte(self) -> None:
        """
        upstream_ssl REQUIRE: an answer with bytes after its C{S} (plaintext
        injected before TLS) fails the session, as in Envoy.
        """
        h = self.requireUpstreamSsl(startup({"user": "u"}))
        h.connection.write(b"S\x00\x00\x00\x08")
        self.assertTrue(h.closed)
        self.assertEqual(self.sink.received, sslRequest())
        counts = self.nonzero()
        self.assertEqual((counts.get("sessions_upstream_ssl_failed"),
                          counts.get("sessions_upstream_ssl_success")), (1, None))

    def test_unknownMessages(self) -> None:
        """
        Unknown types count in C{messages_unknown} and in C{messages}
        twice, as Envoy counts them.
        """
        h = self.make()
        h.receive(startup({"user": "u"}) + f("y", b"abc"))
        self.serverSends(h, b("y", b""))
        self.assertEqual(self.nonzero(), {"messages": 4, "messages_frontend": 1,
                                          "messages_backend": 1, "messages_unknown": 2})

    def test_terminateInTransaction(self) -> None:
        """
        Terminate inside an explicit transaction is a rollback.
        """
        h = self.make(enableSqlParsing=False)
        h.receive(startup({"user": "u"}) + f("Q", b"BEGIN\0"))
        self.serverSends(h, b("C", b"BEGIN\0"))
        h.receive(f("X", b""))
        self.assertEqual(self.nonzero()["transactions_rollback"], 1)

    def scanned(self, scanning: bool, client: list[bytes], server: list[bytes]
                ) -> tuple[dict[str, int], Any]:
        """
        Login, then C{client} and C{server} chunks in turns, with the
        filter's scan on or off; the counters and the metadata.
        """
        h = self.make()
        self.filter.scanning = scanning
        h.receive(startup({"user": "u", "database": "db"}))
        self.serverSends(h, b("R", b"\0\0\0\0") + b("Z", b"I"))
        for request, reply in zip(client, server):
            h.receive(request)
            self.serverSends(h, reply)
        return self.nonzero(), h.connection.streamInfo.dynamicMetadata

    def test_scanEdgeCases(self) -> None:
        """
        Within one chunk: text after a Query's or a tag's first NUL is
        ignored, Parse is read past its name, and an unknown type, an
        ErrorResponse or a cut message hand the rest to the decoder, which
        counts on exactly as the scan would have; scan on or off alike.
        """
        client = [
            f("Q", b"SELECT * FROM a WHERE x = 1\0junk\0") + f("P", b"s\0DELETE FROM b\0\0\0")
            + f("B", b"\0s\0\0\0\0\0\0\0") + f("E", b"\0\0\0\0\0") + f("S", b""),
            f("y", b"?") + f("Q", b"UPDATE c SET x = 2\0"),
            f("Q", b"INSERT INTO d VALUES (3)\0")[:9],
            f("Q", b"INSERT INTO d VALUES (3)\0")[9:] + f("Q", b"BEGIN\0"),
            f("X", b""),
        ]
        server = [
            b("C", b"SELECT\0 1\0") + b("1", b"") + b("2", b"") + b("C", b"DELETE 3\0")
            + b("Z", b"I"),
            b("y", b"") + b("E", b"SERROR\0VERROR\0\0") + b("C", b"UPDATE 1\0") + b("Z", b"I"),
            b("C", b"INSERT 0 1\0")[:5],
            b("C", b"INSERT 0 1\0")[5:] + b("Z", b"I") + b("C", b"BEGIN\0") + b("Z", b"T"),
            b"",
        ]
        expected = {
            "sessions": 1, "sessions_unencrypted": 1,
            "statements": 5, "statements_select": 1, "statements_delete": 1,
            "statements_update": 1, "statements_insert": 1, "statements_other": 1,
            "transactions": 5, "transactions_commit": 4, "transactions_rollback": 1,
            "statements_parsed": 5, "errors": 1, "errors_error": 1,
            "messages": 27, "messages_frontend": 10, "messages_backend": 15,
            "messages_unknown": 2,
        }
        metadata = {METADATA_NAMESPACE: {"a.db": ["select"], "b.db": ["delete"],
                                         "c.db": ["update"], "d.db": ["insert"]}}
        self.assertEqual(self.scanned(True, client, server), (expected, metadata))
        self.assertEqual(self.scanned(False, client, server), (expected, metadata))

    def test_scanMalformed(self) -> None:
        """
        A malformed message after a good one in a scanned chunk: the good
        one is counted, then decoding_error, and nothing more either way.
        """
        for scanning in (True, False):
            counters, _ = self.scanned(scanning, [
                f("Q", b"SELECT 1\0") + f("S", b"x") + f("Q", b"SELECT 2\0"),
                f("Q", b"SELECT 3\0")], [b("C", b"SELECT 1\0") + b("Z", b"I"), b""])
            # The server's reply is not inspected either.
            self.assertEqual(counters, {
                "sessions": 1, "sessions_unencrypted": 1, "decoding_error": 1,
                "statements_parsed": 1,
                "messages": 4, "messages_frontend": 2, "messages_backend": 2}, scanning)


def config(typed: dict) -> dict:
    """
    A bootstrap with one postgres_proxy C{typed} config then tcp_proxy.
    """
    raw = postgresProxyConfig(1, "p")
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"].update(typed)
    return raw


class ConfigTests(SynchronousTestCase):
    """
    The C{PostgresProxy} message.
    """

    def test_defaults(self) -> None:
        """
        Only C{stat_prefix} is needed; SQL parsing is on by default.
        """
        chain = parse(config({})).listeners[0].filterChains[0]
        self.assertEqual(chain.filters[0].config, PostgresProxyConfig("p"))

    def test_tlsNotYet(self) -> None:
        """
        C{downstream_ssl} other than C{DISABLE} is refused as not supported
        yet; C{terminate_ssl} and C{upstream_ssl: REQUIRE} are accepted.
        """
        parse(config({"terminate_ssl": False, "upstream_ssl": "DISABLE",
                      "downstream_ssl": "DISABLE", "enable_sql_parsing": False}))
        parse(config({"terminate_ssl": True, "upstream_ssl": "REQUIRE"}))
        for typed in ({"downstream_ssl": "REQUIRE"}, {"downstream_ssl": "ALLOW"}):
            e = self.assertRaises(ConfigErrors, parse, config(typed))
            self.assertIn("not supported by pyenvoy yet", str(e.errors[0].message))

    def test_upstreamSslAllow(self) -> None:
        """
        C{upstream_ssl: ALLOW} is accepted, as Envoy accepts it, and acts as
        C{DISABLE} (Envoy acts only on C{REQUIRE}).
        """
        chain = parse(config({"upstream_ssl": "ALLOW"})).listeners[0].filterChains[0]
        self.assertEqual(chain.filters[0].config.upstreamSsl, "DISABLE")

    def test_required(self) -> None:
        """
        C{stat_prefix} is required and unknown fields are refused.
        """
        raw = config({"bogus": 1})
        del raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["stat_prefix"]
        e = self.assertRaises(ConfigErrors, parse, raw)
        messages = " ".join(error.message for error in e.errors)
        self.assertIn("stat_prefix", messages)
        self.assertIn("bogus", messages)


def _session(port: int, sslmode: str) -> list[Any]:
    """
    Run the reference session with psycopg (blocking; in a thread).
    """
    import psycopg

    out: list[Any] = []
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=DATABASE,
                         sslmode=sslmode, gssencmode="disable", autocommit=True,
                         connect_timeout=10) as conn:
        out.append(conn.pgconn.ssl_in_use)
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE items SET name = 'c' WHERE id = 2")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (3, 'd')")
            conn.execute("DELETE FROM items WHERE id = 1")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO items VALUES (4, 'e')")
                raise ValueError("roll back")
        except ValueError:
            pass
        try:
            conn.execute("SELECT * FROM no_such_table")
        except psycopg.errors.UndefinedTable:
            out.append("error")
        out.append(conn.execute("SELECT id, name FROM items ORDER BY id").fetchall())
    return out


class IntegrationTests(TestCase):
    """
    psycopg 3 through pyenvoy (postgres_proxy + tcp_proxy) to a real
    PostgreSQL 15 with TLS on.
    """

    timeout = 120

    def counters(self, server: Any) -> dict[str, int]:
        values = {name: stat(server, f"postgres.pg.{name}") for name in COUNTERS}
        return {k: v for k, v in values.items() if v}

    async def test_plaintext(self) -> None:
        """
        C{sslmode=disable}: the session is decoded and counted exactly.
        """
        pgPort = await startPostgres(self)
        server = startServer(self, postgresProxyConfig(pgPort, "pg"))
        result = await threads.deferToThread(_session, listenerPort(server), "disable")
        self.assertEqual(result, [False, "error", [(2, "c"), (3, "d")]])
        counters = self.counters(server)
        messages = {k: counters.pop(k) for k in list(counters) if k.startswith("messages")}
        self.assertEqual(counters, {
            "sessions": 1, "sessions_unencrypted": 1,
            # CREATE, INSERT, UPDATE, BEGIN, INSERT, DELETE, COMMIT, BEGIN,
            # INSERT, ROLLBACK, SELECT
            "statements": 11, "statements_other": 5, "statements_insert": 3,
            "statements_update": 1, "statements_delete": 1, "statements_select": 1,
            # CREATE, INSERT, UPDATE, SELECT autocommit + 2 explicit
            "transactions": 6, "transactions_commit": 5, "transactions_rollback": 1,
            "errors": 1, "errors_error": 1,
            "statements_parsed": 12,
        })
        self.assertEqual(messages["messages"],
                         messages["messages_frontend"] + messages["messages_backend"])
        self.assertNotIn("messages_unknown", messages)

    async def test_sslPrefer(self) -> None:
        """
        C{sslmode=prefer}: the SSLRequest passes, PostgreSQL answers C{S},
        TLS runs end to end through pyenvoy, and the session counts as
        encrypted and is not decoded.
        """
        pgPort = await startPostgres(self)
        server = startServer(self, postgresProxyConfig(pgPort, "pg"))
        result = await threads.deferToThread(_session, listenerPort(server), "prefer")
        self.assertEqual(result, [True, "error", [(2, "c"), (3, "d")]])
        self.assertEqual(self.counters(server), {
            "sessions": 1, "sessions_encrypted": 1, "messages": 1, "messages_frontend": 1})


STARTTLS_CONFIG = ("type.googleapis.com/envoy.extensions.transport_sockets.starttls.v3."
                   "StartTlsConfig")


def startTlsConfig(port: int, **options: object) -> dict:
    """
    L{postgresProxyConfig} with C{terminate_ssl} and the filter chain's
    transport socket C{envoy.transport_sockets.starttls} (a test CA's
    certificate for C{localhost}).
    """
    from tests.support.certs import issue, makeCA

    server = issue(makeCA(), "localhost", dns=("localhost",))
    raw = postgresProxyConfig(port, "pg", terminate_ssl=True, **options)
    raw["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.starttls",
        "typed_config": {
            "@type": STARTTLS_CONFIG,
            "cleartext_socket_config": {},
            "tls_socket_config": {"common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"inline_string": server.certPem.decode()},
                "private_key": {"inline_string": server.keyPem.decode()}}]}},
        }}
    return raw


UPSTREAM_STARTTLS_CONFIG = ("type.googleapis.com/envoy.extensions.transport_sockets."
                            "starttls.v3.UpstreamStartTlsConfig")


def upstreamStartTls(raw: dict) -> dict:
    """
    Give C{raw}'s cluster a starttls transport socket (TLS without
    verification, as PostgreSQL's certificate is self-signed).
    """
    raw["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.starttls",
        "typed_config": {"@type": UPSTREAM_STARTTLS_CONFIG, "cleartext_socket_config": {},
                         "tls_socket_config": {}}}
    return raw


def _serverSsl(port: int, sslmode: str = "require") -> list[Any]:
    """
    Connect with C{sslmode}; whether the client and the server see TLS
    (blocking; in a thread).
    """
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=DATABASE,
                         sslmode=sslmode, gssencmode="disable", autocommit=True,
                         connect_timeout=10) as conn:
        serverSsl = conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        return [conn.pgconn.ssl_in_use, serverSsl]


class TerminateSslTests(TestCase):
    """
    C{terminate_ssl} with a starttls transport socket: psycopg's TLS ends
    at pyenvoy, which decodes the cleartext session.
    """

    timeout = 120

    def counters(self, server: Any) -> dict[str, int]:
        values = {name: stat(server, f"postgres.pg.{name}") for name in COUNTERS}
        return {k: v for k, v in values.items() if v}

    async def test_terminateSsl(self) -> None:
        """
        C{sslmode=require}: pyenvoy answers the SSLRequest and does the
        handshake; PostgreSQL sees a plaintext session, which is decoded
        and counted as with C{sslmode=disable}.
        """
        pgPort = await startPostgres(self)
        server = startServer(self, startTlsConfig(pgPort))
        port = listenerPort(server)
        result = await threads.deferToThread(_session, port, "require")
        self.assertEqual(result, [True, "error", [(2, "c"), (3, "d")]])
        counters = self.counters(server)
        for name in ("messages", "messages_frontend", "messages_backend"):
            counters.pop(name)
        self.assertEqual(counters, {
            "sessions": 1, "sessions_unencrypted": 1, "sessions_terminated_ssl": 1,
            "statements": 11, "statements_other": 5, "statements_insert": 3,
            "statements_update": 1, "statements_delete": 1, "statements_select": 1,
            "transactions": 6, "transactions_commit": 5, "transactions_rollback": 1,
            "errors": 1, "errors_error": 1,
            "statements_parsed": 12,
        })
        self.assertEqual(await threads.deferToThread(_serverSsl, port), [True, False])
        self.assertEqual(stat(server, "postgres.pg.sessions_terminated_ssl"), 2)

    async def test_plaintextClient(self) -> None:
        """
        A client that does not ask for TLS is proxied in cleartext as usual.
        """
        pgPort = await startPostgres(self)
        server = startServer(self, startTlsConfig(pgPort))
        result = await threads.deferToThread(_session, listenerPort(server), "disable")
        self.assertEqual(result, [False, "error", [(2, "c"), (3, "d")]])
        self.assertEqual(stat(server, "postgres.pg.sessions_terminated_ssl"), 0)
        self.assertEqual(stat(server, "postgres.pg.statements"), 11)

    async def test_noStartTlsSocket(self) -> None:
        """
        C{terminate_ssl} on a chain without a starttls transport socket: the
        SSLRequest is answered and the connection closed, so the client
        fails.
        """
        import psycopg

        pgPort = await startPostgres(self)
        server = startServer(self, postgresProxyConfig(pgPort, "pg", terminate_ssl=True))
        with self.assertRaises(psycopg.OperationalError):
            await threads.deferToThread(_serverSsl, listenerPort(server))
        self.assertEqual(stat(server, "postgres.pg.sessions_terminated_ssl"), 0)


class UpstreamSslTests(TestCase):
    """
    C{upstream_ssl: REQUIRE} with a starttls cluster: pyenvoy asks
    PostgreSQL for TLS before replaying the client's startup.
    """

    timeout = 120

    async def test_bothSides(self) -> None:
        """
        With C{terminate_ssl} too, both legs are TLS and the session is
        still decoded.
        """
        pgPort = await startPostgres(self)
        server = startServer(self, upstreamStartTls(startTlsConfig(pgPort,
                                                                   upstream_ssl="REQUIRE")))
        port = listenerPort(server)
        result = await threads.deferToThread(_session, port, "require")
        self.assertEqual(result, [True, "error", [(2, "c"), (3, "d")]])
        self.assertEqual(await threads.deferToThread(_serverSsl, port), [True, True])
        self.assertEqual(stat(server, "postgres.pg.sessions_terminated_ssl"), 2)
        self.assertEqual(stat(server, "postgres.pg.sessions_upstream_ssl_success"), 2)
        self.assertEqual(stat(server, "postgres.pg.statements"), 12)
        self.assertEqual(stat(server, "postgres.pg.statements_insert"), 3)
        self.assertEqual(stat(server, "postgres.pg.sessions_upstream_ssl_failed"), 0)

    async def test_plaintextClient(self) -> None:
        """
        Without C{terminate_ssl}, a cleartext client still gets a TLS
        session to the server.
        """
        pgPort = await startPostgres(self)
        raw = upstreamStartTls(postgresProxyConfig(pgPort, "pg", upstream_ssl="REQUIRE"))
        server = startServer(self, raw)
        result = await threads.deferToThread(_serverSsl, listenerPort(server), "disable")
        self.assertEqual(result, [False, True])
        self.assertEqual(stat(server, "postgres.pg.sessions_upstream_ssl_success"), 1)

    async def test_noStartTlsCluster(self) -> None:
        """
        A cluster without a starttls transport socket cannot switch: the
        connection is closed and C{sessions_upstream_ssl_failed} counted.
        """
        import psycopg

        pgPort = await startPostgres(self)
        server = startServer(self, postgresProxyConfig(pgPort, "pg", upstream_ssl="REQUIRE"))
        with self.assertRaises(psycopg.OperationalError):
            await threads.deferToThread(_serverSsl, listenerPort(server), "disable")
        self.assertEqual(stat(server, "postgres.pg.sessions_upstream_ssl_failed"), 1)


class TwistdTests(TestCase):
    """
    The shipped C{etc/postgres_proxy.yaml} run by C{twistd}, driven by
    C{psql}.
    """

    timeout = 120

    async def test_psql(self) -> None:
        """
        psql's statements through C{twistd pyenvoy} show up in the admin
        C{/stats} with Envoy's names.
        """
        import os
        import subprocess

        import yaml

        from tests.support.postgres import pgbin
        from tests.support.twistd import startTwistd

        pgPort = await startPostgres(self)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "etc", "postgres_proxy.yaml")) as f:
            raw = yaml.safe_load(f)
        raw["admin"]["address"]["socket_address"]["port_value"] = 0
        static = raw["static_resources"]
        static["listeners"][0]["address"]["socket_address"]["port_value"] = 0
        static["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
            "endpoint"]["address"]["socket_address"]["port_value"] = pgPort
        twistd = await threads.deferToThread(startTwistd, self, raw)
        port = twistd.listenerPorts["postgres"]
        sql = ("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2); "
               "BEGIN; UPDATE t SET a = 3; COMMIT; SELECT count(*) FROM t;")
        done = await threads.deferToThread(
            subprocess.run,
            [os.path.join(pgbin(self), "psql"), "-X", "-q", "-A", "-t", "-c", sql,
             f"host=127.0.0.1 port={port} user=postgres dbname={DATABASE} "
             "sslmode=disable gssencmode=disable"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, b"2"), done.stderr)
        status, body = await threads.deferToThread(twistd.request, "GET", "/stats")
        stats = dict(line.split(": ", 1) for line in body.splitlines()
                     if line.startswith("postgres.pg."))
        # One Query with six statements: CREATE, INSERT, BEGIN, UPDATE,
        # COMMIT, SELECT.
        self.assertEqual({k: stats.get(f"postgres.pg.{k}") for k in (
            "sessions_unencrypted", "statements", "statements_insert", "statements_update",
            "statements_select", "statements_other", "transactions", "transactions_commit",
            "statements_parsed")}, {
            "sessions_unencrypted": "1", "statements": "6", "statements_insert": "1",
            "statements_update": "1", "statements_select": "1", "statements_other": "3",
            "transactions": "4", "transactions_commit": "4", "statements_parsed": "1"})


class SqlCacheTests(SynchronousTestCase):
    """
    The parse cache keyed by statement shape.
    """

    def shared(self) -> tuple[Any, list[str]]:
        """
        A L{_Shared} whose parser records each SQL it is asked to parse.
        """
        from pyenvoy.filters.postgres_proxy import _Shared, parseSql

        calls: list[str] = []

        def recording(sql: str, database: str | None) -> Any:
            calls.append(sql)
            return parseSql(sql, database)

        return _Shared(PostgresProxyConfig("c"), Store(), recording), calls

    def test_literalsShareAnEntry(self) -> None:
        """Statements differing only in string and number literals are parsed once."""
        shared, calls = self.shared()
        first = shared.tables("UPDATE t SET a = 'x''y', b = 1.5 WHERE id = 7", "db")
        again = shared.tables("UPDATE t SET a = 'zz', b = 2 WHERE id = 123456", "db")
        self.assertIs(first, again)
        self.assertEqual(first, (("t.db", ("update",)),))
        self.assertEqual(len(calls), 1)
        self.assertEqual(shared.tables("UPDATE t SET a = 'x'", "other"),
                         (("t.other", ("update",)),))
        self.assertEqual(len(calls), 2)

    def test_identifiersNeverShare(self) -> None:
        """Digits in identifiers (t1, t$1, quoted) never collapse two tables into one entry."""
        shared, calls = self.shared()
        pairs = [("SELECT * FROM t1", "SELECT * FROM t2"),
                 ("SELECT * FROM t$1", "SELECT * FROM t$2"),
                 ('SELECT * FROM "a 1"', 'SELECT * FROM "a 2"')]
        for one, two in pairs:
            self.assertNotEqual(shared.tables(one, "d"), shared.tables(two, "d"), one)
        self.assertEqual(len(calls), 6)

    def test_parseErrorCached(self) -> None:
        """A statement sqlglot cannot parse is cached as a parse error too."""
        shared, calls = self.shared()
        self.assertIsNone(shared.tables("SELEKT 1", "d"))
        self.assertIsNone(shared.tables("SELEKT 2", "d"))
        self.assertEqual(len(calls), 1)

    def test_outlines(self) -> None:
        """
        A statement whose digits are all in literals is found again by its
        outline (digits made 0), with any digits of the same count;
        digits outside literals keep a statement out of the outlines.
        """
        shared, calls = self.shared()
        first = shared.tables(b"SELECT a FROM t WHERE id = 12", "db")
        self.assertEqual(shared.outlinesOf("db"), {b"SELECT a FROM t WHERE id = 00": first})
        self.assertIs(shared.tables(b"SELECT a FROM t WHERE id = 97", "db"), first)
        self.assertIs(shared.tables("SELECT a FROM t WHERE id = 5", "db"), first)
        self.assertEqual(len(calls), 1)
        self.assertEqual(shared.outlinesOf("other"), {})
        shared.tables(b"SELECT a FROM t1 WHERE id = 12", "db")
        self.assertNotEqual(shared.tables(b"SELECT a FROM t2 WHERE id = 12", "db"),
                            shared.tables(b"SELECT a FROM t1 WHERE id = 12", "db"))
        self.assertEqual(len(shared.outlinesOf("db")), 2)
        self.assertEqual(len(calls), 3)

    def test_bytesAndText(self) -> None:
        """
        Raw bytes and text share entries, non-ASCII bytes are parsed as
        UTF-8 with errors replaced, and a shape matched over bytes is
        the shape matched over text (a non-ASCII digit is a literal too).
        """
        shared, calls = self.shared()
        self.assertIs(shared.tables(b"DELETE FROM t WHERE a = 'x'", "d"),
                      shared.tables("DELETE FROM t WHERE a = 'y'", "d"))
        shared.tables(b"SELECT '\xff' FROM u", "d")
        self.assertEqual(calls, ["DELETE FROM t WHERE a = 'x'", "SELECT '\ufffd' FROM u"])
        self.assertIs(shared.tables("SELECT 7 FROM v", "d"),
                      shared.tables("SELECT \u0661 FROM v", "d"))
        self.assertEqual(len(calls), 3)

    def test_outlinesEmptiedWithTheCache(self) -> None:
        """
        When the shape cache is emptied, so are the outlines that lead to
        its entries: the next statement is parsed again.
        """
        from pyenvoy.filters import postgres_proxy

        self.patch(postgres_proxy, "SQL_CACHE_SIZE", 2)
        shared, calls = self.shared()
        shared.tables(b"SELECT * FROM a WHERE x = 1", "d")
        shared.tables(b"SELECT * FROM b", "d")
        held = shared.outlinesOf("d")
        self.assertEqual(len(held), 2)
        shared.tables(b"SELECT * FROM c", "d")
        self.assertEqual(list(held), [b"SELECT * FROM c"])
        shared.tables(b"SELECT * FROM a WHERE x = 2", "d")
        self.assertEqual(len(calls), 4)
