"""Where lorastack keeps its data: ``$LORASTACK_HOME`` or the platform's user data folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOME_ENV = "LORASTACK_HOME"
APP_NAME = "lorastack"


def data_home() -> Path:
    """Where lorastack keeps its registry and caches."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME
