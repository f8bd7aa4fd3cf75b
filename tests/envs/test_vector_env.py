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


# Every configuration the draws can take: rejection sampling (K=5), its fallback (K=100 of 112),
# more slots than patches, a random target per episode, a budget above the split (truncation by
# running out of patches) and make_vec's max_episode_steps.
@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": 6, "pool_size": 5},
        {"budget": 4, "pool_size": 100, "target_class": "random"},
        {"budget": 100, "pool_size": 40, "reward": "share"},
        {"budget": 130, "pool_size": 30},
        {"budget": 10, "pool_size": 5, "max_episode_steps": 3},
    ],
)
@pytest.mark.parametrize("seed", [3, [5, 1, 9]])
def test_episodes_equal_sync_vector_envs_env_by_env(tiny_store, kwargs, seed) -> None:
    native, sync = (
        gym.make_vec(
            "MiSiCAL-Store",
            num_envs=3,
            vectorization_mode=mode,
            root=str(tiny_store.path),
            **kwargs,
        )
        for mode in ("vector_entry_point", "sync")
    )
    assert isinstance(native.unwrapped, MiSiCALVectorEnv)
    assert isinstance(sync, gym.vector.SyncVectorEnv)
    keys = ("candidate_ids", "patch_id", "target_pixels", "budget_left", "out_of_patches")
    (obs_a, info_a), (obs_b, info_b) = native.reset(seed=seed), sync.reset(seed=seed)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(150):
        np.testing.assert_array_equal(obs_a, obs_b)
        for key in ("action_mask", *keys):
            np.testing.assert_array_equal(info_a[key], info_b[key], err_msg=key)
        actions = rng.integers(0, native.single_action_space.n, 3)
        obs_a, reward_a, term_a, trunc_a, info_a = native.step(actions)
        obs_b, reward_b, term_b, trunc_b, info_b = sync.step(actions)
        np.testing.assert_array_equal(reward_a, reward_b)
        np.testing.assert_array_equal(term_a, term_b)
        np.testing.assert_array_equal(trunc_a, trunc_b)
        ends += int(term_a.sum() + trunc_a.sum())
    assert ends > 0  # the comparison went through autoresets


def test_per_env_seeds(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=2, pool_size=6)
    a, _ = env.reset(seed=[1, 2])
    b, _ = env.reset(seed=[1, 3])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="one seed per sub-environment"):
        env.reset(seed=[1])


def test_max_episode_steps_truncates(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=2, budget=10, pool_size=6, max_episode_steps=3)
    env.reset(seed=0)
    for step in range(3):
        _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.int64))
        assert not terminated.any() and truncated.all() == (step == 2)
    assert not info["out_of_patches"].any()
    _, rewards, _, truncated, info = env.step(np.zeros(2, dtype=np.int64))  # the autoreset step
    assert not truncated.any() and np.all(info["budget_left"] == 10)


def test_running_out_of_patches_truncates_and_autoresets(tiny_store) -> None:
    patches = tiny_store.split_ids("init").size
    env = make_vec(tiny_store, num_envs=2, budget=patches + 3, pool_size=4)
    _, info = env.reset(seed=0)
    for step in range(patches):
        actions = np.array([np.flatnonzero(mask)[0] for mask in info["action_mask"]])
        _, _, terminated, truncated, info = env.step(actions)
        assert not terminated.any()
        assert truncated.all() == info["out_of_patches"].all() == (step == patches - 1)
    assert not info["action_mask"].any() and np.all(info["budget_left"] == 3)
    _, _, _, truncated, info = env.step(np.zeros(2, dtype=np.int64))
    assert not truncated.any() and info["action_mask"].all()


def test_render_ansi_gives_one_frame_per_env(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=2, pool_size=6, render_mode="ansi")
    single = gym.make("MiSiCAL-Store", root=str(tiny_store.path), pool_size=6, render_mode="ansi")
    env.reset(seed=0)
    single.reset(seed=0)
    env.step(np.array([2, 0]))
    single.step(2)
    frames = env.render()
    assert len(frames) == 2 and frames[0] == single.render()


def test_sample_with_a_tuple_of_masks(tiny_store) -> None:
    env = make_vec(tiny_store, num_envs=3, budget=110, pool_size=6)  # masked slots late
    _, info = env.reset(seed=0)
    for _ in range(200):
        actions = env.action_space.sample(mask=tuple(info["action_mask"]))
        assert np.all(info["action_mask"][np.arange(3), actions] == 1)
        _, _, _, _, info = env.step(actions)
