"""Shared helpers for the scripts in bench/.

Everything here is plain standard library so that a bench script runs with
any Python 3.9+ interpreter.  The helpers cover the chores every benchmark
repeats:

* picking free loopback ports (``free_port``) and waiting for a listener to
  accept connections (``wait_for_port``);
* starting long-lived processes in their own process group and killing the
  whole group afterwards, even on Ctrl-C (``ProcessManager``);
* running a bounded client command (``run_command``);
* alternating A B / B A run orders (``rotated``, ``schedule``);
* collecting samples and printing medians and ratio tables (``Results``,
  ``format_table``).
"""

import os
import signal
import socket
import statistics
import subprocess
import time

LOOPBACK = "127.0.0.1"


class SetupError(Exception):
    """The benchmark could not set up something it cannot do without."""


class StartError(SetupError):
    """A process did not come up; ``detail`` holds the tail of its log."""

    def __init__(self, message, detail=""):
        super().__init__(message)
        self.detail = detail

    def describe(self):
        """Return the message followed by the indented log tail, if any."""
        text = str(self)
        if self.detail:
            text += "\n" + indent(self.detail, "    | ")
        return text


class RunError(Exception):
    """A single measurement failed (timeout, bad exit code, bad output)."""


class Interrupted(KeyboardInterrupt):
    """Raised from a SIGTERM/SIGHUP handler so ``finally`` blocks run."""


def indent(text, prefix):
    """Prefix every line of ``text`` with ``prefix``."""
    return "\n".join(prefix + line for line in text.splitlines())


def install_signal_handlers():
    """Turn SIGTERM and SIGHUP into ``Interrupted`` exceptions, and make
    SIGINT raise KeyboardInterrupt even if it was ignored when we started
    (as for ``cmd &`` in a non-interactive shell)."""

    def handler(signum, frame):
        raise Interrupted("signal %d" % signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


# Ports -------------------------------------------------------------------

_handed_out = set()


def free_port(host=LOOPBACK):
    """Return a currently free TCP port on ``host``.

    Ports already returned by this function are never returned twice in one
    process, so several calls in a row give distinct ports.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise SetupError("could not find a free port on %s" % host)


def port_accepts(host, port, timeout=0.5):
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host, port, timeout, process=None, interval=0.05):
    """Poll-connect to ``host:port`` until it accepts or ``timeout`` passes.

    If ``process`` (a ``Process``) exits meanwhile, fail at once.  Raises
    ``StartError`` carrying the tail of the process log on failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.alive():
            raise StartError(
                "%s exited with code %s before listening on %s:%d"
                % (process.name, process.returncode(), host, port),
                process.log_tail(),
            )
        if port_accepts(host, port):
            return
        if time.monotonic() >= deadline:
            detail = process.log_tail() if process is not None else ""
            raise StartError(
                "%s did not accept connections on %s:%d within %.0fs"
                % (process.name if process else "listener", host, port, timeout),
                detail,
            )
        time.sleep(interval)


# Processes ---------------------------------------------------------------


def tail_file(path, lines=15, max_bytes=64 * 1024):
    """Return the last ``lines`` lines of the file at ``path`` ('' if none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def kill_group(popen, timeout=5.0):
    """SIGTERM the process group of ``popen``, then SIGKILL if needed."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            popen.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Members of the group may outlive the leader; make sure they go too.
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Process:
    """A long-lived child process running in its own process group."""

    def __init__(self, name, argv, popen, log_path):
        self.name = name
        self.argv = argv
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self):
        """The child's pid (also its process group id)."""
        return self.popen.pid

    def alive(self):
        """Return True while the process has not exited."""
        return self.popen.poll() is None

    def returncode(self):
        """The exit code, or None while running."""
        return self.popen.poll()

    def log_tail(self, lines=8):
        """The last lines of the combined stdout/stderr log ('' if none)."""
        if self.log_path is None:
            return ""
        return tail_file(self.log_path, lines)

    def stop(self, timeout=5.0):
        """Terminate the whole process group and reap the child."""
        kill_group(self.popen, timeout)


class ProcessManager:
    """Starts processes and guarantees they are all stopped at the end.

    Use as a context manager; ``stop_all`` runs on exit, in reverse start
    order, whatever exception is propagating.
    """

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop_all()
        return False

    def start(self, name, argv, env=None, cwd=None, log=True):
        """Start ``argv`` in a new session; log stdout+stderr to a file.

        With ``log=False`` the output goes to /dev/null.
        """
        log_path = None
        if log:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            log_path = os.path.join(self.workdir, safe + ".log")
            output = open(log_path, "ab")
        else:
            output = subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd or self.workdir,
                start_new_session=True,
            )
        except OSError as e:
            raise StartError("cannot start %s (%s): %s" % (name, argv[0], e))
        finally:
            if log:
                output.close()
        process = Process(name, argv, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self, process):
        """Stop one process and forget it."""
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self):
        """Stop every process still tracked, newest first."""
        while self.processes:
            process = self.processes.pop()
            try:
                process.stop()
            except KeyboardInterrupt:
                # Keep cleaning up even if the user presses Ctrl-C again.
                process.stop(timeout=0.5)


