"""RecordSelectionStatistics: the one place where an episode's statistics are computed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor

from misical_gym.envs.wrappers import RecordSelectionStatistics, with_statistics


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
