"""
C{twistd pyenvoy} as a user runs it: validate mode, config errors on
stderr with exit 1 before anything is bound, and a port that cannot be
bound stopping start-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
from typing import Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import twistdCommand

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CONFIG = os.path.join(os.path.dirname(HERE), "etc", "pyenvoy.yaml")
ECHO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
TIMEOUT = 60



def freePort() -> int:
    """
    A port on 127.0.0.1 that nothing was listening on a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canBind(port: int) -> bool:
    """
    Whether 127.0.0.1:C{port} can be bound right now.
    """
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def echoListener(name: str, port: int) -> str:
    """
    YAML for one listener item running the echo filter on 127.0.0.1:C{port}.
    """
    return textwrap.indent(textwrap.dedent(f"""\
        - name: {name}
          address:
            socket_address: {{address: 127.0.0.1, port_value: {port}}}
          filter_chains:
          - filters:
            - name: envoy.filters.network.echo
              typed_config:
                "@type": {ECHO_TYPE}
        """), "  ")


class TwistdTestCase(SynchronousTestCase):
    """
    Runs C{twistd} in a fresh directory without C{PYTHONPATH}.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def writeConfig(self, text: str, name: str = "envoy.yaml") -> str:
        """
        Write a config into the test's directory; return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{twistd} with C{args}; the result has text stdout and stderr.
        """
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        return subprocess.run(twistdCommand() + list(args), cwd=self.directory, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)

    def assertNoTraceback(self, result: subprocess.CompletedProcess[str]) -> None:
        """
        The user saw messages, not a Python traceback.
        """
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("Traceback", result.stdout)

    def assertLines(self, text: str, lines: Sequence[str]) -> None:
        """
        Each of C{lines} is a whole line of C{text}.
        """
        got = [line.strip() for line in text.splitlines()]
        for line in lines:
            self.assertIn(line, got, text)


class ValidateTests(TwistdTestCase):
    """
    C{--mode validate} checks a config and exits 0, or 1 with the errors.
    """

    def test_shippedConfig(self) -> None:
        """
        etc/pyenvoy.yaml validates: exit 0 and "OK" on stdout.
        """
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", SHIPPED_CONFIG)
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{SHIPPED_CONFIG}' OK\n"), result.stderr)
        self.assertNoTraceback(result)

    def test_jsonConfig(self) -> None:
        """
        A C{.json} config validates like a YAML one.
        """
        path = self.writeConfig(
            '{"staticResources": {"clusters": [{"name": "backend", "connectTimeout": "1s"}]}}',
            "envoy.json")
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", path)
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{path}' OK\n"), result.stderr)

    def test_configYamlAlone(self) -> None:
        """
        C{--config-yaml} without C{-c} is a whole config.
        """
        port = freePort()
        result = self.twistd("pyenvoy", "--mode", "validate", "--config-yaml",
                             "static_resources:\n  listeners:\n" + echoListener("main", port))
        self.assertEqual((result.returncode, result.stdout),
                         (0, "configuration '--config-yaml' OK\n"), result.stderr)

    def test_configYamlMerged(self) -> None:
        """
        C{--config-yaml} merges over C{-c}: its listener may use the file's cluster.
        """
        path = self.writeConfig(textwrap.dedent("""\
            static_resources:
              clusters:
              - name: backend
                load_assignment:
                  cluster_name: backend
                  endpoints:
                  - lb_endpoints:
                    - endpoint:
                        address:
                          socket_address: {address: 127.0.0.1, port_value: 8080}
            """))
        overlay = textwrap.dedent("""\
            static_resources:
              listeners:
              - name: front
                address:
                  socket_address: {address: 127.0.0.1, port_value: 10000}
                filter_chains:
                - filters:
                  - name: envoy.filters.network.tcp_proxy
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                      stat_prefix: front
                      cluster: %s
            """)
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", path,
                             "--config-yaml", overlay % "backend")
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{path}' OK\n"), result.stderr)
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", path,
                             "--config-yaml", overlay % "bakend")
        self.assertEqual(result.returncode, 1)
        self.assertLines(result.stderr, [
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster: "
            "unknown cluster 'bakend'"])

    def test_errors(self) -> None:
        """
        A bad config exits 1 and lists every error with its path on stderr.
        """
        path = self.writeConfig(textwrap.dedent("""\
            static_resources:
              listeners:
              - name: main
                address:
                  socket_address: {address: localhost, port_value: 10000}
                filter_chains:
                - filters:
                  - name: envoy.filters.network.echoo
              clusters:
              - name: backend
                connect_timeout: 250ms
            """))
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", path)
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertLines(result.stderr, [
            f"pyenvoy: {path}: 3 config error(s):",
            "static_resources.clusters[0].connect_timeout: expected a duration like '0.25s', "
            "got the string '250ms'",
            "static_resources.listeners[0].address.socket_address.address: 'localhost' is not "
            "an IP address (listeners and STATIC clusters need one)",
        ])
        self.assertIn("static_resources.listeners[0].filter_chains[0].filters[0].name: "
                      "unknown network filter 'envoy.filters.network.echoo'; known: ",
                      result.stderr)
        self.assertNoTraceback(result)

    def test_missingFile(self) -> None:
        """
        A config file that does not exist is one error, exit 1.
        """
        path = os.path.join(self.directory, "nope.yaml")
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", path)
        self.assertEqual(result.returncode, 1)
        self.assertLines(result.stderr, [
            f"cannot read config file {path!r}: No such file or directory"])
        self.assertNoTraceback(result)

    def test_badConfigYaml(self) -> None:
        """
        A C{--config-yaml} that is not YAML says so, exit 1.
        """
        result = self.twistd("pyenvoy", "--mode", "validate", "--config-yaml", "a: [")
        self.assertEqual(result.returncode, 1)
        self.assertIn("pyenvoy: --config-yaml is not valid YAML", result.stderr)
        self.assertNoTraceback(result)


class CommandLineTests(TwistdTestCase):
    """
    The options C{twistd pyenvoy} takes.
    """

    def test_missingConfig(self) -> None:
        """
        Without C{-c} or C{--config-yaml}, twistd prints the usage and fails.
        """
        result = self.twistd("pyenvoy")
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("Usage: twistd [options]", output)
        self.assertIn("--config-path=", output)
        self.assertIn("pyenvoy: a config is required: -c envoy.yaml or --config-yaml", output)
        self.assertNoTraceback(result)

    def test_badMode(self) -> None:
        """
        A mode other than serve or validate is a usage error.
        """
        result = self.twistd("pyenvoy", "--mode", "check", "-c", SHIPPED_CONFIG)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--mode must be serve or validate, not 'check'",
                      result.stdout + result.stderr)

    def test_badDrainTime(self) -> None:
        """
        C{--drain-time-s} must be a number of seconds.
        """
        result = self.twistd("pyenvoy", "--drain-time-s", "soon", "-c", SHIPPED_CONFIG)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--drain-time-s must be a number of seconds", result.stdout + result.stderr)

    def test_envoyOptionsAccepted(self) -> None:
        """
        Envoy's --concurrency, --base-id, --disable-hot-restart are accepted.
        """
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", SHIPPED_CONFIG,
                             "--concurrency", "4", "--base-id", "7", "--disable-hot-restart",
                             "--drain-time-s", "600")
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{SHIPPED_CONFIG}' OK\n"), result.stderr)
        self.assertIn("pyenvoy: --concurrency is ignored; pyenvoy runs one event loop",
                      result.stderr)

    def test_envoyLoggingAndRestartOptionsAccepted(self) -> None:
        """
        Envoy's logging, drain-strategy, hot-restart and service options are
        accepted, so an Envoy command line works as it is; a bad log level
        is refused as Envoy refuses it.
        """
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", SHIPPED_CONFIG,
                             "-l", "debug", "--component-log-level", "upstream:debug",
                             "--log-format", "[%Y] %v", "--log-path", "/dev/null",
                             "--drain-strategy", "immediate", "--parent-shutdown-time-s", "5",
                             "--restart-epoch", "0", "--service-node", "n",
                             "--service-cluster", "c", "--service-zone", "z")
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{SHIPPED_CONFIG}' OK\n"), result.stderr)
        result = self.twistd("pyenvoy", "--mode", "validate", "-c", SHIPPED_CONFIG,
                             "--log-level", "loud")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--log-level must be one of", result.stdout + result.stderr)


class StartupTests(TwistdTestCase):
    """
    Serving: nothing is bound for a bad config, and a port that cannot be
    bound stops start-up.
    """

    def test_badConfigBindsNothing(self) -> None:
        """
        A config error exits 1 before twistd starts, so no port was bound.
        """
        port = freePort()
        path = self.writeConfig(
            "static_resources:\n  listeners:\n" + echoListener("main", port)
            + "  clusters:\n  - name: backend\n    lb_policy: FASTEST\n")
        result = self.twistd("-n", "--pidfile=", "pyenvoy", "-c", path)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertLines(result.stderr, [
            f"pyenvoy: {path}: 1 config error(s):",
            "static_resources.clusters[0].lb_policy: expected one of ROUND_ROBIN, "
            "LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, got the string 'FASTEST'",
        ])
        # twistd logs "starting up" once it runs the application; it never did.
        self.assertNotIn("starting up", result.stdout + result.stderr)
        self.assertNoTraceback(result)
        self.assertTrue(canBind(port))

    def test_portInUse(self) -> None:
        """
        A taken port stops start-up: exit 1 naming the listener and address.
        """
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            path = self.writeConfig("static_resources:\n  listeners:\n"
                                    + echoListener("held", port))
            started = time.monotonic()
            result = self.twistd("-n", "--pidfile=", "pyenvoy", "-c", path)
            elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertLess(elapsed, 30)
        self.assertIn(f"static_resources.listeners[0]: listener 'held' cannot bind "
                      f"127.0.0.1:{port}", output)
        self.assertNoTraceback(result)

    def test_secondListenerPortInUse(self) -> None:
        """
        The second listener's taken port fails start-up though the first bound.
        """
        free = freePort()
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            path = self.writeConfig("static_resources:\n  listeners:\n"
                                    + echoListener("first", free)
                                    + echoListener("second", port))
            result = self.twistd("-n", "--pidfile=", "pyenvoy", "-c", path)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"static_resources.listeners[1]: listener 'second' cannot bind "
                      f"127.0.0.1:{port}", output)
        self.assertNoTraceback(result)
