"""Item 4: a store's manifest and values are checked on open, not only its checksums."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import misical_gym  # noqa: F401  (registers the ids)
from misical_gym.cli import main
from misical_gym.errors import StoreError
from misical_gym.store import FeatureStore

from .forge import edit_array, edit_manifest


def _outside_features(manifest: dict[str, Any], store: Path) -> None:
    elsewhere = store.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(store / "features.npy", elsewhere / "features.npy")
    manifest["arrays"]["features"]["file"] = "../elsewhere/features.npy"


MANIFEST_EDITS: dict[str, Callable[[dict[str, Any], Path], Any]] = {
    "finer grid": lambda m, s: m.update(grid=[8, 8]),
    "duplicate class": lambda m, s: m["class_names"].__setitem__(1, m["class_names"][0]),
    "array file outside": _outside_features,
    "no arrays": lambda m, s: m.pop("arrays") and None,
    "no counts": lambda m, s: m["arrays"].pop("counts") and None,
    "a list": lambda m, s: [m],
    "grid of strings": lambda m, s: m.update(grid=["4", "4"]),
    "class names not strings": lambda m, s: m.update(class_names=list(range(8))),
    "checkpoint not a file of the store": lambda m, s: m.update(
        segmenter={"checkpoint": "../../x.pt"}
    ),
}


@pytest.mark.parametrize("edit", MANIFEST_EDITS.values(), ids=MANIFEST_EDITS.keys())
def test_item04_edited_manifests_are_refused(fresh_store, edit) -> None:
    path = fresh_store.path
    edit_manifest(path, lambda manifest: edit(manifest, path))
    with pytest.raises(StoreError):
        FeatureStore.open(path)
    with pytest.raises(StoreError):
        gym.make("MiSiCAL-Store", root=str(path))


def _nan(a: np.ndarray) -> None:
    a[3, 1] = np.nan


def _inf(a: np.ndarray) -> None:
    a[3, 1] = np.inf


def _negative(a: np.ndarray) -> None:
    a[5, 0] = -7


def _image_out_of_range(a: np.ndarray) -> None:
    a[2, 0] = 999


VALUE_EDITS = {
    "NaN feature": ("features", _nan, "NaN or infinite"),
    "inf feature": ("features", _inf, "NaN or infinite"),
    "negative count": ("counts", _negative, "non-negative"),
    "patch image out of range": ("patches", _image_out_of_range, "out of range"),
}


@pytest.mark.parametrize(("name", "edit", "match"), VALUE_EDITS.values(), ids=VALUE_EDITS.keys())
def test_item04_bad_values_with_a_recomputed_checksum_are_refused(
    fresh_store, capsys, name, edit, match
) -> None:
    edit_array(fresh_store.path, name, edit)
    with pytest.raises(StoreError, match=match):
        FeatureStore.open(fresh_store.path)
    assert main(["inspect", str(fresh_store.path)]) == 2
    assert capsys.readouterr().err.startswith("misical: error:")
