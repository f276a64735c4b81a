"""
postgres_proxy under real workloads, through pyenvoy to a real PostgreSQL:
pgbench (simple, extended and prepared protocols), psycopg's extended
protocol, COPY in and out of several MiB, an error inside a transaction
followed by ROLLBACK, and a CancelRequest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from pyenvoy.filters.postgres_proxy import COUNTERS, METADATA_NAMESPACE
from tests.support.net import listenerPort, startServer, stat
from tests.support.postgres import DATABASE, pgbin, postgresProxyConfig, startPostgres

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def counters(server: Any) -> dict[str, int]:
    """
    The non-zero C{postgres.pg.*} counters of C{server}.
    """
    values = {name: stat(server, f"postgres.pg.{name}") for name in COUNTERS}
    return {k: v for k, v in values.items() if v}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """
    The counters that changed from C{before} to C{after}, by how much.
    """
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def connect(port: int, **kw: Any) -> Any:
    """
    A psycopg connection to the proxy on C{port}, cleartext, autocommit.
    """
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=DATABASE,
                           sslmode="disable", gssencmode="disable", autocommit=True,
                           connect_timeout=10, **kw)


class _Base(TestCase):
    """
    A PostgreSQL and a pyenvoy (postgres_proxy + tcp_proxy) in front of it.
    """

    timeout = 180

    async def proxy(self, accessLog: str | None = None) -> tuple[Any, int]:
        """
        Start PostgreSQL and pyenvoy; return the server and its port.  With
        C{accessLog}, tcp_proxy logs the postgres_proxy dynamic metadata of
        each connection as one JSON line to that file.
        """
        pgPort = await startPostgres(self)
        raw = postgresProxyConfig(pgPort, "pg")
        if accessLog is not None:
            tcp = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][1]
            tcp["typed_config"]["access_log"] = [{
                "name": "envoy.access_loggers.file",
                "typed_config": {"@type": FILE_LOG, "path": accessLog, "log_format": {
                    "text_format_source": {"inline_string":
                                           f"%DYNAMIC_METADATA({METADATA_NAMESPACE})%\n"}}}}]
        server = startServer(self, raw)
        return server, listenerPort(server)

    async def settled(self, server: Any, name: str, value: int) -> None:
        """
        Wait (at most 5 s) until counter C{name} reaches C{value}: the last
        server bytes may still be on their way through the proxy when the
        client returns.
        """
        for _ in range(100):
            if stat(server, f"postgres.pg.{name}") >= value:
                return
            await deferLater(reactor, 0.05, lambda: None)


def _pgbench(port: int, binaries: str, args: list[str]) -> subprocess.CompletedProcess:
    """
    Run pgbench against the proxy (blocking; in a thread), bounded to 120 s.
    """
    env = dict(os.environ, PGSSLMODE="disable", PGGSSENCMODE="disable")
    return subprocess.run(
        [os.path.join(binaries, "pgbench"), *args, "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", DATABASE],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, env=env)


class PgbenchTests(_Base):
    """
    pgbench through the proxy: its TPC-B-like script counted exactly.
    """

    async def test_pgbench(self) -> None:
        """pgbench -i, then -t runs in all three protocols counted exactly as Envoy."""
# -i includes a COPY of 100,000 rows; -t 15 -c 3 runs with -M simple,
        # extended and prepared must each give the exact statement and
        # transaction counts of pgbench's TPC-B-like script.
        server, port = await self.proxy()
        binaries = pgbin(self)
        done = await threads.deferToThread(_pgbench, port, binaries, ["-i", "-s", "1", "-q"])
        self.assertEqual(done.returncode, 0, done.stderr)
        init = counters(server)
        # pgbench -i: one session; 1 branch + 10 tellers inserted row by
        # row, the 100,000 accounts by COPY (one CopyData each).
        self.assertEqual(init["sessions_unencrypted"], 1)
        self.assertEqual(init["statements_insert"], 11)
        self.assertGreater(init["messages_frontend"], 100000)
        self.assertNotIn("decoding_error", init)
        self.assertNotIn("errors", init)

        transactions, clients = 15, 3
        t = transactions * clients
        for protocol, parsed in (("simple", 7 * t + 2), ("extended", 7 * t + 2),
                                 ("prepared", 7 * clients + 2)):
            before = counters(server)
            done = await threads.deferToThread(
                _pgbench, port, binaries,
                ["-n", "-M", protocol, "-t", str(transactions), "-c", str(clients)])
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn(f"number of transactions actually processed: {t}/{t}", done.stdout)
            await self.settled(server, "sessions", before["sessions"] + clients + 1)
            await self.settled(server, "statements", before["statements"] + 7 * t + 2)
            changed = delta(counters(server), before)
            messages = {k: changed.pop(k) for k in list(changed) if k.startswith("messages")}
            # Per transaction: BEGIN; UPDATE; SELECT; UPDATE; UPDATE;
            # INSERT; END (its tag is COMMIT).  BEGIN and COMMIT are
            # statements_other; the transaction counts once.  pgbench's
            # own connection first runs two catalog SELECTs outside any
            # transaction: each its own transaction, as Envoy counts them.
            # Sessions: that connection and one per client.  Parse
            # messages are parsed SQL too: one per statement with
            # -M extended, one per statement and client with -M prepared.
            self.assertEqual(changed, {
                "sessions": clients + 1, "sessions_unencrypted": clients + 1,
                "statements": 7 * t + 2, "statements_other": 2 * t,
                "statements_update": 3 * t, "statements_select": t + 2,
                "statements_insert": t,
                "transactions": t + 2, "transactions_commit": t + 2,
                "statements_parsed": parsed,
            }, protocol)
            self.assertEqual(messages["messages"],
                             messages["messages_frontend"] + messages["messages_backend"])


def _extended(port: int) -> list[Any]:
    """
    psycopg's extended protocol: parameters bound server-side, prepared
    statements (C{prepare=True}: one Parse, then Bind/Execute only), an
    executemany (blocking; in a thread).
    """
    out: list[Any] = []
    with connect(port) as conn:
        conn.execute("CREATE TABLE ext (id int PRIMARY KEY, v text)")
        for i in range(5):
            conn.execute("INSERT INTO ext VALUES (%s, %s)", (i, f"v{i}"), prepare=True)
        out.append(conn.execute("SELECT v FROM ext WHERE id >= %s ORDER BY id", (2,),
                                prepare=True).fetchall())
        with conn.cursor() as cur:
            cur.executemany("UPDATE ext SET v = %s WHERE id = %s", [("x", 0), ("y", 1)])
        conn.execute("CREATE TABLE ext2 (id int, v text)")
        conn.execute("INSERT INTO ext2 SELECT * FROM ext WHERE id < %s", (2,))
        out.append(conn.execute("SELECT v FROM ext2 ORDER BY id").fetchall())
    return out


class ExtendedProtocolTests(_Base):
    """
    psycopg 3's server-side binding: Parse/Bind/Describe/Execute/Sync.
    """

    async def test_extendedProtocol(self) -> None:
        """Bound and prepared statements: counted, parsed per Parse, in the metadata."""
        log = self.mktemp()
        server, port = await self.proxy(accessLog=log)
        result = await threads.deferToThread(_extended, port)
        self.assertEqual(result, [[("v2",), ("v3",), ("v4",)], [("x",), ("y",)]])
        await self.settled(server, "statements", 12)
        changed = counters(server)
        messages = {k: changed.pop(k) for k in list(changed) if k.startswith("messages")}
        self.assertEqual(changed, {
            "sessions": 1, "sessions_unencrypted": 1,
            # CREATE x2, INSERT x5, SELECT, UPDATE x2, INSERT ... SELECT, SELECT
            "statements": 12, "statements_other": 2, "statements_insert": 6,
            "statements_select": 2, "statements_update": 2,
            "transactions": 12, "transactions_commit": 12,
            # One Parse each: CREATE x2, the prepared INSERT and SELECT,
            # the UPDATE of executemany, INSERT ... SELECT, SELECT.
            "statements_parsed": 7,
        })
        self.assertEqual(messages["messages"],
                         messages["messages_frontend"] + messages["messages_backend"])
        lines: list[str] = []
        for _ in range(100):
            if os.path.exists(log):
                with open(log) as f:
                    lines = f.read().splitlines()
                if lines:
                    break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(lines), 1, lines)
        # Each statement replaces the entries of the tables it names.
        self.assertEqual(json.loads(lines[0]), {
            f"ext.{DATABASE}": ["select"], f"ext2.{DATABASE}": ["select"]})


def _copy(port: int, rows: int) -> tuple[str, str, int]:
    """
    COPY C{rows} rows (about 64 bytes each) in and back out; the SHA-256
    of what went in and of what came out, and the bytes sent (blocking;
    in a thread).
    """
    sent = hashlib.sha256()
    received = hashlib.sha256()
    size = 0
    with connect(port) as conn:
        conn.execute("CREATE TABLE bulk (id int, payload text)")
        with conn.cursor() as cur:
            with cur.copy("COPY bulk FROM STDIN") as copy:
                chunk: list[bytes] = []
                for i in range(rows):
                    line = b"%d\t%s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode())
                    chunk.append(line)
                    if len(chunk) == 1000:
                        data = b"".join(chunk)
                        copy.write(data)
                        sent.update(data)
                        size += len(data)
                        chunk = []
                data = b"".join(chunk)
                copy.write(data)
                sent.update(data)
                size += len(data)
            with cur.copy("COPY (SELECT * FROM bulk ORDER BY id) TO STDOUT") as copy:
                for block in copy:
                    received.update(block)
    return sent.hexdigest(), received.hexdigest(), size


class CopyTests(_Base):
    """
    COPY streams of several MiB through the proxy.
    """

    async def test_copyInAndOut(self) -> None:
        """4 MiB COPY in and out come back byte for byte, counted with no decoding error."""
        server, port = await self.proxy()
        rows = 4 * 1024 * 1024 // 70 + 1
        sentHash, receivedHash, size = await threads.deferToThread(_copy, port, rows)
        self.assertGreaterEqual(size, 4 * 1024 * 1024)
        self.assertEqual(sentHash, receivedHash)
        await self.settled(server, "statements", 3)
        changed = counters(server)
        self.assertEqual({k: changed.get(k) for k in (
            "statements", "statements_other", "transactions", "transactions_commit",
            "errors", "decoding_error")}, {
            "statements": 3, "statements_other": 3, "transactions": 3,
            "transactions_commit": 3, "errors": None, "decoding_error": None})
        # PostgreSQL sends one CopyData per row.
        self.assertGreater(changed["messages_backend"], rows)
        self.assertEqual(changed["messages"],
                         changed["messages_frontend"] + changed["messages_backend"])


def _errorThenRollback(port: int) -> list[str]:
    """
    BEGIN; INSERT; a division by zero; a statement in the failed
    transaction; ROLLBACK; then the same through psycopg's transaction
    block (blocking; in a thread).
    """
    import psycopg

    out = []
    with connect(port) as conn:
        conn.execute("CREATE TABLE acct (id int)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO acct VALUES (1)")
        try:
            conn.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            out.append("division")
        try:
            conn.execute("SELECT 1")
        except psycopg.errors.InFailedSqlTransaction:
            out.append("failed transaction")
        conn.execute("ROLLBACK")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO acct VALUES (2)")
                conn.execute("INSERT INTO no_such_table VALUES (3)")
        except psycopg.errors.UndefinedTable:
            out.append("undefined")
        out.append(str(conn.execute("SELECT count(*) FROM acct").fetchone()[0]))
    return out


class ErrorTests(_Base):
    """
    An error inside a transaction, then ROLLBACK.
    """

    async def test_errorThenRollback(self) -> None:
        """Errors in a transaction: errors_error, and ROLLBACKs transactions_rollback."""
# The failed statements have no CommandComplete, so they are not
        # statements.
        server, port = await self.proxy()
        result = await threads.deferToThread(_errorThenRollback, port)
        self.assertEqual(result, ["division", "failed transaction", "undefined", "0"])
        await self.settled(server, "statements", 8)
        changed = counters(server)
        for name in ("messages", "messages_frontend", "messages_backend"):
            changed.pop(name)
        self.assertEqual(changed, {
            "sessions": 1, "sessions_unencrypted": 1,
            # CREATE, BEGIN, INSERT, ROLLBACK, BEGIN, INSERT, ROLLBACK,
            # SELECT count
            "statements": 8, "statements_other": 5, "statements_insert": 2,
            "statements_select": 1,
            # CREATE and the last SELECT are their own transactions.
            "transactions": 4, "transactions_commit": 2, "transactions_rollback": 2,
            "errors": 3, "errors_error": 3,
            "statements_parsed": 11,
        })


def _cancel(port: int) -> tuple[str, float]:
    """
    Start C{SELECT pg_sleep(30)}; cancel it from another thread after
    0.5 s; the error's class and how long the query lasted (blocking; in
    a thread).
    """
    import psycopg

    with connect(port) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe, kwargs={"timeout": 10})
        start = time.monotonic()
        timer.start()
        try:
            conn.execute("SELECT pg_sleep(30)")
            outcome = "not cancelled"
        except psycopg.errors.QueryCanceled:
            outcome = "cancelled"
        finally:
            timer.join(15)
        return outcome, time.monotonic() - start


class CancelTests(_Base):
    """
    A CancelRequest through the proxy.
    """

    async def test_cancel(self) -> None:
        """
        A CancelRequest cancels the query at once.  Its connection counts
        as Envoy counts it: as an encrypted session only when the secret
        key's last byte is 0 (Envoy reads the first message as NUL-ended
        strings first), else not at all.
        """
        # psycopg's cancel opens a second connection through the proxy with
        # a CancelRequest; the cancelled query is one ErrorResponse and no
        # statement.  The query came back cancelled, so the CancelRequest
        # went through the proxy (and was counted) before.
        server, port = await self.proxy()
        outcome, elapsed = await threads.deferToThread(_cancel, port)
        self.assertEqual(outcome, "cancelled")
        self.assertLess(elapsed, 10)
        await self.settled(server, "errors", 1)
        changed = counters(server)
        encrypted = changed.get("sessions_encrypted")
        self.assertIn(encrypted, (None, 1))
        self.assertEqual({k: changed.get(k) for k in (
            "sessions", "sessions_unencrypted", "errors",
            "errors_error", "statements", "statements_parsed")}, {
            "sessions": 1 + (encrypted or 0), "sessions_unencrypted": 1,
            "errors": 1, "errors_error": 1, "statements": None, "statements_parsed": 1})
