"""Where lorastack keeps its data: ``$LORASTACK_HOME`` or the platform's user data folder."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

HOME_ENV = "LORASTACK_HOME"
APP_NAME = "lorastack"


def data_home() -> Path:
    """Where lorastack keeps its registry and caches (the folder need not exist yet).

    Raises :class:`lorastack.core.errors.ConfigError` when that path, or the nearest part of it that exists, is not
    a folder (``LORASTACK_HOME`` set to a file, or to a path under one), so every command says so in one line.
    """
    if os.environ.get(HOME_ENV):
        home = Path(os.environ[HOME_ENV]).expanduser()
        what = f"{HOME_ENV}={home}"
    else:
        if sys.platform == "win32":
            base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Application Support"
        else:
            base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        home = base / APP_NAME
        what = f"the lorastack data folder {home} (set {HOME_ENV} to use another)"
    _check_folder(home, what)
    return home


def _check_folder(home: Path, what: str) -> None:
    probe = home
    while True:
        try:
            mode = os.stat(probe).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return
            probe = probe.parent
            continue
        except OSError:
            return  # unreadable: whatever uses the folder reports it with its own error
        if stat.S_ISDIR(mode):
            return
        from lorastack.core.errors import ConfigError  # cheap: lorastack.core loads its modules lazily

        kind = "a file" if stat.S_ISREG(mode) else "not a file or folder (a FIFO, device or socket)"
        where = "it" if probe == home else str(probe)
        raise ConfigError(f"{what}: {where} is {kind}, not a folder; lorastack keeps its registry and caches there")
