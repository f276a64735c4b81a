"""
C{example.filters.network.upper}: a third-party terminal network filter
for pyenvoy's plugin tests; it writes back what it reads, upper-cased,
and its C{suffix} when the peer half-closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from zope.interface import implementer

from pyenvoy.config.reader import Section
from pyenvoy.interfaces import FilterStatus, IReadFilter

TYPE_URL = "type.googleapis.com/example.Upper"


@dataclass(frozen=True)
class UpperConfig:
    """
    An C{example.Upper} message.

    @ivar suffix: written after the last byte, when the peer ends its stream.
    """

    suffix: bytes = b""


@implementer(IReadFilter)
class UpperFilter:
    """
    Answers every read with the same bytes upper-cased; the peer's
    half-close with the suffix and a half-close.
    """

    def __init__(self, config: UpperConfig) -> None:
        self.config = config

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        """
        Keep the connection to write to.
        """
        self.connection = callbacks.connection

    def onNewConnection(self) -> FilterStatus:
        """
        Nothing to do until bytes arrive.
        """
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        """
        Write C{data} back upper-cased (and the suffix at the end).
        """
        reply = data.upper() + (self.config.suffix if endStream else b"")
        self.connection.write(reply, endStream)
        return FilterStatus.STOP_ITERATION


class UpperFactory:
    """
    Parses C{example.Upper} and makes an L{UpperFilter} per connection.
    """

    def parseConfig(self, section: Section, context: Any) -> UpperConfig:
        """
        Read the optional C{suffix} string; any other field is an error.
        """
        suffix = section.string("suffix", default="") or ""
        section.finish()
        return UpperConfig(suffix.encode("utf-8"))

    def createFilterFactory(self, config: UpperConfig, context: Any) -> Callable[[], UpperFilter]:
        """
        A new L{UpperFilter} per connection, sharing C{config}.
        """
        return lambda: UpperFilter(config)


factory = UpperFactory()
