"""Unlabelled pools: prepare --unlabelled, add-images and label, on tiny mask folders."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from misical_gym.cli import main
from misical_gym.data import store_image
from misical_gym.features import patch_class_counts
from misical_gym.store import MANIFEST, FeatureStore
from tests.data.test_masks import VALUES, index_folder, write_classes, write_image, write_mask

TINY = ["--epochs", "1", "--mc-samples", "2", "--init-fraction", "0.3", "--image-size", "16"]
TINY += ["--threads", "1", "--test-fraction", "0.25"]
ARRAYS = ("features", "counts", "patches", "image_sizes", "labelled")
NEW = [f"u{k}" for k in range(3)]  # the unlabelled images; their labels are held back


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory) -> Path:
    """12 labelled 8x12 images, 3 unlabelled ones and their held-back masks, 2 more for later."""
    root = tmp_path_factory.mktemp("pool")
    index_folder(root / "data", {f"i{k}": np.roll(VALUES, k, 1) for k in range(12)})
    write_classes(root / "classes.txt", "sky\nroad\ncar\n")
    for k, stem in enumerate([*NEW, "v0", "v1"]):
        folder = "unlabelled" if stem in NEW else "later"
        write_image(root / folder / f"{stem}.png", VALUES.shape, seed=50 + k)
        write_mask(root / "truth" / f"{stem}.png", np.minimum(np.roll(VALUES, k, 0), 2))
    return root


@pytest.fixture(scope="module")
def prepared(pool_data: Path) -> Path:
    out = pool_data / "store"
    argv = ["prepare", "masks", "--images", str(pool_data / "data" / "images")]
    argv += ["--labels", str(pool_data / "data" / "labels")]
    argv += ["--classes", str(pool_data / "classes.txt"), "--unknown-as-ignore"]
    argv += ["--unlabelled", str(pool_data / "unlabelled"), *TINY, "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture
def store(prepared: Path, tmp_path: Path) -> FeatureStore:
    """A fresh copy of the prepared store (the tests change it)."""
    return FeatureStore.open(shutil.copytree(prepared, tmp_path / "store"))


def manifest_bytes(store: FeatureStore) -> bytes:
    return (store.path / MANIFEST).read_bytes()


def truth(pool_data: Path, stem: str) -> np.ndarray:
    return np.array(Image.open(pool_data / "truth" / f"{stem}.png"))


# --- prepare --unlabelled ----------------------------------------------------------------------


def test_unlabelled_images_join_the_pool_with_features_and_unknown_counts(store, capsys) -> None:
    unknown = store.split_ids("pool", labelled=False)
    assert unknown.size == len(NEW) * 16
    images = np.unique(np.asarray(store.patches[unknown, 0]))
    assert [store.image_ids[i] for i in images] == NEW
    assert (np.asarray(store.counts)[unknown] == 0).all()
    features = np.asarray(store.features)[unknown]
    assert np.isfinite(features).all() and features[:, 3:6].sum(1) == pytest.approx(1, abs=1e-4)
    assert store.split_ids("init", labelled=False).size == 0
    assert store.split_ids("test", labelled=False).size == 0
    image, label = store_image(store, int(images[0]))
    assert image.shape[:2] == label.shape and (label == 255).all()
    assert main(["inspect", str(store.path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unlabelled_patches_per_split"] == {"init": 0, "pool": 48, "test": 0}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "unlabelled image folder .* not found"),
        (lambda d: d.mkdir(), "no images"),
        (lambda d: (d.mkdir(), (d / "x.png").write_bytes(b"not a png")), "cannot read image"),
        (lambda d: write_image(d / "i3.png", (8, 12)), "the name of an image the store already"),
    ],
)
def test_prepare_refuses_a_bad_unlabelled_folder(pool_data, tmp_path, capsys, make, message):
    folder = tmp_path / "new"
    make(folder)
    argv = ["prepare", "masks", "--images", str(pool_data / "data" / "images")]
    argv += ["--labels", str(pool_data / "data" / "labels")]
    argv += ["--classes", str(pool_data / "classes.txt"), "--unknown-as-ignore"]
    argv += ["--unlabelled", str(folder), *TINY, "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    error = err[err.index("misical: error:") :]  # after the progress bars
    assert re.search(message, error) and "Traceback" not in err, err
    assert not (tmp_path / "s" / MANIFEST).exists()


# --- add-images ------------------------------------------------------------------------------


def test_add_images_appends_unlabelled_pool_patches(store, pool_data, capsys) -> None:
    before = FeatureStore.open(store.path)
    n = before.num_patches
    assert main(["add-images", str(store.path), str(pool_data / "later"), "--threads", "1"]) == 0
    after = FeatureStore.open(store.path)
    assert after.num_patches == n + 32 and after.image_ids[-2:] == ("v0", "v1")
    np.testing.assert_array_equal(np.asarray(after.features)[:n], np.asarray(before.features))
    np.testing.assert_array_equal(np.asarray(after.counts)[:n], np.asarray(before.counts))
    assert not after.labelled[n:].any() and (np.asarray(after.patches)[n:, 3] == 1).all()
    assert np.isfinite(np.asarray(after.features)[n:]).all()
    image, _ = store_image(after, len(after.image_ids) - 1)
    assert image.shape[:2] == tuple(after.image_sizes[-1])
    assert after.knows_fingerprint(before.fingerprint)
    gym.make("MiSiCAL-Store", root=str(after.path), split="pool", target_class="car").reset(seed=0)
    # The same folder again: its names are taken now; nothing changes.
    capsys.readouterr()
    manifest = manifest_bytes(after)
    assert main(["add-images", str(store.path), str(pool_data / "later")]) == 2
    assert "already has" in capsys.readouterr().err and manifest_bytes(after) == manifest


def test_add_images_to_a_typo_is_a_clear_error(tmp_path, pool_data, capsys) -> None:
    assert main(["add-images", str(tmp_path / "nostore"), str(pool_data / "later")]) == 2
    assert "no feature store" in capsys.readouterr().err


KILL_POINTS = {
    # After the new arrays are saved, before the manifest names them.
    "before_commit": "import misical_gym.store as m; real = m.atomic_write_text\n"
    "def hook(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
    "m.atomic_write_text = hook",
    # Inside the manifest's atomic write: the new manifest is written, not yet renamed.
    "in_rename": "import misical_gym.atomic as m; real = m.os.replace\n"
    "def hook(src, dst): os.kill(os.getpid(), signal.SIGKILL) "
    "if str(dst).endswith('manifest.json') else real(src, dst)\n"
    "m.os.replace = hook",
}


def run_killed(command: list[str], point: str) -> None:
    """Run ``misical COMMAND`` in a subprocess that SIGKILLs itself at ``point``."""
    script = f"import os, signal\n{KILL_POINTS[point]}\n"
    script += f"from misical_gym.cli import main\nmain({command!r})\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_add_images_leaves_the_store_as_it_was(store, pool_data, point) -> None:
    manifest, n = manifest_bytes(store), store.num_patches
    files = {p.name for p in store.path.iterdir()}
    run_killed(["add-images", str(store.path), str(pool_data / "later"), "--threads", "1"], point)
    again = FeatureStore.open(store.path)
    assert manifest_bytes(again) == manifest and again.num_patches == n
    # The next update removes what the killed one left, and only that.
    assert main(["add-images", str(store.path), str(pool_data / "later"), "--threads", "1"]) == 0
    assert {p.name for p in store.path.iterdir()} - {".update.lock"} == {
        FeatureStore.open(store.path).manifest["arrays"][name]["file"] for name in ARRAYS
    } | (files - {f"{name}.npy" for name in ARRAYS})


# --- label -----------------------------------------------------------------------------------


def write_answers(folder: Path, pool_data: Path, stems: list[str], keep_rows: int = 8) -> Path:
    """The held-back masks of ``stems``, with rows from ``keep_rows`` on left unannotated."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        mask = truth(pool_data, stem).copy()
        mask[keep_rows:] = 255
        write_mask(folder / f"{stem}.png", mask)
    return folder


