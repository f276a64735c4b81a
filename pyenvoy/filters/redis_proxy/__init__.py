"""
The C{envoy.filters.network.redis_proxy} filter (work in progress).

So far only its RESP codec exists, in L{pyenvoy.filters.redis_proxy.resp};
the filter itself is not registered, so configs cannot use it yet.
"""
