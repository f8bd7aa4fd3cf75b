"""The DDQN on Gymnasium vector envs: N transitions per step, autoreset steps not stored, one
n-step stream per sub-env, seeded repeats, checkpoints, and a vector env of one that stores
what the single env does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import misical_gym  # noqa: F401 (registers the environments)
from misical_gym.agents import DDQN
from misical_gym.agents.heuristics import HeuristicPolicy
from misical_gym.store import FeatureStore

torch.set_num_threads(1)

TARGET = 3
BUDGET = 8
FAST = {"learning_starts": 100, "train_freq": 1, "learning_rate": 1e-3, "batch_size": 32}
MODES = ("sync", "vector_entry_point")


def env_kwargs(store: FeatureStore, **kwargs: Any) -> dict[str, Any]:
    return {
        "root": str(store.path),
        "budget": BUDGET,
        "pool_size": 8,
        "target_class": TARGET,
        **kwargs,
    }


def make_vec(store: FeatureStore, mode: str, num_envs: int, **kwargs: Any) -> Any:
    return gym.make_vec(
        "MiSiCAL-Store",
        num_envs=num_envs,
        vectorization_mode=mode,
        **env_kwargs(store, **kwargs),
    )


def params(model: DDQN) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.q_net.parameters()]


@pytest.mark.parametrize("mode", MODES)
def test_n_transitions_per_step_and_autoreset_steps_are_not_stored(
    tiny_store: FeatureStore, mode: str
) -> None:
    model = DDQN(make_vec(tiny_store, mode, 4), seed=0, **FAST)
    assert model._spec.compact_size == 8 + 2  # both kinds give compact replay
    added: list[dict[str, Any]] = []
    real_add = model.replay_buffer.add

    def recording_add(**step: Any) -> None:
        added.append(step)
        real_add(**step)

    model.replay_buffer.add = recording_add  # type: ignore[method-assign]
    seen: list[int] = []
    model.learn(45 * 4, callback=lambda locals_, globals_: seen.append(len(locals_["infos"])))
    # 45 vector steps: per sub-env 5 episodes of 8 steps, each followed by its autoreset step.
    assert model.num_timesteps == 180 and seen == [4] * 45
    assert model.state.episode_num == 20 and len(model._episode_window["l"]) == 20
    assert set(model._episode_window["l"]) == {BUDGET}
    assert len(added) == 160 and len(model.replay_buffer) == 160
    assert {step["stream"] for step in added} == {0, 1, 2, 3}
    for step in added:
        # Compact states end with the budget left: every stored step spends one pick. A reset
        # stored as a transition would go from 0 picks left to the full budget.
        assert step["obs"][-1] - step["next_obs"][-1] == 1 and step["obs"][-1] > 0
    assert model.state.n_updates > 0


@pytest.mark.parametrize("mode", MODES)
def test_seeded_vector_runs_repeat(tiny_store: FeatureStore, mode: str) -> None:
    a = DDQN(make_vec(tiny_store, mode, 3), seed=5, **FAST).learn(300)
    b = DDQN(make_vec(tiny_store, mode, 3), seed=5, **FAST).learn(300)
    assert a.state.n_updates == b.state.n_updates > 0
    for x, y in zip(params(a), params(b), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("mode", MODES)
def test_a_vector_env_of_one_stores_what_the_single_env_does(
    tiny_store: FeatureStore, mode: str
) -> None:
    # Random acting (before learning_starts): the same seed draws the same episodes and
    # actions, so the replay's bytes match; the vector run takes one autoreset step more per
    # episode (10 episodes: 80 steps, plus 9 autoresets).
    no_training = {"learning_starts": 10**6, "seed": 2}
    single = DDQN(gym.make("MiSiCAL-Store", **env_kwargs(tiny_store)), **no_training).learn(80)
    vector = DDQN(make_vec(tiny_store, mode, 1), **no_training).learn(89)
    assert single.state.episode_num == vector.state.episode_num == 10
    assert np.array_equal(single.replay_buffer._raw, vector.replay_buffer._raw)
    assert list(single._episode_window["r"]) == list(vector._episode_window["r"])


@pytest.mark.parametrize("mode", MODES)
def test_greedy_policy_trained_on_a_vector_env_beats_random(
    tiny_store: FeatureStore, mode: str
) -> None:
    model = DDQN(make_vec(tiny_store, mode, 4, split="init"), seed=0, **FAST)
    model.learn(2_000)
    held_out = gym.make("MiSiCAL-Store", **env_kwargs(tiny_store, split="pool"))
    rng = np.random.default_rng(0)
    totals = {"greedy": 0.0, "random": 0.0}
    for name in totals:
        for episode in range(30):
            obs, info = held_out.reset(seed=10_000 + episode)
            done = False
            while not done:
                mask = info["action_mask"].astype(bool)
                if name == "greedy":
                    action = int(model.predict(obs, action_masks=mask)[0])
                else:
                    action = int(rng.choice(np.flatnonzero(mask)))
                obs, reward, terminated, truncated, info = held_out.step(action)
                totals[name] += float(reward)
                done = terminated or truncated
    # Measured on the single env: greedy about 4.9, random 1.1 per episode.
    assert totals["greedy"] / 30 > totals["random"] / 30 + 2.0


def test_checkpoint_resume_and_set_env_across_kinds(
    tiny_store: FeatureStore, tmp_path: Path
) -> None:
    model = DDQN(make_vec(tiny_store, "vector_entry_point", 4), seed=1, **FAST).learn(203 * 4)
    path = model.save(tmp_path / "vector", include_replay_buffer=True)
    stored = len(model.replay_buffer)
    loaded = DDQN.load(path, env=make_vec(tiny_store, "sync", 4))
    # The episodes in progress were abandoned: their held-back steps closed as truncated.
    assert len(loaded.replay_buffer) > stored
    loaded.learn(40, reset_num_timesteps=False)
    assert loaded.num_timesteps == 203 * 4 + 40
    loaded.set_env(gym.make("MiSiCAL-Store", **env_kwargs(tiny_store)))
    loaded.learn(20, reset_num_timesteps=False)
    loaded.set_env(make_vec(tiny_store, "vector_entry_point", 2))
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.num_timesteps == 203 * 4 + 80


def test_raw_replay_on_a_vector_env(tiny_store: FeatureStore) -> None:
    model = DDQN(make_vec(tiny_store, "sync", 2), replay="raw", seed=0, **FAST).learn(200)
    assert model._spec.compact_size is None and model.state.n_updates > 0


def test_rollout_learners_refuse_vector_envs(tiny_store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="only the DDQN trains on vector envs"):
        HeuristicPolicy("random", make_vec(tiny_store, "vector_entry_point", 2))
