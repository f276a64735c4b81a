"""
pyenvoy: an Envoy-compatible L3/L4 proxy on Twisted.
"""

__version__ = "0.1.0"
