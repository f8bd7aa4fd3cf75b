"""The per-patch label state: version 1 stores, value checks, update, envs and inspect."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest

import misical_gym  # noqa: F401  (registers the ids)
from misical_gym.cli import describe_store, main
from misical_gym.errors import StoreError
from misical_gym.store import MANIFEST, SPLITS, FeatureStore
from misical_gym.testing import write_random_store


@pytest.fixture
def mixed(tmp_path) -> FeatureStore:
    """A store whose pool is half unlabelled."""
    return write_random_store(tmp_path / "mixed", num_images=40, seed=0, unlabelled_pool=0.5)


def as_version_1(store: FeatureStore) -> FeatureStore:
    """Rewrite ``store`` as a version 1 store was written: no label state."""
    manifest = json.loads((store.path / MANIFEST).read_text())
    manifest["schema_version"] = 1
    (store.path / manifest["arrays"].pop("labelled")["file"]).unlink()
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    return FeatureStore.open(store.path)


def test_version_1_store_reads_as_all_labelled(tmp_path) -> None:
    old = as_version_1(write_random_store(tmp_path / "s", num_images=8))
    assert old.labelled.all() and old.labelled.shape == (old.num_patches,)
    assert not old.labelled.flags.writeable
    for split in SPLITS:
        np.testing.assert_array_equal(old.split_ids(split, labelled=True), old.split_ids(split))
        assert old.split_ids(split, labelled=False).size == 0


def test_split_ids_filter_by_label_state(mixed) -> None:
    assert not mixed.labelled.flags.writeable
    pool = mixed.split_ids("pool")
    known, unknown = mixed.split_ids("pool", labelled=True), mixed.split_ids("pool", labelled=False)
    assert known.size and unknown.size
    np.testing.assert_array_equal(np.sort(np.concatenate([known, unknown])), pool)
    assert mixed.labelled[known].all() and not mixed.labelled[unknown].any()
    assert mixed.split_ids("init", labelled=False).size == 0


def test_unlabelled_patches_must_count_nothing(mixed, tmp_path) -> None:
    counts = np.array(mixed.counts)
    counts[mixed.split_ids("pool", labelled=False)[0], 0] = 1
    with pytest.raises(StoreError, match="is unlabelled but counts pixels"):
        mixed.update(counts=counts)
    assert FeatureStore.open(mixed.path).counts[mixed.split_ids("pool", labelled=False)[0], 0] == 0


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["arrays"].pop("labelled"), "describing"),
        (lambda m: m["arrays"]["labelled"].update(shape=[1, 2]), "1-D shape"),
        (lambda m: m.update(schema_version=4), "schema version 4"),
        (lambda m: m["arrays"]["labelled"].update(file="counts.npy"), "different file"),
    ],
)
def test_damaged_label_state_is_refused(mixed, edit, message) -> None:
    manifest = json.loads((mixed.path / MANIFEST).read_text())
    edit(manifest)
    (mixed.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message):
        FeatureStore.open(mixed.path)


def test_update_replaces_arrays_and_removes_the_old_files(mixed) -> None:
    before, fingerprint = {p.name for p in mixed.path.iterdir()}, mixed.fingerprint
    unknown = mixed.split_ids("pool", labelled=False)
    labelled, counts = np.array(mixed.labelled), np.array(mixed.counts)
    labelled[unknown[:3]] = True
    counts[unknown[:3], 1] = 5
    updated = mixed.update(counts=counts, labelled=labelled)
    again = FeatureStore.open(mixed.path)
    np.testing.assert_array_equal(again.labelled, labelled)
    np.testing.assert_array_equal(again.counts, counts)
    assert again.fingerprint != fingerprint and updated.fingerprint == again.fingerprint
    np.testing.assert_array_equal(again.features, mixed.features)
    after = {p.name for p in mixed.path.iterdir()} - {".update.lock"}
    assert len(after) == len(before)  # two new array files, two old ones removed
    assert {"counts.npy", "labelled.npy"} <= before - after
    assert again.class_patches("pool")[1] == mixed.class_patches("pool")[1] + int(
        (np.asarray(mixed.counts)[unknown[:3], 1] == 0).sum()
    )


def test_update_of_a_version_1_store_writes_version_2(tmp_path) -> None:
    old = as_version_1(write_random_store(tmp_path / "s", num_images=8))
    labelled = np.array(old.labelled)
    new = old.update(labelled=labelled)
    assert new.manifest["schema_version"] == 2 and new.labelled.all()


@pytest.mark.parametrize("vector", [False, True])
def test_envs_draw_only_labelled_patches(mixed, vector) -> None:
    unknown = set(mixed.split_ids("pool", labelled=False).tolist())
    kwargs = {"root": str(mixed.path), "split": "pool", "budget": 40, "pool_size": 8}
    if vector:
        env = gym.make_vec("MiSiCAL-Store", 2, vectorization_mode="vector_entry_point", **kwargs)
    else:
        env = gym.make("MiSiCAL-Store", **kwargs)
    seen = set()
    obs, info = env.reset(seed=0)
    for _ in range(40):
        mask = info["action_mask"] if vector else env.unwrapped.action_masks()
        action = np.argmax(mask, axis=-1)
        obs, _, _, _, info = env.step(action)
        seen |= set(np.atleast_1d(info["patch_id"]).tolist())
    assert seen and not seen & unknown


def test_env_over_an_unlabelled_split_refuses(mixed) -> None:
    labelled = np.array(mixed.labelled)
    labelled[mixed.split_ids("pool")] = False
    counts = np.array(mixed.counts)
    counts[mixed.split_ids("pool")] = 0
    mixed.update(counts=counts, labelled=labelled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default target occurs in no labelled pool patch
        with pytest.raises(ValueError, match=r"holds no labelled patch.*draws only labelled"):
            gym.make("MiSiCAL-Store", root=str(mixed.path), split="pool")


def test_inspect_reports_label_state_per_split(mixed, capsys) -> None:
    assert main(["inspect", str(mixed.path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    for split in SPLITS:
        assert summary["labelled_patches_per_split"][split] == mixed.split_ids(split, True).size
        assert summary["unlabelled_patches_per_split"][split] == mixed.split_ids(split, False).size
    assert summary["unlabelled_patches_per_split"]["pool"] > 0
    # Frequencies are over labelled patches: unknown counts are not absences.
    known = mixed.split_ids("pool", labelled=True)
    expect = (np.asarray(mixed.counts)[known, 0] > 0).mean()
    assert summary["class_patch_frequency"]["pool"]["class0"] == pytest.approx(expect, abs=1e-5)
    assert describe_store(mixed) == summary | {"path": str(mixed.path)}


def test_an_update_from_a_stale_view_is_refused(mixed) -> None:
    stale = FeatureStore.open(mixed.path)  # its fingerprint is read now, not when first asked
    unknown = mixed.split_ids("pool", labelled=False)
    labelled = np.array(mixed.labelled)
    labelled[unknown[:2]] = True
    current = mixed.update(labelled=labelled)
    manifest = (mixed.path / MANIFEST).read_bytes()
    with pytest.raises(StoreError, match="changed since it was opened"):
        stale.update(labelled=np.array(stale.labelled))  # would undo the labels above
    assert (mixed.path / MANIFEST).read_bytes() == manifest
    assert FeatureStore.open(mixed.path).labelled[unknown[:2]].all() and current.labelled.sum()
