"""COCO-Stuff 10k / 164k and COCO JSON loaders: label mapping, real files and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from misical_gym.data import (
    COCO_STUFF_CLASSES,
    COCO_STUFF_IDS,
    CocoJson,
    CocoStuff10k,
    CocoStuff164k,
    open_dataset,
)
from misical_gym.data.base import SegmentationDataset
from misical_gym.errors import DatasetError

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "coco"
STUFF_JSON = "stuff_examples.json"
INSTANCES_JSON = "instances_val2017_1img-sample.json"

# COCO-Stuff name -> COCO id, built from the class table alone.
COCO_ID = {name: coco_id for coco_id, name in zip(COCO_STUFF_IDS, COCO_STUFF_CLASSES, strict=True)}

# pycocotools 2.0.11 decodes masks through a NumPy 1 idiom that NumPy 2 flags; harmless here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

ID_10K = ("COCO_train2014_000000000077", "COCO_train2014_000000000154", "COCO_val2014_000000000164")

# COCO-Stuff id -> expected train id, written out by hand from the official label list.
ID_PAIRS = [(0, 255), (1, 0), (11, 10), (12, 255), (13, 11), (91, 255), (92, 80), (182, 170)]


@pytest.fixture()
def real_fixtures() -> Path:
    if not (FIXTURES / STUFF_JSON).is_file():
        pytest.skip("the shared third-party COCO fixture files are not present")
    return FIXTURES


def write_jpg(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def save_10k_mat(path: Path, label_map: np.ndarray | None) -> None:
    """A COCO-Stuff 10k v1.1 annotation file with its real keys (``S`` left out when None)."""
    import scipy.io

    shape = (4, 4) if label_map is None else label_map.shape
    contents: dict[str, Any] = {
        "names": np.array(["unlabeled", *COCO_STUFF_CLASSES], dtype=object),
        "captions": np.array(["A man riding skis.", "Someone on a snowy slope."], dtype=object),
        "regionMapStuff": np.ones(shape, dtype=np.uint16),
        "regionLabelsStuff": np.array([[COCO_ID["snow"]]], dtype=np.uint8),
    }
    if label_map is not None:
        contents["S"] = label_map
    scipy.io.savemat(path, contents)


def save_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 behind a MAT header, arrays column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=np.ascontiguousarray(array.T))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5"
    with path.open("r+b") as f:
        f.write(header.ljust(116) + bytes(8) + b"\x00\x02IM")


def make_10k(root: Path, maps: dict[str, np.ndarray], train: list[str], test: list[str]) -> Path:
    for sub in ("images", "annotations", "imageLists"):
        (root / sub).mkdir(parents=True)
    for seed, (image_id, label_map) in enumerate(maps.items()):
        write_jpg(root / "images" / f"{image_id}.jpg", *label_map.shape, seed=seed)
        save_10k_mat(root / "annotations" / f"{image_id}.mat", label_map)
    for name, ids in (("all", [*train, *test]), ("train", train), ("test", test)):
        (root / "imageLists" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def id_map(values: list[list[int]], dtype: type = np.uint8, scale: int = 3) -> np.ndarray:
    """A label map of ``values`` blown up ``scale`` times, so JPEGs are not degenerate."""
    return np.kron(np.array(values), np.ones((scale, scale), dtype=int)).astype(dtype)


@pytest.fixture()
def coco10k(tmp_path: Path) -> Path:
    ids = [pair[0] for pair in ID_PAIRS]
    maps = {
        ID_10K[0]: id_map([ids[:4], ids[4:]]),
        ID_10K[1]: id_map([[1, 2, 3], [4, 5, 6]]),
        ID_10K[2]: id_map([[COCO_ID["skis"], COCO_ID["snow"]]]),
    }
    return make_10k(tmp_path / "cocostuff-10k", maps, train=list(ID_10K[:2]), test=[ID_10K[2]])


# --- COCO-Stuff 10k ---------------------------------------------------------------------------


def test_10k_maps_coco_ids_to_train_ids(coco10k: Path) -> None:
    data = CocoStuff10k(coco10k, "train")
    assert isinstance(data, SegmentationDataset)
    assert data.image_ids == ID_10K[:2]
    assert len(data) == 2
    assert data.class_names == COCO_STUFF_CLASSES
    image, label = data[0]
    expected = id_map([[pair[1] for pair in ID_PAIRS[:4]], [pair[1] for pair in ID_PAIRS[4:]]])
    assert image.dtype == np.uint8 and image.shape == (6, 12, 3)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(data[-1][1], id_map([[0, 1, 2], [3, 4, 5]]))


def test_10k_test_split_and_spec(coco10k: Path) -> None:
    data = CocoStuff10k(coco10k, "test")
    assert data.image_ids == (ID_10K[2],)
    np.testing.assert_array_equal(
        data[0][1], id_map([[COCO_STUFF_CLASSES.index("skis"), COCO_STUFF_CLASSES.index("snow")]])
    )
    spec = json.loads(json.dumps(data.spec))
    assert spec == {"kind": "coco10k", "root": str(coco10k.resolve()), "split": "test"}
    again = open_dataset(spec)
    assert isinstance(again, CocoStuff10k) and again.image_ids == data.image_ids
    np.testing.assert_array_equal(again[0][1], data[0][1])


def test_10k_index_errors(coco10k: Path) -> None:
    data = CocoStuff10k(coco10k, "train")
    with pytest.raises(IndexError):
        data[2]
    with pytest.raises(TypeError):
        data["0"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([[COCO_ID["skis"], 0]], np.uint8),
        ([[COCO_ID["skis"], 0]], np.uint16),
        ([[COCO_ID["skis"], 0]], np.int32),
        ([[COCO_ID["skis"], 0]], np.float64),
    ],
)
def test_10k_accepts_any_integral_dtype(tmp_path: Path, values: list, dtype: type) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map(values, dtype)}, train=["a"], test=["a"])
    expected = id_map([[COCO_STUFF_CLASSES.index("skis"), 255]])
    np.testing.assert_array_equal(CocoStuff10k(root, "train")[0][1], expected)


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [
        (183, np.uint8, "183"),  # "other" is not an id of the 10k maps
        (255, np.uint8, "255"),  # a 256-entry lookup would silently say "ignore"
        (257, np.uint16, "257"),  # read as uint8 it would wrap to 1, person
        (-1, np.int16, "-1"),  # read as uint8 it would wrap to 255
        (13.5, np.float64, "13.5"),
    ],
)
def test_10k_rejects_values_outside_the_ids(
    tmp_path: Path, value: float, dtype: type, shown: str
) -> None:
    label_map = id_map([[1, 2]], np.float64)
    label_map[0, 0] = value
    root = make_10k(tmp_path / "d", {"a": label_map.astype(dtype)}, train=["a"], test=["a"])
    data = CocoStuff10k(root, "train")
    with pytest.raises(DatasetError, match=rf"a\.mat.*{shown}") as info:
        data[0]
    assert "0..182" in str(info.value) or "non-integer" in str(info.value)


def test_10k_reads_matlab_v73_files(tmp_path: Path) -> None:
    import scipy.io

    label_map = id_map([[1, 13, 182], [0, 12, 92]])  # 6x9: transposing matters
    root = make_10k(tmp_path / "d", {"a": label_map}, train=["a"], test=["a"])
    mat = root / "annotations" / "a.mat"
    save_mat_v73(mat, {"S": label_map, "regionMapStuff": np.ones_like(label_map)})
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(mat)  # so the h5py path is what the dataset exercises
    np.testing.assert_array_equal(
        CocoStuff10k(root, "train")[0][1], id_map([[0, 11, 170], [255, 255, 80]])
    )


def test_10k_matlab_v73_without_s(tmp_path: Path) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map([[1, 2]])}, train=["a"], test=["a"])
    save_mat_v73(root / "annotations" / "a.mat", {"L": id_map([[1, 2]])})
    with pytest.raises(DatasetError, match=r"a\.mat \(MATLAB v7\.3\) has no array 'S'.*'L'"):
        CocoStuff10k(root, "train")[0]


def test_10k_mat_without_s(tmp_path: Path) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map([[1, 2]])}, train=["a"], test=["a"])
    save_10k_mat(root / "annotations" / "a.mat", None)
    with pytest.raises(DatasetError, match=r"a\.mat has no variable 'S'.*captions"):
        CocoStuff10k(root, "train")[0]


def test_10k_corrupt_mat(tmp_path: Path) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map([[1, 2]])}, train=["a"], test=["a"])
    (root / "annotations" / "a.mat").write_bytes(b"this is not a MATLAB file")
    with pytest.raises(DatasetError, match=r"cannot read .*a\.mat as a MATLAB"):
        CocoStuff10k(root, "train")[0]


def test_10k_label_size_differs_from_image(tmp_path: Path) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map([[1, 2]])}, train=["a"], test=["a"])
    save_10k_mat(root / "annotations" / "a.mat", id_map([[1, 2, 3]]))
    with pytest.raises(DatasetError, match=r"a\.mat is 3x9 .*a\.jpg is 3x6"):
        CocoStuff10k(root, "train")[0]


def test_10k_missing_files(tmp_path: Path) -> None:
    root = make_10k(tmp_path / "d", {"a": id_map([[1]]), "b": id_map([[2]])}, ["a", "b"], ["a"])
    (root / "images" / "a.jpg").unlink()
    (root / "annotations" / "b.mat").unlink()
    data = CocoStuff10k(root, "train")
    with pytest.raises(DatasetError, match=r"image .*a\.jpg not found"):
        data[0]
    with pytest.raises(DatasetError, match=r"b\.mat not found"):
        data[1]


def test_10k_bad_layout(tmp_path: Path, coco10k: Path) -> None:
    with pytest.raises(DatasetError, match=r"(?s)root .*nowhere not found.*imageLists/train\.txt"):
        CocoStuff10k(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="one of train, test; got 'val'"):
        CocoStuff10k(coco10k, "val")
    (coco10k / "imageLists" / "test.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"test\.txt is empty"):
        CocoStuff10k(coco10k, "test")
    (coco10k / "imageLists" / "train.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)train\.txt not found.*annotations/<id>\.mat"):
        CocoStuff10k(coco10k, "train")
    for path in (coco10k / "annotations").iterdir():
        path.unlink()
    (coco10k / "annotations").rmdir()
    with pytest.raises(DatasetError, match=r"(?s)folder .*annotations not found.*variable S"):
        CocoStuff10k(coco10k, "test")


# --- COCO-Stuff 164k --------------------------------------------------------------------------


def write_palette_png(path: Path, values: np.ndarray) -> None:
    """A palette PNG whose colours differ from its indices, as the real stuffthingmaps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
    assert image.mode == "P"
    image.save(path)


