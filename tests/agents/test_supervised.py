"""The supervised ablation: the rows and labels it learns from, and that it learns them."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from misical_gym.agents.heuristics import HeuristicPolicy
from misical_gym.agents.supervised import SupervisedPolicy
from misical_gym.train.run import greedy_pool_statistics

torch.set_num_threads(1)
K = 8


def make_env(store, split: str) -> gym.Env:
    return gym.make(
        "MiSiCAL-Store",
        root=str(store.path),
        split=split,
        target_class="class3",
        budget=8,
        pool_size=K,
    )


@pytest.fixture()
def trained(tiny_store) -> SupervisedPolicy:
    return SupervisedPolicy(make_env(tiny_store, "init"), seed=0, device="cpu").learn(300)


def test_init_labels_every_shown_candidate_pool_only_the_acquired(trained, tiny_store) -> None:
    (rows,), (labels,) = trained._rows, trained._labels
    assert rows.shape == (300 * K, trained.candidate_shape[1])
    # Labels are the oracle's "target in this patch": find each row's patch among init's.
    env = trained.env.unwrapped
    assert env.feature_names[-1] == "budget_left"
    ids = tiny_store.split_ids("init")
    every = env.build_observation(ids[:, None], 3, 1.0).reshape(len(ids), -1)[:, :-1]
    for row, label in zip(rows[:50], labels[:50], strict=True):
        (patch,) = ids[(every == row[:-1]).all(axis=1)]  # all but budget_left
        assert label == (tiny_store.counts[patch, 3] > 0)
    trained.set_env(make_env(tiny_store, "pool"))
    trained.learn(40, reset_num_timesteps=False)
    assert trained._rows[0].shape[0] == 300 * K + 40


def test_it_learns_presence_and_beats_random(trained, tiny_store) -> None:
    assert trained.fitted
    pool = make_env(tiny_store, "pool")
    learned = greedy_pool_statistics(trained, pool, episodes=10, seed=100)
    random = greedy_pool_statistics(
        HeuristicPolicy("random", pool, seed=0), pool, episodes=10, seed=100
    )
    assert learned["hit_rate"] > random["hit_rate"] + 0.2, (learned, random)
