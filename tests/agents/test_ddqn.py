"""The Double DQN agent: network, update rule against a reference, replay modes, checkpoints,
SB3 compatibility (callbacks, TensorBoard) and a seeded learning check."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import misical_gym  # noqa: F401 (registers the environments)
from misical_gym.agents import DDQN, DeepSetQNetwork
from misical_gym.agents.networks import NumpyQNetwork, mean_weights_numpy
from misical_gym.agents.policy import valid_rows
from misical_gym.store import FeatureStore
from misical_gym.testing import write_random_store

torch.set_num_threads(1)

# Class 3 of the tiny store occurs in 14 of its 112 init patches: enough to learn from.
TARGET = 3
FAST = {"learning_starts": 100, "train_freq": 1, "learning_rate": 1e-3, "batch_size": 32}


def make_env(store: FeatureStore, **kwargs: Any) -> gym.Env:
    options = {"budget": 8, "pool_size": 8, "target_class": TARGET, **kwargs}
    return gym.make("MiSiCAL-Store", root=str(store.path), **options)


def params(model: DDQN) -> list[torch.Tensor]:
    return [
        p.detach().clone() for p in (*model.q_net.parameters(), *model.q_net_target.parameters())
    ]


def assert_same_params(a: DDQN, b: DDQN) -> None:
    for x, y in zip(params(a), params(b), strict=True):
        assert torch.equal(x, y)


def evaluate(env: gym.Env, policy: Any, episodes: int, seed: int) -> float:
    """Mean episode reward of ``policy(obs, mask)`` over seeded episodes."""
    totals = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(
                policy(obs, env.unwrapped.action_masks())
            )
            total += float(reward)
            done = terminated or truncated
        totals.append(total)
    return float(np.mean(totals))


# ---------------------------------------------------------------------- Q-network
@pytest.mark.parametrize("dueling", [False, True])
def test_network_is_permutation_equivariant_for_any_k(dueling: bool) -> None:
    torch.manual_seed(0)
    net = DeepSetQNetwork(5, phi_arch=(16, 16), rho_arch=(16,), dueling=dueling)
    for k in (3, 8, 13):
        x = torch.rand(4, k, 5)
        perm = torch.randperm(k)
        q = net(x)
        assert q.shape == (4, k)
        torch.testing.assert_close(net(x[:, perm]), q[:, perm])
        torch.testing.assert_close(net(x.reshape(4, -1)), q)  # flat rows read the same


@pytest.mark.parametrize("dueling", [False, True])
def test_network_ignores_empty_slots(dueling: bool) -> None:
    torch.manual_seed(0)
    net = DeepSetQNetwork(5, phi_arch=(16,), rho_arch=(), dueling=dueling)
    x = torch.rand(2, 4, 5)
    padded = torch.cat([x, torch.zeros(2, 3, 5)], dim=1)  # three empty (all-zero) slots
    torch.testing.assert_close(net(padded)[:, :4], net(x))


@pytest.mark.parametrize(
    "arch",
    [
        {"phi_arch": ()},
        {"phi_arch": (0,)},
        {"phi_arch": (4097,)},
        {"rho_arch": (4097,)},
        {"phi_arch": (8,) * 9},
        {"rho_arch": (8,) * 9},
    ],
)
def test_network_refuses_sizes_out_of_bounds(arch: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="phi_arch needs 1 to 8 layers"):
        DeepSetQNetwork(5, **arch)


def test_network_scores_chosen_slots_as_its_full_pass() -> None:
    torch.manual_seed(0)
    net = DeepSetQNetwork(5, phi_arch=(16,), rho_arch=(16, 8))
    x = torch.rand(6, 7, 5)
    x[0, 3:] = 0.0  # empty slots stay out of the context in both passes
    slots = torch.tensor([0, 6, 3, 2, 2, 5])
    chosen = net(x, slots=slots)
    assert chosen.shape == (6,)
    torch.testing.assert_close(chosen, net(x).gather(1, slots[:, None])[:, 0])
    with pytest.raises(ValueError, match="dueling"):
        DeepSetQNetwork(5, dueling=True)(x, slots=slots)


def test_numpy_mean_weights_equal_the_networks() -> None:
    rows = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    rows[1, 2:] = 0.0
    rows[2] = 0.0  # no valid slot: all weights 0
    rows[3, ::2] = 0.0
    net, obs = DeepSetQNetwork(3), torch.from_numpy(rows)
    ours = mean_weights_numpy(rows)
    assert ours.dtype == np.float32
    assert torch.equal(torch.from_numpy(ours), net.mean_weights(obs))  # bitwise, as training
    assert torch.equal(net(obs, torch.from_numpy(ours)), net(obs))


@pytest.mark.filterwarnings("ignore:overflow encountered in reduce")  # the along-rows sum's
@pytest.mark.parametrize("numpy_sum", ["along-rows", "as-product"])
def test_numpy_and_torch_find_the_same_empty_rows(
    numpy_sum: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if numpy_sum == "as-product":  # a batch's path, on these few rows
        monkeypatch.setattr("misical_gym.agents.policy._ROWS_SUMMED_BY_PRODUCT", 0)
    rows = np.zeros((1, 4, 3), dtype=np.float32)
    rows[0, 0, 1] = -1e-40  # one subnormal entry: a patch
    rows[0, 1] = np.float32(3e38)  # a sum past float32's range: a patch
    rows[0, 2, 0] = -0.0  # negative zero: empty
    rows[0, 3, 2] = 0.5
    expected = [[True, True, False, True]]
    assert valid_rows(rows).tolist() == expected
    assert valid_rows(torch.from_numpy(rows)).tolist() == expected


@pytest.mark.parametrize(
    "arch",
    [{}, {"dueling": True}, {"phi_arch": (16, 8), "rho_arch": (12, 6)}, {"rho_arch": ()}],
    ids=["default", "dueling", "deeper", "no-rho"],
)
def test_numpy_network_scores_as_the_network(arch: dict[str, Any]) -> None:
    torch.manual_seed(0)
    net = DeepSetQNetwork(6, **arch)
    mirror = NumpyQNetwork(net)
    rows = np.random.default_rng(0).random((3, 9, 6), dtype=np.float32)
    rows[1, 5:] = 0.0  # empty slots stay out of the context
    weights = mean_weights_numpy(rows)
    ours = mirror(rows, weights)
    assert ours.dtype == np.float32 and ours.shape == (3, 9)
    with torch.no_grad():
        np.testing.assert_allclose(ours, net(torch.from_numpy(rows)).numpy(), rtol=1e-5, atol=1e-6)
        # Views of the parameters: an in-place update (an optimiser step) shows without a copy.
        for parameter in net.parameters():
            parameter.add_(0.1)
        np.testing.assert_allclose(
            mirror(rows, weights), net(torch.from_numpy(rows)).numpy(), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(mirror(rows, weights), ours)


def test_acting_scores_in_numpy_as_in_torch(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store), seed=0, device="cpu")
    assert model._numpy_q is not None
    largest = model._numpy_q.max_rows // 8  # sets of K = 8 that NumPy scores
    assert largest >= 1
    sets = largest + 10
    rows = np.random.default_rng(0).random((sets, 8, model.candidate_shape[1]), dtype=np.float32)
    with torch.no_grad():
        reference = model.q_net(torch.from_numpy(rows)).numpy()
    for size in (1, largest, largest + 1, sets):  # NumPy, then torch
        ours = model.scores(rows[:size])
        np.testing.assert_allclose(ours, reference[:size], rtol=1e-5, atol=1e-6)


def test_random_actions_draw_what_generator_choice_draws(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store), seed=0)
    masks = np.random.default_rng(1).random((200, 8)) < 0.5
    masks[0] = False  # nothing valid: any slot
    reference = np.random.default_rng(7)
    model._rng = np.random.default_rng(7)
    for mask in masks:
        valid = np.flatnonzero(mask)
        expected = reference.choice(valid) if valid.size else reference.integers(mask.size)
        assert model._random_action(mask) == expected


def test_network_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="phi_arch"):
        DeepSetQNetwork(5, phi_arch=())
    with pytest.raises(ValueError, match="num_features"):
        DeepSetQNetwork(0)


def test_importing_the_agents_package_does_not_import_torch() -> None:
    code = (
        "import sys, misical_gym.agents as agents; assert 'torch' not in sys.modules; "
        "agents.DDQN; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------- construction
def test_rejects_bad_arguments_clearly(tiny_store: FeatureStore) -> None:
    env = make_env(tiny_store)
    with pytest.raises(ValueError, match=r"0 < tau <= 1.*per_alpha >= 0"):
        DDQN(env, tau=0.0, per_alpha=-1)
    with pytest.raises(ValueError, match="target_update must be one of"):
        DDQN(env, target_update="polyak")
    with pytest.raises(ValueError, match="valid keys: phi_arch, rho_arch, dueling"):
        DDQN(env, policy_kwargs={"net_arch": [64]})
    with pytest.raises(ValueError, match="checkpoint_path"):
        DDQN(env, checkpoint_freq=10)
    with pytest.raises(ValueError, match=r"0 <= hindsight_fraction <= 1"):
        DDQN(env, hindsight_fraction=1.5)
    with pytest.raises(ValueError, match="counterfactual_targets must be True or False"):
        DDQN(env, counterfactual_targets="yes")
    with pytest.raises(ValueError, match=r"not an SB3 VecEnv"):
        DDQN(env).set_env(DummyVecEnv([lambda: make_env(tiny_store)]))  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", [False, True])
def test_refuses_an_env_that_is_not_misical(vector: bool) -> None:
    # CartPole's 4 numbers over Discrete(2) would fit 2 candidates of 2 features.
    env = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync") if vector else "CartPole-v1"
    with pytest.raises(ValueError, match=r"DDQN trains on MiSiCAL envs.*CartPoleEnv has none"):
        DDQN(env)


class _NoCompact(gym.Env):
    """Four candidates of three features each, no compact state."""

    observation_space = gym.spaces.Box(0, 1, (12,), np.float32)
    action_space = gym.spaces.Discrete(4)
    candidate_shape = (4, 3)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple:
        return self.observation_space.sample(), float(action == 0), False, False, {}


def test_replay_mode_follows_the_env(tiny_store: FeatureStore) -> None:
    assert DDQN(make_env(tiny_store))._spec.compact_size == 8 + 2
    assert DDQN(make_env(tiny_store), replay="raw")._spec.compact_size is None
    assert DDQN(_NoCompact())._spec.compact_size is None
    with pytest.raises(ValueError, match="replay='raw'"):
        DDQN(_NoCompact(), replay="compact")
    # A wrapper that changes observations cannot be rebuilt from store ids.
    scaled = gym.wrappers.TransformObservation(make_env(tiny_store), lambda o: o * 2, None)
    with pytest.raises(ValueError, match="observation_from_compact"):
        DDQN(scaled, replay="compact", learning_starts=5).learn(5)


def test_compact_replay_fits_a_million_transitions_under_1_gb(
    coco_shaped_store: FeatureStore,
) -> None:
    env = make_env(coco_shaped_store, pool_size=32, budget=8, target_class="skis")
    k, f = env.unwrapped.candidate_shape
    assert (k, f) == (32, 177)  # COCO-Stuff 10k's scale
    compact = DDQN(env, buffer_size=1_000_000, replay="compact")
    compact_bytes = compact.replay_buffer.memory_bytes_per_transition
    assert compact_bytes * 1_000_000 < 1e9
    raw = DDQN(env, buffer_size=1_000, replay="raw")
    assert raw.replay_buffer.memory_bytes_per_transition > k * f * 4 > 50 * compact_bytes


# ---------------------------------------------------------------------- the update rule
@pytest.mark.parametrize("counterfactual", [False, True])
def test_train_step_matches_a_per_sample_reference(
    tiny_store: FeatureStore, monkeypatch: pytest.MonkeyPatch, counterfactual: bool
) -> None:
    env = make_env(tiny_store)
    model = DDQN(
        env,
        seed=0,
        learning_starts=10**6,
        batch_size=16,
        gamma=0.9,
        tau=0.1,
        counterfactual_targets=counterfactual,
    )
    model.config = dataclasses.replace(model.config, max_grad_norm=0.05)  # clipping is active
    model.learn(200)  # fills the replay; no training yet
    # Random next-action masks (one row with no valid action) so that the masked argmax matters.
    rng = np.random.default_rng(1)
    masks = rng.random((16, 8)) < 0.4
    masks[0] = False
    batches, priorities, rewards = [], [], []
    real_sample = model.replay_buffer.sample
    real_rewards = env.unwrapped.candidate_rewards

    def sample(batch_size: int, beta: float, rng: Any = None) -> Any:
        batches.append(real_sample(batch_size, beta, rng)._replace(next_action_masks=masks))
        return batches[-1]

    def candidate_rewards(compact: np.ndarray, target: Any = None, *, shown: bool) -> np.ndarray:
        # As on a partly labelled split: sample 1 knows no count, sample 2 only some.
        rewards.append(real_rewards(compact, target, shown=shown))
        rewards[-1][1] = np.nan
        rewards[-1][2, ::2] = np.nan
        return rewards[-1]

    monkeypatch.setattr(model.replay_buffer, "sample", sample)
    monkeypatch.setattr(env.unwrapped, "candidate_rewards", candidate_rewards)
    monkeypatch.setattr(
        model.replay_buffer, "update_priorities", lambda i, td: priorities.append((i, td))
    )
    online, target = copy.deepcopy(model.q_net), copy.deepcopy(model.q_net_target)
    optimizer = torch.optim.Adam(online.parameters(), lr=model.config.learning_rate)
    model._train_step(beta=0.7)

    batch = batches[0]
    assert len(rewards) == int(counterfactual)
    obs = torch.as_tensor(env.unwrapped.observation_from_compact(batch.obs))
    next_obs = torch.as_tensor(env.unwrapped.observation_from_compact(batch.next_obs))

    def huber(delta: torch.Tensor) -> torch.Tensor:
        return 0.5 * delta**2 if abs(delta.item()) < 1 else abs(delta) - 0.5

    losses, td_errors = [], []
    for i in range(16):
        valid = [a for a in range(8) if masks[i, a]] or list(range(8))
        next_online = online(next_obs[i : i + 1])[0].detach()
        best = max(valid, key=lambda a: float(next_online[a]))
        y = float(batch.returns[i]) + float(batch.discounts[i]) * float(
            target(next_obs[i : i + 1])[0, best]
        )
        q = online(obs[i : i + 1])[0]
        taken = int(batch.actions[i])
        r = rewards[0][i] if counterfactual else np.full(8, np.nan)
        known = [a for a in range(8) if np.isfinite(r[a])] if np.isfinite(r[taken]) else []
        if known:  # every known candidate, its target shifted by its reward's difference
            loss = sum(huber(q[a] - (y + r[a] - r[taken])) for a in known) / len(known)
        else:  # unknown rewards: the plain Double DQN update
            loss = huber(q[taken] - y)
        losses.append(float(batch.weights[i]) * loss)
        td_errors.append((q[taken] - y).item())
    if counterfactual:
        assert 0 < np.isfinite(rewards[0][2]).sum() < 8  # the partly known sample is in the test
    optimizer.zero_grad()
    (sum(losses) / 16).backward()
    torch.nn.utils.clip_grad_norm_(online.parameters(), 0.05)
    optimizer.step()

    for ours, ref in zip(model.q_net.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for ours, old, new in zip(
        model.q_net_target.parameters(), target.parameters(), online.parameters(), strict=True
    ):
        torch.testing.assert_close(ours, 0.9 * old + 0.1 * new, rtol=1e-5, atol=1e-6)
    indices, td = priorities[0]
    np.testing.assert_array_equal(indices, batch.indices)
    np.testing.assert_allclose(td, td_errors, rtol=1e-4, atol=1e-5)  # the taken action's TD
    assert model.state.n_updates == 1


def test_pool_training_reads_only_the_acquired_labels(tiny_store: FeatureStore) -> None:
    """On ``pool`` a deployment reveals only the acquired patch's label, so counterfactual
    targets, which read every shown candidate's, fall back to the plain update there, even
    though the simulated pool's counts are all known; on ``init`` they do not."""

    def trained(split: str, counterfactual: bool) -> DDQN:
        model = DDQN(
            make_env(tiny_store, split=split), seed=0, counterfactual_targets=counterfactual, **FAST
        )
        return model.learn(300)

    assert_same_params(trained("pool", True), trained("pool", False))
    with pytest.raises(AssertionError):
        assert_same_params(trained("init", True), trained("init", False))


