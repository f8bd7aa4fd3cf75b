"""Item 3 (readers): a dataset's own lists may not send reads outside its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from misical_gym.data import CocoJson, CocoStuff10k, open_dataset
from misical_gym.errors import DatasetError

from .forge import write_coco_json


def coco10k_root(tmp_path: Path, entry: str) -> Path:
    root = tmp_path / "cocostuff"
    for sub in ("images", "annotations", "imageLists"):
        (root / sub).mkdir(parents=True)
    (root / "imageLists" / "train.txt").write_text(f"COCO_train2014_000000000077\n{entry}\n")
    return root


@pytest.mark.parametrize("entry", ["../../outside/evil", "/etc/hostname", "a/../../../x"])
def test_item03_image_list_entries_outside_the_root_are_refused(tmp_path, entry) -> None:
    root = coco10k_root(tmp_path, entry)
    with pytest.raises(DatasetError, match="points outside"):
        CocoStuff10k(root, "train")
    allowed = CocoStuff10k(root, "train", allow_outside_root=True)
    assert allowed.image_ids[1] == entry
    assert open_dataset(allowed.spec).allow_outside_root


@pytest.mark.parametrize("file_name", ["/etc/hostname", "../outside.jpg", "sub/../../x.jpg"])
def test_item03_coco_file_names_outside_the_image_folder_are_refused(tmp_path, file_name) -> None:
    image_dir, annotations = write_coco_json(tmp_path, 2, file_names={2: file_name})
    with pytest.raises(DatasetError, match=r"image 2 file_name .* points outside"):
        CocoJson(image_dir, annotations)
    allowed = CocoJson(image_dir, annotations, allow_outside_root=True)
    assert open_dataset(allowed.spec).allow_outside_root
    # A dataset that needs no permission keeps the spec it had, so stores do not change.
    plain_dir, plain = write_coco_json(tmp_path / "plain", 2)
    assert "allow_outside_root" not in CocoJson(plain_dir, plain).spec