def test_label_counts_the_fully_annotated_patches(store, pool_data, tmp_path, capsys) -> None:
    answers = write_answers(tmp_path / "answers", pool_data, NEW[:2], keep_rows=4)
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 8 rows on a 4x4 grid: 2 rows a patch; 4 annotated rows cover the top two grid rows.
    assert summary == {"labelled": 16, "unchanged": 0, "partial": 16, "images": 2}
    after = FeatureStore.open(store.path)
    for k, stem in enumerate(NEW[:2]):
        ids = np.flatnonzero(np.asarray(after.patches[:, 0]) == after.image_ids.index(stem))
        expect = patch_class_counts(truth(pool_data, stem), after.grid, after.num_classes)
        assert after.labelled[ids[:8]].all() and not after.labelled[ids[8:]].any(), k
        np.testing.assert_array_equal(np.asarray(after.counts)[ids[:8]], expect[:8])
        assert (np.asarray(after.counts)[ids[8:]] == 0).all()
    # Idempotent: the same answers again change nothing, not even the manifest's bytes.
    manifest = manifest_bytes(after)
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 16
    assert manifest_bytes(after) == manifest


def test_labelled_patches_are_drawn_and_pay_their_counts(store, pool_data, tmp_path) -> None:
    answers = write_answers(tmp_path / "answers", pool_data, NEW, keep_rows=8)
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    after = FeatureStore.open(store.path)
    assert after.split_ids("pool", labelled=False).size == 0
    assert after.class_patches("pool")[2] > store.class_patches("pool")[2]