def _plain_q_values(net: DeepSetQNetwork, obs: torch.Tensor) -> torch.Tensor:
    """The DeepSets forward through its modules, every slot scored: the update's reference."""
    batch, weights = obs.shape[0], net.mean_weights(obs)
    embedding = net.phi(obs.reshape(-1, net.num_features))
    sets = embedding.view(batch, -1, embedding.shape[-1])
    context = torch.bmm(weights.unsqueeze(1), sets).squeeze(1)
    width = net.rho_embedding.out_features
    hidden = net.rho_embedding(embedding).view(batch, -1, width)
    hidden = hidden + net.rho_context(context).unsqueeze(1)
    return net.rho(hidden.view(-1, width)).view(batch, -1)


@pytest.mark.parametrize("counterfactual", [False, True])
def test_train_step_is_the_plain_update_bit_for_bit(
    tiny_store: FeatureStore, monkeypatch: pytest.MonkeyPatch, counterfactual: bool
) -> None:
    """The update's shortcuts (functional layers, the target scoring only the chosen slots,
    NumPy-side masks, clipping, Adam and Polyak without torch's per-call loops) change no bit of
    it; two updates, so that the second runs Adam's fused kernel on the state the first made."""
    env = make_env(tiny_store)
    model = DDQN(env, seed=0, learning_starts=10**6, tau=0.1, counterfactual_targets=counterfactual)
    model.config = dataclasses.replace(model.config, max_grad_norm=0.05)  # clipping is active
    model.learn(200)  # fills the replay; no training yet
    batches, priorities = [], []
    real_sample = model.replay_buffer.sample

    def sample(*args: Any) -> Any:
        batches.append(real_sample(*args))
        return batches[-1]

    monkeypatch.setattr(model.replay_buffer, "sample", sample)
    monkeypatch.setattr(
        model.replay_buffer, "update_priorities", lambda i, td: priorities.append(td)
    )
    online, target = copy.deepcopy(model.q_net), copy.deepcopy(model.q_net_target)
    optimizer = torch.optim.Adam(online.parameters(), lr=model.config.learning_rate, fused=True)
    for _ in range(2):
        model._train_step(beta=0.7)

    for batch, ours_td in zip(batches, priorities, strict=True):
        obs, next_obs = (
            torch.as_tensor(env.unwrapped.observation_from_compact(states))
            for states in (batch.obs, batch.next_obs)
        )
        masks = torch.as_tensor(batch.next_action_masks)
        masks |= ~masks.any(dim=1, keepdim=True)
        with torch.no_grad():
            best = _plain_q_values(online, next_obs).masked_fill(~masks, -torch.inf).argmax(1)
            next_q = _plain_q_values(target, next_obs).gather(1, best[:, None])[:, 0]
            targets = torch.as_tensor(batch.returns) + torch.as_tensor(batch.discounts) * next_q
        q_all = _plain_q_values(online, obs)
        q = q_all.gather(1, torch.as_tensor(batch.actions)[:, None])[:, 0]
        if counterfactual:
            rewards = env.unwrapped.candidate_rewards(batch.obs)
            all_targets, share = model._counterfactual(rewards, batch.actions, targets)
            per_sample = (F.smooth_l1_loss(q_all, all_targets, reduction="none") * share).sum(1)
        else:
            per_sample = F.smooth_l1_loss(q, targets, reduction="none")
        optimizer.zero_grad()
        (torch.as_tensor(batch.weights) * per_sample).mean().backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 0.05, foreach=True)
        optimizer.step()
        with torch.no_grad():
            for old, new in zip(target.parameters(), online.parameters(), strict=True):
                old.lerp_(new, 0.1)
        np.testing.assert_array_equal(ours_td, (q - targets).detach().numpy())

    for ours, ref in zip(model.q_net.parameters(), online.parameters(), strict=True):
        assert torch.equal(ours, ref)
    for ours, ref in zip(model.q_net_target.parameters(), target.parameters(), strict=True):
        assert torch.equal(ours, ref)
    for ours, ref in zip(model._params, online.parameters(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(model.optimizer.state[ours][key], optimizer.state[ref][key])


@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipped", "unclipped"])
def test_gradient_clipping_is_torchs_bit_for_bit(tiny_store: FeatureStore, max_norm: float) -> None:
    model = DDQN(make_env(tiny_store), seed=0)
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in model._params]
    for parameter, grad in zip(model._params, grads, strict=True):
        parameter.grad = grad.clone()
    model._clip_gradients(max_norm)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in model._params]
    for parameter, grad in zip(reference, grads, strict=True):
        parameter.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_(reference, max_norm, foreach=True)
    for ours, theirs in zip(model._params, reference, strict=True):
        assert torch.equal(ours.grad, theirs.grad)
    assert torch.equal(model._params[0].grad, grads[0]) == (max_norm > 1)


