"""Item 15: atomic writes get the umask's modes without ever setting the umask."""

from __future__ import annotations

import os
import stat

from misical_gym.atomic import atomic_directory, atomic_write_text


def test_item15_atomic_writes_never_set_the_umask(tmp_path, monkeypatch) -> None:
    previous = os.umask(0o027)
    try:

        def umask(mask: int) -> int:
            raise AssertionError("os.umask changes the mask for every thread of the process")

        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", umask)
            atomic_write_text(tmp_path / "report.md", "x")
            with atomic_directory(tmp_path / "store") as build:
                (build / "a").write_text("a")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "store"]
