"""Item 14: unknown reset options are refused; a target absent from the split warns, once."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import misical_gym  # noqa: F401  (registers the ids)
from misical_gym.store import SPLITS
from misical_gym.testing import write_random_store

from .forge import edit_array, edit_manifest


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"target": "class1"}, ValueError, "Did you mean 'target_class'"),
        ({"target_clas": "class1"}, ValueError, "Did you mean 'target_class'"),
        ({"target_class": "class1", "budget": 3}, ValueError, "'budget'"),
        ("class1", TypeError, "dict or None"),
    ],
)
def test_item14_unknown_reset_options_are_refused(tiny_store, options, error, match) -> None:
    env = gym.make("MiSiCAL-Store", root=str(tiny_store.path), budget=4, pool_size=8)
    with pytest.raises(error, match=match):
        env.reset(seed=0, options=options)
    vector = gym.make_vec(
        "MiSiCAL-Store",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        root=str(tiny_store.path),
        budget=4,
        pool_size=8,
    )
    with pytest.raises(error):
        vector.reset(seed=0, options=options)


def test_item14_a_target_absent_from_the_split_warns_once(tmp_path) -> None:
    store = write_random_store(tmp_path / "s", num_images=40)
    init = SPLITS.index("init")

    def remove_class2_from_init(counts: np.ndarray) -> None:
        patches = np.load(store.path / "patches.npy")
        counts[patches[:, 3] == init, 2] = 0

    edit_array(store.path, "counts", remove_class2_from_init)
    edit_manifest(store.path, lambda m: m["class_patches"]["init"].__setitem__(2, 0))
    assert store.class_patches("init")[0] > 0
    root = str(store.path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make("MiSiCAL-Store", root=root, target_class="class2", budget=2, pool_size=4)
        env.reset(seed=0)
        gym.make("MiSiCAL-Store", root=root, budget=2, pool_size=4).reset(
            seed=0, options={"target_class": "class2"}
        )
        gym.make("MiSiCAL-Store", root=root, target_class="class0", budget=2, pool_size=4)
    ours = [w for w in caught if "never occurs" in str(w.message)]
    assert len(ours) == 1 and "'class2'" in str(ours[0].message)
