"""RecordSelectionStatistics: the one place where an episode's statistics are computed (and
its vector form)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor

from misical_gym.envs.wrappers import (
    RecordSelectionStatistics,
    RecordVectorSelectionStatistics,
    with_statistics,
)


def _play(env: gym.Env, seed: int) -> tuple[dict, dict]:
    """Random valid picks; returns the final info and the sums counted by hand."""
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    sums = {"r": 0.0, "l": 0, "target_pixels": 0, "hits": 0}
    done = False
    while not done:
        action = rng.choice(np.flatnonzero(info["action_mask"]))
        obs, reward, terminated, truncated, info = env.step(action)
        sums["r"] += float(reward)
        sums["l"] += 1
        sums["target_pixels"] += info["target_pixels"]
        sums["hits"] += int(info["target_pixels"] > 0)
        done = terminated or truncated
        assert done or "episode" not in info
    return info, sums


def test_statistics_equal_the_sums_of_the_steps(tiny_store) -> None:
    env = RecordSelectionStatistics(
        gym.make("MiSiCAL-Store", root=str(tiny_store.path), budget=12, target_class="class0")
    )
    pixels = 0
    for seed in range(3):
        info, sums = _play(env, seed)
        episode = info["episode"]
        assert {k: episode[k] for k in sums} == sums
        assert episode["hit_rate"] == sums["hits"] / sums["l"]
        pixels += sums["target_pixels"]
    assert pixels > 0  # the check is not vacuous


def test_a_monitor_inside_keeps_its_own_keys(tiny_store) -> None:
    env = with_statistics(Monitor(gym.make("MiSiCAL-Store", root=str(tiny_store.path), budget=4)))
    info, sums = _play(env, 0)
    assert set(info["episode"]) >= {"r", "l", "t", "target_pixels", "hits", "hit_rate"}
    assert info["episode"]["r"] == round(sums["r"], 6)  # the Monitor's rounded return


def test_with_statistics_wraps_once(tiny_store) -> None:
    env = with_statistics(gym.make("MiSiCAL-Store", root=str(tiny_store.path)))
    assert with_statistics(env) is env
    assert with_statistics(gym.wrappers.ClipReward(env, 0, 1)).env is env


def test_vector_statistics_equal_the_single_envs_env_by_env(tiny_store) -> None:
    # The native vector env's sub-env e plays the episodes of a single env seeded 7 + e; the
    # autoreset step after each end counts towards no episode.
    kwargs = {"root": str(tiny_store.path), "budget": 5, "target_class": "class0"}
    vector = with_statistics(
        gym.make_vec("MiSiCAL-Store", 3, vectorization_mode="vector_entry_point", **kwargs)
    )
    assert isinstance(vector, RecordVectorSelectionStatistics)
    assert with_statistics(vector) is vector
    singles = [with_statistics(gym.make("MiSiCAL-Store", **kwargs)) for _ in range(3)]
    vector.reset(seed=7)
    for e, single in enumerate(singles):
        single.reset(seed=7 + e)
    ended = 0
    for step in range(3 * 6):
        actions = np.full(3, step % 4)
        _, _, terminated, truncated, info = vector.step(actions)
        if step % 6 == 5:  # the autoreset step: no statistics
            assert "episode" not in info
            for single in singles:
                single.reset()
            continue
        expected = [single.step(int(step % 4))[4] for single in singles]
        done = terminated | truncated
        assert list(done) == ["episode" in info for info in expected]
        if done.any():
            assert list(info["_episode"]) == list(done)
            for e, single_info in enumerate(expected):
                assert {k: info["episode"][k][e] for k in single_info["episode"]} == pytest.approx(
                    single_info["episode"]
                )
            ended += int(done.sum())
    assert ended == 9
