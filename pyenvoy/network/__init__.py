"""
The network layer: connections, filter chains, listeners.
"""