def _goal_model(store: FeatureStore, num_envs: int | None = None, **kwargs: Any) -> DDQN:
    """A goal-conditioned DDQN whose replay holds 300 random steps (of one env or a vector env)."""
    options = {"budget": 8, "pool_size": 8, "target_class": "random"}
    env = (
        make_env(store, target_class="random")
        if num_envs is None
        else gym.make_vec(
            "MiSiCAL-Store", num_envs, "vector_entry_point", root=str(store.path), **options
        )
    )
    model = DDQN(env, seed=0, learning_starts=10**6, gamma=0.9, **kwargs)
    return model.learn(300)  # fills the replay; no training yet


# A vector env interleaves its sub-envs' steps in the replay: a window's steps are not adjacent.
@pytest.mark.parametrize("num_envs", [None, 3])
def test_replay_windows_rebuild_the_stored_n_step_returns(
    tiny_store: FeatureStore, num_envs: int | None
) -> None:
    model = _goal_model(tiny_store, num_envs, n_step=3)
    env = model.env.unwrapped
    batch = model.replay_buffer.sample(64, 0.5, np.random.default_rng(0))
    obs, actions, lengths = model.replay_buffer.windows(batch.indices)
    assert obs.shape == (64, 3, 10) and set(lengths.tolist()) <= {1, 2, 3}
    np.testing.assert_array_equal(obs[:, 0], batch.obs)
    np.testing.assert_array_equal(actions[:, 0], batch.actions)
    rewards = np.take_along_axis(env.candidate_rewards(obs), actions[..., None], 2)[..., 0]
    returns = [sum(0.9**j * rewards[i, j] for j in range(n)) for i, n in enumerate(lengths)]
    np.testing.assert_allclose(returns, batch.returns, rtol=1e-6)


