"""
Test support: real servers and clients on 127.0.0.1, ports picked by the OS.
"""
