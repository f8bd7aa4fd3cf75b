"""MaskFolder: index, palette and RGB masks, the classes file, list files and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from misical_gym.cli import main
from misical_gym.data import MaskClasses, MaskFolder, open_dataset, read_mask_classes
from misical_gym.data.base import SegmentationDataset
from misical_gym.errors import DatasetError
from misical_gym.store import FeatureStore

NAMES = ["sky", "road", "car"]
# A 4x6 map of values 0..2 with one pixel of value 3, blown up to 8x12.
VALUES = np.kron(np.array([[0, 0, 1], [2, 1, 3]]), np.ones((4, 4), dtype=int)).astype(np.uint8)
COLORS = [[0, 0, 255], [128, 64, 128], [255, 0, 0]]
UNLABELLED = [0, 0, 0]


def write_image(path: Path, shape: tuple[int, int], mode: str = "RGB", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A PNG of ``mask``: L for [H, W], LA, RGB or RGBA for 2, 3 or 4 channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def palette_png(path: Path, indices: np.ndarray) -> None:
    """A palette PNG whose colours are not its indices (index i drawn as grey 255 - 40 i)."""
    image = Image.fromarray(indices)
    image.putpalette([c for i in range(256) for c in (255 - 40 * i % 256,) * 3])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def index_folder(root: Path, masks: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    for seed, (stem, mask) in enumerate(masks.items()):
        write_image(root / "images" / f"{stem}{suffix}", mask.shape[:2], seed=seed)
        write_mask(root / "labels" / f"{stem}.png", mask)
    return root


def write_classes(path: Path, table: dict | str) -> Path:
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return path


# --- encodings --------------------------------------------------------------------------------


def test_index_masks_with_an_ignore_value(tmp_path: Path) -> None:
    root = index_folder(tmp_path, {"b": VALUES, "a": VALUES[::-1]})
    data = MaskFolder({"names": NAMES, "ignore": [3]}, root / "images", root / "labels")
    assert isinstance(data, SegmentationDataset)
    assert data.class_names == tuple(NAMES) and data.root == root.resolve()
    assert data.image_ids == ("images/a", "images/b")
    image, label = data[1]
    assert image.shape == (8, 12, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, np.where(VALUES == 3, 255, VALUES))
    np.testing.assert_array_equal(data[0][1], np.where(VALUES == 3, 255, VALUES)[::-1])


def test_values_remap_to_train_ids(tmp_path: Path) -> None:
    stored = np.choose(VALUES, [10, 20, 30, 0]).astype(np.uint8)
    root = index_folder(tmp_path, {"x": stored})
    classes = write_classes(
        tmp_path / "classes.yaml", "names: [sky, road, car]\nvalues: [30, 10, 20]\nignore: [0]\n"
    )
    label = MaskFolder(classes, root / "images", root / "labels")[0][1]
    np.testing.assert_array_equal(label, np.choose(VALUES, [1, 2, 0, 255]))


def test_palette_masks_are_read_raw(tmp_path: Path) -> None:
    palette_png(tmp_path / "labels" / "x.png", VALUES)
    write_image(tmp_path / "images" / "x.jpg", VALUES.shape)
    with Image.open(tmp_path / "labels" / "x.png") as im:
        assert im.mode == "P" and im.convert("L").getpixel((0, 0)) == 255  # colour is not index
    label = MaskFolder({"names": [*NAMES, "bike"]}, tmp_path / "images", tmp_path / "labels")[0][1]
    np.testing.assert_array_equal(label, VALUES)


@pytest.mark.parametrize("image_mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("label_mode", ["L", "LA"])
def test_images_of_any_mode_and_label_alpha(tmp_path: Path, image_mode, label_mode) -> None:
    write_image(tmp_path / "images" / "x.png", VALUES.shape, image_mode)
    mask = VALUES if label_mode == "L" else np.stack([VALUES, np.full_like(VALUES, 7)], -1)
    write_mask(tmp_path / "labels" / "x.png", mask)
    image, label = MaskFolder(
        {"names": [*NAMES, "bike"]}, tmp_path / "images", tmp_path / "labels"
    )[0]
    assert image.shape == (8, 12, 3)
    np.testing.assert_array_equal(label, VALUES)


@pytest.mark.parametrize("alpha", [False, True])
def test_rgb_masks_through_colors_with_an_ignore_colour(tmp_path: Path, alpha: bool) -> None:
    palette = np.array([*COLORS, UNLABELLED], dtype=np.uint8)
    rgb = palette[VALUES]
    if alpha:
        rgb = np.concatenate([rgb, np.full((*VALUES.shape, 1), 128, np.uint8)], -1)
    write_mask(tmp_path / "labels" / "x.png", rgb)
    write_image(tmp_path / "images" / "x.png", VALUES.shape)
    classes = write_classes(
        tmp_path / "classes.json", {"names": NAMES, "colors": COLORS, "ignore": [UNLABELLED]}
    )
    label = MaskFolder(classes, tmp_path / "images", tmp_path / "labels")[0][1]
    np.testing.assert_array_equal(label, np.where(VALUES == 3, 255, VALUES))


# --- unknown values ---------------------------------------------------------------------------


def test_unknown_values_name_file_value_and_pixel_count(tmp_path: Path) -> None:
    root = index_folder(tmp_path, {"x": VALUES})
    data = MaskFolder({"names": NAMES}, root / "images", root / "labels")
    with pytest.raises(DatasetError, match=r"x\.png holds values .*: 3 \(16 px\).*unknown-as"):
        data[0]
    lenient = MaskFolder({"names": NAMES}, root / "images", root / "labels", unknown_as_ignore=True)
    np.testing.assert_array_equal(lenient[0][1], np.where(VALUES == 3, 255, VALUES))


def test_unknown_colours_are_named_with_their_pixel_count(tmp_path: Path) -> None:
    write_mask(tmp_path / "labels" / "x.png", np.array([*COLORS, [9, 8, 7]], np.uint8)[VALUES])
    write_image(tmp_path / "images" / "x.png", VALUES.shape)
    data = MaskFolder({"names": NAMES, "colors": COLORS}, tmp_path / "images", tmp_path / "labels")
    with pytest.raises(DatasetError, match=r"holds colours .*\[9, 8, 7\] \(16 px\)"):
        data[0]


def test_rgb_mask_without_colors_is_a_clear_error(tmp_path: Path) -> None:
    write_mask(tmp_path / "labels" / "x.png", np.zeros((8, 12, 3), np.uint8))
    write_image(tmp_path / "images" / "x.png", (8, 12))
    with pytest.raises(DatasetError, match="RGB image, but the classes file gives no 'colors'"):
        MaskFolder({"names": NAMES}, tmp_path / "images", tmp_path / "labels")[0]


# --- classes files ----------------------------------------------------------------------------


def test_plain_text_classes_skip_blank_lines_and_comments(tmp_path: Path) -> None:
    path = write_classes(tmp_path / "classes.txt", "# CamVid-like\nsky\n\nroad  # asphalt\ncar\n")
    assert read_mask_classes(path) == MaskClasses(names=tuple(NAMES), values=(0, 1, 2))


def test_classes_round_trip_through_the_spec(tmp_path: Path) -> None:
    table = {"names": NAMES, "values": [5, 6, 7], "colors": COLORS, "ignore": [0, UNLABELLED]}
    parsed = read_mask_classes(write_classes(tmp_path / "c.json", table))
    assert parsed.ignore_values == (0,) and parsed.ignore_colors == (tuple(UNLABELLED),)
    assert MaskClasses.from_mapping(json.loads(json.dumps(parsed.to_dict()))) == parsed


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"values": [0]}, "'names' must be a non-empty list"),
        ({"names": ["a", "a"]}, "'names' repeats ['a']"),
        ({"names": NAMES, "values": [0, 1]}, "2 values for 3 names"),
        ({"names": NAMES, "values": [0, 1, 256]}, "integers 0..255"),
        ({"names": NAMES, "colors": [[0, 0, 0]] * 3}, "'colors' repeats"),
        ({"names": NAMES, "colors": [*COLORS[:2], [1, 2]]}, "[R, G, B]"),
        ({"names": NAMES, "ignore": [1]}, "both a class and ignored"),
        ({"names": NAMES, "ignore": 11}, "'ignore' must be a list"),
        ({"names": NAMES, "colour": COLORS}, "unknown key(s) ['colour']"),
    ],
)
def test_bad_classes_files_are_clear_errors(tmp_path: Path, table, message) -> None:
    with pytest.raises(DatasetError) as err:
        read_mask_classes(write_classes(tmp_path / "c.json", table))
    assert message in str(err.value) and "c.json" in str(err.value)


def test_unparsable_or_missing_classes_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot parse"):
        read_mask_classes(write_classes(tmp_path / "c.yaml", "names: [a\n"))
    with pytest.raises(DatasetError, match="not found"):
        read_mask_classes(tmp_path / "nowhere.txt")


# --- list files and paths ---------------------------------------------------------------------


@pytest.fixture()
def listed(tmp_path: Path) -> Path:
    """SegNet's CamVid layout in miniature: lists under a prefix that does not exist here."""
    root = tmp_path / "CamVid"
    for split, seed in (("train", 0), ("test", 1)):
        write_image(root / split / "f1.png", VALUES.shape, seed=seed)
        write_mask(root / f"{split}annot" / "f1.png", np.minimum(VALUES, 2))
        (root / f"{split}.txt").write_text(
            f"/SegNet/CamVid/{split}/f1.png /SegNet/CamVid/{split}annot/f1.png\n"
        )
    return root


