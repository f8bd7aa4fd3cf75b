"""Heuristic policies pick what their names say, honour masks, and never learn."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from misical_gym.agents.heuristics import HeuristicPolicy


@pytest.fixture()
def env(tiny_store):
    return gym.make("MiSiCAL-Store", root=str(tiny_store.path), pool_size=4, budget=6)


@pytest.mark.parametrize(
    ("name", "column"),
    [("bald", "bald_mean"), ("entropy", "entropy_mean"), ("presence", "target_presence")],
)
def test_picks_the_highest_column(env, name, column) -> None:
    policy = HeuristicPolicy(name, env, seed=0)
    k, f = env.unwrapped.candidate_shape
    rows = np.full((2, k, f), 0.1, dtype=np.float32)
    col = env.unwrapped.feature_names.index(column)
    rows[0, :, col] = [0.2, 0.9, 0.3, 0.1]
    rows[1, :, col] = [0.5, 0.1, 0.2, 0.3]
    actions, _ = policy.predict(rows.reshape(2, -1))
    np.testing.assert_array_equal(actions, [1, 0])
    masks = np.ones((2, k), dtype=bool)
    masks[0, 1] = False
    actions, _ = policy.predict(rows.reshape(2, -1), action_masks=masks)
    np.testing.assert_array_equal(actions, [2, 0])


def test_random_is_seeded_and_uniform_over_valid_slots(env) -> None:
    obs, _ = env.reset(seed=0)
    mask = np.array([True, False, True, True])
    picks = [HeuristicPolicy("random", env, seed=1).predict(obs, action_masks=mask)[0]]
    policy = HeuristicPolicy("random", env, seed=1)
    draws = np.array([policy.predict(obs, action_masks=mask)[0] for _ in range(3000)])
    assert draws[0] == picks[0]
    assert set(draws.tolist()) == {0, 2, 3}
    assert np.all(np.abs(np.bincount(draws, minlength=4)[[0, 2, 3]] / 3000 - 1 / 3) < 0.04)


def test_oracle_picks_the_most_target_pixels(env, tiny_store) -> None:
    policy = HeuristicPolicy("oracle", env)
    obs, info = env.reset(seed=3)
    for _ in range(6):
        action, _ = policy.predict(obs, action_masks=info["action_mask"])
        counts = np.asarray(tiny_store.counts)[info["candidate_ids"], info["target_class"]]
        assert counts[action] == counts.max()
        obs, _, terminated, _, info = env.step(action)


def test_oracle_acts_only_on_its_envs_current_observation(env) -> None:
    policy = HeuristicPolicy("oracle", env)
    obs, _ = env.reset(seed=3)
    stale = obs.copy()
    env.step(0)
    with pytest.raises(ValueError, match="current observation"):
        policy.predict(stale)
    obs = env.unwrapped.observation_from_compact(env.unwrapped.compact_state())
    policy.predict(obs)
    with pytest.raises(ValueError, match="one at a time"):
        policy.predict(np.stack([obs, obs]))


def test_unknown_heuristic(env) -> None:
    with pytest.raises(ValueError, match="choose one of random, bald"):
        HeuristicPolicy("greedy", env)


def test_learn_changes_nothing(env) -> None:
    policy = HeuristicPolicy("presence", env, seed=0)
    obs, _ = env.reset(seed=0)
    before = policy.predict(obs)[0]
    assert policy.learn(50) is policy and policy.num_timesteps == 50
    assert policy.predict(obs)[0] == before


def test_another_env_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="expected a MiSiCAL env"):
        HeuristicPolicy("bald", gym.make("CartPole-v1"))