class CommandResult:
    """Outcome of ``run_command``."""

    def __init__(self, returncode, stdout, stderr, elapsed):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    def output_tail(self, lines=10):
        """The last lines of stderr+stdout, for error messages."""
        text = (self.stderr + "\n" + self.stdout).replace("\r", "\n")
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def run_command(argv, timeout, env=None, cwd=None):
    """Run a client command to completion, bounded by ``timeout`` seconds.

    The command runs in its own process group, which is killed on timeout
    or on KeyboardInterrupt.  Raises ``RunError`` on timeout or if the
    command cannot be started; the caller checks ``returncode``.
    """
    start = time.monotonic()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        raise RunError("cannot run %s: %s" % (argv[0], e))
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(popen, timeout=1.0)
        popen.communicate()
        raise RunError("%s timed out after %.0fs" % (os.path.basename(argv[0]), timeout))
    except BaseException:
        kill_group(popen, timeout=1.0)
        raise
    return CommandResult(
        popen.returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        time.monotonic() - start,
    )


# Scheduling --------------------------------------------------------------


def rotated(items, shift):
    """Return ``items`` rotated left by ``shift`` (A B C, then B C A, ...)."""
    items = list(items)
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


def schedule(rounds, workloads, targets):
    """Yield ``(round, workload, target)`` in alternating order.

    Each round runs every workload against every target once; the target
    order rotates by one each round so that slow drift (thermal, caches,
    background load) is spread over all targets instead of hitting one.
    """
    for round_index in range(rounds):
        for workload in workloads:
            for target in rotated(targets, round_index):
                yield round_index, workload, target


class Deadline:
    """A wall-clock budget measured with the monotonic clock."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self):
        """Seconds since the deadline was created."""
        return time.monotonic() - self.start

    def remaining(self):
        """Seconds left (may be negative)."""
        return self.seconds - self.elapsed()

    def expired(self):
        """True once the budget is used up."""
        return self.remaining() <= 0


# Results -----------------------------------------------------------------


def median(values):
    """Median of ``values``, or None for an empty sequence."""
    values = list(values)
    return statistics.median(values) if values else None


def ratio(value, reference):
    """``value / reference``, or None if either is missing or zero."""
    if value is None or not reference:
        return None
    return value / reference


class Results:
    """Samples per (line, target); all metrics are higher-is-better."""

    def __init__(self, lines, targets):
        self.lines = list(lines)
        self.targets = list(targets)
        self.samples = {line: {t: [] for t in self.targets} for line in self.lines}
        self.failures = {line: {t: 0 for t in self.targets} for line in self.lines}

    def add(self, line, target, value):
        """Record one sample."""
        self.samples[line][target].append(value)

    def add_failure(self, line, target):
        """Count one failed run for (line, target)."""
        self.failures[line][target] += 1

    def median(self, line, target):
        """Median of the samples of (line, target), or None."""
        if target not in self.samples[line]:
            return None
        return median(self.samples[line][target])

    def spread(self, line, target):
        """(max - min) / median of (line, target), or None."""
        values = self.samples[line].get(target) or []
        middle = median(values)
        if not middle:
            return None
        return (max(values) - min(values)) / middle

    def ratio(self, line, target, reference):
        """Ratio of the medians of ``target`` and ``reference`` on ``line``."""
        return ratio(self.median(line, target), self.median(line, reference))

    def table(self, line, baselines, scale=1.0, digits=1):
        """Table for one line: target, n, median, min, max, spread, ratios."""
        headers = ["target", "n", "median", "min", "max", "spread"]
        headers += ["vs %s" % b for b in baselines]
        rows = []
        for target in self.targets:
            values = self.samples[line][target]
            n = "%d" % len(values)
            if self.failures[line][target]:
                n += " (%d failed)" % self.failures[line][target]
            if values:
                cells = [fmt_number(v / scale, digits) for v in (median(values), min(values), max(values))]
            else:
                cells = ["-", "-", "-"]
            spread = self.spread(line, target)
            cells.append("-" if spread is None else "%.0f%%" % (100 * spread))
            ratios = [fmt_ratio(self.ratio(line, target, b)) for b in baselines]
            rows.append([target, n] + cells + ratios)
        return format_table(headers, rows)

    def to_json(self):
        """A JSON-serialisable dict of samples, failures and medians."""
        return {
            "samples": self.samples,
            "failures": self.failures,
            "medians": {
                line: {t: self.median(line, t) for t in self.targets} for line in self.lines
            },
        }


def fmt_number(value, digits=1):
    """Format a number with thousands separators, '-' for None."""
    if value is None:
        return "-"
    return "{:,.{d}f}".format(value, d=digits)


def fmt_ratio(value):
    """Format a ratio as '1.23x', '-' for None."""
    return "-" if value is None else "%.2fx" % value


def format_table(headers, rows):
    """Format rows as a plain-text table; first column left-aligned."""
    columns = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in columns) for i in range(len(headers))]

    def render(row):
        cells = []
        for i, cell in enumerate(row):
            cells.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
        return "  ".join(cells).rstrip()

    out = [render(headers), render(["-" * w for w in widths])]
    out.extend(render(row) for row in columns[1:])
    return "\n".join(out)