def test_lists_with_a_foreign_absolute_prefix_resolve_under_the_root(listed: Path) -> None:
    data = MaskFolder(
        {"names": NAMES}, root=listed, lists=[listed / "train.txt", listed / "test.txt"]
    )
    assert data.image_ids == ("train/f1", "test/f1")
    np.testing.assert_array_equal(data[1][1], np.minimum(VALUES, 2))
    spec = json.loads(json.dumps(data.spec))
    again = open_dataset(spec)
    assert isinstance(again, MaskFolder) and again.image_ids == data.image_ids
    np.testing.assert_array_equal(again[0][0], data[0][0])


def test_list_lines_without_a_label_take_it_from_the_label_folder(listed: Path) -> None:
    (listed / "short.txt").write_text("# images only\ntrain/f1.png\n\n")
    data = MaskFolder(
        {"names": NAMES}, labels=listed / "trainannot", root=listed, lists=[listed / "short.txt"]
    )
    assert len(data) == 1
    np.testing.assert_array_equal(data[0][1], np.minimum(VALUES, 2))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/SegNet/CamVid/train/f9.png", "listed file /SegNet/CamVid/train/f9.png not found"),
        ("train/f9.png trainannot/f1.png", "not found"),
        ("../outside.png trainannot/f1.png", "outside the dataset root"),
        ("{outside} trainannot/f1.png", "outside the dataset root"),
        ("train/link.png trainannot/f1.png", "outside the dataset root"),
        ("a b c", "expected 'image [label]'"),
    ],
)
def test_bad_list_lines_are_clear_errors(listed: Path, line: str, message: str) -> None:
    outside = listed.parent / "outside.png"
    write_image(outside, VALUES.shape)
    (listed / "train" / "link.png").symlink_to(outside)
    (listed / "bad.txt").write_text(
        "train/f1.png trainannot/f1.png\n" + line.format(outside=outside)
    )
    with pytest.raises(DatasetError, match=r"bad\.txt:2") as err:
        MaskFolder({"names": NAMES}, root=listed, lists=[listed / "bad.txt"])
    assert message in str(err.value)


