"""The native vector environment: batching, autoreset, sampling, determinism."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from misical_gym.envs import MiSiCALVectorEnv
from misical_gym.store import FeatureStore


def make_vec(store: FeatureStore, num_envs: int = 4, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "MiSiCAL-Store",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        root=str(store.path),
        **kwargs,
    )


def test_make_vec_gives_the_native_env(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=3, pool_size=6)
    assert isinstance(env.unwrapped, MiSiCALVectorEnv)
    single = gym.make("MiSiCAL-Store", root=str(tiny_store.path), pool_size=6)
    assert env.single_observation_space == single.observation_space
    assert env.single_action_space == single.action_space
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, *single.observation_space.shape)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].shape == (3, 6) and info["_action_mask"].all()


@pytest.mark.parametrize("pool_size", [6, 40])  # 40 > the split's patches of some episodes
def test_candidates_are_distinct_and_never_taken_twice(tiny_store, pool_size) -> None:
    budget = 30
    env = make_vec(tiny_store, num_envs=5, budget=budget, pool_size=pool_size, split="init")
    split = set(tiny_store.split_ids("init").tolist())
    obs, info = env.reset(seed=1)
    taken: list[set[int]] = [set() for _ in range(5)]
    rng = np.random.default_rng(0)
    for _ in range(3 * budget):
        for e in range(5):
            ids = info["candidate_ids"][e]
            live = ids[ids >= 0]
            assert len(set(live.tolist())) == live.size
            assert set(live.tolist()) <= split - taken[e]
            np.testing.assert_array_equal(info["action_mask"][e], ids >= 0)
        obs, rewards, terminated, truncated, info = env.step(rng.integers(0, pool_size, 5))
        assert not truncated.any()
        for e in range(5):
            if info["patch_id"][e] >= 0:
                taken[e].add(int(info["patch_id"][e]))
            if terminated[e]:
                assert len(taken[e]) <= budget
                taken[e] = set()


def test_next_step_autoreset(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=2, budget=3, pool_size=4, target_class="random")
    env.reset(seed=0)
    for step in range(3):
        obs, rewards, terminated, _, info = env.step(np.array([0, 1]))
        assert terminated.all() == (step == 2)
    # The step after termination resets: its action is ignored, reward 0, not terminated.
    obs, rewards, terminated, _, info = env.step(np.array([0, 1]))
    assert np.all(rewards == 0) and not terminated.any()
    assert np.all(info["budget_left"] == 3) and np.all(info["patch_id"] == -1)
    budget_col = env.unwrapped.feature_names.index("budget_left")
    rows = obs.reshape(2, *env.unwrapped.candidate_shape)
    assert np.all(rows[:, :, budget_col] == 1.0)


def test_observations_match_the_single_env_builder(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=3, budget=5, pool_size=6, target_class="random")
    single = gym.make(
        "MiSiCAL-Store", root=str(tiny_store.path), pool_size=6, budget=5, target_class="random"
    ).unwrapped
    obs, info = env.reset(seed=4)
    for _ in range(7):
        for e in range(3):
            expected = single.build_observation(
                info["candidate_ids"][e], int(info["target_class"][e]), info["budget_left"][e] / 5
            )
            np.testing.assert_array_equal(obs[e], expected)
        pixels_before = info["candidate_ids"].copy()
        actions = np.array([0, 2, 5])
        obs, rewards, terminated, _, info = env.step(actions)
        chosen = pixels_before[np.arange(3), actions]
        picked = info["patch_id"] >= 0
        np.testing.assert_array_equal(info["patch_id"][picked], chosen[picked])
        counts = np.asarray(tiny_store.counts)[chosen, info["target_class"]]
        np.testing.assert_array_equal(info["target_pixels"][picked], counts[picked])


def test_same_seed_same_batch(tiny_store) -> None:
    def run(seed: int) -> list[np.ndarray]:
        env = make_vec(tiny_store, num_envs=3, budget=4, pool_size=5, target_class="random")
        out = [env.reset(seed=seed)[0]]
        for t in range(10):
            out.append(env.step(np.full(3, t % 5))[0])
        return out

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("bad", [np.array([0, 9]), np.array([0]), np.array([0.5, 1.0])])
def test_bad_actions_are_errors(tiny_store, bad) -> None:
    env = make_vec(tiny_store, num_envs=2, pool_size=6)
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(bad)


def test_compact_state_round_trip(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=3, pool_size=6, target_class="random").unwrapped
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.observation_from_compact(env.compact_state()), obs)