def make_164k(root: Path, split: str, maps: dict[str, np.ndarray]) -> Path:
    for seed, (name, values) in enumerate(maps.items()):
        write_jpg(root / "images" / split / f"{name}.jpg", *values.shape, seed=seed)
        write_palette_png(root / "stuffthingmaps" / split / f"{name}.png", values)
    return root


# 164k PNG value (id - 1) -> expected train id.
PNG_PAIRS = [(0, 0), (10, 10), (11, 255), (12, 11), (91, 80), (181, 170), (255, 255), (0, 0)]


@pytest.fixture()
def coco164k(tmp_path: Path) -> Path:
    values = [pair[0] for pair in PNG_PAIRS]
    maps = {
        "000000000285": id_map([values[:4], values[4:]]),
        "000000000139": id_map([[COCO_ID["skis"] - 1, COCO_ID["snow"] - 1, 255]]),
    }
    return make_164k(tmp_path / "cocostuff-164k", "val2017", maps)


def test_164k_maps_png_values_to_train_ids(coco164k: Path) -> None:
    data = CocoStuff164k(coco164k, "val2017")
    assert isinstance(data, SegmentationDataset)
    assert data.image_ids == ("000000000139", "000000000285")
    assert data.class_names == COCO_STUFF_CLASSES
    image, label = data[1]
    assert image.dtype == np.uint8 and image.shape == (6, 12, 3)
    assert label.dtype == np.uint8
    expected = id_map([[pair[1] for pair in PNG_PAIRS[:4]], [pair[1] for pair in PNG_PAIRS[4:]]])
    np.testing.assert_array_equal(label, expected)
    skis, snow = COCO_STUFF_CLASSES.index("skis"), COCO_STUFF_CLASSES.index("snow")
    np.testing.assert_array_equal(data[0][1], id_map([[skis, snow, 255]]))


