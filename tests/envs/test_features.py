"""``features=``: the column groups of the observation, for ablations."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from misical_gym.layout import TARGET_COLUMNS, UNCERTAINTY_COLUMNS
from misical_gym.testing import write_random_store

C = 8  # the classes of the default random store
PRESENCE = tuple(f"presence:class{i}" for i in range(C))
EXTRA = tuple(c for m in ("margin", "prob_std") for c in UNCERTAINTY_COLUMNS[m])
GROUPS = {
    "all": ("bald_mean", "bald_max", "entropy_mean", *PRESENCE, *TARGET_COLUMNS),
    "presence": (*PRESENCE, "target_presence"),
    "uncertainty": ("bald_mean", "bald_max", "entropy_mean", "target_class_bald"),
    "target_only": TARGET_COLUMNS,
    ("target_class_bald", "bald_max"): ("bald_max", "target_class_bald"),  # layout order
}


@pytest.fixture(scope="module")
def extra_store(tmp_path_factory):
    return write_random_store(
        tmp_path_factory.mktemp("extra") / "s", num_images=16, uncertainty=("prob_std", "margin")
    )


def make(store, features, **kwargs) -> gym.Env:
    return gym.make("MiSiCAL-Store", root=str(store.path), features=features, **kwargs)


@pytest.mark.parametrize("target", ["class2", "random"])
@pytest.mark.parametrize("features", list(GROUPS), ids=str)
def test_each_choice_keeps_its_columns_and_passes_the_checkers(tiny_store, features, target):
    env = make(tiny_store, features, budget=5, pool_size=6, target_class=target).unwrapped
    full = make(tiny_store, "all", budget=5, pool_size=6, target_class=target).unwrapped
    episode = ("budget_left", *(f"target:class{i}" for i in range(C) if target == "random"))
    assert env.feature_names == GROUPS[features] + episode
    f = len(env.feature_names)
    assert env.candidate_shape == (6, f) and env.observation_space.shape == (6 * f,)
    keep = [full.feature_names.index(name) for name in env.feature_names]
    np.testing.assert_array_equal(
        env.observation_space.high, full.observation_space.high.reshape(6, -1)[:, keep].ravel()
    )
    obs, _ = env.reset(seed=3)
    full_obs, _ = full.reset(seed=3)
    rows, full_rows = obs.reshape(6, f), full_obs.reshape(full.candidate_shape)
    np.testing.assert_array_equal(rows, full_rows[:, keep])  # the same draws, fewer columns
    states = [env.compact_state()]
    for _ in range(3):
        obs, *_ = env.step(0)
        states.append(env.compact_state())
    np.testing.assert_array_equal(env.observation_from_compact(states[-1]), obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize("features", ["presence", "uncertainty", ["bald_mean", "presence:class1"]])
def test_vector_env_observes_the_same_columns(tiny_store, features) -> None:
    kwargs = {"root": str(tiny_store.path), "budget": 4, "pool_size": 5, "features": features}
    vector = gym.make_vec("MiSiCAL-Store", 2, vectorization_mode="vector_entry_point", **kwargs)
    sync = gym.make_vec("MiSiCAL-Store", 2, vectorization_mode="sync", **kwargs)
    assert vector.single_observation_space == sync.single_observation_space
    np.testing.assert_array_equal(vector.reset(seed=1)[0], sync.reset(seed=1)[0])
    actions = np.array([1, 3])
    for _ in range(5):
        np.testing.assert_array_equal(vector.step(actions)[0], sync.step(actions)[0])
    obs = vector.step(actions)[0]
    np.testing.assert_array_equal(
        vector.unwrapped.observation_from_compact(vector.unwrapped.compact_state()), obs
    )


def test_the_uncertainty_group_takes_a_stores_extra_columns(extra_store) -> None:
    env = make(extra_store, "uncertainty", pool_size=4).unwrapped
    assert env.feature_names == (
        "bald_mean",
        "bald_max",
        "entropy_mean",
        *EXTRA,
        "target_class_bald",
        "budget_left",
    )
    assert env.observation_space.high[3:7].tolist() == [1.0, 1.0, 0.5, 0.5]
    gym_check_env(env, skip_render_check=True)
    assert make(extra_store, "presence", pool_size=4).unwrapped.feature_names == (
        *PRESENCE,
        "target_presence",
        "budget_left",
    )


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ("bald", "choose a group .*all, presence, uncertainty, target_only"),
        (["presence:nope"], "unknown column.*'presence:nope'.*valid names: bald_mean"),
        (["budget_left"], "budget_left and the target one-hot are always kept"),
        (["bald_mean", "bald_mean"], "a repeated column"),
        ([], "no column"),
    ],
)
def test_unknown_features_are_clear_errors(tiny_store, features, match) -> None:
    with pytest.raises(ValueError, match=match):
        make(tiny_store, features)


def test_a_heuristic_needs_its_column(tiny_store) -> None:
    from misical_gym.train.agents import make_agent

    env = make(tiny_store, "presence")
    make_agent("presence", env)  # reads target_presence, which the group keeps
    with pytest.raises(ValueError, match="reads the 'bald_mean' column"):
        make_agent("bald", env)


def test_train_and_select_keep_a_runs_features(tiny_store, tmp_path) -> None:
    from misical_gym.cli import main
    from misical_gym.train.select import select_patches

    argv = ["train", "--agent", "ddqn", "--env", "MiSiCAL-Store", "--target", "class3"]
    argv += ["--env-kwargs", f"root={tiny_store.path}", "features=presence", "pool_size=6"]
    argv += ["--steps", "40", "--eval-episodes", "1", "--logdir", str(tmp_path), "--threads", "1"]
    assert main(argv) == 0
    (run,) = tmp_path.glob("MiSiCAL-Store/class3/ddqn_0")
    # The DDQN reads C + 2 columns per candidate; select builds its env with them, unasked.
    picked = select_patches(tiny_store.path, str(run), "class3", 5, pool_size=6)
    assert len(picked["picks"]) == 5
    with pytest.raises(ValueError, match="rows of 10 features"):
        select_patches(tiny_store.path, str(run), "class3", 5, pool_size=6, features="all")
