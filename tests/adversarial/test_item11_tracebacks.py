"""Item 11: unwritable outputs and damaged manifests are messages, not tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from misical_gym.cli import main
from misical_gym.data import store_image
from misical_gym.errors import StoreError
from misical_gym.store import FeatureStore

from .forge import edit_array, edit_manifest


def _select(store: Path, out: Path) -> list[str]:
    argv = ["select", "--store", str(store), "--policy", "random", "--target", "class1"]
    return [*argv, "--budget", "3", "--out", str(out)]


def test_item11_a_read_only_out_is_refused_before_the_selection(
    tiny_store, tmp_path, capsys, monkeypatch
) -> None:
    # Tests may run as root, whom permissions do not stop: deny the folder through os.access.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode)
    )
    selections: list[int] = []
    monkeypatch.setattr(
        "misical_gym.train.select.select_patches", lambda *a, **k: selections.append(1)
    )
    assert main(_select(tiny_store.path, locked / "picks.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and "permission denied" in err
    assert selections == []


def test_item11_a_failed_write_is_a_message(tiny_store, tmp_path, capsys, monkeypatch) -> None:
    def denied(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("misical_gym.train.select.atomic_write_text", denied)
    assert main(_select(tiny_store.path, tmp_path / "picks.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and "picks.json" in err


def _image_out_of_range(patches: np.ndarray) -> None:
    patches[0, 0] = 10_000


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: edit_manifest(s, lambda m: m.pop("arrays") and None),
        lambda s: edit_manifest(s, lambda m: m["arrays"].pop("counts") and None),
        lambda s: edit_manifest(s, lambda m: [m]),
        lambda s: edit_array(s, "patches", _image_out_of_range),
    ],
    ids=["no arrays", "no counts", "a list", "patch image index out of range"],
)
def test_item11_damaged_stores_are_messages(fresh_store, capsys, damage) -> None:
    damage(fresh_store.path)
    assert main(["inspect", str(fresh_store.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and str(fresh_store.path) in err


@pytest.mark.parametrize("entry", [[0, 99], [5, 0], "x", [0]], ids=str)
def test_item11_damaged_image_records_are_store_errors(fresh_store, entry) -> None:
    world = {"kind": "synthetic", "num_images": 6, "seed": 0, "image_size": 64}

    def point_at_images(manifest: dict) -> None:
        items = [[0, i] for i in range(6)]
        items[2] = entry
        manifest["dataset"] = {"kind": "synthetic", "sources": [world], "items": items}

    edit_manifest(fresh_store.path, point_at_images)
    store = FeatureStore.open(fresh_store.path)
    assert store_image(store, 1)[0].shape == (64, 64, 3)
    with pytest.raises(StoreError, match=r"items\[2\]"):
        store_image(store, 2)
