"""Item 5: ``--overwrite`` replaces only a store, never a user's own folder or file."""

from __future__ import annotations

import pytest

from misical_gym.cli import main
from misical_gym.errors import StoreError
from misical_gym.testing import write_random_store

TINY = ["--images", "40", "--epochs", "1", "--mc-samples", "2", "--init-fraction", "0.3"]


def test_item05_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path, capsys) -> None:
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "y.txt").write_text("mine too")
    assert main(["prepare", "synthetic", "--out", str(user), "--overwrite", *TINY]) == 2
    assert "no feature store" in capsys.readouterr().err
    assert (user / "notes.txt").read_text() == "mine"
    assert (user / "sub" / "y.txt").read_text() == "mine too"
    with pytest.raises(StoreError, match="no feature store"):
        write_random_store(user, num_images=2, overwrite=True)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "sub"]


def test_item05_overwrite_refuses_a_file(tmp_path, capsys) -> None:
    file = tmp_path / "afile"
    file.write_text("mine")
    assert main(["prepare", "synthetic", "--out", str(file), "--overwrite", *TINY]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(StoreError, match="is a file"):
        write_random_store(file, num_images=2, overwrite=True)
    assert file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_item05_overwrite_still_replaces_a_store_and_fills_an_empty_folder(tmp_path) -> None:
    first = write_random_store(tmp_path / "s", num_images=2, seed=0)
    second = write_random_store(tmp_path / "s", num_images=3, seed=1, overwrite=True)
    assert second.num_patches != first.num_patches
    (tmp_path / "empty").mkdir()
    assert write_random_store(tmp_path / "empty", num_images=2).num_patches == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]
