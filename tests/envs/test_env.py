"""The MiSiCAL environment contract: registration, spaces, semantics, determinism, checkers."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import misical_gym
from misical_gym.envs import MiSiCALEnv, RewardFunction
from misical_gym.envs.patch_selection import unwrap_misical
from misical_gym.errors import StoreError
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store


def make(store: FeatureStore, env_id: str = "MiSiCAL-Store", **kwargs) -> gym.Env:
    return gym.make(env_id, root=str(store.path), **kwargs)


def rollout(env: gym.Env, seed: int, steps: int) -> list:
    obs, info = env.reset(seed=seed)
    record = [(obs.copy(), info["candidate_ids"].copy())]
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, steps)
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        record.append((obs.copy(), reward, terminated, info["patch_id"], info["target_pixels"]))
        if terminated:
            obs, info = env.reset()
    return record


# ---------------------------------------------------------------- registration
def test_registration_is_idempotent() -> None:
    before = dict(gym.registry)
    misical_gym.register_envs()
    misical_gym.register_envs()
    assert dict(gym.registry) == before
    for env_id in ("MiSiCAL-COCO10k", "MiSiCAL-Synthetic", "MiSiCAL-Store"):
        assert env_id in gym.registry


def test_module_prefixed_id_imports_the_package(tiny_store: FeatureStore) -> None:
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'misical_gym' not in sys.modules\n"
        f"env = gym.make('misical_gym:MiSiCAL-Store', root={str(tiny_store.path)!r})\n"
        "env.reset(seed=0); env.step(0)\n"
        "assert 'torch' not in sys.modules, 'the env path imported torch'\n"
        "heavy = {'misical_gym.prepare', 'misical_gym.segmenter', 'misical_gym.features'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "gym.make_vec('MiSiCAL-Store', num_envs=2, "
        f"vectorization_mode='vector_entry_point', root={str(tiny_store.path)!r}).reset(seed=0)\n"
        "assert not (heavy | {'torch'}) & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("env_id", "store_name"), [("MiSiCAL-COCO10k", "coco10k"), ("MiSiCAL-CamVid", "camvid")]
)
def test_real_data_id_without_store_says_what_to_run(misical_home, env_id, store_name) -> None:
    with pytest.raises(StoreError) as excinfo:
        gym.make(env_id)
    message = str(excinfo.value)
    assert str(misical_home / store_name) in message
    assert f"misical prepare {store_name} --root" in message


def test_store_id_without_root_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="root="):
        gym.make("MiSiCAL-Store")


# ---------------------------------------------------------------- checkers
@pytest.mark.parametrize("env_id", sorted(misical_gym.ENV_IDS))
@pytest.mark.parametrize("target", ["default", "random"])
def test_checkers_pass_without_warnings(env_id, target, tiny_store, coco_shaped_store) -> None:
    store = coco_shaped_store if env_id == "MiSiCAL-COCO10k" else tiny_store
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The tiny COCO-shaped store has no skis in init: that warning is meant (see adversarial).
        warnings.filterwarnings("ignore", message="target class .* never occurs")
        env = make(store, env_id, target_class=target)
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)


def test_masked_slots_never_crash_and_are_worth_zero(tiny_store) -> None:
    split_size = tiny_store.split_ids("init").size
    env = make(tiny_store, pool_size=split_size + 5, budget=3)
    obs, info = env.reset(seed=0)
    assert info["action_mask"].dtype == np.int8
    assert info["action_mask"].sum() == split_size
    assert not env.unwrapped.action_masks()[-1]
    assert np.all(obs.reshape(env.unwrapped.candidate_shape)[-5:] == 0)
    obs, reward, terminated, truncated, info = env.step(split_size + 4)
    assert reward == 0.0 and info["masked_action"] and info["patch_id"] == -1
    assert info["budget_left"] == 2 and not terminated


@pytest.mark.parametrize("bad", [-1, 8, 2.5, "0"])
def test_actions_outside_the_space_are_errors(tiny_store, bad) -> None:
    env = make(tiny_store, pool_size=8).unwrapped
    env.reset(seed=0)
    with pytest.raises((ValueError, TypeError)):
        env.step(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget"),
        ({"pool_size": -3}, "pool_size"),
        ({"split": "test"}, "split"),
        ({"reward": "dense"}, "categorical"),
        ({"reward_bins": (0.1, 0.05)}, "increasing"),
        ({"reward_values": (0.0, 1.0)}, "reward_values"),
        ({"target_class": "clas3"}, "class3"),
        ({"target_class": 99}, "out of range"),
        ({"render_mode": "rgb_array"}, "images"),
    ],
)
def test_bad_arguments_are_clear_errors(tiny_store, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make(tiny_store, **kwargs)


def test_default_target_is_skis_on_coco_classes(coco_shaped_store) -> None:
    env = make(coco_shaped_store)
    _, info = env.reset(seed=0)
    assert coco_shaped_store.class_names[info["target_class"]] == "skis"


def test_unwrap_misical_reaches_through_wrappers(tiny_store) -> None:
    env = make(tiny_store)
    assert isinstance(env, gym.Wrapper)
    assert isinstance(unwrap_misical(env), MiSiCALEnv)
    assert unwrap_misical(env) is env.unwrapped is unwrap_misical(env.unwrapped)


def test_unwrap_misical_names_another_env() -> None:
    with pytest.raises(TypeError, match=r"expected a MiSiCAL env, got .*CartPole.*CartPoleEnv"):
        unwrap_misical(gym.make("CartPole-v1"))


# ---------------------------------------------------------------- semantics
def test_episode_takes_distinct_patches_and_terminates_on_budget(tiny_store) -> None:
    env = make(tiny_store, budget=20, pool_size=8)
    obs, info = env.reset(seed=3)
    split = set(tiny_store.split_ids("init").tolist())
    taken: list[int] = []
    for step in range(20):
        candidates = info["candidate_ids"]
        assert len(set(candidates.tolist())) == 8
        assert set(candidates.tolist()) <= split - set(taken)
        action = step % 8
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["patch_id"] == candidates[action]
        assert isinstance(reward, float) and isinstance(terminated, bool)
        assert truncated is False
        taken.append(info["patch_id"])
        assert terminated == (step == 19)
        pixels = int(tiny_store.counts[info["patch_id"], info["target_class"]])
        assert info["target_pixels"] == pixels
        expected = env.unwrapped.reward_fn(pixels, tiny_store.areas[info["patch_id"]])
        assert reward == pytest.approx(float(expected))
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)


# 8 of the split's 112 patches: rejection sampling; 100: draws nearly always repeat, so the
# fallback; 150: more slots than patches, so masked slots.
@pytest.mark.parametrize("pool_size", [8, 100, 150])
def test_candidates_are_uniform_over_the_split(tiny_store, pool_size) -> None:
    env = make(tiny_store, pool_size=pool_size).unwrapped
    split = tiny_store.split_ids("init")
    live = min(pool_size, split.size)
    index = np.full(int(split.max()) + 1, -1)
    index[split] = np.arange(split.size)
    draws = 20 * split.size
    first, last = np.zeros(split.size), np.zeros(split.size)
    env.reset(seed=0)
    for _ in range(draws):
        _, info = env.reset()
        ids = info["candidate_ids"]
        assert len(set(ids[:live].tolist())) == live and (ids[live:] == -1).all()
        first[index[ids[0]]] += 1
        last[index[ids[live - 1]]] += 1
    # Chi-square against uniform, with split.size - 1 degrees of freedom: six standard
    # deviations above its mean is a bar a biased sampler (floor bias, sorted slots) fails.
    bar = split.size - 1 + 6 * np.sqrt(2 * (split.size - 1))
    expected = draws / split.size
    for counts in (first, last):
        assert ((counts - expected) ** 2 / expected).sum() < bar


def test_same_seed_same_episode(tiny_store) -> None:
    a = rollout(make(tiny_store, budget=6, pool_size=8, target_class="random"), 11, 30)
    b = rollout(make(tiny_store, budget=6, pool_size=8, target_class="random"), 11, 30)
    c = rollout(make(tiny_store, budget=6, pool_size=8, target_class="random"), 12, 30)
    for ra, rb in zip(a, b, strict=True):
        for xa, xb in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(xa, xb)
    assert not all(np.array_equal(ra[0], rc[0]) for ra, rc in zip(a, c, strict=True))


def test_observations_hold_no_oracle_information(tmp_path) -> None:
    """Two stores with the same features but different counts give identical observations."""
    one = write_random_store(tmp_path / "one", num_images=12, seed=5)
    arrays = {
        "features": np.asarray(one.features),
        "counts": np.asarray(one.counts)[::-1].copy(),
        "patches": np.asarray(one.patches),
        "image_sizes": np.asarray(one.image_sizes),
    }
    two = FeatureStore.write(
        tmp_path / "two",
        **arrays,
        image_ids=one.image_ids,
        class_names=one.class_names,
        grid=one.grid,
        dataset=one.dataset,
    )
    assert not np.array_equal(one.counts, two.counts)
    ra = rollout(make(one, budget=5, pool_size=4, target_class=3), 0, 12)
    rb = rollout(make(two, budget=5, pool_size=4, target_class=3), 0, 12)
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_array_equal(x[0], y[0])


def test_observation_columns(tiny_store) -> None:
    env = make(tiny_store, budget=4, pool_size=6, target_class="class2").unwrapped
    obs, info = env.reset(seed=0)
    rows = obs.reshape(env.candidate_shape)
    ids = info["candidate_ids"]
    names = env.feature_names
    feats = np.asarray(tiny_store.features)[ids]
    c = tiny_store.num_classes
    np.testing.assert_array_equal(rows[:, : 3 + c], feats[:, : 3 + c])
    np.testing.assert_array_equal(rows[:, names.index("target_presence")], feats[:, 3 + 2])
    np.testing.assert_array_equal(rows[:, names.index("target_class_bald")], feats[:, 3 + c + 2])
    assert np.all(rows[:, names.index("budget_left")] == 1.0)
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(0)
    assert np.all(obs.reshape(env.candidate_shape)[:, -1] == 0.75)


def test_goal_conditioned_onehot(tiny_store) -> None:
    env = make(tiny_store, pool_size=4, target_class="random").unwrapped
    assert env.feature_names[-tiny_store.num_classes :] == tuple(
        f"target:{c}" for c in tiny_store.class_names
    )
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        onehot = obs.reshape(env.candidate_shape)[:, -tiny_store.num_classes :]
        assert np.all(onehot.argmax(axis=1) == info["target_class"])
        assert np.all(onehot.sum(axis=1) == 1)


def test_reset_option_overrides_target(tiny_store) -> None:
    env = make(tiny_store, target_class="class1")
    _, info = env.reset(seed=0, options={"target_class": "class4"})
    assert info["target_class"] == 4
    _, info = env.reset()
    assert info["target_class"] == 1


def test_compact_state_rebuilds_the_observation(tiny_store) -> None:
    env = make(tiny_store, budget=5, pool_size=6, target_class="random").unwrapped
    obs, _ = env.reset(seed=2)
    states, observations = [env.compact_state()], [obs]
    for _ in range(4):
        obs, *_ = env.step(1)
        states.append(env.compact_state())
        observations.append(obs)
    np.testing.assert_array_equal(env.observation_from_compact(np.stack(states)), observations)
    np.testing.assert_array_equal(env.observation_from_compact(states[0]), observations[0])


@pytest.mark.parametrize(
    "options",
    [
        {"target_class": "class1"},
        {"target_class": "random"},
        {"features": "uncertainty"},
        {"target_class": "class1", "target_onehot": True},
    ],
    ids=["fixed", "goal", "some-columns", "one-hot"],
)
@pytest.mark.parametrize("batch_path", ["target-table", "narrow-rows", "wide-rows"])
def test_a_batch_rebuilds_as_its_states_one_by_one(
    tiny_store, options, batch_path, monkeypatch
) -> None:
    """A batch of at least 256 rows of one target reads that target's table; without one (or
    with several targets) it takes whole store rows when they are narrow, else the builder's
    gather of the kept columns; one state the whole-row gather: all give the same rows, empty
    slots included."""
    if batch_path != "target-table":
        monkeypatch.setattr("misical_gym.envs.core._TARGET_TABLE_MAX_BYTES", 0)
    if batch_path == "wide-rows":  # the tiny store's rows are narrow: gather their columns anyway
        monkeypatch.setattr("misical_gym.envs.core._WHOLE_ROWS_UP_TO_COLUMNS", 0)
    env = make(tiny_store, budget=5, pool_size=6, **options).unwrapped
    states = []
    for episode in range(12):
        env.reset(seed=episode)
        for _ in range(5):
            states.append(env.compact_state())
            env.step(0)
    batch = np.stack(states)
    batch[::7, :2] = -1  # empty slots
    assert batch[:, :6].size >= 256
    one_by_one = np.stack([env.observation_from_compact(state) for state in batch])
    np.testing.assert_array_equal(env.observation_from_compact(batch), one_by_one)


@pytest.mark.parametrize("scheme", ["categorical", "binary", "share", "log_count"])
def test_candidate_rewards_are_what_each_slot_would_pay(tiny_store, scheme) -> None:
    env = make(tiny_store, budget=4, pool_size=6, reward=scheme, target_class="class1").unwrapped
    env.reset(seed=3)
    seen = []
    for _ in range(4):
        state = env.compact_state()
        rewards = env.candidate_rewards(state)
        assert rewards.shape == (6,) and rewards.dtype == np.float64
        # Each slot's reward as a copy of the env in this state pays it.
        paid = [copy.deepcopy(env).step(slot)[1] for slot in range(6)]
        np.testing.assert_allclose(rewards, paid)
        seen.append(rewards)
        env.step(int(np.argmax(rewards)))
    assert np.ptp(seen) > 0  # some candidates paid more than others
    # A batch, and another target than the state's: the same numbers as one by one.
    states = np.stack([state, state])
    np.testing.assert_allclose(env.candidate_rewards(states, [1, 5])[0], rewards)
    other = env.candidate_rewards(states, [1, 5])[1]
    np.testing.assert_allclose(
        other, env.reward_fn(env._counts[state[:6], 5], env._areas[state[:6]])
    )


def test_candidate_rewards_are_nan_where_unknown(tmp_path) -> None:
    store = write_random_store(tmp_path / "s", num_images=40, unlabelled_pool=0.5, seed=0)
    env = make(store, budget=4, pool_size=4, split="pool", target_class="class1").unwrapped
    unlabelled = np.flatnonzero(~store.labelled)
    labelled = env.split_ids[:2]
    state = np.array([labelled[0], -1, unlabelled[0], labelled[1], 1, 4])
    rewards = env.candidate_rewards(state)
    assert np.isfinite(rewards[[0, 3]]).all() and np.isnan(rewards[[1, 2]]).all()
    with pytest.raises(ValueError, match="end in 6 values"):
        env.candidate_rewards(state[:5])
    with pytest.raises(ValueError, match="ids outside"):
        env.candidate_rewards(np.array([store.num_patches, 0, 0, 0, 1, 4]))
    with pytest.raises(ValueError, match="target classes"):
        env.candidate_rewards(state, store.num_classes)


@pytest.mark.parametrize("several_targets", [False, True])
def test_shown_candidates_reveal_only_the_labelled_sets_labels(tiny_store, several_targets) -> None:
    """``shown=True``: a candidate only shown, not acquired, pays a known reward on ``init``
    alone; a pool patch's count, known to a simulation, stays hidden (NaN) as in deployment."""
    env = make(tiny_store, budget=4, pool_size=4).unwrapped
    init, pool = tiny_store.split_ids("init")[:2], tiny_store.split_ids("pool")[:1]
    targets = [1, 2] if several_targets else 1
    states = np.array([[init[0], pool[0], -1, init[1], 1, 4]] * 2)
    known = env.candidate_rewards(states, targets)
    shown = env.candidate_rewards(states, targets, shown=True)
    assert np.isfinite(known[:, [0, 1, 3]]).all()
    np.testing.assert_array_equal(shown[:, [0, 3]], known[:, [0, 3]])
    assert np.isnan(shown[:, [1, 2]]).all()
    np.testing.assert_array_equal(env.revealed_when_shown[[init[0], pool[0], -1]], [1, 0, 0])


