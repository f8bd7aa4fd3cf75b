"""The one policy interface: masks, ties, shapes, and one greedy episode for every policy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from misical_gym.agents.policy import (
    CandidatePolicy,
    as_rows,
    masked_argmax,
    play_episode,
    valid_or_all,
    valid_rows,
)
from misical_gym.train.agents import make_agent


def test_masked_argmax_honours_masks_and_opens_rows_without_any() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    masks = np.array([[True, False, True], [False, False, False]])
    np.testing.assert_array_equal(masked_argmax(scores, masks), [2, 0])


def test_ties_go_to_the_lowest_slot_or_at_random_with_a_generator() -> None:
    scores = np.zeros((1, 4))
    masks = np.array([[False, True, True, True]])
    assert masked_argmax(scores, masks)[0] == 1
    rng = np.random.default_rng(0)
    picks = {int(masked_argmax(scores, masks, rng)[0]) for _ in range(200)}
    assert picks == {1, 2, 3}


@pytest.mark.parametrize("to_array", [np.asarray, torch.as_tensor])
def test_the_empty_slot_rule_is_the_same_for_numpy_and_torch(to_array) -> None:
    rows = to_array(np.array([[[0.0, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]))
    np.testing.assert_array_equal(np.asarray(valid_rows(rows)), [[False, True], [False, False]])
    opened = valid_or_all(valid_rows(rows))
    np.testing.assert_array_equal(np.asarray(opened), [[False, True], [True, True]])


@pytest.mark.parametrize(
    ("shape", "rows_shape", "single"),
    [
        ((6,), (1, 3, 2), True),
        ((4, 6), (4, 3, 2), False),
        ((3, 2), (1, 3, 2), True),
        ((5, 3, 2), (5, 3, 2), False),
        ((10,), (1, 5, 2), True),
    ],
)
def test_as_rows_reads_flat_and_row_observations(shape, rows_shape, single) -> None:
    rows, was_single = as_rows(np.ones(shape), (3, 2))
    assert rows.shape == rows_shape and was_single == single


def test_as_rows_refuses_a_shape_without_whole_rows() -> None:
    with pytest.raises(ValueError, match="rows of 2 features"):
        as_rows(np.ones(7), (3, 2))


@pytest.mark.parametrize("agent", ["ddqn", "dqn", "ppo", "supervised", "presence", "random"])
def test_every_agent_is_a_candidate_policy_and_plays_an_episode(tiny_store, agent) -> None:
    env = gym.make("MiSiCAL-Store", root=str(tiny_store.path), split="pool", budget=5)
    policy = make_agent(agent, env, seed=0)
    assert isinstance(policy, CandidatePolicy)
    assert policy.candidate_shape == env.unwrapped.candidate_shape
    played = play_episode(policy, env, seed=3)
    assert len(played.patch_ids) == len(played.scores) == played.statistics["l"] == 5
    counts = tiny_store.counts[played.patch_ids, env.unwrapped.target]
    assert played.statistics["target_pixels"] == int(counts.sum())
    assert played.statistics["hits"] == int((counts > 0).sum())
    again = play_episode(make_agent(agent, env, seed=0), env, seed=3)
    assert again.patch_ids == played.patch_ids  # seeded: the same picks
