"""
Filters as Twisted plugins: a third-party package (C{tests/plugin_fixture})
adds a network filter by dropping a declaration in its own
C{twisted/plugins}, and pyenvoy finds, validates and serves it as it does
its built-in filters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pyenvoy.config import ConfigErrors, parse
from pyenvoy.interfaces import INetworkFilterFactory
from pyenvoy.plugin import NetworkFilter, findNetworkFilter
from tests.support.net import connect, listenerPort, startServer
from tests.support.twistd import (
    DEADLINE,
    receiveAll,
    startTwistd,
    twistdCommand,
    twistdEnvironment,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "plugin_fixture")
FIXTURE_PLUGINS = os.path.join(FIXTURE, "twisted", "plugins")
UPPER = "example.filters.network.upper"
UPPER_TYPE = "type.googleapis.com/example.Upper"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ECHO = "envoy.filters.network.echo"
FILTER_PATH = "static_resources.listeners[0].filter_chains[0].filters[0]"


def upperConfig(typedConfig: dict[str, Any] | None = None,
                admin: bool = False) -> dict[str, Any]:
    """
    A bootstrap with one listener "upper" (127.0.0.1, port 0) running the
    fixture's filter with C{typedConfig} (besides its C{@type}).
    """
    raw: dict[str, Any] = {"static_resources": {"listeners": [{
        "name": "upper",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": UPPER, "typed_config": {"@type": UPPER_TYPE, **(typedConfig or {})}}]}],
    }]}}
    if admin:
        raw["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                       "port_value": 0}}}
    return raw


def useFixture(case: SynchronousTestCase) -> None:
    """
    Make C{tests/plugin_fixture} importable, and its drop-in visible, for
    the rest of the test.
    """
    import twisted.plugins

    # A fresh scan: Twisted trusts dropin.cache while it is newer than the
    # drop-ins, and rebuilds it when it is missing.
    try:
        os.remove(os.path.join(FIXTURE_PLUGINS, "dropin.cache"))
    except FileNotFoundError:
        pass
    sys.path.insert(0, FIXTURE)
    # twisted.plugins computed its __path__ from sys.path when it was first
    # imported, long before this test; a new sys.path entry is not seen.
    twisted.plugins.__path__.append(FIXTURE_PLUGINS)

    def restore() -> None:
        sys.path.remove(FIXTURE)
        twisted.plugins.__path__.remove(FIXTURE_PLUGINS)
        sys.modules.pop("twisted.plugins.pyenvoy_test_filters", None)
        sys.modules.pop("example_upper", None)

    case.addCleanup(restore)


class FindTests(SynchronousTestCase):
    """
    L{findNetworkFilter} finds a third-party filter on the path.
    """

    def setUp(self) -> None:
        useFixture(self)

    def test_byType(self) -> None:
        """
        The fixture's filter is found by its @type.
        """
        factory, message = findNetworkFilter(UPPER, UPPER_TYPE)
        self.assertEqual(message, "")
        self.assertEqual((factory.name, factory.typeURL, factory.module, factory.terminal),
                         (UPPER, UPPER_TYPE, "example_upper", True))

    def test_byName(self) -> None:
        """
        Without a typed_config, the fixture's filter is found by its name.
        """
        factory, message = findNetworkFilter(UPPER, None)
        self.assertEqual((message, factory.typeURL), ("", UPPER_TYPE))

    def test_sameKindAsBuiltins(self) -> None:
        """
        getPlugins lists the built-in tcp_proxy and echo and the fixture's filter alike.
        """
        import twisted.plugins

        plugins = {plugin.name: plugin
                   for plugin in getPlugins(INetworkFilterFactory, twisted.plugins)}
        for name in (TCP_PROXY, ECHO, UPPER):
            self.assertIn(name, plugins)
            self.assertIsInstance(plugins[name], NetworkFilter)
            self.assertTrue(INetworkFilterFactory.providedBy(plugins[name]))


class WithoutFixtureTests(SynchronousTestCase):
    """
    Without the fixture on the path, only the built-in filters exist.
    """

    def test_builtinsThroughGetPlugins(self) -> None:
        """
        tcp_proxy and echo are INetworkFilterFactory plugins, found as any drop-in is.
        """
        import twisted.plugins

        names = {plugin.name for plugin in getPlugins(INetworkFilterFactory, twisted.plugins)}
        self.assertTrue({TCP_PROXY, ECHO} <= names, names)
        self.assertNotIn(UPPER, names)

    def test_notFound(self) -> None:
        """
        The fixture's @type is unknown, and the message lists the known ones.
        """
        factory, message = findNetworkFilter(UPPER, UPPER_TYPE)
        self.assertIsNone(factory)
        self.assertTrue(message.startswith(f"unknown network filter @type {UPPER_TYPE!r}; "
                                           "known: "), message)
        self.assertIn("type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo",
                      message)


class ConfigTests(SynchronousTestCase):
    """
    Configs using the fixture's filter are validated by its C{parseConfig}.
    """

    def setUp(self) -> None:
        useFixture(self)

    def errors(self, raw: dict[str, Any]) -> list[str]:
        """
        The config errors of C{raw}, one string each.
        """
        with self.assertRaises(ConfigErrors) as caught:
            parse(raw)
        return [str(error) for error in caught.exception.errors]

    def test_parses(self) -> None:
        """
        A config with suffix "!" parses into the fixture's config object.
        """
        bootstrap = parse(upperConfig({"suffix": "!"}))
        filterConfig = bootstrap.listeners[0].filterChains[0].filters[0]
        self.assertEqual((filterConfig.name, filterConfig.path), (UPPER, FILTER_PATH))
        self.assertEqual(filterConfig.factory.name, UPPER)
        self.assertEqual(filterConfig.config.suffix, b"!")

    def test_noSuffix(self) -> None:
        """
        suffix is optional (and a filter without typed_config is found by name).
        """
        raw = upperConfig()
        del raw["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]
        filterConfig = parse(raw).listeners[0].filterChains[0].filters[0]
        self.assertEqual(filterConfig.config.suffix, b"")

    def test_unknownField(self) -> None:
        """
        An unknown field in the filter's typed_config is an error at its YAML path.
        """
        self.assertEqual(self.errors(upperConfig({"suffix": "!", "colour": "red"})),
                         [f"{FILTER_PATH}.typed_config.colour: unknown field 'colour'"])

    def test_suffixNotString(self) -> None:
        """
        A suffix that is not a string is an error at its YAML path.
        """
        self.assertEqual(self.errors(upperConfig({"suffix": 1})),
                         [f"{FILTER_PATH}.typed_config.suffix: expected a string, "
                          "got an integer"])


class ServeTests(TestCase):
    """
    An in-process server runs the fixture's filter on a real socket.
    """

    def setUp(self) -> None:
        useFixture(self)

    async def test_upperWithSuffix(self) -> None:
        """
        A client sending b"abc" and half-closing gets b"ABC!" with suffix "!".
        """
        server = startServer(self, upperConfig({"suffix": "!"}))
        client = await connect(listenerPort(server, "upper"))
        client.transport.write(b"abc")
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual(client.data(), b"ABC!")


class TwistdTests(SynchronousTestCase):
    """
    C{twistd pyenvoy} finds the fixture's filter through C{PYTHONPATH}.
    """

    def writeConfig(self) -> str:
        """
        A config using the fixture's filter, in a fresh directory.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "envoy.yaml")
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                static_resources:
                  listeners:
                  - name: upper
                    address:
                      socket_address: {{address: 127.0.0.1, port_value: 0}}
                    filter_chains:
                    - filters:
                      - name: {UPPER}
                        typed_config:
                          "@type": {UPPER_TYPE}
                          suffix: "!"
                """))
        return path

    def validate(self, path: str, pythonPath: str | None) -> subprocess.CompletedProcess[str]:
        """
        Run C{twistd pyenvoy --mode validate -c path} with C{PYTHONPATH}.
        """
        return subprocess.run(
            twistdCommand() + ["pyenvoy", "--mode", "validate", "-c", path],
            cwd=os.path.dirname(path), env=twistdEnvironment(pythonPath),
            capture_output=True, text=True, timeout=3 * DEADLINE)

    def test_validateWithPlugin(self) -> None:
        """
        With the fixture on PYTHONPATH, validate mode accepts the config: exit 0.
        """
        path = self.writeConfig()
        result = self.validate(path, FIXTURE)
        self.assertEqual((result.returncode, result.stdout),
                         (0, f"configuration '{path}' OK\n"), result.stderr)

    def test_validateWithoutPlugin(self) -> None:
        """
        Without it, validate mode exits 1 naming the unknown @type at its path.
        """
        path = self.writeConfig()
        result = self.validate(path, None)
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertIn(f"{FILTER_PATH}.typed_config.@type: unknown network filter @type "
                      f"{UPPER_TYPE!r}; known: ", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_serveWithPlugin(self) -> None:
        """
        twistd serves the fixture's filter: b"abc" then a half-close gets b"ABC!".
        """
        with open(self.writeConfig()) as f:
            config = f.read()
        twistd = startTwistd(self, config, pythonPath=FIXTURE)
        with twistd.connect("upper") as client:
            client.sendall(b"abc")
            client.shutdown(1)
            self.assertEqual(receiveAll(client), b"ABC!")