def test_hindsight_relabels_targets_with_exact_returns(tiny_store: FeatureStore) -> None:
    model = _goal_model(tiny_store, hindsight_fraction=1.0)
    env = model.env.unwrapped
    batch = model.replay_buffer.sample(64, 0.5, np.random.default_rng(0))
    relabelled = model._relabel(batch, env)
    new = relabelled.obs[:, 8]
    changed = new != batch.obs[:, 8]
    assert changed.sum() > 32 and set(new.tolist()) <= set(env.goal_targets.tolist())
    np.testing.assert_array_equal(relabelled.next_obs[:, 8], new)  # both ends of the window
    np.testing.assert_array_equal(relabelled.obs[:, :8], batch.obs[:, :8])  # same candidates
    np.testing.assert_array_equal(relabelled.discounts, batch.discounts)
    # The new target's rewards differ between the shown candidates.
    spread = np.ptp(env.candidate_rewards(relabelled.obs), axis=1)
    assert (spread[changed] > 0).all()
    # Returns: the window's picked patches paid under the new target, by hand.
    obs, actions, lengths = model.replay_buffer.windows(batch.indices)
    for i in np.flatnonzero(changed):
        ids = [obs[i, j, actions[i, j]] for j in range(lengths[i])]
        paid = env.reward_fn(env._counts[ids, new[i]], env._areas[ids])
        assert relabelled.returns[i] == pytest.approx(sum(0.9**j * r for j, r in enumerate(paid)))
    # Unknown counts in a window: the sample keeps its own target and return.
    env_rewards = env.candidate_rewards
    model.env.unwrapped.candidate_rewards = lambda c, t=None, shown=False: np.full_like(
        env_rewards(c, t), np.nan
    )
    try:
        kept = model._relabel(batch, env)
    finally:
        del model.env.unwrapped.candidate_rewards
    np.testing.assert_array_equal(kept.obs, batch.obs)
    np.testing.assert_array_equal(kept.returns, batch.returns)


