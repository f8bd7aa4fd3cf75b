"""The feature store: round trip, validation, checksums, atomic writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from misical_gym.data.patches import PatchGrid
from misical_gym.errors import StoreError
from misical_gym.layout import FeatureLayout
from misical_gym.store import SPLITS, FeatureStore
from misical_gym.testing import write_random_store


def arrays(n_images: int = 4, c: int = 3) -> dict:
    n = n_images * 4
    rng = np.random.default_rng(0)
    return {
        "features": rng.uniform(0, 0.5, (n, 3 + 2 * c)).astype(np.float32),
        "counts": rng.integers(0, 5, (n, c)),  # at most 15 pixels in a 16-pixel patch
        "patches": np.stack(
            [
                np.repeat(np.arange(n_images), 4),
                np.tile([0, 0, 1, 1], n_images),
                np.tile([0, 1, 0, 1], n_images),
                np.repeat(np.arange(n_images) % 3, 4),
            ],
            axis=1,
        ),
        "image_sizes": np.full((n_images, 2), 8),
        "image_ids": [f"im{i}" for i in range(n_images)],
        "class_names": [f"c{i}" for i in range(c)],
        "grid": PatchGrid(2, 2),
        "dataset": {"kind": "test"},
    }


def test_round_trip(tmp_path) -> None:
    data = arrays()
    store = FeatureStore.write(tmp_path / "s", **data)
    again = FeatureStore.open(tmp_path / "s")
    np.testing.assert_array_equal(again.features, data["features"])
    np.testing.assert_array_equal(again.counts, data["counts"])
    assert isinstance(again.features, np.memmap)
    assert again.feature_names == FeatureLayout.of(data["class_names"]).names
    assert again.class_names == ("c0", "c1", "c2") and again.image_ids == tuple(data["image_ids"])
    np.testing.assert_array_equal(store.presence, data["features"][:, 3:6])
    np.testing.assert_array_equal(store.class_bald, data["features"][:, 6:9])
    for code, split in enumerate(SPLITS):
        ids = store.split_ids(split)
        np.testing.assert_array_equal(ids, np.flatnonzero(data["patches"][:, 3] == code))
        expect = (data["counts"][ids] > 0).sum(0)
        np.testing.assert_array_equal(store.class_patches(split), expect)
    assert store.areas.sum() == 4 * 64
    np.testing.assert_array_equal(store.boxes([0, 3]), [[0, 0, 4, 4], [4, 4, 8, 8]])


def test_boxes_absorb_remainders(tmp_path) -> None:
    store = write_random_store(
        tmp_path / "s", num_images=2, image_size=(66, 70), grid=PatchGrid(4, 4)
    )
    boxes = store.boxes(np.arange(16))
    np.testing.assert_array_equal(boxes, PatchGrid(4, 4).boxes(66, 70))
    assert store.areas[:16].sum() == 66 * 70


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("features", np.full((16, 9), np.nan, dtype=np.float32), "NaN"),
        ("features", np.full((16, 9), np.inf, dtype=np.float32), "NaN or infinite"),
        ("features", np.zeros((16, 8), dtype=np.float32), "shape"),
        ("counts", -np.ones((16, 3)), "non-negative"),
        ("patches", np.tile([0, 0, 0, 5], (16, 1)), "out of range"),
        ("class_names", ["a", "a", "b"], "unique"),
    ],
)
def test_bad_arrays_are_refused_and_nothing_is_written(tmp_path, field, value, match) -> None:
    data = arrays()
    data[field] = value
    with pytest.raises(StoreError, match=match):
        FeatureStore.write(tmp_path / "s", **data)
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_array_names_the_file(tmp_path) -> None:
    store = FeatureStore.write(tmp_path / "s", **arrays())
    path = store.path / "counts.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"counts\.npy: checksum mismatch"):
        FeatureStore.open(tmp_path / "s")


def test_truncated_array_names_the_file(tmp_path) -> None:
    store = FeatureStore.write(tmp_path / "s", **arrays())
    path = store.path / "features.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StoreError, match=r"features\.npy"):
        FeatureStore.open(tmp_path / "s")


def test_schema_version_mismatch(tmp_path) -> None:
    store = FeatureStore.write(tmp_path / "s", **arrays())
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="schema version 99"):
        FeatureStore.open(store.path)


def test_missing_store_says_what_to_run(tmp_path) -> None:
    with pytest.raises(StoreError, match="misical prepare"):
        FeatureStore.open(tmp_path / "nothing")


def test_existing_store_needs_overwrite(tmp_path) -> None:
    FeatureStore.write(tmp_path / "s", **arrays())
    with pytest.raises(FileExistsError):
        FeatureStore.write(tmp_path / "s", **arrays())
    data = arrays()
    data["counts"] = data["counts"] + 1
    store = FeatureStore.write(tmp_path / "s", overwrite=True, **data)
    np.testing.assert_array_equal(store.counts, data["counts"])


def test_killed_writer_leaves_no_store_that_opens(tmp_path) -> None:
    """SIGKILL a writer in the middle of writing: the target never opens as a store."""
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        import misical_gym.store as store_module
        from misical_gym.testing import write_random_store
        real_save = np.save
        calls = []
        def dying_save(file, array, *args, **kwargs):
            calls.append(file)
            real_save(file, array, *args, **kwargs)
            if len(calls) == 2:  # after features and counts, before the manifest
                os.kill(os.getpid(), signal.SIGKILL)
        store_module.np.save = dying_save
        write_random_store({str(tmp_path / "s")!r}, num_images=4)
        """
    )
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -signal.SIGKILL
    assert not (tmp_path / "s").exists()
    with pytest.raises(StoreError):
        FeatureStore.open(tmp_path / "s")


def test_unknown_class_lists_close_matches(tmp_path) -> None:
    store = write_random_store(tmp_path / "s", num_images=2)
    with pytest.raises(ValueError, match="Did you mean 'class3'"):
        store.class_index("clas3")
    assert store.class_index("class3") == store.class_index(3) == 3


def test_atomic_writes_get_the_usual_permissions(tmp_path) -> None:
    import os
    import stat

    from misical_gym.atomic import atomic_directory, atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        with atomic_directory(tmp_path / "store") as build:
            (build / "a").write_text("a")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o755
