"""
The C{envoy.filters.network.redis_proxy} filter: a sharding Redis proxy
that runs Envoy's C{RedisProxy} config (see docs/redis_proxy.md).

The plugin loads this package only when a config uses the filter.
"""

from __future__ import annotations

from typing import Any

from pyenvoy.filters.redis_proxy.config import RedisProxyConfig, parseConfig


class RedisProxyFactory:
    """
    Parses C{RedisProxy} configs and builds the per-connection filters.
    """

    def parseConfig(self, section: Any, context: Any) -> RedisProxyConfig:
        """
        Validate a C{RedisProxy} C{typed_config}.
        """
        return parseConfig(section, context)

    def createFilterFactory(self, config: RedisProxyConfig, context: Any) -> Any:
        """
        One shared state (pools, stats) per configured filter; a new
        filter per connection.
        """
        from pyenvoy.filters.redis_proxy.proxy_filter import RedisProxyFilter, _Shared

        shared = _Shared(config, context)
        return lambda: RedisProxyFilter(shared)


factory = RedisProxyFactory()
