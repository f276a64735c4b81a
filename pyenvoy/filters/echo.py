"""
C{envoy.filters.network.echo}: write every byte read back to the sender.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from pyenvoy.interfaces import FilterStatus, IReadFilter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"


@implementer(IReadFilter)
class EchoFilter:
    """
    Echoes bytes back, and the peer's half-close too.
    """

    def initializeReadFilterCallbacks(self, callbacks: Any) -> None:
        self.connection = callbacks.connection

    def onNewConnection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def onData(self, data: bytes, endStream: bool) -> FilterStatus:
        self.connection.write(data, endStream)
        return FilterStatus.STOP_ITERATION


class EchoFactory:
    """
    The echo filter has no settings.
    """

    def parseConfig(self, section: Any, context: Any) -> None:
        """
        Accept an empty C{Echo} message.
        """
        return None

    def createFilterFactory(self, config: None, context: Any) -> Any:
        """
        A new L{EchoFilter} per connection.
        """
        return EchoFilter


factory = EchoFactory()
