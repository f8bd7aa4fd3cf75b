"""The feature table on the agent's device: observations rebuilt there equal the env's, and a
DDQN that rebuilds them there trains exactly like one that does not."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import misical_gym  # noqa: F401 (registers the environments)
from misical_gym.agents import DDQN
from misical_gym.agents.device_observations import DeviceObservations
from misical_gym.store import FeatureStore

torch.set_num_threads(1)

FAST = {"learning_starts": 50, "train_freq": 1, "batch_size": 16, "seed": 0}
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def make_env(store: FeatureStore, **kwargs: Any) -> gym.Env:
    options = {"budget": 8, "pool_size": 8, "target_class": 3, **kwargs}
    return gym.make("MiSiCAL-Store", root=str(store.path), **options)


def states(env: gym.Env, count: int) -> np.ndarray:
    """Compact states of a few steps, with empty slots and the last budget fraction in them."""
    base = env.unwrapped
    env.reset(seed=0)
    rows = []
    for step in range(count):
        rows.append(base.compact_state())
        env.step(step % base.pool_size)
    compact = np.stack(rows)
    compact[0, :3] = -1
    return compact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options",
    [{}, {"target_class": "random"}, {"features": "uncertainty"}, {"flatten": False}],
    ids=["default", "goal-one-hot", "some-columns", "rows"],
)
def test_rebuilt_observations_equal_the_envs(
    tiny_store: FeatureStore, device: str, options: dict[str, Any]
) -> None:
    env = make_env(tiny_store, **options)
    compact = states(env, 6)
    rebuilt = DeviceObservations(env.unwrapped, torch.device(device))(compact)
    assert rebuilt.device.type == device and rebuilt.dtype == torch.float32
    np.testing.assert_array_equal(
        rebuilt.cpu().numpy(), env.unwrapped.observation_from_compact(compact)
    )


def test_rebuild_refuses_states_outside_the_store(tiny_store: FeatureStore) -> None:
    env = make_env(tiny_store)
    rebuild = DeviceObservations(env.unwrapped, torch.device("cpu"))
    compact = states(env, 2)
    for column, value in [(0, -2), (0, len(tiny_store.features)), (8, 99), (8, -1)]:
        bad = compact.copy()
        bad[1, column] = value
        with pytest.raises(ValueError, match="outside the store"):
            rebuild(bad)
    with pytest.raises(ValueError, match="end in 10 values"):
        rebuild(compact[:, :-1])


@pytest.mark.parametrize("target", [3, "random"], ids=["fixed", "goal-relabelled"])
def test_a_ddqn_with_features_on_device_trains_identically(
    tiny_store: FeatureStore, target: int | str
) -> None:
    first, on_device = (
        DDQN(make_env(tiny_store, target_class=target), features_on_device=flag, **FAST)
        for flag in (False, True)
    )
    assert first._device_observations is None
    assert on_device._device_observations is not None
    for model in (first, on_device):
        model.learn(200)
    batch = first.replay_buffer.sample(16, 0.5, np.random.default_rng(0))
    for a, b in zip(first._to_tensors(batch), on_device._to_tensors(batch), strict=True):
        assert torch.equal(a, b)
    assert first.state.n_updates == on_device.state.n_updates == 150
    for model in (first.q_net, first.q_net_target):
        twin = on_device.q_net if model is first.q_net else on_device.q_net_target
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b)


def test_features_on_device_needs_compact_replay(tiny_store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="features_on_device needs compact replay"):
        DDQN(make_env(tiny_store), replay="raw", features_on_device=True)
    with pytest.raises(ValueError, match="features_on_device must be True or False"):
        DDQN(make_env(tiny_store), features_on_device="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_features_on_cuda_train_on_cuda(tiny_store: FeatureStore) -> None:
    model = DDQN(make_env(tiny_store), device="cuda", features_on_device=True, **FAST)
    assert model._device_observations is not None
    assert model._device_observations.table.device.type == "cuda"
    model.learn(100)
    assert model.state.n_updates == 50
    batch = model.replay_buffer.sample(8, 0.5)
    obs = model._to_tensors(batch)[0]
    assert obs.device.type == "cuda"
    np.testing.assert_array_equal(
        obs.cpu().numpy(), model.env.unwrapped.observation_from_compact(batch.obs)
    )