def test_a_labelled_patch_is_not_relabelled_with_other_counts(store, pool_data, tmp_path, capsys):
    answers = write_answers(tmp_path / "a", pool_data, NEW[:1])
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    manifest = manifest_bytes(FeatureStore.open(store.path))
    write_mask(answers / f"{NEW[0]}.png", np.zeros(VALUES.shape, np.uint8))
    capsys.readouterr()
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 2
    assert "labelled already, with other counts" in capsys.readouterr().err
    assert manifest_bytes(FeatureStore.open(store.path)) == manifest


@pytest.mark.parametrize(
    "name, mask, message",
    [
        ("nosuch", np.zeros(VALUES.shape, np.uint8), "is not an image of store"),
        (NEW[0], np.zeros((8, 8), np.uint8), "but the image is 8x12"),
        (NEW[0], np.zeros((*VALUES.shape, 3), np.uint8), "gives no 'colors'"),
    ],
)
def test_label_refuses_and_changes_nothing(store, tmp_path, capsys, name, mask, message) -> None:
    answers = tmp_path / "answers"
    write_mask(answers / f"{NEW[1]}.png", np.zeros(VALUES.shape, np.uint8))  # a good one too
    write_mask(answers / f"{name}.png", mask)
    manifest = manifest_bytes(store)
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("misical: error:") and message in err, err
    assert manifest_bytes(FeatureStore.open(store.path)) == manifest


def coco_answers(
    path: Path,
    store: FeatureStore | None,
    stem: str,
    size: tuple[int, int] | None = None,
    **info: str,
) -> Path:
    """One image covered by one rectangle of 'car' (its top half) and one of 'road'."""
    h, w = size or (int(v) for v in store.image_sizes[store.image_ids.index(stem)])
    boxes = {"car": [0, 0, w, h // 2], "road": [0, h // 2, w, h]}
    annotations = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": k + 1,
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            "area": (x1 - x0) * (y1 - y0),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "iscrowd": 0,
        }
        for k, (x0, y0, x1, y1) in enumerate(boxes.values())
    ]
    data = {
        "info": info,
        "images": [{"id": 1, "file_name": f"{stem}.png", "height": h, "width": w}],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(boxes)],
    }
    path.write_text(json.dumps(data))
    return path


