"""
Blocking helpers for tests that run C{twistd -n pyenvoy} as a subprocess:
start it on port 0 and learn its real ports from its log, talk to its
admin over HTTP, and a threaded echo server to use as its upstream.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any, NoReturn

import yaml
from twisted.trial.unittest import SynchronousTestCase

#: Seconds to wait for start-up, an exit, or any other expected event.
DEADLINE = 20.0

#: Poll interval, in seconds.
STEP = 0.05

#: pyenvoy's own start-up line for each listener (L{pyenvoy.server.Server}).
_LISTENER_LINE = re.compile(r"\blistener (?P<name>\S+) on (?P<host>\S+):(?P<port>\d+)$",
                            re.MULTILINE)

#: The admin service logs "admin on <host>:<port>" once bound.
_ADMIN_LINE = re.compile(r"\badmin on \S+:(?P<port>\d+)$", re.MULTILINE)


def twistdCommand() -> list[str]:
    """
    The venv's C{twistd} script next to this interpreter, or the same
    entry point run by this interpreter.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistdEnvironment(pythonPath: str | None = None) -> dict[str, str]:
    """
    This process's environment for a C{twistd} child, with C{PYTHONPATH}
    replaced by C{pythonPath} (or removed), so what the child can import
    is what an installed pyenvoy gives a user.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonPath is not None:
        env["PYTHONPATH"] = pythonPath
    return env


def loopback(port: int = 0) -> dict[str, Any]:
    """
    An Envoy C{Address} on 127.0.0.1, port 0 unless given.
    """
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


class Twistd:
    """
    One running C{twistd -n --pidfile= --logfile=- pyenvoy -c <file>}, in
    its own process group, its log (stdout and stderr) going to a file.

    @ivar process: the child.
    @ivar listenerPorts: the port each listener bound, by listener name.
    @ivar adminPort: the port the admin site bound, or C{None} when the
        config has no C{admin}.
    """

    def __init__(self, case: SynchronousTestCase, process: subprocess.Popen[bytes],
                 logPath: str, logFile: IO[bytes]) -> None:
        self._case = case
        self.process = process
        self.logPath = logPath
        self._logFile = logFile
        self.listenerPorts: dict[str, int] = {}
        self.adminPort: int | None = None

    def log(self) -> str:
        """
        Everything the process wrote so far, complete lines only.
        """
        with open(self.logPath, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return text[:text.rfind("\n") + 1]

    def fail(self, message: str) -> NoReturn:
        """
        Fail the test with C{message} and the process's log.
        """
        raise self._case.failureException(f"{message}\n--- twistd log ---\n{self.log()}")

    def waitForLog(self, pattern: str, deadline: float = DEADLINE) -> re.Match[str]:
        """
        Wait until a complete log line matches the regex C{pattern}.
        """
        compiled = re.compile(pattern, re.MULTILINE)
        end = time.monotonic() + deadline
        while True:
            match = compiled.search(self.log())
            if match is not None:
                return match
            if time.monotonic() > end:
                self.fail(f"no log line matching {pattern!r} within {deadline}s")
            time.sleep(STEP)

    def _waitForPorts(self, listeners: list[str], admin: bool, end: float) -> None:
        while True:
            text = self.log()
            for match in _LISTENER_LINE.finditer(text):
                self.listenerPorts[match.group("name")] = int(match.group("port"))
            admins = _ADMIN_LINE.findall(text)
            if admins:
                self.adminPort = int(admins[-1])
            if set(listeners) <= set(self.listenerPorts) and (self.adminPort or not admin):
                return
            if self.process.poll() is not None:
                self.fail(f"twistd exited with {self.process.returncode} during start-up")
            if time.monotonic() > end:
                self.fail(f"listeners {listeners} (and admin: {admin}) not all logged "
                          f"within {DEADLINE}s")
            time.sleep(STEP)

    def _waitForAdmin(self, end: float) -> None:
        # An admin response means the reactor runs, so its callWhenRunning
        # hooks (pyenvoy's SIGTERM drain among them) are installed.
        while True:
            try:
                self.request("GET", "/ready", timeout=max(0.1, end - time.monotonic()))
                return
            except OSError as e:
                if time.monotonic() > end:
                    self.fail(f"admin on port {self.adminPort} did not answer: {e}")
            time.sleep(STEP)

    def request(self, method: str, path: str, timeout: float = DEADLINE) -> tuple[int, str]:
        """
        One HTTP request to the admin port; return C{(status, body)}.
        """
        assert self.adminPort is not None, "the config has no admin"
        connection = http.client.HTTPConnection("127.0.0.1", self.adminPort, timeout=timeout)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def connect(self, listener: str, timeout: float = DEADLINE) -> socket.socket:
        """
        A blocking client socket connected to listener C{listener}.
        """
        return socket.create_connection(("127.0.0.1", self.listenerPorts[listener]),
                                        timeout=timeout)

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to the process.
        """
        self.process.send_signal(signum)

    def running(self) -> bool:
        """
        Whether the process has not exited yet.
        """
        return self.process.poll() is None

    def waitForExit(self, deadline: float = DEADLINE) -> int:
        """
        Wait for the process to exit; return its status.
        """
        try:
            return self.process.wait(deadline)
        except subprocess.TimeoutExpired:
            self.fail(f"twistd still running after {deadline}s")

    def kill(self) -> None:
        """
        Kill the whole process group if the process still runs, reap it,
        and close the log.
        """
        # Only while the child is unreaped: its pid (and group id) cannot
        # have been reused by another process yet.
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(DEADLINE)
        self._logFile.close()


