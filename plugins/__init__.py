"""The plugin system: hook specifications, the plugin manager and the built-in plugins.

A plugin module marks its hook functions with ``hookimpl``::

    from lorastack.plugins import hookimpl

    @hookimpl
    def register_captioners(register):
        register(MyCaptioner())
"""

from .hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
