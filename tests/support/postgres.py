"""
PostgreSQL pieces for integration tests: a real server (Debian's
C{postgresql}) in a temporary directory on a free loopback port, with TLS
on, and a pyenvoy config with postgres_proxy in front of tcp_proxy.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.mongo import freePort
from tests.support.net import tcpProxyConfig

POSTGRES_PROXY = ("type.googleapis.com/envoy.extensions.filters.network.postgres_proxy."
                  "v3alpha.PostgresProxy")
DATABASE = "pyenvoy_test"


def pgbin(case: TestCase) -> str:
    """
    The directory of the newest installed PostgreSQL's binaries; fails the
    test when there is none.
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    case.assertTrue(found, "PostgreSQL is not installed (apt-get install postgresql; "
                           "`make system-deps` does it)")
    return os.path.dirname(found[-1])


def _postgresUser(case: TestCase) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        case.fail("no 'postgres' OS user (the postgresql package creates it; "
                  "or useradd --system postgres)")
        raise


def _start(binaries: str, workdir: str, port: int) -> tuple[bool, str]:
    """
    initdb (once), a self-signed certificate, pg_ctl start: blocking, run
    in a thread.  Returns (started, log tail).
    """
    user = pwd.getpwnam("postgres")
    data = os.path.join(workdir, "data")
    asPostgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                  "--init-groups"] if os.getuid() == 0 else []
    run = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not os.path.exists(data):
        done = subprocess.run(asPostgres + [
            os.path.join(binaries, "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync"], **run)
        if done.returncode:
            return False, done.stdout.decode("utf-8", "replace")[-2000:]
        key, crt = os.path.join(data, "server.key"), os.path.join(data, "server.crt")
        done = subprocess.run([
            "openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=localhost",
            "-newkey", "rsa:2048", "-keyout", key, "-out", crt], **run)
        if done.returncode:
            return False, done.stdout.decode("utf-8", "replace")[-2000:]
        for path in (key, crt):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(key, 0o600)
    done = subprocess.run(asPostgres + [
        os.path.join(binaries, "pg_ctl"), "-D", data, "-l", os.path.join(workdir, "server.log"),
        "-w", "-t", "30", "-o",
        f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
        "start"], **run)
    if done.returncode:
        logPath = os.path.join(workdir, "server.log")
        tail = open(logPath, errors="replace").read()[-2000:] if os.path.exists(logPath) else ""
        return False, done.stdout.decode("utf-8", "replace")[-2000:] + tail
    done = subprocess.run([os.path.join(binaries, "createdb"), "-h", "127.0.0.1", "-p", str(port),
                           "-U", "postgres", DATABASE], **run)
    return done.returncode == 0, done.stdout.decode("utf-8", "replace")[-2000:]


def _stop(workdir: str) -> None:
    pidfile = os.path.join(workdir, "data", "postmaster.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.readline())
    except (OSError, ValueError):
        pid = None
    if pid is not None:
        try:
            os.kill(pid, 2)  # SIGINT: fast shutdown
        except OSError:
            pid = None
    while pid is not None:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        import time
        time.sleep(0.05)
    shutil.rmtree(workdir, ignore_errors=True)


async def startPostgres(case: TestCase) -> int:
    """
    Start PostgreSQL (TLS on, fsync off, trust auth, database
    C{pyenvoy_test}) on a free 127.0.0.1 port, stopped and removed when
    C{case} ends; return the port.  Fails the test if PostgreSQL is
    missing.
    """
    binaries = pgbin(case)
    user = _postgresUser(case)
    workdir = tempfile.mkdtemp(prefix="pyenvoy-pg-")
    os.chown(workdir, user.pw_uid, user.pw_gid)
    os.chmod(workdir, 0o700)
    case.addCleanup(deferToThread, _stop, workdir)
    output = ""
    for attempt in range(3):
        port = freePort()
        started, output = await deferToThread(_start, binaries, workdir, port)
        if started:
            return port
        await deferLater(reactor, 0.1, lambda: None)
    case.fail(f"PostgreSQL did not start:\n{output}")
    raise AssertionError("unreachable")


def postgresProxyConfig(port: int, statPrefix: str, **options: object) -> dict:
    """
    A bootstrap whose listener "proxy" runs postgres_proxy (C{statPrefix},
    C{options}) then tcp_proxy to 127.0.0.1:C{port}.
    """
    raw = tcpProxyConfig([port])
    filters = raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    typed = {"@type": POSTGRES_PROXY, "stat_prefix": statPrefix}
    typed.update(options)
    filters.insert(0, {"name": "envoy.filters.network.postgres_proxy", "typed_config": typed})
    return raw
