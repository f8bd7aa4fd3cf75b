"""Where prepared feature stores live by default."""

from __future__ import annotations

import os
import re
from pathlib import Path


def misical_home() -> Path:
    """The directory that holds prepared stores: ``$MISICAL_HOME``, else ``~/.cache/misical``."""
    env = os.environ.get("MISICAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "misical"


def default_store_path(name: str) -> Path:
    """The default location of the store called ``name`` (e.g. ``"synthetic"``, ``"coco10k"``)."""
    return misical_home() / name


def safe_name(name: str) -> str:
    """``name`` as one safe path component: runs of characters other than letters, digits,
    ``.``, ``_`` and ``-`` become ``_``, and leading dots go, so a class name read from a
    dataset can never leave the folder it names a file in (``../x`` becomes ``_x``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    return cleaned or "_"