@pytest.mark.parametrize("vector", [None, "sync", "vector_entry_point"])
def test_goal_policy_kwargs_build_the_network_of_a_goal_conditioned_env(
    tiny_store: FeatureStore, tmp_path: Path, vector: str | None
) -> None:
    wide = {"phi_arch": [24], "rho_arch": [8]}

    def env(target: str) -> Any:
        if vector is None:
            return make_env(tiny_store, target_class=target)
        options = {"budget": 8, "pool_size": 8, "target_class": target}
        return gym.make_vec("MiSiCAL-Store", 2, vector, root=str(tiny_store.path), **options)

    goal = DDQN(env("random"), seed=0, goal_policy_kwargs=wide, **FAST)
    assert goal.q_net.arch == {**wide, "dueling": False}
    fixed = DDQN(env(TARGET), seed=0, goal_policy_kwargs=wide, **FAST)
    assert fixed.q_net.arch["phi_arch"] == [16]  # one target: policy_kwargs
    assert DDQN(env("random"), seed=0, **FAST).q_net.arch["phi_arch"] == [16]  # None: the same
    loaded = DDQN.load(goal.save(tmp_path / "goal.zip"))
    assert loaded.q_net.arch == goal.q_net.arch
    # Over policy_kwargs: what the goal options leave out comes from there.
    dueling = DDQN(env("random"), policy_kwargs={"dueling": True}, goal_policy_kwargs=wide)
    assert dueling.q_net.arch == {**wide, "dueling": True}
    with pytest.raises(ValueError, match="unknown goal_policy_kwargs"):
        DDQN(env("random"), goal_policy_kwargs={"width": 3})


def test_a_fixed_target_is_never_relabelled(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store), seed=0, hindsight_fraction=1.0, **FAST).learn(150)
    assert model.env.unwrapped.goal_targets.size == 0
    assert model._reward_oracle() is model.env.unwrapped
    raw = DDQN(make_env(tiny_store), replay="raw", **FAST)
    assert raw._reward_oracle() is None  # no store ids: the plain update


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
        ),
    ],
)
def test_updates_run_on_the_models_device(tiny_store: FeatureStore, device: str) -> None:
    model = DDQN(make_env(tiny_store, target_class="random"), seed=0, device=device, **FAST)
    model.learn(150)
    assert model.state.n_updates == 50
    expected = torch.device(device).type
    assert {p.device.type for p in model.q_net_target.parameters()} == {expected}
    batch = model.replay_buffer.sample(8, 0.5)
    assert {t.device.type for t in model._to_tensors(batch)} == {expected}
    targets, share = model._counterfactual(
        model.env.unwrapped.candidate_rewards(batch.obs),
        batch.actions,
        torch.zeros(8, device=model.device),
    )
    assert targets.device.type == share.device.type == expected
    torch.testing.assert_close(share.sum(dim=1).cpu(), torch.ones(8))


