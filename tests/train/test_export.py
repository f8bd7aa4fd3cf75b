"""Exports of ``misical select`` (json, csv, coco, labelstudio), ``--preview``, and reading a
Label Studio export back (polygons and brush masks)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from misical_gym.annotations.labelstudio import (
    decode_brush_rle,
    labelling_config,
    read_labelstudio,
)
from misical_gym.cli import main
from misical_gym.data import MaskFolder
from misical_gym.errors import DatasetError, StoreError
from misical_gym.prepare import PrepareConfig, prepare
from misical_gym.store import FeatureStore

CLASSES = {"names": ["sky", "road", "car"], "ignore": [255]}
SIZE = (48, 64)  # height, width: patches of 12 x 16 pixels on the 4x4 grid


@pytest.fixture(scope="module")
def mask_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """A store prepared from a folder of 12 PNG images and index masks."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        image = rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)
        label = np.zeros(SIZE, dtype=np.uint8)
        label[SIZE[0] // 2 :] = 1
        label[30:40, 10 + i : 30 + i] = 2
        Image.fromarray(image).save(root / "images" / f"street_{i:02d}.png")
        Image.fromarray(label).save(root / "labels" / f"street_{i:02d}.png")
    dataset = MaskFolder(CLASSES, root / "images", root / "labels")
    config = PrepareConfig(epochs=1, mc_samples=2, init_fraction=0.3, test_fraction=0.2, threads=1)
    return prepare(dataset, tmp_path_factory.mktemp("store") / "streets", config, progress=False)


def _select(store: FeatureStore, out: Path, *extra: str) -> int:
    argv = ["select", "--store", str(store.path), "--policy", "presence", "--target", "car"]
    argv += ["--budget", "10", "--out", str(out), "--mode", "rank", "--include-labelled"]
    return main([*argv, *extra])


def _picks(store: FeatureStore, tmp_path: Path) -> dict:
    assert _select(store, tmp_path / "picks.json") == 0
    return json.loads((tmp_path / "picks.json").read_text())


def test_picks_name_the_dataset_file_and_the_box_in_original_pixels(mask_store, tmp_path):
    selection = _picks(mask_store, tmp_path)
    assert selection["store_id"] == "streets"
    assert selection["store_fingerprint"] == mask_store.fingerprint
    assert Path(selection["image_root"]) / "images" == Path(
        mask_store.dataset["sources"][0]["images"]
    )
    for pick in selection["picks"]:
        image = mask_store.image_ids.index(pick["image_id"])
        assert pick["file_name"] == f"{pick['image_id']}.png"
        assert pick["file_name"].startswith("images/street_")
        assert (Path(selection["image_root"]) / pick["file_name"]).is_file()
        assert pick["image_size"] == list(SIZE)
        np.testing.assert_array_equal(pick["box"], mask_store.boxes([pick["patch_id"]])[0])
        assert mask_store.patches[pick["patch_id"], 0] == image


def test_a_dataset_that_moved_names_images_by_id_with_a_warning(mask_store, monkeypatch):
    from misical_gym import data
    from misical_gym.train.select import select_patches

    def gone(store, index):
        raise DatasetError("the folder is gone")

    monkeypatch.setattr(data, "store_image_file", gone)
    with pytest.warns(UserWarning, match="the folder is gone"):
        selection = select_patches(
            mask_store.path, "presence", "car", 5, mode="rank", include_labelled=True
        )
    assert selection["image_root"] is None
    assert [p["file_name"] for p in selection["picks"]] == [
        p["image_id"] for p in selection["picks"]
    ]


@pytest.mark.parametrize("fmt", ["csv", "coco", "labelstudio"])
def test_every_format_carries_the_store_the_file_names_and_the_boxes(mask_store, tmp_path, fmt):
    selection = _picks(mask_store, tmp_path)
    out = tmp_path / f"picks.{fmt}"
    assert _select(mask_store, out, "--format", fmt) == 0
    text = out.read_text()
    first = selection["picks"][0]
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert len(rows) == 10
        assert {r["store_fingerprint"] for r in rows} == {mask_store.fingerprint}
        assert {r["store_id"] for r in rows} == {"streets"}
        assert rows[0]["file_name"] == first["file_name"]
        assert [int(rows[0][k]) for k in ("y0", "x0", "y1", "x1")] == first["box"]
    elif fmt == "coco":
        coco = json.loads(text)
        assert coco["info"]["store_fingerprint"] == mask_store.fingerprint
        assert coco["info"]["store_id"] == "streets"
        image = coco["images"][0]
        assert image["file_name"] == first["file_name"]
        assert (image["height"], image["width"]) == SIZE
        y0, x0, y1, x1 = first["box"]
        assert coco["annotations"][0]["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    else:
        tasks = json.loads(text)
        images = {p["image_id"] for p in selection["picks"]}
        assert len(tasks) == len(images)  # one task per image
        assert sum(len(t["predictions"][0]["result"]) for t in tasks) == 10
        data = tasks[0]["data"]
        assert data["store_fingerprint"] == mask_store.fingerprint
        assert data["store_id"] == "streets" and data["target"] == "car"
        assert data["image"] == f"/data/local-files/?d={first['file_name']}"
        assert data["patches"][0]["box"] == first["box"] and data["score"] == first["score"]
        region = tasks[0]["predictions"][0]["result"][0]
        assert region["type"] == "rectanglelabels" and region["from_name"] == "patch"
        assert (region["original_height"], region["original_width"]) == SIZE
        y0, x0, y1, x1 = first["box"]
        value = region["value"]
        assert value["x"] == pytest.approx(100 * x0 / SIZE[1])
        assert value["y"] == pytest.approx(100 * y0 / SIZE[0])
        assert value["width"] == pytest.approx(100 * (x1 - x0) / SIZE[1])
        assert value["height"] == pytest.approx(100 * (y1 - y0) / SIZE[0])


def test_labelstudio_images_under_a_root_url(mask_store, tmp_path) -> None:
    out = tmp_path / "ls.json"
    url = "https://data.example.org/streets/"
    assert _select(mask_store, out, "--format", "labelstudio", "--image-root-url", url) == 0
    task = json.loads(out.read_text())[0]
    assert task["data"]["image"] == url + task["data"]["file_name"]


def test_the_root_url_needs_the_labelstudio_format(mask_store, tmp_path, capsys) -> None:
    assert _select(mask_store, tmp_path / "p.json", "--image-root-url", "http://x") == 2
    assert "applies to --format labelstudio" in capsys.readouterr().err


def test_preview_is_a_contact_sheet_in_rank_order(mask_store, tmp_path) -> None:
    png = tmp_path / "sheet.png"
    assert _select(mask_store, tmp_path / "p.json", "--preview", str(png)) == 0
    sheet = np.asarray(Image.open(png).convert("RGB"))
    # 10 thumbnails of 160 px, 8 to a row: two rows under the title.
    assert sheet.shape == (20 + 2 * (160 + 28), 8 * 160, 3)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)
    for rank in range(10):
        x, y = (rank % 8) * 160, 20 + (rank // 8) * 188
        assert red[y : y + 160, x : x + 160].sum() > 100  # the patch's outline
    assert not red[20 + 188 : 20 + 188 + 160, 2 * 160 :].any()  # no 11th thumbnail


def test_preview_of_a_store_without_images_is_a_clear_error(tiny_store, tmp_path, capsys):
    argv = ["select", "--store", str(tiny_store.path), "--policy", "presence", "--target"]
    argv += ["class3", "--budget", "5", "--out", str(tmp_path / "p.json")]
    assert main([*argv, "--preview", str(tmp_path / "s.png")]) == 2
    assert "--preview needs the store's images" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------------------- reading back
def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of ``values`` (uint8), runs only: the test's own encoder."""
    bits: list[str] = []

    def write(value: int, count: int) -> None:
        bits.append(format(value, f"0{count}b"))

    write(values.size, 32)
    write(7, 5)  # 8-bit words
    sizes = (3, 6, 10, 16)
    for size in sizes:
        write(size - 1, 4)
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and values[j + 1] == values[i] and j + 1 - i < (1 << 16):
            j += 1
        length = j - i + 1
        index = next(k for k, size in enumerate(sizes) if length - 1 < (1 << size))
        write(1, 1)
        write(index, 2)
        write(length - 1, sizes[index])
        write(int(values[i]), 8)
        i = j + 1
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


def _annotated_export(mask_store: FeatureStore, tmp_path: Path) -> tuple[Path, list[dict]]:
    out = tmp_path / "ls.json"
    assert _select(mask_store, out, "--format", "labelstudio") == 0
    tasks = json.loads(out.read_text())
    h, w = SIZE
    brush = np.zeros((h, w, 4), dtype=np.uint8)
    brush[0:6, 0:8] = 255  # an RGBA mask: rows 0-5, columns 0-7
    for number, task in enumerate(tasks):
        task["id"] = number + 1
        regions = list(task["predictions"][0]["result"])  # the patches stay as they were
        regions.append(
            {
                "id": "poly",
                "type": "polygonlabels",
                "from_name": "label",
                "to_name": "image",
                "original_width": w,
                "original_height": h,
                "value": {
                    # x from 25% to 50% of 64 px, y from 50% to 75% of 48 px
                    "points": [[25, 50], [50, 50], [50, 75], [25, 75]],
                    "polygonlabels": ["car"],
                },
            }
        )
        regions.append(
            {
                "id": "brush",
                "type": "brushlabels",
                "from_name": "brush",
                "to_name": "image",
                "original_width": w,
                "original_height": h,
                "value": {
                    "format": "rle",
                    "rle": encode_brush_rle(brush.ravel()),
                    "brushlabels": ["sky"],
                },
            }
        )
        task["annotations"] = [
            {"id": 1, "was_cancelled": True, "result": []},
            {"id": 2, "was_cancelled": False, "result": regions},
        ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    return export, tasks


def test_the_test_encoder_matches_the_decoder() -> None:
    values = np.repeat(np.arange(7, dtype=np.uint8) * 30, [1, 2, 3, 100, 9, 1, 5000])
    np.testing.assert_array_equal(decode_brush_rle(bytes(encode_brush_rle(values))), values)


def test_literal_blocks_decode() -> None:
    # num=3, word 8 bits, sizes 1,1,1,1; one literal block of 3 words: 5, 6, 7.
    stream = format(3, "032b") + format(7, "05b") + "0000" * 4
    stream += "0" + "00" + "1"  # literal, size index 0, length - 1 = 2... in 1 bit: 1 -> 2 words
    stream += format(5, "08b") + format(6, "08b")
    stream += "1" + "00" + "0" + format(7, "08b")  # a run of 1
    stream += "0" * (-len(stream) % 8)
    data = bytes(int(stream[k : k + 8], 2) for k in range(0, len(stream), 8))
    np.testing.assert_array_equal(decode_brush_rle(data), [5, 6, 7])


def test_polygons_and_brush_masks_come_back_as_label_maps(mask_store, tmp_path) -> None:
    export, tasks = _annotated_export(mask_store, tmp_path)
    annotations = read_labelstudio(export, mask_store)
    assert [a.image_index for a in annotations] == [
        mask_store.image_ids.index(t["data"]["image_id"]) for t in tasks
    ]
    label = annotations[0].label
    assert label.dtype == np.uint8 and label.shape == SIZE
    car, sky = 2, 0
    assert (label[25:36, 17:32] == car).all()  # inside the polygon (16..32 x 24..36 px)
    assert (label[0:6, 0:8] == sky).all()  # the brush stroke
    annotated = (label == car) | (label == sky)
    assert (label[~annotated] == 255).all()  # nothing else is annotated
    assert 15 * 11 <= (label == car).sum() <= 17 * 13


def test_an_export_of_an_earlier_version_of_the_store_is_read(mask_store, tmp_path) -> None:
    """Picks exported, then the store labelled elsewhere: the export still names the store."""
    export, tasks = _annotated_export(mask_store, tmp_path)
    store = FeatureStore.open(shutil.copytree(mask_store.path, tmp_path / mask_store.path.name))
    labelled, counts = np.array(store.labelled), np.array(store.counts)
    patch = store.split_ids("pool")[0]
    labelled[patch], counts[patch] = False, 0  # any update gives a new fingerprint
    store = store.update(labelled=labelled, counts=counts)
    assert store.fingerprint != tasks[0]["data"]["store_fingerprint"]
    assert len(read_labelstudio(export, store)) == len(tasks)


def test_unannotated_tasks_give_nothing(mask_store, tmp_path) -> None:
    export, tasks = _annotated_export(mask_store, tmp_path)
    del tasks[0]["annotations"]
    export.write_text(json.dumps(tasks))
    assert len(read_labelstudio(export, mask_store)) == len(tasks) - 1


@pytest.mark.parametrize(
    "damage, error, message",
    [
        ("fingerprint", StoreError, "was exported from store"),
        ("store_id", StoreError, "was exported from store"),
        ("image", StoreError, "is not one of the store's images"),
        ("size", StoreError, "annotated on an image of 96x64"),
        ("class", DatasetError, "is not one class of the store"),
        ("type", DatasetError, "region type 'keypointlabels'"),
        ("points", DatasetError, "polygon points"),
        ("rle", StoreError, "the brush mask holds"),
        ("json", DatasetError, "not a readable Label Studio JSON export"),
    ],
)
def test_bad_exports_are_refused(mask_store, tmp_path, damage, error, message) -> None:
    export, tasks = _annotated_export(mask_store, tmp_path)
    regions = tasks[0]["annotations"][1]["result"]
    poly, brush = regions[-2], regions[-1]
    if damage == "fingerprint":
        tasks[0]["data"]["store_fingerprint"] = "0" * 16
    elif damage == "store_id":
        tasks[0]["data"]["store_id"] = "another"
    elif damage == "image":
        tasks[0]["data"]["image_id"] = "images/not_here"
    elif damage == "size":
        poly["original_height"] = 96
    elif damage == "class":
        poly["value"]["polygonlabels"] = ["bicycle"]
    elif damage == "type":
        poly["type"] = "keypointlabels"
    elif damage == "points":
        poly["value"]["points"] = [[0, 0], [120, 0], [0, 10]]
    elif damage == "rle":
        brush["value"]["rle"] = encode_brush_rle(np.zeros(40, dtype=np.uint8))
    export.write_text("{" if damage == "json" else json.dumps(tasks))
    with pytest.raises(error, match=message):
        read_labelstudio(export, mask_store)


def test_the_labelling_config_names_every_class() -> None:
    config = labelling_config(["sky", 'a "quoted" & <odd> name'])
    assert '<Label value="sky"/>' in config
    assert "&quot;quoted&quot; &amp; &lt;odd&gt;" in config
    assert config.count("<Label ") == 1 + 2 * 2  # the patch, then polygon and brush per class