@pytest.mark.parametrize("scheme", ["categorical", "binary", "share", "log_count"])
def test_a_single_targets_table_pays_as_the_gather_of_several(tmp_path, scheme) -> None:
    """States of one target read its cached reward table; a batch of several targets gathers
    from the store rows: the same numbers, NaN for empty slots and unknown counts included."""
    store = write_random_store(tmp_path / "s", num_images=40, unlabelled_pool=0.5, seed=0)
    env = make(store, budget=4, pool_size=4, split="pool", reward=scheme).unwrapped
    rng = np.random.default_rng(0)
    states = np.column_stack(
        [
            rng.integers(-1, store.num_patches, size=(60, 4)),
            rng.integers(0, store.num_classes, size=60),
            np.full(60, 2),
        ]
    )
    several = env.candidate_rewards(states)
    one_by_one = np.stack([env.candidate_rewards(state) for state in states])
    np.testing.assert_array_equal(several, one_by_one)
    assert np.isnan(several).any() and (several > 0).any()


def test_goal_targets_are_the_random_targets_only(tiny_store) -> None:
    assert make(tiny_store, target_class="class3").unwrapped.goal_targets.size == 0
    env = make(tiny_store, target_class="random").unwrapped
    np.testing.assert_array_equal(env.goal_targets, env.random_targets)


