"""
The one thing setup.cfg cannot say: pyenvoy's optional C extension.

C{pyenvoy.upstream._keyhash} hashes a Redis key and finds its ring or
Maglev entry in one call (see pyenvoy/upstream/key_lookup.py).  It is
optional: where it cannot be compiled (no C compiler or Python headers)
the install goes on and the same functions run in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pyenvoy.upstream._keyhash", ["pyenvoy/upstream/_keyhash.c"],
                  optional=True),
    ],
)