def test_hard_target_update_copies_every_interval(tiny_store: FeatureStore) -> None:
    model = DDQN(
        make_env(tiny_store), seed=0, target_update="hard", target_update_interval=50, **FAST
    )
    pairs = list(zip(model.q_net.parameters(), model.q_net_target.parameters(), strict=True))
    model.learn(150)  # copied at step 150, after that step's update
    assert all(torch.equal(online, target) for online, target in pairs)
    model.learn(10, reset_num_timesteps=False)  # 10 updates since
    assert not all(torch.equal(online, target) for online, target in pairs)


def test_beta_and_epsilon_schedules(
    tiny_store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DDQN(
        make_env(tiny_store),
        seed=0,
        per_beta0=0.4,
        exploration_fraction=0.5,
        exploration_final_eps=0.1,
        **FAST,
    )
    betas: list[tuple[int, float]] = []
    real_sample = model.replay_buffer.sample

    def sample(batch_size: int, beta: float, rng: Any = None) -> Any:
        betas.append((model.num_timesteps, beta))
        return real_sample(batch_size, beta, rng)

    monkeypatch.setattr(model.replay_buffer, "sample", sample)
    model.learn(400)
    for step, beta in betas:  # sampled after step ``step``, scheduled at step - 1
        assert beta == pytest.approx(0.4 + 0.6 * (step - 1) / 400)
    assert betas[-1][1] > 0.99
    assert model.exploration_rate == pytest.approx(0.1)
    assert model._exploration_schedule(0.25) == pytest.approx(1.0 - 0.9 * 0.5)


# ---------------------------------------------------------------------- acting and masks
def test_masks_are_honoured_when_acting(tiny_store: FeatureStore) -> None:
    # A budget of the whole init split leaves fewer than K candidates at the end: masked slots.
    n = tiny_store.split_ids("init").size
    env = make_env(tiny_store, budget=n)
    model = DDQN(env, seed=0, exploration_fraction=0.01, **{**FAST, "learning_starts": 50})
    masked_steps = []

    def check(locals_: dict, globals_: dict) -> None:
        info = locals_["infos"][0]
        masked_steps.append(int(info["action_mask"].sum()) < 8)
        assert not info["masked_action"]

    model.learn(2 * n, callback=check)
    assert sum(masked_steps) >= 2 * 7  # both episodes ended with masked slots
    obs = np.random.default_rng(0).random((5, 8 * 14), dtype=np.float32)
    mask = np.zeros((5, 8), dtype=bool)
    mask[:, [2, 5]] = True
    actions, state = model.predict(obs, action_masks=mask)
    assert state is None and set(actions.tolist()) <= {2, 5}
    model.exploration_rate = 1.0
    explored, _ = model.predict(
        np.repeat(obs, 40, axis=0), deterministic=False, action_masks=np.repeat(mask, 40, axis=0)
    )
    assert set(explored.tolist()) == {2, 5}


def test_predict_single_batched_other_k_and_structured(tiny_store: FeatureStore) -> None:
    env = make_env(tiny_store)
    model = DDQN(env, seed=0)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs)
    assert action.shape == () and 0 <= action < 8
    actions, _ = model.predict(np.stack([obs, obs]))
    assert actions.shape == (2,) and actions[0] == action
    # Empty slots (all-zero rows) are never chosen without explicit masks.
    padded = obs.copy().reshape(8, -1)
    padded[action] = 0.0
    assert model.predict(padded.ravel())[0] != action
    # The same network scores any K, flat or (K, F).
    wide = make_env(tiny_store, pool_size=12, flatten=False)
    wide_obs, _ = wide.reset(seed=0)
    assert wide_obs.shape == (12, 14)
    single, _ = model.predict(wide_obs)
    assert single.shape == () and 0 <= single < 12
    assert model.predict(wide_obs[None])[0].tolist() == [single]
    with pytest.raises(ValueError, match="rows of 14 features"):
        model.predict(np.zeros((2, 15), dtype=np.float32))


# ---------------------------------------------------------------------- determinism and replay
def test_same_seed_same_q_values_and_compact_equals_raw(tiny_store: FeatureStore) -> None:
    first, same, raw, other_seed = (
        # Raw replay keeps no store ids, hence no counterfactual targets: compare plain updates.
        DDQN(
            make_env(tiny_store), seed=seed, replay=replay, counterfactual_targets=False, **FAST
        ).learn(400)
        for seed, replay in [(0, "compact"), (0, "compact"), (0, "raw"), (1, "compact")]
    )
    obs = torch.as_tensor(np.random.default_rng(0).random((4, 8 * 14), dtype=np.float32))
    q = first.q_net(obs)
    assert first.state.n_updates == 300
    assert torch.equal(same.q_net(obs), q)  # same seed: same Q-values
    assert_same_params(same, first)
    assert_same_params(raw, first)  # raw replay trains exactly like compact
    assert not torch.equal(other_seed.q_net(obs), q)


