"""The plugin system: hook specifications, the plugin manager and the built-in plugins.

A plugin imports from lorastack only :mod:`lorastack.plugins.api`, and marks its hook functions with ``hookimpl``::

    from lorastack.plugins.api import hookimpl

    @hookimpl
    def register_captioners(register):
        register(MyCaptioner())

``lorastack.plugins.hookimpl`` stays importable, for plugins written before the api module.
"""

from .hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
