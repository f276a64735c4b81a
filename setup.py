"""
The one thing setup.cfg cannot say: pyenvoy's optional C extensions.

C{pyenvoy.upstream._keyhash} hashes a Redis key and finds its ring or
Maglev entry in one call (see pyenvoy/upstream/key_lookup.py);
C{pyenvoy.filters.postgres_proxy._scan} walks a chunk of PostgreSQL
messages in one call (see pyenvoy/filters/postgres_proxy/scan.py);
C{pyenvoy.network._relay} relays a tcp_proxy chunk in one call (see
pyenvoy/network/relay.py).  They
are optional: where they cannot be compiled (no C compiler or Python
headers) the install goes on and the same functions run in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pyenvoy.upstream._keyhash", ["pyenvoy/upstream/_keyhash.c"],
                  optional=True),
        Extension("pyenvoy.filters.postgres_proxy._scan",
                  ["pyenvoy/filters/postgres_proxy/_scan.c"], optional=True),
        Extension("pyenvoy.network._relay", ["pyenvoy/network/_relay.c"], optional=True),
    ],
)
