"""
Filter plugins: cheap declarations for C{twisted/plugins} drop-ins, and
lookup by C{@type} or name.

A drop-in declares a filter without importing its code::

    tcpProxy = NetworkFilter(
        "envoy.filters.network.tcp_proxy",
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "pyenvoy.filters.tcp_proxy",
        terminal=True,
    )

The module named last must have a C{factory} attribute with
C{parseConfig} and C{createFilterFactory}; it is imported the first time a
config uses the filter, so heavy libraries load only when needed.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from pyenvoy.interfaces import (
    IListenerFilterFactory,
    INetworkFilterFactory,
    IUdpListenerFilterFactory,
)


class _LazyFactory:
    """
    A filter factory declared by name, whose implementation is imported
    on first use.
    """

    def __init__(self, name: str, typeURL: str, module: str, terminal: bool = False) -> None:
        self.name = name
        self.typeURL = typeURL
        self.module = module
        self.terminal = terminal
        self._impl: Any = None

    def _load(self) -> Any:
        if self._impl is None:
            self._impl = importlib.import_module(self.module).factory
        return self._impl

    def parseConfig(self, section: Any, context: Any) -> Any:
        """
        Delegate to the implementation's C{parseConfig}.
        """
        return self._load().parseConfig(section, context)

    def createFilterFactory(self, config: Any, context: Any) -> Callable[..., Any]:
        """
        Delegate to the implementation's C{createFilterFactory}.
        """
        return self._load().createFilterFactory(config, context)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.module})>"


@implementer(IPlugin, INetworkFilterFactory)
class NetworkFilter(_LazyFactory):
    """
    Declares a network filter (C{filter_chains[].filters[]}).
    """


@implementer(IPlugin, IListenerFilterFactory)
class ListenerFilter(_LazyFactory):
    """
    Declares a TCP listener filter (C{listener_filters[]}).
    """


@implementer(IPlugin, IUdpListenerFilterFactory)
class UdpListenerFilter(_LazyFactory):
    """
    Declares a UDP listener filter (C{listener_filters[]} on a UDP listener).
    """


def _plugins(interface: Any) -> list[Any]:
    import twisted.plugins

    return list(getPlugins(interface, twisted.plugins))


def _find(candidates: list[Any], kind: str, name: str, typeURL: str | None) -> tuple[Any, str]:
    if typeURL:
        for factory in candidates:
            if factory.typeURL == typeURL:
                return factory, ""
        known = ", ".join(sorted(f.typeURL for f in candidates))
        return None, f"unknown {kind} @type {typeURL!r}; known: {known}"
    for factory in candidates:
        if factory.name == name:
            return factory, ""
    known = ", ".join(sorted(f.name for f in candidates))
    return None, f"unknown {kind} {name!r}; known: {known}"


def findNetworkFilter(name: str, typeURL: str | None) -> tuple[Any, str]:
    """
    Find a network filter factory by C{@type} (or by name when there is
    no C{typed_config}); return C{(factory, "")} or C{(None, message)}.
    """
    return _find(_plugins(INetworkFilterFactory), "network filter", name, typeURL)


def findListenerFilter(name: str, typeURL: str | None, protocol: str = "TCP") -> tuple[Any, str]:
    """
    As L{findNetworkFilter}, for listener filters of a TCP or UDP listener.
    """
    if protocol == "UDP":
        return _find(_plugins(IUdpListenerFilterFactory), "UDP listener filter", name, typeURL)
    return _find(_plugins(IListenerFilterFactory), "listener filter", name, typeURL)
