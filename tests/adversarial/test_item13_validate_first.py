"""Item 13: bad input and output paths are reported before the segmenter trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from misical_gym.data import CocoJson, CocoStuff10k
from misical_gym.data.classes import COCO_STUFF_IDS
from misical_gym.errors import DatasetError, StoreError
from misical_gym.prepare import PrepareConfig, default_splits, prepare, prepare_synthetic

from .forge import write_coco_json, write_image

QUICK = {"epochs": 1, "mc_samples": 2, "init_fraction": 0.5, "progress": False}


def coco10k_with_a_bad_mat(root: Path) -> list[CocoStuff10k]:
    import scipy.io

    ids = {"train": [f"train{i}" for i in range(4)], "test": ["test0", "test1"]}
    (root / "imageLists").mkdir(parents=True)
    (root / "annotations").mkdir()
    for split, names in ids.items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names))
        for i, name in enumerate(names):
            write_image(root / "images" / f"{name}.jpg", seed=i)
            label = np.full((32, 32), COCO_STUFF_IDS[i], dtype=np.uint8)
            scipy.io.savemat(root / "annotations" / f"{name}.mat", {"S": label})
    (root / "annotations" / "train3.mat").write_bytes(b"not a MATLAB file")
    return [CocoStuff10k(root, "train"), CocoStuff10k(root, "test")]


def coco_json_with_a_corrupt_jpeg(root: Path) -> CocoJson:
    image_dir, annotations = write_coco_json(root, 6)
    dataset = CocoJson(image_dir, annotations)
    # A pool image: init images are read for training anyway, pool images only after it.
    (codes,) = default_splits([dataset], PrepareConfig(init_fraction=QUICK["init_fraction"]))
    pool = image_dir / f"{dataset.image_ids[int(np.flatnonzero(codes == 1)[0])]}.jpg"
    pool.write_bytes(pool.read_bytes()[:200])
    return dataset


def test_item13_a_grid_larger_than_the_images_is_refused_first(tmp_path, no_training) -> None:
    with pytest.raises(ValueError, match="smaller than the 100x100 patch grid"):
        prepare_synthetic(tmp_path / "s", images=20, grid="100x100", **QUICK)
    assert no_training == []


@pytest.mark.parametrize(
    ("make", "match"),
    [(coco10k_with_a_bad_mat, "annotations"), (coco_json_with_a_corrupt_jpeg, "cannot read image")],
    ids=["bad mat", "corrupt jpeg"],
)
def test_item13_unreadable_images_are_refused_first(tmp_path, no_training, make, match) -> None:
    datasets = make(tmp_path / "data")
    with pytest.raises(DatasetError, match=match):
        prepare(datasets, tmp_path / "s", image_size=32, grid="2x2", **QUICK)
    assert no_training == []
    assert not (tmp_path / "s").exists()


def test_item13_an_out_that_is_a_file_is_refused_first(tmp_path, no_training) -> None:
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(StoreError, match="is a file"):
        prepare_synthetic(tmp_path / "afile", images=20, **QUICK)
    assert no_training == []
    assert (tmp_path / "afile").read_text() == "mine"