def test_label_from_coco_json(store, tmp_path, capsys) -> None:
    ident = {"store_id": store.path.name, "store_fingerprint": store.fingerprint}
    answers = coco_answers(tmp_path / "a.json", store, NEW[2], **ident)
    assert main(["label", str(store.path), "--annotations", str(answers), "--format", "coco"]) == 0
    assert json.loads(capsys.readouterr().out)["labelled"] == 16
    after = FeatureStore.open(store.path)
    ids = np.flatnonzero(np.asarray(after.patches[:, 0]) == after.image_ids.index(NEW[2]))
    counts = np.asarray(after.counts)[ids]
    car, road = after.class_index("car"), after.class_index("road")
    np.testing.assert_array_equal(counts[:8, car], after.areas[ids[:8]])
    np.testing.assert_array_equal(counts[8:, road], after.areas[ids[8:]])
    # A file made before this update still names the store (its lineage): idempotent.
    assert main(["label", str(store.path), "--annotations", str(answers), "--format", "coco"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 16


@pytest.mark.parametrize(
    "info", [{"store_id": "other", "store_fingerprint": "x"}, {"store_fingerprint": "0"}]
)
def test_label_refuses_coco_of_another_store(store, tmp_path, capsys, info) -> None:
    answers = coco_answers(tmp_path / "a.json", store, NEW[2], **info)
    manifest = manifest_bytes(store)
    assert main(["label", str(store.path), "--annotations", str(answers), "--format", "coco"]) == 2
    assert "was made for store" in capsys.readouterr().err
    assert manifest_bytes(FeatureStore.open(store.path)) == manifest


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_label_leaves_the_store_as_it_was(store, pool_data, tmp_path, point) -> None:
    answers = write_answers(tmp_path / "answers", pool_data, NEW)
    manifest = manifest_bytes(store)
    run_killed(["label", str(store.path), "--annotations", str(answers)], point)
    again = FeatureStore.open(store.path)
    assert manifest_bytes(again) == manifest and not again.labelled[again.split_ids("pool")].all()
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    assert FeatureStore.open(store.path).split_ids("pool", labelled=False).size == 0


# --- CamVid's own labels play the annotator ---------------------------------------------------

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"


def test_camvid_labels_brought_back_equal_the_dataset_counts(tmp_path, capsys) -> None:
    """Prepare 8 CamVid images with 3 more unlabelled, then label those from CamVid's labels."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip("the shared CamVid folder is not present")
    from misical_gym.data import MaskFolder
    from misical_gym.data.camvid import CAMVID_TABLE
    from misical_gym.data.masks import mask_to_train_ids, read_mask
    from misical_gym.prepare import prepare

    names = sorted(p.name for p in (CAMVID / "train").glob("*.png"))[:11]
    for folder in ("images", "labels", "unlabelled", "answers"):
        (tmp_path / folder).mkdir()
    for name in names[:8]:
        shutil.copy(CAMVID / "train" / name, tmp_path / "images" / name)
        shutil.copy(CAMVID / "trainannot" / name, tmp_path / "labels" / name)
    for name in names[8:]:
        shutil.copy(CAMVID / "train" / name, tmp_path / "unlabelled" / name)
        shutil.copy(CAMVID / "trainannot" / name, tmp_path / "answers" / name)  # held back
    data = MaskFolder(CAMVID_TABLE, tmp_path / "images", tmp_path / "labels")
    store = prepare(
        data,
        tmp_path / "camvid",
        unlabelled=tmp_path / "unlabelled",
        epochs=1,
        mc_samples=2,
        image_size=32,
        init_fraction=0.3,
        test_fraction=0.2,
        threads=1,
        progress=False,
    )
    assert store.split_ids("pool", labelled=False).size == 3 * 16
    argv = ["label", str(store.path), "--annotations", str(tmp_path / "answers")]
    assert main(argv) == 0
    # Every pixel of a CamVid label is a class or Unlabelled (void): every patch is covered.
    assert json.loads(capsys.readouterr().out)["labelled"] == 3 * 16
    after = FeatureStore.open(store.path)
    assert after.split_ids("pool", labelled=False).size == 0
    for name in names[8:]:
        index = after.image_ids.index(Path(name).stem)
        ids = np.flatnonzero(np.asarray(after.patches[:, 0]) == index)
        path = CAMVID / "trainannot" / name
        label = mask_to_train_ids(read_mask(path), path, CAMVID_TABLE)
        expect = patch_class_counts(label, after.grid, after.num_classes)
        np.testing.assert_array_equal(np.asarray(after.counts)[ids], expect)


def test_retraining_refuses_picks_on_images_added_without_labels(store, pool_data, tmp_path):
    from misical_gym.errors import StoreError
    from misical_gym.segmenter.retrain import retraining_set

    answers = write_answers(tmp_path / "answers", pool_data, NEW)
    assert main(["label", str(store.path), "--annotations", str(answers)]) == 0
    after = FeatureStore.open(store.path)
    picks = np.flatnonzero(np.asarray(after.patches[:, 0]) == after.image_ids.index(NEW[0]))
    with pytest.raises(StoreError, match="added without labels"):
        retraining_set(after, picks[:2])
    labelled_pool = np.setdiff1d(after.split_ids("pool"), picks)
    assert retraining_set(after, labelled_pool[:2]).labels.shape[0] > 0


def picks_file(path: Path, store: FeatureStore, ids: np.ndarray, **extra: object) -> Path:
    """A ``misical select`` JSON of the patches ``ids``."""
    picks = [
        {"patch_id": int(i), "image_id": store.image_ids[int(store.patches[i, 0])], "box": box}
        for i, box in zip(ids, store.boxes(ids).tolist(), strict=True)
    ]
    path.write_text(json.dumps({"store": str(store.path), "picks": picks, **extra}))
    return path


def test_label_with_picks_labels_only_the_picked_patches(store, pool_data, tmp_path, capsys):
    answers = write_answers(tmp_path / "answers", pool_data, NEW)  # whole images annotated
    ids = store.split_ids("pool", labelled=False)[[0, 5, 20]]
    picks = picks_file(tmp_path / "picks.json", store, ids, store_fingerprint=store.fingerprint)
    argv = ["label", str(store.path), "--annotations", str(answers), "--picks", str(picks)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {
        "labelled": 3,
        "unchanged": 0,
        "partial": 0,
        "images": 3,
        "not_picked": 45,
    }
    after = FeatureStore.open(store.path)
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(store.labelled) & after.labelled), ids)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["picks"][0]["box"].__setitem__(0, 1), "is not a patch of store"),
        (lambda d: d["picks"][1].__setitem__("image_id", "u9"), "is not a patch of store"),
        (lambda d: d.__setitem__("store", "/elsewhere/other"), "was made for store 'other'"),
        (lambda d: d.__setitem__("store_fingerprint", "0" * 16), "was made for store"),
        (lambda d: d.pop("picks"), "not a misical select JSON"),
    ],
)
def test_label_refuses_picks_of_another_store(store, pool_data, tmp_path, capsys, edit, message):
    answers = write_answers(tmp_path / "answers", pool_data, NEW)
    path = picks_file(tmp_path / "picks.json", store, store.split_ids("pool", labelled=False)[:3])
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    manifest = manifest_bytes(store)
    argv = ["label", str(store.path), "--annotations", str(answers), "--picks", str(path)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert manifest_bytes(FeatureStore.open(store.path)) == manifest


def test_coco_json_stores_match_annotations_by_file_name(tmp_path, capsys) -> None:
    """A coco-json store's image ids are COCO ids; annotations name images by file_name."""
    images, entries = tmp_path / "images", []
    for k in range(8):
        write_image(images / f"img_{k}.png", (8, 12), seed=k)
        entries.append({"id": 100 + k, "file_name": f"img_{k}.png", "height": 8, "width": 12})
    dataset = json.loads(coco_answers(tmp_path / "one.json", None, "img_0", (8, 12)).read_text())
    dataset["images"] = entries
    dataset["annotations"] = [
        {**ann, "id": 10 * k + ann["id"], "image_id": 100 + k}
        for k in range(8)
        for ann in dataset["annotations"]
    ]
    (tmp_path / "train.json").write_text(json.dumps(dataset))
    argv = ["prepare", "coco-json", "--images", str(images), "--annotations"]
    argv += [str(tmp_path / "train.json"), *TINY[:-2], "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    store = FeatureStore.open(tmp_path / "s")
    assert "103" in store.image_ids and "img_3" not in store.image_ids
    answers = str(coco_answers(tmp_path / "a.json", store, "img_3", (8, 12)))
    capsys.readouterr()
    assert main(["label", str(store.path), "--annotations", answers, "--format", "coco"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 16  # the same counts: matched