# ---------------------------------------------------------------------- checkpoints
def test_save_load_roundtrip(tiny_store: FeatureStore, tmp_path: Path) -> None:
    env = make_env(tiny_store)
    model = DDQN(env, seed=0, policy_kwargs={"dueling": True, "phi_arch": [32]}, **FAST)
    model.learn(300)
    path = model.save(tmp_path / "model")
    assert path == tmp_path / "model.zip"
    loaded = DDQN.load(tmp_path / "model")  # no env: enough to act
    assert_same_params(loaded, model)
    assert loaded.num_timesteps == 300 and loaded.state.n_updates == model.state.n_updates
    assert loaded.config.policy_kwargs == {"dueling": True, "phi_arch": [32]}
    obs = np.stack([env.reset(seed=s)[0] for s in range(10)])
    np.testing.assert_array_equal(loaded.predict(obs)[0], model.predict(obs)[0])
    assert len(loaded.replay_buffer) == 0  # not asked for
    with pytest.raises(ValueError, match="no env"):
        loaded.learn(10)
    for ours, theirs in zip(
        loaded.optimizer.state_dict()["state"].values(),
        model.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    model.save(tmp_path / "full.zip", include_replay_buffer=True)
    full = DDQN.load(tmp_path / "full.zip", env=make_env(tiny_store))
    assert len(full.replay_buffer) >= len(model.replay_buffer)  # plus the held-back step
    full.learn(50, reset_num_timesteps=False)  # resumes mid-episode on a fresh env
    assert full.num_timesteps == 350


@pytest.mark.parametrize("policy_kwargs", [{}, {"phi_arch": [16]}], ids=["default", "own-phi"])
def test_checkpoints_that_do_not_name_their_network_load_the_former_default(
    tiny_store: FeatureStore, tmp_path: Path, policy_kwargs: dict[str, Any]
) -> None:
    """A file written before checkpoints named their network had the former default one."""
    former = {"phi_arch": [128, 128], "rho_arch": [128], **policy_kwargs}
    model = DDQN(make_env(tiny_store), seed=0, policy_kwargs=former, **FAST)
    path = model.save(tmp_path / "model.zip")
    state = torch.load(path, weights_only=True)
    del state["network"]
    state["config"]["policy_kwargs"] = policy_kwargs  # what such a file says
    torch.save(state, path)
    loaded = DDQN.load(path)
    assert loaded.q_net.arch == {**former, "dueling": False}
    assert_same_params(loaded, model)
    today = {"phi_arch": [16], "rho_arch": [16], "dueling": False}
    assert DDQN(make_env(tiny_store), seed=0).q_net.arch == today


@pytest.mark.parametrize(
    "network",
    [
        {"phi_arch": [], "rho_arch": [8], "dueling": False},
        {"phi_arch": ["8"], "rho_arch": [8], "dueling": False},
        {"phi_arch": [8], "rho_arch": [8], "dueling": "no"},
        {"phi_arch": [8], "rho_arch": [8], "dueling": False, "width": 2},
        [8, 8],
        # Sizes that would make loading build a network of any size before the weights are read.
        {"phi_arch": [2**20], "rho_arch": [2**20], "dueling": False},
        {"phi_arch": [8] * 9, "rho_arch": [8], "dueling": False},
        {"phi_arch": [8], "rho_arch": [8] * 9, "dueling": False},
    ],
)
def test_a_malformed_network_entry_is_refused(
    tiny_store: FeatureStore, tmp_path: Path, network: Any
) -> None:
    path = DDQN(make_env(tiny_store), seed=0, **FAST).save(tmp_path / "model.zip")
    state = torch.load(path, weights_only=True)
    state["network"] = network
    torch.save(state, path)
    with pytest.raises(ValueError, match="network entry is malformed"):
        DDQN.load(path)


_KILLED_RUN = """
import json, os, signal, sys
import gymnasium as gym
import torch
torch.set_num_threads(1)
import misical_gym
from misical_gym.agents import DDQN

store, checkpoint, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
env = gym.make("MiSiCAL-Store", root=store, budget=8, pool_size=8, target_class={target})
model = DDQN(env, checkpoint_freq=200, checkpoint_path=checkpoint, **kwargs)

def kill(locals_, globals_):
    if model.num_timesteps == 500:
        os.kill(os.getpid(), signal.SIGKILL)

model.learn(800, callback=kill)
"""


def test_killed_run_resumes_from_its_last_checkpoint(
    tiny_store: FeatureStore, tmp_path: Path
) -> None:
    kwargs = {"seed": 3, **FAST}
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILLED_RUN.format(target=TARGET)))
    checkpoint = tmp_path / "checkpoint.zip"
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_store.path), str(checkpoint), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr  # SIGKILL
    resumed = DDQN.load(checkpoint, env=make_env(tiny_store))
    assert resumed.num_timesteps == 400  # checkpoints at 200 and 400; killed at 500
    resumed.learn(800 - resumed.num_timesteps, reset_num_timesteps=False)

    uninterrupted = DDQN(make_env(tiny_store), **kwargs).learn(800)
    assert resumed.num_timesteps == uninterrupted.num_timesteps == 800
    assert resumed.state.n_updates == uninterrupted.state.n_updates
    assert_same_params(resumed, uninterrupted)


def test_pretrain_then_deploy_on_another_split(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store, split="init"), seed=0, **FAST).learn(203)  # mid-episode
    model.set_env(make_env(tiny_store, split="pool"))
    model.learn(101, reset_num_timesteps=False)
    assert model.num_timesteps == 304
    other = write_random_store(tiny_store.path.parent / "other", num_images=40, seed=7)
    with pytest.raises(ValueError, match="another feature store"):
        model.set_env(make_env(other))


# ---------------------------------------------------------------------- SB3 compatibility
@pytest.mark.parametrize("agent", ["ddqn", "random"])
def test_a_quiet_run_without_tensorboard_writes_no_log_folder(
    agent: str, tiny_store: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SB3's own logger would create $SB3_LOGDIR (else a temp SB3-<date> folder) for this run.
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))
    from misical_gym.train.agents import make_agent

    make_agent(agent, make_env(tiny_store), seed=0, **(FAST if agent == "ddqn" else {})).learn(40)
    assert not (tmp_path / "sb3").exists()