def test_164k_split_shorthand_and_spec(coco164k: Path) -> None:
    data = CocoStuff164k(coco164k, "val")
    assert data.split == "val2017"
    spec = json.loads(json.dumps(data.spec))
    assert spec == {"kind": "coco164k", "root": str(coco164k.resolve()), "split": "val2017"}
    again = open_dataset(spec)
    assert isinstance(again, CocoStuff164k) and again.image_ids == data.image_ids
    np.testing.assert_array_equal(again[1][1], data[1][1])


def test_164k_other_split_names_are_taken_literally(tmp_path: Path) -> None:
    root = make_164k(tmp_path / "d", "val", {"x": id_map([[0]])})
    assert CocoStuff164k(root, "val").split == "val"


@pytest.mark.parametrize("value", [182, 183, 254])
def test_164k_rejects_values_outside_the_ids(tmp_path: Path, value: int) -> None:
    root = make_164k(tmp_path / "d", "val2017", {"x": id_map([[0, value]])})
    with pytest.raises(DatasetError, match=rf"x\.png holds values \{{{value}\}}.*0\.\.181"):
        CocoStuff164k(root, "val2017")[0]


def test_164k_rejects_colour_pngs(tmp_path: Path) -> None:
    root = make_164k(tmp_path / "d", "val2017", {"x": id_map([[0, 1]])})
    Image.new("RGB", (6, 3)).save(root / "stuffthingmaps" / "val2017" / "x.png")
    with pytest.raises(DatasetError, match=r"x\.png is a 'RGB' image; expected an 8-bit single"):
        CocoStuff164k(root, "val2017")[0]


