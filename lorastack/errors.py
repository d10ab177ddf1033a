"""The root of lorastack's errors.

Every error lorastack raises on purpose derives from :class:`LorastackError`: adapter files
(``lorastack.adapters.errors``), the registry and the Hub (``lorastack.registry.errors``), plugins, the runtime
(``lorastack.core.errors``) and training. Its message is one line meant for the user, naming the bad value and the
valid choices; the command line shows it as ``Error: <message>`` with exit code 1. Anything else that escapes is a
bug, and keeps its traceback.
"""

from __future__ import annotations


class LorastackError(Exception):
    """Base class of every error lorastack raises on purpose; the message is one line meant for the user."""