def test_a_missing_list_file(listed: Path) -> None:
    with pytest.raises(DatasetError, match=r"list file .*val\.txt not found"):
        MaskFolder({"names": NAMES}, root=listed, lists=[listed / "val.txt"])


# --- shape errors, as the COCO readers give them ----------------------------------------------


def test_an_image_without_a_label(tmp_path: Path) -> None:
    root = index_folder(tmp_path, {"a": VALUES})
    write_image(root / "images" / "b.jpg", VALUES.shape)
    with pytest.raises(DatasetError, match=r"1 of 2 images in .* have no label \.png"):
        MaskFolder({"names": [*NAMES, "x"]}, root / "images", root / "labels")


def test_a_label_of_another_size(tmp_path: Path) -> None:
    root = index_folder(tmp_path, {"a": VALUES})
    write_image(root / "images" / "a.png", (8, 10))
    with pytest.raises(DatasetError, match=r"label map .*a\.png is 8x12 \(HxW\) but its image"):
        MaskFolder({"names": [*NAMES, "x"]}, root / "images", root / "labels")[0]


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        MaskFolder({"names": NAMES}, tmp_path / "images", tmp_path / "labels")
    with pytest.raises(DatasetError, match="not found"):
        MaskFolder({"names": NAMES}, tmp_path / "nowhere", tmp_path / "labels")


