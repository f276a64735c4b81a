"""
C{twistd pyenvoy}: command-line options and the service they make.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from twisted.python import usage

from pyenvoy import config as configModule
from pyenvoy.config.reader import ConfigErrors


#: Envoy's --log-level values.
_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


class Options(usage.Options):
    """
    Envoy's command-line options that mean something for pyenvoy.
    """

    synopsis = "[-c envoy.yaml | --config-yaml YAML] [--mode serve|validate]"
    longdesc = ("Run an Envoy v3 bootstrap config (static_resources) with pyenvoy. "
                "SIGTERM or POST /quitquitquit drain for --drain-time-s, then exit 0.")

    optParameters = [
        ["config-path", "c", None, "Envoy v3 bootstrap file (YAML, or JSON if it ends in .json)."],
        ["config-yaml", None, None, "Bootstrap as a YAML string (merged over --config-path)."],
        ["mode", None, "serve", "serve, or validate: check the config and exit 0/1 without binding."],
        ["drain-time-s", None, "10", "Seconds to let open connections finish on shutdown."],
        ["concurrency", None, "1", "Accepted for Envoy compatibility; pyenvoy runs one event loop."],
        ["base-id", None, "0", "Accepted for Envoy compatibility; ignored."],
        ["log-level", "l", "info", "Accepted for Envoy compatibility (trace, debug, info, "
                                   "warning/warn, error, critical, off); pyenvoy logs "
                                   "through twistd (--logfile)."],
        ["component-log-level", None, None, "Accepted for Envoy compatibility; ignored."],
        ["log-format", None, None, "Accepted for Envoy compatibility; ignored."],
        ["log-path", None, None, "Accepted for Envoy compatibility; use twistd's --logfile."],
        ["drain-strategy", None, "gradual", "Accepted for Envoy compatibility (gradual, "
                                            "immediate); pyenvoy's drain is --drain-time-s."],
        ["parent-shutdown-time-s", None, None, "Accepted for Envoy compatibility (hot "
                                               "restart); ignored."],
        ["restart-epoch", None, "0", "Accepted for Envoy compatibility (hot restart); "
                                     "ignored."],
        ["service-node", None, None, "Accepted for Envoy compatibility; ignored."],
        ["service-cluster", None, None, "Accepted for Envoy compatibility; ignored."],
        ["service-zone", None, None, "Accepted for Envoy compatibility; ignored."],
    ]
    optFlags = [
        ["disable-hot-restart", None, "Accepted for Envoy compatibility (pyenvoy has no hot restart)."],
    ]

    def postOptions(self) -> None:
        """
        Load and validate the whole config now, before twistd binds or
        daemonises: errors go to stderr, one per line, and exit 1.
        """
        if self["mode"] not in ("serve", "validate"):
            raise usage.UsageError(f"--mode must be serve or validate, not {self['mode']!r}")
        try:
            self["drain-time-s"] = float(self["drain-time-s"])
        except ValueError:
            raise usage.UsageError("--drain-time-s must be a number of seconds")
        if self["drain-time-s"] < 0:
            raise usage.UsageError("--drain-time-s must not be negative")
        if self["log-level"] not in _LOG_LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(_LOG_LEVELS)}, "
                                   f"not {self['log-level']!r}")
        if self["drain-strategy"] not in ("gradual", "immediate"):
            raise usage.UsageError("--drain-strategy must be gradual or immediate")
        if self["concurrency"] not in ("1", 1):
            sys.stderr.write("pyenvoy: --concurrency is ignored; pyenvoy runs one event loop\n")
        path = self["config-path"]
        if not path and not self["config-yaml"]:
            raise usage.UsageError("a config is required: -c envoy.yaml or --config-yaml")
        source = path or "--config-yaml"
        try:
            raw = configModule.loadFile(path) if path else None
            if self["config-yaml"]:
                overlay = yaml.safe_load(self["config-yaml"])
                raw = _merge(raw, overlay) if raw is not None else overlay
            self.bootstrap = configModule.parse(raw, path or "")
        except ConfigErrors as e:
            sys.stderr.write(f"pyenvoy: {source}: {len(e.errors)} config error(s):\n")
            for error in e.errors:
                sys.stderr.write(f"  {error}\n")
            raise SystemExit(1)
        except yaml.YAMLError as e:
            sys.stderr.write(f"pyenvoy: --config-yaml is not valid YAML: {e}\n")
            raise SystemExit(1)
        if self["mode"] == "validate":
            sys.stdout.write(f"configuration '{source}' OK\n")
            raise SystemExit(0)


def _merge(base: Any, overlay: Any) -> Any:
    """
    Merge C{overlay} over C{base} as Envoy merges --config-yaml: mappings
    recursively, lists appended, scalars replaced.
    """
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(overlay, list):
        return base + overlay
    return overlay


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    Build the L{pyenvoy.server.Server} for validated options; SIGTERM
    drains before exiting.
    """
    from pyenvoy.server import Server, installSignalDrain

    runningTwistd = reactor is None
    if reactor is None:
        try:
            from pyenvoy.reactor import installIfNoneChosen
        except ImportError:
            # No epoll on this platform: Twisted's default reactor.
            pass
        else:
            installIfNoneChosen()
        from twisted.internet import reactor as defaultReactor
        reactor = defaultReactor
    commandLine = {
        "config_path": options["config-path"] or "",
        "config_yaml": options["config-yaml"] or "",
        "mode": "Serve",
        "concurrency": 1,
        "drain_time": f"{options['drain-time-s']:g}s",
    }
    server = Server(options.bootstrap, reactor, drainTime=options["drain-time-s"],
                    commandLineOptions=commandLine)
    installSignalDrain(server, reactor)
    if runningTwistd:
        from pyenvoy.gc_tuning import tuneForServing

        tuneForServing()
    return server