def test_164k_label_size_differs_from_image(tmp_path: Path) -> None:
    root = make_164k(tmp_path / "d", "val2017", {"x": id_map([[0, 1]])})
    write_palette_png(root / "stuffthingmaps" / "val2017" / "x.png", id_map([[0], [1]]))
    with pytest.raises(DatasetError, match=r"x\.png is 6x3 .*x\.jpg is 3x6"):
        CocoStuff164k(root, "val2017")[0]


def test_164k_bad_layout(tmp_path: Path, coco164k: Path) -> None:
    with pytest.raises(DatasetError, match=r"(?s)root .*nowhere not found.*stuffthingmaps/<split>"):
        CocoStuff164k(tmp_path / "nowhere", "val2017")
    with pytest.raises(
        DatasetError, match=r"images/train not found \(splits there: \['val2017'\]\)"
    ):
        CocoStuff164k(coco164k, "train")
    with pytest.raises(DatasetError, match="folder name"):
        CocoStuff164k(coco164k, "../val2017")
    (coco164k / "stuffthingmaps" / "val2017" / "000000000285.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images .* e\.g\. .*000000000285\.png"):
        CocoStuff164k(coco164k, "val2017")
    (coco164k / "images" / "empty").mkdir()
    (coco164k / "stuffthingmaps" / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty holds no \.jpg images"):
        CocoStuff164k(coco164k, "empty")


# --- COCO-format JSON -------------------------------------------------------------------------


def images_for(annotation_files: list[Path], folder: Path) -> Path:
    """Dummy JPGs of the sizes and file names the JSON files give (the images are not shipped)."""
    for path in annotation_files:
        for entry in json.loads(path.read_text())["images"]:
            write_jpg(folder / entry["file_name"], entry["height"], entry["width"])
    return folder


def load_coco(path: Path) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def reference_label_map(annotation_files: list[Path], image_id: int) -> np.ndarray:
    """Paint straight with pycocotools: stuff, then things; larger masks first; skip "other"."""
    layers = []
    for path in annotation_files:
        coco = load_coco(path)
        if image_id not in coco.imgs:
            continue
        height, width = coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            if ann["category_id"] == 183:
                continue
            mask = coco.annToMask(ann) > 0
            is_thing = ann["category_id"] <= 91
            layers.append(
                (is_thing, -int(mask.sum()), COCO_STUFF_IDS.index(ann["category_id"]), mask)
            )
    label = np.full((height, width), 255, dtype=np.uint8)
    for _, _, train_id, mask in sorted(layers, key=lambda layer: layer[:2]):
        label[mask] = train_id
    return label


def test_json_stuff_examples_match_pycocotools(real_fixtures: Path, tmp_path: Path) -> None:
    files = [real_fixtures / STUFF_JSON]
    data = CocoJson(images_for(files, tmp_path / "images"), files)
    assert isinstance(data, SegmentationDataset)
    assert data.image_ids == ("934", "13715")
    assert data.class_names == COCO_STUFF_CLASSES
    coco = load_coco(files[0])
    for index, image_id in enumerate((934, 13715)):
        image, label = data[index]
        assert image.shape == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"], 3)
        np.testing.assert_array_equal(label, reference_label_map(files, image_id))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        masks = {ann["id"]: coco.annToMask(ann).astype(bool) for ann in anns}
        # COCO-Stuff regions do not overlap, so this compares decoding, not paint order.
        assert np.sum(list(masks.values()), axis=0).max() == 1
        other = np.any([masks[a["id"]] for a in anns if a["category_id"] == 183], axis=0)
        assert other.any() and (label[other] == 255).all()
        assert set(np.unique(label[~other])) <= set(range(80, 171)) | {255}


def test_json_instances_sample_matches_pycocotools(real_fixtures: Path, tmp_path: Path) -> None:
    files = [real_fixtures / INSTANCES_JSON]
    data = CocoJson(images_for(files, tmp_path / "images"), files)
    assert data.image_ids == ("448263",)
    assert data.class_names == COCO_STUFF_CLASSES
    image, label = data[0]
    assert image.shape == (240, 320, 3)
    np.testing.assert_array_equal(label, reference_label_map(files, 448263))
    # The sports ball and the glove lie on people; smaller-over-larger keeps them whole.
    coco = load_coco(files[0])
    for category, name in ((37, "sports ball"), (40, "baseball glove")):
        (ann,) = coco.loadAnns(coco.getAnnIds(catIds=[category]))
        mask = coco.annToMask(ann).astype(bool)
        assert (label[mask] == COCO_STUFF_CLASSES.index(name)).all()
    crowd = [a for a in coco.loadAnns(coco.getAnnIds()) if a["iscrowd"]]
    assert crowd and isinstance(crowd[0]["segmentation"]["counts"], list)
    assert (label[coco.annToMask(crowd[0]).astype(bool)] != 255).all()


def test_json_merges_real_files_by_image_id(real_fixtures: Path, tmp_path: Path) -> None:
    files = [real_fixtures / INSTANCES_JSON, real_fixtures / STUFF_JSON]
    images = images_for(files, tmp_path / "images")
    data = CocoJson(images, files)
    assert data.image_ids == ("934", "13715", "448263")
    for index, image_id in enumerate((934, 13715, 448263)):
        np.testing.assert_array_equal(data[index][1], reference_label_map(files, image_id))
    assert open_dataset(json.loads(json.dumps(data.spec))).image_ids == data.image_ids


def test_result_pngs_hold_coco_ids_not_164k_values(real_fixtures: Path, tmp_path: Path) -> None:
    sizes = {"000000000934": (480, 640), "000000013715": (500, 335)}
    for name, size in sizes.items():
        with Image.open(real_fixtures / f"{name}.png") as image:
            assert image.mode == "P"
            values = np.array(image)
            assert not np.array_equal(np.array(image.convert("L")), values)
        assert values.shape == size and values.dtype == np.uint8
        assert values.min() >= 92 and values.max() <= 183
        assert 183 in values  # "other": no 164k stuffthingmap value
    # As 164k stuffthingmaps they are refused, not silently shifted by one.
    root = tmp_path / "164k"
    write_jpg(root / "images" / "val2017" / "000000000934.jpg", *sizes["000000000934"])
    (root / "stuffthingmaps" / "val2017").mkdir(parents=True)
    png = (real_fixtures / "000000000934.png").read_bytes()
    (root / "stuffthingmaps" / "val2017" / "000000000934.png").write_bytes(png)
    with pytest.raises(DatasetError, match=r"holds values \{182, 183\}"):
        CocoStuff164k(root, "val2017")[0]


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


def box(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = True
    return mask


def write_json(path: Path, images: list, categories: list, annotations: list) -> Path:
    path.write_text(
        json.dumps({"images": images, "categories": categories, "annotations": annotations})
    )
    return path


H, W = 20, 30


@pytest.fixture()
def merged_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Stuff JSON (compressed RLE) and instances JSON (polygon + uncompressed RLE), same image."""
    image = {"id": 7, "file_name": "seven.jpg", "height": H, "width": W}
    stuff = write_json(
        tmp_path / "stuff.json",
        [image],
        [
            {"id": COCO_ID["grass"], "name": "grass"},
            {"id": COCO_ID["sky-other"], "name": "sky-other"},
            {"id": 183, "name": "other"},
        ],
        [
            {"id": 1, "image_id": 7, "category_id": COCO_ID["grass"], "iscrowd": 0,
             "segmentation": compressed_rle(box(H, W, slice(10, H), slice(None)))},
            {"id": 2, "image_id": 7, "category_id": COCO_ID["sky-other"], "iscrowd": 0,
             "segmentation": compressed_rle(box(H, W, slice(0, 10), slice(0, 15)))},
            {"id": 3, "image_id": 7, "category_id": 183, "iscrowd": 0,
             "segmentation": compressed_rle(box(H, W, slice(0, 10), slice(15, W)))},
        ],
    )  # fmt: skip
    instances = write_json(
        tmp_path / "instances.json",
        [image, {"id": 8, "file_name": "eight.jpg", "height": 4, "width": 5}],
        [{"id": 1, "name": "person"}, {"id": 37, "name": "sports ball"}],
        [
            # The ball comes first in the file, yet must end up on top of the person.
            {"id": 11, "image_id": 7, "category_id": 37, "iscrowd": 1,
             "segmentation": uncompressed_rle(box(H, W, slice(8, 11), slice(8, 11)))},
            {"id": 12, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[5.0, 5.0, 20.0, 5.0, 20.0, 15.0, 5.0, 15.0]]},
        ],
    )  # fmt: skip
    write_jpg(tmp_path / "img" / "seven.jpg", H, W)
    write_jpg(tmp_path / "img" / "eight.jpg", 4, 5)
    return tmp_path / "img", stuff, instances


def test_json_paints_stuff_then_things_smaller_on_top(merged_pair: tuple[Path, Path, Path]) -> None:
    from pycocotools import mask as mask_utils

    images, stuff, instances = merged_pair
    data = CocoJson(images, [stuff, instances])
    assert data.image_ids == ("7", "8")
    person = mask_utils.decode(
        mask_utils.merge(
            mask_utils.frPyObjects([[5.0, 5.0, 20.0, 5.0, 20.0, 15.0, 5.0, 15.0]], H, W)
        )
    ).astype(bool)
    assert 100 < person.sum() < 200
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[10:, :] = COCO_STUFF_CLASSES.index("grass")
    expected[:10, :15] = COCO_STUFF_CLASSES.index("sky-other")
    expected[person] = COCO_STUFF_CLASSES.index("person")
    expected[8:11, 8:11] = COCO_STUFF_CLASSES.index("sports ball")
    np.testing.assert_array_equal(data[0][1], expected)
    np.testing.assert_array_equal(CocoJson(images, [instances, stuff])[0][1], expected)
    np.testing.assert_array_equal(data[1][1], np.full((4, 5), 255, dtype=np.uint8))


def test_json_own_categories_are_numbered_in_id_order(tmp_path: Path) -> None:
    image = {"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}
    path = write_json(
        tmp_path / "custom.json",
        [image],
        [
            {"id": 9, "name": "crossing", "isthing": 0},
            {"id": 1, "name": "car"},  # a COCO id, but not COCO's name for it
            {"id": 183, "name": "other"},
        ],
        [
            # Stuff smaller than the thing over it: stuff-first must win over larger-first.
            {"id": 1, "image_id": 1, "category_id": 9,
             "segmentation": compressed_rle(box(6, 8, slice(2, 4), slice(2, 4)))},
            {"id": 2, "image_id": 1, "category_id": 1,
             "segmentation": compressed_rle(box(6, 8, slice(0, 6), slice(0, 5)))},
            {"id": 3, "image_id": 1, "category_id": 183,
             "segmentation": compressed_rle(box(6, 8, slice(0, 6), slice(5, 8)))},
        ],
    )  # fmt: skip
    write_jpg(tmp_path / "a.jpg", 6, 8)
    data = CocoJson(tmp_path, path)
    assert data.class_names == ("car", "crossing")
    expected = np.full((6, 8), 255, dtype=np.uint8)
    expected[:, :5] = 0
    np.testing.assert_array_equal(data[0][1], expected)


def test_json_bad_files(tmp_path: Path, merged_pair: tuple[Path, Path, Path]) -> None:
    images, stuff, instances = merged_pair
    with pytest.raises(DatasetError, match=r"image folder .*nowhere not found"):
        CocoJson(tmp_path / "nowhere", stuff)
    with pytest.raises(DatasetError, match=r"missing\.json not found; expected COCO-format"):
        CocoJson(images, [stuff, tmp_path / "missing.json"])
    with pytest.raises(DatasetError, match="at least one"):
        CocoJson(images, [])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"cannot read .*broken\.json as COCO-format JSON"):
        CocoJson(images, tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"list\.json as COCO-format JSON"):
        CocoJson(images, tmp_path / "list.json")
    empty = write_json(tmp_path / "empty.json", [], [{"id": 1, "name": "person"}], [])
    with pytest.raises(DatasetError, match=r"no images listed in .*empty\.json"):
        CocoJson(images, empty)
    image = {"id": 7, "file_name": "other.jpg", "height": H, "width": W}
    renamed = write_json(tmp_path / "renamed.json", [image], [], [])
    with pytest.raises(DatasetError, match=r"image 7 is \('seven\.jpg', 20, 30\).*renamed\.json"):
        CocoJson(images, [stuff, renamed])
    image = {"id": 7, "file_name": "seven.jpg", "height": H, "width": W}
    ann = {"id": 5, "image_id": 7, "category_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]]}
    unknown = write_json(tmp_path / "unknown.json", [image], [{"id": 1, "name": "person"}], [ann])
    with pytest.raises(DatasetError, match=r"unknown\.json: annotation 5 has category_id 2"):
        CocoJson(images, unknown)
    ann = {**ann, "category_id": 1, "image_id": 99}
    orphan = write_json(tmp_path / "orphan.json", [image], [{"id": 1, "name": "person"}], [ann])
    with pytest.raises(DatasetError, match=r"orphan\.json: annotation 5 refers to image_id 99"):
        CocoJson(images, orphan)
    clash = write_json(tmp_path / "clash.json", [image], [{"id": 1, "name": "human"}], [])
    with pytest.raises(DatasetError, match=r"category 1 is 'person' in .*clash\.json"):
        CocoJson(images, [instances, clash])


def test_json_bad_items(tmp_path: Path, merged_pair: tuple[Path, Path, Path]) -> None:
    images, stuff, instances = merged_pair
    data = CocoJson(images, [stuff, instances])
    write_jpg(images / "seven.jpg", H + 1, W)
    with pytest.raises(DatasetError, match=r"seven\.jpg is 21x30 \(HxW\) but .* as 20x30"):
        data[0]
    (images / "seven.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image .*seven\.jpg not found"):
        data[0]
    image = {"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}
    ann = {"id": 4, "image_id": 1, "category_id": 1,
           "segmentation": compressed_rle(box(6, 9, slice(0, 2), slice(0, 2)))}  # fmt: skip
    wrong = write_json(tmp_path / "wrong.json", [image], [{"id": 1, "name": "person"}], [ann])
    write_jpg(images / "a.jpg", 6, 8)
    with pytest.raises(DatasetError, match=r"wrong\.json: annotation 4 decodes to a 6x9 mask"):
        CocoJson(images, wrong)[0]
    ann = {**ann, "segmentation": {"size": [6, 8], "counts": "%%% not rle"}}
    garbled = write_json(tmp_path / "garbled.json", [image], [{"id": 1, "name": "person"}], [ann])
    with pytest.raises(DatasetError, match=r"garbled\.json: .*annotation 4"):
        CocoJson(images, garbled)[0]


# --- open_dataset and import weight ------------------------------------------------------------


def test_open_dataset_synthetic() -> None:
    from misical_gym.data.synthetic import SyntheticScenes

    world = SyntheticScenes(3, seed=5)
    again = open_dataset(json.loads(json.dumps(world.spec)))
    assert isinstance(again, SyntheticScenes) and again.image_ids == world.image_ids
    np.testing.assert_array_equal(again[2][1], world[2][1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "coco2014"}, "unknown dataset kind 'coco2014'; known kinds: synthetic, coco10k"),
        ({"root": "x"}, "'kind' key"),
        ({"kind": "coco10k", "root": "x"}, "does not fit 'coco10k'.*split"),
        ({"kind": "coco-json", "image_dir": "x", "files": []}, "does not fit 'coco-json'"),
    ],
)
def test_open_dataset_rejects_bad_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec)


def test_import_stays_light() -> None:
    code = (
        "import sys, misical_gym, misical_gym.data, misical_gym.data.coco\n"
        "heavy = {'torch', 'scipy', 'pycocotools', 'h5py', 'PIL'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
