"""
A third-party pyenvoy filter drop-in, as another package would ship it:
declarations only (C{example_upper} loads when a config uses the filter).
"""

from pyenvoy.plugin import NetworkFilter

upper = NetworkFilter(
    "example.filters.network.upper",
    "type.googleapis.com/example.Upper",
    "example_upper",
    terminal=True,
)