# --- misical prepare masks --------------------------------------------------------------------

TINY = ["--epochs", "1", "--mc-samples", "2", "--init-fraction", "0.3", "--image-size", "16"]


def test_prepare_masks_with_a_test_fraction(tmp_path: Path) -> None:
    root = index_folder(tmp_path / "data", {f"i{k}": np.roll(VALUES, k, 1) for k in range(12)})
    classes = write_classes(tmp_path / "classes.txt", "sky\nroad\ncar\n")
    out = tmp_path / "store"
    argv = ["prepare", "masks", "--images", str(root / "images"), "--labels", str(root / "labels")]
    argv += ["--classes", str(classes), "--unknown-as-ignore", "--test-fraction", "0.25"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    store = FeatureStore.open(out)
    assert store.class_names == tuple(NAMES) and len(store.image_ids) == 12
    assert store.split_ids("test").size == 3 * 16
    data = open_dataset(store.dataset["sources"][0])
    direct = sum(np.bincount(data[i][1].ravel(), minlength=256)[:3] for i in range(len(data)))
    np.testing.assert_array_equal(np.asarray(store.counts).sum(0), direct)


def test_prepare_masks_with_lists(listed: Path, tmp_path: Path) -> None:
    for k in range(2, 6):
        write_image(listed / "train" / f"f{k}.png", VALUES.shape, seed=k)
        write_mask(listed / "trainannot" / f"f{k}.png", np.minimum(VALUES, 2))
    (listed / "train.txt").write_text("".join(f"train/f{k}.png\n" for k in range(1, 6)))
    classes = write_classes(tmp_path / "classes.txt", "\n".join(NAMES))
    argv = ["prepare", "masks", "--images", str(listed / "train")]
    argv += ["--labels", str(listed / "trainannot"), "--classes", str(classes)]
    argv += ["--train-list", str(listed / "train.txt"), "--test-list", str(listed / "test.txt")]
    assert main([*argv, *TINY, "--out", str(tmp_path / "s")]) == 0
    store = FeatureStore.open(tmp_path / "s")
    assert store.image_ids[-1] == "test/f1" and store.split_ids("test").size == 16
    assert store.split_ids("init").size + store.split_ids("pool").size == 5 * 16


def test_prepare_masks_bad_input_is_a_clear_error(tmp_path: Path, capsys) -> None:
    root = index_folder(tmp_path, {"x": VALUES})
    argv = ["prepare", "masks", "--images", str(root / "images"), "--labels", str(root / "labels")]
    assert main([*argv, "--classes", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error: classes file") and "Traceback" not in err
    classes = write_classes(tmp_path / "c.txt", "sky\n")
    argv += ["--classes", str(classes), "--test-images", str(root / "images")]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert "--test-images and --test-labels go together" in capsys.readouterr().err
