"""The CamVid preset, on the real SegNet-layout folder (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from misical_gym.data import MaskFolder, open_dataset
from misical_gym.data.camvid import CAMVID_TABLE, camvid_datasets
from misical_gym.prepare import CAMVID_DEFAULTS, PrepareConfig, camvid_config, prepare
from misical_gym.store import SPLITS, FeatureStore

CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "camvid"

# Written out from the dataset's README: value -> class, 11 = Unlabelled.
CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)


@pytest.fixture()
def camvid() -> Path:
    if not (CAMVID / "train.txt").is_file():
        pytest.skip("the shared CamVid folder is not present")
    return CAMVID


def test_published_split_sizes_and_class_table(camvid: Path) -> None:
    trainval, test = camvid_datasets(camvid)
    assert (len(trainval), len(test)) == (367 + 101, 233)
    prefixes = [image_id.split("/")[0] for image_id in trainval.image_ids]
    assert (prefixes.count("train"), prefixes.count("val")) == (367, 101)
    assert {image_id.split("/")[0] for image_id in test.image_ids} == {"test"}
    assert trainval.class_names == test.class_names == CLASSES
    assert open_dataset(test.spec).image_ids == test.image_ids


def test_unlabelled_becomes_ignore_and_the_rest_keeps_its_value(camvid: Path) -> None:
    _, test = camvid_datasets(camvid)
    image, label = test[0]
    raw = np.array(Image.open(camvid / "testannot" / f"{Path(test.image_ids[0]).name}.png"))
    assert image.shape == (360, 480, 3) and (raw == 11).any()
    np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))


def test_store_counts_equal_a_direct_count_of_the_label_pngs(camvid: Path, tmp_path: Path) -> None:
    # A few lines of the real lists, with their /SegNet/CamVid prefix.
    lists = {}
    for split, keep in (("train", 3), ("test", 2)):
        lines = (camvid / f"{split}.txt").read_text().splitlines()[:keep]
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    datasets = [MaskFolder(CAMVID_TABLE, root=camvid, lists=[lists[s]]) for s in lists]
    store = prepare(
        datasets,
        tmp_path / "store",
        epochs=1,
        mc_samples=2,
        image_size=32,
        init_fraction=0.4,
        grid="3x4",
        progress=False,
    )
    boxes = store.grid.boxes(360, 480)
    counts = np.asarray(store.counts).reshape(len(store.image_ids), len(boxes), len(CLASSES))
    for index, image_id in enumerate(store.image_ids):
        split = image_id.split("/")[0]
        raw = np.array(Image.open(camvid / f"{split}annot" / f"{Path(image_id).name}.png"))
        for box, patch_counts in zip(boxes, counts[index], strict=True):
            y0, x0, y1, x1 = box
            direct = [np.count_nonzero(raw[y0:y1, x0:x1] == value) for value in range(11)]
            assert patch_counts.tolist() == direct


@pytest.mark.slow
def test_prepare_camvid_command_writes_the_preset_store(camvid: Path, tmp_path: Path) -> None:
    from misical_gym.cli import main

    out = tmp_path / "camvid"
    fast = ["--epochs", "1", "--mc-samples", "2", "--image-size", "32"]
    assert main(["prepare", "camvid", "--root", str(camvid), "--out", str(out), *fast]) == 0
    store = FeatureStore.open(out)
    assert store.class_names == CLASSES
    assert [store.class_names[c] for c in store.rare_classes] == [
        "Pedestrian",
        "Bicyclist",
        "SignSymbol",
        "Pole",
        "Fence",
    ]
    images = {s: store.split_ids(s).size // store.grid.num_patches for s in SPLITS}
    init = round(468 * CAMVID_DEFAULTS["init_fraction"])
    assert images == {"init": init, "pool": 468 - init, "test": 233}
    env = gym.make("MiSiCAL-Store", root=str(out), budget=4)
    _, info = env.reset(seed=0)
    assert store.class_names[info["target_class"]] == "Pedestrian"


@pytest.mark.parametrize(
    ("settings", "train_crop"),
    [
        ({}, 128),
        ({"image_size": 256}, 128),
        ({"image_size": None}, 128),  # native 360x480 frames
        ({"image_size": 128}, None),  # a window as large as the image would be the image
        ({"image_size": 96}, None),
        ({"image_size": 96, "train_crop": 64}, 64),
    ],
)
def test_the_presets_training_window_applies_to_images_larger_than_it(
    settings: dict, train_crop: int | None
) -> None:
    config = camvid_config(**settings)
    assert config.train_crop == train_crop
    assert config.epochs == CAMVID_DEFAULTS["epochs"]
    assert config.levels == CAMVID_DEFAULTS["levels"]
    assert config.train_batch_size == CAMVID_DEFAULTS["train_batch_size"]


def test_the_command_lines_camvid_defaults_are_the_presets() -> None:
    from misical_gym.cli import build_parser

    args = build_parser().parse_args(["prepare", "camvid", "--root", "x"])
    for setting in ("image_size", "epochs", "levels", "train_batch_size", "init_fraction"):
        assert getattr(args, setting) == CAMVID_DEFAULTS[setting], setting


def test_a_training_window_larger_than_the_images_is_refused() -> None:
    with pytest.raises(ValueError, match="at most --image-size"):
        PrepareConfig(image_size=96, train_crop=128)
