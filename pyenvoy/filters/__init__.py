"""
Built-in filters, one module (or package) each; registered as Twisted
plugins in C{twisted/plugins/pyenvoy_plugin.py} like any third-party filter.
"""