@pytest.mark.parametrize("scheme", ["categorical", "binary", "share", "log_count"])
def test_reward_schemes(scheme) -> None:
    fn = RewardFunction(scheme)
    counts = np.array([0, 1, 10, 12, 13, 256])
    area = 256
    rewards = fn(counts, area)
    expected = {
        "categorical": [0.0, 0.5, 0.5, 0.5, 1.0, 1.0],  # 12/256 = 4.7% <= 5% < 13/256
        "binary": [0, 1, 1, 1, 1, 1],
        "share": counts / area,
        "log_count": np.log1p(counts),
    }[scheme]
    np.testing.assert_allclose(rewards, expected)
    assert [fn.scalar(int(c), area) for c in counts] == pytest.approx(list(rewards))
    low, high = fn.range(area)
    assert low <= rewards.min() and rewards.max() <= high


def test_render_ansi(tiny_store) -> None:
    env = make(tiny_store, render_mode="ansi")
    env.reset(seed=0)
    env.step(0)
    text = env.render()
    assert "target='class0'" in text or "target=" in text
    assert "budget_left=31/32" in text


def test_not_flat_observations(tiny_store) -> None:
    env = make(tiny_store, pool_size=5, flatten=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.unwrapped.candidate_shape == env.observation_space.shape


def test_sb3_dqn_learns_a_few_hundred_steps(tiny_store) -> None:
    from stable_baselines3 import DQN

    env = make(tiny_store, budget=8, pool_size=8)
    model = DQN("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0, device="cpu")
    model.learn(300)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))