def writeConfig(case: SynchronousTestCase, config: str | dict[str, Any]) -> str:
    """
    Write C{config} (YAML text, or a mapping dumped as YAML) into a fresh
    directory of the test; return its path.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "envoy.yaml")
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    with open(path, "w") as f:
        f.write(text)
    return path


def startTwistd(case: SynchronousTestCase, config: str | dict[str, Any], *args: str,
                pythonPath: str | None = None) -> Twistd:
    """
    Run C{twistd -n --pidfile= --logfile=- pyenvoy -c <config> <args>} in
    its own process group, from the config's directory; return once every
    listener of the config and the admin (if any) have logged their port
    and the admin answers.  The process group is killed when the test ends.

    @param config: YAML text or a mapping; give its listeners and admin
        port 0.
    @param args: more C{twistd pyenvoy} options, e.g. C{--drain-time-s}.
    @param pythonPath: the child's C{PYTHONPATH} (none by default).
    """
    path = writeConfig(case, config)
    raw = yaml.safe_load(config) if isinstance(config, str) else config
    static = raw.get("static_resources") or {}
    listeners = [listener["name"] for listener in static.get("listeners") or []]
    hasAdmin = raw.get("admin") is not None
    directory = os.path.dirname(path)
    logPath = os.path.join(directory, "twistd.log")
    logFile = open(logPath, "wb")
    try:
        process = subprocess.Popen(
            twistdCommand() + ["-n", "--pidfile=", "--logfile=-", "pyenvoy", "-c", path,
                               *args],
            cwd=directory, env=twistdEnvironment(pythonPath), stdin=subprocess.DEVNULL,
            stdout=logFile, stderr=subprocess.STDOUT, start_new_session=True)
    except BaseException:
        logFile.close()
        raise
    twistd = Twistd(case, process, logPath, logFile)
    case.addCleanup(twistd.kill)
    end = time.monotonic() + DEADLINE
    twistd._waitForPorts(listeners, hasAdmin, end)
    if hasAdmin:
        twistd._waitForAdmin(end)
    return twistd


class EchoServer:
    """
    A blocking echo server on 127.0.0.1 (port 0), one thread per
    connection; it echoes a half-close too.  The upstream for subprocess
    tests, whose port must be known before the config is written.

    @ivar port: the port it listens on.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(STEP)
        self.port: int = self._socket.getsockname()[1]
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            connection.settimeout(STEP)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            while not self._stopping.is_set():
                try:
                    data = connection.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                try:
                    if not data:
                        connection.shutdown(socket.SHUT_WR)
                        return
                    connection.settimeout(DEADLINE)
                    connection.sendall(data)
                    connection.settimeout(STEP)
                except OSError:
                    return

    def stop(self) -> None:
        """
        Stop accepting and serving; wait for the threads.
        """
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(DEADLINE)
        self._socket.close()


def startEchoServer(case: SynchronousTestCase) -> EchoServer:
    """
    An L{EchoServer} stopped when the test ends.
    """
    server = EchoServer()
    case.addCleanup(server.stop)
    return server


def receiveExactly(sock: socket.socket, size: int) -> bytes:
    """
    Read exactly C{size} bytes (fewer only if the peer closes first).
    """
    chunks: list[bytes] = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receiveAll(sock: socket.socket) -> bytes:
    """
    Read until the peer closes its side.
    """
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def refused(port: int, deadline: float = DEADLINE) -> bool:
    """
    Whether connecting to 127.0.0.1:C{port} is refused within C{deadline}
    seconds (connections that are accepted are closed and retried).
    """
    end = time.monotonic() + deadline
    while True:
        try:
            probe = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        except ConnectionRefusedError:
            return True
        probe.close()
        if time.monotonic() > end:
            return False
        time.sleep(STEP)
