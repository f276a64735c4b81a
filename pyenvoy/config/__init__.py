"""
Loading and validating an Envoy v3 bootstrap.

C{load(path)} returns a frozen L{Bootstrap} or raises L{ConfigErrors}
with one line per problem, each naming its YAML path.
"""

from __future__ import annotations

from typing import Any

from pyenvoy.config.bootstrap import Bootstrap, BootstrapParser, loadFile
from pyenvoy.config.reader import ConfigError, ConfigErrors, Problems, Section

__all__ = ["Bootstrap", "ConfigError", "ConfigErrors", "Problems", "Section", "load", "loadFile", "parse"]


def parse(raw: Any, sourcePath: str = "") -> Bootstrap:
    """
    Validate an already-loaded bootstrap mapping.
    """
    from pyenvoy import plugin

    parser = BootstrapParser(plugin.findNetworkFilter, plugin.findListenerFilter)
    return parser.parse(raw, sourcePath)


def load(path: str) -> Bootstrap:
    """
    Read and validate the bootstrap file at C{path} (YAML, or JSON by
    its C{.json} ending).
    """
    return parse(loadFile(path), path)
