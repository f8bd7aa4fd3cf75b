"""Item 1: a segmenter checkpoint is data; it may pick an allow-listed architecture, never code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from misical_gym.errors import StoreError
from misical_gym.segmenter import (
    SEGMENTER_ARCHITECTURES,
    SmallUNet,
    load_segmenter,
    register_segmenter,
    save_segmenter,
)

from .forge import edit_manifest


@pytest.mark.parametrize(
    ("name", "config"),
    [("os:system", {"command": "touch {mark}"}), ("subprocess:call", {"args": "touch {mark}"})],
)
def test_item01_a_checkpoint_naming_other_code_is_refused_and_runs_nothing(
    tmp_path: Path, name: str, config: dict[str, str]
) -> None:
    mark = tmp_path / "ran"
    checkpoint = tmp_path / "segmenter.pt"
    config = {key: value.format(mark=mark) for key, value in config.items()}
    torch.save({"class": name, "config": config, "state_dict": {}}, checkpoint)
    with pytest.raises(StoreError, match="not a known architecture"):
        load_segmenter(checkpoint)
    assert not mark.exists()


def test_item01_existing_checkpoints_and_registered_classes_still_load(tmp_path: Path) -> None:
    # The name save_segmenter has always recorded for the package's own model.
    assert SEGMENTER_ARCHITECTURES["misical_gym.segmenter.model:SmallUNet"] is SmallUNet
    save_segmenter(SmallUNet(3, width=4), tmp_path / "small.pt")
    assert isinstance(load_segmenter(tmp_path / "small.pt"), SmallUNet)

    class MyNet(SmallUNet):
        pass

    save_segmenter(MyNet(3, width=4), tmp_path / "mine.pt")
    with pytest.raises(StoreError, match="register_segmenter"):
        load_segmenter(tmp_path / "mine.pt")
    register_segmenter(MyNet)
    try:
        assert isinstance(load_segmenter(tmp_path / "mine.pt"), MyNet)
    finally:
        SEGMENTER_ARCHITECTURES.pop(f"{MyNet.__module__}:{MyNet.__qualname__}")


def test_item01_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    state = {"class": "misical_gym.segmenter.model:SmallUNet", "config": {"bogus": 1}}
    torch.save({**state, "state_dict": {"w": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(StoreError, match="does not fit"):
        load_segmenter(tmp_path / "bad.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(StoreError, match="not a segmenter checkpoint"):
        load_segmenter(tmp_path / "plain.pt")


@pytest.mark.parametrize(
    ("forged", "message"),
    [
        ({"levels": 64}, "levels must be at least 2 and at most 8"),
        ({"width": 1025, "levels": 2}, "width must be at least 1 and at most 1024"),
    ],
)
def test_item01_a_checkpoint_cannot_ask_for_a_network_of_any_size(
    tmp_path: Path, forged: dict, message: str
) -> None:
    config = {"num_classes": 3, "width": 4, "dropout": 0.3, **forged}
    state = {"class": "misical_gym.segmenter.model:SmallUNet", "config": config}
    torch.save({**state, "state_dict": SmallUNet(3, width=4).state_dict()}, tmp_path / "big.pt")
    with pytest.raises(StoreError, match=message):
        load_segmenter(tmp_path / "big.pt")


def test_item01_retraining_on_a_forged_store_runs_nothing(fresh_store, tmp_path: Path) -> None:
    from misical_gym.segmenter.retrain import retrain_iou
    from misical_gym.store import FeatureStore, file_crc32

    mark = tmp_path / "ran"
    checkpoint = fresh_store.path / "segmenter.pt"
    torch.save(
        {"class": "os:system", "config": {"command": f"touch {mark}"}, "state_dict": {}},
        checkpoint,
    )
    world = {"kind": "synthetic", "num_images": 6, "seed": 0, "image_size": 64}

    def forge(manifest: dict) -> None:
        manifest["files"] = {"segmenter.pt": {"crc32": file_crc32(checkpoint)}}
        manifest["segmenter"] = {"checkpoint": "segmenter.pt"}
        items = [[0, i] for i in range(6)]
        manifest["dataset"] = {"kind": "synthetic", "sources": [world], "items": items}

    edit_manifest(fresh_store.path, forge)
    with pytest.raises(StoreError, match="not a known architecture"):
        retrain_iou(FeatureStore.open(fresh_store.path), 0, [0], epochs=0)
    assert not mark.exists()