def test_the_logger_is_ready_before_learn(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store), seed=0, **FAST)
    model.logger.record("custom/value", 1.0)  # a callback may record before the first learn
    assert model.logger.name_to_value["custom/value"] == 1.0


def test_tensorboard_keys_and_run_directories_match_sb3(
    tiny_store: FeatureStore, tmp_path: Path
) -> None:
    logdir = tmp_path / "runs"
    model = DDQN(make_env(tiny_store), seed=0, tensorboard_log=str(logdir), **FAST)
    model.learn(160, log_interval=2)
    model.learn(160, log_interval=2, reset_num_timesteps=False)  # continues DDQN_1
    DQN(
        "MlpPolicy", make_env(tiny_store), learning_starts=50, tensorboard_log=str(logdir), seed=0
    ).learn(160, log_interval=2)
    assert sorted(p.name for p in logdir.iterdir()) == ["DDQN_1", "DQN_1"]

    ours = EventAccumulator(str(logdir / "DDQN_1"))
    ours.Reload()
    tags = set(ours.Tags()["scalars"])
    assert {
        "rollout/ep_rew_mean",
        "rollout/ep_len_mean",
        "rollout/exploration_rate",
        "train/loss",
        "train/n_updates",
        "time/fps",
        "train/q_mean",
        "train/per_beta",
        "al/target_pixels",
        "al/hit_rate",
    } <= tags
    theirs = EventAccumulator(str(logdir / "DQN_1"))
    theirs.Reload()
    sb3_tags = set(theirs.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "train/loss", "time/fps"} <= sb3_tags
    assert sb3_tags <= tags  # every SB3 curve overlays one of ours
    steps = [event.step for event in ours.Scalars("rollout/ep_rew_mean")]
    assert steps == list(range(16, 321, 16))  # x = num_timesteps, every 2 episodes of 8 steps
    hit_rate = [event.value for event in ours.Scalars("al/hit_rate")]
    assert all(0.0 <= h <= 1.0 for h in hit_rate)


class _Counter(BaseCallback):
    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.started = self.ended = False

    def _on_training_start(self) -> None:
        self.started = True

    def _on_step(self) -> bool:
        return self.n_calls < self.stop_at

    def _on_training_end(self) -> None:
        self.ended = True


def test_callbacks_progress_bar_and_sb3_checkpoint_callback(
    tiny_store: FeatureStore, tmp_path: Path
) -> None:
    model = DDQN(make_env(tiny_store), seed=0, **FAST)
    counter = _Counter(stop_at=70)
    model.learn(100, callback=counter, progress_bar=True)
    assert counter.started and counter.ended and model.num_timesteps == 70
    calls: list[int] = []
    model.learn(30, callback=lambda locals_, globals_: calls.append(model.num_timesteps))
    assert calls == list(range(1, 31))  # None means carry on
    model.learn(30, callback=lambda locals_, globals_: model.num_timesteps < 5)
    assert model.num_timesteps == 5
    saver = CheckpointCallback(50, str(tmp_path / "ckpt"), save_replay_buffer=True)
    model.learn(100, callback=[saver])
    assert (tmp_path / "ckpt" / "rl_model_100_steps.zip").is_file()
    loaded = DDQN.load(tmp_path / "ckpt" / "rl_model_100_steps.zip", env=make_env(tiny_store))
    loaded.load_replay_buffer(tmp_path / "ckpt" / "rl_model_replay_buffer_100_steps.pkl")
    loaded.learn(10, reset_num_timesteps=False)
    assert loaded.num_timesteps == 110


# ---------------------------------------------------------------------- learning check
def _learning_check(store: FeatureStore, seed: int, steps: int, **kwargs: Any) -> tuple:
    """Train on the init split; greedy vs random on held-out pool episodes."""
    model = DDQN(make_env(store, split="init"), seed=seed, exploration_fraction=0.3, **kwargs)
    model.learn(steps)
    held_out = make_env(store, split="pool")
    greedy = evaluate(
        held_out, lambda obs, mask: int(model.predict(obs, action_masks=mask)[0]), 50, 10_000
    )
    rng = np.random.default_rng(seed)
    random = evaluate(held_out, lambda obs, mask: rng.choice(np.flatnonzero(mask)), 50, 10_000)
    return greedy, random


def test_greedy_policy_beats_random_on_held_out_episodes(tiny_store: FeatureStore) -> None:
    # Measured: greedy about 4.9, random 1.1, reading the presence column directly 5.0.
    greedy, random = _learning_check(tiny_store, 0, 2_000, **FAST)
    assert greedy > random + 2.0


def test_counterfactual_ddqn_beats_random_in_a_few_hundred_steps(tiny_store: FeatureStore) -> None:
    # Measured: greedy 4.92 against random 0.94 after 300 steps (200 updates).
    greedy, random = _learning_check(tiny_store, 0, 300, counterfactual_targets=True, **FAST)
    assert greedy > random + 2.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"policy_kwargs": {"dueling": True}},
        {"target_update": "hard", "target_update_interval": 500},
    ],
)
def test_learning_holds_across_seeds_and_variants(
    tiny_store: FeatureStore, seed: int, variant: dict
) -> None:
    greedy, random = _learning_check(
        tiny_store, seed, 5_000, learning_starts=500, train_freq=1, learning_rate=1e-3, **variant
    )
    assert greedy > random + 2.0