def test_init_split_default_and_pool_split(tiny_store) -> None:
    assert isinstance(make(tiny_store).unwrapped, MiSiCALEnv)
    env = make(tiny_store, split="pool", budget=3)
    _, info = env.reset(seed=0)
    assert set(info["candidate_ids"].tolist()) <= set(tiny_store.split_ids("pool").tolist())


def test_running_out_of_patches_truncates(tiny_store) -> None:
    patches = tiny_store.split_ids("init").size
    env = make(tiny_store, budget=patches + 5, pool_size=8)
    obs, info = env.reset(seed=0)
    assert info["out_of_patches"] is False
    taken = set()
    for step in range(patches):
        action = int(np.flatnonzero(info["action_mask"])[0])
        obs, reward, terminated, truncated, info = env.step(action)
        taken.add(info["patch_id"])
        assert terminated is False
        assert truncated is info["out_of_patches"] is (step == patches - 1)
    # Every patch was taken once, budget is left, and nothing can be picked any more.
    assert taken == set(tiny_store.split_ids("init").tolist())
    assert info["budget_left"] == 5
    assert not info["action_mask"].any() and not env.unwrapped.action_masks().any()
    assert not obs.any()
    with pytest.raises(RuntimeError, match="no patch left"):
        env.unwrapped.step(0)


def test_budget_equal_to_the_split_terminates(tiny_store) -> None:
    patches = tiny_store.split_ids("init").size
    env = make(tiny_store, budget=patches, pool_size=8)
    _, info = env.reset(seed=0)
    for _ in range(patches):
        _, _, terminated, truncated, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
    assert terminated and not truncated and not info["out_of_patches"]
