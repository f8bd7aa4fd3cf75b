"""Atomic writes: write to a temporary name in the same directory, then rename.

A reader never sees a half-written file, and a killed writer leaves only a temporary
name behind, which no reader opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    tmp = _create_unique(final, suffix + ".tmp", lambda p: os.close(os.open(p, flags, 0o666)))
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; rename it onto ``final`` when the block succeeds.

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is False.
        NotADirectoryError: ``final`` exists and is not a directory (it is never replaced).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True to replace it")
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} is a file, not a directory; refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(final, ".partial", lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        if final.exists():
            # Move the old copy aside first so that ``final`` is never half old, half new.
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _create_unique(final: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a fresh hidden name next to ``final`` with ``create`` and return it.

    ``create`` makes the file or directory with mode 0666 / 0777 itself, so the kernel applies
    the umask (and any default ACL) exactly as for a plain ``open`` or ``mkdir``. ``tempfile``'s
    0600 / 0700 would have to be widened by reading the umask, and the only portable way to read
    it sets it for a moment, which races with other threads creating files.
    """
    for _ in range(100):
        candidate = final.with_name(f".{final.name}.{secrets.token_hex(4)}{suffix}")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name next to {final}")


def check_writable_dir(path: str | os.PathLike[str]) -> None:
    """Raise unless files can be written in the directory ``path`` (made if missing).

    Commands call this on their output location before any work, so a read-only or misnamed
    ``--out`` is reported at once rather than after the results are computed.

    Raises:
        NotADirectoryError: ``path``, or the first of its parents that exists, is a file.
        PermissionError: that directory is not writable.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, so the directory {path} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {existing} (permission denied)")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block.

    Processes that lock the same file run the block one at a time; the kernel drops the lock of
    a killed process.
    """
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
