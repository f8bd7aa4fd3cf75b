"""Where prepared feature stores live by default."""

from __future__ import annotations

import os
from pathlib import Path


def misical_home() -> Path:
    """The directory that holds prepared stores: ``$MISICAL_HOME``, else ``~/.cache/misical``."""
    env = os.environ.get("MISICAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "misical"


def default_store_path(name: str) -> Path:
    """The default location of the store called ``name`` (e.g. ``"synthetic"``, ``"coco10k"``)."""
    return misical_home() / name
